//! Async REST client for CloudSigma API 2.0 (feature `client`).
//!
//! - Configuration ([`Config`], [`Config::resolve`]): region or any base URL, Basic or Bearer auth
//!   from flags > environment > TOML config file. See `docs/api.md`.
//! - Every request: JSON, paths ending in `/`, a per-request timeout, a `tracing` debug line
//!   (method, path, status, elapsed, attempt — never headers or bodies, which may carry
//!   credentials or bootstrap secrets in `meta`), and a per-client call counter ([`Client::calls`]).
//! - Idempotent requests (GET, PUT, DELETE) are retried on 429/5xx/connection errors with
//!   exponential backoff and full jitter, honouring `Retry-After` ([`RetryPolicy`]). POSTs —
//!   creates and actions — are sent exactly once: a lost answer must not create two servers.
//!   The one exception is opt-in ([`Client::with_post_retry_on_429`]): a POST refused with 429
//!   was refused before it ran, so sending it again cannot act twice.
//! - A [`CallObserver`] ([`Client::with_observer`]) sees every attempt, retry sleep and poll
//!   sleep, for callers' metrics.
//! - Listings follow `limit`/`offset` until `total_count` objects are read.
//! - Waiters ([`Client::wait_drive_status`], [`Client::wait_server_status`]) poll with backoff
//!   until a deadline.
//!
//! Layout: this file holds the [`Client`] itself; `request.rs` sends (one attempt, the retry
//! rule per method, JSON, paging) through the crate's one retry loop in `retry.rs`; the endpoint
//! wrappers are one file per resource (`servers.rs`, `drives.rs`, `libdrives.rs`, `ips.rs`,
//! `vlans.rs`, `tags.rs`); `wait.rs` polls; `config/` is the key table, the file and the
//! resolution.

// `Error::Api` is large (it carries the API's error entries, method, path and request id); every
// error follows a network round trip, so its size is irrelevant, and a flat struct variant keeps
// callers' pattern matching simple.
#![allow(clippy::result_large_err)]

mod config;
mod error;
mod observe;
mod request;
mod retry;
mod wait;

// The endpoint wrappers, one file per resource (each an `impl Client` block).
mod drives;
mod ips;
mod libdrives;
mod servers;
mod tags;
mod vlans;

pub use config::{
    default_config_path, keys as config_keys, resolve_with, Auth, Config, ConfigFile,
    ConfigOverrides, Value as ConfigValue, DEFAULT_TIMEOUT, ENV_API_URL, ENV_CA_FILE, ENV_CONFIG,
    ENV_PASSWORD, ENV_REGION, ENV_TOKEN, ENV_USERNAME,
};
pub use error::Error;
pub use observe::{CallEvent, CallObserver};
pub use retry::RetryPolicy;
pub use wait::WaitPolicy;

use crate::models::{Drive, Ip, LibDrive, Server, ServerAction, Tag, Vlan};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Default `limit` of each page when listing.
pub const DEFAULT_PAGE_SIZE: u64 = 100;

/// The `recurse` values of `DELETE /servers/{uuid}/`.
pub const RECURSE_VALUES: [&str; 3] = ["all_drives", "disks", "cdroms"];

/// A CloudSigma API client. Cheap to clone; clones share the connection pool and call counter
/// (page size, wait policy, observer and the POST-429 opt-in are per clone).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    page_size: u64,
    wait_policy: WaitPolicy,
    observer: Option<Arc<dyn CallObserver>>,
    post_retry_on_429: bool,
}

struct Inner {
    http: reqwest::Client,
    cfg: Config,
    calls: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.cfg)
            .field("page_size", &self.page_size)
            .field("post_retry_on_429", &self.post_retry_on_429)
            .field("calls", &self.calls())
            .finish()
    }
}

fn check_id(kind: &str, id: &str) -> Result<(), Error> {
    if id.trim().is_empty() || id == "." || id == ".." || id.contains(['/', '?', '#']) {
        return Err(Error::InvalidInput(format!(
            "{kind} uuid {id:?} is not a valid identifier"
        )));
    }
    Ok(())
}

/// Parse a server action name from text (a flag, a config value): malformed names and unknown
/// actions are `InvalidInput` naming what is accepted.
pub fn parse_server_action(action: &str) -> Result<ServerAction, Error> {
    check_action(action)?;
    action.parse().map_err(Error::InvalidInput)
}

fn check_action(action: &str) -> Result<(), Error> {
    if action.is_empty()
        || !action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::InvalidInput(format!(
            "action {action:?} is not a valid action name (e.g. start, stop, shutdown, restart)"
        )));
    }
    Ok(())
}

/// Objects with a uuid, so listings can drop duplicates: with `limit`/`offset` paging, an object
/// created before the current offset while we page shifts the rest and repeats one entry.
pub trait Identified {
    fn id(&self) -> &str;
}

macro_rules! identified {
    ($($t:ty),*) => {$(
        impl Identified for $t {
            fn id(&self) -> &str {
                &self.uuid
            }
        }
    )*};
}
identified!(Server, Drive, LibDrive, Ip, Vlan, Tag);

