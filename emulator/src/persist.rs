//! Optional state file: loaded at start, saved atomically (temp file + rename) after changes
//! (debounced) and on shutdown.

use anyhow::Context as _;
use std::path::Path;

use crate::state::Snapshot;

pub fn load(path: &Path) -> anyhow::Result<Option<Snapshot>> {
    match std::fs::read(path) {
        Ok(b) => {
            let snap: Snapshot = serde_json::from_slice(&b).with_context(|| {
                format!(
                    "state file {} is not valid emulator state JSON; move it away or fix it",
                    path.display()
                )
            })?;
            Ok(Some(snap))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

pub fn save(path: &Path, snap: &Snapshot) -> anyhow::Result<()> {
    let data = serde_json::to_vec_pretty(snap).context("cannot encode emulator state")?;
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    // owner-only: the file holds keypairs' private keys and servers' VNC passwords
    write_atomic(path, &data, 0o600)
        .with_context(|| format!("cannot write the state file {}", path.display()))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `data` to `path` with permissions `mode` through a temporary file in the same
/// directory and a rename: a reader never sees half a file. The temporary file has a random
/// name and is created exclusively (`O_EXCL`, tempfile's `NamedTempFile`), owner-only until
/// `mode` is set: a file or symlink planted in the directory beforehand (a predictable name
/// could be) is never written through [issue 21 item 9]. A symlink at `path` itself is
/// replaced, not followed (rename).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(".cloudsim-")
        .suffix(".tmp")
        .tempfile_in(parent_dir(path))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all().ok();
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.json");
        save(&f, &Snapshot::default()).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        assert!(load(&f).unwrap().is_some());
    }

    /// [issue 21 item 9] a symlink planted where the temporary file used to be made (a name
    /// anyone could predict: the pid) is not followed: its target keeps its content.
    #[test]
    fn a_planted_symlink_is_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let f = d.path().join("s.json");
        let planted = d.path().join(format!(".s.json.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        save(&f, &Snapshot::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(load(&f).unwrap().is_some());
        // a symlink at the state file's own path is replaced, not written through
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&victim, &f).unwrap();
        save(&f, &Snapshot::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&f).unwrap().is_symlink());
    }
}
