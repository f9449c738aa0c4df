//! The bootstrap sequence, in cloud-init's order, with one status phase per step.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudsigma_api::{context, ServerContext};

use crate::cloudconfig::{self, CloudConfig, WriteFile};
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{self, atomic_write, under, Owner, WriteMode};
use crate::report::{Logger, Phase, Status, StepError};
use crate::steps::{
    disk_setup, fs_setup, hostname, mounts, node_ip, ntp, scripts, ssh_keys, swap, users,
    write_files, Cx,
};
use crate::{net, template, userdata};

pub use crate::paths::{LOG_FILE, MARKER, OUTPUT_FILE, STATE_DIR, STATUS_FILE};

/// Exit codes (docs/agent.md).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Clone)]
pub struct Opts {
    pub context_file: Option<PathBuf>,
    pub serial: PathBuf,
    pub root: PathBuf,
    pub force: bool,
    pub timeout: Duration,
    pub status_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub net_fixture: Option<PathBuf>,
    pub quiet: bool,
}

/// Err(()): the sequence stops; the failing step has already recorded why in the status.
type Flow<T> = std::result::Result<T, ()>;

/// The skip reason for a step whose list in the data is empty.
fn if_empty<'a, T>(items: &[T], why: &'a str) -> Option<&'a str> {
    items.is_empty().then_some(why)
}

struct Agent<'a> {
    o: &'a Opts,
    real_root: bool,
    log: Logger,
    status: Status,
    status_path: PathBuf,
    marker: PathBuf,
}

pub fn run(o: &Opts) -> i32 {
    let real_root = o.root == Path::new("/");
    let marker = under(&o.root, MARKER);
    let log_path = o
        .log_file
        .clone()
        .unwrap_or_else(|| under(&o.root, LOG_FILE));
    let mut a = Agent {
        o,
        real_root,
        log: Logger::open(&log_path, o.quiet),
        status: Status::new(&marker),
        status_path: o
            .status_file
            .clone()
            .unwrap_or_else(|| under(&o.root, STATUS_FILE)),
        marker,
    };
    if let Some(e) = a.log.open_error.clone() {
        a.status.warnings.push(e.clone());
        eprintln!("cloudsigma-agent: {e}");
    }
    a.log.info(&format!(
        "cloudsigma-agent {} starting (root {}, source {})",
        env!("CARGO_PKG_VERSION"),
        o.root.display(),
        o.context_file
            .as_ref()
            .map(|p| format!("file {}", p.display()))
            .unwrap_or_else(|| format!("serial {}", o.serial.display()))
    ));
    // A "running" status first: if systemd kills us on timeout, the file says where we were.
    if let Err(e) = a.status.write(&a.status_path) {
        a.log.warn(&format!(
            "cannot write status file {}: {e}",
            a.status_path.display()
        ));
    }
    let code = match a.sequence() {
        Ok(result) => {
            a.status.result = result.into();
            EXIT_OK
        }
        Err(()) => {
            a.status.result = "failure".into();
            // The marker must never survive a failed run.
            if a.marker.exists() {
                match fs::remove_file(&a.marker) {
                    Ok(()) => a.log.warn(&format!(
                        "removed {} because the bootstrap failed",
                        a.marker.display()
                    )),
                    Err(e) => a
                        .log
                        .error(&format!("cannot remove {}: {e}", a.marker.display())),
                }
            }
            EXIT_FAILED
        }
    };
    a.finish();
    code
}

