//! Retry policy: exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS
//! architecture blog): sleep a uniform random time in `[0, min(max_delay, base * 2^(n-1))]`, so
//! many clients refused at once do not retry in lockstep.

use rand::Rng;
use std::time::Duration;

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

impl RetryPolicy {
    /// Repeat a whole *idempotent* operation (GETs, PUTs, DELETEs — never a create or an action)
    /// while `retry_if` accepts its error, sleeping this policy's backoff between tries, at most
    /// `max_attempts` tries. For conditions the client does not treat as transient itself, e.g.
    /// a 403/409 while a drive or server is still changing state during cleanup; the client's
    /// own retries of 429/5xx happen inside each try.
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        retry_if: impl Fn(&super::Error) -> bool,
    ) -> Result<T, super::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, super::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if attempt >= self.max_attempts.max(1) || !retry_if(&e) {
                return Err(e);
            }
            let delay = {
                let mut rng = rand::thread_rng();
                self.delay(attempt, e.retry_after(), &mut rng)
            };
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(e),
            }
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
