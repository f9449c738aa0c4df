//! `users`: the subset of cloud-init's users module the Cluster API kubeadm provider emits
//! (docs/agent.md, step 7a).

use serde_yaml::Value;

use super::{ssh_keys, Cx};
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{self, atomic_write, Owner, WriteMode};
use crate::sys;
use crate::yaml::{boolish, opt_string, scalar_string, string_list, type_name, ConfigError};

/// A value that must never reach a log: Debug prints a placeholder.
#[derive(Clone, PartialEq, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One `users` entry: every field the Cluster API kubeadm provider emits (name, gecos, groups,
/// homedir, inactive, lock_passwd, passwd, primary_group, shell, ssh_authorized_keys, sudo).
/// Other fields are listed as warnings (not applied).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct User {
    pub name: String,
    pub gecos: Option<String>,
    pub shell: Option<String>,
    pub groups: Vec<String>,
    pub homedir: Option<String>,
    pub primary_group: Option<String>,
    pub lock_passwd: bool,
    pub sudo: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash, set when the user is created (cloud-init's `useradd --password`).
    pub passwd: Option<Secret>,
    /// Days after password expiry until the account is disabled (`useradd --inactive`).
    pub inactive: Option<String>,
}

const USER_FIELDS: &[&str] = &[
    "passwd",
    "inactive",
    "name",
    "gecos",
    "shell",
    "groups",
    "homedir",
    "primary_group",
    "lock_passwd",
    "sudo",
    "ssh_authorized_keys",
];

/// A user entry's keys as cloud-init reads them (cloudinit/distros/ug_util.py, `_normalize_users`:
/// `k.replace("-", "_").strip()`, empty keys dropped): `ssh-authorized-keys` is
/// `ssh_authorized_keys`, `lock-passwd` is `lock_passwd`. Where both spellings are given, the one
/// written later wins, as in cloud-init's dict.
fn normalize_keys(m: &serde_yaml::Mapping) -> serde_yaml::Mapping {
    let mut out = serde_yaml::Mapping::new();
    for (k, v) in m {
        match k.as_str() {
            Some(name) => {
                let name = name.replace('-', "_");
                let name = name.trim();
                if !name.is_empty() {
                    out.insert(Value::String(name.to_string()), v.clone());
                }
            }
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

pub fn parse(v: &Value, warnings: &mut Vec<String>) -> Result<Vec<User>, ConfigError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(s) => s.clone(),
        // cloud-init also accepts a single string/mapping.
        other => vec![other.clone()],
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("users[{i}]");
        let err = |msg: String| ConfigError::Key {
            key: key.clone(),
            msg,
        };
        let m = match item {
            Value::String(s) if s == "default" => {
                warnings.push(format!(
                    "{key}: 'default' user: images define their own login user; nothing to do"
                ));
                continue;
            }
            Value::String(s) => {
                out.push(User {
                    name: s.clone(),
                    lock_passwd: true,
                    ..Default::default()
                });
                continue;
            }
            Value::Mapping(m) => normalize_keys(m),
            other => {
                return Err(err(format!(
                    "expected a mapping or a name, got {}",
                    type_name(other)
                )))
            }
        };
        let get = |n: &str| m.get(Value::String(n.into()));
        let name = get("name")
            .and_then(scalar_string)
            .filter(|n| !n.trim().is_empty());
        let Some(name) = name else {
            return Err(err("missing 'name'".into()));
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('-')
        {
            return Err(err(format!("invalid user name {name:?}")));
        }
        let opt = |n: &str| -> Result<Option<String>, ConfigError> {
            get(n)
                .map(opt_string)
                .transpose()
                .map(Option::flatten)
                .map_err(|m| err(format!("{n}: {m}")))
        };
        // groups: list or comma-separated string.
        let groups = match get("groups") {
            Some(Value::String(s)) => s
                .split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect(),
            Some(v) => string_list(v).map_err(|m| err(format!("groups: {m}")))?,
            None => Vec::new(),
        };
        let sudo = match get("sudo") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Vec::new(),
            Some(v) => string_list(v).map_err(|m| err(format!("sudo: {m}")))?,
        };
        let lock_passwd = match get("lock_passwd") {
            Some(v) => boolish(v).map_err(|m| err(format!("lock_passwd: {m}")))?,
            None => true,
        };
        let keys = match get("ssh_authorized_keys") {
            Some(v) => string_list(v).map_err(|m| err(format!("ssh_authorized_keys: {m}")))?,
            None => Vec::new(),
        };
        for (k, _) in m.iter() {
            let k = scalar_string(k).unwrap_or_default();
            if !USER_FIELDS.contains(&k.as_str()) {
                warnings.push(format!(
                    "{key} ({name}): field '{k}' is not implemented: NOT applied"
                ));
            }
        }
        let passwd = match get("passwd") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) if p.is_empty() => None,
            // The value is a secret: errors describe it, never show it.
            Some(Value::String(p)) if p.contains([':', '\n', '\r']) => {
                return Err(err(
                    "passwd: not a crypt hash (contains ':' or a line break)".into(),
                ))
            }
            Some(Value::String(p)) => Some(Secret(p.clone())),
            Some(other) => {
                return Err(err(format!(
                    "passwd: expected a string, got {}",
                    type_name(other)
                )))
            }
        };
        // cloud-init passes only a string to useradd; the kubeadm provider writes
        // `inactive: true`, which cloud-init therefore ignores: so do we, with a warning.
        let inactive = match get("inactive") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => {
                warnings.push(format!(
                    "{key} ({name}): inactive: {b} is not a number of days; ignored, as cloud-init does"
                ));
                None
            }
            Some(v) => match scalar_string(v) {
                Some(d) if !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()) => Some(d),
                Some(d) if d == "-1" => Some(d),
                _ => return Err(err("inactive: expected a number of days".into())),
            },
        };
        for g in groups.iter().chain(opt("primary_group")?.iter()) {
            if !g
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(err(format!("invalid group name {g:?}")));
            }
        }
        out.push(User {
            name,
            gecos: opt("gecos")?,
            shell: opt("shell")?,
            groups,
            homedir: opt("homedir")?,
            primary_group: opt("primary_group")?,
            lock_passwd,
            sudo,
            ssh_authorized_keys: keys,
            passwd,
            inactive,
        });
    }
    Ok(out)
}

