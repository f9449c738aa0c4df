//! `#cloud-config` parsing: each top-level key goes to the step that owns it (`steps/`);
//! everything else is listed by name as unsupported (never silently ignored).

use serde_yaml::Value;

use crate::steps::{
    disk_setup, fs_setup, hostname, mounts, ntp, packages, scripts, ssh_keys, users, write_files,
};
use crate::yaml::{scalar_string, string_list, type_name};

pub use crate::steps::scripts::{parse_cmds, shellify, Cmd};
pub use crate::steps::users::{Secret, User};
pub use crate::steps::write_files::{decode_perms, Encoding, WriteFile};
pub use crate::yaml::ConfigError;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudConfig {
    pub bootcmd: Vec<Cmd>,
    pub write_files: Vec<WriteFile>,
    pub runcmd: Vec<Cmd>,
    /// `hostname`, `fqdn`, `preserve_hostname`, `prefer_fqdn_over_hostname`.
    pub host: hostname::Hostname,
    /// Top-level `ssh_authorized_keys`: installed like meta.ssh_public_key.
    pub ssh_authorized_keys: Vec<String>,
    /// `disable_root`, `disable_root_opts` (cloud-init's ssh module).
    pub root_login: ssh_keys::RootLogin,
    /// `packages`, `package_update`, `package_upgrade` (and the `apt_` spellings).
    pub packages: packages::Packages,
    /// `users`: the subset the Cluster API kubeadm provider emits (see [`User`]).
    pub users: Vec<User>,
    /// `ntp` (None when absent or null, as cloud-init).
    pub ntp: Option<ntp::Ntp>,
    /// `disk_setup`, in document order.
    pub disk_setup: Vec<disk_setup::Disk>,
    /// `fs_setup`, in document order.
    pub fs_setup: Vec<fs_setup::Filesystem>,
    /// `mounts` with `mount_default_fields` applied; None when the key is absent (an empty list
    /// still removes the entries a previous run added).
    pub mounts: Option<Vec<mounts::Mount>>,
    /// Top-level keys present in the data that the agent does not implement, in document order.
    pub unsupported: Vec<String>,
    /// Non-fatal remarks (unknown sub-fields...), never containing content.
    pub warnings: Vec<String>,
}

pub fn parse(text: &str) -> Result<CloudConfig, ConfigError> {
    // serde_yaml's messages carry positions (line/column), not document content.
    let doc: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => return Ok(CloudConfig::default()),
        other => return Err(ConfigError::NotMapping(type_name(&other))),
    };
    let mut cfg = CloudConfig::default();
    // mounts needs mount_default_fields, which may come after it in the document.
    let mut mount_entries = None;
    let mut mount_defaults = None;
    for (k, v) in map {
        let key = match &k {
            Value::String(s) => s.clone(),
            other => scalar_string(other).unwrap_or_else(|| format!("<{}>", type_name(other))),
        };
        if cfg.host.parse_key(&key, &v)?
            || cfg.root_login.parse_key(&key, &v)?
            || cfg.packages.parse_key(&key, &v)?
        {
            continue;
        }
        let w = &mut cfg.warnings;
        match key.as_str() {
            "bootcmd" => cfg.bootcmd = scripts::parse_cmds(&key, &v)?,
            "runcmd" => cfg.runcmd = scripts::parse_cmds(&key, &v)?,
            "write_files" => cfg.write_files = write_files::parse(&v, w)?,
            "ssh_authorized_keys" => {
                cfg.ssh_authorized_keys =
                    string_list(&v).map_err(|msg| crate::yaml::key_error(&key, msg))?
            }
            "users" => cfg.users = users::parse(&v, w)?,
            "ntp" => cfg.ntp = ntp::parse(&v, w)?,
            "disk_setup" => cfg.disk_setup = disk_setup::parse(&v)?,
            "fs_setup" => cfg.fs_setup = fs_setup::parse(&v, w)?,
            "mounts" => mount_entries = Some(v),
            "mount_default_fields" => mount_defaults = Some(v),
            _ => cfg.unsupported.push(key),
        }
    }
    if let Some(m) = mount_entries.filter(|m| !m.is_null()) {
        cfg.mounts = Some(mounts::parse(
            &m,
            mount_defaults.as_ref(),
            &mut cfg.warnings,
        )?);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        assert!(
            matches!(parse("runcmd: [{a: 1}]"), Err(ConfigError::Key { key, .. }) if key == "runcmd[0]")
        );
        assert!(
            matches!(parse("write_files: [{content: x}]"), Err(ConfigError::Key { key, .. }) if key == "write_files[0]")
        );
        assert!(matches!(parse("a: [unclosed"), Err(ConfigError::Yaml(_))));
        assert!(matches!(parse("- a"), Err(ConfigError::NotMapping(_))));
        assert!(matches!(
            parse("runcmd: echo hi"),
            Err(ConfigError::Key { .. })
        ));
    }
}
