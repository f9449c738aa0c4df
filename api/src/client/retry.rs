//! Retry policy: exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS
//! architecture blog): sleep a uniform random time in `[0, min(max_delay, base * 2^(n-1))]`, so
//! many clients refused at once do not retry in lockstep.

use super::Error;
use rand::Rng;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How idempotent requests (GET, PUT, DELETE) are retried on 429, 5xx and connection errors.
/// POSTs (creates, actions) are never retried automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = no retries).
    pub max_attempts: u32,
    /// Ceiling of the first backoff.
    pub base_delay: Duration,
    /// Cap of the backoff ceiling.
    pub max_delay: Duration,
    /// The cap of `Retry-After`. A longer one is not waited for inside the call (the error is
    /// returned at once, so a caller is never stuck for minutes inside one call), and the error's
    /// [`super::Error::retry_after`] says this cap instead of what the server asked (logged as a
    /// warning), so a caller that schedules its own retry from it waits at most this long —
    /// whether the server sent `86400` or an HTTP-date a day ahead. Default 60 s: CloudSigma's
    /// rate limits are per minute (10,000 requests/min, 1,000 DELETEs/min [V docs]), so one
    /// window clears any refusal it documents; a longer ask comes from a proxy, a maintenance
    /// page or a skewed clock, and retrying once a minute costs one request of that quota.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }
    }

    /// Upper bound of the sleep after failed attempt number `attempt` (1-based).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let d = self.base_delay.saturating_mul(1u32 << exp);
        d.min(self.max_delay)
    }

    /// The sleep after failed attempt `attempt`: full jitter below the ceiling, but never less than
    /// the server's `Retry-After`. `None` = do not retry (that Retry-After exceeds our limit).
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let ceiling = self.backoff_ceiling(attempt);
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rng.gen_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64))
        };
        match retry_after {
            Some(ra) if ra > self.max_retry_after => None,
            Some(ra) => Some(jittered.max(ra)),
            None => Some(jittered),
        }
    }
}

/// What one try of a retried operation came to.
pub(crate) enum Try<T> {
    /// Succeeded.
    Done(T),
    /// Failed in a way worth another try (after the backoff), if any are left.
    Again(Error),
    /// Failed for good: returned as it is.
    Stop(Error),
}

