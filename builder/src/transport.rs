//! Provisioning transports: how steps reach the builder VM.
//!
//! - [`OpenSsh`]: the system `ssh` client with an ephemeral ed25519 key and a private
//!   known_hosts file (both in a 0700 temp dir removed on drop). Nothing touches ~/.ssh. The
//!   known_hosts file holds exactly the host key the build gave its server
//!   ([`crate::hostkey`], [`Target::host_key`]) and ssh runs with `StrictHostKeyChecking=yes`:
//!   a server presenting any other key gets nothing — no login, no command, no secret.
//!   All operations share one SSH connection (OpenSSH connection multiplexing, its control
//!   socket in the same private dir): a new connection costs a key exchange and an
//!   authentication, seconds on an emulated VM, for every step and upload otherwise.
//! - [`LocalTransport`]: records every operation and copies uploads into a sandbox dir; used
//!   against the emulator where no VM runs (tests, bench, `--transport local:DIR`).

use crate::secrets::{Secrets, GUEST_DIR};
use async_trait::async_trait;
use cloudsigma_api::client::WaitPolicy;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("host key mismatch: {0}")]
    HostKeyMismatch(String),
    #[error("interrupted")]
    Cancelled,
}

/// Receives each line a remote command prints (stdout and stderr, in arrival order).
pub type LineSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Where to connect. The port is 22 on CloudSigma; tests may point elsewhere.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The one host key the server may present, as an OpenSSH public key line
    /// (`ssh-ed25519 AAAA…`): the build made it and gave it to the server.
    pub host_key: String,
}

impl Target {
    /// The known_hosts line that pins [`Self::host_key`] to this address and port.
    fn known_hosts_line(&self) -> Result<String, TransportError> {
        let mut words = self.host_key.split_whitespace();
        let (Some(kind), Some(blob)) = (words.next(), words.next()) else {
            return Err(TransportError::Failed(format!(
                "no host key known for {}: imgbuild connects only to a server whose host key it made",
                self.host
            )));
        };
        let host = match self.port {
            22 => self.host.clone(),
            p => format!("[{}]:{p}", self.host),
        };
        Ok(format!("{host} {kind} {blob}\n"))
    }

    /// The key's algorithm (`ssh-ed25519`), the only one ssh may accept from the server.
    fn host_key_algorithm(&self) -> &str {
        self.host_key
            .split_whitespace()
            .next()
            .unwrap_or("ssh-ed25519")
    }
}