/// The `users` subset the kubeadm provider emits. Accounts are created with useradd/groupadd
/// only when --root is /; under a test root only existing users get keys and sudo rules.
pub fn apply(cx: &mut Cx, users: &[User]) -> Result<()> {
    let mut sudoers = String::new();
    for u in users {
        let exists = fsutil::user_by_name(cx.root, &u.name).is_some();
        let mut groups: Vec<&String> = u.groups.iter().collect();
        groups.extend(u.primary_group.iter());
        for g in groups {
            if !fsutil::group_exists(cx.root, g) {
                if cx.real_root {
                    sys::status("groupadd", &[g.as_str()])?;
                } else {
                    cx.warn(format!("group {g} missing under the test root; groupadd runs only when --root is /"));
                }
            }
        }
        if !exists {
            if !cx.real_root {
                cx.warn(format!(
                    "user {} does not exist under the test root; useradd runs only when --root is /",
                    u.name
                ));
                continue;
            }
            let args = useradd_args(u);
            sys::status(
                "useradd",
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )?;
            if let Some(p) = &u.passwd {
                // On stdin, not as useradd's --password argument as cloud-init does: argv
                // is readable by every process.
                sys::check(
                    "chpasswd",
                    &["-e"],
                    Some(chpasswd_line(&u.name, p).as_bytes()),
                )
                .map_err(|e| e.context(format!("users: setting the password of {}", u.name)))?;
            }
            cx.info(&format!(
                "created user {}{}",
                u.name,
                if u.passwd.is_some() {
                    " (password hash set)"
                } else {
                    ""
                }
            ));
        } else {
            if u.passwd.is_some() || u.inactive.is_some() {
                cx.warn(format!(
                    "user {} exists: passwd/inactive not changed (cloud-init applies them only when it creates the user)",
                    u.name
                ));
            }
            if !u.groups.is_empty() && cx.real_root {
                sys::status("usermod", &["-a", "-G", &u.groups.join(","), &u.name])?;
            }
        }
        if u.lock_passwd && cx.real_root {
            sys::status("passwd", &["-l", &u.name])?;
        }
        for rule in &u.sudo {
            // One rule per line; a newline inside a rule would inject another rule.
            if rule.contains('\n') {
                return Err(Error::Refused(format!(
                    "users: sudo rule for {} contains a newline",
                    u.name
                )));
            }
            sudoers.push_str(&format!("{} {rule}\n", u.name));
        }
        if !u.ssh_authorized_keys.is_empty() {
            let Some((name, uid, gid, home)) = fsutil::user_by_name(cx.root, &u.name) else {
                return Err(Error::Refused(format!(
                    "user {} not found in /etc/passwd after creation",
                    u.name
                )));
            };
            ssh_keys::add(cx, &name, uid, gid, &home, &u.ssh_authorized_keys, None)?;
        }
    }
    if !sudoers.is_empty() {
        let path = cx.path("/etc/sudoers.d/90-cloudsigma-agent-users");
        let body =
            format!("# Written by cloudsigma-agent from the bootstrap data's users\n{sudoers}");
        atomic_write(
            &path,
            body.as_bytes(),
            0o440,
            Owner {
                uid: Some(0),
                gid: Some(0),
            },
            WriteMode::Replace,
        )
        .at(IoOp::Access, &path)?;
        cx.info(&format!("sudo rules in {}", path.display()));
    }
    Ok(())
}