impl Client {
    /// A client for `cfg`: fails with [`Error::Config`] when `cfg` is plain `http://` to a host
    /// that is not loopback without [`Config::allow_insecure_http`], or its `ca_file` cannot be
    /// used.
    pub fn new(cfg: Config) -> Result<Client, Error> {
        config::check_transport(&cfg)?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("cloudsigma-k8s/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            // Redirects would re-send credentials to another place; the API does not redirect.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &cfg.ca_file {
            for cert in config::load_ca_file(path)? {
                b = b.add_root_certificate(cert);
            }
        }
        let http = b.build().map_err(|e| {
            let ca = cfg
                .ca_file
                .as_ref()
                .map(|p| format!(" (with the CA certificates of {})", p.display()))
                .unwrap_or_default();
            Error::Config(format!("cannot build the HTTP client{ca}: {e}"))
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                cfg,
                calls: AtomicU64::new(0),
            }),
            page_size: DEFAULT_PAGE_SIZE,
            wait_policy: WaitPolicy::default(),
            observer: None,
            post_retry_on_429: false,
        })
    }

    /// [`Config::resolve`] then [`Client::new`].
    pub fn from_overrides(ov: &ConfigOverrides) -> Result<Client, Error> {
        Client::new(Config::resolve(ov)?)
    }

    /// Page size (`limit`) of listings; 0 is treated as 1.
    pub fn with_page_size(mut self, n: u64) -> Client {
        self.page_size = n.max(1);
        self
    }

    /// Poll schedule of the waiters.
    pub fn with_wait_policy(mut self, p: WaitPolicy) -> Client {
        self.wait_policy = p;
        self
    }

    /// Report every attempt, retry sleep and poll sleep of this client (and its later clones)
    /// to `o`.
    pub fn with_observer(mut self, o: Arc<dyn CallObserver>) -> Client {
        self.observer = Some(o);
        self
    }

    /// Opt in to resending POSTs (creates, actions) refused with 429, with the same backoff,
    /// `Retry-After` floor and attempt limit as idempotent requests. Safe because a 429 is
    /// answered before the request is acted on; any other failure of a POST (5xx, lost answer)
    /// is still returned at once, since the request may have run.
    pub fn with_post_retry_on_429(mut self, on: bool) -> Client {
        self.post_retry_on_429 = on;
        self
    }

    pub fn wait_policy(&self) -> WaitPolicy {
        self.wait_policy
    }

    fn observe(&self, e: CallEvent<'_>) {
        if let Some(o) = &self.observer {
            o.observe(&e);
        }
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.cfg.base_url
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// HTTP requests sent so far by this client and its clones (every attempt counts).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// `base_url` + segments + trailing `/` + query. Segments are percent-encoded.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.inner.cfg.base_url.clone();
        {
            // Base URLs are http(s) (checked in Config), so they always have path segments.
            if let Ok(mut p) = url.path_segments_mut() {
                p.pop_if_empty();
                p.extend(segments.iter().filter(|s| !s.is_empty()));
                p.push("");
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(Config::for_url(base, Auth::Bearer("t".into())).unwrap()).unwrap()
    }

    #[test]
    fn urls_keep_prefix_and_trailing_slash() {
        let c = client("http://127.0.0.1:9/api/2.0");
        assert_eq!(
            c.url(&["servers", "detail"], &[]).as_str(),
            "http://127.0.0.1:9/api/2.0/servers/detail/"
        );
        assert_eq!(
            c.url(&["servers", "abc", "action"], &[("do", "start")])
                .as_str(),
            "http://127.0.0.1:9/api/2.0/servers/abc/action/?do=start"
        );
        // filters are encoded, segments too
        assert_eq!(
            c.url(&["drives", "a b"], &[("name", "x&y=z")]).as_str(),
            "http://127.0.0.1:9/api/2.0/drives/a%20b/?name=x%26y%3Dz"
        );
        let c = client("https://zrh.cloudsigma.com/api/2.0/");
        assert_eq!(
            c.url(&["tags", "u", "servers"], &[]).as_str(),
            "https://zrh.cloudsigma.com/api/2.0/tags/u/servers/"
        );
    }

    #[test]
    fn ids_and_actions_validated() {
        assert!(check_id("drive", "").is_err());
        assert!(check_id("drive", "..").is_err());
        assert!(check_id("drive", "a/b").is_err());
        assert!(check_id("drive", "3d1b9a6c-0000-4000-8000-000000000001").is_ok());
        assert!(check_action("start").is_ok());
        assert!(check_action("st art").is_err());
        assert!(check_action("").is_err());
        assert_eq!(parse_server_action("stop").unwrap(), ServerAction::Stop);
        assert!(matches!(
            parse_server_action("st art"),
            Err(Error::InvalidInput(m)) if m.contains("not a valid action name")
        ));
        assert!(matches!(
            parse_server_action("reboot"),
            Err(Error::InvalidInput(m)) if m.contains("unknown server action")
        ));
    }

    #[test]
    fn plain_http_beyond_loopback_is_refused_unless_allowed() {
        let url = "http://10.0.2.2:8080/api/2.0/";
        let e = Client::new(Config::for_url(url, Auth::Bearer("t".into())).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(url) && e.contains("CLOUDSIGMA_ALLOW_INSECURE_HTTP"),
            "{e}"
        );
        // allowed through the environment, as the in-cluster e2e test does
        let env = |k: &str| match k {
            "CLOUDSIGMA_API_URL" => Some(url.to_string()),
            "CLOUDSIGMA_TOKEN" => Some("t".into()),
            "CLOUDSIGMA_ALLOW_INSECURE_HTTP" => Some("true".into()),
            _ => None,
        };
        let cfg = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        assert!(Client::new(cfg).is_ok());
        // loopback needs nothing
        assert!(Client::new(
            Config::for_url("http://localhost:9/api/2.0/", Auth::Bearer("t".into())).unwrap()
        )
        .is_ok());
    }

    #[test]
    fn client_debug_redacts() {
        let c = Client::new(
            Config::for_url(
                "http://127.0.0.1:9/api/2.0/",
                Auth::Basic {
                    username: "u".into(),
                    password: "pw-secret".into(),
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("pw-secret"));
    }
}
