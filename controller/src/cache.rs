//! One `servers/detail` listing per sync period, shared by every Node.
//!
//! Upstream cloud-node controllers call the cloud once per Node per period; with 1,000 Nodes that is
//! 1,000 calls. Here every reconcile reads a shared snapshot; the snapshot is refreshed when it is
//! older than the sync period, or on demand when a Node names an unknown server — but never more
//! often than `min_interval`, and after failures (429, 5xx, timeouts) with exponential backoff.
//! Concurrent callers wait on one refresh instead of each listing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::Server;
use tokio::sync::Mutex;

use crate::metrics::Metrics;

#[derive(Default)]
pub struct Snapshot {
    pub by_uuid: HashMap<String, Arc<Server>>,
    /// Several servers may share a name: a name lookup with more than one match is ambiguous.
    pub by_name: HashMap<String, Vec<Arc<Server>>>,
    /// NAT (public) runtime IP → uuid of the running server that has it: a VLAN Node's provided
    /// IP must not be one of another server's (node::desired_addresses).
    pub by_nat_ip: HashMap<IpAddr, String>,
    /// When the listing completed; `None` = never listed successfully.
    pub fetched_at: Option<Instant>,
    /// When the listing's first request was sent: a server missing from it is known to be
    /// missing only for lookups that began before this.
    pub started_at: Option<Instant>,
}

impl Snapshot {
    fn from_list(list: Vec<Server>, started: Instant) -> Snapshot {
        let mut s = Snapshot {
            fetched_at: Some(Instant::now()),
            started_at: Some(started),
            ..Default::default()
        };
        for srv in list {
            let srv = Arc::new(srv);
            s.by_name
                .entry(srv.name.clone())
                .or_default()
                .push(srv.clone());
            for ip in crate::node::external_ips(&srv) {
                s.by_nat_ip.insert(ip, srv.uuid.to_ascii_lowercase());
            }
            s.by_uuid.insert(srv.uuid.to_ascii_lowercase(), srv);
        }
        s
    }
    pub fn age(&self) -> Option<Duration> {
        self.fetched_at.map(|t| t.elapsed())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The listing failed now; the next one is allowed in `retry_in` (the backoff).
    #[error("CloudSigma servers listing failed: {error}")]
    List { error: String, retry_in: Duration },
    #[error("CloudSigma servers listing backed off after failures ({failures} in a row); next try in {retry_in:?}")]
    BackingOff { failures: u32, retry_in: Duration },
    /// Several servers carry the Node's name.
    #[error("{0}")]
    Ambiguous(String),
}

impl CacheError {
    /// When a listing will be tried again, for a listing failure or backoff.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            CacheError::List { retry_in, .. } | CacheError::BackingOff { retry_in, .. } => {
                Some(*retry_in)
            }
            CacheError::Ambiguous(_) => None,
        }
    }
}

struct RefreshState {
    last_attempt: Option<Instant>,
    failures: u32,
    not_before: Option<Instant>,
}

/// The tag a cluster-scoped controller lists (`--cluster-tag`), resolved at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTag {
    pub uuid: String,
    pub name: String,
}

impl std::fmt::Display for ClusterTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.uuid)
    }
}

/// Resolves `--cluster-tag`: a uuid is checked with one `GET tags/{uuid}/`; a name must match
/// exactly one tag of the account (one `tags/detail` listing). Both are idempotent reads, which
/// the client retries on transient failures. The error names the value given.
pub async fn resolve_tag(client: &Client, value: &str) -> anyhow::Result<ClusterTag> {
    let value = value.trim();
    anyhow::ensure!(
        !value.is_empty(),
        "--cluster-tag is empty: give the uuid or the exact name of the tag the cluster's servers carry, or leave it unset to list the whole account"
    );
    if uuid::Uuid::parse_str(value).is_ok() {
        return match client.get_tag(value).await {
            Ok(t) => Ok(ClusterTag { uuid: t.uuid.to_ascii_lowercase(), name: t.name }),
            Err(e) if e.is_not_found() => Err(anyhow::anyhow!(
                "--cluster-tag {value:?}: no CloudSigma tag has this uuid (GET tags/{value}/ answered 404)"
            )),
            Err(e) => Err(anyhow::anyhow!("--cluster-tag {value:?}: reading the tag: {e}")),
        };
    }
    let tags = client
        .list_tags()
        .await
        .map_err(|e| anyhow::anyhow!("--cluster-tag {value:?}: listing the account's tags: {e}"))?;
    pick_tag(value, &tags)
}

