//! The slice of CloudSigma API 2.0 imgbuild uses, with retries and instrumentation.
//!
//! Why not `cloudsigma_api::client`: when this crate was written that client was not in the tree
//! yet (see docs/imgbuild.md "Implementation notes"); this module keeps the same rules (retry
//! idempotent GET/PUT/DELETE on 429/5xx/connection errors with jittered exponential backoff,
//! honour Retry-After, never retry POST creates/actions blindly) so swapping it in is mechanical.

use cloudsigma_api::{Drive, DriveStatus, LibDrive, Objects, Server, ServerStatus, Tag};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("{method} {path}: HTTP {status}: {message}")]
    Api { method: String, path: String, status: u16, message: String },
    #[error("{method} {path}: {message}")]
    Transport { method: String, path: String, message: String },
    #[error("{method} {path}: cannot decode the answer: {message}")]
    Decode { method: String, path: String, message: String },
    #[error("timed out after {waited:?} waiting for {what} to become {want} (last status: {last})")]
    Timeout { what: String, want: String, last: String, waited: Duration },
    #[error("configuration: {0}")]
    Config(String),
}

impl CloudError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Credentials. `Debug` never shows secrets.
#[derive(Clone)]
pub enum Auth {
    Basic { username: String, password: String },
    Bearer(String),
}
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Auth::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub base_url: url::Url,
    pub auth: Auth,
    pub timeout: Duration,
    pub max_retries: u32,
}

/// Flag values; `None` falls back to the environment, then the config file.
#[derive(Debug, Default, Clone)]
pub struct ConfigOverrides {
    pub api_url: Option<String>,
    pub region: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct FileConfig {
    api_url: Option<String>,
    region: Option<String>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

impl CloudConfig {
    /// Flags override env (`CLOUDSIGMA_API_URL`, `CLOUDSIGMA_REGION`, `CLOUDSIGMA_USERNAME`,
    /// `CLOUDSIGMA_PASSWORD`, `CLOUDSIGMA_TOKEN`) override the config file
    /// (`CLOUDSIGMA_CONFIG` or `~/.config/cloudsigma/config.toml`). No endpoint at all is an error:
    /// imgbuild never guesses a region, since a build costs money.
    pub fn resolve(o: &ConfigOverrides) -> Result<CloudConfig, CloudError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file_path = o
            .config_file
            .clone()
            .or_else(|| env("CLOUDSIGMA_CONFIG").map(PathBuf::from))
            .or_else(|| dirs::config_dir().map(|d| d.join("cloudsigma/config.toml")));
        let file: FileConfig = match &file_path {
            Some(p) if p.is_file() => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| CloudError::Config(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&t).map_err(|e| CloudError::Config(format!("{}: {e}", p.display())))?
            }
            Some(p) if o.config_file.is_some() => {
                return Err(CloudError::Config(format!("config file {} does not exist", p.display())))
            }
            _ => FileConfig::default(),
        };
        let api_url = o.api_url.clone().or_else(|| env("CLOUDSIGMA_API_URL")).or(file.api_url);
        let region = o.region.clone().or_else(|| env("CLOUDSIGMA_REGION")).or(file.region);
        let base = match (api_url, region) {
            (Some(u), _) => u,
            (None, Some(r)) => {
                if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(CloudError::Config(format!("region {r:?} is not a CloudSigma location name (e.g. zrh)")));
                }
                format!("https://{r}.cloudsigma.com/api/2.0/")
            }
            (None, None) => {
                return Err(CloudError::Config(
                    "no cloud configured: pass --region R or --api-url URL (or set CLOUDSIGMA_REGION / CLOUDSIGMA_API_URL, or a config file)".into(),
                ))
            }
        };
        let mut base = if base.ends_with('/') { base } else { format!("{base}/") };
        if !base.contains("/api/2.0/") {
            base.push_str("api/2.0/");
        }
        let base_url = url::Url::parse(&base).map_err(|e| CloudError::Config(format!("API URL {base:?}: {e}")))?;
        let token = o.token.clone().or_else(|| env("CLOUDSIGMA_TOKEN")).or(file.token);
        let username = o.username.clone().or_else(|| env("CLOUDSIGMA_USERNAME")).or(file.username);
        let password = o.password.clone().or_else(|| env("CLOUDSIGMA_PASSWORD")).or(file.password);
        let auth = match (token, username, password) {
            (Some(t), _, _) => Auth::Bearer(t),
            (None, Some(u), Some(p)) => Auth::Basic { username: u, password: p },
            (None, Some(_), None) => {
                return Err(CloudError::Config("username given but no password: set CLOUDSIGMA_PASSWORD (or use --password-from-env VAR)".into()))
            }
            _ => {
                return Err(CloudError::Config(
                    "no credentials: set CLOUDSIGMA_USERNAME and CLOUDSIGMA_PASSWORD, or CLOUDSIGMA_TOKEN".into(),
                ))
            }
        };
        Ok(CloudConfig { base_url, auth, timeout: Duration::from_secs(60), max_retries: 6 })
    }
}

