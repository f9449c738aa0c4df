//! The build pipeline and the cache lookup: [`Builder::run`] calls one method per [`Phase`], in
//! the order of [`Phase::ALL`]; each returns what the next ones need, or the one error type
//! [`StepError`]. The names and meta that mark what a build creates are in naming.rs; cleanup
//! after a failure and `imgbuild clean` in cleanup.rs; `--dry-run` in plan.rs.
//!
//! A build that fails or is interrupted deletes what it created itself, in reverse order, before
//! exiting.

mod base;
mod verify;

use crate::cleanup::Cleanup;
pub use crate::cleanup::{
    clean, clean_with_bases, delete_drive_when_idle, delete_server_stopping, CleanReport,
    CleanupReport, Created,
};
use crate::cloud::{Cloud, CloudError};
use crate::hostkey::{HostKey, USER_DATA_META};
use crate::naming;
pub use crate::naming::{
    new_build_id, now_unix, META_BUILD_ID, META_FINGERPRINT, META_STARTED, META_STATE, TAG,
};
pub use crate::phase::Phase;
use crate::progress::Reporter;
use crate::recipe::{Recipe, Step, StepKind};
use crate::transport::{Target, Transport, TransportError};
use base::Layers;
pub use base::{look_base_layer, BaseLayerInfo, BaseLocks};
use cloudsigma_api::client::Error as ApiError;
use cloudsigma_api::{
    Drive, DriveClone, DriveStatus, LibDrive, Nic, Ref, Server, ServerAction, ServerCreate,
    ServerDrive, ServerStatus, Tag, TagCreate,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
pub use verify::{CheckResult, VerifyReport};

/// Why a phase failed: the one error type of the pipeline (each phase returns it).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// SSH to the guest, including `HostKeyMismatch`.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No library drive matches `base:` (the message lists what was searched).
    #[error("{0}")]
    NoBase(String),
    #[error("disk_size {disk_size} is smaller than the base drive {base} ({base_size} bytes); raise disk_size")]
    DiskTooSmall {
        disk_size: u64,
        base: String,
        base_size: u64,
    },
    /// An output template (name, tags, meta) did not render.
    #[error("{0}")]
    Template(String),
    #[error("the API did not create the imgbuild tag")]
    NoBuildTag,
    #[error("server {0} is running but has no NAT IP in its runtime")]
    NoNatIp(String),
    #[error("upload {dest}: sha256 in the guest is {got}, the local file {src} has {want}")]
    Sha256Mismatch {
        dest: String,
        got: String,
        src: String,
        want: String,
    },
    /// Making the builder server's host key failed.
    #[error("{0}")]
    HostKey(String),
    /// `--verify` checks that failed, each with what was expected and what the guest said.
    #[error("{0}")]
    Verify(String),
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
        phase: Phase,
        error: String,
        cleanup: CleanupReport,
        kept: bool,
    },
    #[error("build interrupted in phase {phase}")]
    Interrupted {
        phase: Phase,
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
    /// The cached layer this build started from, else the first it captured (recipe
    /// `layers` / `base_until`).
    pub base_layer: Option<BaseLayerInfo>,
    /// Every cached layer of this build, in order: the one it started from (`reused`), then
    /// each it captured.
    pub layers: Vec<BaseLayerInfo>,
    /// The `--verify` checks and their results (None without `--verify`).
    pub verify: Option<VerifyReport>,
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
    /// The phases this run entered, in order, with their wall time (a cached run has two).
    pub phases: Vec<PhaseTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseTime {
    pub phase: Phase,
    pub ms: u64,
}

/// Called with each phase as it begins.
pub type PhaseHook = Arc<dyn Fn(Phase) + Send + Sync>;

#[derive(Clone, Default)]
pub struct Options {
    pub force: bool,
    pub keep_on_failure: bool,
    pub ssh_user: Option<String>,
    pub ssh_port: u16,
    /// `--no-base-cache`: neither use nor capture the recipe's base layer (default: both).
    pub no_base_cache: bool,
    /// `--verify`: boot a clone of the candidate and check it before it gets its name and tags.
    pub verify: bool,
    /// Test hook: called with each phase as it begins (e.g. to cancel at a given phase).
    pub on_phase: Option<PhaseHook>,
}

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
    /// The phases entered so far and when.
    phases: Mutex<Vec<(Phase, Instant)>>,
    /// Held from cache-lookup's tag listing until ensure-tags has created the missing tags: the
    /// builds of a matrix at one location share one, so two of them never both create the
    /// `imgbuild` tag (a second tag of that name would hide the images it tags from the cache
    /// lookup and from `imgbuild clean`).
    pub tags_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Shared by the builds of a matrix at one location: one lock per base fingerprint, held by
    /// a build from base-lookup until its base-capture is done, so that the combinations that
    /// share a base layer capture it once and the others start from it.
    pub base_locks: Option<Arc<BaseLocks>>,
    /// The build's fingerprint once resolve-base has it (a matrix names it for failures too).
    fingerprint: Mutex<Option<String>>,
}

