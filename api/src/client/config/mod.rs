//! Client configuration: endpoint, credentials, timeouts, retry policy and transport rules.
//!
//! - [`keys`]: the keys, written once (config file, environment, messages, docs).
//! - [`file`]: the TOML config file, parsed against them.
//! - [`resolve`]: flags (overrides) > environment > config file, into a [`Config`].

pub mod keys;

mod file;
mod resolve;

pub use file::{ConfigFile, Value};
pub use resolve::{default_config_path, resolve_with, ConfigOverrides};

use super::error::Error;
use super::retry::RetryPolicy;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use url::{Host, Url};

/// Environment variables read by [`Config::resolve`] (the table's, by name).
pub const ENV_USERNAME: &str = keys::USERNAME.env;
pub const ENV_PASSWORD: &str = keys::PASSWORD.env;
pub const ENV_TOKEN: &str = keys::TOKEN.env;
pub const ENV_REGION: &str = keys::REGION.env;
pub const ENV_API_URL: &str = keys::API_URL.env;
/// PEM file of extra CA certificates to trust (e.g. the CA `cloudsim --tls-self-signed-ca` writes).
pub const ENV_CA_FILE: &str = keys::CA_FILE.env;
/// The config file's path: not a key of the file itself.
pub const ENV_CONFIG: &str = "CLOUDSIGMA_CONFIG";

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
    /// Allow a plain `http://` base URL whose host is not loopback. Off by default:
    /// [`super::Client::new`] refuses one, since every request would carry the password or
    /// token in the clear. Loopback (`127.0.0.0/8`, `::1`, `localhost`) never leaves the host,
    /// so `http://127.0.0.1:…` (cloudsim in tests) needs no permission.
    pub allow_insecure_http: bool,
}

/// `base_url` is plain `http://` to a host that is not loopback and `cfg` does not allow it:
/// the error names the URL (credentials are never part of it) and how to allow it.
pub(crate) fn check_transport(cfg: &Config) -> Result<(), Error> {
    let url = &cfg.base_url;
    if url.scheme() != "http" || cfg.allow_insecure_http || is_loopback(url) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "refusing the API URL {url}: plain http:// to a host that is not loopback would send          the credentials unencrypted; use https:// (with {} for a private CA), or, on a trusted          network only (e.g. a test emulator reached from a VM), set {} = true in the config          file or {}=true",
        keys::CA_FILE.name,
        keys::ALLOW_INSECURE_HTTP.name,
        keys::ALLOW_INSECURE_HTTP.env
    )))
}

/// The URL's host is this machine: a loopback address or `localhost` (RFC 6761 reserves
/// `localhost` and `*.localhost` for loopback).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
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
    /// `base_url` and `auth` with every other setting at its default.
    pub(crate) fn with_defaults(base_url: Url, auth: Auth) -> Config {
        Config {
            base_url,
            auth,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            ca_file: None,
            allow_insecure_http: false,
        }
    }

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
        Config::with_defaults(base_url, auth)
    }

    /// Any base URL, e.g. `http://127.0.0.1:8080/api/2.0/` (a trailing `/` is added if missing).
    /// Plain `http://` to a host that is not loopback also needs
    /// [`Config::with_allow_insecure_http`].
    pub fn for_url(url: &str, auth: Auth) -> Result<Config, Error> {
        Ok(Config::with_defaults(normalize_base_url(url)?, auth))
    }

    /// See [`Config::allow_insecure_http`].
    pub fn with_allow_insecure_http(mut self, allow: bool) -> Config {
        self.allow_insecure_http = allow;
        self
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

    /// The defaults the key table documents are the ones the code uses.
    #[test]
    fn documented_defaults_are_the_real_ones() {
        let d = Config::for_region("zrh", Auth::Bearer("t".into()));
        for (key, real) in [
            (keys::TIMEOUT_SECS, d.timeout.as_secs().to_string()),
            (keys::MAX_ATTEMPTS, d.retry.max_attempts.to_string()),
            (
                keys::MAX_RETRY_AFTER_SECS,
                d.retry.max_retry_after.as_secs().to_string(),
            ),
            (keys::ALLOW_INSECURE_HTTP, d.allow_insecure_http.to_string()),
        ] {
            assert_eq!(key.default, real, "{}", key.name);
        }
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let cfg = |url: &str| Config::for_url(url, Auth::Bearer("t".into())).unwrap();
        for ok in [
            "http://127.0.0.1:8080/api/2.0/",
            "http://127.8.9.10/",
            "http://[::1]:9/",
            "http://localhost:8080/",
            "http://api.LOCALHOST./",
            "https://10.0.2.2/",
            "https://zrh.cloudsigma.com/api/2.0/",
        ] {
            assert!(check_transport(&cfg(ok)).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.0.2.2:8080/api/2.0/",
            "http://zrh.cloudsigma.com/api/2.0/",
            "http://[::2]/",
            "http://localhost.example.com/",
        ] {
            let e = check_transport(&cfg(refused)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("refusing the API URL {refused}"))
                    && e.contains("allow_insecure_http = true")
                    && e.contains("CLOUDSIGMA_ALLOW_INSECURE_HTTP=true"),
                "{e}"
            );
            assert!(check_transport(&cfg(refused).with_allow_insecure_http(true)).is_ok());
        }
    }
}