impl RetryPolicy {
    /// Repeat a whole *idempotent* operation (GETs, PUTs, DELETEs — never a create or an action)
    /// while `retry_if` accepts its error, sleeping this policy's backoff between tries, at most
    /// `max_attempts` tries. For conditions the client does not treat as transient itself, e.g.
    /// a 403/409 while a drive or server is still changing state during cleanup; the client's
    /// own retries of 429/5xx happen inside each try.
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        retry_if: impl Fn(&Error) -> bool,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let retry_if = &retry_if;
        self.retry(
            None,
            |_| {
                let fut = op();
                async move {
                    match fut.await {
                        Ok(v) => Try::Done(v),
                        Err(e) if retry_if(&e) => Try::Again(e),
                        Err(e) => Try::Stop(e),
                    }
                }
            },
            |_, _, _| {},
            |_| {},
        )
        .await
    }

    /// The one retry loop of the crate: the client's requests, [`RetryPolicy::run`] and
    /// `ensure_server_stopped` all go through it. `try_once(attempt)` (1-based) decides what a
    /// failure is worth ([`Try`]); this loop only counts tries, computes the sleep
    /// ([`RetryPolicy::delay`]: backoff, `Retry-After` floor) and never sleeps past `deadline`
    /// (at the deadline the last error is returned). `before_sleep(attempt, delay, error)` and
    /// `after_sleep(slept)` let the caller log and observe.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        deadline: Option<Instant>,
        mut try_once: F,
        before_sleep: impl Fn(u32, Duration, &Error),
        after_sleep: impl Fn(Duration),
    ) -> Result<T, Error>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Try<T>>,
    {
        let max_attempts = self.max_attempts.max(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match try_once(attempt).await {
                Try::Done(v) => return Ok(v),
                Try::Stop(e) => return Err(e),
                Try::Again(e) => e,
            };
            if attempt >= max_attempts {
                return Err(e);
            }
            // The generator is not Send: keep it out of the await below.
            let delay = self.delay(attempt, e.retry_after(), &mut rand::thread_rng());
            let Some(mut d) = delay else {
                return Err(e);
            };
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                d = d.min(left);
            }
            before_sleep(attempt, d, &e);
            let slept = std::time::Instant::now();
            tokio::time::sleep(d).await;
            after_sleep(slept.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn ceiling_doubles_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        };
        let c: Vec<u128> = (1..=6).map(|a| p.backoff_ceiling(a).as_millis()).collect();
        assert_eq!(c, vec![100, 200, 400, 800, 1000, 1000]);
        // huge attempt numbers do not overflow
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_within_bounds_and_spread() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = p.delay(3, None, &mut rng).unwrap();
            assert!(d <= p.backoff_ceiling(3));
            seen.insert(d.as_millis() / 50);
        }
        // full jitter spreads over the whole range, not one value
        assert!(seen.len() > 5, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn run_repeats_only_accepted_errors_up_to_the_limit() {
        use super::super::error::api_error;
        let p = RetryPolicy {
            max_attempts: 4,
            ..Default::default()
        };
        // 409 accepted: tried 4 times, then the last error
        let mut n = 0;
        let r: Result<(), _> = p
            .run(
                || {
                    n += 1;
                    async { Err(api_error(409, "DELETE", "/d/", b"", None, None)) }
                },
                |e| e.status() == Some(409),
            )
            .await;
        assert_eq!(r.unwrap_err().status(), Some(409));
        assert_eq!(n, 4);
        // not accepted: tried once
        let mut n = 0;
        let r: Result<(), _> = p
            .run(
                || {
                    n += 1;
                    async { Err(api_error(404, "GET", "/d/", b"", None, None)) }
                },
                |e| e.status() == Some(409),
            )
            .await;
        assert!(r.unwrap_err().is_not_found());
        assert_eq!(n, 1);
        // success after two refusals
        let mut n = 0;
        let r = p
            .run(
                || {
                    n += 1;
                    let v = n;
                    async move {
                        if v < 3 {
                            Err(api_error(403, "DELETE", "/d/", b"", None, None))
                        } else {
                            Ok(v)
                        }
                    }
                },
                |e| e.status() == Some(403),
            )
            .await;
        assert_eq!(r.unwrap(), 3);
    }

    /// The one loop never sleeps past its deadline: at the deadline the last error comes back,
    /// however many tries the policy would still allow.
    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_the_deadline() {
        use super::super::error::api_error;
        let p = RetryPolicy {
            max_attempts: 100,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
        };
        let started = Instant::now();
        let tries = std::cell::Cell::new(0u32);
        let r: Result<(), _> = p
            .retry(
                Some(started + Duration::from_millis(2500)),
                |_| {
                    tries.set(tries.get() + 1);
                    // Retry-After 1 s: the sleeps are exactly 1 s, 1 s, then 0.5 s to the deadline
                    async {
                        Try::Again(api_error(
                            503,
                            "GET",
                            "/d/",
                            b"",
                            None,
                            Some(Duration::from_secs(1)),
                        ))
                    }
                },
                |_, _, _| {},
                |_| {},
            )
            .await;
        assert_eq!(r.unwrap_err().status(), Some(503));
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        assert_eq!(tries.get(), 4);
    }

    #[test]
    fn retry_after_is_a_floor_and_bounded() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let d = p.delay(1, Some(Duration::from_secs(2)), &mut rng).unwrap();
            assert!(d >= Duration::from_secs(2));
        }
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600)), &mut rng), None);
    }
}
