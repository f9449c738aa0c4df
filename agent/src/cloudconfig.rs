//! `#cloud-config` parsing into the typed keys the agent implements; everything else is listed
//! by name as unsupported (never silently ignored).

use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cloud-config is not valid YAML: {0}")]
    Yaml(String),
    #[error("cloud-config must be a mapping at the top level, got {0}")]
    NotMapping(&'static str),
    #[error("cloud-config key {key}: {msg}")]
    Key { key: String, msg: String },
}

/// One runcmd/bootcmd item, with cloud-init's shellify rules.
#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    /// A string: written verbatim as one line.
    Line(String),
    /// A list: each word single-quoted.
    Words(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteFile {
    pub path: String,
    pub content: Vec<u8>,
    pub encoding: Encoding,
    /// The original encoding string when it was not recognised (written as plain, with a warning).
    pub unknown_encoding: Option<String>,
    pub owner: String,
    pub permissions: u32,
    /// Set when `permissions` could not be decoded (cloud-init falls back to 0644 with a warning).
    pub bad_permissions: Option<String>,
    pub append: bool,
    pub defer: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Base64,
    Gzip,
    GzipBase64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloudConfig {
    pub bootcmd: Vec<Cmd>,
    pub write_files: Vec<WriteFile>,
    pub runcmd: Vec<Cmd>,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub preserve_hostname: bool,
    pub prefer_fqdn_over_hostname: bool,
    /// Top-level `ssh_authorized_keys`: installed like meta.ssh_public_key.
    pub ssh_authorized_keys: Vec<String>,
    /// `users`: the subset the Cluster API kubeadm provider emits (see [`User`]).
    pub users: Vec<User>,
    /// `ntp` (None when absent or null, as cloud-init).
    pub ntp: Option<crate::ntp::Ntp>,
    /// `disk_setup`, in document order.
    pub disk_setup: Vec<crate::storage::Disk>,
    /// `fs_setup`, in document order.
    pub fs_setup: Vec<crate::storage::Filesystem>,
    /// `mounts` with `mount_default_fields` applied; None when the key is absent (an empty list
    /// still removes the entries a previous run added).
    pub mounts: Option<Vec<crate::storage::Mount>>,
    /// Top-level keys present in the data that the agent does not implement, in document order.
    pub unsupported: Vec<String>,
    /// Non-fatal remarks (unknown sub-fields...), never containing content.
    pub warnings: Vec<String>,
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

pub(crate) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
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
    let mut mounts = None;
    let mut mount_defaults = None;
    for (k, v) in map {
        let key = match &k {
            Value::String(s) => s.clone(),
            other => scalar_string(other).unwrap_or_else(|| format!("<{}>", type_name(other))),
        };
        let kerr = |msg: String| ConfigError::Key {
            key: key.clone(),
            msg,
        };
        match key.as_str() {
            "bootcmd" => cfg.bootcmd = parse_cmds(&key, &v)?,
            "runcmd" => cfg.runcmd = parse_cmds(&key, &v)?,
            "write_files" => cfg.write_files = parse_write_files(&v, &mut cfg.warnings)?,
            "hostname" => cfg.hostname = opt_string(&v).map_err(kerr)?,
            "fqdn" => cfg.fqdn = opt_string(&v).map_err(kerr)?,
            "preserve_hostname" => cfg.preserve_hostname = boolish(&v).map_err(kerr)?,
            "prefer_fqdn_over_hostname" => {
                cfg.prefer_fqdn_over_hostname = boolish(&v).map_err(kerr)?
            }
            "ssh_authorized_keys" => cfg.ssh_authorized_keys = string_list(&v).map_err(kerr)?,
            "users" => cfg.users = parse_users(&v, &mut cfg.warnings)?,
            "ntp" => cfg.ntp = crate::ntp::parse(&v, &mut cfg.warnings)?,
            "disk_setup" => cfg.disk_setup = crate::storage::parse_disk_setup(&v)?,
            "fs_setup" => cfg.fs_setup = crate::storage::parse_fs_setup(&v, &mut cfg.warnings)?,
            "mounts" => mounts = Some(v),
            "mount_default_fields" => mount_defaults = Some(v),
            _ => cfg.unsupported.push(key),
        }
    }
    if let Some(m) = mounts.filter(|m| !m.is_null()) {
        cfg.mounts = Some(crate::storage::parse_mounts(
            &m,
            mount_defaults.as_ref(),
            &mut cfg.warnings,
        )?);
    }
    Ok(cfg)
}

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

fn parse_users(v: &Value, warnings: &mut Vec<String>) -> Result<Vec<User>, ConfigError> {
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
            Value::Mapping(m) => m,
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

pub(crate) fn opt_string(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        other => scalar_string(other)
            .map(Some)
            .ok_or_else(|| format!("expected a string, got {}", type_name(other))),
    }
}

pub(crate) fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                scalar_string(i)
                    .ok_or_else(|| format!("expected a list of strings, found {}", type_name(i)))
            })
            .collect(),
        other => Err(format!(
            "expected a list of strings, got {}",
            type_name(other)
        )),
    }
}

