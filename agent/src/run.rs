//! The bootstrap sequence, in cloud-init's order, with one status phase per step.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloudsigma_api::{context, DsMode, ServerContext, META_DSMODE};

use crate::cloudconfig::{self, CloudConfig, WriteFile};
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{self, atomic_write, under, Owner, WriteMode};
use crate::report::{Logger, Phase, Status, StepError};
use crate::stamp::{self, State};
use crate::steps::{
    disk_setup, fs_setup, hostname, mounts, node_ip, ntp, online, packages, scripts, ssh_keys,
    swap, users, vlan_assign, write_files, Cx,
};
use crate::{net, template, userdata};

/// Why a step that runs the data's scripts or node tools did not run under a test root.
const NOT_EXECUTED: &str = "not run: --root is not / and --execute was not given";

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
    /// Under a `--root` other than `/`: run the data's scripts and the node tools anyway.
    pub execute: bool,
    pub timeout: Duration,
    pub status_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub net_fixture: Option<PathBuf>,
    /// How long the node_ip step waits for the VLAN NIC's address (0: look once).
    pub vlan_address_timeout: Duration,
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
    execute: bool,
    log: Logger,
    status: Status,
    status_path: PathBuf,
    marker: PathBuf,
    /// The `online` phase ran (or was skipped) in this run: it is waited for once.
    online_done: bool,
    /// growpart running in the background (see [`Agent::join_growpart`]).
    growpart: Option<Background>,
    /// The `online` wait, started with the agent (see [`online::start`]).
    /// Started on a thread of its own: spawning a process waits for its exec (vfork), which
    /// early in the boot is a page-in of systemd-run and its loader, and the agent's first
    /// steps need not wait for that.
    online_wait: Option<std::thread::JoinHandle<Result<std::process::Child>>>,
}

/// A step running on its own thread: its phase entry (index in `status.phases`) is completed
/// when it is joined.
struct Background {
    phase: usize,
    handle: std::thread::JoinHandle<(Result<()>, Logger, Vec<String>, Duration)>,
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
        execute: real_root || o.execute,
        log: Logger::open(&log_path, o.quiet),
        status: Status::new(&marker),
        status_path: o
            .status_file
            .clone()
            .unwrap_or_else(|| under(&o.root, STATUS_FILE)),
        marker,
        online_done: false,
        growpart: None,
        online_wait: None,
    };
    if online::skip(a.real_root, &o.root).is_none() {
        a.online_wait = Some(std::thread::spawn(online::start));
    }
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
    if let Some(ms) = ms_since_process_start() {
        let main = MAIN_AT
            .get()
            .copied()
            .flatten()
            .map(|m| format!(", main() after {m} ms"))
            .unwrap_or_default();
        a.log.info(&format!(
            "started {ms} ms after its process was created (the exec and the binary's start-up{main}; /proc/self/stat, 10 ms ticks)"
        ));
    }
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
    // Never exit with the root still growing (every path ends here).
    a.join_growpart();
    online::abandon(a.started_wait());
    if let Err(e) = fsutil::sync_pending() {
        a.warn(format!(
            "cannot flush the files written to disk (syncfs): {e}"
        ));
    }
    a.finish();
    code
}

/// When `main` began, in [`ms_since_process_start`]'s terms ([`mark_main`]).
static MAIN_AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// Note when `main` began (its first call), for the start-up log line: what the kernel's exec
/// and the binary's own start-up took, apart from what `main` did before the agent's clock.
pub fn mark_main() {
    let _ = MAIN_AT.set(ms_since_process_start());
}

/// Milliseconds since this process was created: the exec and the binary's start-up, which the
/// agent's own clock (started in [`run`]) does not see. In the boot bench the first log line came
/// 0.3-0.4 s after the unit's start (issue 25); this says how much of that is the agent's.
fn ms_since_process_start() -> Option<u64> {
    let ticks = start_ticks(&fs::read_to_string("/proc/self/stat").ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }).ok()?;
    let mut now = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to. The start time counts on the boot-time clock.
    if unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_BOOTTIME, &mut now) } != 0 || hz == 0 {
        return None;
    }
    let now_ms =
        u64::try_from(now.tv_sec).ok()? * 1000 + u64::try_from(now.tv_nsec).ok()? / 1_000_000;
    now_ms.checked_sub(ticks * 1000 / hz)
}

