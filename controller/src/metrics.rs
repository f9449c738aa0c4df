//! Prometheus metrics (served on `/metrics`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: Family<Labels, Counter>,
    /// Reconcile errors by kind.
    pub errors: Family<Labels, Counter>,
    /// CloudSigma API calls by operation (`list_servers`, `get_server`) and result.
    pub api_calls: Family<Labels, Counter>,
    pub api_latency: Family<Labels, Histogram>,
    /// Node actions by kind (`initialized`, `addresses_updated`, `shutdown_tainted`,
    /// `shutdown_untainted`, `deleted`).
    pub node_actions: Family<Labels, Counter>,
    /// Deletions not done because the cloud's answer was not certain.
    pub deletions_skipped: Counter,
    pub cached_servers: Gauge,
    pub is_leader: Gauge,
    /// Addresses of each VLAN pool by state (`in_use`, `free`, `quarantined`).
    pub pool_addresses: Family<Labels, Gauge>,
    /// Seconds from a NIC first seen without an address to its address written.
    pub assign_latency: Histogram,
    /// VLAN address problems reported, by Event reason.
    pub pool_problems: Family<Labels, Counter>,
    /// Addresses written into servers' meta.
    pub addresses_assigned: Counter,
    readiness: Mutex<Readiness>,
}

/// What `/readyz` answers from.
struct Readiness {
    /// A standby (leader election on, Lease not held) only waits: ready.
    standby: bool,
    /// When the last server listing succeeded.
    last_listing: Option<Instant>,
    /// Unready once the last success is older than this ([`DEFAULT_READY_LISTING_MAX_AGE`]).
    max_age: Duration,
}

/// How long the leader stays ready without a successful server listing (`--ready-listing-max-age`).
/// 5 min = 10 default sync periods: longer than one listing can legitimately take when the API is
/// slow (5 attempts of `--api-timeout` 20 s, ~100 s, plus a backoff of up to a sync period) and a
/// short 429 spell, so a blip does not flap the Pod; short enough that a real outage or revoked
/// credentials show as an unready Pod (`kubectl get pods`, alerts on unready Pods) within minutes.
/// Readiness gates no traffic here (no Service selects the controller), and an unready Pod is not
/// restarted: it is a signal only.
pub const DEFAULT_READY_LISTING_MAX_AGE: Duration = Duration::from_secs(300);

