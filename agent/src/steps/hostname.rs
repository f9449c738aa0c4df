//! `hostname`: cloud-init's set_hostname/update_hostname rules reduced to what a node needs
//! (docs/agent.md, step 7).

use std::fs;

use serde_yaml::Value;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};
use crate::yaml::{boolish, key_error, opt_string, ConfigError};

/// The four top-level keys that decide the host name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hostname {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub preserve_hostname: bool,
    pub prefer_fqdn_over_hostname: bool,
}

impl Hostname {
    /// Take `key` if it is one of ours: Ok(false) leaves it to the other steps.
    pub fn parse_key(&mut self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        let at_key = |msg: String| key_error(key, msg);
        match key {
            "hostname" => self.hostname = opt_string(v).map_err(at_key)?,
            "fqdn" => self.fqdn = opt_string(v).map_err(at_key)?,
            "preserve_hostname" => self.preserve_hostname = boolish(v).map_err(at_key)?,
            "prefer_fqdn_over_hostname" => {
                self.prefer_fqdn_over_hostname = boolish(v).map_err(at_key)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Write /etc/hostname from the data, else from the context's `local_hostname`. Returns the
/// name, None when `preserve_hostname` keeps the node's. [`set_running`] then applies it: the
/// caller records the name in between, so a failing `hostname` tool still reports it.
pub fn write(cx: &mut Cx, cfg: &Hostname, from_context: &str) -> Result<Option<String>> {
    if cfg.preserve_hostname {
        cx.info("preserve_hostname is set: hostname left unchanged");
        return Ok(None);
    }
    let (short, fqdn) = match (&cfg.fqdn, &cfg.hostname) {
        (Some(f), Some(h)) => (
            h.split('.').next().unwrap_or(h).to_string(),
            Some(f.clone()),
        ),
        (Some(f), None) => (
            f.split('.').next().unwrap_or(f).to_string(),
            Some(f.clone()),
        ),
        (None, Some(h)) if h.contains('.') => (
            h.split('.').next().unwrap_or(h).to_string(),
            Some(h.clone()),
        ),
        (None, Some(h)) => (h.clone(), None),
        (None, None) => (from_context.to_string(), None),
    };
    // cloud-init writes the FQDN only when asked to prefer it.
    let mut name = if cfg.prefer_fqdn_over_hostname {
        fqdn.clone().unwrap_or(short)
    } else {
        short
    };
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if clean != name {
        cx.warn(format!(
            "hostname {name:?} is not a valid host name; using {clean:?}"
        ));
        name = clean;
    }
    let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    if name.is_empty() {
        return Err(Error::Refused(
            "no usable hostname (empty after sanitising)".into(),
        ));
    }
    let path = cx.path("/etc/hostname");
    atomic_write(
        &path,
        format!("{name}\n").as_bytes(),
        0o644,
        Owner::default(),
        WriteMode::Replace,
    )
    .at(IoOp::Access, &path)?;
    Ok(Some(name))
}

/// The running system's name (only when --root is /): the kernel's hostname, written through
/// /proc/sys/kernel/hostname, which is sethostname(2), what `hostname NAME` does. Not the tool
/// itself since issue 25: a process start costs 0.3-1.5 s early in a busy boot (this step, an
/// fsync of /etc/hostname and the `hostname` process, took 691 ms in the e2e VM).
pub fn set_running(cx: &mut Cx, name: &str) -> Result<()> {
    if cx.real_root {
        fs::write("/proc/sys/kernel/hostname", name)
            .at(IoOp::SetHostname, "/proc/sys/kernel/hostname")?;
    }
    cx.info(&format!("hostname set to {name}"));
    Ok(())
}
