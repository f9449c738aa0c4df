//! CloudSigma cloud controller: initializes Nodes registered with `--cloud-provider=external` from
//! the CloudSigma API and keeps them in step with their servers. See docs/controller.md.

pub mod allocator;
pub mod apiserver;
pub mod cache;
pub mod leader;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod reconcile;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod throttle;
pub mod watched;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{controller, watcher, Controller};
use tokio::sync::watch;

pub use metrics::Metrics;

/// Command line / environment options of `cloudsigma-controller`.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "cloudsigma-controller",
    version = env!("CLOUDSIGMA_BUILD_VERSION"),
    about = "CloudSigma cloud controller manager",
    after_help = CREDENTIALS_HELP
)]
pub struct Options {
    /// CloudSigma region (e.g. zrh, fra); also the value of the topology region label.
    #[arg(long, env = "CLOUDSIGMA_REGION")]
    pub region: Option<String>,
    /// Zone label value; defaults to the region (CloudSigma regions have one zone).
    #[arg(long, env = "CLOUDSIGMA_ZONE")]
    pub zone: Option<String>,
    /// API base URL (overrides the region's URL), e.g. http://127.0.0.1:8080/api/2.0/.
    #[arg(long, env = "CLOUDSIGMA_API_URL")]
    pub api_url: Option<String>,
    /// The account e-mail (not a secret). The password and the access token are read from the
    /// environment or files only (see below).
    #[arg(long, env = "CLOUDSIGMA_USERNAME")]
    pub username: Option<String>,
    /// Removed (issue 20 item 3): refused with a pointer to CLOUDSIGMA_PASSWORD[_FILE]. The value
    /// is dropped unread, so it cannot reach a log or an error message.
    #[arg(long = "password", hide = true, num_args = 0..=1, default_missing_value = "", value_parser = drop_secret)]
    pub removed_password_flag: Option<RemovedSecretFlag>,
    /// Removed: refused with a pointer to CLOUDSIGMA_TOKEN[_FILE].
    #[arg(long = "token", hide = true, num_args = 0..=1, default_missing_value = "", value_parser = drop_secret)]
    pub removed_token_flag: Option<RemovedSecretFlag>,
    /// Files (e.g. a mounted Secret) holding the password / access token; trailing newline ignored.
    #[arg(long, env = "CLOUDSIGMA_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    #[arg(long, env = "CLOUDSIGMA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "CLOUDSIGMA_USERNAME_FILE")]
    pub username_file: Option<PathBuf>,
    /// CloudSigma CLI-style config file (TOML).
    #[arg(long, env = "CLOUDSIGMA_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// How old the shared server listing may get: one `servers/detail` listing per period serves all
    /// Nodes; also the lifecycle and address re-sync period of every Node.
    #[arg(long, env = "CLOUDSIGMA_SYNC_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// List only the servers carrying this CloudSigma tag (its uuid, or its name, resolved once at
    /// start) instead of every server of the account: `GET tags/{uuid}/servers/detail/`. Set it
    /// to the tag the Cluster API provider puts on the cluster's servers when one account hosts
    /// several clusters; the listing then costs what the cluster's size does. A Node whose server
    /// lost the tag is not deleted (a direct GET of the server decides; see docs/controller.md).
    #[arg(long, env = "CLOUDSIGMA_CLUSTER_TAG")]
    pub cluster_tag: Option<String>,
    /// Minimum spacing of on-demand listings (a Node naming a server not in the listing yet).
    #[arg(long, env = "CLOUDSIGMA_MIN_REFRESH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub min_refresh_interval: Duration,
    /// Timeout of one CloudSigma API request.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub api_timeout: Duration,
    /// Parallel Node reconciles.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u16,
    /// Record a Normal "Initialized" Event per Node, as upstream's "Synced". Off by default: the
    /// initialized Node itself is the record, and in a scale-up of hundreds of Nodes those Events
    /// cost the apiserver a third of the writes. Failures and deletions always get an Event.
    #[arg(long, env = "RECORD_SUCCESS_EVENTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub record_success_events: bool,
    /// The longest silence tolerated on an apiserver connection: the wait for a response's
    /// headers, and the gap between two frames of a response body. The Node watch gets a
    /// BOOKMARK about every minute, so a longer silence means a dead connection (a vanished peer
    /// over HTTP/1.1 is otherwise noticed only after 295 s); the watch then resumes. See
    /// src/apiserver.rs.
    #[arg(long, env = "APISERVER_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration)]
    pub apiserver_idle_timeout: Duration,
    /// `/readyz` fails once no CloudSigma server listing has succeeded for this long (while
    /// leading; a standby is ready). At least two sync periods: the listing is refreshed once per
    /// sync period. See metrics::DEFAULT_READY_LISTING_MAX_AGE for the default.
    #[arg(long, env = "READY_LISTING_MAX_AGE", default_value = "5m", value_parser = parse_duration)]
    pub ready_listing_max_age: Duration,
    /// kubeconfig file; default: in-cluster config, then $KUBECONFIG / ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    #[arg(long, default_value = "cloudsigma-controller")]
    pub lease_name: String,
    /// Namespace of the Lease (the Deployment sets POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub lease_namespace: String,
    /// Identity in the Lease (and the Events' reporting instance). Default:
    /// `<POD_NAME, else hostname>_<random uuid>`, new for every process, so that two replicas can
    /// never share one, even under hostNetwork on one node (see default_identity).
    #[arg(long)]
    pub identity: Option<String>,
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Address of /metrics, /healthz and /readyz (plain HTTP, no authentication). Loopback by
    /// default: the Pod runs with hostNetwork, so a wildcard address would publish them on the
    /// node's public NAT IP.
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = "127.0.0.1:10258")]
    pub metrics_bind: SocketAddr,
    /// Assign VLAN addresses from the pools set on VLANs (VLAN meta `k8s-ipv4-pool`, see
    /// docs/vlan-pools.md): the leader writes each NIC's address into its server's meta once per
    /// sync period, and a Node on a pooled VLAN is initialized only with that address as its node
    /// IP. Costs one VLAN listing per sync period; with no pool set, nothing else happens.
    #[arg(long, env = "VLAN_POOLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub vlan_pools: bool,
    /// How long a released VLAN address (its server deleted, or its meta key removed) is not
    /// handed out again.
    #[arg(long, env = "VLAN_ADDRESS_QUARANTINE", default_value = "5m", value_parser = parse_duration)]
    pub vlan_address_quarantine: Duration,
    /// text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// How the controller takes its credentials (`--help`).
