//! Waiters: poll an object until it reaches a status, backing off exponentially (no fixed sleeps)
//! up to a deadline.

use super::{CallEvent, CallObserver, Client, Error};
use crate::models::{Drive, DriveStatus, Server, ServerStatus};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Poll interval schedule of the waiters: `initial`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

impl WaitPolicy {
    /// The poll interval after `polls` unsuccessful polls (1-based).
    pub fn interval(&self, polls: u32) -> Duration {
        let exp = polls.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// Generic polling loop. `fetch` errors end the wait at once (they were already retried by the
/// client if retryable; a 404 means the object is gone and waiting longer cannot help).
#[cfg(test)]
pub(crate) async fn poll_until<T, F, Fut>(
    policy: WaitPolicy,
    timeout: Duration,
    what: String,
    want: String,
    fetch: F,
    status_of: impl Fn(&T) -> String,
    done: impl Fn(&T) -> bool,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    poll_until_observed(policy, None, timeout, what, want, fetch, status_of, done).await
}

/// [`poll_until`] reporting each sleep between polls to `observer`.
#[allow(clippy::too_many_arguments)] // internal; every argument is a distinct part of a wait
pub(crate) async fn poll_until_observed<T, F, Fut>(
    policy: WaitPolicy,
    observer: Option<&dyn CallObserver>,
    timeout: Duration,
    what: String,
    want: String,
    mut fetch: F,
    status_of: impl Fn(&T) -> String,
    done: impl Fn(&T) -> bool,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut polls = 0u32;
    loop {
        let obj = fetch().await?;
        polls += 1;
        if done(&obj) {
            tracing::debug!(%what, %want, polls, elapsed_ms = started.elapsed().as_millis() as u64, "wait done");
            return Ok(obj);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what,
                want,
                last: status_of(&obj),
                waited: started.elapsed(),
            });
        }
        // Never sleep past the deadline: the last poll happens right at it.
        let sleep = policy.interval(polls).min(deadline - now);
        let slept = Instant::now();
        tokio::time::sleep(sleep).await;
        if let Some(o) = observer {
            o.observe(&CallEvent::PollSleep {
                what: &what,
                slept: slept.elapsed(),
            });
        }
    }
}

/// An object the waiters poll: how to fetch it again, and its status for a timeout message.
trait Polled: Sized {
    /// `drive`, `server`: names the object in messages.
    const KIND: &'static str;
    fn fetch<'a>(
        c: &'a Client,
        uuid: &'a str,
    ) -> impl Future<Output = Result<Self, Error>> + Send + 'a;
    fn status_text(&self) -> String;
}

/// `Polled` for drives and servers: the same three items, each with its own GET.
macro_rules! polled {
    ($t:ty, $kind:literal, $get:ident) => {
        impl Polled for $t {
            const KIND: &'static str = $kind;
            fn fetch<'a>(
                c: &'a Client,
                uuid: &'a str,
            ) -> impl Future<Output = Result<Self, Error>> + Send + 'a {
                c.$get(uuid)
            }
            fn status_text(&self) -> String {
                self.status.to_string()
            }
        }
    };
}
polled!(Drive, "drive", get_drive);
polled!(Server, "server", get_server);

impl Client {
    /// Poll `GET /drives/{uuid}/` until its status is `want` (e.g. `unmounted` after create or
    /// clone), or fail with [`Error::Timeout`] naming the drive, `want` and the last status seen.
    pub async fn wait_drive_status(
        &self,
        uuid: &str,
        want: DriveStatus,
        timeout: Duration,
    ) -> Result<Drive, Error> {
        self.wait_drive_until(uuid, &want.to_string(), timeout, |d| d.status == want)
            .await
    }

    /// Poll `GET /servers/{uuid}/` until its status is `want` (`running`, `stopped`), or fail with
    /// [`Error::Timeout`].
    pub async fn wait_server_status(
        &self,
        uuid: &str,
        want: ServerStatus,
        timeout: Duration,
    ) -> Result<Server, Error> {
        self.wait_server_until(uuid, &want.to_string(), timeout, |s| s.status == want)
            .await
    }

    /// Poll `GET /drives/{uuid}/` until `done(drive)`; `want` describes the condition in the
    /// [`Error::Timeout`] message.
    pub async fn wait_drive_until(
        &self,
        uuid: &str,
        want: &str,
        timeout: Duration,
        done: impl Fn(&Drive) -> bool,
    ) -> Result<Drive, Error> {
        self.wait_until(uuid, timeout, want, done).await
    }

    /// Poll `GET /servers/{uuid}/` until `done(server)` (e.g. running *and* with a runtime IP);
    /// `want` describes the condition in the [`Error::Timeout`] message.
    pub async fn wait_server_until(
        &self,
        uuid: &str,
        want: &str,
        timeout: Duration,
        done: impl Fn(&Server) -> bool,
    ) -> Result<Server, Error> {
        self.wait_until(uuid, timeout, want, done).await
    }

    /// The one waiter behind the typed ones: poll the object `uuid` of type `T` with this
    /// client's policy and observer until `done`.
    async fn wait_until<T: Polled>(
        &self,
        uuid: &str,
        timeout: Duration,
        want: &str,
        done: impl Fn(&T) -> bool,
    ) -> Result<T, Error> {
        poll_until_observed(
            self.wait_policy,
            self.observer.as_deref(),
            timeout,
            format!("{} {uuid}", T::KIND),
            want.to_string(),
            || T::fetch(self, uuid),
            T::status_text,
            done,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_doubles_to_cap() {
        let p = WaitPolicy::default();
        let v: Vec<u128> = (1..=7).map(|n| p.interval(n).as_millis()).collect();
        assert_eq!(v, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(p.interval(u32::MAX), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn poll_times_out_with_last_status() {
        let mut n = 0;
        let r: Result<u32, Error> = poll_until(
            WaitPolicy::default(),
            Duration::from_secs(3),
            "drive d1".into(),
            "unmounted".into(),
            || {
                n += 1;
                let v = n;
                async move { Ok(v) }
            },
            |_| "creating".into(),
            |_| false,
        )
        .await;
        match r {
            Err(Error::Timeout {
                what,
                want,
                last,
                waited,
            }) => {
                assert_eq!(
                    (what.as_str(), want.as_str(), last.as_str()),
                    ("drive d1", "unmounted", "creating")
                );
                assert!(
                    waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
                    "{waited:?}"
                );
            }
            other => panic!("expected timeout, got {other:?}"),
        }
        // 200+400+800+1600(clipped to 1000) => 5 polls within 3 s, not a tight loop
        assert_eq!(n, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_stops_on_error() {
        let mut n = 0;
        let r: Result<u32, Error> = poll_until(
            WaitPolicy::default(),
            Duration::from_secs(60),
            "server s".into(),
            "running".into(),
            || {
                n += 1;
                let v = n;
                async move {
                    if v < 3 {
                        Ok(v)
                    } else {
                        Err(super::super::error::api_error(
                            404, "GET", "/x/", b"", None, None,
                        ))
                    }
                }
            },
            |_| "starting".into(),
            |_| false,
        )
        .await;
        assert!(r.unwrap_err().is_not_found());
        assert_eq!(n, 3);
    }
}