/// The one tag named `name` among `tags`.
pub fn pick_tag(name: &str, tags: &[cloudsigma_api::models::Tag]) -> anyhow::Result<ClusterTag> {
    let hits: Vec<_> = tags.iter().filter(|t| t.name == name).collect();
    match hits.as_slice() {
        [one] => Ok(ClusterTag { uuid: one.uuid.to_ascii_lowercase(), name: one.name.clone() }),
        [] => Err(anyhow::anyhow!(
            "--cluster-tag {name:?}: no CloudSigma tag has this name (the account has {} tags); give the uuid or the exact name of the tag the cluster's servers carry",
            tags.len()
        )),
        many => Err(anyhow::anyhow!(
            "--cluster-tag {name:?}: {} CloudSigma tags have this name ({}); give the uuid of the one the cluster's servers carry",
            many.len(),
            many.iter().map(|t| t.uuid.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

pub struct ServerCache {
    client: Client,
    /// `Some`: the listing is the servers carrying this tag; `None`: the whole account.
    scope: Option<ClusterTag>,
    metrics: Arc<Metrics>,
    sync_period: Duration,
    min_interval: Duration,
    snap: RwLock<Arc<Snapshot>>,
    refresh: Mutex<RefreshState>,
}

/// Outcome of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<Server>),
    /// Absent from a complete listing that started after the lookup began: confirmed missing.
    NotListed,
    /// Absent from the current listing, which is older than the lookup, and a new one is not
    /// allowed yet (`min_interval`): ask again after this long. Not a failure: a Node that
    /// registers just after a listing lands here, and nothing may report its server as missing.
    NotYet(Duration),
}

/// Does a listing that started at `listing_started` answer a lookup that began at `asked`? Only
/// one started afterwards can have seen a server created just before the lookup.
pub fn listing_confirms(listing_started: Option<Instant>, asked: Instant) -> bool {
    listing_started.is_some_and(|t| t >= asked)
}

/// When each Node's pending server lookup began: the first attempt that failed (listing
/// unavailable) or missed, kept across the Node's retries until the lookup has an answer (found,
/// confirmed missing, ambiguous).
///
/// A miss is confirmed only by a listing that started after the lookup began (a Node registering
/// just after a listing must not be reported). If each retry counted as a new lookup, the goalpost
/// would move: with many Nodes sharing one rate-limited listing, the listing a retry meets has
/// mostly been started by another Node just before, and Nodes waiting for a confirmation got one
/// each per `min_interval` (issue 21 item 8: after an outage, four of six Nodes of deleted servers
/// went only after more than two minutes). Keyed by Node uid *and* what is looked up, so a
/// re-registered Node or a changed providerID starts afresh.
#[derive(Default)]
pub struct LookupStarts {
    began: std::sync::Mutex<HashMap<String, Instant>>,
}

impl LookupStarts {
    /// Entries of Nodes deleted while a lookup was pending are never ended; forgetting them all
    /// only makes some lookups start afresh (slower, never wrong).
    const MAX: usize = 65536;

    fn key(node_uid: &str, what: &str) -> String {
        format!("{node_uid}/{what}")
    }

    /// When the pending lookup of `what` for this Node began: an earlier one still pending, else
    /// `now`.
    pub fn began(&self, node_uid: &str, what: &str, now: Instant) -> Instant {
        let mut m = self.began.lock().unwrap_or_else(|p| p.into_inner());
        let key = Self::key(node_uid, what);
        if m.len() >= Self::MAX && !m.contains_key(&key) {
            m.clear();
        }
        *m.entry(key).or_insert(now)
    }

    /// The lookup had an answer: the next one begins afresh.
    pub fn ended(&self, node_uid: &str, what: &str) {
        let mut m = self.began.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&Self::key(node_uid, what));
    }

    /// Pending lookups (tests).
    pub fn len(&self) -> usize {
        self.began.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ServerCache {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        sync_period: Duration,
        min_interval: Duration,
    ) -> Self {
        ServerCache {
            client,
            scope: None,
            metrics,
            sync_period,
            min_interval: min_interval.min(sync_period),
            snap: RwLock::new(Arc::new(Snapshot::default())),
            refresh: Mutex::new(RefreshState {
                last_attempt: None,
                failures: 0,
                not_before: None,
            }),
        }
    }

    /// Lists only the servers carrying `tag` (`--cluster-tag`).
    pub fn scoped_to(mut self, tag: Option<ClusterTag>) -> Self {
        self.scope = tag;
        self
    }

    /// The tag the listing is scoped to; `None`: the whole account.
    pub fn scope(&self) -> Option<&ClusterTag> {
        self.scope.as_ref()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a panic elsewhere; the snapshot itself is immutable.
        match self.snap.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The running server whose NAT (public) IP `ip` is, in the current listing.
    pub fn nat_owner(&self, ip: &IpAddr) -> Option<String> {
        self.current().by_nat_ip.get(ip).cloned()
    }

    /// A snapshot no older than the sync period (refreshing if needed).
    pub async fn fresh(&self) -> Result<Arc<Snapshot>, CacheError> {
        let s = self.current();
        match s.age() {
            Some(a) if a < self.sync_period => Ok(s),
            _ => self.refresh_if_not_newer(s.fetched_at, false).await,
        }
    }

    /// A snapshot whose listing started at or after `after` (and no older than the sync period):
    /// the VLAN address allocator must see its own writes of the last round, else an address it
    /// just wrote would look released (crate::allocator).
    pub async fn listed_since(&self, after: Option<Instant>) -> Result<Arc<Snapshot>, CacheError> {
        let ok = |s: &Snapshot| {
            s.age().is_some_and(|a| a < self.sync_period)
                && after.is_none_or(|t| s.started_at.is_some_and(|st| st >= t))
        };
        let mut s = self.current();
        // A refresh that was under way when we asked may have started before `after`: then once
        // more (a third listing in a row would only be another caller's race again).
        for _ in 0..3 {
            if ok(&s) {
                return Ok(s);
            }
            s = self.refresh_if_not_newer(s.fetched_at, false).await?;
        }
        if ok(&s) {
            return Ok(s);
        }
        Err(CacheError::List {
            error: "no servers listing started after the last address writes".into(),
            retry_in: self.min_interval,
        })
    }

    /// Refreshes unless someone else already refreshed after `seen`. With `rate_limited`, a
    /// listing younger than `min_interval` is returned as is (on-demand refreshes for unknown uuids
    /// must not turn into one listing per Node).
    async fn refresh_if_not_newer(
        &self,
        seen: Option<Instant>,
        rate_limited: bool,
    ) -> Result<Arc<Snapshot>, CacheError> {
        let mut st = self.refresh.lock().await;
        let cur = self.current();
        if cur.fetched_at.is_some() && cur.fetched_at != seen {
            return Ok(cur); // refreshed while we waited for the lock
        }
        let now = Instant::now();
        if let Some(nb) = st.not_before {
            if now < nb {
                return Err(CacheError::BackingOff {
                    failures: st.failures,
                    retry_in: nb - now,
                });
            }
        }
        if rate_limited {
            if let Some(last) = st.last_attempt {
                if now.duration_since(last) < self.min_interval && cur.fetched_at.is_some() {
                    return Ok(cur);
                }
            }
        }
        st.last_attempt = Some(now);
        let t0 = Instant::now();
        let res = match &self.scope {
            Some(tag) => self.client.tag_servers_detail(&tag.uuid).await,
            None => self.client.list_servers().await,
        };
        self.metrics
            .api_call("list_servers", res.is_ok(), t0.elapsed());
        match res {
            Ok(list) => {
                st.failures = 0;
                st.not_before = None;
                self.metrics.cached_servers.set(list.len() as i64);
                let snap = Arc::new(Snapshot::from_list(list, t0));
                match self.snap.write() {
                    Ok(mut g) => *g = snap.clone(),
                    Err(p) => *p.into_inner() = snap.clone(),
                }
                self.metrics.listed();
                tracing::debug!(
                    servers = snap.by_uuid.len(),
                    took_ms = t0.elapsed().as_millis() as u64,
                    "servers listed"
                );
                Ok(snap)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                // 1 s, 2 s, 4 s … capped at the sync period; a Retry-After (429) wins when longer.
                let mut wait = Duration::from_secs(1u64 << st.failures.min(6).saturating_sub(1));
                wait = wait.min(self.sync_period.max(Duration::from_secs(1)));
                if let Some(ra) = e.retry_after() {
                    wait = wait.max(ra);
                }
                st.not_before = Some(Instant::now() + wait);
                tracing::warn!(error = %e, failures = st.failures, backoff_ms = wait.as_millis() as u64, "CloudSigma servers listing failed");
                Err(CacheError::List {
                    error: e.to_string(),
                    retry_in: wait,
                })
            }
        }
    }

    /// Looks a server up by uuid; an unknown uuid triggers one rate-limited refresh.
    pub async fn by_uuid(&self, uuid: &str) -> Result<Lookup, CacheError> {
        self.by_uuid_since(uuid, Instant::now()).await
    }

    /// [`Self::by_uuid`] for a lookup that began at `began` (an earlier attempt that failed or
    /// missed, see [`LookupStarts`]): any listing started since then answers it.
    pub async fn by_uuid_since(&self, uuid: &str, began: Instant) -> Result<Lookup, CacheError> {
        let snap = self.fresh().await?;
        if let Some(s) = snap.by_uuid.get(uuid) {
            return Ok(Lookup::Found(s.clone()));
        }
        if listing_confirms(snap.started_at, began) {
            return Ok(Lookup::NotListed);
        }
        let snap = self.refresh_if_not_newer(snap.fetched_at, true).await?;
        Ok(match snap.by_uuid.get(uuid) {
            Some(s) => Lookup::Found(s.clone()),
            None => self.missing(&snap, began).await,
        })
    }

    /// Looks a server up by name (Nodes without providerID). More than one match is an error.
    pub async fn by_name(&self, name: &str) -> Result<Lookup, CacheError> {
        self.by_name_since(name, Instant::now()).await
    }

    /// [`Self::by_name`] for a lookup that began at `began`.
    pub async fn by_name_since(&self, name: &str, began: Instant) -> Result<Lookup, CacheError> {
        let mut snap = self.fresh().await?;
        if !snap.by_name.contains_key(name) && !listing_confirms(snap.started_at, began) {
            snap = self.refresh_if_not_newer(snap.fetched_at, true).await?;
        }
        match snap.by_name.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(self.missing(&snap, began).await),
            Some([one]) => Ok(Lookup::Found(one.clone())),
            Some(many) => Err(CacheError::Ambiguous(format!(
                "{} CloudSigma servers are named {name:?} ({}); set the Node's providerID (kubelet --provider-id=cloudsigma://<uuid>) or rename the servers",
                many.len(),
                many.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// A miss in `snap`: confirmed when the listing is newer than the lookup, else "ask again once
    /// the next listing is allowed".
    async fn missing(&self, snap: &Snapshot, asked: Instant) -> Lookup {
        if listing_confirms(snap.started_at, asked) {
            return Lookup::NotListed;
        }
        let st = self.refresh.lock().await;
        let now = Instant::now();
        let next = [
            st.last_attempt.map(|t| t + self.min_interval),
            st.not_before,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
        // Never spin: at least a short pause even if a listing is allowed right now.
        Lookup::NotYet(
            next.saturating_duration_since(now)
                .max(Duration::from_millis(100)),
        )
    }

    /// Is the server definitively gone? Only a direct GET answering 404 says yes; anything else
    /// (found, any error, timeout) is "not certain". Called only after a complete listing lacked it.
    pub async fn confirm_gone(&self, uuid: &str) -> Result<bool, String> {
        let t0 = Instant::now();
        let res = self.client.get_server(uuid).await;
        let ok = match &res {
            Ok(_) => true,
            Err(e) => e.is_not_found(),
        };
        self.metrics.api_call("get_server", ok, t0.elapsed());
        match res {
            Ok(_) => Ok(false),
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_lookup_keeps_its_start_until_answered_per_node_and_server() {
        let l = LookupStarts::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3);
        assert_eq!(l.began("uid-1", "uuid:a", t0), t0);
        // retries keep the first start
        assert_eq!(l.began("uid-1", "uuid:a", later), t0);
        // another Node, another server: their own
        assert_eq!(l.began("uid-2", "uuid:a", later), later);
        assert_eq!(l.began("uid-1", "name:n", later), later);
        l.ended("uid-1", "uuid:a");
        assert_eq!(l.began("uid-1", "uuid:a", later), later);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn a_tag_name_must_match_exactly_one_tag() {
        let tag = |uuid: &str, name: &str| cloudsigma_api::models::Tag {
            uuid: uuid.into(),
            name: name.into(),
            resources: vec![],
            meta: Default::default(),
            resource_uri: None,
            extra: Default::default(),
        };
        let tags = [
            tag("A1", "cluster-a"),
            tag("b2", "cluster-b"),
            tag("c3", "cluster-b"),
        ];
        let one = pick_tag("cluster-a", &tags).unwrap();
        assert_eq!((one.uuid.as_str(), one.name.as_str()), ("a1", "cluster-a"));
        let none = pick_tag("cluster-x", &tags).unwrap_err().to_string();
        assert!(
            none.contains("\"cluster-x\"") && none.contains("no CloudSigma tag"),
            "{none}"
        );
        let many = pick_tag("cluster-b", &tags).unwrap_err().to_string();
        assert!(
            many.contains("\"cluster-b\"") && many.contains("b2, c3"),
            "{many}"
        );
        // exact names only
        assert!(pick_tag("Cluster-A", &tags).is_err());
    }

    #[test]
    fn only_a_listing_started_after_the_lookup_began_confirms_a_miss() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        assert!(listing_confirms(Some(t1), t0));
        assert!(listing_confirms(Some(t0), t0));
        assert!(!listing_confirms(Some(t0), t1));
        assert!(!listing_confirms(None, t0));
    }
}
