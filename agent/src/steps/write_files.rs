//! `write_files` (cloud-init 22.4 semantics, docs/agent.md): decoding, permissions, owners, and
//! atomic writes. Deferred files are the same step run again after ntp.

use serde_yaml::Value;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{self, atomic_write, ChownOutcome, WriteMode};
use crate::userdata;
use crate::yaml::{boolish, scalar_string, type_name, ConfigError};

/// Debug shows the content's size only: it may hold the join token or a key
/// (kubeadm's join configuration, certificates).
#[derive(Clone, PartialEq)]
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

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFile")
            .field("path", &self.path)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("encoding", &self.encoding)
            .field("unknown_encoding", &self.unknown_encoding)
            .field("owner", &self.owner)
            .field("permissions", &format_args!("{:#o}", self.permissions))
            .field("bad_permissions", &self.bad_permissions)
            .field("append", &self.append)
            .field("defer", &self.defer)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Plain,
    Base64,
    Gzip,
    GzipBase64,
}

pub fn parse(v: &Value, warnings: &mut Vec<String>) -> Result<Vec<WriteFile>, ConfigError> {
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

/// cloud-init's decode_perms: an octal string ("0640", "640", "0o640"), or a number taken as the
/// mode's value (`420` = 0644). serde_yaml hands an unquoted `0644` over as the text "0644" and
/// `0o644` as the number 420, so both mean 0644 as with cloud-init's YAML 1.1 parser. Stricter
/// than cloud-init: a mode above 0o7777 is refused (warning, 0644) instead of passed to chmod.
pub fn decode_perms(v: &Value) -> Option<u32> {
    let mode = match v {
        // cloud-init's decode_perms (cloudinit/util.py): a YAML number is the mode's value as it
        // is (`420` is 0644; a float is truncated); only text is read as octal. A leading-zero
        // literal such as `0755` reaches us as text (YAML 1.2 has no such octal ints), so it is
        // octal as with cloud-init's YAML 1.1 parser.
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(i), _) => u32::try_from(i).ok()?,
            (None, Some(f)) if f >= 0.0 && f.is_finite() => f.trunc() as u32,
            _ => return None,
        },
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

/// Write the files (all of them: the caller splits off the deferred ones).
pub fn apply(cx: &mut Cx, files: &[WriteFile]) -> Result<()> {
    for f in files {
        let data = decode_content(f)?;
        let owner = fsutil::resolve_owner(cx.root, &f.owner)
            .map_err(|e| Error::Refused(e).context(format!("{} owner", f.path)))?;
        // Through a symlink (`/etc/resolv.conf`) into its target, as cloud-init's write_file.
        let target = fsutil::resolve_under(cx.root, &f.path).at(IoOp::Write, cx.path(&f.path))?;
        if target != cx.path(&f.path) {
            cx.info(&format!(
                "{} is a symlink: writing its target {}",
                f.path,
                target.display()
            ));
        }
        let how = if f.append {
            WriteMode::Append
        } else {
            WriteMode::Replace
        };
        let outcome =
            atomic_write(&target, &data, f.permissions, owner, how).at(IoOp::Write, &target)?;
        if outcome == ChownOutcome::NotPermitted {
            if cx.real_root {
                return Err(Error::Refused(format!(
                    "cannot chown {} to {}: not permitted",
                    f.path, f.owner
                )));
            }
            cx.warn(format!(
                "{}: chown to {} not permitted (unprivileged test root)",
                f.path, f.owner
            ));
        }
        // Paths, sizes and modes only: file contents are secrets (keys, tokens).
        cx.info(&format!(
            "wrote {} ({} bytes, mode {:04o}, owner {}{}{})",
            f.path,
            data.len(),
            f.permissions,
            f.owner,
            if f.append { ", appended" } else { "" },
            if f.defer { ", deferred" } else { "" }
        ));
    }
    Ok(())
}

fn decode_content(f: &WriteFile) -> Result<Vec<u8>> {
    let b64 = |c: &[u8]| {
        userdata::decode_base64(&String::from_utf8_lossy(c)).map_err(|_| {
            Error::Refused(format!(
                "{}: content is not valid base64 (encoding {:?})",
                f.path,
                enc_name(f.encoding)
            ))
        })
    };
    let gz = |c: &[u8]| {
        userdata::gunzip(c)
            .map_err(|e| Error::Refused(format!("{}: content does not gunzip: {e}", f.path)))
    };
    match f.encoding {
        Encoding::Plain => Ok(f.content.clone()),
        Encoding::Base64 => b64(&f.content),
        Encoding::Gzip => gz(&f.content),
        Encoding::GzipBase64 => gz(&b64(&f.content)?),
    }
}

fn enc_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Plain => "text/plain",
        Encoding::Base64 => "b64",
        Encoding::Gzip => "gzip",
        Encoding::GzipBase64 => "gz+b64",
    }
}

#[cfg(test)]
mod tests {
    /// Each form as serde_yaml delivers it from `permissions: <literal>`, and the mode cloud-init
    /// gives the same literal.
    #[test]
    fn permissions_like_cloud_init() {
        let mode = |lit: &str| {
            let v: Value = serde_yaml::from_str(&format!("p: {lit}")).unwrap();
            super::decode_perms(&v["p"])
        };
        assert_eq!(mode("420"), Some(0o644), "a YAML int is the mode's value");
        assert_eq!(mode("493"), Some(0o755));
        assert_eq!(
            mode("0755"),
            Some(0o755),
            "leading zero: octal, as YAML 1.1"
        );
        assert_eq!(mode("0o600"), Some(0o600));
        assert_eq!(mode("'0640'"), Some(0o640));
        assert_eq!(mode("'640'"), Some(0o640), "text is always octal");
        assert_eq!(mode("420.9"), Some(0o644), "a float is truncated");
        assert_eq!(mode("'0999'"), None, "not octal: warning and 0644");
        assert_eq!(mode("70000"), None, "above 0o7777: refused");
    }

    use super::*;
    use crate::cloudconfig::parse;

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
}
