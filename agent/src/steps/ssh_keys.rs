//! `ssh_keys`: cloud-init's ssh module reduced to keys (docs/agent.md, step 7b).

use std::fs;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{self, atomic_write, ChownOutcome, Owner, WriteMode};

/// cloud-init's ssh module, reduced to keys: meta.ssh_public_key (one key per line) and the
/// data's top-level ssh_authorized_keys are added (never removed) to root's and the image's
/// login user's (uid 1000, if any) authorized_keys. The images are built without keys.
pub fn apply(cx: &mut Cx, meta_key: Option<&str>, data_keys: &[String]) -> Result<()> {
    let mut keys: Vec<String> = meta_key
        .map(|k| {
            k.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    keys.extend(
        data_keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty()),
    );
    if keys.is_empty() {
        cx.info("no SSH public keys in the context or the data");
        return Ok(());
    }
    let mut targets = vec![("root".to_string(), 0u32, 0u32, "/root".to_string())];
    if let Some(u) = fsutil::user_by_uid(cx.root, 1000) {
        targets.push(u);
    }
    for (name, uid, gid, home) in targets {
        add(cx, &name, uid, gid, &home, &keys)?;
    }
    Ok(())
}

/// Add the keys missing from a user's authorized_keys (atomic, 0600, owned by the user).
pub fn add(cx: &mut Cx, name: &str, uid: u32, gid: u32, home: &str, keys: &[String]) -> Result<()> {
    let ssh_dir = cx.path(&format!("{}/.ssh", home.trim_end_matches('/')));
    let path = ssh_dir.join("authorized_keys");
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(IoOp::Access, path, e)),
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
            .at(IoOp::Access, &ssh_dir)?;
        if let Err(e) = std::os::unix::fs::chown(&ssh_dir, Some(uid), Some(gid)) {
            if cx.real_root {
                return Err(Error::Refused(format!("chown {}: {e}", ssh_dir.display())));
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
        .at(IoOp::Access, &path)?;
    if outcome == ChownOutcome::NotPermitted && cx.real_root {
        return Err(Error::Refused(format!(
            "cannot chown {} to {name}",
            path.display()
        )));
    }
    cx.info(&format!(
        "added {} SSH key(s) for {name} ({home}/.ssh/authorized_keys)",
        missing.len()
    ));
    Ok(())
}
