//! The Node reconcile: initialization of tainted Nodes, then lifecycle (shutdown taint, deletion of
//! Nodes whose server is definitively gone) and periodic address re-sync — all from the shared
//! server cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::models::{Server, ServerStatus};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
use serde_json::json;

use crate::cache::{Lookup, ServerCache};
use crate::metrics::Metrics;
use crate::node::{self, ProviderId};
use crate::throttle::WarningThrottle;
use crate::watched::WatchedNode;

pub struct Ctx {
    pub nodes: Api<Node>,
    pub cache: ServerCache,
    pub metrics: Arc<Metrics>,
    pub region: String,
    pub zone: String,
    pub sync_period: Duration,
    /// Events on the Node (`kubectl describe node` shows why it is still tainted).
    pub recorder: Recorder,
    /// Also record a Normal event for each initialized Node (upstream does; off by default).
    pub success_events: bool,
    /// Node uid → the resourceVersions it had before our initializing Update. Our own status
    /// patch triggers a second reconcile that may still see the tainted copy from the watch; this
    /// recognises that copy as stale, instead of writing again and meeting a 409.
    pub stale_after_init: std::sync::Mutex<HashMap<String, Vec<String>>>,
    /// Warnings about standing conditions of initialized Nodes, found again every sync period.
    pub warnings: WarningThrottle,
    /// When each Node's pending server lookup began (see [`crate::cache::LookupStarts`]).
    pub lookups: crate::cache::LookupStarts,
    /// True while this replica holds the Lease (always, without leader election). The watch runs
    /// before that; the reconciles wait for it.
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// The VLAN address allocator (`--vlan-pools`); runs on the leader's sync tick (lib.rs).
    pub allocator: Option<Arc<crate::allocator::Allocator>>,
}

impl Ctx {
    /// Scopes the shared listing to the cluster's tag (`--cluster-tag`); `None` leaves it
    /// account-wide.
    pub fn with_scope(mut self, tag: Option<crate::cache::ClusterTag>) -> Ctx {
        self.cache = self.cache.scoped_to(tag);
        self
    }

    /// Records an Event on the Node without waiting for it: events are best effort, and a
    /// reconcile slot held for one would slow a burst of initializations by a third.
    async fn event(&self, n: &Node, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let reference = n.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "could not record event");
            }
        });
    }
}

/// The Warning about a VLAN server whose kubelet gave no node IP (issue 24): the deployment
/// report's failure, where Cilium and flannel found no InternalIP.
pub const REASON_NO_VLAN_NODE_IP: &str = "NoVLANNodeIP";

/// The note of the `NoVLANNodeIP` Warning: what is wrong and what to do.
pub fn no_vlan_node_ip_note(server_uuid: &str) -> String {
    format!(
        "server {server_uuid} has a VLAN NIC but kubelet gave no node IP (annotation {}), so the Node has no InternalIP: the CloudSigma API does not know VLAN addresses, and CNIs such as Cilium or flannel fail without one. Start kubelet with --node-ip=<the VLAN NIC's address>. cloudsigma-agent sets it when the VLAN NIC has an address in time (see its log of the VLAN wait): give the VLAN DHCP (CloudSigma runs none; a virtual router or your own server) or a static address. The InternalIP is added within a sync period of the annotation appearing.",
        node::ANNOTATION_PROVIDED_IP
    )
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CloudSigma: {0}")]
    Cloud(String),
    /// The shared listing is failing or backing off; the next one is allowed in `retry_in`.
    #[error("CloudSigma: {error}")]
    Listing { error: String, retry_in: Duration },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A fresh listing has no server for the Node.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    ProviderId(String),
    /// The Node's addresses cannot be derived (kubelet --node-ip does not fit the server).
    #[error("{0}")]
    Addresses(String),
    #[error("{0}")]
    Node(String),
    /// The Node's node IP is not the address its server's meta assigns (VLAN pools).
    #[error("{0}")]
    VlanAddress(String),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Cloud(_) | Error::Listing { .. } => "cloudsigma",
            Error::Kube(_) => "kubernetes",
            _ => "node",
        }
    }

    /// The Event reason: one per cause. The event recorder groups repeats by reason (a repeat
    /// only bumps `series.count` of the first Event, whose note stays), so one reason for every
    /// cause would keep showing the first cause in `kubectl describe node` after it changed.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Cloud(_) | Error::Listing { .. } => "CloudSigmaUnavailable",
            Error::Kube(_) => "KubernetesAPIError",
            Error::NotFound(_) => "ServerNotFound",
            Error::Ambiguous(_) => "AmbiguousServerName",
            Error::ProviderId(_) => "InvalidProviderID",
            Error::Addresses(_) => "InvalidNodeIP",
            Error::Node(_) => "InitializationFailed",
            Error::VlanAddress(_) => "VLANAddressMismatch",
        }
    }
}