impl Agent<'_> {
    /// Run one step as a status phase. The step's error is recorded (log, phase detail, the
    /// status file's `error`); the caller only learns that the sequence must stop.
    fn phase<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Flow<T> {
        let start_ms = self.status.elapsed_ms();
        let t = Instant::now();
        self.log.info(&format!("phase {name}: start"));
        let r = f(self);
        let duration_ms = t.elapsed().as_millis() as u64;
        match r {
            Ok(v) => {
                self.log
                    .info(&format!("phase {name}: ok ({duration_ms} ms)"));
                self.status.phases.push(Phase {
                    name: name.into(),
                    start_ms,
                    duration_ms,
                    result: "ok".into(),
                    detail: None,
                });
                Ok(v)
            }
            Err(e) => {
                let msg = e.to_string();
                self.log.error(&format!("phase {name}: FAILED: {msg}"));
                self.status.phases.push(Phase {
                    name: name.into(),
                    start_ms,
                    duration_ms,
                    result: "failed".into(),
                    detail: Some(msg.clone()),
                });
                self.status.error = Some(StepError {
                    step: name.into(),
                    message: msg,
                });
                Err(())
            }
        }
    }

    /// Run `f` as phase `name`, or record the phase as skipped with the reason in `skip`.
    fn step(
        &mut self,
        name: &str,
        skip: Option<&str>,
        f: impl FnOnce(&mut Cx) -> Result<()>,
    ) -> Flow<()> {
        match skip {
            Some(why) => {
                self.skip(name, why);
                Ok(())
            }
            None => self.phase(name, |a| f(&mut a.cx())),
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.log.info(&format!("phase {name}: skipped ({why})"));
        let start_ms = self.status.elapsed_ms();
        self.status.phases.push(Phase {
            name: name.into(),
            start_ms,
            duration_ms: 0,
            result: "skipped".into(),
            detail: Some(why.into()),
        });
    }

    fn warn(&mut self, msg: String) {
        self.log.warn(&msg);
        self.status.warnings.push(msg);
    }

    /// What a step may touch: the root, the log and the status file's warnings.
    fn cx(&mut self) -> Cx<'_> {
        Cx {
            root: &self.o.root,
            real_root: self.real_root,
            log: &mut self.log,
            warnings: &mut self.status.warnings,
        }
    }

    fn stamp_path(&self, uuid: &str) -> PathBuf {
        under(&self.o.root, STATE_DIR).join(format!("instance-{uuid}.done"))
    }

    /// The steps of docs/agent.md's table, in its order. Returns the final result word
    /// ("success" | "skipped"), or Err after the failing step recorded why.
    fn sequence(&mut self) -> Flow<&'static str> {
        // 1-4: context, user data, template, cloud-config.
        let Some((ctx, kind, cfg)) = self.read_data()? else {
            return Ok("skipped");
        };
        let uuid = ctx.uuid.clone();
        // 5: bootcmd runs on every boot, like cloud-init's.
        let bootcmd = scripts::shellify(&cfg.bootcmd);
        self.step("bootcmd", if_empty(&cfg.bootcmd, "no bootcmd"), |cx| {
            scripts::run(cx, "bootcmd", &bootcmd, &uuid)
        })?;
        if self.already_bootstrapped(&uuid)? {
            return Ok("skipped");
        }
        // 6-11: once per instance.
        self.configure(&ctx, &kind, &cfg)?;
        // 12-13.
        self.phase("marker", |a| {
            if a.marker.exists() {
                Ok(())
            } else {
                Err(Error::MarkerMissing {
                    marker: a.marker.clone(),
                    output: under(&a.o.root, OUTPUT_FILE),
                })
            }
        })?;
        let stamp = self.stamp_path(&uuid);
        let stamp_body = format!("{}\n", fsutil::now_rfc3339());
        self.phase("done_stamp", |_| {
            atomic_write(
                &stamp,
                stamp_body.as_bytes(),
                0o644,
                Owner::default(),
                WriteMode::Replace,
            )
            .map(|_| ())
            .at(IoOp::Access, &stamp)
        })?;
        Ok("success")
    }

    /// Steps 6-11: what cloud-init's init, config and final stages do once per instance.
    fn configure(
        &mut self,
        ctx: &ServerContext,
        kind: &userdata::Kind,
        cfg: &CloudConfig,
    ) -> Flow<()> {
        let (now, deferred): (Vec<WriteFile>, Vec<WriteFile>) =
            cfg.write_files.iter().cloned().partition(|f| !f.defer);
        self.step("write_files", if_empty(&now, "no files"), |cx| {
            write_files::apply(cx, &now)
        })?;
        // cloud-init's init stage: disk_setup (partitions, then filesystems), then mounts.
        self.step(
            "disk_setup",
            if_empty(&cfg.disk_setup, "no disks to partition"),
            |cx| disk_setup::apply(cx, &cfg.disk_setup),
        )?;
        self.step(
            "fs_setup",
            if_empty(&cfg.fs_setup, "no filesystems"),
            |cx| fs_setup::apply(cx, &cfg.fs_setup),
        )?;
        let no_mounts = cfg.mounts.is_none().then_some("no mounts");
        self.step("mounts", no_mounts, |cx| {
            mounts::apply(cx, cfg.mounts.as_deref().unwrap_or_default())
        })?;
        let from_context = template::local_hostname(ctx);
        self.phase("hostname", |a| {
            let Some(name) = hostname::write(&mut a.cx(), &cfg.host, &from_context)? else {
                return Ok(());
            };
            a.status.hostname = Some(name.clone());
            hostname::set_running(&mut a.cx(), &name)
        })?;
        self.step("users", if_empty(&cfg.users, "no users"), |cx| {
            users::apply(cx, &cfg.users)
        })?;
        let meta_key = ctx.meta.get("ssh_public_key").map(String::as_str);
        self.step("ssh_keys", None, |cx| {
            ssh_keys::apply(cx, meta_key, &cfg.ssh_authorized_keys)
        })?;
        self.step("swap", None, swap::apply)?;
        let cmds = cfg.runcmd.iter().chain(cfg.bootcmd.iter());
        if node_ip::mentioned(&cfg.write_files, cmds) {
            self.skip("node_ip", "the bootstrap data sets node-ip itself");
        } else {
            self.phase("node_ip", |a| {
                let interfaces = a.status.interfaces.clone();
                a.status.node_ip = node_ip::apply(&mut a.cx(), &interfaces)?;
                Ok(())
            })?;
        }
        // cloud-init's config stage: ntp comes before runcmd (which runs in the final stage).
        match &cfg.ntp {
            None => self.skip("ntp", "no ntp"),
            Some(n) if !n.enabled => self.skip("ntp", "ntp.enabled is false"),
            Some(n) => self.step("ntp", None, |cx| ntp::apply(cx, n))?,
        }
        self.step(
            "write_files_deferred",
            if_empty(&deferred, "no deferred files"),
            |cx| write_files::apply(cx, &deferred),
        )?;
        let uuid = &ctx.uuid;
        match kind {
            userdata::Kind::Script(bytes) => {
                let s = String::from_utf8_lossy(bytes).into_owned();
                self.step("script", None, |cx| {
                    scripts::run(cx, "user-script", &s, uuid)
                })
            }
            _ => {
                scripts::log_runcmd(&mut self.cx(), &cfg.runcmd);
                let script = scripts::shellify(&cfg.runcmd);
                self.step("runcmd", if_empty(&cfg.runcmd, "no runcmd"), |cx| {
                    scripts::run(cx, "runcmd", &script, uuid)
                })
            }
        }
    }

    /// Phases 1-4. None: nothing to do (dsmode disabled, no user data, or a bootstrapped node
    /// whose context is unreadable), with the phase recorded as skipped.
    fn read_data(&mut self) -> Flow<Option<(ServerContext, userdata::Kind, CloudConfig)>> {
        let ctx = match self.phase("context", |a| a.load_context()) {
            Ok(c) => c,
            Err(()) => {
                // A node that already joined must not be marked failed on reboot just because the
                // context port is slow: say so and leave it alone.
                if !self.o.force && self.any_stamp() {
                    self.warn("context unavailable but this node was bootstrapped before (done-stamp present); skipping".into());
                    self.status.error = None;
                    return Ok(None);
                }
                return Err(());
            }
        };
        self.status.instance_id = Some(ctx.uuid.clone());
        self.status.hostname = Some(template::local_hostname(&ctx));
        self.network(&ctx);

        if ctx.dsmode().is_some_and(|m| m.is_disabled()) {
            self.skip("userdata", "meta.cloudinit-dsmode is 'disabled'");
            return Ok(None);
        }

        let Some(raw) = self.phase("userdata", |_| Ok(userdata::extract(&ctx)?))? else {
            self.skip("userdata", "the server has no meta.cloudinit-user-data");
            return Ok(None);
        };
        let size = raw.len();
        let mut kind = self.phase("userdata_format", |_| Ok(userdata::classify(raw)?))?;
        self.log
            .info(&format!("user data: {size} bytes, {}", kind.name()));
        if let userdata::Kind::JinjaTemplate(src) = &kind {
            let src = src.clone();
            let serial = self.o.serial.display().to_string();
            kind = self.phase("template", |_| {
                let tctx = template::build_context(&ctx, &serial);
                let out = template::render(&src, &tctx)?;
                match userdata::classify(out.into_bytes())
                    .map_err(|e| Error::from(e).context("after rendering"))?
                {
                    userdata::Kind::JinjaTemplate(_) => Err(Error::Refused(
                        "rendered template starts with a template header again".into(),
                    )),
                    k => Ok(k),
                }
            })?;
        }
        self.status.user_data_kind = Some(kind.name().into());

        let cfg = match &kind {
            userdata::Kind::CloudConfig(text) => {
                let text = text.clone();
                self.phase("cloudconfig", |_| Ok(cloudconfig::parse(&text)?))?
            }
            _ => CloudConfig::default(),
        };
        for w in cfg.warnings.clone() {
            self.warn(w);
        }
        for key in &cfg.unsupported {
            self.log.warn(&format!(
                "cloud-config key '{key}' is not implemented by cloudsigma-agent: NOT applied"
            ));
        }
        self.status.unsupported = cfg.unsupported.clone();

        Ok(Some((ctx, kind, cfg)))
    }

    /// The skip check after bootcmd: this instance already succeeded and no --force. Then the
    /// marker is restored, and the rest is skipped.
    fn already_bootstrapped(&mut self, uuid: &str) -> Flow<bool> {
        let stamp = self.stamp_path(uuid);
        if stamp.exists() && !self.o.force {
            // /run is a tmpfs: after a reboot the marker is gone although this instance did
            // bootstrap successfully (the stamp is only written together with the marker).
            if !self.marker.exists() {
                self.phase("marker_restore", |a| {
                    atomic_write(
                        &a.marker,
                        b"success\n",
                        0o644,
                        Owner::default(),
                        WriteMode::Replace,
                    )
                    .map(|_| ())
                    .at(IoOp::Access, &a.marker)
                })?;
            }
            self.skip(
                "bootstrap",
                &format!(
                    "already bootstrapped ({} exists; use --force to re-run)",
                    stamp.display()
                ),
            );
            return Ok(true);
        }
        if self.marker.exists() {
            // A marker without our stamp is stale (or from a forced re-run): it must be earned again.
            let _ = fs::remove_file(&self.marker);
            self.log
                .info(&format!("removed stale {}", self.marker.display()));
        }
        Ok(false)
    }

    fn any_stamp(&self) -> bool {
        fs::read_dir(under(&self.o.root, STATE_DIR))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".done"))
            })
            .unwrap_or(false)
    }

    fn load_context(&mut self) -> Result<ServerContext> {
        if let Some(f) = &self.o.context_file {
            let bytes = fs::read(f).at(IoOp::ReadContext, f)?;
            Ok(context::parse_context(f, &bytes)?)
        } else {
            Ok(context::read_context(&self.o.serial, self.o.timeout)?)
        }
    }

    fn network(&mut self, ctx: &ServerContext) {
        match net::interfaces(self.o.net_fixture.as_deref()) {
            Ok(ifs) => self.status.interfaces = net::classify(ctx, &ifs),
            Err(e) => self.warn(format!("cannot list network interfaces: {e}")),
        }
    }

    fn finish(&mut self) {
        self.status.marker_present = self.marker.exists();
        self.status.duration_ms = self.status.elapsed_ms();
        self.status.finished_at = Some(fsutil::now_rfc3339());
        if let Err(e) = self.status.write(&self.status_path) {
            self.log.error(&format!(
                "cannot write status file {}: {e}",
                self.status_path.display()
            ));
        }
        let summary = match (&self.status.result[..], &self.status.error) {
            (_, Some(err)) => format!(
                "cloudsigma-bootstrap: FAILED at step {} after {} ms: {} (journalctl -u cloudsigma-bootstrap; {})",
                err.step, self.status.duration_ms, err.message, self.status_path.display()
            ),
            (r, None) => format!(
                "cloudsigma-bootstrap: {} instance={} host={} in {} ms{}",
                r.to_uppercase(),
                self.status.instance_id.as_deref().unwrap_or("?"),
                self.status.hostname.as_deref().unwrap_or("?"),
                self.status.duration_ms,
                if self.status.unsupported.is_empty() { String::new() } else { format!(" (unsupported keys: {})", self.status.unsupported.join(",")) }
            ),
        };
        self.log.info(&summary);
        let console = if self.real_root {
            OpenOptions::new().write(true).open("/dev/console").ok()
        } else {
            None
        };
        match console {
            Some(mut c) => {
                let _ = writeln!(c, "{summary}");
            }
            None => eprintln!("{summary}"),
        }
    }
}
