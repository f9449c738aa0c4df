//! Paths under `--root`, atomic writes, owner lookup from the root's passwd/group.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};

use std::path::{Path, PathBuf};

/// Map an absolute guest path (`/etc/hostname`) under the agent's root.
pub fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Numeric owner of a file, resolved by the caller. `None` leaves that id unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Replace,
    Append,
}

/// File systems written to since the last [`sync_pending`]: one open directory per device.
static PENDING: std::sync::Mutex<Vec<(u64, File)>> = std::sync::Mutex::new(Vec::new());

/// Remember that `dir`'s file system holds writes that are not durable yet.
pub fn defer_sync(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        defer_sync_file(d);
    }
}

/// [`defer_sync`] for an open directory (or file) of that file system.
pub fn defer_sync_file(d: File) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = d.metadata().map(|m| m.dev()) else {
        return;
    };
    let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    if !p.iter().any(|(x, _)| *x == dev) {
        p.push((dev, d));
    }
}

/// Make every write since the last call durable: one `syncfs(2)` per file system written to
/// (a journal commit and one cache flush each), instead of an fsync of every file and every
/// directory as they were written (two flushes per file; ~100-200 ms each on the e2e VM's
/// loaded host). Called before the started-stamp's commands run and when the agent exits.
pub fn sync_pending() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for (_, d) in pending {
        // SAFETY: syncfs only reads the descriptor, which `d` keeps open.
        if unsafe { nix::libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Write `data` to `path` atomically: a temporary file is created in the same directory with the
/// final mode (before any content lands), filled, chowned and renamed over the target. Append
/// mode copies the current content first, so a reader never sees a half-appended file either.
/// Parent directories are created (0755, like cloud-init). On any error the temporary file is
/// removed and the target is untouched.
///
/// Durability is batched: the file's data is fsynced before the rename only when it replaces an
/// existing file (so a crash never leaves a boot-critical file such as /etc/fstab or
/// /etc/hostname empty or torn, whatever the file system); a new file and the rename itself
/// become durable at the next [`sync_pending`] (before runcmd's started-stamp counts, and at
/// exit). A crash before that leaves no stamp, so the next boot writes everything again.
pub fn atomic_write(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Owner,
    how: WriteMode,
) -> io::Result<ChownOutcome> {
    atomic_write_with(path, data, mode, owner, how, &|from, to| {
        fs::rename(from, to)
    })
}

/// [`atomic_write`] with the rename as a parameter, so that a test can make it fail like a bind
/// mount does (EBUSY) without needing one.
fn atomic_write_with(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Owner,
    how: WriteMode,
    rename: &dyn Fn(&Path, &Path) -> io::Result<()>,
) -> io::Result<ChownOutcome> {
    let dir = path.parent().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory")
    })?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.cs-agent-tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp); // a leftover from a crashed run of the same pid
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&tmp)?;
        // The umask may have narrowed the mode: set it exactly before writing content.
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        if how == WriteMode::Append {
            match File::open(path) {
                Ok(mut old) => {
                    io::copy(&mut old, &mut f)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        f.write_all(data)?;
        if fs::symlink_metadata(path).is_ok() {
            f.sync_all()?;
        }
        let chown = chown_file(&f, owner)?;
        // chown may clear setuid/setgid bits: restore the exact mode afterwards.
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        drop(f);
        match rename(&tmp, path) {
            Ok(()) => {}
            // The target is a mount point (a bind-mounted /etc/hostname or /etc/resolv.conf in a
            // container): it cannot be replaced, only rewritten. cloud-init's util.write_file
            // always writes in place; we do so only here, from the finished temporary file.
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                write_in_place(&tmp, path, mode, owner)?;
                let _ = fs::remove_file(&tmp);
            }
            Err(e) => return Err(e),
        }
        defer_sync(dir);
        Ok(chown)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copy the finished temporary file over `path` in place (same inode), then set its mode and
/// owner: the fallback when `path` cannot be renamed over.
fn write_in_place(tmp: &Path, path: &Path, mode: u32, owner: Owner) -> io::Result<()> {
    let mut src = File::open(tmp)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()?;
    chown_file(&dst, owner)?;
    dst.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(())
}

/// Open `path` for appending as the agent's private file (its log, the bootstrap commands'
/// output, which may hold the join token): created 0600 if missing (parents 0755), and never
/// redirected. The last component is opened with `O_NOFOLLOW` (a planted symlink is refused, its
/// target untouched) and `O_NONBLOCK` (a planted FIFO fails with ENXIO or is refused after
/// `fstat` instead of blocking the boot); anything but a regular file with one link is refused.
/// An existing file gets the mode 0600 and, when the agent runs as root, the owner root:root, on
/// the open descriptor (fchmod/fchown): the 0600 of `open(2)` applies to new files only.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    let refused = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => {
                refused("is a symbolic link: refused (never written through a link)".into())
            }
            Some(nix::libc::ENXIO) => {
                refused("is a FIFO without a reader: refused (not a regular file)".into())
            }
            _ => e,
        })?;
    let m = f.metadata()?;
    let t = m.file_type();
    if !t.is_file() {
        let kind = if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(refused(format!(
            "is {kind}: refused (only a regular file is written)"
        )));
    }
    if m.nlink() > 1 {
        return Err(refused(format!(
            "has {} hard links: refused (a link to another file would be written and chmodded)",
            m.nlink()
        )));
    }
    let fd = f.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    if nix::unistd::geteuid().is_root() && (m.uid() != 0 || m.gid() != 0) {
        std::os::unix::fs::fchown(&f, Some(0), Some(0))?;
    }
    if m.mode() & 0o7777 != 0o600 {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Where a write to the guest path `abs` lands when it follows symlinks as open(2) does, with
/// every absolute link target taken under `root` (`/etc/resolv.conf` →
/// `/run/systemd/resolve/stub-resolv.conf` stays inside a test root). cloud-init's
/// `util.write_file` opens the path and so writes through a link into its target; a rename
/// over the path would replace the link with a file instead.
pub fn resolve_under(root: &Path, abs: &str) -> io::Result<PathBuf> {
    use std::ffi::OsString;
    use std::path::Component;
    let push = |todo: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    let mut todo = Vec::new();
    push(&mut todo, Path::new(abs));
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let host = root.join(&next);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                }
                let target = fs::read_link(&host)?;
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                push(&mut todo, &target);
            }
            _ => cur = next,
        }
    }
    Ok(root.join(cur))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChownOutcome {
    Done,
    /// Not permitted (the agent runs unprivileged under a test root): recorded as a warning.
    NotPermitted,
}

