//! `swap`: kubelet refuses to run with swap on (docs/agent.md, step 8).

use std::fs;
use std::process::Command;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};

/// Turn active swaps off and comment the swap lines of /etc/fstab out.
pub fn apply(cx: &mut Cx) -> Result<()> {
    let swaps = cx.path("/proc/swaps");
    let active: Vec<String> = fs::read_to_string(&swaps)
        .map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !active.is_empty() {
        if cx.real_root {
            let st = Command::new("swapoff")
                .arg("-a")
                .status()
                .map_err(|e| Error::Spawn {
                    tool: "swapoff".into(),
                    source: e,
                })?;
            if !st.success() {
                return Err(Error::Failed {
                    command: "swapoff -a".into(),
                    status: st,
                    detail: format!(" (active: {})", active.join(", ")),
                });
            }
            cx.info(&format!("swapoff -a: disabled {}", active.join(", ")));
        } else {
            cx.info(&format!(
                "active swap {} (swapoff -a runs only when --root is /)",
                active.join(", ")
            ));
        }
    }
    let fstab = cx.path("/etc/fstab");
    let text = match fs::read_to_string(&fstab) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(IoOp::Access, fstab, e)),
    };
    let (new, n) = comment_swap(&text);
    if n > 0 {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = fs::metadata(&fstab).at(IoOp::Access, &fstab)?;
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
        .at(IoOp::Access, &fstab)?;
        cx.info(&format!("commented {n} swap line(s) in /etc/fstab"));
    }
    Ok(())
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
}
