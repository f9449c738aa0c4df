//! The build pipeline and the cache lookup. Cleanup after a failure and `clean` are in cleanup.rs.
//!
//! Every resource a build creates is named `imgbuild-<build id>-…`, tagged `imgbuild` and carries
//! meta `imgbuild.build-id` / `imgbuild.state=building` / `imgbuild.started`, so that a build
//! killed hard (SIGKILL, power loss) can be found by `imgbuild clean` later. A build that fails or
//! is interrupted deletes what it created itself, in reverse order, before exiting.

pub use crate::cleanup::{
    clean, delete_drive_when_idle, delete_server_stopping, CleanReport, CleanupReport, Created,
};
use crate::cloud::{Cloud, CloudError};
use crate::progress::Reporter;
use crate::recipe::{Recipe, StepKind};
use crate::transport::{Target, Transport, TransportError};
use cloudsigma_api::client::Error as ApiError;
use cloudsigma_api::{
    Drive, DriveClone, DriveStatus, LibDrive, Nic, Ref, Server, ServerAction, ServerCreate,
    ServerDrive, ServerStatus, TagCreate,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

pub const TAG: &str = "imgbuild";
pub const META_BUILD_ID: &str = "imgbuild.build-id";
pub const META_STATE: &str = "imgbuild.state";
pub const META_STARTED: &str = "imgbuild.started";
pub const META_FINGERPRINT: &str = "imgbuild.fingerprint";

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Other(String),
    #[error("interrupted")]
    Interrupted,
}

