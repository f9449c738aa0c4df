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
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "state.json".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // owner-only: the file holds keypairs' private keys and servers' VNC passwords
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&data)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
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
}