fn cache_error(e: crate::cache::CacheError) -> Error {
    match (e.retry_in(), e) {
        (_, crate::cache::CacheError::Ambiguous(m)) => Error::Ambiguous(m),
        (Some(retry_in), e) => Error::Listing {
            error: e.to_string(),
            retry_in,
        },
        (None, e) => Error::Cloud(e.to_string()),
    }
}

pub async fn reconcile(n: Arc<WatchedNode>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !*ctx.leading.borrow() {
        // A standby: the watch already runs, but nothing is written before the Lease is held.
        // Once it is, queue the Node again rather than act on this copy, which may be from long
        // before (kube-runtime hands the next run the Node as it is in the store then).
        let mut leading = ctx.leading.clone();
        return Ok(match leading.wait_for(|l| *l).await {
            Ok(_) => Action::requeue(Duration::ZERO),
            Err(_) => Action::await_change(), // the run is ending
        });
    }
    let res = reconcile_inner(&n, &ctx).await;
    ctx.metrics.reconcile(res.is_ok());
    if let Err(e) = &res {
        ctx.metrics.error(e.kind());
        if node::has_taint(&n, node::TAINT_UNINITIALIZED) {
            ctx.event(
                &n,
                EventType::Warning,
                e.reason(),
                "Initialize",
                e.to_string(),
            )
            .await;
        }
    }
    res
}

pub fn error_policy(n: Arc<WatchedNode>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let name = n.metadata.name.as_deref().unwrap_or("");
    tracing::warn!(node = name, error = %err, "reconcile failed; retrying");
    Action::requeue(retry_after(err, ctx.sync_period))
}

/// When a failed reconcile runs again: as soon as the shared listing may be tried again when that
/// is what failed, so that every Node waiting on it is back for the first listing after an outage
/// and catches up from it (issue 21 item 8; a fixed delay spread them over several listings); a
/// few seconds otherwise.
fn retry_after(err: &Error, sync_period: Duration) -> Duration {
    match err {
        Error::Listing { retry_in, .. } => (*retry_in).max(Duration::from_millis(100)),
        _ => retry_delay(sync_period),
    }
}

/// kube-runtime does not back off per object on its own; a few seconds keeps a broken Node from
/// spinning while still converging quickly after transient failures.
fn retry_delay(sync_period: Duration) -> Duration {
    Duration::from_secs(5).min(sync_period)
}

/// Whether this copy of a Node is the tainted one from before our own initializing Update (see
/// [`Ctx::stale_after_init`]). An untainted Node ends its entry.
fn is_stale_copy(
    stale: &mut HashMap<String, Vec<String>>,
    uid: &str,
    tainted: bool,
    resource_version: Option<&str>,
) -> bool {
    if !tainted {
        stale.remove(uid);
        return false;
    }
    match (stale.get(uid), resource_version) {
        (Some(rvs), Some(rv)) => rvs.iter().any(|r| r == rv),
        _ => false,
    }
}

/// The initializing change on a copy of the Node: providerID (if it has none), the
/// uninitialized taint removed, the labels it lacks added. Public so that the bench's apiserver
/// floor makes exactly this write.
pub fn mark_initialized(cur: &mut Node, server_uuid: &str, itype: &str, region: &str, zone: &str) {
    let spec = cur.spec.get_or_insert_with(Default::default);
    if spec.provider_id.as_deref().unwrap_or("").is_empty() {
        spec.provider_id = Some(node::provider_id(server_uuid));
    }
    if let Some(t) = spec.taints.as_mut() {
        t.retain(|t| t.key != node::TAINT_UNINITIALIZED);
    }
    let labels = cur.metadata.labels.get_or_insert_with(Default::default);
    let add = node::labels_to_add(labels, itype, region, zone);
    labels.extend(add);
}

