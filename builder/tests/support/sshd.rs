//! A private sshd on 127.0.0.1 for the OpenSSH transport's tests and bench: its own config, host
//! key and authorized_keys; nothing of the machine's SSH setup is used or changed.
#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Sshd {
    child: Child,
    pub port: u16,
    /// Its host key's public line (`ssh-ed25519 AAAA… comment`): what a client must pin.
    pub host_key: String,
    /// Its log (`-E`): one "Accepted publickey" line per login.
    pub log: PathBuf,
    sshd: PathBuf,
    config: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_tree(self.child.id());
        let _ = self.child.wait();
    }
}

pub use test_support::free_port;

/// Start sshd accepting `pubkey` (for root), or say why it cannot run here.
pub fn start_sshd(dir: &Path, pubkey: &str) -> Result<Sshd, String> {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or("sshd not installed")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the sshd test needs root (sshd's privilege separation)".into());
    }
    std::fs::create_dir_all("/run/sshd").ok();
    let host = dir.join("host_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host)
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    assert!(ok.success());
    std::fs::write(dir.join("authorized_keys"), format!("{pubkey}\n")).unwrap();
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {h}\nAuthorizedKeysFile {a}\nPidFile {p}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n",
            h = host.display(),
            a = dir.join("authorized_keys").display(),
            p = dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let host_key = std::fs::read_to_string(host.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    let log = dir.join("sshd.log");
    let child = spawn(&sshd, &config, &log);
    Ok(Sshd {
        child,
        port,
        host_key,
        log,
        sshd,
        config,
    })
}

fn spawn(sshd: &Path, config: &Path, log: &Path) -> Child {
    Command::new(sshd)
        .arg("-D")
        .arg("-E")
        .arg(log)
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Sshd {
    /// What a guest reboot does to SSH: every connection of this sshd dies (the listener and all
    /// its session processes are killed), then a new sshd with the same host key listens on the
    /// same port.
    pub fn restart(&mut self) {
        kill_tree(self.child.id());
        let _ = self.child.wait();
        self.child = spawn(&self.sshd, &self.config, &self.log);
    }
}

/// Parent pid of `pid` from /proc (None once it is gone).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..." — comm may hold spaces or parentheses: split after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Kill `root` and all its descendants, each by its pid (children first).
pub fn kill_tree(root: u32) {
    let mut all: Vec<u32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        all.push(p);
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                    if ppid(pid) == Some(p) {
                        frontier.push(pid);
                    }
                }
            }
        }
    }
    for pid in all.into_iter().rev() {
        // SAFETY: kill has no memory-safety preconditions; these are our own processes.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}

/// The pid of the master behind a control socket (`ssh -O check`), if one answers.
pub fn master_pid(socket: &Path) -> Option<u32> {
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-o"])
        .arg(format!("ControlPath={}", socket.display()))
        .args(["-O", "check", "x"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let i = text.find("pid=")? + 4;
    text[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub fn alive(pid: u32) -> bool {
    // a zombie is dead for our purposes
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .map(|st| st != "Z")
            .unwrap_or(false),
        Err(_) => false,
    }
}