pub(crate) fn boolish(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        // YAML 1.1 booleans as cloud-init (PyYAML) reads them.
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(true),
            "false" | "no" | "off" | "n" => Ok(false),
            _ => Err(format!("expected a boolean, got {s:?}")),
        },
        other => Err(format!("expected a boolean, got {}", type_name(other))),
    }
}

/// cloud-init's shellify input: a list whose items are strings, lists of words, or null.
pub fn parse_cmds(key: &str, v: &Value) -> Result<Vec<Cmd>, ConfigError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        // cloud-init's shellify raises TypeError for anything but a list (a bare string included).
        Value::Sequence(s) => s,
        other => {
            return Err(ConfigError::Key {
                key: key.into(),
                msg: format!("expected a list, got {}", type_name(other)),
            })
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::Null => {}
            Value::String(s) => out.push(Cmd::Line(s.clone())),
            Value::Sequence(words) => {
                let mut w = Vec::new();
                for word in words {
                    // cloud-init stringifies each word of a list item.
                    match word {
                        // Python's str() of the word, as cloud-init does.
                        Value::Null => w.push("None".to_string()),
                        Value::Bool(b) => w.push(if *b { "True" } else { "False" }.to_string()),
                        other => w.push(scalar_string(other).ok_or_else(|| ConfigError::Key {
                            key: format!("{key}[{i}]"),
                            msg: format!(
                                "list item words must be scalars, got {}",
                                type_name(other)
                            ),
                        })?),
                    }
                }
                out.push(Cmd::Words(w));
            }
            other => {
                return Err(ConfigError::Key {
                    key: format!("{key}[{i}]"),
                    msg: format!(
                        "unable to shellify {} (expected a string or a list)",
                        type_name(other)
                    ),
                })
            }
        }
    }
    Ok(out)
}

fn parse_write_files(v: &Value, warnings: &mut Vec<String>) -> Result<Vec<WriteFile>, ConfigError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(s) => s,
        other => {
            return Err(ConfigError::Key {
                key: "write_files".into(),
                msg: format!("expected a list, got {}", type_name(other)),
            })
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("write_files[{i}]");
        let err = |msg: String| ConfigError::Key {
            key: key.clone(),
            msg,
        };
        let Value::Mapping(m) = item else {
            return Err(err(format!("expected a mapping, got {}", type_name(item))));
        };
        let get = |name: &str| m.get(Value::String(name.into()));
        let path = match get("path").and_then(scalar_string) {
            Some(p) if !p.trim().is_empty() => p,
            _ => return Err(err("missing 'path'".into())),
        };
        if !path.starts_with('/') {
            return Err(err(format!("path {path:?} is not absolute")));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(err(format!("path {path:?} contains '..'")));
        }
        let content = match get("content") {
            None | Some(Value::Null) => Vec::new(),
            Some(c) => scalar_string(c)
                .ok_or_else(|| err(format!("content must be a string, got {}", type_name(c))))?
                .into_bytes(),
        };
        let enc_raw = get("encoding").and_then(scalar_string).unwrap_or_default();
        let (encoding, unknown_encoding) = match enc_raw.trim().to_ascii_lowercase().as_str() {
            "" | "text/plain" => (Encoding::Plain, None),
            "b64" | "base64" => (Encoding::Base64, None),
            "gz" | "gzip" => (Encoding::Gzip, None),
            "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => (Encoding::GzipBase64, None),
            _ => (Encoding::Plain, Some(enc_raw.clone())),
        };
        if let Some(e) = &unknown_encoding {
            warnings.push(format!(
                "{key} ({path}): unknown encoding {e:?}, written as plain text"
            ));
        }
        let owner = get("owner")
            .and_then(scalar_string)
            .unwrap_or_else(|| "root:root".into());
        let (permissions, bad_permissions) = match get("permissions") {
            None | Some(Value::Null) => (0o644, None),
            Some(p) => match decode_perms(p) {
                Some(m) => (m, None),
                None => (
                    0o644,
                    Some(scalar_string(p).unwrap_or_else(|| type_name(p).into())),
                ),
            },
        };
        if let Some(b) = &bad_permissions {
            warnings.push(format!(
                "{key} ({path}): undecodable permissions {b:?}, using 0644"
            ));
        }
        let append = match get("append") {
            Some(v) => boolish(v).map_err(|m| err(format!("append: {m}")))?,
            None => false,
        };
        let defer = match get("defer") {
            Some(v) => boolish(v).map_err(|m| err(format!("defer: {m}")))?,
            None => false,
        };
        if get("source").is_some() {
            warnings.push(format!(
                "{key} ({path}): 'source' (download) is not supported; using 'content'"
            ));
        }
        out.push(WriteFile {
            path,
            content,
            encoding,
            unknown_encoding,
            owner,
            permissions,
            bad_permissions,
            append,
            defer,
        });
    }
    Ok(out)
}