fn l(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

type PoolMetrics = (
    Family<Labels, Gauge>,
    Histogram,
    Family<Labels, Counter>,
    Counter,
);

/// The VLAN pool metrics (docs/vlan-pools.md), registered in `registry`.
fn register_pool_metrics(registry: &mut Registry) -> PoolMetrics {
    let pool_addresses = Family::<Labels, Gauge>::default();
    let assign_latency = Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ]);
    let pool_problems = Family::<Labels, Counter>::default();
    let addresses_assigned = Counter::default();
    registry.register(
        "vlan_pool_addresses",
        "Addresses of each VLAN pool (k8s-ipv4-pool) by state: in_use, free, quarantined",
        pool_addresses.clone(),
    );
    registry.register(
        "vlan_address_assign_seconds",
        "Seconds from a VLAN NIC first seen without an address to its address written",
        assign_latency.clone(),
    );
    registry.register(
        "vlan_pool_problems",
        "VLAN pool and address problems reported, by Event reason",
        pool_problems.clone(),
    );
    registry.register(
        "vlan_addresses_assigned",
        "VLAN addresses written into servers' meta",
        addresses_assigned.clone(),
    );
    (
        pool_addresses,
        assign_latency,
        pool_problems,
        addresses_assigned,
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cloudsigma_controller");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let api_calls = Family::<Labels, Counter>::default();
        let api_latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        });
        let node_actions = Family::<Labels, Counter>::default();
        let deletions_skipped = Counter::default();
        let cached_servers = Gauge::default();
        let is_leader = Gauge::default();
        let (pool_addresses, assign_latency, pool_problems, addresses_assigned) =
            register_pool_metrics(&mut registry);
        registry.register(
            "reconciles",
            "Node reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind",
            errors.clone(),
        );
        registry.register(
            "cloudsigma_api_calls",
            "CloudSigma API calls by operation and result",
            api_calls.clone(),
        );
        registry.register(
            "cloudsigma_api_duration_seconds",
            "CloudSigma API call latency (including client retries)",
            api_latency.clone(),
        );
        registry.register(
            "node_actions",
            "Changes made to Nodes by kind",
            node_actions.clone(),
        );
        registry.register(
            "node_deletions_skipped",
            "Node deletions not done because the cloud answer was an error or ambiguous",
            deletions_skipped.clone(),
        );
        registry.register(
            "cached_servers",
            "Servers in the last complete listing",
            cached_servers.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            is_leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            api_calls,
            api_latency,
            node_actions,
            deletions_skipped,
            cached_servers,
            is_leader,
            pool_addresses,
            assign_latency,
            pool_problems,
            addresses_assigned,
            readiness: Mutex::new(Readiness {
                standby: false,
                last_listing: None,
                max_age: DEFAULT_READY_LISTING_MAX_AGE,
            }),
        }
    }

    pub fn api_call(&self, op: &str, ok: bool, took: Duration) {
        let mut labels = l("op", op);
        labels.push(("result".into(), if ok { "ok" } else { "error" }.into()));
        self.api_calls.get_or_create(&labels).inc();
        self.api_latency
            .get_or_create(&l("op", op))
            .observe(took.as_secs_f64());
    }

    pub fn api_calls_total(&self, op: &str) -> u64 {
        ["ok", "error"]
            .iter()
            .map(|r| {
                let mut labels = l("op", op);
                labels.push(("result".into(), r.to_string()));
                self.api_calls.get_or_create(&labels).get()
            })
            .sum()
    }

    pub fn reconcile(&self, ok: bool) {
        self.reconciles
            .get_or_create(&l("result", if ok { "ok" } else { "error" }))
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&l("kind", kind)).inc();
    }

    pub fn action(&self, kind: &str) {
        self.node_actions.get_or_create(&l("action", kind)).inc();
    }

    pub fn actions(&self, kind: &str) -> u64 {
        self.node_actions.get_or_create(&l("action", kind)).get()
    }

    /// The gauges of one pool.
    pub fn pool(&self, vlan: &str, in_use: u32, free: u32, quarantined: u32) {
        for (state, v) in [
            ("in_use", in_use),
            ("free", free),
            ("quarantined", quarantined),
        ] {
            let mut labels = l("vlan", vlan);
            labels.push(("state".into(), state.into()));
            self.pool_addresses.get_or_create(&labels).set(i64::from(v));
        }
    }

    /// One pool gauge (tests, bench).
    pub fn pool_gauge(&self, vlan: &str, state: &str) -> i64 {
        let mut labels = l("vlan", vlan);
        labels.push(("state".into(), state.into()));
        self.pool_addresses.get_or_create(&labels).get()
    }

    pub fn pool_problem(&self, reason: &str) {
        self.pool_problems.get_or_create(&l("reason", reason)).inc();
    }

    fn readiness_state(&self) -> std::sync::MutexGuard<'_, Readiness> {
        self.readiness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A server listing succeeded now.
    pub fn listed(&self) {
        self.readiness_state().last_listing = Some(Instant::now());
    }

    /// This replica stands by (ready whatever its listing) or leads.
    pub fn set_standby(&self, standby: bool) {
        self.readiness_state().standby = standby;
    }

    /// Unready once no listing succeeded for this long.
    pub fn set_ready_listing_max_age(&self, max_age: Duration) {
        self.readiness_state().max_age = max_age;
    }

    /// `/readyz`: Ok while a standby, or while the last successful server listing is at most the
    /// configured age; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let r = self.readiness_state();
        if r.standby {
            return Ok(());
        }
        match r.last_listing {
            None => Err("no complete CloudSigma server listing yet".into()),
            Some(t) if t.elapsed() > r.max_age => Err(format!(
                "no CloudSigma server listing succeeded for {:.1?} (--ready-listing-max-age={:?}); the log says why (credentials, API outage, rate limit)",
                t.elapsed(),
                r.max_age
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_while_standby_or_while_the_last_listing_is_young_enough() {
        let m = Metrics::new();
        let e = m.readiness().unwrap_err();
        assert!(
            e.contains("no complete CloudSigma server listing yet"),
            "{e}"
        );
        m.set_standby(true);
        assert!(m.ready(), "a standby only waits");
        m.set_standby(false);
        m.set_ready_listing_max_age(Duration::from_secs(60));
        m.listed();
        assert!(m.ready());
        // the last success 61 s ago
        m.readiness_state().last_listing = Instant::now().checked_sub(Duration::from_secs(61));
        let e = m.readiness().unwrap_err();
        assert!(
            e.contains("for 61.0s") && e.contains("--ready-listing-max-age=60s"),
            "{e}"
        );
        m.set_standby(true);
        assert!(m.ready());
        m.set_standby(false);
        m.listed();
        assert!(m.ready(), "ready again after a success");
    }
}
