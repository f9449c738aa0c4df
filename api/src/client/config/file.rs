//! The TOML config file (`~/.config/cloudsigma/config.toml` or `$CLOUDSIGMA_CONFIG`): parsed
//! against the key table, with errors that name the place and the key but never a value (the
//! file holds the password or token, and the message reaches imgbuild's stderr and the
//! controller's log).

use super::keys::{self, Key, Kind, KEYS};
use super::Error;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// A setting's value, checked against its key's [`Kind`].
#[derive(Clone, PartialEq)]
pub enum Value {
    /// [`Kind::Text`], [`Kind::Secret`], [`Kind::Path`].
    Text(String),
    Seconds(Duration),
    Count(u32),
    Bool(bool),
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// An environment variable's (or flag's) text as a value of `kind`; `None` when blank.
    /// The error says what the value must be, not what it was.
    pub(crate) fn from_text(kind: Kind, text: &str) -> Result<Option<Value>, String> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(None);
        }
        let bad = || Err(format!("must be {} (value not shown)", kind.expected()));
        Ok(Some(match kind {
            Kind::Text | Kind::Secret | Kind::Path => Value::Text(t.to_string()),
            Kind::Seconds { .. } => match t.parse().ok().and_then(|s| seconds(kind, s)) {
                Some(v) => v,
                None => return bad(),
            },
            Kind::Count { .. } => match t.parse().ok().and_then(|n| count(kind, n)) {
                Some(v) => v,
                None => return bad(),
            },
            Kind::Bool => match t.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Value::Bool(true),
                "false" | "0" | "no" => Value::Bool(false),
                _ => return bad(),
            },
        }))
    }
}

/// Text is not shown: a value does not know whether it is a secret ([`ConfigFile`]'s `Debug`,
/// which knows the keys, shows the text of those that are not).
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(_) => write!(f, "Text(..)"),
            Value::Seconds(d) => write!(f, "{d:?}"),
            Value::Count(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// `secs` as a [`Kind::Seconds`] value, if within its range.
fn seconds(kind: Kind, secs: f64) -> Option<Value> {
    let Kind::Seconds { zero_ok, max } = kind else {
        return None;
    };
    let ok = secs.is_finite() && secs <= f64::from(max) && (secs > 0.0 || (zero_ok && secs == 0.0));
    ok.then(|| Value::Seconds(Duration::from_secs_f64(secs)))
}

/// `n` as a [`Kind::Count`] value, if within its range.
fn count(kind: Kind, n: i64) -> Option<Value> {
    let Kind::Count { min, max } = kind else {
        return None;
    };
    let n = u32::try_from(n).ok()?;
    (min..=max).contains(&n).then_some(Value::Count(n))
}

/// A parsed config file: the keys it sets, each checked against the key table. Parse it with
/// [`ConfigFile::parse`]; `Debug` shows the keys and values, secrets as `<redacted>`.
#[derive(Default, Clone, PartialEq)]
pub struct ConfigFile {
    values: BTreeMap<&'static str, Value>,
}

impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, v) in &self.values {
            match (keys::key(name).map(|k| k.kind), v) {
                (Some(Kind::Secret), _) => m.entry(name, &"<redacted>"),
                (_, Value::Text(t)) => m.entry(name, t),
                _ => m.entry(name, v),
            };
        }
        m.finish()
    }
}

/// `line L, column C` (1-based, columns in characters) of a byte offset of `text`.
fn position(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    format!(
        "line {}, column {}",
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1
    )
}

/// An unknown key is named only when it is a near miss of a known one (a typo such as
/// `pasword`): anything else on the left of `=` may be a secret pasted into the wrong place.
fn describe_unknown_key(key: &str) -> String {
    let known = keys::names();
    match KEYS
        .iter()
        .map(|k| (strsim::osa_distance(key, k.name), k.name))
        .min()
    {
        Some((d, k)) if d <= 2 => {
            format!("unknown key `{key}` (did you mean `{k}`?); the keys are {known}")
        }
        _ => format!("unknown key (name not shown); the keys are {known}"),
    }
}

/// A message of the TOML parser with everything that could come from the file taken out:
/// quoted text (`…` or "…") stays only when it is a known key or a grammar token (`=`, `"`,
/// `]`, …). The parser's own words describe what it expected; the file's words may be a secret
/// (the duplicate-key and dotted-key messages quote keys).
fn scrub_toml_message(msg: &str) -> String {
    let keep = |q: &str| keys::key(q).is_some() || q.chars().count() <= 2;
    let mut out = String::new();
    for (i, part) in msg.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(if keep(part) { part } else { "(not shown)" });
            out.push('`');
            continue;
        }
        for (j, p) in part.split('"').enumerate() {
            out.push_str(if j % 2 == 1 { "\"(not shown)\"" } else { p });
        }
        out.push('`');
    }
    out.pop();
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// One value of the file as the key's kind; the error names the key and its place.
fn typed(text: &str, key: &Key, v: &Spanned<toml::Value>) -> Result<Value, String> {
    let at = position(text, v.span().start);
    let wrong = || {
        format!(
            "{at}: `{}` must be {}, not {} (value not shown)",
            key.name,
            key.kind.expected(),
            v.get_ref().type_str()
        )
    };
    let out_of_range = || format!("{at}: `{}` must be {}", key.name, key.kind.expected());
    match (key.kind, v.get_ref()) {
        (Kind::Text | Kind::Secret | Kind::Path, toml::Value::String(s)) => {
            Ok(Value::Text(s.clone()))
        }
        (Kind::Seconds { .. }, toml::Value::Float(f)) => {
            seconds(key.kind, *f).ok_or_else(out_of_range)
        }
        (Kind::Seconds { .. }, toml::Value::Integer(i)) => {
            seconds(key.kind, *i as f64).ok_or_else(out_of_range)
        }
        (Kind::Count { .. }, toml::Value::Integer(i)) => {
            count(key.kind, *i).ok_or_else(out_of_range)
        }
        (Kind::Bool, toml::Value::Boolean(b)) => Ok(Value::Bool(*b)),
        _ => Err(wrong()),
    }
}

