//! The Node reconcile: initialization of tainted Nodes, then lifecycle (shutdown taint, deletion of
//! Nodes whose server is definitively gone) and periodic address re-sync — all from the shared
//! server cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
}

impl Ctx {
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CloudSigma: {0}")]
    Cloud(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Node(String),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Cloud(_) => "cloudsigma",
            Error::Kube(_) => "kubernetes",
            Error::Node(_) => "node",
        }
    }
}

pub async fn reconcile(n: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let res = reconcile_inner(&n, &ctx).await;
    ctx.metrics.reconcile(res.is_ok());
    if let Err(e) = &res {
        ctx.metrics.error(e.kind());
        if node::has_taint(&n, node::TAINT_UNINITIALIZED) {
            ctx.event(
                &n,
                EventType::Warning,
                "InitializationFailed",
                "Initialize",
                e.to_string(),
            )
            .await;
        }
    }
    res
}

pub fn error_policy(n: Arc<Node>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let name = n.metadata.name.as_deref().unwrap_or("");
    tracing::warn!(node = name, error = %err, "reconcile failed; retrying");
    // kube-runtime does not back off per object on its own; a few seconds keeps a broken Node from
    // spinning while still converging quickly after transient failures.
    Action::requeue(Duration::from_secs(5).min(ctx.sync_period))
}

async fn reconcile_inner(n: &Node, ctx: &Ctx) -> Result<Action, Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    if n.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pid = node::parse_provider_id(n.spec.as_ref().and_then(|s| s.provider_id.as_deref()))
        .map_err(Error::Node)?;
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
        if !tainted {
            stale.remove(&uid);
        } else if let (Some(rvs), Some(rv)) = (stale.get(&uid), &n.metadata.resource_version) {
            if rvs.contains(rv) {
                // Already initialized by us; the watch will bring the untainted version.
                return Ok(Action::await_change());
            }
        }
    }

    if tainted {
        let server = match &pid {
            ProviderId::CloudSigma(uuid) => match ctx.cache.by_uuid(uuid).await.map_err(|e| Error::Cloud(e.to_string()))? {
                Lookup::Found(s) => s,
                Lookup::NotListed => {
                    return lifecycle_gone(n, uuid, ctx).await;
                }
            },
            _ => match ctx.cache.by_name(&name).await.map_err(Error::Cloud)? {
                Some(s) => s,
                None => {
                    return Err(Error::Node(format!(
                        "no CloudSigma server named {name:?} and the Node has no providerID; name the server like the Node or start kubelet with --provider-id=cloudsigma://<uuid>"
                    )))
                }
            },
        };
        initialize(n, &server, ctx).await?;
        return Ok(requeue);
    }

    // Initialized (or never tainted) Nodes: only ours, by providerID.
    let ProviderId::CloudSigma(uuid) = pid else {
        return Ok(requeue);
    };
    let server = match ctx.cache.by_uuid(&uuid).await {
        Ok(Lookup::Found(s)) => s,
        Ok(Lookup::NotListed) => return lifecycle_gone(n, &uuid, ctx).await,
        Err(e) => {
            // Nothing is changed on errors (no deletion, no taint flips).
            ctx.metrics.deletions_skipped.inc();
            return Err(Error::Cloud(e.to_string()));
        }
    };
    lifecycle_present(n, &server, ctx).await?;
    Ok(requeue)
}

/// Upstream order, made stricter: addresses (status) first, then one Update with providerID,
/// labels and the taint removal, so a schedulable Node always has its cloud addresses.
async fn initialize(n: &Node, server: &Server, ctx: &Ctx) -> Result<(), Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let addrs = node::desired_addresses(n, server).map_err(Error::Node)?;
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
        let spec = cur.spec.get_or_insert_with(Default::default);
        if spec.provider_id.as_deref().unwrap_or("").is_empty() {
            spec.provider_id = Some(node::provider_id(&server.uuid));
        }
        if let Some(t) = spec.taints.as_mut() {
            t.retain(|t| t.key != node::TAINT_UNINITIALIZED);
        }
        let labels = cur.metadata.labels.get_or_insert_with(Default::default);
        let add = node::labels_to_add(labels, &itype, &ctx.region, &ctx.zone);
        labels.extend(add);
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
    match server.status {
        ServerStatus::Stopped if !tainted => {
            set_shutdown_taint(&name, true, ctx).await?;
            ctx.metrics.action("shutdown_tainted");
            tracing::info!(node = %name, server = %server.uuid, "server stopped: node tainted shutdown");
        }
        ServerStatus::Running if tainted => {
            set_shutdown_taint(&name, false, ctx).await?;
            ctx.metrics.action("shutdown_untainted");
            tracing::info!(node = %name, server = %server.uuid, "server running again: shutdown taint removed");
        }
        _ => {}
    }
    // Address re-sync only while running: a stopped server has no runtime IP, and dropping the
    // ExternalIP of a briefly stopped server helps nobody.
    if server.status == ServerStatus::Running {
        if let Ok(addrs) = node::desired_addresses(n, server) {
            if addrs != node::current_addresses(n) {
                patch_addresses(&name, &addrs, ctx).await?;
                ctx.metrics.action("addresses_updated");
            }
        }
    }
    Ok(())
}

async fn set_shutdown_taint(name: &str, on: bool, ctx: &Ctx) -> Result<(), Error> {
    for attempt in 0..5 {
        let mut cur = ctx.nodes.get(name).await?;
        let spec = cur.spec.get_or_insert_with(Default::default);
        let taints = spec.taints.get_or_insert_with(Vec::new);
        let has = taints.iter().any(|t| t.key == node::TAINT_SHUTDOWN);
        if has == on {
            return Ok(());
        }
        if on {
            taints.push(node::shutdown_taint());
        } else {
            taints.retain(|t| t.key != node::TAINT_SHUTDOWN);
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
/// answers 404 too, and only when the Node is not Ready; anything else changes nothing.
async fn lifecycle_gone(n: &Node, uuid: &str, ctx: &Ctx) -> Result<Action, Error> {
    let name = n.metadata.name.clone().unwrap_or_default();
    if node::is_ready(n) {
        ctx.metrics.deletions_skipped.inc();
        tracing::warn!(node = %name, server = uuid, "server not listed but Node is Ready: not deleting");
        return Ok(Action::requeue(ctx.sync_period));
    }
    match ctx.cache.confirm_gone(uuid).await {
        Ok(true) => {
            let uid = n.metadata.uid.clone();
            let dp = DeleteParams {
                // Never delete a re-registered Node of the same name by mistake.
                preconditions: uid.map(|uid| kube::api::Preconditions {
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
        Ok(false) => {
            // Listed nowhere but GET finds it: a race with creation or an inconsistent API.
            ctx.metrics.deletions_skipped.inc();
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