/// What ssh prints when the server's host key is not the pinned one (a different key, or none of
/// the pinned type).
fn is_host_key_failure(line: &str) -> bool {
    [
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "no matching host key type found",
    ]
    .iter()
    .any(|m| line.contains(m))
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// The public key to put in the server's meta (`ssh_public_key`), one OpenSSH line.
    fn public_key(&self) -> String;
    /// Wait until a login works, retrying with backoff until `timeout`.
    async fn wait_ready(
        &self,
        t: &Target,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError>;
    /// Run a local script file as root with `env` set, streaming output.
    async fn run_script(
        &self,
        t: &Target,
        script: &Path,
        env: &[(String, String)],
        timeout: Duration,
        out: LineSink<'_>,
    ) -> Result<(), TransportError>;
    /// Copy a local file to `dest` (root-owned, `mode`).
    async fn upload(
        &self,
        t: &Target,
        src: &Path,
        dest: &str,
        mode: &str,
        timeout: Duration,
    ) -> Result<(), TransportError>;
    /// [`Self::upload`], then the sha256 of `dest` computed in the guest (what a verified
    /// upload needs). A transport may do both in one operation.
    async fn upload_hashed(
        &self,
        t: &Target,
        src: &Path,
        dest: &str,
        mode: &str,
        timeout: Duration,
    ) -> Result<String, TransportError> {
        self.upload(t, src, dest, mode, timeout).await?;
        self.remote_sha256(t, dest).await
    }
    /// Several uploads, as [`Self::upload_hashed`] each: `files` are (local source, guest
    /// destination, mode); returns the guest's sha256 of each destination, in order. A transport
    /// may do them all in one operation.
    async fn upload_many(
        &self,
        t: &Target,
        files: &[(&Path, &str, &str)],
        timeout: Duration,
    ) -> Result<Vec<String>, TransportError> {
        let mut sums = Vec::with_capacity(files.len());
        for (src, dest, mode) in files {
            sums.push(self.upload_hashed(t, src, dest, mode, timeout).await?);
        }
        Ok(sums)
    }
    /// Write each secret to a root-only 0600 file `GUEST_DIR/<name>` (see [`crate::secrets`]):
    /// the value travels on the channel's stdin, never on a command line.
    async fn put_secrets(
        &self,
        t: &Target,
        secrets: &Secrets,
        timeout: Duration,
    ) -> Result<(), TransportError>;
    /// sha256 of a file in the guest, computed there.
    async fn remote_sha256(&self, t: &Target, path: &str) -> Result<String, TransportError>;
    /// Reboot and wait until the guest is back (a new boot id).
    async fn reboot(
        &self,
        t: &Target,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError>;
    /// Final guest cleanup: remove the build's uploads dir and the login key, flush disks.
    async fn clean(&self, t: &Target) -> Result<(), TransportError>;
    /// Run one shell command as root and return its exit code and output (stdout and stderr,
    /// lines joined by `\n`): a `--verify` check. The command is the recipe's; its output is
    /// the guest's and holds no secret of the build (none is given to a verify server).
    async fn run_check(
        &self,
        t: &Target,
        cmd: &str,
        timeout: Duration,
    ) -> Result<(i32, String), TransportError>;
    /// Release connections held open between operations. The build calls it when it ends, on
    /// success, failure or interruption; operations after it connect afresh.
    async fn close(&self) {}
    /// The build is done with the guest, however it ended: release connections (as
    /// [`Self::close`]) and destroy the login key now rather than at exit — cleanup can take
    /// minutes, and were imgbuild killed hard meanwhile, the key would stay behind.
    async fn finish(&self) {
        self.close().await
    }
}

/// Quote for a POSIX shell (single quotes; embedded quotes closed and escaped).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sha256 digest in `sha256sum`'s output. The output may carry stderr noise (e.g. sudo
/// warnings) before the sum: take the digest token itself rather than the first word.
fn digest_in(out: &str) -> Result<String, TransportError> {
    out.split_whitespace()
        .find(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .ok_or_else(|| TransportError::Failed(format!("unexpected sha256sum output: {out:?}")))
}

/// A piece of a remote command's stdin: bytes, or a local file streamed from disk (so that
/// hundreds of MB of uploads are never held in memory at once).
pub enum Part {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn sudo(user: &str) -> &'static str {
    if user == "root" {
        ""
    } else {
        "sudo -n "
    }
}

pub struct OpenSsh {
    dir: tempfile::TempDir,
    public_key: String,
    connect_timeout: u64,
    multiplex: bool,
    /// The known_hosts line written last (see [`Self::pin_host_key`]).
    pinned: Mutex<Option<String>>,
}

/// Where cloud-init keeps the user-data it read (cloud-init's `Paths`: the instance dir's
/// `user-data.txt`, its processed `.i` form, the merged `cloud-config.txt` and the pickled
/// datasource `obj.pkl`, which holds the raw user-data); a shell glob, expanded as root.
const CLOUD_INIT_USER_DATA_COPIES: &str = "/var/lib/cloud/instances/*/user-data.txt /var/lib/cloud/instances/*/user-data.txt.i /var/lib/cloud/instances/*/cloud-config.txt /var/lib/cloud/instances/*/obj.pkl";

/// Prefix of the control sockets in the private dir; `%C` is ssh's hash of the connection
/// (local host, remote host, port, user), so each target gets its own master.
const CONTROL_PREFIX: &str = "mux-";
/// A master with no session for this long exits by itself: the bound on a master outliving an
/// imgbuild killed hard (steps follow each other within milliseconds, and a running step is a
/// session, so a build never idles this long while it needs the connection).
const CONTROL_PERSIST_SECS: u64 = 60;
/// Probes of a booting guest's sshd: 0.5 s, doubling to 2 s (the api crate's waiter schedule).
/// A boot takes a minute or more under emulation, so the cap is what matters: with 5 s, sshd
/// answered on average 2.5 s before the next probe (twice per build with a `reboot` step); a
/// refused probe costs one short-lived ssh process.
const SSH_WAIT: WaitPolicy = WaitPolicy {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(2),
};
/// Unix socket paths are limited to 108 bytes (104 on some systems); `%C` expands to 40.
const MAX_CONTROL_PATH: usize = 100;

impl OpenSsh {
    /// Generate the ephemeral key pair. Fails with a clear message if OpenSSH is missing.
    pub async fn new(comment: &str) -> Result<OpenSsh, TransportError> {
        let dir = tempfile::Builder::new()
            .prefix("imgbuild-ssh-")
            .tempdir()
            .map_err(|e| {
                TransportError::Failed(format!("cannot create a temp dir for the SSH key: {e}"))
            })?;
        // tempdir() follows the umask (often 0755): make the dir private before anything is in
        // it — it will hold the key and the control socket, through which anyone could use our
        // root login. The key file gets 0600 from ssh-keygen.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).map_err(
            |e| TransportError::Failed(format!("cannot make the SSH temp dir private: {e}")),
        )?;
        let key = dir.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| {
                TransportError::Failed(format!(
                    "cannot run ssh-keygen (install openssh-client): {e}"
                ))
            })?;
        if !out.status.success() {
            return Err(TransportError::Failed(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let public_key = std::fs::read_to_string(key.with_extension("pub"))
            .map_err(|e| {
                TransportError::Failed(format!("cannot read the generated public key: {e}"))
            })?
            .trim()
            .to_string();
        std::fs::write(dir.path().join("known_hosts"), b"")
            .map_err(|e| TransportError::Failed(format!("known_hosts: {e}")))?;
        // a very long TMPDIR would overflow the socket path: then connect per operation
        let multiplex = dir.path().join(CONTROL_PREFIX).as_os_str().len() + 40 <= MAX_CONTROL_PATH;
        Ok(OpenSsh {
            dir,
            public_key,
            connect_timeout: 10,
            multiplex,
            pinned: Mutex::new(None),
        })
    }

    /// One SSH connection per operation, as without multiplexing (for comparison in the bench,
    /// and a way out should a guest's sshd refuse multiplexed sessions).
    pub fn without_multiplexing(mut self) -> OpenSsh {
        self.multiplex = false;
        self
    }

    /// Whether operations share one connection per target.
    pub fn multiplexing(&self) -> bool {
        self.multiplex
    }

    /// The private 0700 dir holding the key, known_hosts and the control sockets.
    pub fn private_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Control sockets currently in the private dir (one per live master; a stale one after a
    /// master was killed is replaced by the next connection).
    pub fn control_sockets(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.dir.path()) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(CONTROL_PREFIX))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// `ssh -O exit` for one control socket: the master ends its sessions and exits.
    fn exit_command(socket: &Path) -> std::process::Command {
        let mut c = std::process::Command::new("ssh");
        c.args(["-F", "/dev/null", "-o", "LogLevel=QUIET", "-o"])
            .arg(format!("ControlPath={}", socket.display()))
            // the host is required by the syntax; the control path alone selects the master
            .args(["-O", "exit", "imgbuild-master"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Close every master and remove its socket (a stale socket of a dead master too).
    async fn close_masters(&self) {
        for socket in self.control_sockets() {
            let mut c = Command::from(Self::exit_command(&socket));
            c.kill_on_drop(true);
            // a local socket round trip; the bound only guards against a wedged master
            let _ = tokio::time::timeout(Duration::from_secs(10), c.status()).await;
            let _ = std::fs::remove_file(&socket);
        }
    }

    fn base_args(&self, t: &Target) -> Vec<String> {
        let d = self.dir.path();
        let mut args: Vec<String> = vec![
            "-i".into(),
            d.join("id_ed25519").display().to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            // never trust on first use: the known_hosts file holds the one key the build gave
            // its server (see `pin_host_key`), and any other key ends the connection before
            // authentication — whoever answers on the address first gets nothing.
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("HostKeyAlgorithms={}", t.host_key_algorithm()),
            "-o".into(),
            "UpdateHostKeys=no".into(),
            "-o".into(),
            "CheckHostIP=no".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout),
            "-o".into(),
            "ServerAliveInterval=15".into(),
            "-o".into(),
            "ServerAliveCountMax=4".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ];
        if self.multiplex {
            // The first command to connect becomes the master and stays in the background
            // (stdio on /dev/null, so our pipes still see EOF); later ones are sessions on its
            // connection. `auto` also replaces a stale socket left by a dead master, so after a
            // reboot the next command simply connects again.
            args.extend([
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!(
                    "ControlPath={}",
                    d.join(format!("{CONTROL_PREFIX}%C")).display()
                ),
                "-o".into(),
                format!("ControlPersist={CONTROL_PERSIST_SECS}"),
            ]);
        }
        args.extend([
            "-F".into(),
            "/dev/null".into(),
            "-p".into(),
            t.port.to_string(),
            format!("{}@{}", t.user, t.host),
        ]);
        args
    }

    /// Write the private known_hosts file: exactly the target's host key for its address.
    fn pin_host_key(&self, t: &Target) -> Result<(), TransportError> {
        let line = t.known_hosts_line()?;
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if pinned.as_deref() == Some(line.as_str()) {
            return Ok(());
        }
        std::fs::write(self.dir.path().join("known_hosts"), &line)
            .map_err(|e| TransportError::Failed(format!("cannot write known_hosts: {e}")))?;
        *pinned = Some(line);
        Ok(())
    }

    /// Run `cmd` remotely with optional stdin (bytes and files, in order); stream lines to
    /// `out`; return the exit code.
    /// A server whose host key is not the target's fails with [`TransportError::HostKeyMismatch`]
    /// before anything is sent.
    async fn exec(
        &self,
        t: &Target,
        cmd: &str,
        stdin: Option<Vec<Part>>,
        timeout: Duration,
        out: LineSink<'_>,
    ) -> Result<i32, TransportError> {
        self.pin_host_key(t)?;
        let mut c = Command::new("ssh");
        c.args(self.base_args(t)).arg("--").arg(cmd);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| {
            TransportError::Failed(format!("cannot run ssh (install openssh-client): {e}"))
        })?;
        let feed = match (stdin, child.stdin.take()) {
            (Some(parts), Some(mut w)) => Some(tokio::spawn(async move {
                // errors end the feed early: the remote side then sees short input and fails
                for part in parts {
                    let fed = match part {
                        Part::Bytes(b) => w.write_all(&b).await,
                        Part::File(p) => match tokio::fs::File::open(&p).await {
                            Ok(mut f) => tokio::io::copy(&mut f, &mut w).await.map(|_| ()),
                            Err(e) => Err(e),
                        },
                    };
                    if fed.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            })),
            _ => None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        if let Some(o) = child.stdout.take() {
            forward_lines(o, tx.clone());
        }
        if let Some(e) = child.stderr.take() {
            forward_lines(e, tx.clone());
        }
        drop(tx);
        let mut key_failure = false;
        let run = async {
            while let Some(line) = rx.recv().await {
                key_failure |= is_host_key_failure(&line);
                out(&line);
            }
            child.wait().await
        };
        let status = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(TransportError::Failed(format!("ssh: {e}"))),
            Err(_) => return Err(TransportError::Timeout(timeout, describe_command(cmd))),
        };
        if let Some(f) = feed {
            let _ = f.await;
        }
        let code = status.code().unwrap_or(255);
        if code == 255 && key_failure {
            return Err(TransportError::HostKeyMismatch(format!(
                "{}:{} did not present the host key this build gave its server ({}); nothing was sent to it. Another machine may be answering on that address",
                t.host, t.port, t.host_key
            )));
        }
        Ok(code)
    }

    async fn exec_ok(
        &self,
        t: &Target,
        cmd: &str,
        stdin: Option<Vec<Part>>,
        timeout: Duration,
    ) -> Result<String, TransportError> {
        let buf = Mutex::new(Vec::<String>::new());
        let sink = |l: &str| {
            buf.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(l.to_string())
        };
        let code = self.exec(t, cmd, stdin, timeout, &sink).await?;
        let text = buf
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n");
        if code != 0 {
            return Err(TransportError::Failed(format!(
                "remote command {cmd:?} exited {code}: {}",
                text.trim()
            )));
        }
        Ok(text)
    }

    async fn boot_id(&self, t: &Target) -> Result<String, TransportError> {
        Ok(self
            .exec_ok(
                t,
                "cat /proc/sys/kernel/random/boot_id",
                None,
                Duration::from_secs(60),
            )
            .await?
            .trim()
            .to_string())
    }
}

/// Send each line `r` yields to `tx` until its end (the channel closes when every sender —
/// stdout's and stderr's — is done).
fn forward_lines<R>(r: R, tx: tokio::sync::mpsc::UnboundedSender<String>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut l = BufReader::new(r).lines();
        while let Ok(Some(x)) = l.next_line().await {
            let _ = tx.send(x);
        }
    });
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> Result<(), TransportError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(TransportError::Cancelled),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

#[async_trait]
impl Transport for OpenSsh {
    fn public_key(&self) -> String {
        self.public_key.clone()
    }

    async fn wait_ready(
        &self,
        t: &Target,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError> {
        let start = Instant::now();
        let mut probes = 0u32;
        let mut last;
        loop {
            probes += 1;
            let buf = Mutex::new(String::new());
            let sink = |l: &str| {
                let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                b.clear();
                b.push_str(l);
            };
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return Err(TransportError::Cancelled),
                r = self.exec(t, "true", None, Duration::from_secs(self.connect_timeout + 20), &sink) => r,
            };
            match attempt {
                Ok(0) => return Ok(()),
                // not a server still booting: someone else answers, or the server did not
                // take the key; waiting longer would only keep knocking
                Err(e @ TransportError::HostKeyMismatch(_)) => return Err(e),
                Ok(code) => {
                    last = format!(
                        "ssh exited {code}: {}",
                        buf.lock().unwrap_or_else(|p| p.into_inner())
                    )
                }
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() >= timeout {
                return Err(TransportError::Timeout(
                    timeout,
                    format!("SSH to {}@{}:{} (last: {last})", t.user, t.host, t.port),
                ));
            }
            sleep_or_cancel(SSH_WAIT.interval(probes), cancel).await?;
        }
    }

    async fn run_script(
        &self,
        t: &Target,
        script: &Path,
        env: &[(String, String)],
        timeout: Duration,
        out: LineSink<'_>,
    ) -> Result<(), TransportError> {
        let body = std::fs::read(script).map_err(|e| {
            TransportError::Failed(format!("cannot read {}: {e}", script.display()))
        })?;
        // Upload the script first and run it from a file with stdin at /dev/null: `bash -s`
        // would let apt-get & co. swallow the rest of the script from stdin.
        let remote = format!(
            "/tmp/imgbuild/{}",
            script
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "step.sh".into())
        );
        self.exec_ok(
            t,
            &format!("mkdir -p /tmp/imgbuild && cat > {}", sh_quote(&remote)),
            Some(vec![Part::Bytes(body)]),
            Duration::from_secs(120),
        )
        .await?;
        let mut cmd = format!("{}env DEBIAN_FRONTEND=noninteractive", sudo(&t.user));
        for (k, v) in env {
            cmd.push(' ');
            cmd.push_str(k);
            cmd.push('=');
            cmd.push_str(&sh_quote(v));
        }
        cmd.push_str(&format!(
            " bash -euo pipefail {} </dev/null",
            sh_quote(&remote)
        ));
        let code = self.exec(t, &cmd, None, timeout, out).await?;
        if code != 0 {
            return Err(TransportError::Failed(format!(
                "script {} exited {code}",
                script.display()
            )));
        }
        Ok(())
    }

    async fn upload(
        &self,
        t: &Target,
        src: &Path,
        dest: &str,
        mode: &str,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let body = std::fs::read(src)
            .map_err(|e| TransportError::Failed(format!("cannot read {}: {e}", src.display())))?;
        // stream over the same authenticated channel (no scp/sftp subsystem needed in the guest)
        let tmp = format!("/tmp/imgbuild/upload.{}", std::process::id());
        let cmd = format!(
            "mkdir -p /tmp/imgbuild && cat > {tmp} && {s}install -D -o root -g root -m {mode} {tmp} {dest} && rm -f {tmp}",
            tmp = sh_quote(&tmp),
            s = sudo(&t.user),
            mode = sh_quote(mode),
            dest = sh_quote(dest)
        );
        self.exec_ok(t, &cmd, Some(vec![Part::Bytes(body)]), timeout)
            .await
            .map(|_| ())
    }

    async fn upload_hashed(
        &self,
        t: &Target,
        src: &Path,
        dest: &str,
        mode: &str,
        timeout: Duration,
    ) -> Result<String, TransportError> {
        let body = std::fs::read(src)
            .map_err(|e| TransportError::Failed(format!("cannot read {}: {e}", src.display())))?;
        // One session and one write in the guest (issue 25): `upload` + `remote_sha256` cost two
        // sessions, and its temp file in /tmp + `install` wrote every byte twice — on an emulated
        // VM, seconds per 100 MB. The bytes go to a temp file beside `dest` (same filesystem, so
        // the rename is atomic and a half-written file never has `dest`'s name), which gets root
        // ownership and `mode`, is renamed over `dest`, and is hashed there: the digest is of
        // the file at `dest`, as before.
        let script = r#"set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; f="$d/.imgbuild-upload.$$"; trap 'rm -f -- "$f"' EXIT; (umask 077 && cat > "$f"); chown root:root -- "$f"; chmod -- "$2" "$f"; mv -f -- "$f" "$1"; trap - EXIT; sha256sum -- "$1""#;
        let cmd = format!(
            "{}sh -c {} sh {} {}",
            sudo(&t.user),
            sh_quote(script),
            sh_quote(dest),
            sh_quote(mode)
        );
        let out = self
            .exec_ok(t, &cmd, Some(vec![Part::Bytes(body)]), timeout)
            .await?;
        digest_in(&out)
    }

    async fn upload_many(
        &self,
        t: &Target,
        files: &[(&Path, &str, &str)],
        timeout: Duration,
    ) -> Result<Vec<String>, TransportError> {
        // One session for all (issue 25): a session costs a second or more on an emulated,
        // loaded VM (sshd's fork, sudo, the shell), so debian-k8s's 18 artifact files paid
        // ~20 s in sessions alone. stdin carries, per file, a header line `SIZE MODE DEST` and
        // then exactly SIZE bytes, which `head -c` (coreutils: it never reads past its count)
        // writes to a temp file beside DEST; as in `upload_hashed` it gets root ownership and
        // the mode and is renamed over DEST. One `sha256sum` of every DEST at the end.
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let mut feed = Vec::with_capacity(files.len() * 2);
        for (src, dest, mode) in files {
            if dest.contains('\n') || mode.contains(char::is_whitespace) {
                return Err(TransportError::Failed(format!(
                    "cannot upload to {dest:?} with mode {mode:?}: a newline in the path or a blank in the mode"
                )));
            }
            let size = std::fs::metadata(src)
                .map_err(|e| TransportError::Failed(format!("cannot read {}: {e}", src.display())))?
                .len();
            feed.push(Part::Bytes(format!("{size} {mode} {dest}\n").into_bytes()));
            feed.push(Part::File(src.to_path_buf()));
        }
        let script = r#"set -e; f=; trap 'test -z "$f" || rm -f -- "$f"' EXIT; for dest in "$@"; do IFS=' ' read -r size mode path; test "$path" = "$dest"; d=$(dirname -- "$dest"); mkdir -p -- "$d"; f="$d/.imgbuild-upload.$$"; (umask 077 && head -c "$size" > "$f"); test "$(stat -c %s -- "$f")" = "$size"; chown root:root -- "$f"; chmod -- "$mode" "$f"; mv -f -- "$f" "$dest"; f=; done; sha256sum -- "$@""#;
        let mut cmd = format!("{}sh -c {} sh", sudo(&t.user), sh_quote(script));
        for (_, dest, _) in files {
            cmd.push(' ');
            cmd.push_str(&sh_quote(dest));
        }
        let out = self.exec_ok(t, &cmd, Some(feed), timeout).await?;
        // sha256sum prints one line per file, in argument order (a `\` before the digest marks
        // an escaped name); anything else is noise (e.g. sudo warnings)
        let sums: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let h = l.trim_start_matches('\\').split_whitespace().next()?;
                (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_string())
            })
            .collect();
        if sums.len() != files.len() {
            return Err(TransportError::Failed(format!(
                "expected {} sha256 sums after the uploads, got: {out:?}",
                files.len()
            )));
        }
        Ok(sums)
    }

    async fn put_secrets(
        &self,
        t: &Target,
        secrets: &Secrets,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        for (name, value) in &secrets.0 {
            // names are lower_snake_case (checked at parse), so they need no quoting; the
            // temp file + mv means a step never reads half a value
            let path = format!("{GUEST_DIR}/{name}");
            let script = format!(
                "umask 077 && mkdir -p {GUEST_DIR} && chmod 0700 {GUEST_DIR} && cat > {path}.tmp && mv -f {path}.tmp {path}"
            );
            let cmd = format!("{}sh -c {}", sudo(&t.user), sh_quote(&script));
            self.exec_ok(
                t,
                &cmd,
                Some(vec![Part::Bytes(value.bytes().to_vec())]),
                timeout,
            )
            .await
            .map_err(|e| match e {
                TransportError::Failed(m) => {
                    TransportError::Failed(format!("cannot deliver secret {name}: {m}"))
                }
                e => e,
            })?;
        }
        Ok(())
    }

    async fn remote_sha256(&self, t: &Target, path: &str) -> Result<String, TransportError> {
        let out = self
            .exec_ok(
                t,
                &format!("{}sha256sum -- {}", sudo(&t.user), sh_quote(path)),
                None,
                Duration::from_secs(120),
            )
            .await?;
        digest_in(&out)
    }

    async fn reboot(
        &self,
        t: &Target,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError> {
        let before = self.boot_id(t).await?;
        // the connection drops while rebooting: ssh's own exit code is meaningless here
        let sink = |_: &str| {};
        let _ = self
            .exec(
                t,
                &format!("{}systemctl reboot", sudo(&t.user)),
                None,
                Duration::from_secs(30),
                &sink,
            )
            .await;
        // The reboot kills the shared connection, possibly without a reset reaching us: a
        // master left running would put the next sessions on a dead connection until its
        // keepalives give up. Close it, and again after every probe that still reached the old
        // boot, so that the probes below each connect afresh until the new boot answers.
        self.close_masters().await;
        let start = Instant::now();
        loop {
            sleep_or_cancel(Duration::from_secs(2), cancel).await?;
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(TransportError::Timeout(
                    timeout,
                    "guest did not come back from reboot".into(),
                ));
            }
            self.wait_ready(t, left, cancel).await?;
            match self.boot_id(t).await {
                Ok(now) if now != before => return Ok(()),
                _ => self.close_masters().await,
            }
        }
    }

    async fn clean(&self, t: &Target) -> Result<(), TransportError> {
        // The ephemeral key must not stay in the image, and every node must get its own SSH host
        // keys (regenerated at first boot). sshd loads host keys per new connection, so this
        // must be the build's last login: nothing can connect after it.
        // cloud-init keeps copies of the user-data, which holds the build's host key (private
        // half included): they go too, whether or not the recipe runs a sysprep.
        let cmd = format!(
            "{s}rm -rf /tmp/imgbuild {secrets} && {s}rm -f /root/.ssh/authorized_keys \"$HOME/.ssh/authorized_keys\" && {s}sh -c 'rm -f /etc/ssh/ssh_host_* {user_data}' && {s}sync",
            s = sudo(&t.user),
            // tmpfs, never in the image; removed anyway so no later login could read them
            secrets = crate::secrets::GUEST_DIR,
            user_data = CLOUD_INIT_USER_DATA_COPIES,
        );
        self.exec_ok(t, &cmd, None, Duration::from_secs(120))
            .await
            .map(|_| ())
    }

    async fn run_check(
        &self,
        t: &Target,
        cmd: &str,
        timeout: Duration,
    ) -> Result<(i32, String), TransportError> {
        let buf = Mutex::new(Vec::<String>::new());
        let sink = |l: &str| {
            buf.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(l.to_string())
        };
        let full = format!("{}sh -c {}", sudo(&t.user), sh_quote(cmd));
        let code = self.exec(t, &full, None, timeout, &sink).await?;
        let text = buf.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok((code, text.join("\n")))
    }

    async fn close(&self) {
        self.close_masters().await;
    }

    async fn finish(&self) {
        self.close_masters().await;
        // the dir itself (known_hosts) goes when the transport is dropped
        for f in ["id_ed25519", "id_ed25519.pub"] {
            let _ = std::fs::remove_file(self.dir.path().join(f));
        }
    }
}

impl Drop for OpenSsh {
    /// The backstop for every exit path that did not call [`Transport::close`]: no master may
    /// outlive the transport, and its socket goes with the private dir (removed by `TempDir`
    /// after this).
    fn drop(&mut self) {
        for socket in self.control_sockets() {
            let _ = Self::exit_command(&socket).status();
            let _ = std::fs::remove_file(&socket);
        }
    }
}

/// One thing the local transport was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    WaitReady {
        host: String,
        user: String,
        host_key: String,
    },
    Script {
        path: PathBuf,
        env: Vec<(String, String)>,
    },
    Upload {
        src: PathBuf,
        dest: String,
        mode: String,
    },
    Sha256 {
        path: String,
    },
    /// The names only: a recording must not hold a value either.
    Secrets {
        names: Vec<String>,
    },
    Reboot,
    Clean,
    /// A `--verify` check's command.
    Check {
        host: String,
        cmd: String,
    },
}

/// Test transport: records operations; uploads are copied into `sandbox` so the sha256 check
/// is real. `delay` is slept (cancellably) in every operation so interruption tests can land
/// inside the provisioning phase; `fail_script` makes the script with that file name fail.
#[derive(Clone)]
pub struct LocalTransport {
    pub sandbox: PathBuf,
    pub log: Arc<Mutex<Vec<Recorded>>>,
    pub delay: Duration,
    pub fail_script: Option<String>,
    pub cancel: Option<CancellationToken>,
    /// When each operation of `log` was recorded (tests compare builds' overlap by these).
    pub times: Arc<Mutex<Vec<std::time::Instant>>>,
    /// What `run_check` answers: the first (command substring, exit code, output) whose
    /// substring the command contains; a command matching none exits 0 with no output.
    pub answers: Arc<Mutex<Vec<(String, i32, String)>>>,
}

impl LocalTransport {
    pub fn new(sandbox: PathBuf) -> LocalTransport {
        LocalTransport {
            sandbox,
            log: Arc::default(),
            delay: Duration::ZERO,
            fail_script: None,
            cancel: None,
            times: Arc::default(),
            answers: Arc::default(),
        }
    }
    /// Answer `run_check` commands containing `cmd_part` with `code` and `output`.
    pub fn answer(&self, cmd_part: &str, code: i32, output: &str) {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((cmd_part.into(), code, output.into()));
    }
    fn rec(&self, r: Recorded) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(r);
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::time::Instant::now());
    }
    /// When the first and the last operation were recorded.
    pub fn span(&self) -> Option<(std::time::Instant, std::time::Instant)> {
        let t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        Some((*t.first()?, *t.last()?))
    }
    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn sandboxed(&self, dest: &str) -> PathBuf {
        self.sandbox.join(dest.trim_start_matches('/'))
    }
    async fn pause(&self, cancel: Option<&CancellationToken>) -> Result<(), TransportError> {
        if self.delay.is_zero() {
            return Ok(());
        }
        match cancel.or(self.cancel.as_ref()) {
            Some(c) => sleep_or_cancel(self.delay, c).await,
            None => {
                tokio::time::sleep(self.delay).await;
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn public_key(&self) -> String {
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA imgbuild-local-transport".into()
    }
    async fn wait_ready(
        &self,
        t: &Target,
        _timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError> {
        self.rec(Recorded::WaitReady {
            host: t.host.clone(),
            user: t.user.clone(),
            host_key: t.host_key.clone(),
        });
        self.pause(Some(cancel)).await
    }
    async fn run_script(
        &self,
        _t: &Target,
        script: &Path,
        env: &[(String, String)],
        _timeout: Duration,
        out: LineSink<'_>,
    ) -> Result<(), TransportError> {
        self.rec(Recorded::Script {
            path: script.to_path_buf(),
            env: env.to_vec(),
        });
        out(&format!("[local transport] would run {}", script.display()));
        self.pause(None).await?;
        let name = script
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.fail_script.as_deref() == Some(name.as_str()) {
            return Err(TransportError::Failed(format!(
                "script {} exited 1",
                script.display()
            )));
        }
        Ok(())
    }
    async fn upload(
        &self,
        _t: &Target,
        src: &Path,
        dest: &str,
        mode: &str,
        _timeout: Duration,
    ) -> Result<(), TransportError> {
        self.rec(Recorded::Upload {
            src: src.to_path_buf(),
            dest: dest.into(),
            mode: mode.into(),
        });
        let to = self.sandboxed(dest);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| TransportError::Failed(format!("{}: {e}", p.display())))?;
        }
        std::fs::copy(src, &to).map_err(|e| {
            TransportError::Failed(format!("copy {} → {}: {e}", src.display(), to.display()))
        })?;
        self.pause(None).await
    }
    /// Written into the sandbox as the guest would have them (0600), so tests can check what a
    /// step would read.
    async fn put_secrets(
        &self,
        _t: &Target,
        secrets: &Secrets,
        _timeout: Duration,
    ) -> Result<(), TransportError> {
        self.rec(Recorded::Secrets {
            names: secrets.0.keys().cloned().collect(),
        });
        let dir = self.sandboxed(GUEST_DIR);
        let fail = |e: std::io::Error| TransportError::Failed(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(fail)?;
        for (name, value) in &secrets.0 {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(name))
                .map_err(fail)?;
            f.write_all(value.bytes()).map_err(fail)?;
        }
        Ok(())
    }
    async fn remote_sha256(&self, _t: &Target, path: &str) -> Result<String, TransportError> {
        self.rec(Recorded::Sha256 { path: path.into() });
        crate::recipe::sha256_file(&self.sandboxed(path))
            .map_err(|e| TransportError::Failed(format!("sha256 {path}: {e}")))
    }
    async fn reboot(
        &self,
        _t: &Target,
        _timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), TransportError> {
        self.rec(Recorded::Reboot);
        self.pause(Some(cancel)).await
    }
    async fn clean(&self, _t: &Target) -> Result<(), TransportError> {
        self.rec(Recorded::Clean);
        Ok(())
    }
    async fn run_check(
        &self,
        t: &Target,
        cmd: &str,
        _timeout: Duration,
    ) -> Result<(i32, String), TransportError> {
        self.rec(Recorded::Check {
            host: t.host.clone(),
            cmd: cmd.into(),
        });
        self.pause(None).await?;
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        Ok(answers
            .iter()
            .find(|(part, ..)| cmd.contains(part.as_str()))
            .map(|(_, code, out)| (*code, out.clone()))
            .unwrap_or((0, String::new())))
    }
}

/// How an error names a remote command: its program only. The whole command line may carry a
/// recipe's secret (an inline `KEY=value`, a token in an argument), and error messages reach CI
/// logs.
fn describe_command(cmd: &str) -> String {
    let program = cmd
        .split_whitespace()
        .find(|w| !w.contains('='))
        .unwrap_or("")
        .chars()
        .take(40)
        .collect::<String>();
    format!("remote command `{program} …` ({} bytes)", cmd.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_timed_out_command_is_named_by_its_program_only() {
        let cmd = "TOKEN=s3cr3t bash -c 'curl -H \"Authorization: s3cr3t\"'";
        let d = super::describe_command(cmd);
        assert_eq!(d, format!("remote command `bash …` ({} bytes)", cmd.len()));
        assert!(!d.contains("s3cr3t"), "{d}");
    }

    use super::*;
    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
