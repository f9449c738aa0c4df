//! imgbuild's API client: the shared `cloudsigma_api::client::Client`, configured for builds,
//! plus the metrics the bench and the manifest read. All call policy — retries of idempotent
//! calls, the opt-in repetition of POSTs refused with 429, waiting with backoff — lives in the
//! api crate; this module only configures and observes it.

pub use cloudsigma_api::client::{Auth, Config, ConfigOverrides};
use cloudsigma_api::client::{CallEvent, CallObserver, Client, Error, WaitPolicy};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// API errors, boxed: `Error` is large and travels through every `Result` of the pipeline.
pub type CloudError = Box<Error>;

/// Counters the bench and the manifest read, fed by the client's [`CallObserver`] hook.
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

impl CallObserver for Metrics {
    fn observe(&self, e: &CallEvent<'_>) {
        let (counter, d) = match *e {
            CallEvent::Attempt { elapsed, .. } => (&self.api_us, elapsed),
            CallEvent::RetrySleep { slept, .. } => (&self.api_us, slept),
            CallEvent::PollSleep { slept, .. } => (&self.poll_us, slept),
            _ => return,
        };
        counter.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// imgbuild's poll schedule: first re-poll after 20 ms (the emulator's transitions are instant,
/// and a build waits on six of them), doubling to 3 s (CloudSigma's take seconds to minutes).
pub const WAIT_POLICY: WaitPolicy = WaitPolicy {
    initial: Duration::from_millis(20),
    max: Duration::from_secs(3),
};

/// The client a build uses (derefs to [`Client`]) and its metrics.
#[derive(Clone)]
pub struct Cloud {
    client: Client,
    pub metrics: Arc<Metrics>,
}

impl Cloud {
    pub fn new(cfg: Config) -> Result<Cloud, CloudError> {
        let metrics = Arc::new(Metrics::default());
        let client = Client::new(cfg)?
            .with_observer(metrics.clone())
            // a 429 is answered before the request runs: even a create is safe to send again
            .with_post_retry_on_429(true)
            .with_wait_policy(WAIT_POLICY);
        Ok(Cloud { client, metrics })
    }

    /// Flags > environment > config file; no endpoint at all is an error (imgbuild never guesses
    /// a region: a build costs money).
    pub fn resolve(o: &ConfigOverrides) -> Result<Cloud, CloudError> {
        Cloud::new(Config::resolve(o)?)
    }
}

impl std::ops::Deref for Cloud {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_split_api_and_poll_time() {
        let m = Metrics::default();
        let ms = Duration::from_millis;
        m.observe(&CallEvent::Attempt {
            method: "GET",
            path: "/x/",
            status: Some(503),
            elapsed: ms(3),
            attempt: 1,
        });
        m.observe(&CallEvent::RetrySleep {
            method: "GET",
            path: "/x/",
            slept: ms(200),
        });
        m.observe(&CallEvent::PollSleep {
            what: "drive d",
            slept: ms(40),
        });
        assert_eq!(m.api_time(), ms(203));
        assert_eq!(m.poll_time(), ms(40));
    }
}