/// What one build knows once its base is resolved; every later phase reads it.
struct Job<'r> {
    recipe: &'r Recipe,
    id: String,
    started: Instant,
    started_unix: u64,
    base: LibDrive,
    fingerprint: String,
}

/// The tags a build puts on its drive, server and image, by name and uuid.
struct Tags {
    /// `imgbuild` and the recipe's output tags (rendered), in that order.
    names: Vec<String>,
    uuids: BTreeMap<String, String>,
}

impl Tags {
    fn build_tag(&self) -> Result<Ref, StepError> {
        let u = self.uuids.get(naming::TAG).ok_or(StepError::NoBuildTag)?;
        Ok(Ref::Uuid(u.clone()))
    }
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
            phases: Mutex::new(Vec::new()),
            fingerprint: Mutex::new(None),
            tags_lock: None,
            base_locks: None,
        }
    }

    /// The fingerprint of the build, once its base drive is resolved.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn enter(&self, p: Phase) {
        self.phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((p, Instant::now()));
        self.reporter.phase(p.name());
        if let Some(h) = &self.opts.on_phase {
            h(p);
        }
    }

    /// The phase entered last (the one a failure happened in).
    fn phase(&self) -> Phase {
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        phases.last().map(|(p, _)| *p).unwrap_or(Phase::ResolveBase)
    }

    /// Each phase entered and its wall time (the last one's until now).
    fn phase_times(&self) -> Vec<PhaseTime> {
        let phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        let ends = phases
            .iter()
            .skip(1)
            .map(|(_, at)| *at)
            .chain([Instant::now()]);
        phases
            .iter()
            .zip(ends)
            .map(|((phase, from), to)| PhaseTime {
                phase: *phase,
                ms: to.saturating_duration_since(*from).as_millis() as u64,
            })
            .collect()
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
        let mut created = Created::default();
        let r = self.run(recipe, &mut created).await;
        // the guest is done with (or lost): release the SSH connection and destroy the key on
        // every outcome, before a cleanup that may take minutes
        self.transport.finish().await;
        let e = match r {
            Ok(m) => return Ok(m),
            Err(e) => e,
        };
        let phase = self.phase();
        let interrupted = matches!(e, StepError::Interrupted);
        if !interrupted {
            self.reporter.line(&format!("error in phase {phase}: {e}"));
        }
        let kept = self.opts.keep_on_failure;
        let cleanup = if kept {
            self.keep(&created)
        } else {
            self.cleanup(&created).await
        };
        Err(match interrupted {
            true => BuildError::Interrupted {
                phase,
                cleanup,
                kept,
            },
            false => BuildError::Failed {
                phase,
                error: e.to_string(),
                cleanup,
                kept,
            },
        })
    }

    /// `--keep-on-failure`: name what is left for inspection instead of deleting it.
    fn keep(&self, created: &Created) -> CleanupReport {
        self.reporter.line("--keep-on-failure: leaving the build's resources for inspection (remove them with `imgbuild clean --all`):");
        let mut rep = CleanupReport::default();
        if let Some(s) = &created.server {
            rep.left.push(format!("server {s}"));
        }
        if let Some(d) = &created.drive {
            rep.left.push(format!("drive {d}"));
        }
        for e in &created.extra {
            let id = e
                .uuid
                .clone()
                .unwrap_or_else(|| format!("named {}", e.name));
            rep.left.push(format!("{} {id} ({})", e.kind, e.name));
        }
        for l in &rep.left {
            self.reporter.line(&format!("  kept {l}"));
        }
        rep
    }

    /// Delete what a failed build created (see [`Cleanup`]).
    pub async fn cleanup(&self, created: &Created) -> CleanupReport {
        let c = Cleanup {
            cloud: &self.cloud,
            reporter: &self.reporter,
            abandon: &self.abandon,
        };
        c.run(created).await
    }

    /// The pipeline: one call per phase of [`Phase::ALL`], in that order. `created` is what the
    /// cleanup guard deletes should a phase fail.
    async fn run(&self, recipe: &Recipe, created: &mut Created) -> Result<Manifest, StepError> {
        let started = Instant::now();
        let started_unix = naming::now_unix();
        let (base, fingerprint) = self.resolve_base(recipe).await?;
        let job = Job {
            recipe,
            id: naming::new_build_id(),
            started,
            started_unix,
            base,
            fingerprint,
        };
        let guard = match &self.tags_lock {
            Some(l) => Some(
                self.cancellable(async { Ok::<_, StepError>(l.lock().await) })
                    .await?,
            ),
            None => None,
        };
        let known = match self.cache_lookup(&job).await? {
            Lookup::Hit(m) => return Ok(*m),
            Lookup::Miss(known) => known,
        };
        let tags = self.ensure_tags(&job, &known, created).await?;
        drop(guard);
        let mut layer = self.base_lookup(&job, &tags).await?;
        let drive = self.clone_base(&job, &mut layer, created).await?;
        let drive = self.resize(&job, drive, &tags).await?;
        let (server, host_key) = self.create_server(&job, &drive, &tags, created).await?;
        let ip = self.start(&job, &server).await?;
        let mut target = self.wait_ssh(&job, &server, ip, host_key).await?;
        let all = recipe.steps.len();
        let mut first = 0;
        if let Some(l) = &mut layer {
            first = l.start_steps();
            for j in l.to_capture() {
                let n = l.all[j].1;
                self.enter(Phase::ProvisionBase);
                // a layer that ends in a `reboot` step: the capture's power cycle (ACPI
                // shutdown, start, SSH on the same host key) is that reboot — a cold one — so
                // the build boots once there, not twice
                let st = &recipe.steps[n - 1];
                let at_reboot = matches!(st.kind, StepKind::Reboot);
                let end = if at_reboot { n - 1 } else { n };
                self.provision_steps(&job, &target, first..end).await?;
                if at_reboot {
                    let name = format!("{} (the layer capture's power cycle)", st.name);
                    self.reporter.step(n, all, &name);
                }
                target = self
                    .base_capture(&job, (l, j), (&server, &drive), target, created)
                    .await?;
                self.reporter.end_steps();
                first = n;
            }
        }
        self.enter(Phase::Provision);
        self.provision_steps(&job, &target, first..all).await?;
        self.clean_guest(&target).await?;
        self.shutdown(&job, &server).await?;
        self.delete_server(&server, created).await?;
        let report = self.verify(&job, &drive, created).await?;
        let mut m = self
            .finalize(&job, &drive, &tags, layer.as_ref(), created)
            .await?;
        m.verify = report;
        Ok(m)
    }

    /// The newest library drive matching `base:`, no larger than `disk_size`, and the build's
    /// fingerprint (which includes the base).
    async fn resolve_base(&self, recipe: &Recipe) -> Result<(LibDrive, String), StepError> {
        self.enter(Phase::ResolveBase);
        let b = &recipe.spec.base;
        let q = [
            ("distribution", b.distribution.as_str()),
            ("version", b.version.as_str()),
        ];
        let libs = self.cancellable(self.cloud.list_libdrives(&q)).await?;
        let base = pick_base(&libs, recipe).map_err(StepError::NoBase)?;
        if recipe.disk_size < base.size {
            return Err(StepError::DiskTooSmall {
                disk_size: recipe.disk_size,
                base: base.name,
                base_size: base.size,
            });
        }
        let fp = recipe.fingerprint(&base.uuid);
        *self.fingerprint.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp.clone());
        let (name, uuid) = (&base.name, &base.uuid);
        let short = &fp[..16];
        self.reporter
            .line(&format!("base {name} ({uuid}), fingerprint {short}"));
        Ok((base, fp))
    }

    /// An image with this build's fingerprint ends the build (unless `--force`); otherwise the
    /// account's tags, for ensure-tags.
    async fn cache_lookup(&self, job: &Job<'_>) -> Result<Lookup, StepError> {
        self.enter(Phase::CacheLookup);
        let tags = self.cancellable(self.cloud.list_tags()).await?;
        let ours = tags.iter().find(|t| t.name == naming::TAG);
        let Some(ours) = ours.filter(|_| !self.opts.force) else {
            return Ok(Lookup::Miss(tags));
        };
        let q = [("tag", ours.uuid.as_str())];
        let drives = self
            .cancellable(self.cloud.list_drives_filtered(&q))
            .await?;
        let Some(d) = drives
            .iter()
            .find(|d| naming::is_image_of(d, &job.fingerprint))
        else {
            return Ok(Lookup::Miss(tags));
        };
        self.reporter.line(&format!(
            "image with this fingerprint exists: {} ({}); nothing to do (use --force to rebuild)",
            d.name, d.uuid
        ));
        let mut m = self.manifest_of(job, d, true);
        m.tags = d
            .tags
            .iter()
            .filter_map(|r| tags.iter().find(|t| t.uuid == r.uuid()))
            .map(|t| t.name.clone())
            .collect();
        Ok(Lookup::Hit(Box::new(m)))
    }

    /// Create the tags the build needs that the account lacks (`known`).
    async fn ensure_tags(
        &self,
        job: &Job<'_>,
        known: &[Tag],
        created: &mut Created,
    ) -> Result<Tags, StepError> {
        self.enter(Phase::EnsureTags);
        let ctx = self.template_ctx(job, job.started_unix);
        let mut names = vec![naming::TAG.to_string()];
        for t in &job.recipe.spec.output.tags {
            let v = crate::recipe::render(t, &ctx).map_err(StepError::Template)?;
            if !names.contains(&v) {
                names.push(v);
            }
        }
        let mut uuids = BTreeMap::new();
        for name in &names {
            if let Some(t) = known.iter().find(|t| &t.name == name) {
                uuids.insert(name.clone(), t.uuid.clone());
                continue;
            }
            let tc = TagCreate {
                name: name.clone(),
                ..Default::default()
            };
            let t = self.cancellable(self.cloud.create_tag(&tc)).await?;
            created.tags.push((t.uuid.clone(), t.name.clone()));
            uuids.insert(t.name.clone(), t.uuid.clone());
        }
        Ok(Tags { names, uuids })
    }

    /// Clone the base layer (when base-lookup found one) or else the library drive into the
    /// build drive `imgbuild-<id>-build`. A layer that cannot be cloned is not captured again;
    /// the build starts from the next layer found under it, else from the library drive.
    async fn clone_base(
        &self,
        job: &Job<'_>,
        layer: &mut Option<Layers>,
        created: &mut Created,
    ) -> Result<Drive, StepError> {
        self.enter(Phase::Clone);
        if let Some(l) = layer.as_mut() {
            while let Some((_, from)) = l.from.clone() {
                match self.clone_into_build(job, &from.uuid, true, created).await {
                    Err(StepError::Interrupted) => return Err(StepError::Interrupted),
                    Err(e) => {
                        // the layer exists (it is not captured again); the next one found, or
                        // the library drive. The locks of the layers now captured were
                        // released: at worst another build of the run captures one too.
                        self.forget_build_drive(created).await;
                        let next = match l.fall_back().cloned() {
                            Some((i, d)) => format!(
                                "the layer {} ({}): steps {}.. only",
                                d.name,
                                d.uuid,
                                l.all[i].1 + 1
                            ),
                            None => "a full build from the library drive".into(),
                        };
                        let keep = l.keep_note();
                        let keep = if keep.is_empty() {
                            String::new()
                        } else {
                            format!(", {keep}")
                        };
                        self.reporter.line(&format!(
                            "base layer {} ({}) could not be cloned ({e}); falling back to {next}{keep}",
                            from.name, from.uuid
                        ));
                    }
                    ok => return ok,
                }
            }
        }
        self.clone_into_build(job, &job.base.uuid, false, created)
            .await
    }

    /// Clone `src` (an account drive, or the library drive) into `imgbuild-<id>-build`.
    async fn clone_into_build(
        &self,
        job: &Job<'_>,
        src: &str,
        account_drive: bool,
        created: &mut Created,
    ) -> Result<Drive, StepError> {
        let name = naming::drive_name(&job.id);
        created.maybe_drive = Some(name.clone());
        let req = DriveClone {
            name: Some(name),
            media: Some("disk".into()),
            ..Default::default()
        };
        let d = match account_drive {
            true => self.cancellable(self.cloud.clone_drive(src, &req)).await?,
            false => {
                self.cancellable(self.cloud.clone_libdrive(src, &req))
                    .await?
            }
        };
        created.drive = Some(d.uuid.clone());
        let wait = Duration::from_secs(job.recipe.spec.timeouts.clone);
        self.cancellable(
            self.cloud
                .wait_drive_status(&d.uuid, DriveStatus::Unmounted, wait),
        )
        .await
    }

    /// Grow the drive to `disk_size`, marking it as this build's (meta and tag).
    async fn resize(&self, job: &Job<'_>, d: Drive, tags: &Tags) -> Result<Drive, StepError> {
        self.enter(Phase::Resize);
        // resize takes the full definition: set our meta and tag in the same call
        let mut def = d;
        // a clone of a base layer carries the layer's meta: the build drive is not a layer
        for k in [
            naming::META_BASE_FINGERPRINT,
            naming::META_BASE_CREATED,
            naming::META_BASE_STEPS,
        ] {
            def.meta.remove(k);
        }
        def.meta.extend(self.building_meta(job));
        def.tags = vec![tags.build_tag()?];
        let d = self
            .cancellable(self.cloud.resize_drive(&def, job.recipe.disk_size))
            .await?;
        let wait = Duration::from_secs(job.recipe.spec.timeouts.resize);
        self.cancellable(
            self.cloud
                .wait_drive_status(&d.uuid, DriveStatus::Unmounted, wait),
        )
        .await
    }

    fn building_meta(&self, job: &Job<'_>) -> BTreeMap<String, String> {
        naming::building_meta(&job.id, job.started_unix, &job.recipe.spec.name)
    }

    /// The builder server `imgbuild-<id>-builder`, booting the build drive, with our login key
    /// and a host key made for it (see [`crate::hostkey`]); the server and that key's public half.
    async fn create_server(
        &self,
        job: &Job<'_>,
        d: &Drive,
        tags: &Tags,
        created: &mut Created,
    ) -> Result<(Server, String), StepError> {
        self.enter(Phase::CreateServer);
        let name = naming::server_name(&job.id);
        let mut meta = self.building_meta(job);
        // cloud-init's CloudSigma datasource reads meta["ssh_public_key"] unconditionally
        meta.insert("ssh_public_key".into(), self.transport.public_key());
        let host_key = HostKey::generate().map_err(StepError::HostKey)?;
        meta.insert(USER_DATA_META.into(), host_key.user_data().to_string());
        let server = &job.recipe.spec.server;
        let mut req = ServerCreate {
            name: name.clone(),
            cpu: server.cpu,
            mem: job.recipe.mem,
            smp: server.smp,
            vnc_password: random_password(),
            drives: vec![ServerDrive::boot_disk(&d.uuid)],
            // one public NIC with DHCP = CloudSigma's NAT address
            nics: vec![Nic::public_dhcp()],
            meta,
            tags: vec![tags.build_tag()?],
            pubkeys: Vec::new(),
        };
        created.maybe_server = Some(name);
        let created_server = self.cancellable(self.cloud.create_server(&req)).await;
        // best effort: our copy of the private key in the request goes now (HostKey zeroes
        // its own when dropped)
        if let Some(v) = req.meta.get_mut(USER_DATA_META) {
            zeroize::Zeroize::zeroize(v);
        }
        let s = created_server?;
        created.server = Some(s.uuid.clone());
        Ok((s, host_key.public().to_string()))
    }

    /// Start the server; its NAT address.
    async fn start(&self, job: &Job<'_>, s: &Server) -> Result<String, StepError> {
        self.enter(Phase::Start);
        self.power_on(job, s).await
    }

    /// Start a server and wait for its NAT address.
    async fn power_on(&self, job: &Job<'_>, s: &Server) -> Result<String, StepError> {
        let wait = Duration::from_secs(job.recipe.spec.timeouts.start);
        self.cancellable(self.cloud.server_action(&s.uuid, ServerAction::Start))
            .await?;
        let s = self
            .cancellable(
                self.cloud
                    .wait_server_status(&s.uuid, ServerStatus::Running, wait),
            )
            .await?;
        if let Some(ip) = runtime_ip(&s) {
            return Ok(ip);
        }
        // the NAT address may appear in the runtime a little after `running`; a timeout here
        // reads "… waiting for server <uuid> to become running with a NAT IP"
        let what = "running with a NAT IP";
        let s = self
            .cancellable(self.cloud.wait_server_until(
                &s.uuid,
                what,
                Duration::from_secs(60),
                |s| runtime_ip(s).is_some(),
            ))
            .await?;
        runtime_ip(&s).ok_or_else(|| StepError::NoNatIp(s.uuid.clone()))
    }

    /// Wait until the login works on the server with `host_key`; where to reach the guest from
    /// now on.
    async fn wait_ssh(
        &self,
        job: &Job<'_>,
        s: &Server,
        ip: String,
        host_key: String,
    ) -> Result<Target, StepError> {
        self.enter(Phase::WaitSsh);
        let target = self.target(job, ip, host_key);
        self.reporter.line(&format!(
            "builder server {} at {}; waiting for SSH as {}",
            s.uuid, target.host, target.user
        ));
        let wait = Duration::from_secs(job.recipe.spec.timeouts.ssh);
        self.on_guest(self.transport.wait_ready(&target, wait, &self.cancel))
            .await?;
        Ok(target)
    }

    /// Where to reach a server of this build: its NAT address, the login user, `host_key`.
    fn target(&self, job: &Job<'_>, ip: String, host_key: String) -> Target {
        let user = self
            .opts
            .ssh_user
            .clone()
            .or_else(|| job.recipe.spec.ssh_user.clone())
            .or_else(|| job.base.default_user.clone())
            .unwrap_or_else(|| "cloudsigma".into());
        let port = match self.opts.ssh_port {
            0 => 22,
            p => p,
        };
        Target {
            host: ip,
            port,
            user,
            host_key,
        }
    }

    /// The recipe's steps `range` (indices from 0), in order; progress numbers them of all.
    async fn provision_steps(
        &self,
        job: &Job<'_>,
        target: &Target,
        range: std::ops::Range<usize>,
    ) -> Result<(), StepError> {
        let recipe = job.recipe;
        let mut env = recipe.script_env();
        if !recipe.spec.secrets.is_empty() {
            env.push((
                crate::secrets::ENV_DIR.to_string(),
                crate::secrets::GUEST_DIR.to_string(),
            ));
        }
        let total = recipe.steps.len();
        let mut i = range.start;
        while i < range.end {
            // consecutive upload steps (a directory's files, the agent and its unit) go as one
            // transport operation: one SSH session instead of one each (issue 25)
            let uploads = recipe.steps[i..range.end]
                .iter()
                .take_while(|s| matches!(s.kind, StepKind::Upload { .. }))
                .count();
            if uploads > 1 {
                self.upload_steps(target, &recipe.steps[i..i + uploads], i + 1, total)
                    .await?;
                i += uploads;
                continue;
            }
            let st = &recipe.steps[i];
            self.reporter.step(i + 1, total, &st.name);
            self.run_step(job, target, st, &env).await?;
            i += 1;
        }
        self.reporter.end_steps();
        Ok(())
    }

    /// Upload steps `first`.. (numbered from 1) in one transport operation, each file's sha256
    /// checked in the guest as [`Self::upload_verified`] does; reported as one progress step.
    async fn upload_steps(
        &self,
        target: &Target,
        steps: &[Step],
        first: usize,
        total: usize,
    ) -> Result<(), StepError> {
        let mut files = Vec::with_capacity(steps.len());
        let mut tmo = Duration::ZERO;
        for st in steps {
            if let StepKind::Upload {
                src,
                dest,
                mode,
                sha256,
            } = &st.kind
            {
                files.push((src.as_path(), dest.as_str(), mode.as_str(), sha256.as_str()));
                tmo += Duration::from_secs(st.timeout);
            }
        }
        let last = first + steps.len() - 1;
        let name = match (steps.first(), steps.last()) {
            (Some(a), Some(b)) => format!(
                "{} … {} (steps {first}–{last}: {} uploads, one session)",
                a.name,
                b.name,
                steps.len()
            ),
            _ => return Ok(()),
        };
        self.reporter.step(first, total, &name);
        let plan: Vec<_> = files.iter().map(|(s, d, m, _)| (*s, *d, *m)).collect();
        let sums = self
            .on_guest(self.transport.upload_many(target, &plan, tmo))
            .await?;
        for ((src, dest, _, want), got) in files.iter().zip(sums) {
            if !got.eq_ignore_ascii_case(want) {
                return Err(StepError::Sha256Mismatch {
                    dest: (*dest).into(),
                    got,
                    src: src.display().to_string(),
                    want: (*want).into(),
                });
            }
            self.reporter
                .output(&format!("{dest}: sha256 {got} verified"));
        }
        Ok(())
    }

    async fn run_step(
        &self,
        job: &Job<'_>,
        target: &Target,
        st: &Step,
        env: &[(String, String)],
    ) -> Result<(), StepError> {
        let tmo = Duration::from_secs(st.timeout);
        let t = &self.transport;
        match &st.kind {
            StepKind::Script { path, uses } => {
                // the files the script sources, uploaded with it every time: a reboot may have
                // emptied /tmp, and no step relies on another's upload
                for h in uses {
                    self.upload_verified(target, &h.src, &h.dest, "0644", &h.sha256, tmo)
                        .await?;
                }
                if !self.secrets.is_empty() {
                    // before every script: /run is a tmpfs, a `reboot` step empties it
                    let put = t.put_secrets(target, &self.secrets, Duration::from_secs(120));
                    self.on_guest(put).await?;
                }
                let sink = |l: &str| self.reporter.output(l);
                self.on_guest(t.run_script(target, path, env, tmo, &sink))
                    .await
            }
            StepKind::Upload {
                src,
                dest,
                mode,
                sha256,
            } => {
                self.upload_verified(target, src, dest, mode, sha256, tmo)
                    .await
            }
            StepKind::Reboot => {
                let wait = Duration::from_secs(job.recipe.spec.timeouts.reboot);
                self.on_guest(t.reboot(target, wait, &self.cancel)).await
            }
        }
    }

    /// Upload `src` to `dest` and check its sha256 in the guest.
    async fn upload_verified(
        &self,
        target: &Target,
        src: &std::path::Path,
        dest: &str,
        mode: &str,
        sha256: &str,
        tmo: Duration,
    ) -> Result<(), StepError> {
        let t = &self.transport;
        let got = self
            .on_guest(t.upload_hashed(target, src, dest, mode, tmo))
            .await?;
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(StepError::Sha256Mismatch {
                dest: dest.into(),
                got,
                src: src.display().to_string(),
                want: sha256.into(),
            });
        }
        self.reporter
            .output(&format!("{dest}: sha256 {got} verified"));
        Ok(())
    }

    /// The last login: the guest forgets the build (see [`Transport::clean`]).
    async fn clean_guest(&self, target: &Target) -> Result<(), StepError> {
        self.enter(Phase::CleanGuest);
        self.on_guest(self.transport.clean(target)).await
    }

    /// ACPI shutdown; a hard stop if the guest does not power off in time.
    async fn shutdown(&self, job: &Job<'_>, s: &Server) -> Result<(), StepError> {
        self.enter(Phase::Shutdown);
        self.power_off(job, s).await
    }

    /// ACPI shutdown, and a hard stop if the guest does not power off in time.
    async fn power_off(&self, job: &Job<'_>, s: &Server) -> Result<(), StepError> {
        let to = &job.recipe.spec.timeouts;
        let stopped = |secs| {
            self.cloud
                .wait_server_status(&s.uuid, ServerStatus::Stopped, Duration::from_secs(secs))
        };
        self.cancellable(self.cloud.server_action(&s.uuid, ServerAction::Shutdown))
            .await?;
        match self.cancellable(stopped(to.shutdown)).await {
            Ok(_) => return Ok(()),
            Err(StepError::Cloud(e)) if matches!(*e, ApiError::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
        self.reporter
            .line("guest did not power off after ACPI shutdown; forcing stop");
        self.cancellable(self.cloud.server_action(&s.uuid, ServerAction::Stop))
            .await?;
        self.cancellable(stopped(to.stop)).await.map(|_| ())
    }

    async fn delete_server(&self, s: &Server, created: &mut Created) -> Result<(), StepError> {
        self.enter(Phase::DeleteServer);
        // no recurse: the drive is the product
        self.cancellable(self.cloud.delete_server(&s.uuid, None))
            .await?;
        created.server = None;
        created.maybe_server = None;
        Ok(())
    }

    /// The drive becomes the image: its name, tags and meta; from here on it is the product,
    /// not a leftover.
    async fn finalize(
        &self,
        job: &Job<'_>,
        d: &Drive,
        tags: &Tags,
        layer: Option<&Layers>,
        created: &mut Created,
    ) -> Result<Manifest, StepError> {
        self.enter(Phase::Finalize);
        let built_at = naming::now_unix();
        let ctx = self.template_ctx(job, built_at);
        let render = |t: &str| crate::recipe::render(t, &ctx).map_err(StepError::Template);
        let name = render(&job.recipe.spec.output.name)?;
        let mut meta = d.meta.clone();
        meta.remove(naming::META_STARTED);
        meta.extend(self.output_meta(job, built_at)?);
        let layer_info = layer.and_then(Layers::info);
        if let Some(l) = &layer_info {
            meta.insert(naming::META_BASE_LAYER.into(), l.uuid.clone());
        }
        meta.extend(
            [
                (naming::META_STATE, naming::STATE_IMAGE.to_string()),
                (naming::META_FINGERPRINT, job.fingerprint.clone()),
                (naming::META_BUILT_AT, rfc3339(built_at)),
                (naming::META_BASE, job.base.uuid.clone()),
                (naming::META_VERSION, env!("CARGO_PKG_VERSION").into()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        let mut fin = self.cancellable(self.cloud.get_drive(&d.uuid)).await?;
        fin.name = name;
        fin.meta = meta;
        fin.tags = tags
            .names
            .iter()
            .filter_map(|n| tags.uuids.get(n))
            .map(|u| Ref::Uuid(u.clone()))
            .collect();
        let fin = self.cancellable(self.cloud.update_drive(&fin)).await?;
        *created = Created::default();
        let mut m = self.manifest_of(job, &fin, false);
        m.build_id = job.id.clone();
        m.tags = tags.names.clone();
        m.base_layer = layer_info;
        m.layers = layer.map(Layers::infos).unwrap_or_default();
        Ok(m)
    }

    /// The recipe's `output.meta`, rendered at time `t`: what the image's meta will say (its
    /// tagged versions), also what `--verify` compares the guest against.
    fn output_meta(&self, job: &Job<'_>, t: u64) -> Result<BTreeMap<String, String>, StepError> {
        let ctx = self.template_ctx(job, t);
        let mut meta = BTreeMap::new();
        for (k, v) in &job.recipe.spec.output.meta {
            let r = crate::recipe::render(v, &ctx).map_err(StepError::Template)?;
            meta.insert(k.clone(), r);
        }
        Ok(meta)
    }

    fn template_ctx(&self, job: &Job<'_>, t: u64) -> minijinja::Value {
        let mut m: BTreeMap<String, Value> = job
            .recipe
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let (y, mo, d, ..) = utc_parts(t);
        m.extend(
            [
                ("build_id", json!(job.id)),
                ("build_time", json!(compact_time(t))),
                ("build_date", json!(format!("{y:04}{mo:02}{d:02}"))),
                ("recipe", json!(job.recipe.spec.name)),
                ("fingerprint", json!(job.fingerprint)),
                ("base_uuid", json!(job.base.uuid)),
                ("upload_sha256", json!(job.recipe.upload_sha256())),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        minijinja::Value::from_serialize(&m)
    }

    fn manifest_of(&self, job: &Job<'_>, d: &Drive, cached: bool) -> Manifest {
        let m = &self.cloud.metrics;
        let wall = job.started.elapsed();
        let api = m.api_time();
        let poll = m.poll_time();
        let guest = Duration::from_micros(self.guest_us.load(Ordering::Relaxed));
        let own = wall.saturating_sub(api + poll + guest);
        let meta = |k: &str| d.meta.get(k).cloned().unwrap_or_default();
        Manifest {
            image_uuid: d.uuid.clone(),
            image_name: d.name.clone(),
            cached,
            recipe: job.recipe.spec.name.clone(),
            fingerprint: job.fingerprint.clone(),
            build_id: meta(naming::META_BUILD_ID),
            built_at: meta(naming::META_BUILT_AT),
            base: BaseInfo {
                uuid: job.base.uuid.clone(),
                name: job.base.name.clone(),
            },
            vars: job.recipe.vars.clone(),
            size: d.size,
            tags: Vec::new(),
            meta: d.meta.clone(),
            uploads: job.recipe.upload_sha256(),
            base_layer: None,
            layers: Vec::new(),
            verify: None,
            stats: Stats {
                wall_ms: wall.as_millis() as u64,
                api_calls: self.cloud.calls(),
                api_ms: api.as_millis() as u64,
                poll_ms: poll.as_millis() as u64,
                guest_ms: guest.as_millis() as u64,
                own_ms: own.as_millis() as u64,
                phases: self.phase_times(),
            },
        }
    }
}

/// What cache-lookup found: the image already built, or the account's tags.
enum Lookup {
    Hit(Box<Manifest>),
    Miss(Vec<Tag>),
}

fn runtime_ip(s: &Server) -> Option<String> {
    s.nics
        .iter()
        .find_map(|n| n.runtime_ipv4().map(str::to_string))
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