/// VLAN pools (docs/vlan-pools.md): a Node whose server has a NIC on a pooled VLAN is
/// initialized only when its provided node IP is that NIC's assigned address. `Some(action)`:
/// wait (no address written yet, or no allocator round yet since this replica took the Lease);
/// an error: the address is wrong or the assignment is not valid (the Node stays tainted, the
/// Warning says why).
fn pool_check(n: &Node, server: &Server, ctx: &Ctx) -> Result<Option<Action>, Error> {
    use crate::pool::Expect;
    let Some(alloc) = &ctx.allocator else {
        return Ok(None);
    };
    if !node::has_vlan(server) {
        return Ok(None);
    }
    let name = n.metadata.name.as_deref().unwrap_or_default();
    let wait = Action::requeue(retry_delay(ctx.sync_period));
    match alloc.expect(server) {
        // No round since this replica took the Lease: wait for the first, unless it failed.
        None => match alloc.last_error() {
            Some(e) => Err(Error::Cloud(format!(
                "node {name}: the VLAN pools could not be read yet, so the VLAN NIC's address cannot be checked: {e}"
            ))),
            None => Ok(Some(wait)),
        },
        Some(Expect::NotPooled) => Ok(None),
        Some(Expect::Waiting { key }) => {
            tracing::debug!(node = name, server = %server.uuid, key = %key, "waiting for the VLAN address to be written");
            Ok(Some(wait))
        }
        Some(Expect::Invalid(why)) => Err(Error::VlanAddress(format!(
            "node {name}: {why}"
        ))),
        Some(Expect::Assigned(want)) => {
            let provided = node::provided_ips(n).map_err(Error::Addresses)?;
            if want
                .iter()
                .any(|(a, _)| provided.contains(&std::net::IpAddr::V4(*a)))
            {
                return Ok(None);
            }
            let (addr, key) = &want[0];
            let got = if provided.is_empty() {
                "no node IP".to_string()
            } else {
                format!("{provided:?}")
            };
            Err(Error::VlanAddress(format!(
                "node {name}: expected node IP {addr} from server {} meta key {key}, got {got} (annotation {}); cloudsigma-agent configures that address and passes it to kubelet as --node-ip: check its log on the node",
                server.uuid,
                node::ANNOTATION_PROVIDED_IP
            )))
        }
    }
}

/// An initialized Node whose node IP is not (or no longer) its server's assigned address: a
/// `VLANAddressMismatch` Warning at most once per [`crate::throttle::WARNING_REPEAT`] (the Node is left as it is:
/// it was initialized before the pool or the key changed, and kubelet follows the agent).
async fn pool_mismatch_warning(n: &Node, server: &Server, ctx: &Ctx) {
    let uid = n.metadata.uid.as_deref().unwrap_or_default();
    let key = format!("{uid}/VLANAddressMismatch");
    match pool_check(n, server, ctx) {
        Err(e @ Error::VlanAddress(_)) if ctx.warnings.due(&key, Instant::now()) => {
            ctx.event(
                n,
                EventType::Warning,
                e.reason(),
                "Addresses",
                e.to_string(),
            )
            .await;
        }
        Err(Error::VlanAddress(_)) => {}
        _ => ctx.warnings.clear(&key),
    }
}

/// One allocator round (leader only). Its problems reach the Nodes concerned through their
/// reconciles ([`pool_warnings`]).
pub async fn allocate(ctx: &Ctx, a: &crate::allocator::Allocator) {
    if let Err(e) = a.round(&ctx.cache).await {
        ctx.metrics.error("cloudsigma");
        tracing::warn!(error = %e, "VLAN address round failed; the next sync period tries again");
    }
}

/// Warnings about the VLAN pools of this Node's server (a bad or overlapping pool or a full one
/// on its VLAN; a bad, outside or duplicate assignment of its NIC), each at most once per
/// [`crate::throttle::WARNING_REPEAT`] per Node: reported from the reconcile, so a Node registered after the
/// allocator found the problem gets it too.
async fn pool_warnings(n: &Node, server: &Server, ctx: &Ctx) {
    let Some(a) = &ctx.allocator else {
        return;
    };
    let uid = n.metadata.uid.as_deref().unwrap_or_default();
    let now = Instant::now();
    for p in a.problems_for(server) {
        let key = format!(
            "{uid}/{}/{}/{}",
            p.kind.reason(),
            p.vlan,
            p.mac.as_deref().unwrap_or("")
        );
        if ctx.warnings.due(&key, now) {
            let mut note = p.message.clone();
            truncate(&mut note, 1000);
            ctx.event(
                n,
                EventType::Warning,
                p.kind.reason(),
                "AssignVLANAddress",
                note,
            )
            .await;
        }
    }
}

/// Cuts `s` to at most `max` bytes (events.k8s.io refuses notes over 1 kB).
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The shutdown taint a Node should get for its server's status: `Some(true)` add it (stopped),
/// `Some(false)` remove it (running again), `None` leave it (any other status, or already so).
/// A server being deleted is as good as shut down (the API refuses every action on it), so its
/// Node is tainted at once; the Node itself goes only once the server 404s (`lifecycle_gone`).
fn shutdown_taint_change(status: ServerStatus, tainted: bool) -> Option<bool> {
    match status {
        ServerStatus::Stopped | ServerStatus::Deleting if !tainted => Some(true),
        ServerStatus::Running if tainted => Some(false),
        _ => None,
    }
}