pub const CREDENTIALS_HELP: &str = "Credentials (environment or files only, never flags: a flag's value is readable by every user of the node in `ps` and /proc/<pid>/cmdline, and is stored in the Pod spec):
  CLOUDSIGMA_TOKEN or CLOUDSIGMA_TOKEN_FILE             bearer access token
  CLOUDSIGMA_USERNAME or CLOUDSIGMA_USERNAME_FILE       account e-mail, with
  CLOUDSIGMA_PASSWORD or CLOUDSIGMA_PASSWORD_FILE       its password
  A file wins over the variable; the config file (--config-file) comes last.";

/// A removed secret-taking flag was given; its value was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemovedSecretFlag;

fn drop_secret(_: &str) -> Result<RemovedSecretFlag, String> {
    Ok(RemovedSecretFlag)
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 500ms, 30s, 5m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(d)
}

fn read_secret_file(p: &PathBuf) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("reading credentials file {}: {e}", p.display()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

impl Options {
    /// An error naming what to use instead when a removed secret-taking flag (`--password`,
    /// `--token`) was given. `main` checks it before anything else.
    pub fn refuse_secret_flags(&self) -> Result<(), String> {
        let removed = [
            (
                self.removed_password_flag,
                "--password",
                "CLOUDSIGMA_PASSWORD",
            ),
            (self.removed_token_flag, "--token", "CLOUDSIGMA_TOKEN"),
        ];
        for (given, flag, var) in removed {
            if given.is_some() {
                return Err(format!(
                    "{flag} is no longer accepted: a secret on the command line is readable by every user of the node (ps, /proc/<pid>/cmdline) and is stored in the Pod spec. Set {var}_FILE=<file> (e.g. a mounted Secret, as controller/config does) or {var} (e.g. env valueFrom.secretKeyRef) instead, and remove {flag} (its value was not used or logged)"
                ));
            }
        }
        Ok(())
    }

    /// Builds the CloudSigma client: the files, then the environment (CLOUDSIGMA_USERNAME,
    /// CLOUDSIGMA_PASSWORD, CLOUDSIGMA_TOKEN), then the config file.
    pub fn cloudsigma_client(&self) -> anyhow::Result<cloudsigma_api::client::Client> {
        use cloudsigma_api::client::{Client, Config, ConfigOverrides};
        self.refuse_secret_flags().map_err(anyhow::Error::msg)?;
        // No secret comes from a flag: the password and token overrides are the files' contents
        // only, else Config::resolve reads CLOUDSIGMA_PASSWORD / CLOUDSIGMA_TOKEN itself.
        let mut ov = ConfigOverrides {
            api_url: self.api_url.clone(),
            region: self.region.clone(),
            username: self.username.clone(),
            password: None,
            token: None,
            config_file: self.config_file.clone(),
        };
        if let Some(p) = &self.username_file {
            ov.username = Some(read_secret_file(p)?);
        }
        if let Some(p) = &self.password_file {
            ov.password = Some(read_secret_file(p)?);
        }
        if let Some(p) = &self.token_file {
            ov.token = Some(read_secret_file(p)?);
        }
        let mut cfg = Config::resolve(&ov).map_err(|e| {
            anyhow::anyhow!(
                "CloudSigma credentials/config: {e} (cloudsigma-controller takes no secret as a flag: use CLOUDSIGMA_PASSWORD[_FILE] with CLOUDSIGMA_USERNAME[_FILE], or CLOUDSIGMA_TOKEN[_FILE])"
            )
        })?;
        cfg.timeout = self.api_timeout;
        Client::new(cfg).map_err(|e| anyhow::anyhow!("CloudSigma client: {e}"))
    }

    /// The Lease settings. Without `--identity`, a new [`default_identity`] per call ([`run`]
    /// makes one call).
    pub fn lease_config(&self) -> leader::LeaseConfig {
        leader::LeaseConfig {
            name: self.lease_name.clone(),
            namespace: self.lease_namespace.clone(),
            identity: self.identity.clone().unwrap_or_else(default_identity),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        }
    }

    /// The apiserver connections' dead-connection bounds.
    pub fn liveness(&self) -> apiserver::Liveness {
        apiserver::Liveness {
            idle: self.apiserver_idle_timeout,
            ..Default::default()
        }
    }

    /// `--ready-listing-max-age` must span at least two sync periods: the listing is refreshed
    /// once per sync period, so a shorter bound would turn a healthy controller unready between two
    /// listings.
    pub fn validate_readiness(&self) -> Result<(), String> {
        if self.ready_listing_max_age < self.sync_period * 2 {
            return Err(format!(
                "--ready-listing-max-age={:?} is shorter than two sync periods (--sync-period={:?}): the listing is refreshed once per sync period, so /readyz would fail between listings; use at least {:?}",
                self.ready_listing_max_age,
                self.sync_period,
                self.sync_period * 2
            ));
        }
        Ok(())
    }

    pub fn region_label(&self) -> String {
        self.region.clone().unwrap_or_default()
    }
    pub fn zone_label(&self) -> String {
        self.zone
            .clone()
            .or_else(|| self.region.clone())
            .unwrap_or_default()
    }
}

/// Runs until `shutdown` turns true (or leadership is lost, which is an error: the process should
/// exit and be restarted as a candidate).
pub async fn run(
    opts: Options,
    kube: apiserver::Connections,
    cs: cloudsigma_api::client::Client,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Validate before serving or touching the Lease: a bad combination is a configuration error.
    let lease_cfg = opts.leader_elect.then(|| opts.lease_config());
    if let Some(cfg) = &lease_cfg {
        tracing::info!(identity = %cfg.identity, lease = %cfg.name, "leader election identity");
    }
    opts.validate_readiness().map_err(anyhow::Error::msg)?;
    metrics.set_ready_listing_max_age(opts.ready_listing_max_age);
    if let Some(cfg) = &lease_cfg {
        cfg.validate().map_err(anyhow::Error::msg)?;
        // A standby is healthy and ready: it only waits.
        metrics.set_standby(true);
    }
    let server = tokio::spawn(serve_http(
        opts.metrics_bind,
        metrics.clone(),
        shutdown.clone(),
    ));

    // Without election this replica leads from the start; with it, once it holds the Lease.
    let (leading_tx, leading) = watch::channel(lease_cfg.is_none());
    let scope = listing_scope(&opts, &cs).await?;
    let ctx =
        Arc::new(context(&opts, &kube, cs, metrics.clone(), leading.clone()).with_scope(scope));
    // The Node watch and the first CloudSigma listing start now, while the Lease is being taken,
    // as controller-runtime starts its caches before leader election: a new leader starts with
    // both in hand rather than two round trips later. Nothing acts before the Lease is held: the
    // reconciles wait for `leading` (see reconcile::reconcile).
    let work = work(&opts, kube.watch.clone(), ctx.clone(), shutdown.clone());
    let lead = async {
        let Some(cfg) = lease_cfg else {
            let _keep_leading = leading_tx;
            return std::future::pending().await;
        };
        let e = Arc::new(leader::Elector::new(kube.requests.clone(), cfg));
        let acquired = e.acquire().await;
        // Renewing starts now, on its own task: nothing (the first CloudSigma listing may take
        // minutes) delays it. Dropped with this future, which stops the renewals.
        let mut l = e.keep_renewing(acquired);
        metrics.set_standby(false);
        metrics.is_leader.set(1);
        let _ = leading_tx.send(true);
        l.lost().await
    };
    // A shutdown while standing by ends the run at once; while leading, `work` shuts down
    // gracefully (the reconciles in flight finish) and ends it.
    let standby_shutdown = {
        let mut shutdown = shutdown.clone();
        async move {
            wait_true(&mut shutdown).await;
            if *leading.borrow() {
                std::future::pending::<()>().await;
            }
        }
    };
    let res = tokio::select! {
        _ = work => Ok(()),
        why = lead => {
            tracing::error!(lease = %opts.lease_name, reason = %why, "lost leadership; stopping");
            Err(anyhow::anyhow!("lost leadership: {why}"))
        }
        _ = standby_shutdown => Ok(()),
    };
    metrics.is_leader.set(0);
    server.abort();
    res
}

/// `--cluster-tag` resolved (a name once, here), or the whole account, said in the log either way.
async fn listing_scope(
    opts: &Options,
    cs: &cloudsigma_api::client::Client,
) -> anyhow::Result<Option<cache::ClusterTag>> {
    let Some(value) = &opts.cluster_tag else {
        tracing::info!("server listing is account-wide: every server of the CloudSigma account is listed each sync period; to list only this cluster's servers, set --cluster-tag (CLOUDSIGMA_CLUSTER_TAG) to the uuid or name of the tag its servers carry");
        return Ok(None);
    };
    let tag = cache::resolve_tag(cs, value).await?;
    tracing::info!(tag = %tag.name, tag_uuid = %tag.uuid, "server listing scoped to the cluster's tag: GET tags/{{uuid}}/servers/detail/");
    Ok(Some(tag))
}

/// The reconcile context: Node writes on the request connection, one shared server cache.
fn context(
    opts: &Options,
    kube: &apiserver::Connections,
    cs: cloudsigma_api::client::Client,
    metrics: Arc<Metrics>,
    leading: watch::Receiver<bool>,
) -> reconcile::Ctx {
    reconcile::Ctx {
        nodes: Api::<Node>::all(kube.requests.clone()),
        cache: cache::ServerCache::new(
            cs,
            metrics.clone(),
            opts.sync_period,
            opts.min_refresh_interval,
        ),
        metrics: metrics.clone(),
        region: opts.region_label(),
        zone: opts.zone_label(),
        sync_period: opts.sync_period,
        stale_after_init: Default::default(),
        lookups: Default::default(),
        warnings: Default::default(),
        success_events: opts.record_success_events,
        allocator: opts.vlan_pools.then(|| {
            Arc::new(allocator::Allocator::new(
                metrics.clone(),
                opts.vlan_address_quarantine,
            ))
        }),
        recorder: kube::runtime::events::Recorder::new(
            kube.requests.clone(),
            kube::runtime::events::Reporter {
                controller: "cloudsigma-controller".into(),
                instance: Some(event_instance(opts.identity.as_deref())),
            },
        ),
        leading,
    }
}

/// The Node watch and the reconciles, until a graceful shutdown.
async fn work(
    opts: &Options,
    watch_client: kube::Client,
    ctx: Arc<reconcile::Ctx>,
    shutdown: watch::Receiver<bool>,
) {
    // The first listing runs alongside the Node watch's initial LIST instead of before it: the
    // reconciles wait on that one listing (the cache lets concurrent callers share it), so a
    // burst of Nodes still costs one listing, and the two round trips overlap. A failure here is
    // retried by the reconciles themselves.
    let prime = {
        let ctx = ctx.clone();
        async move {
            if let Err(e) = ctx.cache.fresh().await {
                tracing::warn!(error = %e, "initial CloudSigma listing failed; will retry");
            }
        }
    };

    // The listing is kept fresh while leading even with no Node to ask for it, so that readiness
    // (the age of the last successful listing) says whether the API answers, not whether there
    // are Nodes. With Nodes this costs nothing: fresh() lists only when the listing is older than
    // the sync period.
    let keep_fresh = {
        let ctx = ctx.clone();
        let period = opts.sync_period;
        async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if *ctx.leading.borrow() {
                    // A failure is logged by the cache and retried at the next tick.
                    let _ = ctx.cache.fresh().await;
                    // VLAN addresses once per sync period, leader only: a new server waits at
                    // most about one period, and the VLAN listing (a few objects) is cheap.
                    if let Some(a) = &ctx.allocator {
                        reconcile::allocate(&ctx, a).await;
                    }
                }
            }
        }
    };

    let mut sd = shutdown.clone();
    let ctrl = Controller::new(
        Api::<watched::WatchedNode>::all(watch_client),
        watch_config(),
    )
    .with_config(controller::Config::default().concurrency(opts.concurrency))
    .graceful_shutdown_on(async move { wait_true(&mut sd).await })
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|res| async move {
        if let Err(e) = res {
            match e {
                controller::Error::ReconcilerFailed(..) => {} // logged by error_policy
                other => tracing::debug!(error = %other, "controller event"),
            }
        }
    });
    futures::join!(prime, async {
        tokio::select! {
            _ = ctrl => {}
            _ = keep_fresh => {}
        }
    });
}