impl From<ApiError> for StepError {
    fn from(e: ApiError) -> Self {
        StepError::Cloud(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("build failed in phase {phase}: {error}")]
    Failed {
        phase: String,
        error: String,
        cleanup: CleanupReport,
        kept: bool,
    },
    #[error("build interrupted in phase {phase}")]
    Interrupted {
        phase: String,
        cleanup: CleanupReport,
        kept: bool,
    },
}

impl BuildError {
    pub fn cleanup(&self) -> &CleanupReport {
        match self {
            BuildError::Failed { cleanup, .. } | BuildError::Interrupted { cleanup, .. } => cleanup,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub image_uuid: String,
    pub image_name: String,
    pub cached: bool,
    pub recipe: String,
    pub fingerprint: String,
    pub build_id: String,
    pub built_at: String,
    pub base: BaseInfo,
    pub vars: BTreeMap<String, String>,
    pub size: u64,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub uploads: BTreeMap<String, String>,
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseInfo {
    pub uuid: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub wall_ms: u64,
    pub api_calls: u64,
    pub api_ms: u64,
    pub poll_ms: u64,
    pub guest_ms: u64,
    /// Wall time minus time waiting on the cloud (requests, polling) and the guest.
    pub own_ms: u64,
}

/// Called with each phase name as it begins.
pub type PhaseHook = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone, Default)]
pub struct Options {
    pub force: bool,
    pub keep_on_failure: bool,
    pub ssh_user: Option<String>,
    pub ssh_port: u16,
    /// Test hook: called with each phase name as it begins (e.g. to cancel at a given phase).
    pub on_phase: Option<PhaseHook>,
}

/// The phases in order (names used in messages, `--dry-run` and tests).
pub const PHASES: &[&str] = &[
    "resolve-base",
    "cache-lookup",
    "ensure-tags",
    "clone",
    "resize",
    "create-server",
    "start",
    "wait-ssh",
    "provision",
    "clean-guest",
    "shutdown",
    "delete-server",
    "finalize",
];

pub struct Builder {
    pub cloud: Cloud,
    pub transport: Arc<dyn Transport>,
    pub reporter: Reporter,
    pub cancel: CancellationToken,
    pub opts: Options,
    /// Cancelled to abandon a cleanup in progress (a third signal): what is not deleted yet is
    /// reported as left.
    pub abandon: CancellationToken,
    /// The values of the recipe's `secrets:` (see [`crate::secrets`]); never printed.
    pub secrets: crate::secrets::Secrets,
    guest_us: AtomicU64,
    phase: std::sync::Mutex<String>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// UTC civil date and time of unix seconds: (year, month, day, hour, minute, second), by `jiff`.
/// Times past jiff's range (year 9999) clamp to its maximum rather than fail: they only name
/// images.
pub fn utc_parts(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let ts = i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    (
        i64::from(dt.year()),
        dt.month() as u32,
        dt.day() as u32,
        dt.hour() as u32,
        dt.minute() as u32,
        dt.second() as u32,
    )
}

pub fn rfc3339(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn compact_time(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(secs);
    format!("{y:04}{mo:02}{d:02}t{h:02}{mi:02}{s:02}z")
}

pub fn new_build_id() -> String {
    use rand::Rng;
    let n: u32 = rand::thread_rng().gen();
    format!("{n:08x}")
}

fn random_password() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

/// Pick the library drive: attributes must match, deprecated ones are skipped, and among
/// several the newest-looking (highest name) wins so the choice is stable.
pub fn pick_base(libs: &[LibDrive], r: &Recipe) -> Result<LibDrive, String> {
    let b = &r.spec.base;
    let eq = |a: &Option<String>, w: &str| {
        a.as_deref()
            .map(|x| x.eq_ignore_ascii_case(w))
            .unwrap_or(false)
    };
    let mut m: Vec<&LibDrive> = libs
        .iter()
        .filter(|l| {
            eq(&l.distribution, &b.distribution)
                && eq(&l.version, &b.version)
                && eq(&l.arch, &b.arch)
                && eq(&l.image_type, &b.image_type)
        })
        .filter(|l| l.deprecated != Some(true))
        .collect();
    m.sort_by(|a, b| a.name.cmp(&b.name));
    m.last().map(|l| (*l).clone()).ok_or_else(|| {
        format!(
            "no library drive matches distribution={} version={} arch={} image_type={} (found {} library drives; check `base:` in the recipe)",
            b.distribution, b.version, b.arch, b.image_type, libs.len()
        )
    })
}

impl Builder {
    pub fn new(
        cloud: Cloud,
        transport: Arc<dyn Transport>,
        reporter: Reporter,
        cancel: CancellationToken,
        opts: Options,
    ) -> Builder {
        Builder {
            cloud,
            transport,
            reporter,
            cancel,
            opts,
            abandon: CancellationToken::new(),
            secrets: Default::default(),
            guest_us: AtomicU64::new(0),
            phase: std::sync::Mutex::new(String::new()),
        }
    }

    fn enter(&self, p: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p.to_string();
        self.reporter.phase(p);
        if let Some(h) = &self.opts.on_phase {
            h(p);
        }
    }

    fn phase(&self) -> String {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Await `f` unless the build is cancelled first.
    async fn cancellable<T, E: Into<StepError>>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, StepError> {
        if self.cancel.is_cancelled() {
            return Err(StepError::Interrupted);
        }
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(StepError::Interrupted),
            r = f => r.map_err(Into::into),
        }
    }

    /// Like [`Self::cancellable`] for guest work, whose duration counts as waiting on the guest.
    async fn on_guest<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, TransportError>>,
    ) -> Result<T, StepError> {
        let s = Instant::now();
        let r = self.cancellable(f).await;
        self.guest_us
            .fetch_add(s.elapsed().as_micros() as u64, Ordering::Relaxed);
        match r {
            Err(StepError::Transport(TransportError::Cancelled)) => Err(StepError::Interrupted),
            x => x,
        }
    }

    /// Run a whole build. On error the guard deletes what was created (unless keep_on_failure).
    pub async fn build(&self, recipe: &Recipe) -> Result<Manifest, BuildError> {
        let started = Instant::now();
        let mut created = Created::default();
        let r = self.run(recipe, &mut created, started).await;
        // the guest is done with (or lost): release the SSH connection and destroy the key on
        // every outcome, before a cleanup that may take minutes
        self.transport.finish().await;
        match r {
            Ok(m) => Ok(m),
            Err(e) => {
                let phase = self.phase();
                let interrupted = matches!(e, StepError::Interrupted);
                if !interrupted {
                    self.reporter.line(&format!("error in phase {phase}: {e}"));
                }
                let cleanup = if self.opts.keep_on_failure {
                    self.reporter.line("--keep-on-failure: leaving the build's resources for inspection (remove them with `imgbuild clean --all`):");
                    let mut rep = CleanupReport::default();
                    if let Some(s) = &created.server {
                        rep.left.push(format!("server {s}"));
                    }
                    if let Some(d) = &created.drive {
                        rep.left.push(format!("drive {d}"));
                    }
                    for l in &rep.left {
                        self.reporter.line(&format!("  kept {l}"));
                    }
                    rep
                } else {
                    self.cleanup(&created).await
                };
                let kept = self.opts.keep_on_failure;
                Err(if interrupted {
                    BuildError::Interrupted {
                        phase,
                        cleanup,
                        kept,
                    }
                } else {
                    BuildError::Failed {
                        phase,
                        error: e.to_string(),
                        cleanup,
                        kept,
                    }
                })
            }
        }
    }

    async fn run(
        &self,
        recipe: &Recipe,
        created: &mut Created,
        started: Instant,
    ) -> Result<Manifest, StepError> {
        let to = &recipe.spec.timeouts;
        let secs = Duration::from_secs;
        let build_id = new_build_id();
        let started_unix = now_unix();

        self.enter("resolve-base");
        let b = &recipe.spec.base;
        let q = [
            ("distribution", b.distribution.as_str()),
            ("version", b.version.as_str()),
        ];
        let libs = self.cancellable(self.cloud.list_libdrives(&q)).await?;
        let base = pick_base(&libs, recipe).map_err(StepError::Other)?;
        if recipe.disk_size < base.size {
            return Err(StepError::Other(format!(
                "disk_size {} is smaller than the base drive {} ({} bytes); raise disk_size",
                recipe.disk_size, base.name, base.size
            )));
        }
        let fingerprint = recipe.fingerprint(&base.uuid);
        self.reporter.line(&format!(
            "base {} ({}), fingerprint {}",
            base.name,
            base.uuid,
            &fingerprint[..16]
        ));

        self.enter("cache-lookup");
        let tags = self.cancellable(self.cloud.list_tags()).await?;
        let tag_uuid = |name: &str| tags.iter().find(|t| t.name == name).map(|t| t.uuid.clone());
        if let (Some(t), false) = (tag_uuid(TAG), self.opts.force) {
            let drives = self
                .cancellable(self.cloud.list_drives_filtered(&[("tag", t.as_str())]))
                .await?;
            if let Some(d) = drives.iter().find(|d| {
                d.meta.get(META_FINGERPRINT) == Some(&fingerprint)
                    && d.meta.get(META_STATE).map(String::as_str) == Some("image")
            }) {
                self.reporter.line(&format!("image with this fingerprint exists: {} ({}); nothing to do (use --force to rebuild)", d.name, d.uuid));
                let mut m = self.manifest_of(recipe, d, &base, &fingerprint, true, started);
                m.tags = d
                    .tags
                    .iter()
                    .filter_map(|r| {
                        tags.iter()
                            .find(|t| t.uuid == r.uuid())
                            .map(|t| t.name.clone())
                    })
                    .collect();
                return Ok(m);
            }
        }

        self.enter("ensure-tags");
        let ctx_base = self.template_ctx(recipe, &build_id, started_unix, &fingerprint, &base.uuid);
        let mut want_tags = vec![TAG.to_string()];
        for t in &recipe.spec.output.tags {
            let v = crate::recipe::render(t, &ctx_base).map_err(StepError::Other)?;
            if !want_tags.contains(&v) {
                want_tags.push(v);
            }
        }
        let missing: Vec<String> = want_tags
            .iter()
            .filter(|n| tag_uuid(n).is_none())
            .cloned()
            .collect();
        let mut tag_ids: BTreeMap<String, String> = want_tags
            .iter()
            .filter_map(|n| tag_uuid(n).map(|u| (n.clone(), u)))
            .collect();
        for name in &missing {
            let tc = TagCreate {
                name: name.clone(),
                ..Default::default()
            };
            let t = self.cancellable(self.cloud.create_tag(&tc)).await?;
            created.tags.push((t.uuid.clone(), t.name.clone()));
            tag_ids.insert(t.name.clone(), t.uuid.clone());
        }
        let build_tag = tag_ids
            .get(TAG)
            .cloned()
            .ok_or_else(|| StepError::Other("the API did not create the imgbuild tag".into()))?;

        let mut build_meta = BTreeMap::new();
        build_meta.insert(META_BUILD_ID.to_string(), build_id.clone());
        build_meta.insert(META_STATE.to_string(), "building".to_string());
        build_meta.insert(META_STARTED.to_string(), started_unix.to_string());
        build_meta.insert("imgbuild.recipe".to_string(), recipe.spec.name.clone());

        self.enter("clone");
        let drive_name = format!("imgbuild-{build_id}-build");
        created.maybe_drive = Some(drive_name.clone());
        let req = DriveClone {
            name: Some(drive_name.clone()),
            media: Some("disk".into()),
            ..Default::default()
        };
        let d = self
            .cancellable(self.cloud.clone_libdrive(&base.uuid, &req))
            .await?;
        created.drive = Some(d.uuid.clone());
        let d = self
            .cancellable(self.cloud.wait_drive_status(
                &d.uuid,
                DriveStatus::Unmounted,
                secs(to.clone),
            ))
            .await?;

        self.enter("resize");
        // resize takes the full definition: set our meta and tag in the same call
        let mut def = d.clone();
        def.meta.extend(build_meta.clone());
        def.tags = vec![Ref::Uuid(build_tag.clone())];
        let d = self
            .cancellable(self.cloud.resize_drive(&def, recipe.disk_size))
            .await?;
        let _ = self
            .cancellable(self.cloud.wait_drive_status(
                &d.uuid,
                DriveStatus::Unmounted,
                secs(to.resize),
            ))
            .await?;

        self.enter("create-server");
        let server_name = format!("imgbuild-{build_id}-builder");
        let mut smeta = build_meta.clone();
        // cloud-init's CloudSigma datasource reads meta["ssh_public_key"] unconditionally
        smeta.insert("ssh_public_key".into(), self.transport.public_key());
        let sreq = ServerCreate {
            name: server_name.clone(),
            cpu: recipe.spec.server.cpu,
            mem: recipe.mem,
            smp: recipe.spec.server.smp,
            vnc_password: random_password(),
            drives: vec![ServerDrive::boot_disk(&d.uuid)],
            // one public NIC with DHCP = CloudSigma's NAT address
            nics: vec![Nic::public_dhcp()],
            meta: smeta,
            tags: vec![Ref::Uuid(build_tag.clone())],
            pubkeys: Vec::new(),
        };
        created.maybe_server = Some(server_name.clone());
        let s = self.cancellable(self.cloud.create_server(&sreq)).await?;
        created.server = Some(s.uuid.clone());

        self.enter("start");
        self.cancellable(self.cloud.server_action(&s.uuid, ServerAction::Start))
            .await?;
        let s = self
            .cancellable(self.cloud.wait_server_status(
                &s.uuid,
                ServerStatus::Running,
                secs(to.start),
            ))
            .await?;
        // the NAT address may appear in the runtime a little after `running`; a timeout here
        // reads "… waiting for server <uuid> to become running with a NAT IP"
        let s = match runtime_ip(&s) {
            Some(_) => s,
            None => {
                self.cancellable(self.cloud.wait_server_until(
                    &s.uuid,
                    "running with a NAT IP",
                    secs(60),
                    |s| runtime_ip(s).is_some(),
                ))
                .await?
            }
        };
        let ip = runtime_ip(&s).ok_or_else(|| {
            StepError::Other(format!(
                "server {} is running but has no NAT IP in its runtime",
                s.uuid
            ))
        })?;

        self.enter("wait-ssh");
        let user = self
            .opts
            .ssh_user
            .clone()
            .or_else(|| recipe.spec.ssh_user.clone())
            .or_else(|| base.default_user.clone())
            .unwrap_or_else(|| "cloudsigma".into());
        let target = Target {
            host: ip.clone(),
            port: if self.opts.ssh_port == 0 {
                22
            } else {
                self.opts.ssh_port
            },
            user,
        };
        self.reporter.line(&format!(
            "builder server {} at {}; waiting for SSH as {}",
            s.uuid, ip, target.user
        ));
        self.on_guest(
            self.transport
                .wait_ready(&target, secs(to.ssh), &self.cancel),
        )
        .await?;

        self.enter("provision");
        let mut env = recipe.script_env();
        if !recipe.spec.secrets.is_empty() {
            env.push((
                crate::secrets::ENV_DIR.to_string(),
                crate::secrets::GUEST_DIR.to_string(),
            ));
        }
        let total = recipe.steps.len();
        for (i, st) in recipe.steps.iter().enumerate() {
            self.reporter.step(i + 1, total, &st.name);
            let tmo = secs(st.timeout);
            let sink = |l: &str| self.reporter.output(l);
            match &st.kind {
                StepKind::Script { path } => {
                    if !self.secrets.is_empty() {
                        // before every script: /run is a tmpfs, a `reboot` step empties it
                        self.on_guest(self.transport.put_secrets(
                            &target,
                            &self.secrets,
                            Duration::from_secs(120),
                        ))
                        .await?;
                    }
                    self.on_guest(self.transport.run_script(&target, path, &env, tmo, &sink))
                        .await?
                }
                StepKind::Upload {
                    src,
                    dest,
                    mode,
                    sha256,
                } => {
                    self.on_guest(self.transport.upload(&target, src, dest, mode, tmo))
                        .await?;
                    let got = self
                        .on_guest(self.transport.remote_sha256(&target, dest))
                        .await?;
                    if !got.eq_ignore_ascii_case(sha256) {
                        return Err(StepError::Other(format!("upload {dest}: sha256 in the guest is {got}, the local file {} has {sha256}", src.display())));
                    }
                    self.reporter
                        .output(&format!("{dest}: sha256 {got} verified"));
                }
                StepKind::Reboot => {
                    self.on_guest(
                        self.transport
                            .reboot(&target, secs(to.reboot), &self.cancel),
                    )
                    .await?
                }
            }
        }
        self.reporter.end_steps();

        self.enter("clean-guest");
        self.on_guest(self.transport.clean(&target)).await?;

        self.enter("shutdown");
        self.cancellable(self.cloud.server_action(&s.uuid, ServerAction::Shutdown))
            .await?;
        match self
            .cancellable(self.cloud.wait_server_status(
                &s.uuid,
                ServerStatus::Stopped,
                secs(to.shutdown),
            ))
            .await
        {
            Ok(_) => {}
            Err(StepError::Cloud(e)) if matches!(*e, ApiError::Timeout { .. }) => {
                self.reporter
                    .line("guest did not power off after ACPI shutdown; forcing stop");
                self.cancellable(self.cloud.server_action(&s.uuid, ServerAction::Stop))
                    .await?;
                self.cancellable(self.cloud.wait_server_status(
                    &s.uuid,
                    ServerStatus::Stopped,
                    secs(to.stop),
                ))
                .await?;
            }
            Err(e) => return Err(e),
        }

        self.enter("delete-server");
        // no recurse: the drive is the product
        self.cancellable(self.cloud.delete_server(&s.uuid, None))
            .await?;
        created.server = None;
        created.maybe_server = None;

        self.enter("finalize");
        let built_at = now_unix();
        let ctx = self.template_ctx(recipe, &build_id, built_at, &fingerprint, &base.uuid);
        let name =
            crate::recipe::render(&recipe.spec.output.name, &ctx).map_err(StepError::Other)?;
        let mut meta = d.meta.clone();
        meta.remove(META_STARTED);
        for (k, v) in &recipe.spec.output.meta {
            meta.insert(
                k.clone(),
                crate::recipe::render(v, &ctx).map_err(StepError::Other)?,
            );
        }
        meta.insert(META_STATE.into(), "image".into());
        meta.insert(META_FINGERPRINT.into(), fingerprint.clone());
        meta.insert("imgbuild.built-at".into(), rfc3339(built_at));
        meta.insert("imgbuild.base".into(), base.uuid.clone());
        meta.insert("imgbuild.version".into(), env!("CARGO_PKG_VERSION").into());
        let mut fin = self.cancellable(self.cloud.get_drive(&d.uuid)).await?;
        fin.name = name;
        fin.meta = meta;
        fin.tags = want_tags
            .iter()
            .filter_map(|n| tag_ids.get(n))
            .map(|u| Ref::Uuid(u.clone()))
            .collect();
        let fin = self.cancellable(self.cloud.update_drive(&fin)).await?;
        // from here on the drive is the product, not a leftover
        *created = Created::default();
        let mut m = self.manifest_of(recipe, &fin, &base, &fingerprint, false, started);
        m.build_id = build_id;
        m.tags = want_tags;
        Ok(m)
    }

    fn template_ctx(
        &self,
        recipe: &Recipe,
        build_id: &str,
        t: u64,
        fingerprint: &str,
        base_uuid: &str,
    ) -> minijinja::Value {
        let mut m: BTreeMap<String, Value> = recipe
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        m.insert("build_id".into(), json!(build_id));
        m.insert("build_time".into(), json!(compact_time(t)));
        let (y, mo, d, ..) = utc_parts(t);
        m.insert("build_date".into(), json!(format!("{y:04}{mo:02}{d:02}")));
        m.insert("recipe".into(), json!(recipe.spec.name));
        m.insert("fingerprint".into(), json!(fingerprint));
        m.insert("base_uuid".into(), json!(base_uuid));
        m.insert("upload_sha256".into(), json!(recipe.upload_sha256()));
        minijinja::Value::from_serialize(&m)
    }

    fn manifest_of(
        &self,
        recipe: &Recipe,
        d: &Drive,
        base: &LibDrive,
        fingerprint: &str,
        cached: bool,
        started: Instant,
    ) -> Manifest {
        let m = &self.cloud.metrics;
        let wall = started.elapsed();
        let api = m.api_time();
        let poll = m.poll_time();
        let guest = Duration::from_micros(self.guest_us.load(Ordering::Relaxed));
        let own = wall.saturating_sub(api + poll + guest);
        Manifest {
            image_uuid: d.uuid.clone(),
            image_name: d.name.clone(),
            cached,
            recipe: recipe.spec.name.clone(),
            fingerprint: fingerprint.to_string(),
            build_id: d.meta.get(META_BUILD_ID).cloned().unwrap_or_default(),
            built_at: d.meta.get("imgbuild.built-at").cloned().unwrap_or_default(),
            base: BaseInfo {
                uuid: base.uuid.clone(),
                name: base.name.clone(),
            },
            vars: recipe.vars.clone(),
            size: d.size,
            tags: Vec::new(),
            meta: d.meta.clone(),
            uploads: recipe.upload_sha256(),
            stats: Stats {
                wall_ms: wall.as_millis() as u64,
                api_calls: self.cloud.calls(),
                api_ms: api.as_millis() as u64,
                poll_ms: poll.as_millis() as u64,
                guest_ms: guest.as_millis() as u64,
                own_ms: own.as_millis() as u64,
            },
        }
    }
}

fn runtime_ip(s: &Server) -> Option<String> {
    s.nics
        .iter()
        .find_map(|n| n.runtime_ipv4().map(str::to_string))
}

/// `--dry-run`: every phase and API call the build would make, with no call made.
pub fn plan(recipe: &Recipe, opts: &Options, base_url: Option<&str>) -> String {
    use std::fmt::Write;
    let r = &recipe.spec;
    let mut o = String::new();
    let _ = writeln!(o, "plan for recipe {} ({})", r.name, recipe.file.display());
    if let Some(u) = base_url {
        let _ = writeln!(o, "API: {u}");
    }
    let _ = writeln!(o, "variables:");
    for (k, v) in &recipe.vars {
        let _ = writeln!(o, "  {k} = {v}");
    }
    let _ = writeln!(
        o,
        "scripts run as root with: {}",
        recipe
            .script_env()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !r.secrets.is_empty() {
        let _ = writeln!(
            o,
            "secrets (values never shown; files under {} for every script): {}",
            crate::secrets::GUEST_DIR,
            r.secrets.join(", ")
        );
    }
    let vars_ctx = minijinja::Value::from_serialize(&recipe.vars);
    let show = |t: &str| crate::recipe::render(t, &vars_ctx).unwrap_or_else(|_| t.to_string());
    let rel = |p: &std::path::Path| {
        // lexical, for display: image-recipes/ubuntu-k8s/../common/x.sh → common/x.sh style
        let mut parts: Vec<String> = Vec::new();
        for c in p
            .strip_prefix(recipe.dir.parent().unwrap_or(&recipe.dir))
            .unwrap_or(p)
            .components()
        {
            match c {
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                std::path::Component::CurDir => {}
                other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
            }
        }
        parts.join("/")
    };
    let _ = writeln!(o, "fingerprint: sha256 over recipe + {} files + vars + base drive uuid (known after resolve-base)", recipe.files.len());
    let b = &r.base;
    let calls = [
        format!("resolve-base   GET  libdrives/detail/?distribution={}&version={}  → pick arch={} image_type={}", b.distribution, b.version, b.arch, b.image_type),
        "cache-lookup   GET  tags/; GET drives/detail/?tag=<imgbuild tag>  → stop here if meta imgbuild.fingerprint matches".to_string(),
        format!("ensure-tags    POST tags/ for each missing one of: {TAG}{}", r.output.tags.iter().map(|t| format!(", {}", show(t))).collect::<String>()),
        "clone          POST libdrives/<base>/action/?do=clone {name: imgbuild-<id>-build}; GET drives/<uuid>/ until unmounted".to_string(),
        format!("resize         POST drives/<uuid>/action/?do=resize size={} + meta imgbuild.* + tag {TAG}; GET until unmounted", recipe.disk_size),
        format!("create-server  POST servers/ cpu={} mem={} smp={} drive 0:0 virtio boot_order 1, NIC dhcp (NAT), meta ssh_public_key=<ephemeral ed25519>", r.server.cpu, recipe.mem, r.server.smp.unwrap_or(1)),
        "start          POST servers/<uuid>/action/?do=start; GET servers/<uuid>/ until running → runtime NAT IP".to_string(),
        format!("wait-ssh       ssh {}@<NAT IP>:22 (ephemeral key, private known_hosts) until it answers", opts.ssh_user.clone().or_else(|| r.ssh_user.clone()).unwrap_or_else(|| "<library default_user>".into())),
    ];
    let _ = writeln!(o, "phases and API calls:");
    for c in &calls {
        let _ = writeln!(o, "  {c}");
    }
    let _ = writeln!(o, "  provision      {} steps:", recipe.steps.len());
    for (i, s) in recipe.steps.iter().enumerate() {
        let what = match &s.kind {
            StepKind::Script { path } => format!("run {}", rel(path)),
            StepKind::Upload {
                src,
                dest,
                mode,
                sha256,
            } => format!(
                "upload {} → {dest} (mode {mode}), verify sha256 {}",
                src.display(),
                sha256
            ),
            StepKind::Reboot => "reboot and wait for SSH (new boot id)".into(),
        };
        let _ = writeln!(
            o,
            "    [{}/{}] {}: {what}",
            i + 1,
            recipe.steps.len(),
            s.name
        );
    }
    let rest = [
        "clean-guest    last SSH login: remove /tmp/imgbuild, the login key and the SSH host keys, sync".to_string(),
        format!("shutdown       POST servers/<uuid>/action/?do=shutdown; GET until stopped (≤{}s, then POST ?do=stop)", r.timeouts.shutdown),
        "delete-server  DELETE servers/<uuid>/ (no recurse: the drive is kept)".to_string(),
        format!("finalize       GET drives/<uuid>/; PUT drives/<uuid>/ name={:?} tags + meta (fingerprint, versions, build time)", show(&r.output.name)),
    ];
    for c in &rest {
        let _ = writeln!(o, "  {c}");
    }
    let _ = writeln!(o, "on failure or SIGINT/SIGTERM/SIGHUP: stop + DELETE the server, DELETE the drive and tags this build created{}", if opts.keep_on_failure { " (disabled by --keep-on-failure)" } else { "" });
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_utc_times() {
        assert_eq!(utc_parts(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_425_720), "2026-11-23T09:22:00Z");
        assert_eq!(compact_time(1_795_425_720), "20261123t092200z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        // beyond jiff's range (it ends 9999-12-30T22:00Z so that any offset stays in range):
        // clamped, not a panic
        assert_eq!(rfc3339(253_402_300_799), "9999-12-30T22:00:00Z");
        assert_eq!(utc_parts(u64::MAX).0, 9999);
    }
}