/// Puts the shutdown taint on (`on`) or off in `taints`; false when it already was so.
fn set_shutdown_taint_in(taints: &mut Vec<k8s_openapi::api::core::v1::Taint>, on: bool) -> bool {
    let has = taints.iter().any(|t| t.key == node::TAINT_SHUTDOWN);
    if has == on {
        return false;
    }
    if on {
        taints.push(node::shutdown_taint());
    } else {
        taints.retain(|t| t.key != node::TAINT_SHUTDOWN);
    }
    true
}

async fn reconcile_inner(n: &Node, ctx: &Ctx) -> Result<Action, Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    if n.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pid = node::parse_provider_id(n.spec.as_ref().and_then(|s| s.provider_id.as_deref()))
        .map_err(Error::ProviderId)?;
    if let ProviderId::Foreign(_) = pid {
        return Ok(Action::await_change()); // another cloud's Node
    }
    let requeue = Action::requeue(ctx.sync_period);
    let uid = n.metadata.uid.clone().unwrap_or_default();
    let tainted = node::has_taint(n, node::TAINT_UNINITIALIZED);
    {
        let mut stale = ctx
            .stale_after_init
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if is_stale_copy(
            &mut stale,
            &uid,
            tainted,
            n.metadata.resource_version.as_deref(),
        ) {
            // Already initialized by us; the watch will bring the untainted version.
            return Ok(Action::await_change());
        }
    }

    if tainted {
        let lookup = lookup(ctx, &uid, &pid, &name).await.map_err(cache_error)?;
        let server = match (lookup, &pid) {
            (Lookup::Found(s), _) => s,
            // Not in a listing older than this Node: look again once a new one is allowed,
            // without reporting anything (a Node registering just after a listing lands here).
            (Lookup::NotYet(after), _) => return Ok(Action::requeue(after)),
            (Lookup::NotListed, ProviderId::CloudSigma(uuid)) => {
                return lifecycle_gone(n, uuid, ctx).await
            }
            (Lookup::NotListed, _) => {
                let among = match ctx.cache.scope() {
                    Some(tag) => format!(" among the servers carrying tag {tag} (--cluster-tag)"),
                    None => String::new(),
                };
                return Err(Error::NotFound(format!(
                    "no CloudSigma server named {name:?}{among} and the Node has no providerID; name the server like the Node or start kubelet with --provider-id=cloudsigma://<uuid>"
                )));
            }
        };
        pool_warnings(n, &server, ctx).await;
        let checked = pool_check(n, &server, ctx).map_err(|e| match e {
            Error::VlanAddress(m) => {
                Error::VlanAddress(format!("{m}. The Node stays uninitialized until then"))
            }
            e => e,
        });
        if let Some(wait) = checked? {
            return Ok(wait);
        }
        initialize(n, &server, ctx).await?;
        return Ok(requeue);
    }

    // Initialized (or never tainted) Nodes: only ours, by providerID.
    let ProviderId::CloudSigma(uuid) = pid else {
        return Ok(requeue);
    };
    let server = match lookup(ctx, &uid, &ProviderId::CloudSigma(uuid.clone()), &name).await {
        Ok(Lookup::Found(s)) => s,
        Ok(Lookup::NotYet(after)) => return Ok(Action::requeue(after)),
        Ok(Lookup::NotListed) => return lifecycle_gone(n, &uuid, ctx).await,
        Err(e) => {
            // Nothing is changed on errors (no deletion, no taint flips).
            ctx.metrics.deletions_skipped.inc();
            return Err(cache_error(e));
        }
    };
    if ctx.cache.scope().is_some() {
        ctx.warnings
            .clear(&format!("{uid}/{REASON_SERVER_NOT_TAGGED}"));
    }
    pool_warnings(n, &server, ctx).await;
    pool_mismatch_warning(n, &server, ctx).await;
    lifecycle_present(n, &server, ctx).await?;
    Ok(requeue)
}

/// The Node's server, by providerID uuid, else by name; a lookup that failed or could not be
/// answered yet (`NotYet`) stays pending, so its retries keep the time it began
/// ([`crate::cache::LookupStarts`]).
async fn lookup(
    ctx: &Ctx,
    node_uid: &str,
    pid: &ProviderId,
    name: &str,
) -> Result<Lookup, crate::cache::CacheError> {
    let what = match pid {
        ProviderId::CloudSigma(uuid) => format!("uuid:{uuid}"),
        _ => format!("name:{name}"),
    };
    let began = ctx.lookups.began(node_uid, &what, Instant::now());
    let res = match pid {
        ProviderId::CloudSigma(uuid) => ctx.cache.by_uuid_since(uuid, began).await,
        _ => ctx.cache.by_name_since(name, began).await,
    };
    if lookup_answered(&res) {
        ctx.lookups.ended(node_uid, &what);
    }
    res
}

