//! Pure VLAN address allocation (issue 22, docs/vlan-pools.md): from one VLAN listing and one
//! server listing, which addresses to write into which server's meta, what to persist in each
//! VLAN's meta, and what is wrong. No I/O here (the leader's loop is `crate::allocator`), so
//! every rule is unit-tested below, in the style of node.rs.
//!
//! Everything is rebuilt from the two listings: a new leader needs no memory of the old one.
//! The keys shared with the agent are in `cloudsigma_api::pool`; the two VLAN meta keys below
//! are the controller's own bookkeeping.
//!
//! Rules:
//! - A VLAN's pool is used only if [`POOL_KEY`] parses and overlaps no other VLAN's pool.
//! - An address is *held* when any server's meta (account-wide: a VLAN can be shared by
//!   clusters, and the listing is the account's) has an assignment key with it, whatever the
//!   key's MAC. Held addresses are never handed out again.
//! - A NIC's assignment is *valid* when it parses, lies in its VLAN's pool range and no other
//!   holder of that address wins over it (a NIC on that VLAN beats a stale key of a removed NIC,
//!   then the lower server uuid, then the lower MAC: the listing does not tell which was written
//!   first). An invalid assignment is reported and left for the operator: nothing is assigned
//!   in its place, so an address is never handed out twice.
//! - An address held in the last round ([`IN_USE_KEY`]) and not held now was released now; it
//!   is *quarantined* ([`RELEASED_KEY`]) until `quarantine` has passed, and not handed out.
//! - NICs without a key get the lowest address of the range that is neither held nor
//!   quarantined; when none is left the pool is full (reported, nothing assigned).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use cloudsigma_api::models::{Meta, Server, ServerStatus, Vlan};
pub use cloudsigma_api::pool::{assignment_key, assignment_mac, Assignment, Pool, POOL_KEY};

/// VLAN meta key: addresses released recently, `"<address>@<unix seconds>,…"`, written by the
/// leader when it sees an assignment disappear and pruned once the quarantine has passed.
pub const RELEASED_KEY: &str = "k8s-ipv4-released";
/// VLAN meta key: the addresses held at the leader's last round, as ranges
/// `"<first>-<last>,<address>,…"`. A new leader compares its first listing with it, so an
/// address released while no leader ran is quarantined all the same.
pub const IN_USE_KEY: &str = "k8s-ipv4-in-use";

/// What went wrong, one Event reason each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// The VLAN's pool value does not parse.
    BadPool,
    /// The VLAN's pool overlaps another VLAN's pool.
    OverlappingPool,
    /// An assignment value that does not parse.
    BadAssignment,
    /// An assignment outside its VLAN's pool range.
    OutsidePool,
    /// Two holders of one address; this one lost.
    DuplicateAssignment,
    /// NICs wait for an address and none is free.
    PoolFull,
}

impl ProblemKind {
    /// The Event reason (UpperCamelCase, one per kind).
    pub fn reason(self) -> &'static str {
        match self {
            ProblemKind::BadPool => "InvalidVLANPool",
            ProblemKind::OverlappingPool => "OverlappingVLANPool",
            ProblemKind::BadAssignment => "InvalidVLANAddress",
            ProblemKind::OutsidePool => "VLANAddressOutsidePool",
            ProblemKind::DuplicateAssignment => "DuplicateVLANAddress",
            ProblemKind::PoolFull => "VLANPoolFull",
        }
    }
}

/// One problem: the VLAN, and the server and MAC when it is about one NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub vlan: String,
    pub server: Option<String>,
    pub mac: Option<String>,
    pub message: String,
}

/// An address to write: `key` = `value` into the meta of `server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assign {
    pub server: String,
    pub vlan: String,
    pub mac: String,
    pub key: String,
    pub value: Assignment,
}

/// New values of a VLAN's bookkeeping keys (written only when they changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanMetaUpdate {
    pub vlan: String,
    pub released: String,
    pub in_use: String,
}