/// cloud-init's decode_perms: an octal string ("0640", "640", "0o640") or an integer. YAML 1.2
/// (serde_yaml) reads an unquoted `0644` as decimal 644, where cloud-init's YAML 1.1 reads octal:
/// an integer whose decimal digits are all octal digits is therefore taken as written in octal.
pub fn decode_perms(v: &Value) -> Option<u32> {
    let mode = match v {
        Value::Number(n) => {
            let i = n.as_u64()?;
            let s = i.to_string();
            if s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                u32::from_str_radix(&s, 8).ok()?
            } else {
                u32::try_from(i).ok()?
            }
        }
        Value::String(s) => {
            let s = s.trim();
            let s = s
                .strip_prefix("0o")
                .or_else(|| s.strip_prefix("0O"))
                .unwrap_or(s);
            if s.is_empty() {
                return None;
            }
            u32::from_str_radix(s, 8).ok()?
        }
        _ => return None,
    };
    (mode <= 0o7777).then_some(mode)
}

/// Build the /bin/sh script cloud-init's `util.shellify` would build.
pub fn shellify(cmds: &[Cmd]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for c in cmds {
        match c {
            Cmd::Line(l) => s.push_str(l),
            Cmd::Words(w) => {
                let quoted: Vec<String> = w
                    .iter()
                    .map(|x| format!("'{}'", x.replace('\'', "'\\''")))
                    .collect();
                s.push_str(&quoted.join(" "));
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shellify_like_cloud_init() {
        let cfg = parse(
            "runcmd:\n  - echo hi && true\n  - [ls, -l, \"it's\"]\n  - null\n  - [echo, 1]\n",
        )
        .unwrap();
        assert_eq!(
            shellify(&cfg.runcmd),
            "#!/bin/sh\necho hi && true\n'ls' '-l' 'it'\\''s'\n'echo' '1'\n"
        );
    }

    #[test]
    fn write_files_fields() {
        let cfg = parse(
            "write_files:\n- path: /a\n  content: x\n  permissions: '0640'\n  owner: etcd:etcd\n  encoding: B64\n  defer: true\n- path: /b\n  permissions: 0755\n  append: yes\n  encoding: weird\nusers: [a]\nntp: {}\n",
        )
        .unwrap();
        assert_eq!(cfg.write_files[0].permissions, 0o640);
        assert_eq!(cfg.write_files[0].encoding, Encoding::Base64);
        assert!(cfg.write_files[0].defer);
        assert_eq!(cfg.write_files[1].permissions, 0o755);
        assert!(cfg.write_files[1].append);
        assert_eq!(cfg.write_files[1].owner, "root:root");
        assert_eq!(
            cfg.write_files[1].unknown_encoding.as_deref(),
            Some("weird")
        );
        assert_eq!(cfg.unsupported, Vec::<String>::new());
        assert!(cfg.ntp.is_some());
        assert_eq!(cfg.warnings.len(), 1);
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