/// Whether a lookup has its answer (the next one begins afresh), as opposed to one that must be
/// asked again: not answerable yet, or the listing unavailable.
fn lookup_answered(res: &Result<Lookup, crate::cache::CacheError>) -> bool {
    use crate::cache::CacheError;
    match res {
        Ok(Lookup::Found(_) | Lookup::NotListed) | Err(CacheError::Ambiguous(_)) => true,
        Ok(Lookup::NotYet(_)) | Err(CacheError::List { .. } | CacheError::BackingOff { .. }) => {
            false
        }
    }
}

/// Upstream order, made stricter: addresses (status) first, then one Update with providerID,
/// labels and the taint removal, so a schedulable Node always has its cloud addresses.
async fn initialize(n: &Node, server: &Server, ctx: &Ctx) -> Result<(), Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let addrs = node::desired_addresses(n, server, &|ip| ctx.cache.nat_owner(ip))
        .map_err(Error::Addresses)?;
    let mut stale_rvs: Vec<String> = n.metadata.resource_version.iter().cloned().collect();
    // The status patch returns the Node with its new resourceVersion: the Update below uses it, so
    // it does not conflict with our own write.
    let mut cur = if addrs != node::current_addresses(n) {
        patch_addresses(&name, &addrs, ctx).await?
    } else {
        n.clone()
    };
    let itype = node::instance_type(server);
    // Update with optimistic concurrency; on a conflict (kubelet heartbeat labels, another writer)
    // re-read and re-apply.
    for attempt in 0..5 {
        mark_initialized(&mut cur, &server.uuid, &itype, &ctx.region, &ctx.zone);
        stale_rvs.extend(cur.metadata.resource_version.iter().cloned());
        match ctx.nodes.replace(&name, &PostParams::default(), &cur).await {
            Ok(_) => {
                if let Some(uid) = &n.metadata.uid {
                    let mut stale = ctx
                        .stale_after_init
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    // Entries normally leave when the untainted Node is seen; a Node deleted
                    // first would leave one behind. Only an optimisation: bound it crudely.
                    if stale.len() >= 4096 {
                        stale.clear();
                    }
                    stale.insert(uid.clone(), stale_rvs);
                }
                ctx.metrics.action("initialized");
                if ctx.success_events {
                    ctx.event(
                        n,
                        EventType::Normal,
                        "Initialized",
                        "Initialize",
                        format!("from CloudSigma server {} ({itype})", server.uuid),
                    )
                    .await;
                }
                tracing::info!(node = %name, server = %server.uuid, instance_type = %itype, "node initialized");
                // Initialized all the same, as upstream initializes a Node with whatever addresses
                // the cloud has when kubelet provided no IP; the re-sync adds the InternalIP once
                // kubelet provides one.
                standing_warnings(n, server, None, ctx).await;
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 4 => {
                cur = ctx.nodes.get(&name).await?;
                if !node::has_taint(&cur, node::TAINT_UNINITIALIZED) {
                    return Ok(()); // someone else finished it
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Node(format!("node {name}: update kept conflicting")))
}

async fn patch_addresses(
    name: &str,
    addrs: &[k8s_openapi::api::core::v1::NodeAddress],
    ctx: &Ctx,
) -> Result<Node, Error> {
    // A JSON merge patch replaces the whole list: the strategic merge of `addresses` is keyed by
    // type and would keep stale entries.
    let patch = json!({ "status": { "addresses": addrs } });
    Ok(ctx
        .nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

async fn lifecycle_present(n: &Node, server: &Server, ctx: &Ctx) -> Result<(), Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let tainted = node::has_taint(n, node::TAINT_SHUTDOWN);
    match shutdown_taint_change(server.status, tainted) {
        Some(true) => {
            set_shutdown_taint(&name, true, ctx).await?;
            ctx.metrics.action("shutdown_tainted");
            tracing::info!(node = %name, server = %server.uuid, "server stopped: node tainted shutdown");
        }
        Some(false) => {
            set_shutdown_taint(&name, false, ctx).await?;
            ctx.metrics.action("shutdown_untainted");
            tracing::info!(node = %name, server = %server.uuid, "server running again: shutdown taint removed");
        }
        None => {}
    }
    // Address re-sync only while running: a stopped server has no runtime IP, and dropping the
    // ExternalIP of a briefly stopped server helps nobody.
    if server.status == ServerStatus::Running {
        let desired = node::desired_addresses(n, server, &|ip| ctx.cache.nat_owner(ip));
        standing_warnings(n, server, desired.as_ref().err(), ctx).await;
        if let Ok(addrs) = desired {
            if addrs != node::current_addresses(n) {
                patch_addresses(&name, &addrs, ctx).await?;
                ctx.metrics.action("addresses_updated");
            }
        }
    }
    Ok(())
}

/// Warnings about an initialized Node's addresses, at most one per [`crate::throttle::WARNING_REPEAT`] each:
/// `NoVLANNodeIP`, and `InvalidNodeIP` when kubelet's node IP stopped fitting the server (its
/// addresses are then left as they are); `invalid` is that error.
async fn standing_warnings(n: &Node, server: &Server, invalid: Option<&String>, ctx: &Ctx) {
    let uid = n.metadata.uid.as_deref().unwrap_or_default();
    let now = Instant::now();
    let missing_key = format!("{uid}/{REASON_NO_VLAN_NODE_IP}");
    if node::vlan_without_node_ip(n, server) {
        if ctx.warnings.due(&missing_key, now) {
            ctx.metrics.action("no_vlan_node_ip");
            tracing::warn!(node = ?n.metadata.name, server = %server.uuid, "VLAN server without a kubelet node IP: no InternalIP");
            ctx.event(
                n,
                EventType::Warning,
                REASON_NO_VLAN_NODE_IP,
                "Addresses",
                no_vlan_node_ip_note(&server.uuid),
            )
            .await;
        }
    } else {
        ctx.warnings.clear(&missing_key);
    }
    let reason = Error::Addresses(String::new()).reason();
    let invalid_key = format!("{uid}/{reason}");
    match invalid {
        Some(e) if ctx.warnings.due(&invalid_key, now) => {
            let note = format!("{e} (the Node's addresses are left as they are)");
            ctx.event(n, EventType::Warning, reason, "Addresses", note)
                .await;
        }
        Some(_) => {}
        None => ctx.warnings.clear(&invalid_key),
    }
}

async fn set_shutdown_taint(name: &str, on: bool, ctx: &Ctx) -> Result<(), Error> {
    for attempt in 0..5 {
        let mut cur = ctx.nodes.get(name).await?;
        let spec = cur.spec.get_or_insert_with(Default::default);
        if !set_shutdown_taint_in(spec.taints.get_or_insert_with(Vec::new), on) {
            return Ok(());
        }
        match ctx.nodes.replace(name, &PostParams::default(), &cur).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 4 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Node(format!(
        "node {name}: taint update kept conflicting"
    )))
}

/// The server is missing from a complete, fresh listing. Delete the Node only when a direct GET
/// answers 404 too, and only when the Node is not Ready; anything else changes nothing. Scoped to
/// a tag (`--cluster-tag`), "not listed" may only mean the server lost the tag, so the GET is made
/// for a Ready Node too, and a server it finds gets a `ServerNotTagged` Warning on the Node.
async fn lifecycle_gone(n: &Node, uuid: &str, ctx: &Ctx) -> Result<Action, Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let ready = node::is_ready(n);
    if ready && ctx.cache.scope().is_none() {
        ctx.metrics.deletions_skipped.inc();
        tracing::warn!(node = %name, server = uuid, "server not listed but Node is Ready: not deleting");
        return Ok(Action::requeue(ctx.sync_period));
    }
    match ctx.cache.confirm_gone(uuid).await {
        Ok(true) if ready => {
            ctx.metrics.deletions_skipped.inc();
            tracing::warn!(node = %name, server = uuid, "server gone (GET 404) but Node is Ready: not deleting");
            Ok(Action::requeue(ctx.sync_period))
        }
        Ok(true) => delete_node(n, uuid, ctx).await,
        Ok(false) => {
            // Listed nowhere but GET finds it: without a tag, a race with creation or an
            // inconsistent API; with one, most likely the server lost (or never had) the tag.
            ctx.metrics.deletions_skipped.inc();
            if let Some(tag) = ctx.cache.scope() {
                untagged_warning(n, uuid, tag, ctx).await;
            }
            Ok(Action::requeue(ctx.sync_period))
        }
        Err(e) => {
            ctx.metrics.deletions_skipped.inc();
            Err(Error::Cloud(format!(
                "checking whether server {uuid} is gone: {e}"
            )))
        }
    }
}

/// Event reason: the Node's server exists but does not carry the cluster's tag.
pub const REASON_SERVER_NOT_TAGGED: &str = "ServerNotTagged";

/// The note of a [`REASON_SERVER_NOT_TAGGED`] Warning: an initialized Node's server lost the tag,
/// or a tainted Node's server does not carry it (yet).
pub fn not_tagged_note(uuid: &str, tag: &crate::cache::ClusterTag, initialized: bool) -> String {
    if initialized {
        format!(
            "CloudSigma server {uuid} no longer carries tag {tag} (--cluster-tag). It still exists (GET servers/{uuid}/ found it), so the Node is not deleted; while untagged it is not kept in step (shutdown taint, addresses). Tag the server again, or delete the Node if the server left the cluster"
        )
    } else {
        format!(
            "CloudSigma server {uuid} does not carry tag {tag} (--cluster-tag): the controller lists only the servers with that tag, so the Node stays uninitialized until its server carries it"
        )
    }
}

/// A `ServerNotTagged` Warning, at most once per [`crate::throttle::WARNING_REPEAT`] per Node.
async fn untagged_warning(n: &Node, uuid: &str, tag: &crate::cache::ClusterTag, ctx: &Ctx) {
    let uid = n.metadata.uid.as_deref().unwrap_or_default();
    if !ctx
        .warnings
        .due(&format!("{uid}/{REASON_SERVER_NOT_TAGGED}"), Instant::now())
    {
        return;
    }
    let initialized = !node::has_taint(n, node::TAINT_UNINITIALIZED);
    ctx.metrics.action("server_not_tagged");
    tracing::warn!(node = ?n.metadata.name, server = uuid, tag = %tag, "server exists but does not carry the cluster tag: Node kept");
    ctx.event(
        n,
        EventType::Warning,
        REASON_SERVER_NOT_TAGGED,
        "Lifecycle",
        not_tagged_note(uuid, tag, initialized),
    )
    .await;
}

/// Deletes the Node of a server that is definitively gone (listing and GET 404).
async fn delete_node(n: &Node, uuid: &str, ctx: &Ctx) -> Result<Action, Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let dp = DeleteParams {
        // Never delete a re-registered Node of the same name by mistake.
        preconditions: n.metadata.uid.clone().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match ctx.nodes.delete(&name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    ctx.metrics.action("deleted");
    ctx.event(
        n,
        EventType::Normal,
        "DeletingNode",
        "Delete",
        format!("CloudSigma server {uuid} no longer exists"),
    )
    .await;
    tracing::info!(node = %name, server = uuid, "server gone (listing and GET 404): node deleted");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }
    }

    fn node_with(provider_id: Option<&str>, taints: Vec<Taint>, labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n.spec = Some(NodeSpec {
            provider_id: provider_id.map(Into::into),
            taints: Some(taints),
            ..Default::default()
        });
        n
    }

    #[test]
    fn retry_delay_is_five_seconds_at_most_the_sync_period() {
        assert_eq!(retry_delay(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(retry_delay(Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn a_failing_listing_is_retried_when_the_next_listing_is_allowed() {
        let sync = Duration::from_secs(30);
        let listing = |ms| Error::Listing {
            error: "x".into(),
            retry_in: Duration::from_millis(ms),
        };
        assert_eq!(
            retry_after(&listing(1500), sync),
            Duration::from_millis(1500)
        );
        // a Retry-After longer than the usual delay is waited for, not polled
        assert_eq!(retry_after(&listing(40_000), sync), Duration::from_secs(40));
        // never a spin
        assert_eq!(retry_after(&listing(0), sync), Duration::from_millis(100));
        assert_eq!(
            retry_after(&Error::Cloud("x".into()), sync),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_after(&Error::NotFound("x".into()), sync),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn stale_copy_is_recognised_and_forgotten_once_untainted() {
        let mut stale = HashMap::from([("u1".to_string(), vec!["10".to_string(), "11".into()])]);
        assert!(is_stale_copy(&mut stale, "u1", true, Some("11")));
        assert!(!is_stale_copy(&mut stale, "u1", true, Some("12")));
        assert!(!is_stale_copy(&mut stale, "u1", true, None));
        assert!(!is_stale_copy(&mut stale, "u2", true, Some("10")));
        assert!(stale.contains_key("u1"));
        // the untainted Node ends the entry; a later tainted copy is not stale any more
        assert!(!is_stale_copy(&mut stale, "u1", false, Some("13")));
        assert!(stale.is_empty());
        assert!(!is_stale_copy(&mut stale, "u1", true, Some("10")));
    }

    #[test]
    fn mark_initialized_sets_provider_id_drops_only_the_uninitialized_taint_and_adds_labels() {
        let mut n = node_with(
            None,
            vec![taint(node::TAINT_UNINITIALIZED), taint("other")],
            &[(node::LABEL_ZONE, "mine")],
        );
        mark_initialized(&mut n, "uuid-1", "2c-4000mhz-4g", "zrh", "zrh");
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("cloudsigma://uuid-1"));
        let keys: Vec<_> = spec
            .taints
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.key.as_str())
            .collect();
        assert_eq!(keys, ["other"]);
        let labels = n.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[node::LABEL_INSTANCE_TYPE], "2c-4000mhz-4g");
        assert_eq!(labels[node::LABEL_REGION], "zrh");
        // an existing label is never overwritten
        assert_eq!(labels[node::LABEL_ZONE], "mine");
    }

    #[test]
    fn mark_initialized_keeps_an_existing_provider_id() {
        let mut n = node_with(Some("cloudsigma://kept"), vec![], &[]);
        mark_initialized(&mut n, "other", "1c-1000mhz-1g", "", "");
        assert_eq!(
            n.spec.unwrap().provider_id.as_deref(),
            Some("cloudsigma://kept")
        );
        // empty region/zone add no labels
        let labels = n.metadata.labels.unwrap();
        assert!(!labels.contains_key(node::LABEL_REGION));
        assert!(!labels.contains_key(node::LABEL_ZONE));
    }

    #[test]
    fn shutdown_taint_follows_stopped_deleting_and_running_only() {
        use ServerStatus::*;
        assert_eq!(shutdown_taint_change(Stopped, false), Some(true));
        assert_eq!(shutdown_taint_change(Stopped, true), None);
        assert_eq!(shutdown_taint_change(Running, true), Some(false));
        assert_eq!(shutdown_taint_change(Running, false), None);
        assert_eq!(shutdown_taint_change(Deleting, false), Some(true));
        assert_eq!(shutdown_taint_change(Deleting, true), None);
        for s in [Starting, Stopping, Paused, Unavailable, Unknown] {
            assert_eq!(shutdown_taint_change(s, false), None, "{s}");
            assert_eq!(shutdown_taint_change(s, true), None, "{s}");
        }
    }

    #[test]
    fn shutdown_taint_is_added_once_and_removed_alone() {
        let mut t = vec![taint("other")];
        assert!(set_shutdown_taint_in(&mut t, true));
        assert!(!set_shutdown_taint_in(&mut t, true));
        assert_eq!(
            t.iter().filter(|t| t.key == node::TAINT_SHUTDOWN).count(),
            1
        );
        assert!(set_shutdown_taint_in(&mut t, false));
        assert!(!set_shutdown_taint_in(&mut t, false));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, "other");
    }

    #[test]
    fn warning_throttle_repeats_once_per_interval_and_at_once_after_a_clear() {
        let w = WarningThrottle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(w.due("u1/NoVLANNodeIP", t0));
        assert!(!w.due("u1/NoVLANNodeIP", t0 + Duration::from_secs(59)));
        // another Node, another reason: independent
        assert!(w.due("u2/NoVLANNodeIP", t0));
        assert!(w.due("u1/InvalidNodeIP", t0));
        assert!(w.due("u1/NoVLANNodeIP", t0 + Duration::from_secs(60)));
        assert!(!w.due("u1/NoVLANNodeIP", t0 + Duration::from_secs(61)));
        // the condition ended and came back: reported at once
        w.clear("u1/NoVLANNodeIP");
        assert!(w.due("u1/NoVLANNodeIP", t0 + Duration::from_secs(62)));
    }

    #[test]
    fn no_vlan_node_ip_note_says_what_is_wrong_and_what_to_do() {
        let note = no_vlan_node_ip_note("4b2d3a5e-1111-4222-8333-944455556666");
        for what in [
            "4b2d3a5e-1111-4222-8333-944455556666",
            "VLAN NIC",
            node::ANNOTATION_PROVIDED_IP,
            "no InternalIP",
            "--node-ip",
            "cloudsigma-agent",
            "DHCP",
        ] {
            assert!(note.contains(what), "{what:?} missing: {note}");
        }
        // events.k8s.io refuses notes over 1 kB
        assert!(note.len() < 1024, "{} bytes", note.len());
    }

    #[test]
    fn error_kinds_name_the_failing_side() {
        assert_eq!(Error::Cloud("x".into()).kind(), "cloudsigma");
        assert_eq!(Error::Node("x".into()).kind(), "node");
        assert_eq!(Error::Addresses("x".into()).kind(), "node");
    }

    #[test]
    fn each_cause_has_its_own_event_reason() {
        let all = [
            Error::Cloud("x".into()),
            Error::NotFound("x".into()),
            Error::Ambiguous("x".into()),
            Error::ProviderId("x".into()),
            Error::Addresses("x".into()),
            Error::Node("x".into()),
            Error::VlanAddress("x".into()),
        ];
        let mut reasons: Vec<_> = all.iter().map(Error::reason).collect();
        reasons.push(REASON_NO_VLAN_NODE_IP);
        reasons.push(REASON_SERVER_NOT_TAGGED);
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len() + 2, "{reasons:?}");
        // Reasons are UpperCamelCase words, as the Events API expects.
        assert!(reasons
            .iter()
            .all(|r| r.chars().all(|c| c.is_ascii_alphanumeric())
                && r.starts_with(|c: char| c.is_ascii_uppercase())));
    }
}
