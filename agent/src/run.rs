//! The bootstrap sequence, in cloud-init's order, with one status phase per step.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudsigma_api::{context, ServerContext};

use crate::cloudconfig::{self, CloudConfig, Encoding, WriteFile};
use crate::fsutil::{self, atomic_write, under, ChownOutcome, Owner, WriteMode};
use crate::redact::redact_line;
use crate::report::{Logger, Phase, Status, StepError};
use crate::storage::{self, Disk, Filesystem, Mount, PartSel};
use crate::{net, ntp, sys, template, userdata};

pub const MARKER: &str = "/run/cluster-api/bootstrap-success.complete";
pub const STATE_DIR: &str = "/var/lib/cloudsigma-agent";
pub const STATUS_FILE: &str = "/run/cloudsigma/bootstrap.json";
pub const LOG_FILE: &str = "/var/log/cloudsigma-bootstrap.log";
/// Output of bootcmd/runcmd/scripts. Kept apart from the log (0600) because `kubeadm init` prints
/// the join command with its token: it must not reach the journal or the agent's log.
pub const OUTPUT_FILE: &str = "/var/log/cloudsigma-bootstrap-output.log";

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

struct Agent<'a> {
    o: &'a Opts,
    real_root: bool,
    log: Logger,
    status: Status,
    status_path: PathBuf,
    marker: PathBuf,
}