/// A usable pool and its counts after this round's assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    pub pool: Pool,
    pub in_use: u32,
    pub quarantined: u32,
    pub free: u32,
}

/// The outcome of one round.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Usable pools by VLAN uuid.
    pub pools: BTreeMap<String, PoolState>,
    pub assign: Vec<Assign>,
    pub vlan_meta: Vec<VlanMetaUpdate>,
    pub problems: Vec<Problem>,
    /// Addresses this round released (VLAN uuid, address): for logs and tests.
    pub released_now: Vec<(String, Ipv4Addr)>,
    /// NICs left waiting in a full pool: (server uuid, MAC).
    pub unassigned: Vec<(String, String)>,
}

impl Plan {
    /// Whether the NIC `mac` of `server` has a reported problem (its assignment is not valid).
    pub fn nic_problem(&self, server: &str, mac: &str) -> Option<&Problem> {
        self.problems.iter().find(|p| {
            p.server.as_deref() == Some(server)
                && p.mac
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(mac))
        })
    }
}

/// The VLAN uuid of a NIC, lower case.
fn nic_vlan(n: &cloudsigma_api::models::Nic) -> Option<String> {
    n.vlan.as_ref().map(|v| v.uuid().to_ascii_lowercase())
}

/// The usable pools by VLAN uuid, and the problems of the others.
pub fn pools(vlans: &[Vlan]) -> (BTreeMap<String, Pool>, Vec<Problem>) {
    let mut parsed: BTreeMap<String, Pool> = BTreeMap::new();
    let mut problems = vec![];
    for v in vlans {
        let Some(value) = v.meta.get(POOL_KEY) else {
            continue;
        };
        let uuid = v.uuid.to_ascii_lowercase();
        match Pool::parse(value) {
            Ok(p) => {
                parsed.insert(uuid, p);
            }
            Err(e) => problems.push(Problem {
                kind: ProblemKind::BadPool,
                message: format!("VLAN {uuid} meta {POOL_KEY}: {e}; the pool is not used"),
                vlan: uuid,
                server: None,
                mac: None,
            }),
        }
    }
    let mut bad = BTreeSet::new();
    for (a, pa) in &parsed {
        for (b, pb) in &parsed {
            if a != b && pa.net.overlaps(&pb.net) {
                bad.insert(a.clone());
                problems.push(Problem {
                    kind: ProblemKind::OverlappingPool,
                    message: format!(
                        "VLAN {a} meta {POOL_KEY}={pa:?} overlaps the pool {pb} of VLAN {b}: neither is used until one is changed (expected one network per VLAN, e.g. \"192.168.77.0/24\" and \"192.168.78.0/24\")",
                        pa = pa.to_string()
                    ),
                    vlan: a.clone(),
                    server: None,
                    mac: None,
                });
            }
        }
    }
    parsed.retain(|k, _| !bad.contains(k));
    (parsed, problems)
}

/// `"a-b,c"` ranges of a set of addresses (empty for none).
pub fn format_ranges(addrs: &BTreeSet<Ipv4Addr>) -> String {
    let mut out: Vec<String> = vec![];
    let mut it = addrs.iter().map(|a| u32::from(*a)).peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last.wrapping_add(1))) {
            last += 1;
            it.next();
        }
        if first == last {
            out.push(Ipv4Addr::from(first).to_string());
        } else {
            out.push(format!(
                "{}-{}",
                Ipv4Addr::from(first),
                Ipv4Addr::from(last)
            ));
        }
    }
    out.join(",")
}

