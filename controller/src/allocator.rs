//! The leader's VLAN address loop (issue 22, docs/vlan-pools.md): once per sync period, the VLAN
//! listing and a server listing that saw the last round's writes, the pure plan
//! (`crate::pool::plan`), then the writes: each new address into its server's meta by a
//! read-modify-write that keeps every other key, and each pool's bookkeeping into its VLAN's
//! meta. Only the Lease holder runs it (lib.rs), so two replicas of one controller never assign.
//!
//! Everything it needs is rebuilt from the listings each round; the memory kept here is only
//! for metrics (when a NIC was first seen waiting), the Node check (the last round's pools and
//! problems) and the ordering of listings after writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::{Meta, Server};
use futures::StreamExt;

use crate::cache::ServerCache;
use crate::metrics::Metrics;
use crate::pool::{self, Assign, Expect, Plan, Pool, Problem};
use crate::throttle::WarningThrottle;

/// Default of `--vlan-address-quarantine`: long enough for ARP caches, a deleted server's Node
/// (removed by the lifecycle check within a sync period or two) and a guest whose key was
/// removed (its agent drops the address at its next look) to forget an address before another
/// NIC gets it.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(300);

/// Parallel server meta writes of one round (a burst of new servers is written in parallel,
/// well under CloudSigma's 10,000 requests/min [V docs]).
const WRITE_CONCURRENCY: usize = 8;

/// The outcome of one round.
pub struct Round {
    /// Usable pools by VLAN uuid.
    pub pools: BTreeMap<String, Pool>,
    pub plan: Plan,
    /// The assignments written (or found already written with the same value).
    pub written: Vec<Assign>,
    /// Problems whose log line was due (each once per [`crate::throttle::WARNING_REPEAT`]);
    /// the Nodes get theirs from their reconciles.
    pub due: Vec<Problem>,
}

