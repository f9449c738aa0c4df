//! `packages`, `package_update`, `package_upgrade`: cloud-init's
//! cloudinit/config/cc_package_update_upgrade_install.py with the Debian distro's apt-get
//! command (cloudinit/distros/debian.py `package_command`, `install_packages`). RKE2's
//! `additionalUserData` passes these keys through to the node.

use serde_yaml::Value;

use super::Cx;
use crate::error::Result;
use crate::sys;
use crate::yaml::{boolish, key_error, scalar_string, type_name, ConfigError};

/// cloud-init's `APT_GET_COMMAND`, plus a lock timeout: cloud-init polls the dpkg/apt locks for
/// up to 30 s (`APT_LOCK_WAIT_TIMEOUT`) before each command, apt-get ≥ 1.9.11 waits itself.
const APT_GET: &[&str] = &[
    "--option=Dpkg::Options::=--force-confold",
    "--option=Dpkg::options::=--force-unsafe-io",
    "--option=DPkg::Lock::Timeout=30",
    "--assume-yes",
    "--quiet",
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packages {
    /// `package_update` or `apt_update`.
    pub update: bool,
    /// `package_upgrade` or `apt_upgrade`.
    pub upgrade: bool,
    /// `packages`, each `name` or `name=version` (cloud-init's `expand_package_list`).
    pub install: Vec<String>,
}

impl Packages {
    pub fn is_empty(&self) -> bool {
        !self.update && !self.upgrade && self.install.is_empty()
    }

    /// Take `key` if it is one of ours: Ok(false) leaves it to the other steps.
    pub fn parse_key(&mut self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        let flag = |v: &Value| boolish(v).map_err(|m| key_error(key, m));
        match key {
            // cloud-init ORs the old and the new spelling.
            "package_update" | "apt_update" => self.update |= flag(v)?,
            "package_upgrade" | "apt_upgrade" => self.upgrade |= flag(v)?,
            "packages" => self.install = parse_list(v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `packages`: a list of names, or of `[name, version]` pairs (a one-item list is a name);
/// a bare string is one package, as cloud-init's get_cfg_option_list makes it.
fn parse_list(v: &Value) -> Result<Vec<String>, ConfigError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(s) => s.clone(),
        s @ Value::String(_) => vec![s.clone()],
        other => {
            return Err(key_error(
                "packages",
                format!("expected a list, got {}", type_name(other)),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("packages[{i}]");
        let word = |w: &Value| {
            scalar_string(w)
                .filter(|s| valid_word(s))
                .ok_or_else(|| key_error(&key, "a package name or version must be a non-empty word without spaces or leading '-'"))
        };
        match item {
            Value::Sequence(pair) => match pair.as_slice() {
                [name] => out.push(word(name)?),
                [name, version] => out.push(format!("{}={}", word(name)?, word(version)?)),
                _ => {
                    return Err(key_error(
                        &key,
                        "expected [name] or [name, version] (cloud-init: invalid package list)",
                    ))
                }
            },
            other => out.push(word(other)?),
        }
    }
    Ok(out)
}

/// A word apt-get takes as a package, never as an option.
fn valid_word(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('-') && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The apt-get runs, in cloud-init's order: `update` once (when updating, upgrading or
/// installing: Debian's install_packages updates the sources first), `dist-upgrade` (cloud-init's
/// `apt_get_upgrade_subcommand` default), `install`.
pub fn commands(p: &Packages) -> Vec<Vec<String>> {
    let apt = |sub: &str, extra: &[String]| -> Vec<String> {
        APT_GET
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(sub.to_string()))
            .chain(extra.iter().cloned())
            .collect()
    };
    let mut cmds = Vec::new();
    if p.update || p.upgrade || !p.install.is_empty() {
        cmds.push(apt("update", &[]));
    }
    if p.upgrade {
        cmds.push(apt("dist-upgrade", &[]));
    }
    if !p.install.is_empty() {
        cmds.push(apt("install", &p.install));
    }
    cmds
}

/// Run the apt-get commands with `DEBIAN_FRONTEND=noninteractive`. Like cloud-init, a failed
/// command does not stop the next; the step fails with the last error at the end.
pub fn apply(cx: &mut Cx, p: &Packages) -> Result<()> {
    let mut last_err = None;
    for args in commands(p) {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let sub = argv[APT_GET.len()];
        match sys::check_env("apt-get", &argv, &[("DEBIAN_FRONTEND", "noninteractive")]) {
            Ok(_) => cx.info(&format!(
                "apt-get {sub}{} done",
                if sub == "install" {
                    format!(" ({} package(s))", p.install.len())
                } else {
                    String::new()
                }
            )),
            Err(e) => {
                cx.warn(format!("package step: {e}"));
                last_err = Some(e);
            }
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudconfig::parse;

    #[test]
    fn keys_and_commands_like_cloud_init() {
        let cfg = parse(
            "package_update: true\npackage_upgrade: yes\npackages:\n  - jq\n  - [nfs-common]\n  - [open-iscsi, '2.1.8-1']\n",
        )
        .unwrap();
        assert!(cfg.unsupported.is_empty(), "{:?}", cfg.unsupported);
        assert_eq!(
            cfg.packages.install,
            vec!["jq", "nfs-common", "open-iscsi=2.1.8-1"]
        );
        let subs: Vec<String> = commands(&cfg.packages)
            .iter()
            .map(|c| c[APT_GET.len()..].join(" "))
            .collect();
        assert_eq!(
            subs,
            vec![
                "update",
                "dist-upgrade",
                "install jq nfs-common open-iscsi=2.1.8-1"
            ]
        );
        // Installing alone still updates the sources first (Debian's install_packages).
        let cfg = parse("packages: curl\n").unwrap();
        assert_eq!(commands(&cfg.packages).len(), 2);
        // The old spellings, and nothing to do.
        assert!(parse("apt_update: true\n").unwrap().packages.update);
        assert!(parse("package_update: false\npackages: []\n")
            .unwrap()
            .packages
            .is_empty());
    }

    #[test]
    fn bad_package_entries_name_the_item() {
        for (doc, key) in [
            ("packages: [jq, '--allow-unauthenticated']", "packages[1]"),
            ("packages: [[a, b, c]]", "packages[0]"),
            ("packages: [{a: 1}]", "packages[0]"),
            ("packages: ['two words']", "packages[0]"),
        ] {
            match parse(doc) {
                Err(ConfigError::Key { key: k, .. }) => assert_eq!(k, key, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("package_upgrade: maybe"),
            Err(ConfigError::Key { key, .. }) if key == "package_upgrade"
        ));
    }
}
