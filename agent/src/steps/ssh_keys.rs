//! `ssh_keys`: cloud-init's ssh module reduced to keys (docs/agent.md, step 7b), with its
//! `disable_root` rule (cloudinit/config/cc_ssh.py `apply_credentials`, the options text of
//! cloudinit/ssh_util.py `DISABLE_USER_OPTS`).
//!
//! Files in a user's home are opened without following symlinks: the agent runs as root and the
//! user owns `~/.ssh`, so a link there (`~/.ssh -> /etc`, `authorized_keys -> /etc/shadow`)
//! must never make root read or replace another file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde_yaml::Value;

use super::Cx;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::yaml::{boolish, key_error, opt_string, ConfigError};

/// cloud-init's `DISABLE_USER_OPTS`: root's copy of each key only tells who to log in as.
pub const DISABLE_ROOT_OPTS: &str = "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"$USER\\\" rather than the user \\\"$DISABLE_USER\\\".';echo;sleep 10;exit 142\"";

/// `disable_root` (default true, as cloud-init) and `disable_root_opts`.
#[derive(Debug, Clone, PartialEq)]
pub struct RootLogin {
    pub disable_root: bool,
    pub disable_root_opts: String,
}

impl Default for RootLogin {
    fn default() -> Self {
        RootLogin {
            disable_root: true,
            disable_root_opts: DISABLE_ROOT_OPTS.into(),
        }
    }
}

