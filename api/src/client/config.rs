//! Client configuration: endpoint, credentials, timeouts and retry policy, resolved from
//! flags (overrides) > environment > TOML config file.

use super::error::Error;
use super::retry::RetryPolicy;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use url::Url;

/// Environment variables read by [`Config::resolve`].
pub const ENV_USERNAME: &str = "CLOUDSIGMA_USERNAME";
pub const ENV_PASSWORD: &str = "CLOUDSIGMA_PASSWORD";
pub const ENV_TOKEN: &str = "CLOUDSIGMA_TOKEN";
pub const ENV_REGION: &str = "CLOUDSIGMA_REGION";
pub const ENV_API_URL: &str = "CLOUDSIGMA_API_URL";
pub const ENV_CONFIG: &str = "CLOUDSIGMA_CONFIG";
/// PEM file of extra CA certificates to trust (e.g. the CA `cloudsim --tls-self-signed-ca` writes).
pub const ENV_CA_FILE: &str = "CLOUDSIGMA_CA_FILE";

/// Default per-request timeout (connect + send + whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How requests authenticate. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP Basic with the account e-mail and password (what CloudSigma's Python SDK does).
    Basic { username: String, password: String },
    /// `Authorization: Bearer <token>` (Go SDK / Terraform provider's `CLOUDSIGMA_TOKEN`).
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Auth::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

/// Everything a [`super::Client`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// API root, always ending with `/`, e.g. `https://zrh.cloudsigma.com/api/2.0/`.
    pub base_url: Url,
    pub auth: Auth,
    /// Per-request timeout (each attempt of a retried request gets the full timeout).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// PEM file whose certificates are trusted as roots in addition to the built-in ones (an
    /// HTTPS emulator, a TLS-inspecting proxy). Read by [`super::Client::new`].
    pub ca_file: Option<PathBuf>,
}

/// Command-line style overrides; `None` falls through to the environment, then the config file.
#[derive(Debug, Default, Clone)]
pub struct ConfigOverrides {
    pub api_url: Option<String>,
    pub region: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub config_file: Option<PathBuf>,
}

/// The TOML config file (`~/.config/cloudsigma/config.toml` or `$CLOUDSIGMA_CONFIG`). Unknown keys
/// are refused so a typo (`pasword`) is reported instead of silently ignored. Parse it with
/// [`ConfigFile::parse`], whose errors never echo a value of the file (it holds the password).
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub api_url: Option<String>,
    pub region: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// Per-request timeout in seconds.
    pub timeout_secs: Option<f64>,
    /// Total attempts for idempotent requests (1 = no retries).
    pub max_attempts: Option<u32>,
    /// Extra CA certificates (PEM); a relative path is relative to the config file's directory.
    pub ca_file: Option<String>,
}

/// The keys a config file may hold (what an unknown key is compared with).
pub const CONFIG_FILE_KEYS: &[&str] = &[
    "api_url",
    "region",
    "username",
    "password",
    "token",
    "timeout_secs",
    "max_attempts",
    "ca_file",
];

