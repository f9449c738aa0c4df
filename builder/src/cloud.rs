//! imgbuild's view of the CloudSigma API: a thin adapter over `cloudsigma_api::client::Client`
//! that adds what the builder needs on top:
//! - instrumentation (time inside API calls, time sleeping between polls) for the
//!   "builder's own time" figure of the bench and the manifest;
//! - POSTs refused with 429 are repeated (a 429 is answered before the request runs, so even a
//!   create is safe to send again; the shared client never repeats a POST on its own);
//! - waiters whose polling sleeps are measured.

pub use cloudsigma_api::client::{Auth, Config, ConfigOverrides};
use cloudsigma_api::client::{Client, Error};
use cloudsigma_api::{
    Drive, DriveClone, DriveStatus, LibDrive, Server, ServerCreate, ServerStatus, Tag, TagCreate,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(transparent)]
    Api(Box<Error>),
    #[error(
        "timed out after {waited:.1?} waiting for {what} to become {want} (last status: {last})"
    )]
    Timeout {
        what: String,
        want: String,
        last: String,
        waited: Duration,
    },
}

impl From<Error> for CloudError {
    fn from(e: Error) -> Self {
        CloudError::Api(Box::new(e))
    }
}

impl CloudError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Api(e) => e.status(),
            CloudError::Timeout { .. } => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, CloudError::Api(e) if e.is_not_found())
    }
}

/// Counters the bench and the manifest read.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time inside API calls, including the client's retry sleeps (µs).
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
    client: Client,
    pub metrics: Arc<Metrics>,
}

impl Cloud {
    pub fn new(cfg: Config) -> Result<Cloud, CloudError> {
        Ok(Cloud {
            client: Client::new(cfg)?,
            metrics: Arc::default(),
        })
    }

    /// Flags > environment > config file; no endpoint at all is an error (imgbuild never guesses
    /// a region: a build costs money).
    pub fn resolve(o: &ConfigOverrides) -> Result<Cloud, CloudError> {
        Cloud::new(Config::resolve(o)?)
    }

    pub fn base_url(&self) -> &url::Url {
        self.client.base_url()
    }

    /// HTTP requests sent so far (every attempt counts).
    pub fn calls(&self) -> u64 {
        self.client.calls()
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, CloudError> {
        let s = Instant::now();
        let r = f.await;
        self.metrics
            .api_us
            .fetch_add(s.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(r?)
    }

    /// A POST, repeated only when refused with 429 (honouring Retry-After).
    async fn post<T, F: std::future::Future<Output = Result<T, Error>>>(
        &self,
        mut f: impl FnMut() -> F,
    ) -> Result<T, CloudError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.timed(f()).await {
                Err(CloudError::Api(e)) if e.status() == Some(429) && attempt < 8 => {
                    let d = e
                        .retry_after()
                        .unwrap_or(Duration::from_millis(500))
                        .min(Duration::from_secs(30));
                    let s = Instant::now();
                    tokio::time::sleep(d).await;
                    self.metrics
                        .api_us
                        .fetch_add(s.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                r => return r,
            }
        }
    }

    pub async fn list_libdrives(&self, q: &[(&str, &str)]) -> Result<Vec<LibDrive>, CloudError> {
        self.timed(self.client.list_libdrives(q)).await
    }
    pub async fn list_drives(&self, q: &[(&str, &str)]) -> Result<Vec<Drive>, CloudError> {
        self.timed(self.client.list_drives_filtered(q)).await
    }
    pub async fn list_servers(&self, q: &[(&str, &str)]) -> Result<Vec<Server>, CloudError> {
        self.timed(self.client.list_servers_filtered(q)).await
    }
    pub async fn list_tags(&self) -> Result<Vec<Tag>, CloudError> {
        self.timed(self.client.list_tags()).await
    }
    pub async fn get_drive(&self, uuid: &str) -> Result<Drive, CloudError> {
        self.timed(self.client.get_drive(uuid)).await
    }
    pub async fn get_server(&self, uuid: &str) -> Result<Server, CloudError> {
        self.timed(self.client.get_server(uuid)).await
    }
    pub async fn clone_libdrive(&self, uuid: &str, req: &DriveClone) -> Result<Drive, CloudError> {
        self.post(|| self.client.clone_libdrive(uuid, req)).await
    }
    /// Resize with the full definition (so name, meta and tags in `d` are applied too).
    pub async fn resize_drive(&self, d: &Drive, size: u64) -> Result<Drive, CloudError> {
        self.post(|| self.client.resize_drive(d, size)).await
    }
    pub async fn update_drive(&self, d: &Drive) -> Result<Drive, CloudError> {
        self.timed(self.client.update_drive(d)).await
    }
    pub async fn delete_drive(&self, uuid: &str) -> Result<(), CloudError> {
        self.timed(self.client.delete_drive(uuid)).await
    }
    pub async fn create_server(&self, s: &ServerCreate) -> Result<Server, CloudError> {
        self.post(|| self.client.create_server(s)).await
    }
    pub async fn server_action(&self, uuid: &str, action: &str) -> Result<(), CloudError> {
        self.post(|| self.client.server_action(uuid, action))
            .await
            .map(|_| ())
    }
    /// Delete a server and nothing else (no `recurse`: the drive is the product).
    pub async fn delete_server(&self, uuid: &str) -> Result<(), CloudError> {
        self.timed(self.client.delete_server(uuid, None)).await
    }
    pub async fn create_tag(&self, name: &str) -> Result<Tag, CloudError> {
        let t = TagCreate {
            name: name.to_string(),
            ..Default::default()
        };
        self.post(|| self.client.create_tag(&t)).await
    }
    pub async fn delete_tag(&self, uuid: &str) -> Result<(), CloudError> {
        self.timed(self.client.delete_tag(uuid)).await
    }

    /// Poll with exponential backoff (first poll at once) until `done`, or the deadline.
    async fn wait<T, F>(
        &self,
        what: String,
        want: String,
        timeout: Duration,
        mut fetch: impl FnMut() -> F,
        status: impl Fn(&T) -> String,
        done: impl Fn(&T) -> bool,
    ) -> Result<T, CloudError>
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
                return Err(CloudError::Timeout {
                    what,
                    want,
                    last: status(&v),
                    waited: start.elapsed(),
                });
            }
            let s = Instant::now();
            tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
            self.metrics
                .poll_us
                .fetch_add(s.elapsed().as_micros() as u64, Ordering::Relaxed);
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    pub async fn wait_drive(
        &self,
        uuid: &str,
        want: DriveStatus,
        timeout: Duration,
    ) -> Result<Drive, CloudError> {
        self.wait(
            format!("drive {uuid}"),
            want.to_string(),
            timeout,
            || self.get_drive(uuid),
            |d: &Drive| d.status.to_string(),
            |d| d.status == want,
        )
        .await
    }

    pub async fn wait_server(
        &self,
        uuid: &str,
        want: ServerStatus,
        timeout: Duration,
    ) -> Result<Server, CloudError> {
        self.wait(
            format!("server {uuid}"),
            want.to_string(),
            timeout,
            || self.get_server(uuid),
            |s: &Server| s.status.to_string(),
            |s| s.status == want,
        )
        .await
    }
}