impl RootLogin {
    /// Take `key` if it is one of ours: Ok(false) leaves it to the other steps.
    pub fn parse_key(&mut self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        match key {
            "disable_root" => {
                // cloud-init: get_cfg_option_bool(cfg, "disable_root", True).
                self.disable_root = match v {
                    Value::Null => true,
                    v => boolish(v).map_err(|m| key_error(key, m))?,
                }
            }
            "disable_root_opts" => {
                if let Some(o) = opt_string(v).map_err(|m| key_error(key, m))? {
                    self.disable_root_opts = o;
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The options prefix of root's key lines, `None` when root logs in with the real key.
    /// `default_user` is `None` when the image has none (cloud-init then says "NONE").
    pub fn root_prefix(&self, default_user: Option<&str>) -> Option<String> {
        self.disable_root.then(|| {
            self.disable_root_opts
                .replace("$USER", default_user.unwrap_or("NONE"))
                .replace("$DISABLE_USER", "root")
        })
    }
}

/// One key per line of `meta.ssh_public_key`, comments and blank lines dropped.
pub fn split_keys(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
}

/// The server's keys, in this order: `meta.ssh_public_key` (one key per line), then the
/// keypairs attached to the server (`pubkeys`). cloud-init's CloudSigma datasource reads only
/// the first; a keypair is the API's way to attach a key, so it is installed the same way.
/// A `pubkeys` entry that carries no key text (only the keypair's `uuid`, as the API's server
/// definition does) cannot be resolved from inside the guest (no API credentials): a warning
/// names it by uuid.
pub fn context_keys(
    ctx: &cloudsigma_api::ServerContext,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut keys: Vec<String> = ctx
        .meta
        .get("ssh_public_key")
        .map(|k| split_keys(k).collect())
        .unwrap_or_default();
    let Some(list) = ctx.extra.get("pubkeys") else {
        return keys;
    };
    let Some(list) = list.as_array() else {
        warnings.push("context pubkeys is not a list; ignored".into());
        return keys;
    };
    for (i, k) in list.iter().enumerate() {
        match k.get("public_key").and_then(|p| p.as_str()) {
            Some(text) => keys.extend(split_keys(text)),
            None => {
                let id = k
                    .get("uuid")
                    .and_then(|u| u.as_str())
                    .or_else(|| k.as_str())
                    .unwrap_or("?");
                warnings.push(format!(
                    "pubkeys[{i}] (keypair {id}) has no public_key in the context; not installed"
                ));
            }
        }
    }
    keys
}

/// The server's keys (meta.ssh_public_key, the keypairs attached to the server, the data's
/// top-level ssh_authorized_keys) are added, never removed: the default user (the image's
/// login user, uid 1000) gets them as they are, root gets them behind the `disable_root`
/// prefix unless the data says `disable_root: false`.
pub fn apply(cx: &mut Cx, keys: &[String], root: &RootLogin) -> Result<()> {
    if keys.is_empty() {
        cx.info("no SSH public keys in the context or the data");
        return Ok(());
    }
    let default_user = fsutil::user_by_uid(cx.root, 1000);
    if let Some((name, uid, gid, home)) = &default_user {
        add(cx, name, *uid, *gid, home, keys, None)?;
    }
    let prefix = root.root_prefix(default_user.as_ref().map(|u| u.0.as_str()));
    add(cx, "root", 0, 0, "/root", keys, prefix.as_deref())
}

/// The base64 body of a key line (`[options] type base64 [comment]`): what identifies a key.
fn key_body(line: &str) -> Option<&str> {
    // The options may contain quoted spaces; the body is the word after the first word that
    // names a key type (cloud-init's AuthKeyLineParser does the same search).
    let words: Vec<&str> = line.split_whitespace().collect();
    let t = words
        .iter()
        .position(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-"))?;
    words.get(t + 1).copied()
}

/// The new authorized_keys text: each key added unless present; with `prefix`, a key already
/// there is rewritten with the prefix (cloud-init's update_authorized_keys replaces a line of
/// the same key with the new options). None when nothing changes.
pub fn merge(old: &str, keys: &[String], prefix: Option<&str>) -> Option<String> {
    let want = |k: &str| match prefix {
        Some(p) => format!("{p} {k}"),
        None => k.to_string(),
    };
    let mut lines: Vec<String> = old.lines().map(str::to_string).collect();
    let mut changed = false;
    for k in keys {
        let line = want(k);
        let body = key_body(k);
        let same = |l: &str| l.trim() == k || (body.is_some() && key_body(l) == body);
        match lines.iter().position(|l| same(l)) {
            Some(i) if prefix.is_some() && lines[i].trim() != line => {
                lines[i] = line;
                changed = true;
            }
            Some(_) => {}
            None => {
                lines.push(line);
                changed = true;
            }
        }
    }
    changed.then(|| {
        let mut s = lines.join("\n");
        s.push('\n');
        s
    })
}

/// Add `keys` to a user's `~/.ssh/authorized_keys` (0600, owned by the user, `~/.ssh` 0700),
/// without following a symlink at `~/.ssh` or at the file. A link there is a warning and the
/// user's file is left alone: the node still bootstraps.
pub fn add(
    cx: &mut Cx,
    name: &str,
    uid: u32,
    gid: u32,
    home: &str,
    keys: &[String],
    prefix: Option<&str>,
) -> Result<()> {
    let shown = format!("{}/.ssh/authorized_keys", home.trim_end_matches('/'));
    match add_nofollow(cx, uid, gid, home, keys, prefix) {
        Ok(0) => Ok(()),
        Ok(n) => {
            cx.info(&format!(
                "added or updated {n} SSH key(s) for {name} ({shown}{})",
                if prefix.is_some() {
                    ", disable_root"
                } else {
                    ""
                }
            ));
            Ok(())
        }
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            cx.warn(format!(
                "{shown} of {name}: a symlink (or not a directory) in the way; not followed as root, keys not installed for {name}"
            ));
            Ok(())
        }
        Err(e) => Err(Error::io(
            crate::error::IoOp::Update,
            cx.path(&shown),
            io::Error::from(e),
        )),
    }
}

fn add_nofollow(
    cx: &mut Cx,
    uid: u32,
    gid: u32,
    home: &str,
    keys: &[String],
    prefix: Option<&str>,
) -> std::result::Result<usize, Errno> {
    let dir_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    // The home itself sits in a root-owned directory (/home, /root): opened normally, and
    // created when missing (an image without the user's home, a test root).
    let home_path = cx.path(home);
    if !home_path.exists() {
        std::fs::create_dir_all(&home_path).map_err(io_errno)?;
    }
    let home_fd = owned(nix::fcntl::open(
        &home_path,
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )?);
    let at = |d: &OwnedFd| Some(d.as_raw_fd());
    let ssh = match openat(at(&home_fd), ".ssh", dir_flags, Mode::empty()) {
        Ok(fd) => owned(fd),
        Err(Errno::ENOENT) => {
            mkdirat(at(&home_fd), ".ssh", Mode::from_bits_truncate(0o700))?;
            let fd = owned(openat(at(&home_fd), ".ssh", dir_flags, Mode::empty())?);
            fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o700))?;
            chown(cx, &fd, uid, gid)?;
            fd
        }
        Err(e) => return Err(e),
    };
    let file_flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let old = match openat(at(&ssh), "authorized_keys", file_flags, Mode::empty()) {
        Ok(fd) => {
            let mut f = File::from(owned(fd));
            // A FIFO or device must not block or feed the agent either.
            if !f.metadata().map_err(io_errno)?.is_file() {
                return Err(Errno::ELOOP);
            }
            let mut s = String::new();
            f.read_to_string(&mut s).map_err(io_errno)?;
            s
        }
        Err(Errno::ENOENT) => String::new(),
        Err(e) => return Err(e),
    };
    let Some(new) = merge(&old, keys, prefix) else {
        return Ok(0);
    };
    let changed = keys.len();
    // Atomic replace inside the opened directory: a temporary file created exclusively (never
    // through a link), 0600 and chowned before the rename.
    let tmp = format!(".authorized_keys.cs-agent-tmp.{}", std::process::id());
    let unlink_tmp = || unlinkat(at(&ssh), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let _ = unlink_tmp();
    let fd = openat(
        at(&ssh),
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let mut f = File::from(owned(fd));
    let result = (|| {
        fchmod(f.as_raw_fd(), Mode::from_bits_truncate(0o600))?;
        f.write_all(new.as_bytes()).map_err(io_errno)?;
        if !old.is_empty() {
            // Replacing keys: never a torn file after a crash (see fsutil::atomic_write).
            f.sync_all().map_err(io_errno)?;
        }
        chown(cx, &f, uid, gid)?;
        renameat(at(&ssh), tmp.as_str(), at(&ssh), "authorized_keys")?;
        // Durable at the next fsutil::sync_pending (before runcmd, at exit).
        if let Ok(d) = ssh.try_clone() {
            fsutil::defer_sync_file(File::from(d));
        }
        Ok(changed)
    })();
    if result.is_err() {
        let _ = unlink_tmp();
    }
    result
}

/// Own a descriptor nix just returned from open(2)/openat(2).
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and has no other owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn chown(cx: &Cx, fd: &impl AsFd, uid: u32, gid: u32) -> std::result::Result<(), Errno> {
    match std::os::unix::fs::fchown(fd, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        // An unprivileged test root: the owner cannot be set; on a node that is an error.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !cx.real_root => Ok(()),
        Err(e) => Err(io_errno(e)),
    }
}

fn io_errno(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}
