//! Prometheus metrics (served on `/metrics`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    ready: AtomicBool,
}

fn l(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
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
            ready: AtomicBool::new(false),
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

    /// Ready = one complete server listing succeeded (or this replica is a standby).
    pub fn set_ready(&self, r: bool) {
        self.ready.store(r, Ordering::Relaxed);
    }
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