type Step<T> = Result<T, String>;

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
    fn phase<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Step<T>) -> Result<T, ()> {
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
            Err(msg) => {
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

    fn stamp_path(&self, uuid: &str) -> PathBuf {
        under(&self.o.root, STATE_DIR).join(format!("instance-{uuid}.done"))
    }

    /// Returns the final result word ("success" | "skipped") or Err after recording the failure.
    fn sequence(&mut self) -> Result<&'static str, ()> {
        let ctx = match self.phase("context", |a| a.load_context()) {
            Ok(c) => c,
            Err(()) => {
                // A node that already joined must not be marked failed on reboot just because the
                // context port is slow: say so and leave it alone.
                if !self.o.force && self.any_stamp() {
                    self.warn("context unavailable but this node was bootstrapped before (done-stamp present); skipping".into());
                    self.status.error = None;
                    return Ok("skipped");
                }
                return Err(());
            }
        };
        self.status.instance_id = Some(ctx.uuid.clone());
        let hostname = template::local_hostname(&ctx);
        self.status.hostname = Some(hostname.clone());
        self.network(&ctx);

        if ctx
            .meta
            .get("cloudinit-dsmode")
            .map(|m| m.trim() == "disabled")
            .unwrap_or(false)
        {
            self.skip("userdata", "meta.cloudinit-dsmode is 'disabled'");
            return Ok("skipped");
        }

        let Some(raw) = self.phase("userdata", |_| {
            userdata::extract(&ctx).map_err(|e| e.to_string())
        })?
        else {
            self.skip("userdata", "the server has no meta.cloudinit-user-data");
            return Ok("skipped");
        };
        let size = raw.len();
        let mut kind = self.phase("userdata_format", |_| {
            userdata::classify(raw).map_err(|e| e.to_string())
        })?;
        self.log
            .info(&format!("user data: {size} bytes, {}", kind.name()));
        if let userdata::Kind::JinjaTemplate(src) = &kind {
            let src = src.clone();
            let serial = self.o.serial.display().to_string();
            kind = self.phase("template", |_| {
                let tctx = template::build_context(&ctx, &serial);
                let out = template::render(&src, &tctx).map_err(|e| e.to_string())?;
                match userdata::classify(out.into_bytes())
                    .map_err(|e| format!("after rendering: {e}"))?
                {
                    userdata::Kind::JinjaTemplate(_) => {
                        Err("rendered template starts with a template header again".into())
                    }
                    k => Ok(k),
                }
            })?;
        }
        self.status.user_data_kind = Some(kind.name().into());

        let cfg = match &kind {
            userdata::Kind::CloudConfig(text) => {
                let text = text.clone();
                self.phase("cloudconfig", |_| {
                    cloudconfig::parse(&text).map_err(|e| e.to_string())
                })?
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

        // bootcmd runs on every boot, like cloud-init's.
        if cfg.bootcmd.is_empty() {
            self.skip("bootcmd", "no bootcmd");
        } else {
            let script = cloudconfig::shellify(&cfg.bootcmd);
            self.phase("bootcmd", |a| a.run_script("bootcmd", &script, &ctx.uuid))?;
        }

        let stamp = self.stamp_path(&ctx.uuid);
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
                    .map_err(|e| format!("{}: {e}", a.marker.display()))
                })?;
            }
            self.skip(
                "bootstrap",
                &format!(
                    "already bootstrapped ({} exists; use --force to re-run)",
                    stamp.display()
                ),
            );
            return Ok("skipped");
        }
        if self.marker.exists() {
            // A marker without our stamp is stale (or from a forced re-run): it must be earned again.
            let _ = fs::remove_file(&self.marker);
            self.log
                .info(&format!("removed stale {}", self.marker.display()));
        }

        let (now, deferred): (Vec<WriteFile>, Vec<WriteFile>) =
            cfg.write_files.iter().cloned().partition(|f| !f.defer);
        if now.is_empty() {
            self.skip("write_files", "no files");
        } else {
            self.phase("write_files", |a| a.write_files(&now))?;
        }
        // cloud-init's init stage: disk_setup (partitions, then filesystems), then mounts.
        if cfg.disk_setup.is_empty() {
            self.skip("disk_setup", "no disks to partition");
        } else {
            self.phase("disk_setup", |a| a.disk_setup(&cfg.disk_setup))?;
        }
        if cfg.fs_setup.is_empty() {
            self.skip("fs_setup", "no filesystems");
        } else {
            self.phase("fs_setup", |a| a.fs_setup(&cfg.fs_setup))?;
        }
        match &cfg.mounts {
            None => self.skip("mounts", "no mounts"),
            Some(m) => self.phase("mounts", |a| a.mounts(m))?,
        }
        self.phase("hostname", |a| a.hostname(&cfg, &hostname))?;
        if cfg.users.is_empty() {
            self.skip("users", "no users");
        } else {
            self.phase("users", |a| a.users(&cfg))?;
        }
        self.phase("ssh_keys", |a| a.ssh_keys(&ctx, &cfg))?;
        self.phase("swap", |a| a.swap())?;
        let node_ip_set_by_data = mentions_node_ip(&cfg);
        if node_ip_set_by_data {
            self.skip("node_ip", "the bootstrap data sets node-ip itself");
        } else {
            self.phase("node_ip", |a| a.node_ip())?;
        }
        // cloud-init's config stage: ntp comes before runcmd (which runs in the final stage).
        match &cfg.ntp {
            None => self.skip("ntp", "no ntp"),
            Some(n) if !n.enabled => self.skip("ntp", "ntp.enabled is false"),
            Some(n) => self.phase("ntp", |a| a.ntp(n))?,
        }
        if deferred.is_empty() {
            self.skip("write_files_deferred", "no deferred files");
        } else {
            self.phase("write_files_deferred", |a| a.write_files(&deferred))?;
        }
        match &kind {
            userdata::Kind::Script(bytes) => {
                let s = String::from_utf8_lossy(bytes).into_owned();
                self.phase("script", |a| a.run_script("user-script", &s, &ctx.uuid))?;
            }
            _ if cfg.runcmd.is_empty() => self.skip("runcmd", "no runcmd"),
            _ => {
                for (i, c) in cfg.runcmd.iter().enumerate() {
                    let line = match c {
                        cloudconfig::Cmd::Line(l) => l.clone(),
                        cloudconfig::Cmd::Words(w) => w.join(" "),
                    };
                    for l in line.lines() {
                        self.log.info(&format!("runcmd[{i}]: {}", redact_line(l)));
                    }
                }
                let script = cloudconfig::shellify(&cfg.runcmd);
                self.phase("runcmd", |a| a.run_script("runcmd", &script, &ctx.uuid))?;
            }
        }
        self.phase("marker", |a| {
            if a.marker.exists() {
                Ok(())
            } else {
                Err(format!(
                    "the bootstrap commands finished but {} was not created (the data's '&& echo success > {MARKER}' did not run: see {})",
                    a.marker.display(),
                    under(&a.o.root, OUTPUT_FILE).display()
                ))
            }
        })?;
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
            .map_err(|e| format!("{}: {e}", stamp.display()))
        })?;
        Ok("success")
    }

    fn any_stamp(&self) -> bool {
        fs::read_dir(under(&self.o.root, STATE_DIR))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".done"))
            })
            .unwrap_or(false)
    }

    fn load_context(&mut self) -> Step<ServerContext> {
        if let Some(f) = &self.o.context_file {
            let bytes = fs::read(f)
                .map_err(|e| format!("cannot read context file {}: {e}", f.display()))?;
            context::parse_context(f, &bytes).map_err(|e| e.to_string())
        } else {
            context::read_context(&self.o.serial, self.o.timeout).map_err(|e| e.to_string())
        }
    }

    fn network(&mut self, ctx: &ServerContext) {
        match net::interfaces(self.o.net_fixture.as_deref()) {
            Ok(ifs) => self.status.interfaces = net::classify(ctx, &ifs),
            Err(e) => self.warn(format!("cannot list network interfaces: {e}")),
        }
    }

    fn write_files(&mut self, files: &[WriteFile]) -> Step<()> {
        for f in files {
            let data = decode_content(f)?;
            let owner = fsutil::resolve_owner(&self.o.root, &f.owner)
                .map_err(|e| format!("{} owner: {e}", f.path))?;
            let target = under(&self.o.root, &f.path);
            let how = if f.append {
                WriteMode::Append
            } else {
                WriteMode::Replace
            };
            let outcome = atomic_write(&target, &data, f.permissions, owner, how)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            if outcome == ChownOutcome::NotPermitted {
                if self.real_root {
                    return Err(format!(
                        "cannot chown {} to {}: not permitted",
                        f.path, f.owner
                    ));
                }
                self.warn(format!(
                    "{}: chown to {} not permitted (unprivileged test root)",
                    f.path, f.owner
                ));
            }
            // Paths, sizes and modes only: file contents are secrets (keys, tokens).
            self.log.info(&format!(
                "wrote {} ({} bytes, mode {:04o}, owner {}{}{})",
                f.path,
                data.len(),
                f.permissions,
                f.owner,
                if f.append { ", appended" } else { "" },
                if f.defer { ", deferred" } else { "" }
            ));
        }
        Ok(())
    }

    fn hostname(&mut self, cfg: &CloudConfig, from_context: &str) -> Step<()> {
        if cfg.preserve_hostname {
            self.log
                .info("preserve_hostname is set: hostname left unchanged");
            return Ok(());
        }
        let (short, fqdn) = match (&cfg.fqdn, &cfg.hostname) {
            (Some(f), Some(h)) => (
                h.split('.').next().unwrap_or(h).to_string(),
                Some(f.clone()),
            ),
            (Some(f), None) => (
                f.split('.').next().unwrap_or(f).to_string(),
                Some(f.clone()),
            ),
            (None, Some(h)) if h.contains('.') => (
                h.split('.').next().unwrap_or(h).to_string(),
                Some(h.clone()),
            ),
            (None, Some(h)) => (h.clone(), None),
            (None, None) => (from_context.to_string(), None),
        };
        // cloud-init writes the FQDN only when asked to prefer it.
        let mut name = if cfg.prefer_fqdn_over_hostname {
            fqdn.clone().unwrap_or(short)
        } else {
            short
        };
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if clean != name {
            self.warn(format!(
                "hostname {name:?} is not a valid host name; using {clean:?}"
            ));
            name = clean;
        }
        let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
        if name.is_empty() {
            return Err("no usable hostname (empty after sanitising)".into());
        }
        let path = under(&self.o.root, "/etc/hostname");
        atomic_write(
            &path,
            format!("{name}\n").as_bytes(),
            0o644,
            Owner::default(),
            WriteMode::Replace,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        self.status.hostname = Some(name.clone());
        if self.real_root {
            match Command::new("hostname").arg(&name).status() {
                Ok(st) if st.success() => {}
                Ok(st) => return Err(format!("hostname {name} exited with {st}")),
                // Minimal images may lack the hostname tool: set the kernel's name directly.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::write("/proc/sys/kernel/hostname", &name).map_err(|e| {
                        format!("cannot set the hostname via /proc/sys/kernel/hostname: {e}")
                    })?
                }
                Err(e) => return Err(format!("cannot run hostname: {e}")),
            }
        }
        self.log.info(&format!("hostname set to {name}"));
        Ok(())
    }

    /// cloud-init's ssh module, reduced to keys: meta.ssh_public_key (one key per line) and the
    /// data's top-level ssh_authorized_keys are added (never removed) to root's and the image's
    /// login user's (uid 1000, if any) authorized_keys. The images are built without keys.
    fn ssh_keys(&mut self, ctx: &ServerContext, cfg: &CloudConfig) -> Step<()> {
        let mut keys: Vec<String> = ctx
            .meta
            .get("ssh_public_key")
            .map(|k| {
                k.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        keys.extend(
            cfg.ssh_authorized_keys
                .iter()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
        );
        if keys.is_empty() {
            self.log
                .info("no SSH public keys in the context or the data");
            return Ok(());
        }
        let mut targets = vec![("root".to_string(), 0u32, 0u32, "/root".to_string())];
        if let Some(u) = fsutil::user_by_uid(&self.o.root, 1000) {
            targets.push(u);
        }
        for (name, uid, gid, home) in targets {
            self.add_keys(&name, uid, gid, &home, &keys)?;
        }
        Ok(())
    }

    /// Add the keys missing from a user's authorized_keys (atomic, 0600, owned by the user).
    fn add_keys(
        &mut self,
        name: &str,
        uid: u32,
        gid: u32,
        home: &str,
        keys: &[String],
    ) -> Step<()> {
        let ssh_dir = under(
            &self.o.root,
            &format!("{}/.ssh", home.trim_end_matches('/')),
        );
        let path = ssh_dir.join("authorized_keys");
        let old = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !old.lines().any(|l| l.trim() == k.as_str()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !ssh_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&ssh_dir)
                .map_err(|e| format!("{}: {e}", ssh_dir.display()))?;
            if let Err(e) = std::os::unix::fs::chown(&ssh_dir, Some(uid), Some(gid)) {
                if self.real_root {
                    return Err(format!("chown {}: {e}", ssh_dir.display()));
                }
            }
        }
        let mut new = old.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        for k in &missing {
            new.push_str(k);
            new.push('\n');
        }
        let owner = Owner {
            uid: Some(uid),
            gid: Some(gid),
        };
        let outcome = atomic_write(&path, new.as_bytes(), 0o600, owner, WriteMode::Replace)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if outcome == ChownOutcome::NotPermitted && self.real_root {
            return Err(format!("cannot chown {} to {name}", path.display()));
        }
        self.log.info(&format!(
            "added {} SSH key(s) for {name} ({home}/.ssh/authorized_keys)",
            missing.len()
        ));
        Ok(())
    }

    /// The `users` subset the kubeadm provider emits. Accounts are created with useradd/groupadd
    /// only when --root is /; under a test root only existing users get keys and sudo rules.
    fn users(&mut self, cfg: &CloudConfig) -> Step<()> {
        let mut sudoers = String::new();
        for u in &cfg.users {
            let exists = fsutil::user_by_name(&self.o.root, &u.name).is_some();
            let mut groups: Vec<&String> = u.groups.iter().collect();
            groups.extend(u.primary_group.iter());
            for g in groups {
                if !fsutil::group_exists(&self.o.root, g) {
                    if self.real_root {
                        run_tool("groupadd", &[g.as_str()])?;
                    } else {
                        self.warn(format!("group {g} missing under the test root; groupadd runs only when --root is /"));
                    }
                }
            }
            if !exists {
                if !self.real_root {
                    self.warn(format!(
                        "user {} does not exist under the test root; useradd runs only when --root is /",
                        u.name
                    ));
                    continue;
                }
                let args = useradd_args(u);
                run_tool(
                    "useradd",
                    &args.iter().map(String::as_str).collect::<Vec<_>>(),
                )?;
                if let Some(p) = &u.passwd {
                    // On stdin, not as useradd's --password argument as cloud-init does: argv
                    // is readable by every process.
                    sys::check(
                        "chpasswd",
                        &["-e"],
                        Some(chpasswd_line(&u.name, p).as_bytes()),
                    )
                    .map_err(|e| format!("users: setting the password of {}: {e}", u.name))?;
                }
                self.log.info(&format!(
                    "created user {}{}",
                    u.name,
                    if u.passwd.is_some() {
                        " (password hash set)"
                    } else {
                        ""
                    }
                ));
            } else {
                if u.passwd.is_some() || u.inactive.is_some() {
                    self.warn(format!(
                        "user {} exists: passwd/inactive not changed (cloud-init applies them only when it creates the user)",
                        u.name
                    ));
                }
                if !u.groups.is_empty() && self.real_root {
                    run_tool("usermod", &["-a", "-G", &u.groups.join(","), &u.name])?;
                }
            }
            if u.lock_passwd && self.real_root {
                run_tool("passwd", &["-l", &u.name])?;
            }
            for rule in &u.sudo {
                // One rule per line; a newline inside a rule would inject another rule.
                if rule.contains('\n') {
                    return Err(format!(
                        "users: sudo rule for {} contains a newline",
                        u.name
                    ));
                }
                sudoers.push_str(&format!("{} {rule}\n", u.name));
            }
            if !u.ssh_authorized_keys.is_empty() {
                let Some((name, uid, gid, home)) = fsutil::user_by_name(&self.o.root, &u.name)
                else {
                    return Err(format!(
                        "user {} not found in /etc/passwd after creation",
                        u.name
                    ));
                };
                self.add_keys(&name, uid, gid, &home, &u.ssh_authorized_keys)?;
            }
        }
        if !sudoers.is_empty() {
            let path = under(&self.o.root, "/etc/sudoers.d/90-cloudsigma-agent-users");
            let body =
                format!("# Written by cloudsigma-agent from the bootstrap data's users\n{sudoers}");
            atomic_write(
                &path,
                body.as_bytes(),
                0o440,
                Owner {
                    uid: Some(0),
                    gid: Some(0),
                },
                WriteMode::Replace,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            self.log.info(&format!("sudo rules in {}", path.display()));
        }
        Ok(())
    }

    fn ntp(&mut self, n: &ntp::Ntp) -> Step<()> {
        let client = ntp::detect(&self.o.root, n.client)?;
        let (unit, path, body) = match client {
            ntp::Client::Chrony => ("chrony", ntp::CHRONY_SOURCES, ntp::chrony_sources(n)),
            _ => (
                "systemd-timesyncd",
                ntp::TIMESYNCD_DROPIN,
                ntp::timesyncd_dropin(n),
            ),
        };
        if n.servers.is_empty() && n.pools.is_empty() {
            // cloud-init would write its distro's default pools: the image's own defaults are
            // the same pools, so they are kept.
            self.log.info(&format!(
                "ntp: no servers or pools in the data: {unit} keeps the image's configuration"
            ));
        } else {
            let target = under(&self.o.root, path);
            atomic_write(
                &target,
                body.as_bytes(),
                0o644,
                Owner {
                    uid: Some(0),
                    gid: Some(0),
                },
                WriteMode::Replace,
            )
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            if client == ntp::Client::Chrony {
                self.chrony_sourcedir()?;
            }
            self.log.info(&format!(
                "ntp: {unit} uses {} (in {path})",
                n.servers
                    .iter()
                    .chain(n.pools.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        sys::check("systemctl", &["enable", unit], None)?;
        sys::check("systemctl", &["restart", unit], None)?;
        Ok(())
    }

    /// Images whose chrony.conf predates `sourcedir` would never read our sources file.
    fn chrony_sourcedir(&mut self) -> Step<()> {
        let conf = under(&self.o.root, ntp::CHRONY_CONF);
        let text = match fs::read_to_string(&conf) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", conf.display())),
        };
        if ntp::chrony_reads_sourcedir(&text) {
            return Ok(());
        }
        let mut add = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            add.push('\n');
        }
        add.push_str(&format!(
            "# Added by cloudsigma-agent for the bootstrap data's ntp servers\nsourcedir {}\n",
            ntp::CHRONY_SOURCEDIR
        ));
        atomic_write(
            &conf,
            add.as_bytes(),
            0o644,
            Owner::default(),
            WriteMode::Append,
        )
        .map_err(|e| format!("cannot update {}: {e}", conf.display()))?;
        self.log.info(&format!(
            "ntp: added 'sourcedir {}' to {}",
            ntp::CHRONY_SOURCEDIR,
            ntp::CHRONY_CONF
        ));
        Ok(())
    }

    /// A device path is looked up under --root (tests create stand-ins there; a debugging run
    /// with a scratch root thus never reaches the host's disks), but passed to the tools as is.
    fn device_exists(&mut self, dev: &str) -> Step<()> {
        let p = under(&self.o.root, dev);
        if p.exists() {
            return Ok(());
        }
        // Partitions created a moment ago may still be on their way from udev.
        let _ = sys::run("udevadm", &["settle"], None);
        if p.exists() {
            Ok(())
        } else {
            Err(format!("device {dev} does not exist"))
        }
    }

    fn disk_setup(&mut self, disks: &[Disk]) -> Step<()> {
        for d in disks {
            let dev = d.device.as_str();
            self.device_exists(dev)
                .map_err(|e| format!("disk_setup {dev}: {e}"))?;
            let probe = blkid(dev)?;
            if let Some(pt) = &probe.pttype {
                if !d.overwrite {
                    self.log.info(&format!(
                        "disk_setup: {dev} already has a {pt} partition table: left as is (overwrite is false)"
                    ));
                    continue;
                }
                let out = sys::check("sfdisk", &["--json", dev], None)?;
                if let Some((label, n)) = storage::sfdisk_json_layout(&out.stdout) {
                    let count_ok = if d.parts.is_empty() {
                        n >= 1
                    } else {
                        n == d.parts.len()
                    };
                    if label == d.table_type.label() && count_ok {
                        self.log.info(&format!(
                            "disk_setup: {dev} already has the requested layout ({label}, {n} partition(s)): left as is"
                        ));
                        continue;
                    }
                }
                self.warn(format!(
                    "disk_setup: replacing the {pt} partition table of {dev} (overwrite is true)"
                ));
            } else if let Some(fs) = &probe.fstype {
                if !d.overwrite {
                    self.warn(format!(
                        "disk_setup: {dev} carries a {fs} filesystem on the whole disk: not partitioned (overwrite is false)"
                    ));
                    continue;
                }
            }
            let out = sys::check("blockdev", &["--getsize64", dev], None)?;
            let size: u64 = out.stdout.trim().parse().map_err(|_| {
                format!("disk_setup {dev}: blockdev --getsize64 did not print a size")
            })?;
            let script = storage::sfdisk_script(d, size).map_err(|e| format!("disk_setup: {e}"))?;
            sys::check(
                "sfdisk",
                &["--wipe", "always", dev],
                Some(script.as_bytes()),
            )
            .map_err(|e| format!("disk_setup {dev}: {e}"))?;
            // The partition nodes (and their by-label links) appear through udev.
            let _ = sys::run("udevadm", &["settle"], None);
            self.log.info(&format!(
                "disk_setup: partitioned {dev} ({}, {} partition(s))",
                d.table_type.label(),
                d.parts.len().max(1)
            ));
        }
        Ok(())
    }

    fn fs_setup(&mut self, list: &[Filesystem]) -> Step<()> {
        let mut made = 0;
        for (i, f) in list.iter().enumerate() {
            let key = format!("fs_setup[{i}]");
            let (target, force) = match f.partition {
                PartSel::Num(_) | PartSel::Raw => {
                    let raw = f.partition == PartSel::Raw;
                    let target = match f.partition {
                        PartSel::Num(n) => storage::partition_path(&f.device, n),
                        _ => f.device.clone(),
                    };
                    self.device_exists(&target)
                        .map_err(|e| format!("{key}: {e}"))?;
                    let p = blkid(&target)?;
                    let label = p
                        .label
                        .as_ref()
                        .map(|l| format!(" labelled '{l}'"))
                        .unwrap_or_default();
                    match (&p.fstype, &p.pttype) {
                        (Some(t), _) if *t == f.filesystem && p.label == f.label && !f.overwrite => {
                            self.log.info(&format!(
                                "{key}: {target} already has the {t} filesystem{label}: kept"
                            ));
                            continue;
                        }
                        (Some(t), _) if f.overwrite || f.replace_fs.as_deref() == Some(t) => {
                            self.warn(format!(
                                "{key}: replacing the {t} filesystem{label} on {target} ({})",
                                if f.overwrite { "overwrite is true" } else { "replace_fs" }
                            ));
                            (target, true)
                        }
                        (Some(t), _) => {
                            return Err(format!(
                                "{key}: {target} already has a {t} filesystem{label}; not formatted as {} (overwrite is false)",
                                f.filesystem
                            ))
                        }
                        (None, Some(pt)) if raw && !f.overwrite => {
                            return Err(format!(
                                "{key}: {target} has a {pt} partition table; not formatted as a whole (overwrite is false)"
                            ))
                        }
                        (None, _) => (target, raw || f.overwrite),
                    }
                }
                PartSel::Any | PartSel::Auto => {
                    self.device_exists(&f.device)
                        .map_err(|e| format!("{key}: {e}"))?;
                    let out = sys::check(
                        "lsblk",
                        &[
                            "--pairs",
                            "--paths",
                            "--output",
                            "NAME,TYPE,FSTYPE,LABEL",
                            &f.device,
                        ],
                        None,
                    )?;
                    let devs = storage::parse_lsblk_pairs(&out.stdout);
                    let (target, reuse) =
                        storage::pick_device(f, &devs).map_err(|e| format!("{key}: {e}"))?;
                    if reuse {
                        self.log.info(&format!(
                            "{key}: {target} already has a {} filesystem: kept",
                            f.filesystem
                        ));
                        continue;
                    }
                    let had_fs = devs.iter().any(|d| d.name == target && d.fstype.is_some());
                    let force = had_fs || target == f.device;
                    (target, force)
                }
            };
            let (tool, args) = storage::mkfs_command(f, &target, force);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            sys::check(&tool, &argv, None).map_err(|e| format!("{key}: {e}"))?;
            made += 1;
            self.log.info(&format!(
                "{key}: created {}{} on {target}",
                f.filesystem,
                f.label
                    .as_ref()
                    .map(|l| format!(" '{l}'"))
                    .unwrap_or_default()
            ));
        }
        if made > 0 {
            // mounts by LABEL= need udev's by-label links of the new filesystems.
            let _ = sys::run("udevadm", &["settle"], None);
        }
        Ok(())
    }

    fn mounts(&mut self, mounts: &[Mount]) -> Step<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let fstab = under(&self.o.root, "/etc/fstab");
        let (old, mode, owner) = match fs::read_to_string(&fstab) {
            Ok(t) => {
                let meta = fs::metadata(&fstab).map_err(|e| format!("{}: {e}", fstab.display()))?;
                let owner = Owner {
                    uid: Some(meta.uid()),
                    gid: Some(meta.gid()),
                };
                (t, meta.permissions().mode() & 0o7777, owner)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (String::new(), 0o644, Owner::default())
            }
            Err(e) => return Err(format!("{}: {e}", fstab.display())),
        };
        let (new, left_out) = storage::merge_fstab(&old, mounts);
        for d in &left_out {
            self.warn(format!(
                "mounts: {d} is already in /etc/fstab (not written by us): that line is kept, the data's entry is not added"
            ));
        }
        let ours: Vec<&Mount> = mounts
            .iter()
            .filter(|m| !left_out.contains(&m.device))
            .collect();
        for m in &ours {
            if m.mountpoint.starts_with('/') {
                let dir = under(&self.o.root, &m.mountpoint);
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|e| format!("mounts: cannot create {}: {e}", m.mountpoint))?;
            }
        }
        if new != old {
            atomic_write(&fstab, new.as_bytes(), mode, owner, WriteMode::Replace)
                .map_err(|e| format!("{}: {e}", fstab.display()))?;
            self.log.info(&format!(
                "mounts: /etc/fstab updated ({} entr{} of ours)",
                ours.len(),
                if ours.len() == 1 { "y" } else { "ies" }
            ));
            // systemd generates mount units from fstab: reload first, or mount -a warns that
            // systemd still uses the old version.
            sys::check("systemctl", &["daemon-reload"], None)?;
        } else {
            self.log.info("mounts: /etc/fstab already up to date");
        }
        if !ours.is_empty() {
            sys::check("mount", &["-a"], None)?;
        }
        Ok(())
    }

    fn swap(&mut self) -> Step<()> {
        let swaps = under(&self.o.root, "/proc/swaps");
        let active: Vec<String> = fs::read_to_string(&swaps)
            .map(|t| {
                t.lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !active.is_empty() {
            if self.real_root {
                let st = Command::new("swapoff")
                    .arg("-a")
                    .status()
                    .map_err(|e| format!("cannot run swapoff: {e}"))?;
                if !st.success() {
                    return Err(format!(
                        "swapoff -a exited with {st} (active: {})",
                        active.join(", ")
                    ));
                }
                self.log
                    .info(&format!("swapoff -a: disabled {}", active.join(", ")));
            } else {
                self.log.info(&format!(
                    "active swap {} (swapoff -a runs only when --root is /)",
                    active.join(", ")
                ));
            }
        }
        let fstab = under(&self.o.root, "/etc/fstab");
        let text = match fs::read_to_string(&fstab) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", fstab.display())),
        };
        let (new, n) = comment_swap(&text);
        if n > 0 {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let meta = fs::metadata(&fstab).map_err(|e| format!("{}: {e}", fstab.display()))?;
            let owner = Owner {
                uid: Some(meta.uid()),
                gid: Some(meta.gid()),
            };
            atomic_write(
                &fstab,
                new.as_bytes(),
                meta.permissions().mode() & 0o7777,
                owner,
                WriteMode::Replace,
            )
            .map_err(|e| format!("{}: {e}", fstab.display()))?;
            self.log
                .info(&format!("commented {n} swap line(s) in /etc/fstab"));
        }
        Ok(())
    }

    fn node_ip(&mut self) -> Step<()> {
        let Some((ip, class)) = net::node_ip(&self.status.interfaces) else {
            self.log
                .info("no interface matches a context NIC: kubelet picks its own node IP");
            return Ok(());
        };
        let path = under(&self.o.root, "/etc/default/kubelet");
        let old = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let new = set_node_ip(&old, &ip);
        atomic_write(
            &path,
            new.as_bytes(),
            0o644,
            Owner::default(),
            WriteMode::Replace,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        self.log.info(&format!(
            "kubelet --node-ip={ip} ({class} address) in /etc/default/kubelet"
        ));
        self.status.node_ip = Some(ip);
        Ok(())
    }

    /// Write `body` as a 0700 script under the state dir and run it with /bin/sh. Output goes to
    /// the 0600 output log (it may contain secrets), never to the agent's log.
    fn run_script(&mut self, name: &str, body: &str, instance_id: &str) -> Step<()> {
        let mut body = body.to_string();
        if !self.real_root {
            // Test roots: the data's absolute marker path is mapped under --root so that a test
            // never touches the host's /run (documented in docs/agent.md).
            let mapped = under(&self.o.root, "/run/cluster-api")
                .display()
                .to_string();
            body = body.replace("/run/cluster-api", &mapped);
        }
        let dir = under(&self.o.root, STATE_DIR).join("scripts");
        let path = dir.join(name);
        atomic_write(
            &path,
            body.as_bytes(),
            0o700,
            Owner::default(),
            WriteMode::Replace,
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let out_path = under(&self.o.root, OUTPUT_FILE);
        if let Some(p) = out_path.parent() {
            let _ = fs::create_dir_all(p);
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&out_path)
            .map_err(|e| format!("cannot open {}: {e}", out_path.display()))?;
        let mut out2 = out.try_clone().map_err(|e| e.to_string())?;
        let _ = writeln!(out2, "===== {} {name} =====", fsutil::now_rfc3339());
        self.log.info(&format!(
            "running {} with /bin/sh ({} bytes, output in {})",
            path.display(),
            body.len(),
            out_path.display()
        ));
        let t = Instant::now();
        let cwd = if self.real_root {
            PathBuf::from("/")
        } else {
            self.o.root.clone()
        };
        let status = Command::new("/bin/sh")
            .arg(&path)
            .current_dir(cwd)
            .env("INSTANCE_ID", instance_id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(out2))
            .status()
            .map_err(|e| format!("cannot run /bin/sh {}: {e}", path.display()))?;
        self.log.info(&format!(
            "{name} exited with {status} after {} ms",
            t.elapsed().as_millis()
        ));
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{name} script exited with {status} (see {})",
                out_path.display()
            ))
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

/// `blkid -p` (low-level probe, no cache, like cloud-init's `-c /dev/null`): exit 2 means no
/// signature at all.
fn blkid(dev: &str) -> Step<storage::Probe> {
    let out = sys::run("blkid", &["-p", "-o", "export", dev], None)?;
    match out.code {
        Some(0) => Ok(storage::parse_blkid_export(&out.stdout)),
        Some(2) => Ok(storage::Probe::default()),
        _ => Err(format!(
            "blkid -p -o export {dev} exited with {}{}",
            out.code
                .map(|c| format!("status {c}"))
                .unwrap_or_else(|| "a signal".into()),
            out.why()
        )),
    }
}

/// Run a system tool (useradd, groupadd...) and fail the step on a non-zero exit.
fn run_tool(tool: &str, args: &[&str]) -> Step<()> {
    let st = Command::new(tool)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{tool} {} exited with {st}", args.join(" ")))
    }
}

/// useradd's argv for a new user (cloud-init's create_user, minus the password: see users()).
fn useradd_args(u: &cloudconfig::User) -> Vec<String> {
    let mut args: Vec<String> = vec!["-m".into()];
    for (flag, v) in [
        ("-c", &u.gecos),
        ("-s", &u.shell),
        ("-d", &u.homedir),
        ("-g", &u.primary_group),
        ("--inactive", &u.inactive),
    ] {
        if let Some(v) = v {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    if !u.groups.is_empty() {
        args.push("-G".into());
        args.push(u.groups.join(","));
    }
    args.push(u.name.clone());
    args
}

fn chpasswd_line(name: &str, p: &cloudconfig::Secret) -> String {
    format!("{name}:{}\n", p.0)
}

fn decode_content(f: &WriteFile) -> Step<Vec<u8>> {
    let b64 = |c: &[u8]| {
        userdata::decode_base64(&String::from_utf8_lossy(c)).map_err(|_| {
            format!(
                "{}: content is not valid base64 (encoding {:?})",
                f.path,
                enc_name(f.encoding)
            )
        })
    };
    let gz = |c: &[u8]| {
        userdata::gunzip(c).map_err(|e| format!("{}: content does not gunzip: {e}", f.path))
    };
    match f.encoding {
        Encoding::Plain => Ok(f.content.clone()),
        Encoding::Base64 => b64(&f.content),
        Encoding::Gzip => gz(&f.content),
        Encoding::GzipBase64 => gz(&b64(&f.content)?),
    }
}

fn enc_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Plain => "text/plain",
        Encoding::Base64 => "b64",
        Encoding::Gzip => "gzip",
        Encoding::GzipBase64 => "gz+b64",
    }
}

/// Whether the data configures kubelet's node-ip itself (then ours would override it: skip).
fn mentions_node_ip(cfg: &CloudConfig) -> bool {
    let in_files = cfg.write_files.iter().any(|f| {
        f.encoding == Encoding::Plain && String::from_utf8_lossy(&f.content).contains("node-ip")
    });
    let in_cmds = cfg
        .runcmd
        .iter()
        .chain(cfg.bootcmd.iter())
        .any(|c| match c {
            cloudconfig::Cmd::Line(l) => l.contains("node-ip"),
            cloudconfig::Cmd::Words(w) => w.iter().any(|x| x.contains("node-ip")),
        });
    in_files || in_cmds
}

/// Comment out active swap lines of an fstab. Returns the new text and how many lines changed.
pub fn comment_swap(text: &str) -> (String, usize) {
    let mut n = 0;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let fields: Vec<&str> = t.split_whitespace().collect();
        if !t.starts_with('#') && fields.len() >= 3 && fields[2] == "swap" {
            out.push_str("#cloudsigma-agent: swap disabled for kubelet# ");
            n += 1;
        }
        out.push_str(line);
    }
    (out, n)
}

/// Set `--node-ip=IP` in KUBELET_EXTRA_ARGS, keeping the other arguments and lines.
pub fn set_node_ip(old: &str, ip: &str) -> String {
    let mut found = false;
    let mut lines: Vec<String> = old
        .lines()
        .map(|l| {
            if let Some(v) = l.strip_prefix("KUBELET_EXTRA_ARGS=") {
                found = true;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                let mut args: Vec<&str> = v
                    .split_whitespace()
                    .filter(|a| !a.starts_with("--node-ip"))
                    .collect();
                let flag = format!("--node-ip={ip}");
                args.push(&flag);
                format!("KUBELET_EXTRA_ARGS={}", args.join(" "))
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(format!("KUBELET_EXTRA_ARGS=--node-ip={ip}"));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_swap_commented_once() {
        let t = "UUID=1 / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n# /old none swap sw 0 0\n";
        let (n1, c1) = comment_swap(t);
        assert_eq!(c1, 1);
        assert!(n1.contains("#cloudsigma-agent: swap disabled for kubelet# /swap.img"));
        let (_, c2) = comment_swap(&n1);
        assert_eq!(c2, 0, "idempotent");
    }

    #[test]
    fn useradd_for_capi_users() {
        let cfg = cloudconfig::parse(
            "users:\n  - name: capi\n    gecos: Cluster API\n    groups: docker,adm\n    homedir: /home/capi\n    inactive: true\n    lock_passwd: true\n    passwd: $6$salt$hash\n    primary_group: capi\n    shell: /bin/bash\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAA capi\n  - name: ops\n    inactive: 7\n",
        )
        .unwrap();
        assert_eq!(
            useradd_args(&cfg.users[0]),
            [
                "-m",
                "-c",
                "Cluster API",
                "-s",
                "/bin/bash",
                "-d",
                "/home/capi",
                "-g",
                "capi",
                "-G",
                "docker,adm",
                "capi"
            ]
        );
        assert_eq!(
            useradd_args(&cfg.users[1]),
            ["-m", "--inactive", "7", "ops"]
        );
        assert_eq!(
            chpasswd_line("capi", cfg.users[0].passwd.as_ref().unwrap()),
            "capi:$6$salt$hash\n"
        );
        assert!(cfg.users[0].lock_passwd);
        // Only the boolean inactive is a warning; nothing else is left unapplied.
        assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
        assert!(cfg.warnings[0].contains("inactive: true"));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("$6$salt"), "Debug hides the hash");
        for (y, want) in [
            (
                "users: [{name: a, passwd: 'x:y'}]",
                "passwd: not a crypt hash",
            ),
            (
                "users: [{name: a, passwd: [x]}]",
                "passwd: expected a string",
            ),
            (
                "users: [{name: a, inactive: soon}]",
                "inactive: expected a number",
            ),
        ] {
            let e = cloudconfig::parse(y).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("users[0]"), "{e}");
            assert!(!e.contains("x:y"), "{e}");
        }
    }

    #[test]
    fn node_ip_merges() {
        assert_eq!(
            set_node_ip("", "10.0.0.5"),
            "KUBELET_EXTRA_ARGS=--node-ip=10.0.0.5\n"
        );
        assert_eq!(
            set_node_ip(
                "# x\nKUBELET_EXTRA_ARGS=\"--v=2 --node-ip=1.2.3.4\"\n",
                "10.0.0.5"
            ),
            "# x\nKUBELET_EXTRA_ARGS=--v=2 --node-ip=10.0.0.5\n"
        );
    }
}
