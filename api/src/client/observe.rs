//! Call observer: one hook that sees every HTTP attempt and every sleep the client makes, so a
//! caller keeps its own metrics (time inside API calls, retry and polling sleeps, status codes)
//! without wrapping each call — and without re-implementing retries or waiters to measure them.

use std::time::Duration;

/// Something the client just did. Carries no headers or bodies (they may hold credentials or
/// bootstrap secrets), only what the client's own debug log carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEvent<'a> {
    /// One HTTP attempt ended: `status` is `None` when no answer came (connection error,
    /// per-request timeout). Every attempt is reported, retried or not.
    Attempt {
        method: &'a str,
        /// Path with query, e.g. `/api/2.0/servers/…/action/?do=start`.
        path: &'a str,
        status: Option<u16>,
        elapsed: Duration,
        /// 1-based.
        attempt: u32,
    },
    /// The client slept before resending a request (backoff, `Retry-After`).
    RetrySleep {
        method: &'a str,
        path: &'a str,
        slept: Duration,
    },
    /// A waiter slept between two polls of `what` (e.g. `drive <uuid>`).
    PollSleep { what: &'a str, slept: Duration },
}

/// Receives [`CallEvent`]s, synchronously, on the task making the call: keep it cheap (counters,
/// atomics). Closures `Fn(&CallEvent)` are observers.
pub trait CallObserver: Send + Sync {
    fn observe(&self, event: &CallEvent<'_>);
}

impl<F: Fn(&CallEvent<'_>) + Send + Sync> CallObserver for F {
    fn observe(&self, event: &CallEvent<'_>) {
        self(event)
    }
}