/// The file as written: each value untyped and with its place, so that a wrong type is reported
/// by us (key and position) rather than by serde, whose messages quote the value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigFile {
    api_url: Option<Spanned<toml::Value>>,
    region: Option<Spanned<toml::Value>>,
    username: Option<Spanned<toml::Value>>,
    password: Option<Spanned<toml::Value>>,
    token: Option<Spanned<toml::Value>>,
    timeout_secs: Option<Spanned<toml::Value>>,
    max_attempts: Option<Spanned<toml::Value>>,
    ca_file: Option<Spanned<toml::Value>>,
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
    let known = CONFIG_FILE_KEYS.join(", ");
    match CONFIG_FILE_KEYS
        .iter()
        .map(|k| (strsim::osa_distance(key, k), *k))
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
/// (the duplicate-key and dotted-key messages quote keys; serde's type errors quote values).
fn scrub_toml_message(msg: &str) -> String {
    let keep = |q: &str| CONFIG_FILE_KEYS.contains(&q) || q.chars().count() <= 2;
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

impl ConfigFile {
    /// Parse a config file's text. An error names the place (`line L, column C`) and the key
    /// when it is a known one (or a near miss of one), never a value: the message goes to
    /// imgbuild's stderr and the controller's log, and the file holds the password or token.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        let raw: RawConfigFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!("{}: ", position(text, s.start)))
                .unwrap_or_default();
            let what = match e
                .message()
                .strip_prefix("unknown field `")
                .and_then(|r| r.split_once("`, expected"))
            {
                Some((key, _)) => describe_unknown_key(key),
                None => scrub_toml_message(e.message()),
            };
            format!("{at}{what}")
        })?;
        let wrong = |key: &str, v: &Spanned<toml::Value>, want: &str| {
            format!(
                "{}: `{key}` must be {want}, not {} (value not shown)",
                position(text, v.span().start),
                v.get_ref().type_str()
            )
        };
        let string = |key: &str, v: Option<Spanned<toml::Value>>| match v {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                toml::Value::String(s) => Ok(Some(s.clone())),
                _ => Err(wrong(key, &v, "a string in quotes")),
            },
        };
        let timeout_secs = match raw.timeout_secs {
            None => None,
            Some(v) => Some(match v.get_ref() {
                toml::Value::Float(f) => *f,
                toml::Value::Integer(i) => *i as f64,
                _ => return Err(wrong("timeout_secs", &v, "a number of seconds")),
            }),
        };
        let max_attempts = match raw.max_attempts {
            None => None,
            Some(v) => Some(match v.get_ref() {
                toml::Value::Integer(i) => u32::try_from(*i).map_err(|_| {
                    format!(
                        "{}: `max_attempts` must be between 1 and 100",
                        position(text, v.span().start)
                    )
                })?,
                _ => return Err(wrong("max_attempts", &v, "a whole number")),
            }),
        };
        Ok(ConfigFile {
            api_url: string("api_url", raw.api_url)?,
            region: string("region", raw.region)?,
            username: string("username", raw.username)?,
            password: string("password", raw.password)?,
            token: string("token", raw.token)?,
            timeout_secs,
            max_attempts,
            ca_file: string("ca_file", raw.ca_file)?,
        })
    }
}

/// Validate a region name: it becomes a host name label.
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 63
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !region.starts_with(['-', '.'])
        && !region.ends_with(['-', '.'])
}