impl ConfigFile {
    /// Parse a config file's text. Unknown keys are refused, so a typo (`pasword`) is reported
    /// instead of silently ignored. An error names the place (`line L, column C`) and the key
    /// when it is a known one (or a near miss of one), never a value: every value is read
    /// untyped and checked here against [`KEYS`] (serde's type errors would quote it).
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        let raw: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| {
                let at = e
                    .span()
                    .map(|s| format!("{}: ", position(text, s.start)))
                    .unwrap_or_default();
                format!("{at}{}", scrub_toml_message(e.message()))
            })?;
        // In the file's order, so the first wrong line is the one reported.
        let mut entries: Vec<_> = raw.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut values = BTreeMap::new();
        for (name, v) in entries {
            let Some(key) = keys::key(name.get_ref()) else {
                return Err(format!(
                    "{}: {}",
                    position(text, name.span().start),
                    describe_unknown_key(name.get_ref())
                ));
            };
            values.insert(key.name, typed(text, key, v)?);
        }
        Ok(ConfigFile { values })
    }

    /// The value the file gives `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.values.get(key.name)
    }

    /// The text the file gives a text, secret or path key.
    pub fn text(&self, key: &Key) -> Option<&str> {
        self.get(key).and_then(Value::as_text)
    }

    /// Load and parse a config file; `required` files (named explicitly) must exist.
    pub(super) fn load(path: &Path, required: bool) -> Result<Option<ConfigFile>, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )))
            }
        };
        ConfigFile::parse(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("invalid config file {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::config::keys::{
        ALLOW_INSECURE_HTTP, MAX_ATTEMPTS, MAX_RETRY_AFTER_SECS, PASSWORD, REGION, TIMEOUT_SECS,
        TOKEN,
    };

    #[test]
    fn every_kind_parses_and_ranges_are_checked() {
        let f = ConfigFile::parse(
            "region = \"zrh\"\ntimeout_secs = 2.5\nmax_attempts = 3\nmax_retry_after_secs = 0\n\
             allow_insecure_http = true\n",
        )
        .unwrap();
        assert_eq!(f.text(&REGION), Some("zrh"));
        assert_eq!(
            f.get(&TIMEOUT_SECS),
            Some(&Value::Seconds(Duration::from_millis(2500)))
        );
        assert_eq!(f.get(&MAX_ATTEMPTS), Some(&Value::Count(3)));
        assert_eq!(
            f.get(&MAX_RETRY_AFTER_SECS),
            Some(&Value::Seconds(Duration::ZERO))
        );
        assert_eq!(f.get(&ALLOW_INSECURE_HTTP), Some(&Value::Bool(true)));
        for (text, want) in [
            ("timeout_secs = 0\n", "more than 0 and at most 3600"),
            ("timeout_secs = 3601\n", "at most 3600"),
            ("max_attempts = 0\n", "between 1 and 100"),
            ("max_retry_after_secs = -1\n", "from 0 to 3600"),
            (
                "allow_insecure_http = \"yes\"\n",
                "true or false, not string",
            ),
        ] {
            let e = ConfigFile::parse(text).unwrap_err();
            assert!(e.contains(want) && e.contains("line 1"), "{text:?}: {e}");
        }
    }

    #[test]
    fn environment_text_is_read_as_the_kind() {
        let secs = TIMEOUT_SECS.kind;
        assert_eq!(
            Value::from_text(secs, " 12 "),
            Ok(Some(Value::Seconds(Duration::from_secs(12))))
        );
        assert_eq!(Value::from_text(secs, "  "), Ok(None));
        assert!(Value::from_text(secs, "0")
            .unwrap_err()
            .contains("more than 0"));
        assert!(Value::from_text(secs, "soon").is_err());
        let b = ALLOW_INSECURE_HTTP.kind;
        assert_eq!(Value::from_text(b, "YES"), Ok(Some(Value::Bool(true))));
        assert_eq!(Value::from_text(b, "0"), Ok(Some(Value::Bool(false))));
        let e = Value::from_text(MAX_ATTEMPTS.kind, "hunter2").unwrap_err();
        assert!(
            !e.contains("hunter2") && e.contains("between 1 and 100"),
            "{e}"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let f = ConfigFile::parse(
            "username = \"me@x\"\npassword = \"hunter2\"\ntoken = \"sekrit-token\"\n",
        )
        .unwrap();
        assert_eq!(f.text(&PASSWORD), Some("hunter2"));
        assert_eq!(f.text(&TOKEN), Some("sekrit-token"));
        let s = format!("{f:?}");
        assert!(
            !s.contains("hunter2") && !s.contains("sekrit") && s.contains("me@x"),
            "{s}"
        );
        assert!(s.contains("\"password\": \"<redacted>\""), "{s}");
    }
}
