//! Finding and decoding the user data in the server context, and classifying it.

use std::io::Read;

use base64::Engine;
use cloudsigma_api::{ServerContext, META_USER_DATA as USER_DATA_KEY};
/// A bootstrap payload larger than this after gunzip is refused (protects the small VM).
const MAX_DECOMPRESSED: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("meta.{USER_DATA_KEY} is listed in meta.base64_fields but is not valid base64 ({0}); fix the server meta")]
    Base64(String),
    #[error("meta.{USER_DATA_KEY} looks gzip-compressed but does not decompress ({0})")]
    Gzip(String),
    #[error("user data is not UTF-8 text ({0}); only #cloud-config, ## template: jinja and #! scripts are supported")]
    NotText(String),
    #[error("user data format not supported: {0}; expected '#cloud-config', '## template: jinja' or a '#!' script")]
    Unsupported(String),
}

/// What the user data turned out to be. Debug shows the kind and size only: the data holds the
/// join token.
#[derive(Clone, PartialEq)]
pub enum Kind {
    CloudConfig(String),
    Script(Vec<u8>),
    /// `## template: jinja` header removed; render, then classify the result again.
    JinjaTemplate(String),
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = match self {
            Kind::CloudConfig(s) | Kind::JinjaTemplate(s) => s.len(),
            Kind::Script(b) => b.len(),
        };
        write!(f, "{}(<{len} bytes>)", self.name())
    }
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::CloudConfig(_) => "cloud-config",
            Kind::Script(_) => "script",
            Kind::JinjaTemplate(_) => "jinja-template",
        }
    }
}

/// Raw user data bytes (decoded and decompressed), or None when the server has none.
pub fn extract(ctx: &ServerContext) -> Result<Option<Vec<u8>>, UserDataError> {
    let Some(ud) = ctx.user_data() else {
        return Ok(None);
    };
    let mut bytes = if ud.base64 {
        decode_base64(ud.value)?
    } else {
        ud.value.as_bytes().to_vec()
    };
    if bytes.starts_with(&[0x1f, 0x8b]) {
        bytes = gunzip(&bytes).map_err(UserDataError::Gzip)?;
    }
    Ok(Some(bytes))
}

pub fn decode_base64(s: &str) -> Result<Vec<u8>, UserDataError> {
    // Line breaks are common when the value was produced by `base64` without -w0.
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| UserDataError::Base64(e.to_string()))
}

pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(format!(
            "larger than {MAX_DECOMPRESSED} bytes after decompression"
        ));
    }
    Ok(out)
}

/// Classify by the first line, like cloud-init's part handlers.
pub fn classify(bytes: Vec<u8>) -> Result<Kind, UserDataError> {
    if bytes.starts_with(b"#!") {
        return Ok(Kind::Script(bytes));
    }
    let text = String::from_utf8(bytes).map_err(|e| UserDataError::NotText(e.to_string()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
    let first = text.lines().next().unwrap_or("").trim_end();
    if is_jinja_header(first) {
        let rest = text
            .split_once('\n')
            .map(|(_, r)| r)
            .unwrap_or("")
            .to_string();
        return Ok(Kind::JinjaTemplate(rest));
    }
    if first == "#cloud-config" || first.starts_with("#cloud-config ") {
        return Ok(Kind::CloudConfig(text));
    }
    let what = if first.starts_with("#cloud-config-archive") {
        "#cloud-config-archive".to_string()
    } else if first.starts_with("#include") {
        "#include".to_string()
    } else if first.to_ascii_lowercase().starts_with("content-type:")
        || first.starts_with("MIME-Version")
    {
        "MIME multipart".to_string()
    } else if first.starts_with("#cloud-boothook") {
        "#cloud-boothook".to_string()
    } else if text.trim().is_empty() {
        "empty user data".to_string()
    } else {
        // Never echo the content: it may be a secret. Say how long it is instead.
        format!(
            "unrecognised first line ({} bytes of user data)",
            text.len()
        )
    };
    Err(UserDataError::Unsupported(what))
}

/// cloud-init: `## template: jinja` (case-insensitive, spaces flexible).
pub fn is_jinja_header(line: &str) -> bool {
    let l = line.trim().to_ascii_lowercase();
    let Some(rest) = l.strip_prefix("##") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("template:") else {
        return false;
    };
    rest.trim() == "jinja"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(meta: &[(&str, &str)]) -> ServerContext {
        let meta: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        serde_json::from_value(serde_json::json!({"uuid":"u","name":"n","meta":meta})).unwrap()
    }

    #[test]
    fn base64_only_when_listed() {
        let c = ctx(&[
            ("cloudinit-user-data", "I2Nsb3VkLWNvbmZpZwo="),
            ("base64_fields", "foo, cloudinit-user-data"),
        ]);
        assert_eq!(extract(&c).unwrap().unwrap(), b"#cloud-config\n");
        let c = ctx(&[("cloudinit-user-data", "I2Nsb3VkLWNvbmZpZwo=")]);
        assert_eq!(extract(&c).unwrap().unwrap(), b"I2Nsb3VkLWNvbmZpZwo=");
        let c = ctx(&[
            ("cloudinit-user-data", "!!notbase64"),
            ("base64_fields", "cloudinit-user-data"),
        ]);
        assert!(matches!(extract(&c), Err(UserDataError::Base64(_))));
    }

    #[test]
    fn gzip_detected() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"#cloud-config\nruncmd: []\n").unwrap();
        let gz = enc.finish().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
        let c = ctx(&[
            ("cloudinit-user-data", &b64),
            ("base64_fields", "cloudinit-user-data"),
        ]);
        assert_eq!(
            extract(&c).unwrap().unwrap(),
            b"#cloud-config\nruncmd: []\n"
        );
    }

    #[test]
    fn classify_headers() {
        assert!(
            matches!(classify(b"## template: jinja\n#cloud-config\n".to_vec()), Ok(Kind::JinjaTemplate(t)) if t == "#cloud-config\n")
        );
        assert!(matches!(
            classify(b"#cloud-config\na: 1".to_vec()),
            Ok(Kind::CloudConfig(_))
        ));
        assert!(matches!(
            classify(b"#!/bin/sh\necho".to_vec()),
            Ok(Kind::Script(_))
        ));
        let e = classify(b"secret-stuff: yes".to_vec())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(is_jinja_header("##   Template:  Jinja "));
    }
}