fn chown_file(f: &File, owner: Owner) -> io::Result<ChownOutcome> {
    if owner.uid.is_none() && owner.gid.is_none() {
        return Ok(ChownOutcome::Done);
    }
    match std::os::unix::fs::fchown(f, owner.uid, owner.gid) {
        Ok(()) => Ok(ChownOutcome::Done),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(ChownOutcome::NotPermitted),
        Err(e) => Err(e),
    }
}

/// Look up a user or group name in a passwd/group style file (name:x:id:...).
fn lookup(file: &Path, name: &str) -> io::Result<Option<u32>> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == name)
        .and_then(|f| f[2].parse().ok()))
}

/// Resolve cloud-init's `owner` ("user:group", "user", numeric ids allowed) against the root's
/// /etc/passwd and /etc/group. Missing ids are an error naming the file to check.
pub fn resolve_owner(root: &Path, spec: &str) -> Result<Owner, String> {
    let spec = spec.trim();
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (spec, None),
    };
    let resolve = |name: &str, file: &str, what: &str| -> Result<Option<u32>, String> {
        if name.is_empty() || name == "-1" {
            return Ok(None);
        }
        if let Ok(n) = name.parse::<u32>() {
            return Ok(Some(n));
        }
        if name == "root" {
            return Ok(Some(0));
        }
        let path = under(root, file);
        match lookup(&path, name) {
            Ok(Some(id)) => Ok(Some(id)),
            Ok(None) => Err(format!("{what} {name:?} not found in {}", path.display())),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    Ok(Owner {
        uid: resolve(user, "/etc/passwd", "user")?,
        gid: match group {
            Some(g) => resolve(g, "/etc/group", "group")?,
            None => None,
        },
    })
}

/// (name, uid, gid, home) of the first user with this uid in the root's /etc/passwd.
pub fn user_by_uid(root: &Path, uid: u32) -> Option<(String, u32, u32, String)> {
    find_user(root, |_, u| u == uid)
}

/// (name, uid, gid, home) of the user with this name in the root's /etc/passwd.
pub fn user_by_name(root: &Path, name: &str) -> Option<(String, u32, u32, String)> {
    find_user(root, |n, _| n == name)
}

/// Whether a group of that name exists in the root's /etc/group.
pub fn group_exists(root: &Path, name: &str) -> bool {
    lookup(&under(root, "/etc/group"), name)
        .ok()
        .flatten()
        .is_some()
}

fn find_user(root: &Path, want: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32, String)> {
    let text = fs::read_to_string(under(root, "/etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let uid = f.get(2)?.parse::<u32>().ok()?;
        if f.len() >= 6 && want(f[0], uid) {
            Some((f[0].to_string(), uid, f[3].parse().ok()?, f[5].to_string()))
        } else {
            None
        }
    })
}

/// UTC timestamp (RFC 3339, seconds) without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// RFC 3339 UTC with seconds (`2023-11-14T22:13:20Z`), by `jiff`; a time outside its range
/// (years -9999..=9999) clamps to the nearest end rather than fail: it only stamps a status file.
pub fn rfc3339(secs: i64) -> String {
    let ts = jiff::Timestamp::from_second(secs).unwrap_or(if secs < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn atomic_write_modes_and_append() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/file");
        atomic_write(&p, b"one\n", 0o640, Owner::default(), WriteMode::Replace).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        atomic_write(&p, b"two\n", 0o600, Owner::default(), WriteMode::Append).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn busy_target_is_rewritten_in_place() {
        // A bind-mounted /etc/hostname: rename(2) over it fails with EBUSY.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hostname");
        fs::write(&p, "old-name-longer\n").unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        let busy = |_: &Path, _: &Path| -> io::Result<()> {
            Err(io::Error::from_raw_os_error(nix::libc::EBUSY))
        };
        atomic_write_with(
            &p,
            b"new\n",
            0o644,
            Owner::default(),
            WriteMode::Replace,
            &busy,
        )
        .unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "same inode: written in place"
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        // Any other rename error still fails, and leaves the target alone.
        let other = |_: &Path, _: &Path| -> io::Result<()> {
            Err(io::Error::from_raw_os_error(nix::libc::EXDEV))
        };
        assert!(atomic_write_with(
            &p,
            b"x\n",
            0o644,
            Owner::default(),
            WriteMode::Replace,
            &other
        )
        .is_err());
        assert_eq!(fs::read_to_string(&p).unwrap(), "new\n");
    }

    #[test]
    fn writes_follow_links_inside_the_root() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("run/systemd/resolve")).unwrap();
        // Debian with systemd-resolved: an absolute link, taken under the root.
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        assert_eq!(
            resolve_under(root, "/etc/resolv.conf").unwrap(),
            root.join("run/systemd/resolve/stub-resolv.conf")
        );
        // Relative links, a linked directory and `..` in a target.
        symlink("../run/systemd", root.join("etc/sd")).unwrap();
        symlink(
            "resolve/../resolve/stub-resolv.conf",
            root.join("run/systemd/rel"),
        )
        .unwrap();
        assert_eq!(
            resolve_under(root, "/etc/sd/rel").unwrap(),
            root.join("run/systemd/resolve/stub-resolv.conf")
        );
        // A path without links, existing or not, is itself.
        assert_eq!(
            resolve_under(root, "/etc/new/file").unwrap(),
            root.join("etc/new/file")
        );
        // `..` never climbs above the root.
        symlink("../../../../etc/x", root.join("etc/up")).unwrap();
        assert_eq!(resolve_under(root, "/etc/up").unwrap(), root.join("etc/x"));
        // A loop is an error, not a hang.
        symlink("/etc/loop", root.join("etc/loop")).unwrap();
        let e = resolve_under(root, "/etc/loop").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ELOOP));
    }

    #[test]
    fn owners_from_root_files() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\netcd:x:998:997::/:/bin/false\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "root:x:0:\netcd:x:997:\n").unwrap();
        assert_eq!(
            resolve_owner(d.path(), "etcd:etcd").unwrap(),
            Owner {
                uid: Some(998),
                gid: Some(997)
            }
        );
        assert_eq!(
            resolve_owner(d.path(), "root:root").unwrap(),
            Owner {
                uid: Some(0),
                gid: Some(0)
            }
        );
        assert_eq!(
            resolve_owner(d.path(), "1000:1000").unwrap(),
            Owner {
                uid: Some(1000),
                gid: Some(1000)
            }
        );
        let e = resolve_owner(d.path(), "nobody:etcd").unwrap_err();
        assert!(e.contains("nobody") && e.contains("passwd"), "{e}");
    }

    /// The call on its own thread: a FIFO that blocks open(2) fails the test instead of hanging it.
    fn open_soon(p: &Path) -> io::Result<File> {
        let p = p.to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open_private_append(&p));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("open_private_append blocked")
    }

    #[test]
    fn private_append_refuses_links_fifos_and_fixes_modes() {
        let d = tempfile::tempdir().unwrap();
        // A planted symlink is refused; its target is untouched.
        let target = d.path().join("shadow");
        fs::write(&target, "root:x:1:\n").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.path().join("out.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_soon(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link: refused"), "{e}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "root:x:1:\n");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
        // A dangling one creates nothing at its target either.
        let link2 = d.path().join("dangling.log");
        std::os::unix::fs::symlink(d.path().join("created"), &link2).unwrap();
        assert!(open_soon(&link2).is_err());
        assert!(!d.path().join("created").exists());

        // A FIFO without a reader: refused at once, nothing blocks.
        let fifo = d.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = open_soon(&fifo).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        // ... and with a reader (open succeeds): refused after fstat.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let e = open_soon(&fifo).unwrap_err();
        assert!(e.to_string().contains("is a FIFO: refused"), "{e}");

        // A directory in the way.
        let e = open_soon(d.path()).unwrap_err();
        assert!(!e.to_string().is_empty());

        // A hard link to another file.
        let other = d.path().join("other");
        fs::write(&other, "x").unwrap();
        let hard = d.path().join("hard.log");
        fs::hard_link(&other, &hard).unwrap();
        let e = open_soon(&hard).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");

        // An existing 0644 file becomes 0600 and is appended to; a new one is 0600.
        let old = d.path().join("old.log");
        fs::write(&old, "before\n").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = open_soon(&old).unwrap();
        f.write_all(b"after\n").unwrap();
        assert_eq!(fs::metadata(&old).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::read_to_string(&old).unwrap(), "before\nafter\n");
        let new = d.path().join("sub/new.log");
        open_soon(&new).unwrap();
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o7777, 0o600);
        // The descriptor is blocking again and close-on-exec.
        let fl = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(fl & nix::libc::O_NONBLOCK, 0);
        let fd = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(fd & nix::libc::FD_CLOEXEC, 0);
        if nix::unistd::geteuid().is_root() {
            // Owned by someone else before: root's now.
            let theirs = d.path().join("theirs.log");
            fs::write(&theirs, "").unwrap();
            std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
            open_soon(&theirs).unwrap();
            let m = fs::metadata(&theirs).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
    }
}
