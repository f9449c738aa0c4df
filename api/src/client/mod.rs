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

// `Error::Api` is large (it carries the API's error entries, method, path and request id); every
// error follows a network round trip, so its size is irrelevant, and a flat struct variant keeps
// callers' pattern matching simple.
#![allow(clippy::result_large_err)]

mod config;
mod error;
mod observe;
mod retry;
mod wait;

pub use config::{
    default_config_path, resolve_with, Auth, Config, ConfigFile, ConfigOverrides, DEFAULT_TIMEOUT,
    ENV_API_URL, ENV_CA_FILE, ENV_CONFIG, ENV_PASSWORD, ENV_REGION, ENV_TOKEN, ENV_USERNAME,
};
pub use error::Error;
use error::RetryAfter;
pub use observe::{CallEvent, CallObserver};
pub use retry::RetryPolicy;
pub use wait::WaitPolicy;

use crate::models::*;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// One request to send.
struct Req {
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    /// DELETE retried after a lost answer may find the object already gone: a 404 on a retry
    /// (not on the first attempt) then means success.
    gone_ok_on_retry: bool,
}

/// A failed attempt: the error, and whether the server asked to wait longer than the cap
/// (such a refusal is returned at once with `retry_after` = the cap, never waited for inside
/// the call).
struct Failed {
    error: Error,
    beyond_cap: bool,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            error,
            beyond_cap: false,
        }
    }
}

/// A list page. `meta` is optional so endpoints that answer a bare `{"objects": [...]}` work too.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(default)]
    meta: Option<ListMeta>,
    objects: Vec<T>,
}

/// Create/clone answers: `{"objects": [...]}`, or (tolerated) a bare object.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrObjects<T> {
    Objects(Objects<T>),
    One(T),
}

fn path_of(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// Replace the contents of every double-quoted segment (backslash escapes honoured) with `…`.
fn scrub_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            let mut escaped = false;
            for q in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if q == '\\' {
                    escaped = true;
                } else if q == '"' {
                    out.push('"');
                    break;
                }
            }
        }
    }
    out
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

/// Keep the first occurrence of every uuid, preserving order.
fn dedup_by_id<T: Identified>(items: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        if seen.insert(it.id().to_string()) {
            out.push(it);
        }
    }
    out
}