/// useradd's argv for a new user (cloud-init's create_user, minus the password: see users()).
fn useradd_args(u: &User) -> Vec<String> {
    let mut args: Vec<String> = vec!["-m".into()];
    for (flag, v) in [
        ("-c", &u.gecos),
        ("-s", &u.shell),
        ("-d", &u.homedir),
        ("-g", &u.primary_group),
        ("--inactive", &u.inactive),
    ] {
        if let Some(v) = v {
            args.push(flag.into());
            args.push(v.clone());
        }
    }
    if !u.groups.is_empty() {
        args.push("-G".into());
        args.push(u.groups.join(","));
    }
    args.push(u.name.clone());
    args
}

fn chpasswd_line(name: &str, p: &Secret) -> String {
    format!("{name}:{}\n", p.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudconfig;

    /// cloud-init reads `ssh-authorized-keys` and `lock-passwd` as the underscore keys.
    #[test]
    fn dashed_keys_are_the_underscore_keys() {
        let cfg = cloudconfig::parse(
            "users:\n  - name: capi\n    lock-passwd: false\n    primary-group: capi\n    ssh-authorized-keys:\n      - ssh-ed25519 AAAA capi\n",
        )
        .unwrap();
        let u = &cfg.users[0];
        assert_eq!(
            u.ssh_authorized_keys,
            vec!["ssh-ed25519 AAAA capi".to_string()]
        );
        assert!(!u.lock_passwd, "lock-passwd: false");
        assert_eq!(u.primary_group.as_deref(), Some("capi"));
    }

    #[test]
    fn useradd_for_capi_users() {
        let cfg = cloudconfig::parse(
            "users:\n  - name: capi\n    gecos: Cluster API\n    groups: docker,adm\n    homedir: /home/capi\n    inactive: true\n    lock_passwd: true\n    passwd: $6$salt$hash\n    primary_group: capi\n    shell: /bin/bash\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAA capi\n  - name: ops\n    inactive: 7\n",
        )
        .unwrap();
        assert_eq!(
            useradd_args(&cfg.users[0]),
            [
                "-m",
                "-c",
                "Cluster API",
                "-s",
                "/bin/bash",
                "-d",
                "/home/capi",
                "-g",
                "capi",
                "-G",
                "docker,adm",
                "capi"
            ]
        );
        assert_eq!(
            useradd_args(&cfg.users[1]),
            ["-m", "--inactive", "7", "ops"]
        );
        assert_eq!(
            chpasswd_line("capi", cfg.users[0].passwd.as_ref().unwrap()),
            "capi:$6$salt$hash\n"
        );
        assert!(cfg.users[0].lock_passwd);
        // Only the boolean inactive is a warning; nothing else is left unapplied.
        assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
        assert!(cfg.warnings[0].contains("inactive: true"));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("$6$salt"), "Debug hides the hash");
        for (y, want) in [
            (
                "users: [{name: a, passwd: 'x:y'}]",
                "passwd: not a crypt hash",
            ),
            (
                "users: [{name: a, passwd: [x]}]",
                "passwd: expected a string",
            ),
            (
                "users: [{name: a, inactive: soon}]",
                "inactive: expected a number",
            ),
        ] {
            let e = cloudconfig::parse(y).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("users[0]"), "{e}");
            assert!(!e.contains("x:y"), "{e}");
        }
    }
}