/// Counters the bench and the progress summary read.
#[derive(Debug, Default)]
pub struct Metrics {
    pub calls: AtomicU64,
    /// Time inside HTTP requests, including retry sleeps (µs).
    pub api_us: AtomicU64,
    /// Time sleeping between polls in waiters (µs).
    pub poll_us: AtomicU64,
}
impl Metrics {
    pub fn api_time(&self) -> Duration {
        Duration::from_micros(self.api_us.load(Ordering::Relaxed))
    }
    pub fn poll_time(&self) -> Duration {
        Duration::from_micros(self.poll_us.load(Ordering::Relaxed))
    }
}

#[derive(Clone)]
pub struct Cloud {
    http: reqwest::Client,
    cfg: Arc<CloudConfig>,
    pub metrics: Arc<Metrics>,
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    let f: f64 = rand::thread_rng().gen_range(0.5..1.0);
    d.mul_f64(f)
}

impl Cloud {
    pub fn new(cfg: CloudConfig) -> Result<Cloud, CloudError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Config(format!("HTTP client: {e}")))?;
        Ok(Cloud { http, cfg: Arc::new(cfg), metrics: Arc::new(Metrics::default()) })
    }

    pub fn base_url(&self) -> &url::Url {
        &self.cfg.base_url
    }

    async fn request<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, query: &[(&str, &str)], body: Option<&Value>) -> Result<T, CloudError> {
        let started = Instant::now();
        let r = self.request_inner(method, path, query, body).await;
        self.metrics.api_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }

    async fn request_inner<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, query: &[(&str, &str)], body: Option<&Value>) -> Result<T, CloudError> {
        let url = self.cfg.base_url.join(path).map_err(|e| CloudError::Config(format!("path {path}: {e}")))?;
        // POST creates and actions are not idempotent: a retry after a lost answer could create a
        // second server. They get exactly one attempt; callers decide.
        let idempotent = method != reqwest::Method::POST;
        let mut attempt = 0u32;
        let mut delay = Duration::from_millis(100);
        loop {
            attempt += 1;
            self.metrics.calls.fetch_add(1, Ordering::Relaxed);
            let mut rb = self.http.request(method.clone(), url.clone()).query(query);
            rb = match &self.cfg.auth {
                Auth::Basic { username, password } => rb.basic_auth(username, Some(password)),
                Auth::Bearer(t) => rb.bearer_auth(t),
            };
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let res = rb.send().await;
            let retry_wait = match res {
                Err(e) => {
                    let err = CloudError::Transport { method: method.to_string(), path: path.into(), message: e.to_string() };
                    if !idempotent || attempt > self.cfg.max_retries || !(e.is_connect() || e.is_timeout() || e.is_request()) {
                        return Err(err);
                    }
                    None
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if resp.status().is_success() {
                        let bytes = resp.bytes().await.map_err(|e| CloudError::Transport { method: method.to_string(), path: path.into(), message: e.to_string() })?;
                        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
                        return serde_json::from_slice(bytes).map_err(|e| CloudError::Decode { method: method.to_string(), path: path.into(), message: e.to_string() });
                    }
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(30)));
                    let text = resp.text().await.unwrap_or_default();
                    let message = match serde_json::from_str::<Vec<cloudsigma_api::ApiErrorEntry>>(&text) {
                        Ok(v) => v.iter().map(|e| format!("{} ({})", e.error_message, e.error_type)).collect::<Vec<_>>().join("; "),
                        Err(_) => text.chars().take(300).collect(),
                    };
                    let err = CloudError::Api { method: method.to_string(), path: path.into(), status, message };
                    let retryable = status == 429 || status >= 500;
                    // A 429 refused the request before it ran, so even a POST is safe to repeat.
                    if !(retryable && (idempotent || status == 429)) || attempt > self.cfg.max_retries {
                        return Err(err);
                    }
                    retry_after
                }
            };
            let wait = retry_wait.unwrap_or_else(|| jitter(delay));
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, CloudError> {
        self.request(reqwest::Method::GET, path, query, None).await
    }

    fn first<T>(path: &str, o: Objects<T>) -> Result<T, CloudError> {
        o.objects.into_iter().next().ok_or_else(|| CloudError::Decode { method: "POST".into(), path: path.into(), message: "empty objects list".into() })
    }

    async fn list<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<T>, CloudError> {
        let mut q: Vec<(&str, &str)> = query.to_vec();
        q.push(("limit", "0"));
        let r: Objects<T> = self.get(path, &q).await?;
        Ok(r.objects)
    }

    pub async fn list_libdrives(&self, query: &[(&str, &str)]) -> Result<Vec<LibDrive>, CloudError> {
        self.list("libdrives/", query).await
    }
    pub async fn list_drives(&self, query: &[(&str, &str)]) -> Result<Vec<Drive>, CloudError> {
        self.list("drives/detail/", query).await
    }
    pub async fn list_servers(&self, query: &[(&str, &str)]) -> Result<Vec<Server>, CloudError> {
        self.list("servers/detail/", query).await
    }
    pub async fn list_tags(&self) -> Result<Vec<Tag>, CloudError> {
        self.list("tags/detail/", &[]).await
    }
    pub async fn get_drive(&self, uuid: &str) -> Result<Drive, CloudError> {
        self.get(&format!("drives/{uuid}/"), &[]).await
    }
    pub async fn get_server(&self, uuid: &str) -> Result<Server, CloudError> {
        self.get(&format!("servers/{uuid}/"), &[]).await
    }
    pub async fn clone_libdrive(&self, uuid: &str, body: &Value) -> Result<Drive, CloudError> {
        let p = format!("libdrives/{uuid}/action/");
        let o: Objects<Drive> = self.request(reqwest::Method::POST, &p, &[("do", "clone")], Some(body)).await?;
        Self::first(&p, o)
    }
    pub async fn resize_drive(&self, uuid: &str, body: &Value) -> Result<Drive, CloudError> {
        let p = format!("drives/{uuid}/action/");
        let v: Value = self.request(reqwest::Method::POST, &p, &[("do", "resize")], Some(body)).await?;
        // the answer is the drive, or an objects envelope: accept both
        let v = match v.get("objects").and_then(|o| o.get(0)) {
            Some(d) => d.clone(),
            None => v,
        };
        serde_json::from_value(v).map_err(|e| CloudError::Decode { method: "POST".into(), path: p, message: e.to_string() })
    }
    pub async fn update_drive(&self, uuid: &str, body: &Value) -> Result<Drive, CloudError> {
        self.request(reqwest::Method::PUT, &format!("drives/{uuid}/"), &[], Some(body)).await
    }
    pub async fn delete_drive(&self, uuid: &str) -> Result<(), CloudError> {
        let _: Value = self.request(reqwest::Method::DELETE, &format!("drives/{uuid}/"), &[], None).await?;
        Ok(())
    }
    pub async fn create_server(&self, body: &Value) -> Result<Server, CloudError> {
        let o: Objects<Server> = self.request(reqwest::Method::POST, "servers/", &[], Some(&serde_json::json!({"objects": [body]}))).await?;
        Self::first("servers/", o)
    }
    pub async fn server_action(&self, uuid: &str, action: &str) -> Result<(), CloudError> {
        let _: Value = self.request(reqwest::Method::POST, &format!("servers/{uuid}/action/"), &[("do", action)], Some(&serde_json::json!({}))).await?;
        Ok(())
    }
    pub async fn delete_server(&self, uuid: &str) -> Result<(), CloudError> {
        let _: Value = self.request(reqwest::Method::DELETE, &format!("servers/{uuid}/"), &[], None).await?;
        Ok(())
    }
    /// Create several tags in one request.
    pub async fn create_tags(&self, names: &[String]) -> Result<Vec<Tag>, CloudError> {
        let objs: Vec<Value> = names.iter().map(|n| serde_json::json!({"name": n})).collect();
        let o: Objects<Tag> = self.request(reqwest::Method::POST, "tags/", &[], Some(&serde_json::json!({"objects": objs}))).await?;
        Ok(o.objects)
    }
    pub async fn delete_tag(&self, uuid: &str) -> Result<(), CloudError> {
        let _: Value = self.request(reqwest::Method::DELETE, &format!("tags/{uuid}/"), &[], None).await?;
        Ok(())
    }

    /// Poll with exponential backoff (first poll immediately) until `done` says so, a status is
    /// a dead end (`fail`), or the deadline passes.
    async fn wait<T, F>(&self, what: &str, want: &str, timeout: Duration, mut fetch: impl FnMut() -> F, status: impl Fn(&T) -> String, done: impl Fn(&T) -> bool) -> Result<T, CloudError>
    where
        F: std::future::Future<Output = Result<T, CloudError>>,
    {
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let v = fetch().await?;
            if done(&v) {
                return Ok(v);
            }
            if start.elapsed() >= timeout {
                return Err(CloudError::Timeout { what: what.into(), want: want.into(), last: status(&v), waited: start.elapsed() });
            }
            let s = Instant::now();
            tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
            self.metrics.poll_us.fetch_add(s.elapsed().as_micros() as u64, Ordering::Relaxed);
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    pub async fn wait_drive(&self, uuid: &str, want: DriveStatus, timeout: Duration) -> Result<Drive, CloudError> {
        self.wait(&format!("drive {uuid}"), &want.to_string(), timeout, || self.get_drive(uuid), |d: &Drive| d.status.to_string(), |d| d.status == want).await
    }

    pub async fn wait_server(&self, uuid: &str, want: ServerStatus, timeout: Duration) -> Result<Server, CloudError> {
        self.wait(&format!("server {uuid}"), &want.to_string(), timeout, || self.get_server(uuid), |s: &Server| s.status.to_string(), |s| s.status == want).await
    }
}