/// The server-side length of one Node watch (`timeoutSeconds`): kube-runtime's default, written
/// out because the dead-connection bound relies on it (src/apiserver.rs).
pub const WATCH_TIMEOUT_SECS: u32 = 290;

/// The Node watch: BOOKMARKs requested (`allowWatchBookmarks=true`), so that a healthy watch is
/// never silent for much more than a minute and [`Options::apiserver_idle_timeout`] can tell a
/// dead one; the watch ends after [`WATCH_TIMEOUT_SECS`] and resumes from its resourceVersion.
pub fn watch_config() -> watcher::Config {
    let mut c = watcher::Config::default()
        .any_semantic()
        .timeout(WATCH_TIMEOUT_SECS);
    c.bookmarks = true;
    c
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    // A dropped sender counts as shutdown.
    let _ = rx.wait_for(|v| *v).await;
}

/// The default Lease identity: `<POD_NAME, else the hostname>_<random uuid v4>`, as
/// kube-controller-manager and kube-scheduler build theirs (`os.Hostname()` + `"_"` +
/// `uuid.NewUUID()`, "so that two processes on the same host don't accidentally both become
/// active"; client-go's `examples/leader-election` defaults `--id` to `uuid.New()`). The former
/// `hostname_pid` collided under hostNetwork: the hostname is the node's, and a container's
/// process is pid 1, so two Pods on one node (or one restarted there) had the same identity and
/// each took the other's Lease for its own. POD_NAME alone (the Deployment sets it) is unique
/// only within one namespace of one cluster, while in management mode replicas of different
/// management clusters or namespaces may share the workload cluster's Lease. The readable part
/// says where the holder runs; the uuid makes it unique per process.
pub fn default_identity() -> String {
    identity_from(
        std::env::var("POD_NAME").ok().as_deref(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .as_deref(),
    )
}

/// The Events' `reportingInstance`: `--identity`, else POD_NAME, else the hostname; at most 128
/// bytes (the Events API refuses longer ones). Events need no uniqueness, only a readable origin,
/// so the Lease identity's uuid is left out.
fn event_instance(identity: Option<&str>) -> String {
    let pod = std::env::var("POD_NAME").ok();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let s = [identity, pod.as_deref(), host.as_deref()]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("cloudsigma-controller");
    let mut end = s.len().min(128);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// [`default_identity`] from a pod name and a hostname (either may be missing or empty).
pub fn identity_from(pod_name: Option<&str>, hostname: Option<&str>) -> String {
    let readable = [pod_name, hostname]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("cloudsigma-controller");
    format!("{readable}_{}", uuid::Uuid::new_v4())
}

async fn serve_http(addr: SocketAddr, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    use axum::{http::StatusCode, routing::get, Router};
    let m1 = metrics.clone();
    let m2 = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    match m.readiness() {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                }
            }),
        );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind the metrics/health address; set --metrics-bind");
            return;
        }
    };
    tracing::info!(%addr, "serving /metrics /healthz /readyz");
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { wait_true(&mut shutdown).await })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn metrics_listen_on_loopback_by_default() {
        use clap::Parser;
        let o = Options::parse_from(["cloudsigma-controller"]);
        assert!(o.metrics_bind.ip().is_loopback(), "{}", o.metrics_bind);
        assert_eq!(o.metrics_bind.port(), 10258);
    }

    #[test]
    fn the_watch_asks_for_bookmarks_and_silence_beyond_them_is_a_dead_connection() {
        use clap::Parser;
        let c = watch_config();
        assert!(c.bookmarks, "allowWatchBookmarks must be requested");
        assert_eq!(c.timeout, Some(WATCH_TIMEOUT_SECS));
        let idle = Options::parse_from(["cloudsigma-controller"]).apiserver_idle_timeout;
        assert_eq!(idle, apiserver::DEFAULT_IDLE);
        // Longer than the apiserver's bookmark period (no false alarm on a quiet watch), shorter
        // than kube-runtime's own bound (timeoutSeconds + 5 s), which it replaces.
        assert!(idle > apiserver::APISERVER_BOOKMARK_PERIOD, "{idle:?}");
        assert!(
            idle < Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS) + 5),
            "{idle:?}"
        );
    }

    #[test]
    fn readiness_bound_defaults_to_five_minutes_and_must_span_two_sync_periods() {
        use clap::Parser;
        let o = Options::parse_from(["cloudsigma-controller"]);
        assert_eq!(
            o.ready_listing_max_age,
            metrics::DEFAULT_READY_LISTING_MAX_AGE
        );
        assert_eq!(o.ready_listing_max_age, Duration::from_secs(300));
        assert!(o.validate_readiness().is_ok());
        let o = Options::parse_from([
            "cloudsigma-controller",
            "--sync-period=30s",
            "--ready-listing-max-age=59s",
        ]);
        let e = o.validate_readiness().unwrap_err();
        assert!(
            e.contains("--ready-listing-max-age") && e.contains("60s"),
            "{e}"
        );
        let o = Options::parse_from([
            "cloudsigma-controller",
            "--sync-period=30s",
            "--ready-listing-max-age=1m",
        ]);
        assert!(o.validate_readiness().is_ok());
    }

    #[test]
    fn default_identities_never_collide_and_say_where_they_run() {
        // Two Pods on one node under hostNetwork: same hostname, and each process is pid 1.
        let a = identity_from(None, Some("node-1\n"));
        let b = identity_from(None, Some("node-1\n"));
        assert_ne!(a, b);
        assert!(a.starts_with("node-1_"), "{a}");
        // The same pod name (two clusters or namespaces sharing a workload cluster's Lease).
        let a = identity_from(Some("cloudsigma-controller-7d4b9-x2x4z"), Some("node-1"));
        let b = identity_from(Some("cloudsigma-controller-7d4b9-x2x4z"), Some("node-1"));
        assert_ne!(a, b);
        assert!(a.starts_with("cloudsigma-controller-7d4b9-x2x4z_"), "{a}");
        let suffix = a.rsplit_once('_').map(|(_, s)| s).unwrap_or_default();
        assert!(uuid::Uuid::parse_str(suffix).is_ok(), "{a}");
        assert!(identity_from(Some(""), None).starts_with("cloudsigma-controller_"));
        // what the process uses
        assert_ne!(default_identity(), default_identity());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("x").is_err());
    }
}
