//! `node_ip`: kubelet's `--node-ip` from the interface on the private network (docs/agent.md,
//! step 9).

use std::fs;

use super::scripts::Cmd;
use super::write_files::{Encoding, WriteFile};
use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};
use crate::net;
use crate::report::InterfaceInfo;

/// Write the node IP for kubelet. Returns it; None when no interface is on a private network
/// (then the cloud controller's addresses from the API apply).
pub fn apply(cx: &mut Cx, interfaces: &[InterfaceInfo]) -> Result<Option<String>> {
    let Some((ip, class)) = net::node_ip(interfaces) else {
        cx.info("no interface on a private network: no --node-ip, the cloud controller sets the addresses");
        return Ok(None);
    };
    let path = cx.path("/etc/default/kubelet");
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(IoOp::Access, path, e)),
    };
    let new = set_node_ip(&old, &ip);
    atomic_write(
        &path,
        new.as_bytes(),
        0o644,
        Owner::default(),
        WriteMode::Replace,
    )
    .at(IoOp::Access, &path)?;
    cx.info(&format!(
        "kubelet --node-ip={ip} ({class} address) in /etc/default/kubelet"
    ));
    Ok(Some(ip))
}

/// Whether the data configures kubelet's node-ip itself (then ours would override it: skip).
pub fn mentioned<'a>(files: &[WriteFile], mut cmds: impl Iterator<Item = &'a Cmd>) -> bool {
    let in_files = files.iter().any(|f| {
        f.encoding == Encoding::Plain && String::from_utf8_lossy(&f.content).contains("node-ip")
    });
    let in_cmds = cmds.any(|c| match c {
        Cmd::Line(l) => l.contains("node-ip"),
        Cmd::Words(w) => w.iter().any(|x| x.contains("node-ip")),
    });
    in_files || in_cmds
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