/// The addresses of [`format_ranges`]; unreadable parts are skipped (the key is ours, but meta
/// can be edited by hand), ranges longer than 65,536 addresses too.
pub fn parse_ranges(s: &str) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (f, l) = part.split_once('-').unwrap_or((part, part));
        let (Ok(f), Ok(l)) = (f.trim().parse::<Ipv4Addr>(), l.trim().parse::<Ipv4Addr>()) else {
            continue;
        };
        let (f, l) = (u32::from(f), u32::from(l));
        if f <= l && l - f < 65536 {
            out.extend((f..=l).map(Ipv4Addr::from));
        }
    }
    out
}

/// The released addresses and when, from [`RELEASED_KEY`]; unreadable entries are skipped.
pub fn parse_released(s: &str) -> BTreeMap<Ipv4Addr, u64> {
    s.split(',')
        .filter_map(|e| {
            let (a, t) = e.trim().split_once('@')?;
            Some((a.trim().parse().ok()?, t.trim().parse().ok()?))
        })
        .collect()
}

pub fn format_released(r: &BTreeMap<Ipv4Addr, u64>) -> String {
    r.iter()
        .map(|(a, t)| format!("{a}@{t}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One holder of an address: a server's assignment key.
#[derive(Debug, Clone)]
struct Holder {
    server: String,
    mac: String,
    /// The key's MAC is a NIC of the server on this pool's VLAN.
    on_vlan: bool,
}

/// What one pool sees in the server listing.
#[derive(Default)]
struct PoolView {
    holders: BTreeMap<Ipv4Addr, Vec<Holder>>,
    /// NICs on the VLAN without a key: (server uuid, mac).
    waiting: Vec<(String, String)>,
}

/// One round. `servers` is the account's whole listing, `now` unix seconds, `quarantine` in
/// seconds.
pub fn plan(vlans: &[Vlan], servers: &[&Server], now: u64, quarantine: u64) -> Plan {
    let (pools, mut problems) = pools(vlans);
    let mut views: BTreeMap<String, PoolView> = pools
        .keys()
        .map(|k| (k.clone(), PoolView::default()))
        .collect();
    let mut sorted: Vec<&Server> = servers.to_vec();
    sorted.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    for s in sorted {
        read_server(s, &pools, &mut views, &mut problems);
    }
    let mut out = Plan::default();
    for (vlan, pool) in &pools {
        let view = views.remove(vlan).unwrap_or_default();
        let meta = vlans
            .iter()
            .find(|v| v.uuid.eq_ignore_ascii_case(vlan))
            .map(|v| &v.meta);
        allocate(
            vlan,
            pool,
            view,
            meta,
            now,
            quarantine,
            &mut out,
            &mut problems,
        );
    }
    out.problems = problems;
    out
}

/// Records a server's NICs and assignment keys in the pools' views; reports keys that do not
/// parse or lie outside their VLAN's pool.
fn read_server(
    s: &Server,
    pools: &BTreeMap<String, Pool>,
    views: &mut BTreeMap<String, PoolView>,
    problems: &mut Vec<Problem>,
) {
    let uuid = s.uuid.to_ascii_lowercase();
    // NICs on pooled VLANs, by lower-case MAC.
    let nics: BTreeMap<String, String> = s
        .nics
        .iter()
        .filter_map(|n| Some((n.mac.as_deref()?.to_ascii_lowercase(), nic_vlan(n)?)))
        .filter(|(_, v)| pools.contains_key(v))
        .collect();
    let mut keyed = BTreeSet::new();
    for (key, value) in &s.meta {
        let Some(mac) = assignment_mac(key).map(str::to_ascii_lowercase) else {
            continue;
        };
        keyed.insert(mac.clone());
        let vlan = nics.get(&mac);
        let report = |kind, message: String| Problem {
            kind,
            vlan: vlan.cloned().unwrap_or_default(),
            server: Some(uuid.clone()),
            mac: Some(mac.clone()),
            message,
        };
        let a = match Assignment::parse(value) {
            Ok(a) => a,
            Err(e) => {
                if vlan.is_some() {
                    problems.push(report(ProblemKind::BadAssignment, format!("server {uuid} meta {key}: {e}; delete the key to get an address from the pool")));
                }
                continue;
            }
        };
        // Held by whichever pool's network has it (a stale key of a removed NIC still holds).
        let owner = match vlan {
            Some(v) => Some(v.clone()),
            None => pools
                .iter()
                .find(|(_, p)| p.net.contains(a.addr))
                .map(|(k, _)| k.clone()),
        };
        let Some(owner) = owner else { continue };
        let pool = &pools[&owner];
        if vlan.is_some() && (!pool.contains(a.addr) || a.prefix != pool.net.prefix) {
            problems.push(report(ProblemKind::OutsidePool, format!(
                "server {uuid} meta {key}={value:?} is not an address of the pool {pool} of VLAN {owner} (expected \"<address>/{}\" with the address in {}-{}); delete the key to get one from the pool",
                pool.net.prefix, pool.first, pool.last
            )));
            if !pool.net.contains(a.addr) {
                continue;
            }
        }
        if let Some(view) = views.get_mut(&owner) {
            view.holders.entry(a.addr).or_default().push(Holder {
                server: uuid.clone(),
                mac: mac.clone(),
                on_vlan: vlan.is_some(),
            });
        }
    }
    let deleting = s.status == ServerStatus::Deleting;
    for (mac, vlan) in &nics {
        if !keyed.contains(mac) && !deleting {
            if let Some(view) = views.get_mut(vlan) {
                view.waiting.push((uuid.clone(), mac.clone()));
            }
        }
    }
}

/// Duplicates, quarantine, the lowest free addresses, and the VLAN's bookkeeping for one pool.
#[allow(clippy::too_many_arguments)]
fn allocate(
    vlan: &str,
    pool: &Pool,
    view: PoolView,
    meta: Option<&Meta>,
    now: u64,
    quarantine: u64,
    out: &mut Plan,
    problems: &mut Vec<Problem>,
) {
    for (addr, holders) in &view.holders {
        report_duplicates(vlan, *addr, holders, problems);
    }
    let held: BTreeSet<Ipv4Addr> = view.holders.keys().copied().collect();
    let get = |k: &str| meta.and_then(|m| m.get(k)).map(String::as_str);
    let prev_in_use = parse_ranges(get(IN_USE_KEY).unwrap_or(""));
    let mut released = parse_released(get(RELEASED_KEY).unwrap_or(""));
    released.retain(|a, t| now.saturating_sub(*t) < quarantine && !held.contains(a));
    for a in prev_in_use.difference(&held) {
        if !released.contains_key(a) && quarantine > 0 {
            released.insert(*a, now);
        }
        out.released_now.push((vlan.to_string(), *a));
    }
    let mut free = pool
        .addresses()
        .filter(|a| !held.contains(a) && !released.contains_key(a));
    let mut in_use = held.clone();
    let mut full = 0usize;
    for (server, mac) in view.waiting {
        match free.next() {
            Some(addr) => {
                in_use.insert(addr);
                out.assign.push(Assign {
                    key: assignment_key(&mac),
                    server,
                    vlan: vlan.to_string(),
                    mac,
                    value: Assignment {
                        addr,
                        prefix: pool.net.prefix,
                    },
                });
            }
            None => {
                full += 1;
                out.unassigned.push((server, mac));
            }
        }
    }
    if full > 0 {
        problems.push(Problem {
            kind: ProblemKind::PoolFull,
            vlan: vlan.to_string(),
            server: None,
            mac: None,
            message: format!(
                "VLAN {vlan} pool {pool} is full ({} addresses held, {} quarantined): {full} NIC(s) wait for an address; widen {POOL_KEY}, or delete servers (an address comes back after the quarantine)",
                held.iter().filter(|a| pool.contains(**a)).count(),
                released.len()
            ),
        });
    }
    let in_pool = |s: &BTreeSet<Ipv4Addr>| s.iter().filter(|a| pool.contains(**a)).count() as u32;
    let quarantined = released.keys().filter(|a| pool.contains(**a)).count() as u32;
    let used = in_pool(&in_use);
    out.pools.insert(
        vlan.to_string(),
        PoolState {
            pool: *pool,
            in_use: used,
            quarantined,
            free: pool.size().saturating_sub(used + quarantined),
        },
    );
    let (r, u) = (format_released(&released), format_ranges(&in_use));
    if get(RELEASED_KEY).unwrap_or("") != r || get(IN_USE_KEY).unwrap_or("") != u {
        out.vlan_meta.push(VlanMetaUpdate {
            vlan: vlan.to_string(),
            released: r,
            in_use: u,
        });
    }
}

/// Every holder of `addr` but the winner is reported: a NIC on the VLAN beats a stale key, then
/// the lower (server, MAC).
fn report_duplicates(vlan: &str, addr: Ipv4Addr, holders: &[Holder], problems: &mut Vec<Problem>) {
    if holders.len() < 2 {
        return;
    }
    let mut hs: Vec<&Holder> = holders.iter().collect();
    hs.sort_by(|a, b| (!a.on_vlan, &a.server, &a.mac).cmp(&(!b.on_vlan, &b.server, &b.mac)));
    let winner = hs[0];
    for h in &hs[1..] {
        // A stale key (no such NIC on the VLAN) concerns no NIC that could use the address.
        if !h.on_vlan {
            continue;
        }
        problems.push(Problem {
            kind: ProblemKind::DuplicateAssignment,
            vlan: vlan.to_string(),
            server: Some(h.server.clone()),
            mac: Some(h.mac.clone()),
            message: format!(
                "server {} meta {}: address {addr} is also held by server {} (meta {}); it stays with that one and this NIC has no valid address: delete this key to get a free one",
                h.server,
                assignment_key(&h.mac),
                winner.server,
                assignment_key(&winner.mac)
            ),
        });
    }
}

/// What a Node's provided node IP must be, for a server with NICs on pooled VLANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No NIC on a usable pool: nothing to check.
    NotPooled,
    /// The assignment is not written yet (or not in the listing yet): wait.
    Waiting { key: String },
    /// One of these (address, key) pairs.
    Assigned(Vec<(Ipv4Addr, String)>),
    /// The NIC's assignment is not valid: why.
    Invalid(String),
}

/// The expected node IP(s) of `server` from its meta, the usable `pools`, and the problems of
/// the last round (an invalid NIC is reported, never expected).
pub fn expected_node_ips(
    server: &Server,
    pools: &BTreeMap<String, Pool>,
    last: Option<&Plan>,
) -> Expect {
    let uuid = server.uuid.to_ascii_lowercase();
    let mut assigned = vec![];
    let mut waiting = None;
    let mut invalid = None;
    for n in &server.nics {
        let (Some(mac), Some(vlan)) = (n.mac.as_deref(), nic_vlan(n)) else {
            continue;
        };
        let Some(pool) = pools.get(&vlan) else {
            continue;
        };
        let key = assignment_key(mac);
        if let Some(p) = last.and_then(|l| l.nic_problem(&uuid, mac)) {
            invalid = Some(p.message.clone());
            continue;
        }
        match server.meta.get(&key).map(|v| Assignment::parse(v)) {
            None => waiting = Some(key),
            Some(Ok(a)) if pool.contains(a.addr) => assigned.push((a.addr, key)),
            Some(Ok(a)) => {
                invalid = Some(format!(
                    "server {uuid} meta {key}={a} is outside the pool {pool} of VLAN {vlan}"
                ))
            }
            Some(Err(e)) => invalid = Some(format!("server {uuid} meta {key}: {e}")),
        }
    }
    if !assigned.is_empty() {
        Expect::Assigned(assigned)
    } else if let Some(why) = invalid {
        Expect::Invalid(why)
    } else if let Some(key) = waiting {
        Expect::Waiting { key }
    } else {
        Expect::NotPooled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudsigma_api::models::{Nic, Ref};

    const V1: &str = "11111111-1111-4111-8111-111111111111";
    const V2: &str = "22222222-2222-4222-8222-222222222222";

    fn vlan(uuid: &str, meta: &[(&str, &str)]) -> Vlan {
        serde_json::from_value(serde_json::json!({
            "uuid": uuid,
            "meta": meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>(),
        }))
        .unwrap()
    }

    fn server(uuid: &str, nics: &[(&str, &str)], meta: &[(&str, &str)]) -> Server {
        let mut s: Server = serde_json::from_value(serde_json::json!({
            "uuid": uuid, "name": uuid, "cpu": 1000, "mem": 1u64 << 30, "status": "running",
        }))
        .unwrap();
        s.nics = nics
            .iter()
            .map(|(mac, v)| Nic {
                mac: Some(mac.to_string()),
                vlan: Some(Ref::Uuid(v.to_string())),
                ..Default::default()
            })
            .collect();
        s.meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn run(vlans: &[Vlan], servers: &[Server], now: u64) -> Plan {
        let refs: Vec<&Server> = servers.iter().collect();
        plan(vlans, &refs, now, 300)
    }

    fn values(p: &Plan) -> Vec<(String, String)> {
        p.assign
            .iter()
            .map(|a| (a.server.clone(), a.value.to_string()))
            .collect()
    }

    #[test]
    fn lowest_free_addresses_go_to_nics_without_a_key() {
        let vl = [vlan(V1, &[(POOL_KEY, "10.0.0.0/24 10.0.0.10-10.0.0.20")])];
        let srv = [
            server("b", &[("22:00:00:00:00:02", V1)], &[]),
            server(
                "a",
                &[("22:00:00:00:00:01", V1)],
                &[("k8s-ipv4-22:00:00:00:00:01", "10.0.0.10/24")],
            ),
            server("c", &[("22:00:00:00:00:03", V1)], &[]),
            server("x", &[("22:00:00:00:00:09", V2)], &[]), // no pool on V2
        ];
        let p = run(&vl, &srv, 1000);
        assert_eq!(
            values(&p),
            [
                ("b".into(), "10.0.0.11/24".into()),
                ("c".into(), "10.0.0.12/24".into())
            ]
        );
        assert_eq!(p.assign[0].key, "k8s-ipv4-22:00:00:00:00:02");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let st = &p.pools[V1];
        assert_eq!((st.in_use, st.quarantined, st.free), (3, 0, 8));
        assert_eq!(p.vlan_meta.len(), 1);
        assert_eq!(p.vlan_meta[0].in_use, "10.0.0.10-10.0.0.12");
        assert_eq!(p.vlan_meta[0].released, "");
    }

    #[test]
    fn bad_and_overlapping_pools_are_not_used_and_say_why() {
        let vl = [
            vlan(V1, &[(POOL_KEY, "10.0.0.0/16")]),
            vlan(V2, &[(POOL_KEY, "10.0.5.0/24")]),
            vlan(
                "33333333-3333-4333-8333-333333333333",
                &[(POOL_KEY, "10.1.0.1/24")],
            ),
        ];
        let srv = [server("a", &[("22:00:00:00:00:01", V1)], &[])];
        let p = run(&vl, &srv, 0);
        assert!(p.assign.is_empty() && p.pools.is_empty());
        let kinds: Vec<_> = p.problems.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                ProblemKind::BadPool,
                ProblemKind::OverlappingPool,
                ProblemKind::OverlappingPool
            ]
        );
        assert!(
            p.problems[0].message.contains("host bits")
                && p.problems[0].message.contains("expected")
        );
        assert!(p.problems[1].message.contains(V2) && p.problems[1].message.contains(V1));
    }

    #[test]
    fn duplicates_and_outside_values_are_reported_and_never_handed_out_again() {
        let vl = [vlan(V1, &[(POOL_KEY, "10.0.0.0/24 10.0.0.10-10.0.0.20")])];
        let srv = [
            server(
                "a",
                &[("22:00:00:00:00:01", V1)],
                &[("k8s-ipv4-22:00:00:00:00:01", "10.0.0.10/24")],
            ),
            server(
                "b",
                &[("22:00:00:00:00:02", V1)],
                &[("k8s-ipv4-22:00:00:00:00:02", "10.0.0.10/24")],
            ),
            server(
                "c",
                &[("22:00:00:00:00:03", V1)],
                &[("k8s-ipv4-22:00:00:00:00:03", "10.0.0.5/24")],
            ),
            server(
                "d",
                &[("22:00:00:00:00:04", V1)],
                &[("k8s-ipv4-22:00:00:00:00:04", "garbage")],
            ),
            // a stale key of a NIC no longer there still holds its address
            server("e", &[], &[("k8s-ipv4-22:00:00:00:00:05", "10.0.0.11/24")]),
            server("f", &[("22:00:00:00:00:06", V1)], &[]),
        ];
        let p = run(&vl, &srv, 0);
        assert_eq!(values(&p), [("f".into(), "10.0.0.12/24".into())]);
        let got: Vec<_> = p
            .problems
            .iter()
            .map(|p| (p.kind, p.server.clone().unwrap_or_default()))
            .collect();
        assert!(
            got.contains(&(ProblemKind::DuplicateAssignment, "b".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&(ProblemKind::OutsidePool, "c".into())),
            "{got:?}"
        );
        assert!(
            got.contains(&(ProblemKind::BadAssignment, "d".into())),
            "{got:?}"
        );
        assert!(!got.iter().any(|(_, s)| s == "a" || s == "e"), "{got:?}");
        let dup = p.nic_problem("b", "22:00:00:00:00:02").unwrap();
        assert!(
            dup.message.contains("k8s-ipv4-22:00:00:00:00:01") && dup.message.contains("10.0.0.10")
        );
        // 10.0.0.5 is in the network: held (never handed out), although outside the range
        assert!(p.vlan_meta[0].in_use.contains("10.0.0.5"));
    }

    #[test]
    fn a_released_address_is_quarantined_then_comes_back() {
        let pool = (POOL_KEY, "10.0.0.0/24 10.0.0.10-10.0.0.11");
        // a held .10 and .11 in the last round; .11's server is gone now
        let vl = [vlan(V1, &[pool, (IN_USE_KEY, "10.0.0.10-10.0.0.11")])];
        let a = server(
            "a",
            &[("22:00:00:00:00:01", V1)],
            &[("k8s-ipv4-22:00:00:00:00:01", "10.0.0.10/24")],
        );
        let new = server("n", &[("22:00:00:00:00:07", V1)], &[]);
        let p = run(&vl, &[a.clone(), new.clone()], 1000);
        assert!(p.assign.is_empty(), "{:?}", p.assign);
        assert_eq!(
            p.unassigned,
            [("n".to_string(), "22:00:00:00:00:07".to_string())]
        );
        assert_eq!(p.released_now, [(V1.to_string(), ip("10.0.0.11"))]);
        assert_eq!(p.problems[0].kind, ProblemKind::PoolFull);
        assert!(
            p.problems[0].message.contains("1 quarantined"),
            "{}",
            p.problems[0].message
        );
        let upd = &p.vlan_meta[0];
        assert_eq!(
            (upd.released.as_str(), upd.in_use.as_str()),
            ("10.0.0.11@1000", "10.0.0.10")
        );
        // the next round (a new leader: all from the VLAN's meta) within the quarantine
        let vl = [vlan(
            V1,
            &[
                pool,
                (IN_USE_KEY, "10.0.0.10"),
                (RELEASED_KEY, "10.0.0.11@1000"),
            ],
        )];
        let p = run(&vl, &[a.clone(), new.clone()], 1299);
        assert!(p.assign.is_empty());
        assert_eq!(p.pools[V1].quarantined, 1);
        // after it
        let p = run(&vl, &[a, new], 1300);
        assert_eq!(values(&p), [("n".into(), "10.0.0.11/24".into())]);
        assert_eq!(p.vlan_meta[0].released, "");
        assert_eq!(p.vlan_meta[0].in_use, "10.0.0.10-10.0.0.11");
    }

    #[test]
    fn nothing_changes_nothing_is_written() {
        let vl = [vlan(
            V1,
            &[(POOL_KEY, "10.0.0.0/24"), (IN_USE_KEY, "10.0.0.2")],
        )];
        let srv = [server(
            "a",
            &[("22:00:00:00:00:01", V1)],
            &[("k8s-ipv4-22:00:00:00:00:01", "10.0.0.2/24")],
        )];
        let p = run(&vl, &srv, 5);
        assert_eq!(
            p,
            Plan {
                pools: p.pools.clone(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn ranges_round_trip_and_bad_bookkeeping_is_skipped() {
        let set: BTreeSet<Ipv4Addr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.7", "10.0.1.0"]
            .iter()
            .map(|s| ip(s))
            .collect();
        let s = format_ranges(&set);
        assert_eq!(s, "10.0.0.1-10.0.0.3,10.0.0.7,10.0.1.0");
        assert_eq!(parse_ranges(&s), set);
        assert_eq!(parse_ranges("x, 10.0.0.9-10.0.0.1, 10.0.0.4 ").len(), 1);
        assert_eq!(parse_ranges("0.0.0.0-255.255.255.255").len(), 0);
        let r = parse_released("10.0.0.1@5, nonsense, 10.0.0.2@x");
        assert_eq!(format_released(&r), "10.0.0.1@5");
    }

    #[test]
    fn deleting_servers_get_nothing() {
        let vl = [vlan(V1, &[(POOL_KEY, "10.0.0.0/24")])];
        let mut s = server("a", &[("22:00:00:00:00:01", V1)], &[]);
        s.status = ServerStatus::Deleting;
        assert!(run(&vl, &[s], 0).assign.is_empty());
    }

    #[test]
    fn the_node_ip_to_expect() {
        let vl = [vlan(V1, &[(POOL_KEY, "10.0.0.0/24")])];
        let (pools, _) = pools(&vl);
        let mac = "22:AA:00:00:00:01";
        let key = "k8s-ipv4-22:aa:00:00:00:01";
        let waiting = server("a", &[(mac, V1)], &[]);
        assert_eq!(
            expected_node_ips(&waiting, &pools, None),
            Expect::Waiting { key: key.into() }
        );
        let ok = server("a", &[(mac, V1)], &[(key, "10.0.0.7/24")]);
        assert_eq!(
            expected_node_ips(&ok, &pools, None),
            Expect::Assigned(vec![(ip("10.0.0.7"), key.into())])
        );
        let bad = server("a", &[(mac, V1)], &[(key, "10.9.0.7/24")]);
        assert!(
            matches!(expected_node_ips(&bad, &pools, None), Expect::Invalid(m) if m.contains("outside"))
        );
        let other = server("a", &[(mac, V2)], &[]);
        assert_eq!(expected_node_ips(&other, &pools, None), Expect::NotPooled);
        // a duplicate loser of the last round is invalid
        let dup = Plan {
            problems: vec![Problem {
                kind: ProblemKind::DuplicateAssignment,
                vlan: V1.into(),
                server: Some("a".into()),
                mac: Some("22:aa:00:00:00:01".into()),
                message: "dup".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            expected_node_ips(&ok, &pools, Some(&dup)),
            Expect::Invalid("dup".into())
        );
    }
}
