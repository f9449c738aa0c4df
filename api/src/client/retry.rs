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
    /// A `Retry-After` longer than this is not waited for: the error is returned instead, so a
    /// caller is never stuck for minutes inside one call.
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