/// Parse a base URL and make sure its path ends with `/` (so `Url::join`/segment pushes keep the
/// `/api/2.0` prefix).
pub(crate) fn normalize_base_url(raw: &str) -> Result<Url, Error> {
    let mut url = Url::parse(raw.trim()).map_err(|e| {
        // `user:password@` that fails to parse must not be echoed either
        let shown = if raw.contains('@') {
            "(not shown: it contains `@`, i.e. maybe credentials)".to_string()
        } else {
            format!("{raw:?}")
        };
        Error::Config(format!(
            "invalid API URL {shown}: {e}; expected e.g. https://zrh.cloudsigma.com/api/2.0/"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Config(format!(
            "invalid API URL {raw:?}: scheme must be http or https"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::Config(format!("invalid API URL {raw:?}: no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in the URL would end up in logs and error messages.
        return Err(Error::Config(format!(
            "API URL must not embed credentials; use {ENV_USERNAME}/{ENV_PASSWORD} or {ENV_TOKEN}"
        )));
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

impl Config {
    /// `https://{region}.cloudsigma.com/api/2.0/`. An invalid region name yields an URL that will
    /// fail on first use; use [`Config::resolve`] for validated input.
    pub fn for_region(region: &str, auth: Auth) -> Config {
        let base_url = Url::parse(&format!(
            "https://{}.cloudsigma.com/api/2.0/",
            region.trim()
        ))
        .unwrap_or_else(|_| {
            // Only reachable with a malformed region; keep the call infallible per the
            // agreed interface and let the first request report the unreachable host.
            Url::parse("https://invalid-region.cloudsigma.com/api/2.0/").expect("static URL")
        });
        Config {
            base_url,
            auth,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            ca_file: None,
        }
    }

    /// Any base URL, e.g. `http://127.0.0.1:8080/api/2.0/` (a trailing `/` is added if missing).
    pub fn for_url(url: &str, auth: Auth) -> Result<Config, Error> {
        Ok(Config {
            base_url: normalize_base_url(url)?,
            auth,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            ca_file: None,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Config {
        self.timeout = timeout;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Config {
        self.retry = retry;
        self
    }

    /// Trust the CA certificates of a PEM file as well (see [`Config::ca_file`]).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Config {
        self.ca_file = Some(path.into());
        self
    }

    /// Resolve from `overrides` > environment > config file (see module docs and docs/api.md).
    pub fn resolve(overrides: &ConfigOverrides) -> Result<Config, Error> {
        resolve_with(overrides, &|k| std::env::var(k).ok(), default_config_path())
    }
}

/// `$XDG_CONFIG_HOME/cloudsigma/config.toml` (usually `~/.config/cloudsigma/config.toml`).
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("cloudsigma").join("config.toml"))
}

/// Load and parse a config file. `required` files (named explicitly) must exist.
fn load_file(path: &Path, required: bool) -> Result<Option<ConfigFile>, Error> {
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

/// Where a value came from; lower = higher priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Flag = 0,
    Env = 1,
    File = 2,
}

impl Source {
    fn describe(self, env: &str, file: &Option<PathBuf>) -> String {
        match self {
            Source::Flag => "a command-line flag".into(),
            Source::Env => format!("${env}"),
            Source::File => format!(
                "config file {}",
                file.as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    }
}

fn pick(
    flag: &Option<String>,
    env: Option<String>,
    file: Option<&String>,
) -> Option<(String, Source)> {
    let clean = |v: &str| {
        let t = v.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    if let Some(v) = flag.as_deref().and_then(clean) {
        return Some((v, Source::Flag));
    }
    if let Some(v) = env.as_deref().and_then(clean) {
        return Some((v, Source::Env));
    }
    file.and_then(|v| clean(v)).map(|v| (v, Source::File))
}

/// [`Config::resolve`] with an injectable environment and default file path (for tests).
pub fn resolve_with(
    ov: &ConfigOverrides,
    env: &dyn Fn(&str) -> Option<String>,
    default_file: Option<PathBuf>,
) -> Result<Config, Error> {
    // Config file: flag > $CLOUDSIGMA_CONFIG (both must exist) > default path (optional).
    let (file_path, required) = match (&ov.config_file, env(ENV_CONFIG).filter(|s| !s.is_empty())) {
        (Some(p), _) => (Some(p.clone()), true),
        (None, Some(p)) => (Some(PathBuf::from(p)), true),
        (None, None) => (default_file, false),
    };
    let file = match &file_path {
        Some(p) => load_file(p, required)?.unwrap_or_default(),
        None => ConfigFile::default(),
    };
    let file_desc = file_path.clone();
    let hint_file = file_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.config/cloudsigma/config.toml".into());

    // Endpoint: the higher-priority of api_url / region wins; at the same level api_url wins.
    let api_url = pick(&ov.api_url, env(ENV_API_URL), file.api_url.as_ref());
    let region = pick(&ov.region, env(ENV_REGION), file.region.as_ref());
    let base_url = match (api_url, region) {
        (Some((u, us)), Some((_, rs))) if us <= rs => normalize_base_url(&u)?,
        (Some((u, _)), None) => normalize_base_url(&u)?,
        (_, Some((r, rs))) => {
            if !valid_region(&r) {
                return Err(Error::Config(format!(
                    "invalid region {r:?} (from {}): expected a location such as zrh, fra, sjc",
                    rs.describe(ENV_REGION, &file_desc)
                )));
            }
            Config::for_region(&r, Auth::Bearer(String::new())).base_url
        }
        (None, None) => {
            return Err(Error::Config(format!(
                "no CloudSigma endpoint configured: set {ENV_REGION} (e.g. zrh) or {ENV_API_URL} \
                 (e.g. http://127.0.0.1:8080/api/2.0/), pass --region/--api-url, or put \
                 region/api_url in {hint_file}"
            )))
        }
    };

    // Credentials: a token and a complete username/password pair compete by source priority;
    // at the same level the token wins (it is the more specific choice).
    let user = pick(&ov.username, env(ENV_USERNAME), file.username.as_ref());
    let pass = pick(&ov.password, env(ENV_PASSWORD), file.password.as_ref());
    let token = pick(&ov.token, env(ENV_TOKEN), file.token.as_ref());
    let auth = match (user, pass, token) {
        (Some((u, us)), Some((p, ps)), Some((t, ts))) => {
            if us.min(ps) < ts {
                Auth::Basic {
                    username: u,
                    password: p,
                }
            } else {
                Auth::Bearer(t)
            }
        }
        (_, _, Some((t, _))) => Auth::Bearer(t),
        (Some((u, _)), Some((p, _)), None) => Auth::Basic {
            username: u,
            password: p,
        },
        (Some((u, us)), None, None) => {
            return Err(Error::Config(format!(
                "username {u:?} (from {}) has no password: set {ENV_PASSWORD}, pass --password, \
                 or put password in {hint_file}",
                us.describe(ENV_USERNAME, &file_desc)
            )))
        }
        (None, Some((_, ps)), None) => {
            return Err(Error::Config(format!(
                "a password is set (from {}) but no username: set {ENV_USERNAME} (the account \
                 e-mail), pass --username, or put username in {hint_file}",
                ps.describe(ENV_PASSWORD, &file_desc)
            )))
        }
        (None, None, None) => {
            return Err(Error::Config(format!(
                "no CloudSigma credentials: set {ENV_USERNAME} and {ENV_PASSWORD} (or \
                 {ENV_TOKEN}), pass --username/--password (or --token), or put them in {hint_file}"
            )))
        }
    };

    // CA file: $CLOUDSIGMA_CA_FILE > config file (there relative to the file's directory, so a
    // config file and its CA can move together). Callers with a flag set it on the result.
    let ca_file = match env(ENV_CA_FILE).filter(|s| !s.trim().is_empty()) {
        Some(p) => Some(PathBuf::from(p.trim())),
        None => file
            .ca_file
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|p| {
                let p = Path::new(p);
                match file_path.as_deref().and_then(Path::parent) {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p.to_path_buf(),
                }
            }),
    };
    let mut cfg = Config {
        base_url,
        auth,
        timeout: DEFAULT_TIMEOUT,
        retry: RetryPolicy::default(),
        ca_file,
    };
    if let Some(t) = file.timeout_secs {
        if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
            return Err(Error::Config(format!(
                "timeout_secs = {t} in {hint_file} must be between 0 and 3600"
            )));
        }
        cfg.timeout = Duration::from_secs_f64(t);
    }
    if let Some(n) = file.max_attempts {
        if n == 0 || n > 100 {
            return Err(Error::Config(format!(
                "max_attempts = {n} in {hint_file} must be between 1 and 100"
            )));
        }
        cfg.retry.max_attempts = n;
    }
    Ok(cfg)
}

/// The certificates of a PEM file (a CA bundle), each to be trusted as a root. An unreadable
/// file, or one without a single certificate, is an error naming the file.
pub(crate) fn load_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let what = format!(
        "CA file {} ({ENV_CA_FILE} / ca_file / --ca-file)",
        path.display()
    );
    let pem =
        std::fs::read(path).map_err(|e| Error::Config(format!("cannot read the {what}: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::Config(format!("the {what} is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "the {what} holds no certificate: expected PEM blocks \
             `-----BEGIN CERTIFICATE-----` (e.g. the file of cloudsim --tls-self-signed-ca)"
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn write_file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cs-api-cfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let d = tmpdir("prec");
        let f = write_file(
            &d,
            "region = \"fra\"\nusername = \"file@x\"\npassword = \"filepw\"\ntimeout_secs = 5\n",
        );
        let env = env_of(&[
            (ENV_REGION, "zrh"),
            (ENV_USERNAME, "env@x"),
            (ENV_PASSWORD, "envpw"),
        ]);
        // env beats file
        let c = resolve_with(&ConfigOverrides::default(), &env, Some(f.clone())).unwrap();
        assert_eq!(c.base_url.as_str(), "https://zrh.cloudsigma.com/api/2.0/");
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "env@x".into(),
                password: "envpw".into()
            }
        );
        assert_eq!(c.timeout, Duration::from_secs(5));
        // flags beat env
        let ov = ConfigOverrides {
            region: Some("sjc".into()),
            username: Some("flag@x".into()),
            ..Default::default()
        };
        let c = resolve_with(&ov, &env, Some(f.clone())).unwrap();
        assert_eq!(c.base_url.host_str(), Some("sjc.cloudsigma.com"));
        // username from flag, password from env (per-field precedence)
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "flag@x".into(),
                password: "envpw".into()
            }
        );
        // file alone
        let c = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f)).unwrap();
        assert_eq!(c.base_url.host_str(), Some("fra.cloudsigma.com"));
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "file@x".into(),
                password: "filepw".into()
            }
        );
    }

    #[test]
    fn api_url_vs_region_by_priority() {
        let env = env_of(&[
            (ENV_REGION, "zrh"),
            (ENV_API_URL, "http://127.0.0.1:9/api/2.0"),
            (ENV_TOKEN, "t"),
        ]);
        let c = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        // same level: api_url wins; trailing slash added
        assert_eq!(c.base_url.as_str(), "http://127.0.0.1:9/api/2.0/");
        let ov = ConfigOverrides {
            region: Some("fra".into()),
            ..Default::default()
        };
        let c = resolve_with(&ov, &env, None).unwrap();
        assert_eq!(c.base_url.as_str(), "https://fra.cloudsigma.com/api/2.0/");
    }

    #[test]
    fn token_vs_basic_by_priority() {
        let env = env_of(&[
            (ENV_REGION, "zrh"),
            (ENV_USERNAME, "u"),
            (ENV_PASSWORD, "p"),
            (ENV_TOKEN, "tok"),
        ]);
        let c = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        assert_eq!(c.auth, Auth::Bearer("tok".into()));
        let ov = ConfigOverrides {
            username: Some("fu".into()),
            password: Some("fp".into()),
            ..Default::default()
        };
        let c = resolve_with(&ov, &env, None).unwrap();
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "fu".into(),
                password: "fp".into()
            }
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_TOKEN, "t")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(ENV_REGION) && e.contains(ENV_API_URL), "{e}");
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zrh"), (ENV_USERNAME, "u")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(ENV_PASSWORD) && e.contains("$CLOUDSIGMA_USERNAME"),
            "{e}"
        );
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zrh")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no CloudSigma credentials") && e.contains(ENV_TOKEN),
            "{e}"
        );
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zr h"), (ENV_TOKEN, "t")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid region"), "{e}");
    }

    #[test]
    fn config_file_errors() {
        let d = tmpdir("errs");
        // explicitly named file must exist
        let ov = ConfigOverrides {
            config_file: Some(d.join("nope.toml")),
            ..Default::default()
        };
        let e = resolve_with(&ov, &env_of(&[]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
        // the default file may be absent
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[]),
            Some(d.join("absent")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no CloudSigma endpoint"), "{e}");
        // typos are refused, naming the key
        let f = write_file(&d, "region = \"zrh\"\npasword = \"x\"\n");
        let e = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pasword"), "{e}");
        // $CLOUDSIGMA_CONFIG names a required file
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_CONFIG, "/nonexistent/cs.toml")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/cs.toml"), "{e}");
    }

    #[test]
    fn ca_file_from_env_or_file_relative_to_it() {
        let d = tmpdir("ca");
        let f = write_file(
            &d,
            "api_url = \"https://127.0.0.1:1/\"\ntoken = \"t\"\nca_file = \"ca.pem\"\n",
        );
        let c = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f.clone())).unwrap();
        assert_eq!(
            c.ca_file,
            Some(d.join("ca.pem")),
            "relative to the config file"
        );
        let env = env_of(&[(ENV_CA_FILE, "/etc/x/ca.pem")]);
        let c = resolve_with(&ConfigOverrides::default(), &env, Some(f)).unwrap();
        assert_eq!(
            c.ca_file,
            Some(PathBuf::from("/etc/x/ca.pem")),
            "env beats file"
        );
        let env = env_of(&[(ENV_API_URL, "https://h/"), (ENV_TOKEN, "t")]);
        let c = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        assert_eq!(c.ca_file, None);
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config::for_url(
            "http://127.0.0.1:1/api/2.0/",
            Auth::Basic {
                username: "me@x".into(),
                password: "hunter2".into(),
            },
        )
        .unwrap();
        let s = format!("{c:?}");
        assert!(
            !s.contains("hunter2") && s.contains("me@x") && s.contains("redacted"),
            "{s}"
        );
        let s = format!("{:?}", Auth::Bearer("sekrit-token".into()));
        assert!(!s.contains("sekrit"), "{s}");
    }

    #[test]
    fn url_normalization() {
        assert_eq!(
            normalize_base_url("http://127.0.0.1:8080/api/2.0")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/api/2.0/"
        );
        assert_eq!(
            normalize_base_url("https://zrh.cloudsigma.com/api/2.0/?x=1#f")
                .unwrap()
                .as_str(),
            "https://zrh.cloudsigma.com/api/2.0/"
        );
        assert!(normalize_base_url("ftp://x/").is_err());
        assert!(normalize_base_url("not a url").is_err());
        assert!(normalize_base_url("http://u:p@host/api/2.0/").is_err());
        assert_eq!(
            Config::for_region("zrh", Auth::Bearer("t".into()))
                .base_url
                .as_str(),
            "https://zrh.cloudsigma.com/api/2.0/"
        );
    }
}