impl Client {
    pub fn new(cfg: Config) -> Result<Client, Error> {
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

    /// Send with retries (idempotent methods; POSTs only on 429 and only when opted in).
    /// Returns the success status and body.
    async fn execute(&self, req: Req) -> Result<(u16, Vec<u8>), Error> {
        let cfg = &self.inner.cfg;
        let idempotent = matches!(req.method, Method::GET | Method::PUT | Method::DELETE);
        let max_attempts = if idempotent || self.post_retry_on_429 {
            cfg.retry.max_attempts.max(1)
        } else {
            1
        };
        let path = path_of(&req.url);
        let method = req.method.as_str().to_string();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = Instant::now();
            self.inner.calls.fetch_add(1, Ordering::Relaxed);
            let mut rb = self
                .inner
                .http
                .request(req.method.clone(), req.url.clone())
                .timeout(cfg.timeout)
                .header(ACCEPT, "application/json");
            rb = match &cfg.auth {
                Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
                Auth::Bearer(t) => rb.bearer_auth(t),
            };
            if let Some(b) = &req.body {
                rb = rb.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            let (outcome, beyond_cap) = match self.send_once(rb, &method, &path).await {
                Ok(v) => (Ok(v), false),
                Err(f) => (Err(f.error), f.beyond_cap),
            };
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_millis() as u64;
            self.observe(CallEvent::Attempt {
                method: &method,
                path: &path,
                status: match &outcome {
                    Ok((status, _)) => Some(*status),
                    Err(e) => e.status(),
                },
                elapsed,
                attempt,
            });
            let result = match outcome {
                Ok((status, body)) if (200..300).contains(&status) => {
                    tracing::debug!(%method, %path, status, elapsed_ms, attempt, "cloudsigma api");
                    return Ok((status, body));
                }
                // send_once maps every non-2xx status to Err.
                Ok((status, body)) => {
                    return Err(error::api_error(status, &method, &path, &body, None, None))
                }
                Err(e) if e.is_not_found() && req.gone_ok_on_retry && attempt > 1 => {
                    tracing::debug!(%method, %path, status = 404, elapsed_ms, attempt,
                        "cloudsigma api: already gone after a retried DELETE");
                    return Ok((204, Vec::new()));
                }
                Err(e) => e,
            };
            tracing::debug!(%method, %path, status = ?result.status(), elapsed_ms, attempt,
                error = %result, "cloudsigma api");
            // A POST may have run unless it was refused with 429 (answered before acting).
            let retryable = if idempotent {
                result.is_retryable()
            } else {
                self.post_retry_on_429 && result.status() == Some(429)
            };
            if attempt < max_attempts && retryable && !beyond_cap {
                let delay = {
                    let mut rng = rand::thread_rng();
                    cfg.retry.delay(attempt, result.retry_after(), &mut rng)
                };
                if let Some(d) = delay {
                    tracing::debug!(%method, %path, attempt, delay_ms = d.as_millis() as u64, "cloudsigma api: retrying");
                    let slept = Instant::now();
                    tokio::time::sleep(d).await;
                    self.observe(CallEvent::RetrySleep {
                        method: &method,
                        path: &path,
                        slept: slept.elapsed(),
                    });
                    continue;
                }
            }
            return Err(result);
        }
    }

    /// One attempt: success → `Ok((status, body))`; error status → `Err(Error::Api)`.
    async fn send_once(
        &self,
        rb: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> Result<(u16, Vec<u8>), Failed> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::RequestTimeout {
                    method: method.to_string(),
                    path: path.to_string(),
                    after: self.inner.cfg.timeout,
                }
            } else {
                Error::Transport {
                    method: method.to_string(),
                    path: path.to_string(),
                    source: e.without_url(),
                }
            }
        };
        let resp = rb.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers: HeaderMap = resp.headers().clone();
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let cap = self.inner.cfg.retry.max_retry_after;
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(error::parse_retry_after)
            .map(|asked| RetryAfter::capped(asked, cap));
        if let Some(asked) = retry_after.and_then(|r| r.asked_beyond_cap) {
            tracing::warn!(%method, %path, status, asked_secs = asked.as_secs(), cap_secs = cap.as_secs(),
                "cloudsigma api: Retry-After capped (max_retry_after); not waited for inside this call");
        }
        Err(Failed {
            error: error::api_error(
                status,
                method,
                path,
                &body,
                request_id,
                retry_after.map(|r| r.wait),
            ),
            beyond_cap: retry_after.is_some_and(|r| r.asked_beyond_cap.is_some()),
        })
    }

    fn decode<T: DeserializeOwned>(method: &str, url: &Url, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body).map_err(|e| Error::Decode {
            method: method.to_string(),
            path: path_of(url),
            // serde's message names the field and position but may quote the offending value
            // ("invalid type: string \"...\""), which can be a secret from `meta`: drop it.
            message: scrub_quoted(&e.to_string()),
        })
    }

    fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(body)
            .map_err(|e| Error::InvalidInput(format!("cannot encode request body: {e}")))
    }

    /// `GET` a JSON document at `segments` (generic escape hatch for endpoints not wrapped here).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, Error> {
        let url = self.url(segments, query);
        let (_, body) = self
            .execute(Req {
                method: Method::GET,
                url: url.clone(),
                body: None,
                gone_ok_on_retry: false,
            })
            .await?;
        Self::decode("GET", &url, &body)
    }

    async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, Error> {
        let url = self.url(segments, &[]);
        let (_, resp) = self
            .execute(Req {
                method: Method::PUT,
                url: url.clone(),
                body: Some(Self::encode(body)?),
                gone_ok_on_retry: false,
            })
            .await?;
        Self::decode("PUT", &url, &resp)
    }

    /// `POST` (never retried) and decode the answer.
    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<T, Error> {
        let url = self.url(segments, query);
        let (_, resp) = self
            .execute(Req {
                method: Method::POST,
                url: url.clone(),
                body: Some(Self::encode(body)?),
                gone_ok_on_retry: false,
            })
            .await?;
        Self::decode("POST", &url, &resp)
    }

    async fn delete_at(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<(), Error> {
        let url = self.url(segments, query);
        self.execute(Req {
            method: Method::DELETE,
            url,
            body: None,
            gone_ok_on_retry: true,
        })
        .await
        .map(|_| ())
    }

    /// `POST {resource}/` with `{"objects": [item]}`; the first created object.
    async fn create_one<B: Serialize, T: DeserializeOwned>(
        &self,
        resource: &str,
        item: &B,
    ) -> Result<T, Error> {
        let ans: OneOrObjects<T> = self
            .post_json(
                &[resource],
                &[],
                &Objects {
                    objects: vec![item],
                },
            )
            .await?;
        Self::first(ans, "POST", &self.url(&[resource], &[]))
    }

    fn first<T>(ans: OneOrObjects<T>, method: &str, url: &Url) -> Result<T, Error> {
        match ans {
            OneOrObjects::One(t) => Ok(t),
            OneOrObjects::Objects(o) => o.objects.into_iter().next().ok_or_else(|| Error::Decode {
                method: method.to_string(),
                path: path_of(url),
                message: "the answer's objects list is empty".into(),
            }),
        }
    }

    /// Read every page of a listing: `limit`/`offset` until `total_count` objects were read.
    /// Stops on an empty page too, so a server whose `total_count` overstates cannot loop us.
    /// Caller `limit`/`offset` parameters are ignored (the client owns paging).
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, Error> {
        let filters: Vec<(&str, &str)> = query
            .iter()
            .copied()
            .filter(|(k, _)| *k != "limit" && *k != "offset")
            .collect();
        let limit = self.page_size.to_string();
        let mut all: Vec<T> = Vec::new();
        loop {
            let offset = all.len().to_string();
            let mut q = filters.clone();
            q.push(("limit", &limit));
            q.push(("offset", &offset));
            let page: Page<T> = self.get_json(segments, &q).await?;
            let n = page.objects.len();
            all.extend(page.objects);
            match page.meta {
                // A short page is not the end by itself (the server may cap `limit` lower than
                // asked); the end is total_count reached, or an empty page.
                Some(m) if n > 0 && (all.len() as u64) < m.total_count => continue,
                _ => return Ok(all),
            }
        }
    }

    /// [`Client::list_all`] without duplicate uuids.
    pub async fn list_unique<T: DeserializeOwned + Identified>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, Error> {
        Ok(dedup_by_id(self.list_all(segments, query).await?))
    }

    // ---------------------------------------------------------------- servers

    pub async fn list_servers(&self) -> Result<Vec<Server>, Error> {
        self.list_unique(&["servers", "detail"], &[]).await
    }

    /// `GET servers/detail/` with filters, e.g. `[("tag", uuid)]`, `[("name__contains", "k8s")]`.
    pub async fn list_servers_filtered(
        &self,
        query: &[(&str, &str)],
    ) -> Result<Vec<Server>, Error> {
        self.list_unique(&["servers", "detail"], query).await
    }

    pub async fn get_server(&self, uuid: &str) -> Result<Server, Error> {
        check_id("server", uuid)?;
        self.get_json(&["servers", uuid], &[]).await
    }

    /// Create one server. Not retried: on a transport error the server may or may not exist;
    /// look it up by name before trying again.
    pub async fn create_server(&self, s: &ServerCreate) -> Result<Server, Error> {
        self.create_one("servers", s).await
    }

    /// `PUT servers/{uuid}/` with the full definition (while running, only name/meta/tags apply).
    pub async fn update_server(&self, s: &Server) -> Result<Server, Error> {
        check_id("server", &s.uuid)?;
        self.put_json(&["servers", &s.uuid], s).await
    }

    /// `DELETE servers/{uuid}/[?recurse=all_drives|disks|cdroms]`.
    pub async fn delete_server(&self, uuid: &str, recurse: Option<&str>) -> Result<(), Error> {
        check_id("server", uuid)?;
        match recurse {
            None => self.delete_at(&["servers", uuid], &[]).await,
            Some(r) if RECURSE_VALUES.contains(&r) => {
                self.delete_at(&["servers", uuid], &[("recurse", r)]).await
            }
            Some(r) => Err(Error::InvalidInput(format!(
                "recurse={r:?}: expected one of all_drives, disks, cdroms"
            ))),
        }
    }

    /// `POST servers/{uuid}/action/?do={action}` with `{}`. Never retried automatically
    /// (except a 429 with [`Client::with_post_retry_on_429`]): re-sending `start` after a lost
    /// answer would be refused (already running) or, for `restart`, act twice. Check the server
    /// status instead, or use [`Client::ensure_server_stopped`].
    pub async fn server_action(
        &self,
        uuid: &str,
        action: ServerAction,
    ) -> Result<ActionResult, Error> {
        check_id("server", uuid)?;
        self.post_json(
            &["servers", uuid, "action"],
            &[("do", action.as_str())],
            &serde_json::json!({}),
        )
        .await
    }

    pub async fn start_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Start).await
    }

    /// Hard power-off.
    pub async fn stop_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Stop).await
    }

    /// ACPI shutdown (the guest may ignore it; wait for `stopped` with a deadline).
    pub async fn shutdown_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Shutdown).await
    }

    /// Reboot (ACPI-less reset of the VM).
    pub async fn restart_server(&self, uuid: &str) -> Result<ActionResult, Error> {
        self.server_action(uuid, ServerAction::Restart).await
    }

    /// `GET servers/{uuid}/runtime/`: `None` while the server is stopped.
    pub async fn server_runtime(&self, uuid: &str) -> Result<Option<ServerRuntime>, Error> {
        check_id("server", uuid)?;
        self.get_json(&["servers", uuid, "runtime"], &[]).await
    }

    // ---------------------------------------------------------------- drives

    pub async fn list_drives(&self) -> Result<Vec<Drive>, Error> {
        self.list_unique(&["drives", "detail"], &[]).await
    }

    pub async fn list_drives_filtered(&self, query: &[(&str, &str)]) -> Result<Vec<Drive>, Error> {
        self.list_unique(&["drives", "detail"], query).await
    }

    pub async fn get_drive(&self, uuid: &str) -> Result<Drive, Error> {
        check_id("drive", uuid)?;
        self.get_json(&["drives", uuid], &[]).await
    }

    /// Create one drive (status `creating`, then `unmounted`: use [`Client::wait_drive_status`]).
    pub async fn create_drive(&self, d: &DriveCreate) -> Result<Drive, Error> {
        self.create_one("drives", d).await
    }

    pub async fn update_drive(&self, d: &Drive) -> Result<Drive, Error> {
        check_id("drive", &d.uuid)?;
        self.put_json(&["drives", &d.uuid], d).await
    }

    /// Refused by the API (4xx) while the drive is mounted on a running server.
    pub async fn delete_drive(&self, uuid: &str) -> Result<(), Error> {
        check_id("drive", uuid)?;
        self.delete_at(&["drives", uuid], &[]).await
    }

    /// Clone a drive; the answer (202) is the new drive in `cloning_dst`. Not retried.
    pub async fn clone_drive(&self, uuid: &str, req: &DriveClone) -> Result<Drive, Error> {
        check_id("drive", uuid)?;
        let url = self.url(&["drives", uuid, "action"], &[("do", "clone")]);
        let ans: OneOrObjects<Drive> = self
            .post_json(&["drives", uuid, "action"], &[("do", "clone")], req)
            .await?;
        Self::first(ans, "POST", &url)
    }

    /// Resize: the API takes the full drive definition with the new `size` (202, `resizing`).
    pub async fn resize_drive(&self, drive: &Drive, new_size: u64) -> Result<Drive, Error> {
        check_id("drive", &drive.uuid)?;
        let mut body = drive.clone();
        body.size = new_size;
        let url = self.url(&["drives", &drive.uuid, "action"], &[("do", "resize")]);
        let ans: OneOrObjects<Drive> = self
            .post_json(
                &["drives", &drive.uuid, "action"],
                &[("do", "resize")],
                &body,
            )
            .await?;
        Self::first(ans, "POST", &url)
    }

    // ---------------------------------------------------------------- library drives

    /// Library drives matching `query` (e.g. `[("distribution", "Ubuntu"), ("version", "24.04")]`).
    pub async fn list_libdrives(&self, query: &[(&str, &str)]) -> Result<Vec<LibDrive>, Error> {
        self.list_unique(&["libdrives", "detail"], query).await
    }

    pub async fn get_libdrive(&self, uuid: &str) -> Result<LibDrive, Error> {
        check_id("library drive", uuid)?;
        self.get_json(&["libdrives", uuid], &[]).await
    }

    /// Clone a library drive into the account (202, new drive in `cloning_dst`). Not retried.
    pub async fn clone_libdrive(&self, uuid: &str, req: &DriveClone) -> Result<Drive, Error> {
        check_id("library drive", uuid)?;
        let url = self.url(&["libdrives", uuid, "action"], &[("do", "clone")]);
        let ans: OneOrObjects<Drive> = self
            .post_json(&["libdrives", uuid, "action"], &[("do", "clone")], req)
            .await?;
        Self::first(ans, "POST", &url)
    }

    // ---------------------------------------------------------------- ips, vlans, tags

    pub async fn list_ips(&self) -> Result<Vec<Ip>, Error> {
        self.list_unique(&["ips", "detail"], &[]).await
    }

    pub async fn list_vlans(&self) -> Result<Vec<Vlan>, Error> {
        self.list_unique(&["vlans", "detail"], &[]).await
    }

    /// One subscribed IP; its uuid is the address.
    pub async fn get_ip(&self, address: &str) -> Result<Ip, Error> {
        check_id("ip", address)?;
        self.get_json(&["ips", address], &[]).await
    }

    pub async fn get_vlan(&self, uuid: &str) -> Result<Vlan, Error> {
        check_id("vlan", uuid)?;
        self.get_json(&["vlans", uuid], &[]).await
    }

    pub async fn list_tags(&self) -> Result<Vec<Tag>, Error> {
        self.list_unique(&["tags", "detail"], &[]).await
    }

    pub async fn get_tag(&self, uuid: &str) -> Result<Tag, Error> {
        check_id("tag", uuid)?;
        self.get_json(&["tags", uuid], &[]).await
    }

    pub async fn create_tag(&self, t: &TagCreate) -> Result<Tag, Error> {
        self.create_one("tags", t).await
    }

    pub async fn update_tag(&self, t: &Tag) -> Result<Tag, Error> {
        check_id("tag", &t.uuid)?;
        self.put_json(&["tags", &t.uuid], t).await
    }

    pub async fn delete_tag(&self, uuid: &str) -> Result<(), Error> {
        check_id("tag", uuid)?;
        self.delete_at(&["tags", uuid], &[]).await
    }

    /// Servers carrying tag `uuid` (`GET tags/{uuid}/servers/`).
    pub async fn tag_servers(&self, uuid: &str) -> Result<Vec<Server>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "servers"], &[]).await
    }

    /// Drives carrying tag `uuid` (`GET tags/{uuid}/drives/`).
    pub async fn tag_drives(&self, uuid: &str) -> Result<Vec<Drive>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "drives"], &[]).await
    }

    /// IPs carrying tag `uuid` (`GET tags/{uuid}/ips/`).
    pub async fn tag_ips(&self, uuid: &str) -> Result<Vec<Ip>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "ips"], &[]).await
    }

    /// VLANs carrying tag `uuid` (`GET tags/{uuid}/vlans/`).
    pub async fn tag_vlans(&self, uuid: &str) -> Result<Vec<Vlan>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "vlans"], &[]).await
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
    fn decode_messages_drop_quoted_values() {
        assert_eq!(
            scrub_quoted(
                r#"invalid type: string "{\"meta\":{\"t\":\"secret\"}}", expected struct Server at line 1 column 9"#
            ),
            "invalid type: string \"…\", expected struct Server at line 1 column 9"
        );
        assert_eq!(scrub_quoted("missing field `uuid`"), "missing field `uuid`");
        // an unterminated quote drops the rest
        assert_eq!(scrub_quoted(r#"x "abc"#), "x \"…");
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
