//! Leader election with a `coordination.k8s.io/v1` Lease (kube-rs has none built in), following
//! client-go's `tools/leaderelection/leaderelection.go`:
//!
//! - Validation as in `NewLeaderElector`: lease duration > renew deadline > 1.2 × retry period.
//! - Expiry is judged on the local monotonic clock, never by comparing the Lease's `renewTime`
//!   with our wall clock: a candidate notes *when it first saw* the current record and treats the
//!   Lease as held until `leaseDurationSeconds` after that (`observedTime` in client-go). A holder
//!   whose clock is skewed, but which keeps renewing, is therefore never overtaken.
//! - `try_acquire_or_renew` = client-go's `tryAcquireOrRenew`: a fast path for the holder (Update
//!   of the object it last wrote, resourceVersion included), else GET, create or take over.
//! - Renewal runs on its own task from the moment the Lease is acquired ([`Elector::keep_renewing`]),
//!   independent of what the controller is doing (the first CloudSigma listing can take minutes).
//! - Every request is bounded: acquire attempts by the renew deadline, renewals by what is left of
//!   it. A holder that has not renewed within `renew_deadline` of its last successful renewal
//!   gives up. This is stricter than client-go, whose deadline starts one retry period *after*
//!   the last renewal: here the margin `lease_duration - renew_deadline` is kept whatever the
//!   retry period, so the old leader stops before any other candidate may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, Mutex};

/// client-go's `JitterFactor`: acquire retries wait `retry_period × (1 + up to 1.2)`.
pub const JITTER_FACTOR: f64 = 1.2;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's checks in `NewLeaderElector`, plus whole seconds for the lease duration (the
    /// Lease stores `leaseDurationSeconds`; a rounded-down value would let others take over
    /// before our renew deadline ends).
    pub fn validate(&self) -> Result<(), String> {
        let (l, r, p) = (self.lease_duration, self.renew_deadline, self.retry_period);
        if self.identity.is_empty() {
            return Err("leader election identity is empty; set --identity or POD_NAME".into());
        }
        if p.is_zero() || r.is_zero() || l.is_zero() {
            return Err(
                "--lease-duration, --renew-deadline and --retry-period must be greater than zero"
                    .into(),
            );
        }
        if l.subsec_nanos() != 0 {
            return Err(format!(
                "--lease-duration={l:?} must be a whole number of seconds (the Lease stores leaseDurationSeconds)"
            ));
        }
        if l <= r {
            return Err(format!(
                "--lease-duration ({l:?}) must be greater than --renew-deadline ({r:?}): the old leader must stop before others may take over"
            ));
        }
        if r <= p.mul_f64(JITTER_FACTOR) {
            return Err(format!(
                "--renew-deadline ({r:?}) must be greater than {JITTER_FACTOR} × --retry-period ({p:?}), as in client-go, so a renewal can be retried within the deadline"
            ));
        }
        Ok(())
    }

    fn lease_seconds(&self) -> i32 {
        self.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }
}

/// The Lease as this candidate last saw or wrote it, and when (local clock).
struct Observed {
    lease: Lease,
    at: Instant,
}

impl Observed {
    fn spec(&self) -> LeaseSpec {
        self.lease.spec.clone().unwrap_or_default()
    }
    fn holder(&self) -> String {
        self.spec().holder_identity.unwrap_or_default()
    }
}

/// Is a record first observed at `observed_at` still valid at `now`? (client-go `isLeaseValid`.)
pub fn lease_valid(observed_at: Instant, lease_duration_seconds: i32, now: Instant) -> bool {
    let dur = Duration::from_secs(lease_duration_seconds.max(0) as u64);
    observed_at + dur > now
}

/// Outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Another candidate holds it and it has not expired (by our observation).
    HeldBy(String),
    /// Our write met a concurrent one (409); try again.
    Conflict,
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Mutex<Option<Observed>>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Writes `lease` with a fresh renew time; on success it becomes the observed record, timed
    /// by our own clock.
    async fn write(
        &self,
        mut lease: Lease,
        now: Timestamp,
        secs: i32,
        observed: &mut Option<Observed>,
    ) -> Result<(), kube::Error> {
        let s = lease.spec.get_or_insert_with(Default::default);
        s.renew_time = Some(MicroTime(now));
        s.lease_duration_seconds = Some(secs);
        let l = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await?;
        *observed = Some(Observed {
            lease: l,
            at: Instant::now(),
        });
        Ok(())
    }

    /// One attempt to take or renew the Lease (client-go `tryAcquireOrRenew`). Unbounded in time
    /// by itself: callers put a deadline on it.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let secs = self.cfg.lease_seconds();
        let mut observed = self.observed.lock().await;

        // 1. Fast path: we hold it and our own last write is still valid → update that object.
        if let Some(o) = observed.as_ref() {
            let spec = o.spec();
            if o.holder() == self.cfg.identity
                && lease_valid(
                    o.at,
                    spec.lease_duration_seconds.unwrap_or(secs),
                    Instant::now(),
                )
            {
                let lease = o.lease.clone();
                match self.write(lease, now, secs, &mut observed).await {
                    Ok(()) => return Ok(Attempt::Held),
                    // As client-go: any failure falls back to the slow path.
                    Err(e) => {
                        tracing::debug!(error = %e, "optimistic lease renewal failed; reading the Lease")
                    }
                }
            }
        }

        // 2. Read, or create when absent.
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    *observed = Some(Observed {
                        lease: l,
                        at: Instant::now(),
                    });
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };

        // 3. A changed record restarts the local expiry clock; an unchanged one keeps it.
        let changed =
            observed.as_ref().map(Observed::spec) != Some(lease.spec.clone().unwrap_or_default());
        let at = match observed.as_ref() {
            Some(o) if !changed => o.at,
            _ => Instant::now(),
        };
        let o = Observed { lease, at };
        let spec = o.spec();
        let holder = o.holder();
        let ours = holder == self.cfg.identity;
        let valid = lease_valid(
            o.at,
            spec.lease_duration_seconds.unwrap_or(secs),
            Instant::now(),
        );
        let mut lease = o.lease.clone();
        *observed = Some(o);
        if !holder.is_empty() && valid && !ours {
            return Ok(Attempt::HeldBy(holder));
        }

        // 4. Take over or renew; replace() carries the resourceVersion, so of two candidates
        // writing the same version only one wins.
        let s = lease.spec.get_or_insert_with(Default::default);
        if !ours {
            s.acquire_time = Some(MicroTime(now));
            s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
            s.holder_identity = Some(self.cfg.identity.clone());
        }
        match self.write(lease, now, secs, &mut observed).await {
            Ok(()) => Ok(Attempt::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this replica holds the Lease; returns when the successful attempt started
    /// (the renew deadline counts from there). Each attempt is bounded by the renew deadline, so
    /// a stalled apiserver connection cannot hold a candidate forever.
    pub async fn acquire(&self) -> Instant {
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => {
                    tracing::info!(lease = %self.cfg.name, namespace = %self.cfg.namespace, identity = %self.cfg.identity, "became leader");
                    return started;
                }
                Ok(Ok(Attempt::HeldBy(h))) => {
                    tracing::debug!(holder = %h, "leader lease held by another replica")
                }
                Ok(Ok(Attempt::Conflict)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: lease request failed"),
                Err(_) => tracing::warn!(
                    timeout = ?self.cfg.renew_deadline,
                    "leader election: lease request timed out"
                ),
            }
            tokio::time::sleep(jittered(self.cfg.retry_period)).await;
        }
    }

    /// Renews on its own task from now on (`acquired` = start of the winning attempt). The
    /// returned [`Leadership`] says when leadership is lost; dropping it stops the renewals.
    pub fn keep_renewing(self: std::sync::Arc<Self>, acquired: Instant) -> Leadership {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let why = self.renew_until_lost(acquired).await;
            let _ = tx.send(why);
        });
        Leadership { lost: rx, task }
    }

    /// Renews every retry period; returns why leadership ended: the Lease was taken, or no renewal
    /// succeeded within the renew deadline (each request is cut off at that deadline).
    async fn renew_until_lost(&self, acquired: Instant) -> String {
        let cfg = &self.cfg;
        let mut last_ok = acquired;
        let mut next = acquired + cfg.retry_period;
        loop {
            tokio::time::sleep_until(next.into()).await;
            let start = Instant::now();
            let deadline = last_ok + cfg.renew_deadline;
            if start >= deadline {
                return format!(
                    "no renewal succeeded within the renew deadline ({:?})",
                    cfg.renew_deadline
                );
            }
            match tokio::time::timeout_at(deadline.into(), self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Held)) => last_ok = start,
                Ok(Ok(Attempt::HeldBy(h))) => {
                    return format!("the Lease is held by {h:?} now");
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::warn!(lease = %cfg.name, "leader lease renewal met a conflicting write; retrying")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renew failed"),
                Err(_) => {
                    return format!(
                        "the Lease renewal did not answer within the renew deadline ({:?})",
                        cfg.renew_deadline
                    )
                }
            }
            next = start + cfg.retry_period;
        }
    }
}

/// Held leadership: the renewal task runs until this is dropped or leadership is lost.
pub struct Leadership {
    lost: oneshot::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves (with the reason) when leadership is lost.
    pub async fn lost(&mut self) -> String {
        (&mut self.lost)
            .await
            .unwrap_or_else(|_| "the lease renewal task ended".into())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `d × (1 + up to JITTER_FACTOR)` (client-go's `wait.JitterUntil`), so candidates started
/// together do not retry in lockstep. The randomness is std's per-process hash seed.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState gets fresh keys, so each call hashes differently.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    let r = (h.finish() % 1_000_000) as f64 / 1_000_000.0;
    d + d.mul_f64(JITTER_FACTOR * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(l: u64, r: u64, p: u64) -> LeaseConfig {
        LeaseConfig {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            lease_duration: Duration::from_millis(l),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
        }
    }

    #[test]
    fn validation_follows_client_go() {
        assert!(cfg(15_000, 10_000, 2_000).validate().is_ok());
        assert!(cfg(3_000, 2_000, 300).validate().is_ok());
        // lease must exceed the renew deadline
        let e = cfg(10_000, 10_000, 2_000).validate().unwrap_err();
        assert!(
            e.contains("--lease-duration") && e.contains("--renew-deadline"),
            "{e}"
        );
        // renew deadline must exceed 1.2 × retry period
        let e = cfg(15_000, 2_400, 2_000).validate().unwrap_err();
        assert!(e.contains("--retry-period"), "{e}");
        assert!(cfg(15_000, 2_401, 2_000).validate().is_ok());
        // whole seconds only
        assert!(cfg(2_500, 2_000, 300).validate().is_err());
        let mut c = cfg(15_000, 10_000, 2_000);
        c.identity.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn validity_counts_from_local_observation() {
        let t0 = Instant::now();
        assert!(lease_valid(t0, 15, t0 + Duration::from_secs(14)));
        assert!(!lease_valid(t0, 15, t0 + Duration::from_secs(15)));
        assert!(!lease_valid(t0, 0, t0));
    }

    #[test]
    fn jitter_stays_within_client_go_bounds() {
        let d = Duration::from_millis(100);
        for _ in 0..100 {
            let j = jittered(d);
            assert!(j >= d && j <= d.mul_f64(1.0 + JITTER_FACTOR), "{j:?}");
        }
    }
}
