//! SSH into a node (OpenSSH, our key, no host-key bookkeeping: every node is new), a key pair for
//! it, the guest's journal timestamps, and the failure report that prints the node's console and
//! agent journal when a test panics after boot.

use crate::harness::{run, shell_quote};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh ed25519 key pair for SSH into a node: (dir holding it, private key path, public key).
pub fn ssh_keypair() -> (tempfile::TempDir, PathBuf, String) {
    let keydir = tempfile::tempdir().expect("tempdir");
    let key = keydir.path().join("id");
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
        "ssh-keygen",
    );
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pubkey");
    (keydir, key, pubkey.trim().to_string())
}

/// Prints the node's console log and agent status when the test fails anywhere after boot.
pub struct FailureReport {
    pub console: Option<PathBuf>,
    pub ssh: Option<Ssh>,
    /// Extra commands whose output helps (e.g. the kubelet's journal).
    pub extra: Vec<String>,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(p) = &self.console {
            let log = std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
            let tail: String = log
                .chars()
                .rev()
                .take(20_000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!(
                "===== VM console log ({}) =====\n{tail}\n===== end console =====",
                p.display()
            );
        }
        if let Some(s) = &self.ssh {
            let st = s.run("sudo cat /run/cloudsigma/bootstrap.json; echo; sudo journalctl -b -u cloudsigma-bootstrap --no-pager | tail -50");
            eprintln!(
                "===== agent status / journal =====\n{}\n=====",
                st.unwrap_or_else(|e| e)
            );
            for cmd in &self.extra {
                eprintln!(
                    "===== {cmd} =====\n{}\n=====",
                    s.run(cmd).unwrap_or_else(|e| e)
                );
            }
        }
    }
}

#[derive(Clone)]
pub struct Ssh {
    pub key: PathBuf,
    pub host: String,
    pub user: String,
}

impl Ssh {
    /// `ssh` or `scp` with our key and no host-key bookkeeping (every node is new).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(["-F", "/dev/null", "-i"]).arg(&self.key).args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            // a session that dies after login (the guest rebooted under it) ends in 30 s
            "-o",
            "ServerAliveInterval=10",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "LogLevel=ERROR",
        ]);
        c
    }

    fn result(
        &self,
        what: &str,
        out: std::io::Result<std::process::Output>,
    ) -> Result<String, String> {
        let out = out.map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{what} {}@{} exited {}: {}",
                self.user,
                self.host,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The bound of one [`Ssh::run`]: no command the loops run over SSH takes this long, and a
    /// stalled one must fail the loop rather than hang it (see [`Ssh::run_within`]).
    pub const RUN_LIMIT: Duration = Duration::from_secs(900);
    /// The bound of one attempt while a guest boots or reboots (polls).
    pub const POLL_LIMIT: Duration = Duration::from_secs(30);

    pub fn run(&self, script: &str) -> Result<String, String> {
        self.run_within(script, Self::RUN_LIMIT)
    }

    /// `run`, killed after `limit`. Why: across a guest reboot QEMU's user networking accepts the
    /// TCP connection on the host side at once, and the SSH session can then stall after the
    /// banner, where neither ConnectTimeout nor ServerAlive* applies (seen: one `ssh` hung 8 min
    /// in first_boot's reboot wait). coreutils `timeout` bounds the whole command.
    pub fn run_within(&self, script: &str, limit: Duration) -> Result<String, String> {
        let ssh = self.command("ssh");
        let mut c = Command::new("timeout");
        c.args(["--kill-after=5", &format!("{}s", limit.as_secs().max(1))])
            .arg(ssh.get_program())
            .args(ssh.get_args())
            .arg(format!("{}@{}", self.user, self.host))
            .arg(script);
        let out = c.output();
        if let Ok(o) = &out {
            // 124: `timeout` stopped it; 137: it had to SIGKILL after the grace period
            if matches!(o.status.code(), Some(124) | Some(137)) {
                return Err(format!(
                    "ssh {}@{}: no answer within {limit:?} (stalled session, killed)",
                    self.user, self.host
                ));
            }
        }
        self.result("ssh", out)
    }

    /// Copies a local file to `remote` (a path the SSH user may write) with scp.
    pub fn copy_to(&self, local: &Path, remote: &str) -> Result<(), String> {
        let out = self
            .command("scp")
            .arg(local)
            .arg(format!("{}@{}:{remote}", self.user, self.host))
            .output();
        self.result("scp", out).map(drop)
    }
}

impl Ssh {
    /// `run`, repeated every 2 s until it succeeds or `within` has passed (sshd may be restarting
    /// or the guest busy right after boot); the last error otherwise.
    pub fn run_retrying(&self, script: &str, within: Duration) -> Result<String, String> {
        let t = Instant::now();
        loop {
            match self.run_within(script, Self::POLL_LIMIT) {
                Ok(out) => return Ok(out),
                Err(e) if t.elapsed() >= within => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }
}

/// The guest's journal: monotonic time (guest uptime, s) of the first line of `unit` matching
/// `pattern` (grep -m1), or None.
pub fn journal_uptime(ssh: &Ssh, unit: &str, pattern: &str) -> Option<f64> {
    let out = ssh
        .run(&format!(
            "sudo journalctl -b -o short-monotonic --no-pager -u {unit} | grep -m1 -- {pattern} | sed -E 's/^\\[ *([0-9.]+)\\].*/\\1/'",
            pattern = shell_quote(pattern)
        ))
        .ok()?;
    out.trim().parse().ok()
}