/// Field 22 of a `/proc/<pid>/stat` line (starttime, in clock ticks since boot). The command
/// name (field 2) is in parentheses and may itself hold spaces and `)`: the fields are counted
/// after the last `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state): field 22 is the 20th from there
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Ask the kernel to read the agent's own binary into the page cache now, in one sequential
/// readahead (posix_fadvise WILLNEED), instead of page by page as the code first runs: early in
/// boot the disk is shared with everything else starting, and each fault of the 4.4 MB static
/// binary waits its turn (in the e2e VM started early, the template phase, < 1 ms on a warm
/// host, took 2 s: faults or CPU contention). Best effort: a failure only means the faults
/// happen as before.
///
/// Called first thing in `main`, before the command line is parsed: clap's code is among the
/// first pages the binary faults in.
pub fn prefetch_self() {
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open("/proc/self/exe") {
        let _ = nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
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
            execute: self.execute,
            log: &mut self.log,
            warnings: &mut self.status.warnings,
        }
    }

    /// Wait, once per run, for what the join needs from the rest of the boot (network-online,
    /// time sync, containerd: [`online::AFTER`]), before `step`, the first step that may need it.
    /// Everything before runs as early as the unit starts (docs/agent.md, "Boot order").
    fn online(&mut self, step: &str, ctx: &ServerContext) -> Flow<()> {
        if std::mem::replace(&mut self.online_done, true) {
            return Ok(());
        }
        let skip = online::skip(self.real_root, &self.o.root);
        let step = step.to_string();
        let started = self.started_wait();
        self.step("online", skip, |cx| {
            online::apply(
                cx,
                &step,
                started,
                online::start,
                online::start_network_online,
            )
        })?;
        // The listing taken after the context read may predate DHCP: the status shows the
        // addresses the node has when it joins (node_ip replaces them again when it looks).
        self.network(ctx);
        Ok(())
    }

    /// The `online` wait started with the agent, once its thread has spawned it.
    fn started_wait(&mut self) -> Option<Result<std::process::Child>> {
        self.online_wait.take().map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(Error::Refused(
                    "the thread starting systemd-run panicked".into(),
                ))
            })
        })
    }

    /// Start growpart (phase 0) on its own thread: growing the root partition and filesystem
    /// of a drive cloned larger than the image is the one slow step that needs nothing from the
    /// others (a resize2fs with nothing to do took 5.7 s of an early, busy boot in the e2e VM;
    /// a real online grow takes longer), so it runs while the context is read and the files
    /// are written, and is joined before the first step that needs the space or the disk
    /// (disk_setup, packages, runcmd) and before exit.
    fn spawn_growpart(&mut self) {
        let start_ms = self.status.elapsed_ms();
        self.log.info("phase growpart: start (in the background)");
        self.status.phases.push(Phase {
            name: "growpart".into(),
            start_ms,
            duration_ms: 0,
            result: "running".into(),
            detail: None,
        });
        let phase = self.status.phases.len() - 1;
        let (root, real_root, execute) = (self.o.root.clone(), self.real_root, self.execute);
        let handle = std::thread::spawn(move || {
            let t = Instant::now();
            let mut log = Logger::buffered();
            let mut warnings = Vec::new();
            let r = crate::steps::growpart::apply(&mut Cx {
                root: &root,
                real_root,
                execute,
                log: &mut log,
                warnings: &mut warnings,
            });
            (r, log, warnings, t.elapsed())
        });
        self.growpart = Some(Background { phase, handle });
    }

    /// Wait for the background growpart, if any, and complete its phase. Its problems are
    /// warnings (as cloud-init's), so it never stops the sequence.
    fn join_growpart(&mut self) {
        let Some(bg) = self.growpart.take() else {
            return;
        };
        let (duration_ms, detail) = match bg.handle.join() {
            Ok((r, log, warnings, took)) => {
                self.log.replay(log);
                self.status.warnings.extend(warnings);
                let ms = took.as_millis() as u64;
                self.log.info(&format!("phase growpart: ok ({ms} ms)"));
                (ms, r.err().map(|e| e.to_string()))
            }
            Err(_) => (
                self.status.elapsed_ms() - self.status.phases[bg.phase].start_ms,
                Some("its thread panicked".to_string()),
            ),
        };
        if let Some(d) = &detail {
            self.warn(format!("growpart: root not grown: {d}"));
        }
        let p = &mut self.status.phases[bg.phase];
        p.duration_ms = duration_ms;
        p.result = "ok".into();
        p.detail = detail;
    }

    /// The skip reason of a step that runs scripts or node tools, None when it may run.
    fn gate<'a>(&self, skip: Option<&'a str>) -> Option<&'a str> {
        skip.or((!self.execute).then_some(NOT_EXECUTED))
    }

    /// The steps of docs/agent.md's table, in its order. Returns the final result word
    /// ("success" | "skipped"), or Err after the failing step recorded why.
    fn sequence(&mut self) -> Flow<&'static str> {
        // 0: grow the root into a drive cloned larger than the image; every boot, needs no data.
        use crate::steps::growpart;
        let skip = self.gate(growpart::skip(&self.o.root));
        match skip {
            Some(why) => self.skip("growpart", why),
            None => self.spawn_growpart(),
        }
        // 1-4: context, user data, template, cloud-config.
        let Some((ctx, kind, cfg)) = self.read_data()? else {
            return Ok("skipped");
        };
        let uuid = ctx.uuid.clone();
        // 5: bootcmd runs on every boot, like cloud-init's.
        let bootcmd = scripts::shellify(&cfg.bootcmd);
        let skip = self.gate(if_empty(&cfg.bootcmd, "no bootcmd"));
        if skip.is_none() {
            // cloud-init runs bootcmd in its network stage (after systemd-networkd-wait-online),
            // and the data's commands may expect what the unit used to wait for.
            self.online("bootcmd", &ctx)?;
        }
        self.step("bootcmd", skip, |cx| {
            scripts::run(cx, "bootcmd", &bootcmd, &uuid)
        })?;
        if self.already_bootstrapped(&uuid)? {
            return Ok("skipped");
        }
        // 6-11: once per instance. `started`: this run wrote the started-stamp (runcmd began).
        let started = std::cell::Cell::new(false);
        let configured = self.configure(&ctx, &kind, &cfg, &started);
        // A failure the agent saw: the next boot retries. Only a stamp this run wrote goes: a
        // failing `--force` re-run before runcmd leaves an earlier success's stamp alone.
        let unstamp = |a: &Self| {
            if started.get() {
                stamp::remove(&a.o.root, &uuid);
            }
        };
        if configured.is_err() || !self.execute {
            unstamp(self);
            configured?;
            // A dry run under --root: nothing ran, nothing to check or stamp.
            self.skip("marker", NOT_EXECUTED);
            self.skip("done_stamp", NOT_EXECUTED);
            return Ok("success");
        }
        // 12-13.
        let marker = self.phase("marker", |a| {
            if a.marker.exists() {
                Ok(())
            } else {
                Err(Error::MarkerMissing {
                    marker: a.marker.clone(),
                    output: under(&a.o.root, OUTPUT_FILE),
                })
            }
        });
        if marker.is_err() {
            unstamp(self);
            return Err(());
        }
        let root = self.o.root.clone();
        self.phase("done_stamp", |_| {
            stamp::write(&root, &uuid, State::Done)
                .map(|_| ())
                .at(IoOp::Access, stamp::path(&root, &uuid))
        })?;
        Ok("success")
    }

    /// Steps 6-11: what cloud-init's init, config and final stages do once per instance.
    fn configure(
        &mut self,
        ctx: &ServerContext,
        kind: &userdata::Kind,
        cfg: &CloudConfig,
        started: &std::cell::Cell<bool>,
    ) -> Flow<()> {
        let (now, deferred): (Vec<WriteFile>, Vec<WriteFile>) =
            cfg.write_files.iter().cloned().partition(|f| !f.defer);
        self.step("write_files", if_empty(&now, "no files"), |cx| {
            write_files::apply(cx, &now)
        })?;
        // cloud-init's init stage: growpart and resizefs, then disk_setup (partitions, then
        // filesystems), then mounts: a disk step may use the root disk's free space.
        if !(cfg.disk_setup.is_empty() && cfg.fs_setup.is_empty() && cfg.mounts.is_none()) {
            self.join_growpart();
        }
        let skip = self.gate(if_empty(&cfg.disk_setup, "no disks to partition"));
        self.step("disk_setup", skip, |cx| {
            disk_setup::apply(cx, &cfg.disk_setup)
        })?;
        let skip = self.gate(if_empty(&cfg.fs_setup, "no filesystems"));
        self.step("fs_setup", skip, |cx| fs_setup::apply(cx, &cfg.fs_setup))?;
        let no_mounts = cfg.mounts.is_none().then_some("no mounts");
        if no_mounts.is_none() {
            // `mount -a` may mount a network file system (cloud-init's mounts module runs in its
            // network stage).
            self.online("mounts", ctx)?;
        }
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
        let mut keys = ssh_keys::context_keys(ctx, &mut self.status.warnings);
        keys.extend(
            cfg.ssh_authorized_keys
                .iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
        );
        self.step("ssh_keys", None, |cx| {
            ssh_keys::apply(cx, &keys, &cfg.root_login)
        })?;
        self.step("swap", None, swap::apply)?;
        // cloud-init's config stage: ntp comes before runcmd (which runs in the final stage).
        match &cfg.ntp {
            None => self.skip("ntp", "no ntp"),
            Some(n) if !n.enabled => self.skip("ntp", "ntp.enabled is false"),
            Some(n) => self.step("ntp", None, |cx| ntp::apply(cx, n))?,
        }
        // cloud-init's final stage (after network-online.target) opens with
        // package_update_upgrade_install; node_ip and runcmd (kubeadm join) come after it.
        self.online("packages", ctx)?;
        // The root must have its size before apt-get and kubeadm (image pulls) write to it.
        self.join_growpart();
        let skip = self.gate(cfg.packages.is_empty().then_some("no packages"));
        self.step("packages", skip, |cx| packages::apply(cx, &cfg.packages))?;
        self.step(
            "write_files_deferred",
            if_empty(&deferred, "no deferred files"),
            |cx| write_files::apply(cx, &deferred),
        )?;
        // Last before the join, the only step that needs the VLAN address (DHCP, or the
        // controller's assignment in the meta, may come late); the steps before never wait for it.
        self.node_ip(ctx, cfg)?;
        let uuid = &ctx.uuid;
        let (name, file, body, skip) = match kind {
            userdata::Kind::Script(bytes) => (
                "script",
                "user-script",
                String::from_utf8_lossy(bytes).into_owned(),
                None,
            ),
            _ => {
                scripts::log_runcmd(&mut self.cx(), &cfg.runcmd);
                let skip = if_empty(&cfg.runcmd, "no runcmd");
                ("runcmd", "runcmd", scripts::shellify(&cfg.runcmd), skip)
            }
        };
        let skip = self.gate(skip);
        let root = self.o.root.clone();
        self.step(name, skip, |cx| {
            // The stamp goes down before the commands start (see stamp.rs): from here on a
            // crash never makes a reboot run them again.
            let p = stamp::path(&root, uuid);
            let t = Instant::now();
            stamp::write(&root, uuid, State::Started).at(IoOp::Access, &p)?;
            started.set(true);
            // The one wait for the disk on the path to the join (issue 25): say how long it took.
            cx.info(&format!(
                "started-stamp written, it and every file before it on disk in {} ms",
                t.elapsed().as_millis()
            ));
            scripts::run(cx, file, &body, uuid)
        })
    }

    /// The `node_ip` phase (skipped when the data sets node-ip itself).
    fn node_ip(&mut self, ctx: &ServerContext, cfg: &CloudConfig) -> Flow<()> {
        let cmds = cfg.runcmd.iter().chain(cfg.bootcmd.iter());
        if node_ip::mentioned(&cfg.write_files, cmds) {
            self.skip("node_ip", "the bootstrap data sets node-ip itself");
            return Ok(());
        }
        self.phase("node_ip", |a| {
            let fixture = a.o.net_fixture.clone();
            let mut interfaces = || net::interfaces(fixture.as_deref());
            // The live meta, not the context read at the start: the controller may write the
            // NIC's assignment seconds after the boot.
            let (file, serial) = (a.o.context_file.clone(), a.o.serial.clone());
            let mut meta = |key: &str| node_ip::live_meta(file.as_deref(), &serial, key);
            let mut runner = vlan_assign::run_tool;
            let mut clock = node_ip::RealClock::start();
            let mut src = node_ip::Sources {
                interfaces: &mut interfaces,
                meta: &mut meta,
                run: &mut runner,
                clock: &mut clock,
            };
            let timeout = a.o.vlan_address_timeout;
            let out = node_ip::apply(&mut a.cx(), ctx, timeout, &mut src)?;
            if let Some(ifs) = out.interfaces {
                a.status.interfaces = net::classify(ctx, &ifs);
            }
            a.status.node_ip = out.ip;
            a.status.node_ip_source = out.source;
            Ok(())
        })
    }

    /// Phases 1-4. None: nothing to do (dsmode disabled, no user data, or a bootstrapped node
    /// whose context is unreadable), with the phase recorded as skipped.
    fn read_data(&mut self) -> Flow<Option<(ServerContext, userdata::Kind, CloudConfig)>> {
        let ctx = match self.phase("context", |a| a.load_context()) {
            Ok(c) => c,
            Err(()) => {
                // A node that already joined must not be marked failed on reboot just because the
                // context port is slow: say so and leave it alone.
                if let Some(id) = (!self.o.force)
                    .then(|| stamp::done_on_this_machine(&self.o.root))
                    .flatten()
                {
                    self.warn(format!("context unavailable but this machine bootstrapped instance {id} before (its done-stamp names this machine); skipping"));
                    self.status.error = None;
                    return Ok(None);
                }
                return Err(());
            }
        };
        self.status.instance_id = Some(ctx.uuid.clone());
        self.status.hostname = Some(template::local_hostname(&ctx));
        self.network(&ctx);

        match ctx.dsmode() {
            Some(DsMode::Disabled) => {
                self.skip("userdata", "meta.cloudinit-dsmode is 'disabled'");
                return Ok(None);
            }
            // cloud-init's VALID_DSMODES are disabled, local and net; "pass" and anything else
            // get its warning and the default, net. local vs net only picks cloud-init's stage
            // (before or after the network): the agent starts before the network either way and
            // waits for it before the first step that may need it (the `online` phase).
            Some(DsMode::Pass) | Some(DsMode::Other(_)) => {
                let m = ctx.meta.get(META_DSMODE).cloned().unwrap_or_default();
                self.warn(format!(
                    "meta.cloudinit-dsmode {:?} is not one of disabled, local, net; using net (as cloud-init)",
                    m.chars().take(32).collect::<String>()
                ));
            }
            Some(DsMode::Local) | Some(DsMode::Net) | None => {}
        }
        self.vendor_data(&ctx);

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
        let stamp_path = stamp::path(&self.o.root, uuid);
        let found = if self.o.force {
            None
        } else {
            stamp::read(&self.o.root, uuid)
        };
        if let Some(s) = found.as_ref().filter(|s| s.state == State::Started) {
            let msg = format!(
                "a previous boot started this instance's bootstrap commands at {} and did not record their end (crash or power loss): they are not run twice; check the node (and {}), then re-run with --force",
                s.time,
                OUTPUT_FILE
            );
            self.phase("bootstrap", |_| Err::<(), _>(Error::Refused(msg)))?;
        }
        if found.is_some() {
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
                    stamp_path.display()
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

    /// `vendor_data.cloudinit` (cloud-init's CloudSigma datasource reads it as vendor data) is
    /// deliberately not executed: it is the cloud location's own configuration for general
    /// purpose images, not part of the cluster's bootstrap data, and it would run commands and
    /// packages the cluster's owner neither wrote nor sees (docs/agent.md, "Vendor data").
    fn vendor_data(&mut self, ctx: &ServerContext) {
        let part = ctx
            .vendor_data
            .as_ref()
            .and_then(|v| v.get("cloudinit"))
            .filter(|v| !v.is_null() && v.as_str() != Some(""));
        if let Some(v) = part {
            let size = v
                .as_str()
                .map(str::len)
                .unwrap_or_else(|| v.to_string().len());
            self.warn(format!(
                "vendor_data.cloudinit ({size} bytes) is not executed: cloudsigma-agent runs only the server's user data (docs/agent.md)"
            ));
        }
    }

    fn load_context(&mut self) -> Result<ServerContext> {
        let ctx = if let Some(f) = &self.o.context_file {
            let bytes = fs::read(f).at(IoOp::ReadContext, f)?;
            context::parse_context(f, &bytes)?
        } else {
            // Not under a test --root: that writes nothing outside it.
            if self.real_root {
                if let Some(msg) = crate::serial::raise_rx_trigger(&self.o.serial) {
                    self.log.info(&msg);
                }
            }
            context::read_context(&self.o.serial, self.o.timeout)?
        };
        if !stamp::is_uuid(&ctx.uuid) {
            return Err(Error::BadInstanceId {
                value: ctx.uuid.chars().take(64).collect(),
            });
        }
        Ok(ctx)
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
            // O_NOCTTY: a session leader (a systemd service is one) would otherwise make the
            // console its controlling terminal; O_NONBLOCK: a stuck console never holds the exit.
            OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
                .open("/dev/console")
                .ok()
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

#[cfg(test)]
mod tests {
    /// The start time is read after the command name, whatever that name holds; a line without
    /// one, or too short, gives nothing (never a panic).
    #[test]
    fn start_ticks_of_a_stat_line() {
        let rest = "S 1 218 218 0 -1 4194560 600 0 0 0 2 1 0 0 20 0 1 0 1234 4550656 700";
        assert_eq!(
            super::start_ticks(&format!("218 (cloudsigma-agent) {rest}")),
            Some(1234)
        );
        assert_eq!(
            super::start_ticks(&format!("218 (a b) c)) {rest}")),
            Some(1234)
        );
        assert_eq!(super::start_ticks("218 (x) S 1 2"), None);
        assert_eq!(super::start_ticks("no parenthesis"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(super::start_ticks(&own).is_some(), "{own}");
        assert!(super::ms_since_process_start().is_some());
    }
}