pub struct Allocator {
    metrics: Arc<Metrics>,
    quarantine: Duration,
    /// (server, mac) → when first seen waiting for an address (the latency histogram).
    first_seen: Mutex<HashMap<(String, String), Instant>>,
    /// When the last round ended: the next round's listing must start after it, so that it
    /// sees the last round's writes (else a just-written address would look released) and every
    /// server created since (a new server waits at most one sync period).
    last_end: Mutex<Option<Instant>>,
    last: RwLock<Option<Arc<Round>>>,
    warnings: WarningThrottle,
    /// Why the last round failed; cleared by a successful one.
    last_error: Mutex<Option<String>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Allocator {
    pub fn new(metrics: Arc<Metrics>, quarantine: Duration) -> Allocator {
        Allocator {
            metrics,
            quarantine,
            first_seen: Default::default(),
            last_end: Default::default(),
            last: Default::default(),
            warnings: WarningThrottle::default(),
            last_error: Default::default(),
        }
    }

    /// The last round, if any.
    pub fn last(&self) -> Option<Arc<Round>> {
        match self.last.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// What `server`'s Node must provide as its node IP; `None` before the first round.
    pub fn expect(&self, server: &Server) -> Option<Expect> {
        let r = self.last()?;
        Some(pool::expected_node_ips(server, &r.pools, Some(&r.plan)))
    }

    /// The last round's problems concerning `server`: its NICs' own, and those of the pools of
    /// its VLANs.
    pub fn problems_for(&self, server: &Server) -> Vec<Problem> {
        let Some(r) = self.last() else {
            return vec![];
        };
        let uuid = server.uuid.to_ascii_lowercase();
        r.plan
            .problems
            .iter()
            .filter(|p| match &p.server {
                Some(s) => *s == uuid,
                None => server.nics.iter().any(|n| {
                    n.vlan
                        .as_ref()
                        .is_some_and(|v| v.uuid().eq_ignore_ascii_case(&p.vlan))
                }),
            })
            .cloned()
            .collect()
    }

    /// Why the last round failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// One round: listings, plan, writes. An error names what failed; nothing was written then.
    pub async fn round(&self, cache: &ServerCache) -> Result<Arc<Round>, String> {
        let res = self.round_inner(cache).await;
        *lock(&self.last_error) = res.as_ref().err().cloned();
        res
    }

    async fn round_inner(&self, cache: &ServerCache) -> Result<Arc<Round>, String> {
        // The first round (this replica just took the Lease) lists afresh too: a listing from
        // before could lack what the previous leader wrote last.
        let after = lock(&self.last_end).unwrap_or_else(Instant::now);
        let client = cache.client();
        let t0 = Instant::now();
        let vlans = client.list_vlans().await;
        self.metrics
            .api_call("list_vlans", vlans.is_ok(), t0.elapsed());
        let vlans = vlans.map_err(|e| format!("VLAN addresses: listing VLANs: {e}"))?;
        // The plan reads servers only for pooled VLANs: with no pool, no server listing at all.
        // With pools, the servers of the whole account (a VLAN may be shared by clusters): the
        // shared listing when it is account-wide, else one of our own (`--cluster-tag`).
        let (snap, own);
        let servers: Vec<&Server> = if pool::pools(&vlans).0.is_empty() {
            vec![]
        } else if cache.scope().is_some() {
            own = self.list_account(client).await?;
            own.iter().collect()
        } else {
            snap = cache
                .listed_since(Some(after))
                .await
                .map_err(|e| format!("VLAN addresses: {e}"))?;
            snap.by_uuid.values().map(|s| s.as_ref()).collect()
        };
        // Release times are whole seconds: a quarantine is never rounded down to none.
        let quarantine = self.quarantine.as_millis().div_ceil(1000) as u64;
        let plan = pool::plan(&vlans, &servers, unix_now(), quarantine);
        let (pools, _) = pool::pools(&vlans);
        self.note_waiting(&plan);
        let written = self.write_assignments(client, &plan.assign).await;
        self.write_vlan_meta(client, &plan).await;
        *lock(&self.last_end) = Some(Instant::now());
        for (vlan, st) in &plan.pools {
            self.metrics.pool(vlan, st.in_use, st.free, st.quarantined);
        }
        // A pool that stopped being usable (removed, broken, overlapping) shows no addresses.
        for vlan in self.last().iter().flat_map(|r| r.pools.keys()) {
            if !plan.pools.contains_key(vlan) {
                self.metrics.pool(vlan, 0, 0, 0);
            }
        }
        for (vlan, a) in &plan.released_now {
            tracing::info!(vlan = %vlan, address = %a, quarantine_s = self.quarantine.as_secs(), "VLAN address released: quarantined");
        }
        let due = self.due_problems(&plan.problems);
        let round = Arc::new(Round {
            pools,
            plan,
            written,
            due,
        });
        match self.last.write() {
            Ok(mut g) => *g = Some(round.clone()),
            Err(p) => *p.into_inner() = Some(round.clone()),
        }
        Ok(round)
    }

    /// Every server of the account, for a controller whose shared listing is scoped to a tag.
    async fn list_account(&self, client: &Client) -> Result<Vec<Server>, String> {
        let t0 = Instant::now();
        let res = client.list_servers().await;
        self.metrics
            .api_call("list_servers", res.is_ok(), t0.elapsed());
        res.map_err(|e| format!("VLAN addresses: listing the account's servers: {e}"))
    }

    /// Remembers when each waiting NIC (about to be written, or left in a full pool) was first
    /// seen; forgets the others.
    fn note_waiting(&self, plan: &Plan) {
        let now = Instant::now();
        let mut seen = lock(&self.first_seen);
        let waiting: HashSet<(String, String)> = plan
            .assign
            .iter()
            .map(|a| (a.server.clone(), a.mac.clone()))
            .chain(plan.unassigned.iter().cloned())
            .collect();
        seen.retain(|k, _| waiting.contains(k));
        for k in waiting {
            seen.entry(k).or_insert(now);
        }
    }

    /// Writes each assignment unless the server's fresh meta already has a key for the NIC.
    async fn write_assignments(&self, client: &Client, assign: &[Assign]) -> Vec<Assign> {
        let results: Vec<Option<Assign>> = futures::stream::iter(assign.iter().cloned())
            .map(|a| async move { self.write_one(client, a).await })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().flatten().collect()
    }

    async fn write_one(&self, client: &Client, a: Assign) -> Option<Assign> {
        let value = a.value.to_string();
        let t0 = Instant::now();
        let res = client
            .modify_server_meta(&a.server, |m: &mut Meta| {
                if m.contains_key(&a.key) {
                    return false; // written meanwhile (by us before a lost answer, or by hand)
                }
                m.insert(a.key.clone(), value.clone());
                true
            })
            .await;
        self.metrics
            .api_call("update_server_meta", res.is_ok(), t0.elapsed());
        match res {
            Ok(s) if s.meta.get(&a.key) == Some(&value) => {
                let first = lock(&self.first_seen).remove(&(a.server.clone(), a.mac.clone()));
                if let Some(t) = first {
                    self.metrics
                        .assign_latency
                        .observe(t.elapsed().as_secs_f64());
                }
                self.metrics.addresses_assigned.inc();
                tracing::info!(server = %a.server, mac = %a.mac, vlan = %a.vlan, address = %value, "VLAN address assigned");
                Some(a)
            }
            Ok(s) => {
                tracing::info!(server = %a.server, key = %a.key, found = ?s.meta.get(&a.key), "VLAN address key already set; not overwritten");
                None
            }
            Err(e) => {
                tracing::warn!(server = %a.server, key = %a.key, address = %value, error = %e, "writing the VLAN address failed; next round tries again");
                None
            }
        }
    }

    /// The pools' bookkeeping ([`pool::RELEASED_KEY`], [`pool::IN_USE_KEY`]) into the VLANs'
    /// meta, every other key kept.
    async fn write_vlan_meta(&self, client: &Client, plan: &Plan) {
        for u in &plan.vlan_meta {
            let t0 = Instant::now();
            let res = client
                .modify_vlan_meta(&u.vlan, |m| {
                    let a = set_or_remove(m, pool::RELEASED_KEY, &u.released);
                    let b = set_or_remove(m, pool::IN_USE_KEY, &u.in_use);
                    a || b
                })
                .await;
            self.metrics
                .api_call("update_vlan_meta", res.is_ok(), t0.elapsed());
            if let Err(e) = res {
                tracing::warn!(vlan = %u.vlan, error = %e, "writing the VLAN pool bookkeeping failed; next round tries again");
            }
        }
    }

    /// Logs and counts the problems whose repeat is due; those get Events (lib.rs).
    fn due_problems(&self, problems: &[Problem]) -> Vec<Problem> {
        let now = Instant::now();
        let mut due = vec![];
        for p in problems {
            let key = format!(
                "{}/{}/{}/{}",
                p.kind.reason(),
                p.vlan,
                p.server.as_deref().unwrap_or(""),
                p.mac.as_deref().unwrap_or("")
            );
            if self.warnings.due(&key, now) {
                self.metrics.pool_problem(p.kind.reason());
                tracing::warn!(reason = p.kind.reason(), vlan = %p.vlan, server = ?p.server, mac = ?p.mac, "{}", p.message);
                due.push(p.clone());
            }
        }
        due
    }
}

/// Sets `key` to `value` (removes it for an empty value); whether that changed `m`.
fn set_or_remove(m: &mut Meta, key: &str, value: &str) -> bool {
    if value.is_empty() {
        m.remove(key).is_some()
    } else if m.get(key).map(String::as_str) == Some(value) {
        false
    } else {
        m.insert(key.to_string(), value.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_keys_are_set_changed_or_removed() {
        let mut m = Meta::new();
        m.insert("other".into(), "kept".into());
        assert!(set_or_remove(&mut m, "k", "v"));
        assert!(!set_or_remove(&mut m, "k", "v"));
        assert!(set_or_remove(&mut m, "k", ""));
        assert!(!set_or_remove(&mut m, "k", ""));
        assert_eq!(m.len(), 1);
    }
}
