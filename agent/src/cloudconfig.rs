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
    let doc: Value = crate::yaml::from_str_bounded(text)?;
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
    use std::time::{Duration, Instant};

    /// Debug on the parsed data shows no token, hash or content (issue 21 item 9).
    #[test]
    fn debug_never_shows_secrets() {
        let cfg = parse(concat!(
            "write_files:\n- path: /run/kubeadm/join.yaml\n  content: 'token: abcdef.0123456789abcdef'\n",
            "runcmd:\n- kubeadm join --token abcdef.0123456789abcdef\n- [kubeadm, join, --token, abcdef.0123456789abcdef]\n",
            "bootcmd: ['echo abcdef.0123456789abcdef']\n",
            "users:\n- {name: capi, passwd: '$6$salt$hash', hashed_passwd: '$6$other$hash', plain_text_passwd: hunter2}\n",
        ))
        .unwrap();
        let dbg = format!("{cfg:?} {cfg:#?}");
        for secret in ["abcdef.0123456789abcdef", "$6$salt", "$6$other", "hunter2"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
        assert!(
            dbg.contains("/run/kubeadm/join.yaml"),
            "the path stays: {dbg}"
        );
        assert!(
            dbg.contains("Line(<44 bytes>)") && dbg.contains("Words(<4 words>)"),
            "{dbg}"
        );
        let w = format!("{:?}", cfg.warnings);
        assert!(!w.contains("$6$other") && !w.contains("hunter2"), "{w}");
        let kind = crate::userdata::Kind::CloudConfig("token: abcdef.0123456789abcdef".into());
        assert_eq!(format!("{kind:?}"), "cloud-config(<30 bytes>)");
    }

    /// The call on its own thread, failing after `secs` instead of exhausting the machine.
    fn parse_soon(doc: String, secs: u64) -> Result<CloudConfig, ConfigError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(parse(&doc));
        });
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("parsing did not stop in time")
    }

    /// YAML alias expansion is bounded: a billion laughs, nested or wide, fails quickly.
    #[test]
    fn alias_bombs_fail_quickly() {
        // Nested: 9 levels of 10 references, 10^9 strings.
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        doc.push_str("runcmd: *a9\n");
        let t = Instant::now();
        let e = parse_soon(doc, 20).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(
            matches!(e, ConfigError::TooLarge) || e.to_string().contains("repetition limit"),
            "{e}"
        );
        // Wide: one anchor of 20,000 strings referenced 20,000 times (4*10^8 strings): within
        // serde_yaml's own alias bound, so only the expansion budget stops it.
        let items = vec!["x"; 20_000].join(", ");
        let refs = vec!["*w"; 20_000].join(", ");
        let doc = format!("w: &w [{items}]\nbootcmd: [{refs}]\n");
        let t = Instant::now();
        let e = parse_soon(doc, 30).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        assert!(matches!(e, ConfigError::TooLarge), "{e}");
        assert!(
            e.to_string()
                .starts_with("cloud-config expands to more than 1000000 values"),
            "{e}"
        );
        // A few aliases, as people write them, still work.
        let cfg = parse("x: &k [echo a]\nruncmd: *k\nbootcmd: *k\n").unwrap();
        assert_eq!(cfg.runcmd.len(), 1);
    }

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
