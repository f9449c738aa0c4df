//! The emulator's in-memory account: objects, indexes and the time-driven status machine.
//!
//! Everything here is synchronous and runs under one lock held by [`crate::app::App`]; backend
//! hooks (async) are called by the app outside the lock. Transitions are kept in a deadline queue
//! and applied lazily ("settle") at the start of every request and by a background ticker, so
//! 1,000s of objects cost nothing while idle.

use cloudsigma_api::{
    Drive, DriveStatus, Ip, IpConfMode, IpRef, IpV4Conf, LibDrive, Meta, Nic, NicRuntime, Ref,
    Server, ServerDrive, ServerRuntime, ServerStatus, Tag, Vlan,
};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use crate::config::Timings;
use crate::error::ApiError;

/// The account uuid every object's `owner` points to.
pub const OWNER_UUID: &str = "0e6f3c1a-7c1b-4b8e-9d3e-c10550000001";

pub fn owner_ref() -> Ref {
    Ref::Object {
        uuid: OWNER_UUID.into(),
        resource_uri: Some(format!("/api/2.0/user/{OWNER_UUID}/")),
    }
}

/// Serializable content of the account (the state file; `GET /admin/state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub servers: Vec<Server>,
    pub drives: Vec<Drive>,
    pub libdrives: Vec<LibDrive>,
    pub ips: Vec<Ip>,
    pub vlans: Vec<Vlan>,
    pub tags: Vec<Tag>,
    pub global_context: Meta,
    pub vendor_data: Option<Value>,
}

#[derive(Debug, Clone)]
enum Transition {
    Drive {
        uuid: String,
        gen: u64,
        to: DriveStatus,
    },
    /// End of a clone for the source drive: back to `to` once no clone of it is running.
    CloneSrcDone { uuid: String, to: DriveStatus },
    Server {
        uuid: String,
        gen: u64,
        to: ServerStatus,
    },
}

/// Which collection a uuid lives in (tags may point at any of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Servers,
    Drives,
    Ips,
    Vlans,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Servers => "servers",
            Kind::Drives => "drives",
            Kind::Ips => "ips",
            Kind::Vlans => "vlans",
        }
    }
}

pub struct State {
    pub timings: Timings,
    pub servers: IndexMap<String, Server>,
    pub drives: IndexMap<String, Drive>,
    pub libdrives: IndexMap<String, LibDrive>,
    pub ips: IndexMap<String, Ip>,
    pub vlans: IndexMap<String, Vlan>,
    pub tags: IndexMap<String, Tag>,
    pub global_context: Meta,
    pub vendor_data: Option<Value>,
    /// drive uuid → servers it is attached to (in attach order)
    attach: HashMap<String, Vec<String>>,
    /// resource uuid → tag uuids
    tags_of: HashMap<String, BTreeSet<String>>,
    pending: BTreeMap<(Instant, u64), Transition>,
    seq: u64,
    /// per-object generation: bumped on every action so stale timers do nothing
    gens: HashMap<String, u64>,
    /// source drive → clones in flight
    clone_refs: HashMap<String, u32>,
    /// runtime (NAT) addresses in use → server uuid
    used_ips: HashMap<String, String>,
    ip_cursor: usize,
    macs: HashSet<String>,
    /// bumped on every change (drives state-file saves)
    pub version: u64,
}

/// (source drive, new drive, size) of a drive cloned along with a server.
pub type ClonedDrive = (String, String, u64);

/// What `start` needs the app to do after the state changed (call the backend).
pub struct StartPlan {
    pub spec: crate::backend::StartSpec,
}

impl State {
    pub fn new(timings: Timings) -> State {
        State {
            timings,
            servers: IndexMap::new(),
            drives: IndexMap::new(),
            libdrives: IndexMap::new(),
            ips: IndexMap::new(),
            vlans: IndexMap::new(),
            tags: IndexMap::new(),
            global_context: Meta::new(),
            vendor_data: None,
            attach: HashMap::new(),
            tags_of: HashMap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            gens: HashMap::new(),
            clone_refs: HashMap::new(),
            used_ips: HashMap::new(),
            ip_cursor: 0,
            macs: HashSet::new(),
            version: 0,
        }
    }

    pub fn touch(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    // ------------------------------------------------------------------ time-driven transitions

    fn schedule(&mut self, after: Duration, t: Transition) {
        self.seq += 1;
        self.pending.insert((Instant::now() + after, self.seq), t);
    }

    fn bump_gen(&mut self, uuid: &str) -> u64 {
        let g = self.gens.entry(uuid.to_string()).or_insert(0);
        *g += 1;
        *g
    }

    fn gen(&self, uuid: &str) -> u64 {
        self.gens.get(uuid).copied().unwrap_or(0)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.keys().next().map(|k| k.0)
    }

    /// Apply every transition whose time has come. Returns whether anything changed.
    pub fn settle(&mut self, now: Instant) -> bool {
        let mut changed = false;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            changed |= self.apply(t);
        }
        if changed {
            self.touch();
        }
        changed
    }

    fn apply(&mut self, t: Transition) -> bool {
        match t {
            Transition::Drive { uuid, gen, to } => {
                if self.gen(&uuid) != gen {
                    return false;
                }
                match self.drives.get_mut(&uuid) {
                    Some(d) => {
                        d.status = to;
                        true
                    }
                    None => false,
                }
            }
            Transition::CloneSrcDone { uuid, to } => {
                let n = self.clone_refs.entry(uuid.clone()).or_insert(1);
                *n = n.saturating_sub(1);
                if *n > 0 {
                    return false;
                }
                self.clone_refs.remove(&uuid);
                match self.drives.get_mut(&uuid) {
                    Some(d) if d.status == DriveStatus::CloningSrc => {
                        d.status = to;
                        true
                    }
                    _ => false,
                }
            }
            Transition::Server { uuid, gen, to } => {
                if self.gen(&uuid) != gen || !self.servers.contains_key(&uuid) {
                    return false;
                }
                if to == ServerStatus::Stopped {
                    self.set_stopped(&uuid);
                } else if let Some(s) = self.servers.get_mut(&uuid) {
                    s.status = to;
                }
                true
            }
        }
    }

    /// Resolve every transitional status at once (used when loading a state file: the timers
    /// did not survive the restart).
    pub fn settle_all_now(&mut self) {
        for d in self.drives.values_mut() {
            if matches!(
                d.status,
                DriveStatus::Creating
                    | DriveStatus::CloningDst
                    | DriveStatus::CloningSrc
                    | DriveStatus::Resizing
                    | DriveStatus::Mounted
            ) {
                d.status = DriveStatus::Unmounted;
            }
        }
        let ids: Vec<String> = self.servers.keys().cloned().collect();
        for id in ids {
            let st = self.servers[&id].status;
            match st {
                ServerStatus::Starting => self.servers[&id].status = ServerStatus::Running,
                ServerStatus::Stopping => self.set_stopped(&id),
                _ => {}
            }
        }
    }

    // ------------------------------------------------------------------ indexes

    pub fn rebuild_indexes(&mut self) {
        self.attach.clear();
        self.tags_of.clear();
        self.used_ips.clear();
        self.macs.clear();
        let servers: Vec<(String, Vec<String>)> = self
            .servers
            .values()
            .map(|s| {
                (
                    s.uuid.clone(),
                    s.drives
                        .iter()
                        .map(|d| d.drive.uuid().to_string())
                        .collect(),
                )
            })
            .collect();
        for (s, drives) in servers {
            for d in drives {
                self.attach.entry(d).or_default().push(s.clone());
            }
        }
        for s in self.servers.values() {
            for n in &s.nics {
                if let Some(m) = &n.mac {
                    self.macs.insert(m.to_ascii_lowercase());
                }
                if let Some(ip) = n.runtime_ipv4() {
                    self.used_ips.insert(ip.to_string(), s.uuid.clone());
                }
            }
        }
        for t in self.tags.values() {
            for r in &t.resources {
                self.tags_of
                    .entry(r.uuid().to_string())
                    .or_default()
                    .insert(t.uuid.clone());
            }
        }
    }

    pub fn kind_of(&self, uuid: &str) -> Option<Kind> {
        if self.servers.contains_key(uuid) {
            Some(Kind::Servers)
        } else if self.drives.contains_key(uuid) {
            Some(Kind::Drives)
        } else if self.ips.contains_key(uuid) {
            Some(Kind::Ips)
        } else if self.vlans.contains_key(uuid) {
            Some(Kind::Vlans)
        } else {
            None
        }
    }

    fn tag_refs(&self, res: &str) -> Vec<Ref> {
        self.tags_of
            .get(res)
            .map(|set| set.iter().map(|t| Ref::to_resource("tags", t)).collect())
            .unwrap_or_default()
    }

    /// Replace the set of tags a resource carries, keeping each tag's `resources` consistent.
    fn set_resource_tags(&mut self, res: &str, tags: &[String]) {
        let old = self.tags_of.remove(res).unwrap_or_default();
        for t in &old {
            if let Some(tag) = self.tags.get_mut(t) {
                tag.resources.retain(|r| r.uuid() != res);
            }
        }
        let mut new = BTreeSet::new();
        for t in tags {
            if let Some(tag) = self.tags.get_mut(t) {
                if !tag.resources.iter().any(|r| r.uuid() == res) {
                    tag.resources.push(Ref::Uuid(res.to_string()));
                }
                new.insert(t.clone());
            }
        }
        if !new.is_empty() {
            self.tags_of.insert(res.to_string(), new);
        }
    }

    /// Set the tags of any resource after checking they exist.
    pub fn set_tags_public(&mut self, res: &str, tags: &[String]) -> Result<(), ApiError> {
        self.validate_refs_tags(tags)?;
        self.set_resource_tags(res, tags);
        Ok(())
    }

    fn forget_resource(&mut self, res: &str) {
        self.set_resource_tags(res, &[]);
        self.gens.remove(res);
    }

    /// Servers (uuid, status) a drive is attached to.
    fn attached_servers(&self, drive: &str) -> Vec<(String, ServerStatus)> {
        self.attach
            .get(drive)
            .map(|v| {
                v.iter()
                    .filter_map(|s| self.servers.get(s).map(|sv| (s.clone(), sv.status)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// [V dumps] a drive is `mounted` while attached to a *running* server; on a stopped server
    /// it is `unmounted`. [D] `starting`/`stopping`/`paused` count as running (a VM holds it).
    fn is_mounted(&self, drive: &str) -> bool {
        self.attached_servers(drive)
            .iter()
            .any(|(_, st)| *st != ServerStatus::Stopped)
    }

    // ------------------------------------------------------------------ rendering

    pub fn render_server(&self, s: &Server) -> Server {
        let mut out = s.clone();
        out.tags = self.tag_refs(&s.uuid);
        out.owner = Some(owner_ref());
        out.resource_uri = Some(format!("/api/2.0/servers/{}/", s.uuid));
        out
    }

    pub fn render_server_short(&self, s: &Server) -> Value {
        // [V dumps/response_server_list] the short form
        json!({
            "name": s.name,
            "owner": owner_ref(),
            "resource_uri": format!("/api/2.0/servers/{}/", s.uuid),
            "runtime": s.runtime,
            "status": s.status,
            "uuid": s.uuid,
        })
    }

    pub fn drive_status(&self, d: &Drive) -> DriveStatus {
        if d.status == DriveStatus::Unmounted && self.is_mounted(&d.uuid) {
            DriveStatus::Mounted
        } else {
            d.status
        }
    }

    pub fn render_drive(&self, d: &Drive) -> Drive {
        let mut out = d.clone();
        out.status = self.drive_status(d);
        out.mounted_on = self
            .attach
            .get(&d.uuid)
            .map(|v| v.iter().map(|s| Ref::to_resource("servers", s)).collect())
            .unwrap_or_default();
        out.tags = self.tag_refs(&d.uuid);
        out.owner = Some(owner_ref());
        out.resource_uri = Some(format!("/api/2.0/drives/{}/", d.uuid));
        out
    }

    pub fn render_drive_short(&self, d: &Drive) -> Value {
        // [V dumps/response_drive_list] the short form has no name
        json!({
            "owner": owner_ref(),
            "resource_uri": format!("/api/2.0/drives/{}/", d.uuid),
            "status": self.drive_status(d),
            "uuid": d.uuid,
        })
    }

    pub fn render_libdrive(&self, d: &LibDrive) -> LibDrive {
        let mut out = d.clone();
        out.status = Some(DriveStatus::Unmounted);
        out.resource_uri = Some(format!("/api/2.0/libdrives/{}/", d.uuid));
        out
    }

    pub fn render_ip(&self, ip: &Ip) -> Ip {
        let mut out = ip.clone();
        out.tags = self.tag_refs(&ip.uuid);
        out.resource_uri = Some(format!("/api/2.0/ips/{}/", ip.uuid));
        out.server = self
            .servers
            .values()
            .find(|s| {
                s.nics.iter().any(|n| {
                    n.ip_v4_conf
                        .as_ref()
                        .and_then(|c| c.ip.as_ref())
                        .map(|r| r.address() == ip.uuid)
                        .unwrap_or(false)
                })
            })
            .map(|s| Ref::to_resource("servers", &s.uuid));
        out.extra.insert(
            "owner".into(),
            serde_json::to_value(owner_ref()).unwrap_or(Value::Null),
        );
        out
    }

    /// [V docs networking.rst] "The list of IPs includes the IPs that are owned (subscribed to)
    /// by the user, and the IPs which are dynamically assigned to user's guests" — the latter
    /// without a subscription. Subscribed first (in order), then dynamic ones sorted by address.
    pub fn all_ips(&self) -> Vec<Ip> {
        let mut out: Vec<Ip> = self.ips.values().map(|i| self.render_ip(i)).collect();
        let mut dynamic: Vec<(&String, &String)> = self
            .used_ips
            .iter()
            .filter(|(a, _)| !self.ips.contains_key(*a))
            .collect();
        dynamic.sort();
        for (addr, server) in dynamic {
            let mut ip = self.context_ip(addr);
            ip.resource_uri = Some(format!("/api/2.0/ips/{addr}/"));
            ip.server = Some(Ref::to_resource("servers", server));
            ip.tags = self.tag_refs(addr);
            ip.extra.insert(
                "owner".into(),
                serde_json::to_value(owner_ref()).unwrap_or(Value::Null),
            );
            ip.extra.insert("grantees".into(), json!([]));
            ip.extra.insert("permissions".into(), json!([]));
            ip.extra.insert("subscription".into(), Value::Null);
            out.push(ip);
        }
        out
    }

    pub fn render_vlan(&self, v: &Vlan) -> Vlan {
        let mut out = v.clone();
        out.tags = self.tag_refs(&v.uuid);
        out.resource_uri = Some(format!("/api/2.0/vlans/{}/", v.uuid));
        out.servers = self
            .servers
            .values()
            .filter(|s| {
                s.nics
                    .iter()
                    .any(|n| n.vlan.as_ref().map(|r| r.uuid() == v.uuid).unwrap_or(false))
            })
            .map(|s| Ref::to_resource("servers", &s.uuid))
            .collect();
        out.extra.insert(
            "owner".into(),
            serde_json::to_value(owner_ref()).unwrap_or(Value::Null),
        );
        out
    }

    pub fn render_tag(&self, t: &Tag) -> Value {
        // [V SDK] resources come back as objects naming their type
        let resources: Vec<Value> = t
            .resources
            .iter()
            .map(|r| {
                let u = r.uuid();
                let kind = self.kind_of(u).map(|k| k.name()).unwrap_or("servers");
                json!({"owner": owner_ref(), "res_type": kind, "resource_uri": format!("/api/2.0/{kind}/{u}/"), "uuid": u})
            })
            .collect();
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("resources".into(), Value::Array(resources));
            m.insert(
                "owner".into(),
                serde_json::to_value(owner_ref()).unwrap_or(Value::Null),
            );
            m.insert(
                "resource_uri".into(),
                Value::String(format!("/api/2.0/tags/{}/", t.uuid)),
            );
        }
        v
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            servers: self
                .servers
                .values()
                .map(|s| self.render_server(s))
                .collect(),
            drives: self.drives.values().map(|d| self.render_drive(d)).collect(),
            libdrives: self
                .libdrives
                .values()
                .map(|d| self.render_libdrive(d))
                .collect(),
            ips: self.ips.values().cloned().collect(),
            vlans: self.vlans.values().cloned().collect(),
            tags: self.tags.values().cloned().collect(),
            global_context: self.global_context.clone(),
            vendor_data: self.vendor_data.clone(),
        }
    }

    /// Load a snapshot (state file). Transitional statuses are resolved immediately.
    pub fn load(&mut self, snap: Snapshot) {
        self.servers = snap
            .servers
            .into_iter()
            .map(|s| (s.uuid.clone(), s))
            .collect();
        self.drives = snap
            .drives
            .into_iter()
            .map(|mut d| {
                // `mounted` is derived, never stored
                if d.status == DriveStatus::Mounted {
                    d.status = DriveStatus::Unmounted;
                }
                d.mounted_on.clear();
                (d.uuid.clone(), d)
            })
            .collect();
        for l in snap.libdrives {
            self.libdrives.insert(l.uuid.clone(), l);
        }
        self.ips = snap.ips.into_iter().map(|i| (i.uuid.clone(), i)).collect();
        self.vlans = snap
            .vlans
            .into_iter()
            .map(|v| (v.uuid.clone(), v))
            .collect();
        self.tags = snap
            .tags
            .into_iter()
            .map(|mut t| {
                t.resources = t
                    .resources
                    .iter()
                    .map(|r| Ref::Uuid(r.uuid().to_string()))
                    .collect();
                (t.uuid.clone(), t)
            })
            .collect();
        // the tags index is the source of truth for resources' `tags`
        for s in self.servers.values_mut() {
            s.tags.clear();
        }
        for d in self.drives.values_mut() {
            d.tags.clear();
        }
        self.global_context = snap.global_context;
        self.vendor_data = snap.vendor_data;
        self.rebuild_indexes();
        self.settle_all_now();
    }

    // ------------------------------------------------------------------ ids

    fn new_mac(&mut self) -> String {
        // [D] CloudSigma MACs start with 22: (locally administered); unique per account here
        loop {
            let b: [u8; 5] = rand::random();
            let mac = format!(
                "22:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3], b[4]
            );
            if self.macs.insert(mac.clone()) {
                return mac;
            }
        }
    }

    /// NAT pool for public DHCP NICs: the documentation ranges 198.51.100.0/24 and
    /// 203.0.113.0/24 first, then the shared range 100.64.0.0/16 for big fleets.
    fn pool_addr(i: usize) -> Option<String> {
        if i < 253 {
            return Some(format!("198.51.100.{}", i + 2));
        }
        let i = i - 253;
        if i < 190 {
            // 203.0.113.200+ is left for the seeded static IPs
            return Some(format!("203.0.113.{}", i + 2));
        }
        let i = i - 190;
        if i < 254 * 256 {
            return Some(format!("100.64.{}.{}", i / 254, i % 254 + 1));
        }
        None
    }

    fn alloc_ip(&mut self, server: &str) -> Result<String, ApiError> {
        let total = 253 + 190 + 254 * 256;
        for k in 0..total {
            let i = (self.ip_cursor + k) % total;
            if let Some(a) = Self::pool_addr(i) {
                if !self.used_ips.contains_key(&a) && !self.ips.contains_key(&a) {
                    self.ip_cursor = i + 1;
                    self.used_ips.insert(a.clone(), server.to_string());
                    return Ok(a);
                }
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "backend",
            "No free public IP address in the NAT pool",
            None,
        ))
    }

    // ------------------------------------------------------------------ servers

    /// `meta` and `tags` of a create/PUT body; a PUT that omits them keeps the resource's own.
    fn meta_and_tags(
        &self,
        o: &Map<String, Value>,
        existing: Option<(&str, &Meta)>,
    ) -> Result<(Meta, Vec<String>), ApiError> {
        let meta = match o.get("meta") {
            Some(v) if !v.is_null() => parse_meta(v)?,
            _ => existing.map(|(_, m)| m.clone()).unwrap_or_default(),
        };
        let tags = match o.get("tags") {
            Some(v) if !v.is_null() => parse_refs(v, "tags")?,
            _ => existing
                .and_then(|(uuid, _)| self.tags_of.get(uuid))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        };
        self.validate_refs_tags(&tags)?;
        Ok((meta, tags))
    }

    fn validate_refs_tags(&self, tags: &[String]) -> Result<(), ApiError> {
        for t in tags {
            if !self.tags.contains_key(t) {
                return Err(ApiError::validation(
                    format!("Tag {t} does not exist"),
                    Some("tags"),
                ));
            }
        }
        Ok(())
    }

    /// Build a server from a create/PUT body item. `existing` supplies unchanged fields for PUT.
    fn server_from_body(
        &mut self,
        o: &Map<String, Value>,
        existing: Option<&Server>,
    ) -> Result<(Server, Vec<String>), ApiError> {
        let name = match get_str(o, "name")? {
            Some(n) if !n.trim().is_empty() => n,
            Some(_) => return Err(ApiError::validation("name must not be empty", Some("name"))),
            None => match existing {
                Some(e) => e.name.clone(),
                None => return Err(ApiError::validation("This field is required", Some("name"))),
            },
        };
        let cpu = match get_u64(o, "cpu")? {
            Some(c) => c,
            None => match existing {
                Some(e) => e.cpu,
                None => return Err(ApiError::validation("This field is required", Some("cpu"))),
            },
        };
        // [D] per-location limits; typical: 250–100,000 MHz
        if !(250..=100_000).contains(&cpu) {
            return Err(ApiError::validation(
                format!("cpu {cpu} MHz is out of range 250..100000"),
                Some("cpu"),
            ));
        }
        let mem = match get_u64(o, "mem")? {
            Some(m) => m,
            None => match existing {
                Some(e) => e.mem,
                None => return Err(ApiError::validation("This field is required", Some("mem"))),
            },
        };
        // [D] mem ≥ 256 MiB, ≤ 512 GiB
        if !(256 << 20..=512 << 30).contains(&mem) {
            return Err(ApiError::validation(
                format!("mem {mem} bytes is out of range 256 MiB..512 GiB"),
                Some("mem"),
            ));
        }
        let smp = match get_u64(o, "smp")? {
            Some(n) => n,
            None => existing.map(|e| e.smp as u64).unwrap_or(1),
        };
        // [D] reference: smp 1–32
        if !(1..=32).contains(&smp) {
            return Err(ApiError::validation(
                format!("smp {smp} is out of range 1..32"),
                Some("smp"),
            ));
        }
        let vnc_password = match get_str(o, "vnc_password")? {
            Some(v) => Some(v),
            None => match existing {
                Some(e) => e.vnc_password.clone(),
                // [D reference] vnc_password is required on create
                None => {
                    return Err(ApiError::validation(
                        "This field is required",
                        Some("vnc_password"),
                    ))
                }
            },
        };
        let drives = match o.get("drives") {
            Some(v) if !v.is_null() => self.parse_server_drives(v)?,
            _ => existing.map(|e| e.drives.clone()).unwrap_or_default(),
        };
        let nics = match o.get("nics") {
            Some(v) if !v.is_null() => {
                self.parse_nics(v, existing, existing.map(|e| e.uuid.as_str()))?
            }
            _ => existing.map(|e| e.nics.clone()).unwrap_or_default(),
        };
        let (meta, tags) = self.meta_and_tags(o, existing.map(|e| (e.uuid.as_str(), &e.meta)))?;
        let pubkeys = match o.get("pubkeys") {
            Some(v) if !v.is_null() => parse_refs(v, "pubkeys")?
                .iter()
                .map(|k| Ref::to_resource("keypairs", k))
                .collect(),
            _ => existing.map(|e| e.pubkeys.clone()).unwrap_or_default(),
        };
        let mut extra = match existing {
            Some(e) => e.extra.clone(),
            None => default_server_extra(),
        };
        for (k, v) in o {
            if !SERVER_KNOWN.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
        let server = Server {
            uuid: existing.map(|e| e.uuid.clone()).unwrap_or_else(new_uuid),
            name,
            cpu,
            mem,
            smp: smp as u32,
            status: existing.map(|e| e.status).unwrap_or(ServerStatus::Stopped),
            vnc_password,
            drives,
            nics,
            meta,
            tags: Vec::new(),
            runtime: existing.and_then(|e| e.runtime.clone()),
            resource_uri: None,
            owner: None,
            pubkeys,
            extra,
        };
        Ok((server, tags))
    }

    fn parse_server_drives(&self, v: &Value) -> Result<Vec<ServerDrive>, ApiError> {
        let arr = v
            .as_array()
            .ok_or_else(|| ApiError::validation("drives must be a list", Some("drives")))?;
        let mut out = Vec::new();
        let mut channels = HashSet::new();
        for item in arr {
            let o = item.as_object().ok_or_else(|| {
                ApiError::validation("each drive must be an object", Some("drives"))
            })?;
            let drive = o.get("drive").and_then(ref_uuid).ok_or_else(|| {
                ApiError::validation("drive reference (uuid) is required", Some("drives"))
            })?;
            if !self.drives.contains_key(&drive) {
                return Err(ApiError::validation(
                    format!("Drive {drive} does not exist"),
                    Some("drives"),
                ));
            }
            let dev_channel = get_str(o, "dev_channel")?.ok_or_else(|| {
                ApiError::validation("dev_channel is required (e.g. \"0:0\")", Some("drives"))
            })?;
            let ok = dev_channel
                .split_once(':')
                .map(|(a, b)| a.parse::<u8>().is_ok() && b.parse::<u8>().is_ok())
                .unwrap_or(false);
            if !ok {
                return Err(ApiError::validation(
                    format!("dev_channel {dev_channel:?} is not of the form \"N:M\""),
                    Some("drives"),
                ));
            }
            if !channels.insert(dev_channel.clone()) {
                return Err(ApiError::validation(
                    format!("dev_channel {dev_channel} is used twice"),
                    Some("drives"),
                ));
            }
            let device = get_str(o, "device")?.unwrap_or_else(|| "virtio".into());
            if !["virtio", "ide", "sata", "scsi"].contains(&device.as_str()) {
                return Err(ApiError::validation(
                    format!("device {device:?} is not one of virtio, ide, sata, scsi"),
                    Some("drives"),
                ));
            }
            // [V docs servers.rst "Device channel"] ide: 0:0, 0:1, 1:0, 1:1 (2 controllers × 2
            // units); virtio: units 0-5 per controller
            if let Some((c, u)) = dev_channel.split_once(':') {
                let (c, u) = (c.parse::<u32>().unwrap_or(0), u.parse::<u32>().unwrap_or(0));
                let ok = match device.as_str() {
                    "ide" => c <= 1 && u <= 1,
                    "virtio" => u <= 5,
                    _ => true,
                };
                if !ok {
                    return Err(ApiError::validation(
                        format!("dev_channel {dev_channel} is out of range for device {device} (ide: 0:0-1:1, virtio: units 0-5)"),
                        Some("drives"),
                    ));
                }
            }
            let boot_order = get_u64(o, "boot_order")?.map(|b| b as u32);
            out.push(ServerDrive {
                boot_order,
                dev_channel,
                device,
                drive: Ref::to_resource("drives", &drive),
                extra: Default::default(),
            });
        }
        Ok(out)
    }

    fn parse_nics(
        &mut self,
        v: &Value,
        existing: Option<&Server>,
        self_uuid: Option<&str>,
    ) -> Result<Vec<Nic>, ApiError> {
        let arr = v
            .as_array()
            .ok_or_else(|| ApiError::validation("nics must be a list", Some("nics")))?;
        let mut out = Vec::new();
        for item in arr {
            let o = item
                .as_object()
                .ok_or_else(|| ApiError::validation("each nic must be an object", Some("nics")))?;
            let vlan = match o.get("vlan") {
                Some(v) if !v.is_null() => {
                    let u = ref_uuid(v).ok_or_else(|| {
                        ApiError::validation("vlan must be a uuid or {\"uuid\"}", Some("nics"))
                    })?;
                    if !self.vlans.contains_key(&u) {
                        return Err(ApiError::validation(
                            format!("VLAN {u} does not exist"),
                            Some("nics"),
                        ));
                    }
                    Some(u)
                }
                _ => None,
            };
            let conf = match o.get("ip_v4_conf") {
                Some(c) if !c.is_null() => {
                    let co = c.as_object().ok_or_else(|| {
                        ApiError::validation("ip_v4_conf must be an object", Some("nics"))
                    })?;
                    let mode = match co.get("conf").and_then(Value::as_str) {
                        Some("dhcp") => IpConfMode::Dhcp,
                        Some("static") => IpConfMode::Static,
                        Some("manual") => IpConfMode::Manual,
                        other => {
                            return Err(ApiError::validation(
                                format!(
                                    "ip_v4_conf.conf {other:?} is not one of dhcp, static, manual"
                                ),
                                Some("nics"),
                            ))
                        }
                    };
                    let ip = match co.get("ip") {
                        Some(i) if !i.is_null() => Some(ref_uuid(i).ok_or_else(|| {
                            ApiError::validation("ip_v4_conf.ip must be an address", Some("nics"))
                        })?),
                        _ => None,
                    };
                    if mode == IpConfMode::Static {
                        let Some(addr) = &ip else {
                            return Err(ApiError::validation(
                                "ip_v4_conf.conf static needs ip_v4_conf.ip",
                                Some("nics"),
                            ));
                        };
                        if !self.ips.contains_key(addr) {
                            return Err(ApiError::validation(
                                format!("IP {addr} is not subscribed in this account"),
                                Some("nics"),
                            ));
                        }
                        // [D] a static IP can be used by one server only
                        let taken = self.servers.values().any(|s| {
                            Some(s.uuid.as_str()) != self_uuid
                                && s.nics.iter().any(|n| {
                                    n.ip_v4_conf
                                        .as_ref()
                                        .and_then(|c| c.ip.as_ref())
                                        .map(|r| r.address() == addr)
                                        .unwrap_or(false)
                                })
                        });
                        if taken {
                            return Err(ApiError::validation(
                                format!("IP {addr} is already used by another server"),
                                Some("nics"),
                            ));
                        }
                    }
                    Some(IpV4Conf {
                        conf: mode,
                        ip: ip.map(|a| IpRef::Ref(Ref::to_resource("ips", &a))),
                    })
                }
                _ => None,
            };
            // [V docs] vlan and ip_v4_conf must not be combined; [D] `manual` (no address
            // management) is tolerated since the reference also describes VLAN NICs that way.
            if vlan.is_some()
                && conf
                    .as_ref()
                    .map(|c| c.conf != IpConfMode::Manual)
                    .unwrap_or(false)
            {
                return Err(ApiError::validation(
                    "A NIC cannot have both vlan and ip_v4_conf dhcp/static",
                    Some("nics"),
                ));
            }
            if vlan.is_none() && conf.is_none() {
                return Err(ApiError::validation(
                    "A NIC needs ip_v4_conf or vlan",
                    Some("nics"),
                ));
            }
            let model = get_str(o, "model")?.unwrap_or_else(|| "virtio".into());
            // [V reference] NICs are matched by mac in a PUT; a new NIC gets a fresh MAC
            let mac = match get_str(o, "mac")? {
                Some(m) => {
                    let m = m.to_ascii_lowercase();
                    let owned_by_self = existing
                        .map(|e| e.nics.iter().any(|n| n.mac.as_deref() == Some(m.as_str())))
                        .unwrap_or(false);
                    if !owned_by_self && !self.macs.insert(m.clone()) {
                        return Err(ApiError::validation(
                            format!("MAC {m} is already in use"),
                            Some("nics"),
                        ));
                    }
                    m
                }
                None => self.new_mac(),
            };
            let mut extra = BTreeMap::new();
            extra.insert(
                "boot_order".into(),
                o.get("boot_order").cloned().unwrap_or(Value::Null),
            );
            extra.insert(
                "firewall_policy".into(),
                o.get("firewall_policy").cloned().unwrap_or(Value::Null),
            );
            extra.insert(
                "ip_v6_conf".into(),
                o.get("ip_v6_conf").cloned().unwrap_or(Value::Null),
            );
            let runtime = existing
                .and_then(|e| {
                    e.nics
                        .iter()
                        .find(|n| n.mac.as_deref() == Some(mac.as_str()))
                })
                .and_then(|n| n.runtime.clone());
            out.push(Nic {
                ip_v4_conf: conf,
                model: Some(model),
                mac: Some(mac),
                vlan: vlan.map(|u| Ref::to_resource("vlans", &u)),
                runtime,
                extra,
            });
        }
        Ok(out)
    }

    fn attach_drives(&mut self, server: &str, drives: &[ServerDrive]) {
        for d in drives {
            let list = self.attach.entry(d.drive.uuid().to_string()).or_default();
            if !list.iter().any(|s| s == server) {
                list.push(server.to_string());
            }
        }
    }

    fn detach_drives(&mut self, server: &str) {
        let drives: Vec<String> = self
            .servers
            .get(server)
            .map(|s| {
                s.drives
                    .iter()
                    .map(|d| d.drive.uuid().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for d in drives {
            if let Some(list) = self.attach.get_mut(&d) {
                list.retain(|s| s != server);
                if list.is_empty() {
                    self.attach.remove(&d);
                }
            }
        }
    }

    pub fn create_servers(&mut self, items: &[Value]) -> Result<Vec<Server>, ApiError> {
        // validate all first so a bad item creates nothing
        let mut built = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let o = item.as_object().ok_or_else(|| {
                ApiError::validation(format!("objects[{i}] must be an object"), Some("objects"))
            })?;
            built.push(self.server_from_body(o, None)?);
        }
        let mut out = Vec::new();
        for (s, tags) in built {
            let uuid = s.uuid.clone();
            self.attach_drives(&uuid, &s.drives);
            self.servers.insert(uuid.clone(), s);
            self.set_resource_tags(&uuid, &tags);
            out.push(self.render_server(&self.servers[&uuid]));
        }
        self.touch();
        Ok(out)
    }

    pub fn get_server(&self, uuid: &str) -> Result<&Server, ApiError> {
        self.servers
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("server", uuid))
    }

    pub fn update_server(&mut self, uuid: &str, body: &Value) -> Result<Server, ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        let existing = self.get_server(uuid)?.clone();
        if existing.status != ServerStatus::Stopped {
            // [V reference] while running only name, meta and tags apply; others are ignored.
            // meta is replaced wholesale.
            let mut s = existing.clone();
            if let Some(n) = get_str(o, "name")? {
                if n.trim().is_empty() {
                    return Err(ApiError::validation("name must not be empty", Some("name")));
                }
                s.name = n;
            }
            if let Some(m) = o.get("meta").filter(|v| !v.is_null()) {
                s.meta = parse_meta(m)?;
            }
            if let Some(t) = o.get("tags").filter(|v| !v.is_null()) {
                let tags = parse_refs(t, "tags")?;
                self.validate_refs_tags(&tags)?;
                self.set_resource_tags(uuid, &tags);
            }
            self.servers.insert(uuid.to_string(), s);
        } else {
            let (mut s, tags) = self.server_from_body(o, Some(&existing))?;
            // MACs of NICs that were dropped become free again
            for n in &existing.nics {
                if let Some(m) = &n.mac {
                    if !s.nics.iter().any(|x| x.mac.as_ref() == Some(m)) {
                        self.macs.remove(m);
                    }
                }
            }
            s.status = existing.status;
            self.detach_drives(uuid);
            self.attach_drives(uuid, &s.drives);
            self.servers.insert(uuid.to_string(), s);
            self.set_resource_tags(uuid, &tags);
        }
        self.touch();
        Ok(self.render_server(&self.servers[uuid]))
    }

    /// Validate a delete and return the drives `recurse` will delete.
    pub fn plan_delete_server(
        &self,
        uuid: &str,
        recurse: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Stopped {
            // [D reference] deleting a running server is refused
            return Err(ApiError::permission(format!(
                "Cannot delete guest in state \"{}\". Guest should be in state \"stopped\"",
                guest_state(s.status)
            )));
        }
        let media: Option<&[&str]> = match recurse {
            None | Some("") | Some("none") => None,
            Some("all_drives") => Some(&["disk", "cdrom"]),
            Some("disks") => Some(&["disk"]),
            Some("cdroms") => Some(&["cdrom"]),
            Some(other) => {
                return Err(ApiError::validation(
                    format!("recurse {other:?} is not one of all_drives, disks, cdroms"),
                    Some("recurse"),
                ))
            }
        };
        let Some(media) = media else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for d in &s.drives {
            let du = d.drive.uuid();
            if let Some(drive) = self.drives.get(du) {
                // [D] drives also attached to another server are kept
                let others = self
                    .attach
                    .get(du)
                    .map(|v| v.iter().any(|x| x != uuid))
                    .unwrap_or(false);
                if media.contains(&drive.media.as_str()) && !others {
                    out.push(du.to_string());
                }
            }
        }
        Ok(out)
    }

    pub fn delete_server(&mut self, uuid: &str, drives: &[String]) {
        self.detach_drives(uuid);
        if let Some(s) = self.servers.shift_remove(uuid) {
            for n in &s.nics {
                if let Some(m) = &n.mac {
                    self.macs.remove(m);
                }
            }
        }
        self.used_ips.retain(|_, s| s != uuid);
        self.forget_resource(uuid);
        for d in drives {
            self.remove_drive(d);
        }
        self.touch();
    }

    /// Validate and begin `start`: status `starting`, runtime with NAT IPs.
    pub fn begin_start(
        &mut self,
        uuid: &str,
        runtime_ip: &dyn Fn(usize) -> Option<String>,
        context_socket: std::path::PathBuf,
    ) -> Result<StartPlan, ApiError> {
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Stopped {
            // [V libcloud/Go SDK fixtures] exact wording; internal state name of running is "started"
            return Err(ApiError::permission(format!(
                "Cannot start guest in state \"{}\". Guest should be in state \"stopped\"",
                guest_state(s.status)
            )));
        }
        for d in &s.drives {
            let du = d.drive.uuid();
            let Some(drive) = self.drives.get(du) else {
                return Err(ApiError::validation(
                    format!("Drive {du} attached to the server does not exist"),
                    Some("drives"),
                ));
            };
            // [D] a drive must be idle (not creating/cloning/resizing) to boot from it
            if drive.status != DriveStatus::Unmounted {
                return Err(ApiError::permission(format!(
                    "Drive {du} is in state \"{}\"; wait until it is \"unmounted\" before starting the server",
                    drive.status
                )));
            }
            // [D] a drive can be mounted by one running server unless allow_multimount
            let busy = self
                .attached_servers(du)
                .iter()
                .any(|(o, st)| o != uuid && *st != ServerStatus::Stopped);
            if busy && !drive.allow_multimount {
                return Err(ApiError::permission(format!(
                    "Drive {du} is mounted on another running server"
                )));
            }
        }
        let nics = s.nics.clone();
        let mut rt_nics = Vec::new();
        let mut new_nics = Vec::new();
        for (i, n) in nics.into_iter().enumerate() {
            let mut n = n;
            let addr = if n.vlan.is_some() {
                None
            } else {
                match n.ip_v4_conf.as_ref().map(|c| c.conf) {
                    Some(IpConfMode::Static) => n
                        .ip_v4_conf
                        .as_ref()
                        .and_then(|c| c.ip.as_ref())
                        .map(|r| r.address().to_string()),
                    // [V reference] a DHCP NIC without VLAN is a public NAT NIC: its address
                    // appears in runtime.ip_v4 while running
                    Some(IpConfMode::Dhcp) => match runtime_ip(i) {
                        Some(a) => {
                            self.used_ips.insert(a.clone(), uuid.to_string());
                            Some(a)
                        }
                        None => Some(self.alloc_ip(uuid)?),
                    },
                    _ => None,
                }
            };
            let interface_type = if n.vlan.is_some() {
                "private"
            } else {
                "public"
            };
            let mut extra = BTreeMap::new();
            extra.insert(
                "io".into(),
                json!({"bytes_recv": 0, "bytes_sent": 0, "packets_recv": 0, "packets_sent": 0}),
            );
            // [V dumps/response_server_get_running] "ip_v6": null is present (the model skips a
            // None field, so it rides in `extra`)
            extra.insert("ip_v6".into(), Value::Null);
            let rt = NicRuntime {
                interface_type: Some(interface_type.into()),
                ip_v4: addr.as_ref().map(|a| Ref::to_resource("ips", a)),
                ip_v6: None,
                extra,
            };
            let mut rtv = serde_json::to_value(&rt).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut rtv {
                m.insert("ip_v6".into(), Value::Null);
                m.insert("mac".into(), json!(n.mac));
            }
            rt_nics.push(rtv);
            n.runtime = Some(rt);
            new_nics.push(n);
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Starting;
            s.nics = new_nics;
            s.runtime = Some(ServerRuntime {
                active_since: Some(now_iso()),
                nics: rt_nics,
                extra: Default::default(),
            });
        }
        let after = self.timings.server_start;
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.to_string(),
                gen,
                to: ServerStatus::Running,
            },
        );
        self.touch();
        let spec = self
            .current_spec(uuid, context_socket)
            .ok_or_else(|| ApiError::notexist("server", uuid))?;
        Ok(StartPlan { spec })
    }

    /// What a backend needs to boot the server as it is now (drives, NICs with runtime IPs).
    pub fn current_spec(
        &self,
        uuid: &str,
        context_socket: std::path::PathBuf,
    ) -> Option<crate::backend::StartSpec> {
        let s = self.servers.get(uuid)?;
        let drives: Vec<crate::backend::StartDrive> = s
            .drives
            .iter()
            .filter_map(|d| {
                let drive = self.drives.get(d.drive.uuid())?;
                Some(crate::backend::StartDrive {
                    uuid: drive.uuid.clone(),
                    dev_channel: d.dev_channel.clone(),
                    device: d.device.clone(),
                    boot_order: d.boot_order,
                    media: drive.media.clone(),
                    size: drive.size,
                })
            })
            .collect();
        let boot_drive = drives
            .iter()
            .filter(|d| d.boot_order.is_some())
            .min_by_key(|d| d.boot_order)
            .or_else(|| drives.first())
            .map(|d| d.uuid.clone());
        let nics = s
            .nics
            .iter()
            .map(|n| crate::backend::StartNic {
                mac: n.mac.clone().unwrap_or_default(),
                model: n.model.clone().unwrap_or_else(|| "virtio".into()),
                ip_v4: n.runtime_ipv4().map(str::to_string),
                vlan: n.vlan.as_ref().map(|v| v.uuid().to_string()),
            })
            .collect();
        Some(crate::backend::StartSpec {
            uuid: uuid.to_string(),
            name: s.name.clone(),
            cpu: s.cpu,
            mem: s.mem,
            smp: s.smp,
            boot_drive,
            drives,
            nics,
            context_socket,
        })
    }

    /// `POST /servers/{uuid}/action/?do=clone` [V docs servers.rst "Cloning"]: disks are cloned
    /// and attached to the new server, cdroms attached as they are, IPs set to DHCP, everything
    /// else equal; optional body `name`, `random_vnc_password`. Answers the new (stopped) server.
    /// [D] the clone gets fresh MACs, no tags, and a clone name defaults to the source name
    /// (clone_naming profile `NONE`, the documented default).
    pub fn clone_server(
        &mut self,
        uuid: &str,
        body: &Value,
    ) -> Result<(Server, Vec<ClonedDrive>), ApiError> {
        let o = match body {
            Value::Object(o) => o.clone(),
            Value::Null => Map::new(),
            _ => {
                return Err(ApiError::validation(
                    "Request body must be a JSON object",
                    None,
                ))
            }
        };
        let src = self.get_server(uuid)?.clone();
        let name = match get_str(&o, "name")? {
            Some(n) if n.trim().is_empty() => {
                return Err(ApiError::validation("name must not be empty", Some("name")))
            }
            Some(n) => n,
            None => src.name.clone(),
        };
        let random_vnc = matches!(o.get("random_vnc_password"), Some(Value::Bool(true)));
        // check every disk first so a refusal clones nothing
        for d in &src.drives {
            if let Some(drive) = self.drives.get(d.drive.uuid()) {
                if drive.media == "disk"
                    && !matches!(
                        drive.status,
                        DriveStatus::Unmounted | DriveStatus::CloningSrc
                    )
                {
                    return Err(ApiError::permission(format!(
                        "Cannot clone server {uuid}: drive {} is in state \"{}\"",
                        drive.uuid, drive.status
                    )));
                }
            }
        }
        let mut cloned = Vec::new();
        let mut drives = Vec::new();
        for d in &src.drives {
            let du = d.drive.uuid().to_string();
            let media = self
                .drives
                .get(&du)
                .map(|x| x.media.clone())
                .unwrap_or_default();
            let mut nd = d.clone();
            if media == "disk" {
                let (new_drive, _) = self.clone_drive(&du, &json!({}))?;
                cloned.push((du, new_drive.uuid.clone(), new_drive.size));
                nd.drive = Ref::to_resource("drives", &new_drive.uuid);
            }
            drives.push(nd);
        }
        let mut nics = Vec::new();
        for n in &src.nics {
            let mut n = n.clone();
            n.mac = Some(self.new_mac());
            n.runtime = None;
            if let Some(c) = n.ip_v4_conf.as_mut() {
                if c.conf == IpConfMode::Static {
                    c.conf = IpConfMode::Dhcp;
                    c.ip = None;
                }
            }
            nics.push(n);
        }
        let new_uuid_ = new_uuid();
        let mut extra = src.extra.clone();
        let job = new_uuid();
        extra.insert(
            "jobs".into(),
            json!([{"resource_uri": format!("/api/2.0/jobs/{job}/"), "uuid": job}]),
        );
        let vnc_password = if random_vnc {
            let b: [u8; 6] = rand::random();
            Some(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        } else {
            src.vnc_password.clone()
        };
        let server = Server {
            uuid: new_uuid_.clone(),
            name,
            status: ServerStatus::Stopped,
            vnc_password,
            drives,
            nics,
            tags: Vec::new(),
            runtime: None,
            resource_uri: None,
            owner: None,
            extra,
            ..src
        };
        self.attach_drives(&new_uuid_, &server.drives);
        self.servers.insert(new_uuid_.clone(), server);
        self.touch();
        Ok((self.render_server(&self.servers[&new_uuid_]), cloned))
    }

    /// The backend refused to start: back to stopped.
    pub fn abort_start(&mut self, uuid: &str) {
        self.bump_gen(uuid);
        self.set_stopped(uuid);
        self.touch();
    }

    fn set_stopped(&mut self, uuid: &str) {
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Stopped;
            s.runtime = None;
            for n in &mut s.nics {
                n.runtime = None;
            }
        }
        self.used_ips.retain(|_, s| s != uuid);
    }

    /// Guest powered off (backend event).
    pub fn power_off(&mut self, uuid: &str) {
        if self
            .servers
            .get(uuid)
            .map(|s| s.status != ServerStatus::Stopped)
            .unwrap_or(false)
        {
            self.bump_gen(uuid);
            self.set_stopped(uuid);
            self.touch();
        }
    }

    /// `stop` (hard power-off): running/starting/stopping → stopping → stopped.
    pub fn begin_stop(&mut self, uuid: &str) -> Result<(), ApiError> {
        let s = self.get_server(uuid)?;
        if matches!(s.status, ServerStatus::Stopped) {
            // [V Go SDK fixture] exact wording
            return Err(ApiError::permission(format!(
                "Cannot stop guest in state \"{}\". Guest should be in state \"['started', 'running_legacy']\"",
                guest_state(s.status)
            )));
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Stopping;
        }
        let after = self.timings.server_stop;
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.into(),
                gen,
                to: ServerStatus::Stopped,
            },
        );
        self.touch();
        Ok(())
    }

    /// `shutdown` (ACPI): only from running. The app calls the backend, then
    /// [`State::schedule_shutdown`].
    pub fn begin_shutdown(&mut self, uuid: &str) -> Result<u64, ApiError> {
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Running {
            // [D] wording modelled on the start/stop errors
            return Err(ApiError::permission(format!(
                "Cannot shutdown guest in state \"{}\". Guest should be in state \"started\"",
                guest_state(s.status)
            )));
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Stopping;
        }
        self.touch();
        Ok(gen)
    }

    pub fn schedule_shutdown(&mut self, uuid: &str, gen: u64, mode: crate::backend::ShutdownMode) {
        use crate::backend::ShutdownMode;
        let (after, to) = match mode {
            ShutdownMode::Timed => (self.timings.server_shutdown, ServerStatus::Stopped),
            // [V reference] back to running if the guest did not power off in time
            ShutdownMode::AwaitPowerOff => (self.timings.shutdown_timeout, ServerStatus::Running),
        };
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.into(),
                gen,
                to,
            },
        );
    }

    /// Backend refused the shutdown: back to running.
    pub fn abort_shutdown(&mut self, uuid: &str, gen: u64) {
        if self.gen(uuid) == gen {
            if let Some(s) = self.servers.get_mut(uuid) {
                s.status = ServerStatus::Running;
            }
        }
    }

    /// `restart`: only from running; `starting` → `running` (runtime and IPs kept).
    pub fn begin_restart(&mut self, uuid: &str) -> Result<(), ApiError> {
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Running {
            return Err(ApiError::permission(format!(
                "Cannot restart guest in state \"{}\". Guest should be in state \"started\"",
                guest_state(s.status)
            )));
        }
        let gen = self.bump_gen(uuid);
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = ServerStatus::Starting;
        }
        let after = self.timings.server_start;
        self.schedule(
            after,
            Transition::Server {
                uuid: uuid.into(),
                gen,
                to: ServerStatus::Running,
            },
        );
        self.touch();
        Ok(())
    }

    // ------------------------------------------------------------------ drives

    fn drive_from_body(
        &self,
        o: &Map<String, Value>,
        existing: Option<&Drive>,
    ) -> Result<(Drive, Vec<String>), ApiError> {
        let name = match get_str(o, "name")? {
            Some(n) if !n.trim().is_empty() => n,
            Some(_) => return Err(ApiError::validation("name must not be empty", Some("name"))),
            None => match existing {
                Some(e) => e.name.clone(),
                None => return Err(ApiError::validation("This field is required", Some("name"))),
            },
        };
        let size = match get_u64(o, "size")? {
            Some(s) => s,
            None => match existing {
                Some(e) => e.size,
                None => return Err(ApiError::validation("This field is required", Some("size"))),
            },
        };
        // [D] minimum drive size 1 MiB
        if size < 1 << 20 {
            return Err(ApiError::validation(
                format!("size {size} bytes is below the minimum of 1 MiB"),
                Some("size"),
            ));
        }
        let media = match get_str(o, "media")? {
            Some(m) => m,
            None => match existing {
                Some(e) => e.media.clone(),
                None => {
                    return Err(ApiError::validation(
                        "This field is required",
                        Some("media"),
                    ))
                }
            },
        };
        if media != "disk" && media != "cdrom" {
            return Err(ApiError::validation(
                format!("media {media:?} is not one of disk, cdrom"),
                Some("media"),
            ));
        }
        let storage_type = get_str(o, "storage_type")?
            .or_else(|| existing.and_then(|e| e.storage_type.clone()))
            .unwrap_or_else(|| "dssd".into());
        let (meta, tags) = self.meta_and_tags(o, existing.map(|e| (e.uuid.as_str(), &e.meta)))?;
        let affinities = match o.get("affinities") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => existing.map(|e| e.affinities.clone()).unwrap_or_default(),
        };
        let allow_multimount = match o.get("allow_multimount") {
            Some(Value::Bool(b)) => *b,
            _ => existing.map(|e| e.allow_multimount).unwrap_or(false),
        };
        let mut extra = existing
            .map(|e| e.extra.clone())
            .unwrap_or_else(|| default_drive_extra(&storage_type));
        for (k, v) in o {
            if !DRIVE_KNOWN.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
        Ok((
            Drive {
                uuid: existing.map(|e| e.uuid.clone()).unwrap_or_else(new_uuid),
                name,
                size,
                media,
                status: existing.map(|e| e.status).unwrap_or(DriveStatus::Creating),
                storage_type: Some(storage_type),
                mounted_on: Vec::new(),
                meta,
                tags: Vec::new(),
                affinities,
                allow_multimount,
                resource_uri: None,
                owner: None,
                extra,
            },
            tags,
        ))
    }

    pub fn create_drives(&mut self, items: &[Value]) -> Result<Vec<Drive>, ApiError> {
        let mut built = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let o = item.as_object().ok_or_else(|| {
                ApiError::validation(format!("objects[{i}] must be an object"), Some("objects"))
            })?;
            built.push(self.drive_from_body(o, None)?);
        }
        let mut out = Vec::new();
        let after = self.timings.drive_create;
        for (d, tags) in built {
            let uuid = d.uuid.clone();
            self.drives.insert(uuid.clone(), d);
            self.set_resource_tags(&uuid, &tags);
            let gen = self.bump_gen(&uuid);
            self.schedule(
                after,
                Transition::Drive {
                    uuid: uuid.clone(),
                    gen,
                    to: DriveStatus::Unmounted,
                },
            );
            out.push(self.render_drive(&self.drives[&uuid]));
        }
        self.touch();
        Ok(out)
    }

    pub fn get_drive(&self, uuid: &str) -> Result<&Drive, ApiError> {
        self.drives
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("drive", uuid))
    }

    /// PUT a drive. A changed `size` is a resize (same rules as the action) [D]; returns whether
    /// a resize started.
    pub fn update_drive(&mut self, uuid: &str, body: &Value) -> Result<(Drive, bool), ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        let existing = self.get_drive(uuid)?.clone();
        let (mut d, tags) = self.drive_from_body(o, Some(&existing))?;
        if self.is_mounted(uuid) {
            // [V docs drives.rst "Editing"] on a drive mounted on a running server only name,
            // meta, tags and allow_multimount change; size, media etc. are silently ignored
            // (the resize action is the "update or fail" variant).
            let mut kept = existing.clone();
            kept.name = d.name;
            kept.meta = d.meta;
            kept.allow_multimount = d.allow_multimount;
            self.drives.insert(uuid.to_string(), kept);
            self.set_resource_tags(uuid, &tags);
            self.touch();
            return Ok((self.render_drive(&self.drives[uuid]), false));
        }
        let resizing = d.size != existing.size;
        if resizing {
            // [V docs] "changing drive size might be a slow operation, and the drive cannot be
            // used during the resizing": a PUT with a new size goes through `resizing`
            self.check_resizable(&existing, d.size)?;
            d.status = DriveStatus::Resizing;
            let gen = self.bump_gen(uuid);
            let after = self.timings.drive_resize;
            self.schedule(
                after,
                Transition::Drive {
                    uuid: uuid.into(),
                    gen,
                    to: DriveStatus::Unmounted,
                },
            );
        }
        self.drives.insert(uuid.to_string(), d);
        self.set_resource_tags(uuid, &tags);
        self.touch();
        Ok((self.render_drive(&self.drives[uuid]), resizing))
    }

    fn check_resizable(&self, d: &Drive, new_size: u64) -> Result<(), ApiError> {
        // [V reference] resize is refused while mounted on a running server
        if self.is_mounted(&d.uuid) {
            return Err(ApiError::permission(format!(
                "Cannot resize drive {} in state \"mounted\"; stop the server it is mounted on first",
                d.uuid
            )));
        }
        if d.status != DriveStatus::Unmounted {
            return Err(ApiError::permission(format!(
                "Cannot resize drive {} in state \"{}\"; wait until it is \"unmounted\"",
                d.uuid, d.status
            )));
        }
        // [D] shrinking is refused
        if new_size < d.size {
            return Err(ApiError::validation(
                format!(
                    "New size {new_size} is smaller than the current size {}",
                    d.size
                ),
                Some("size"),
            ));
        }
        Ok(())
    }

    /// [V docs drives.rst "Resizing (Update or Fail)"] a full definition update (name, meta, ...
    /// too) that fails instead of ignoring the size when the drive is mounted on a running server.
    pub fn resize_drive(&mut self, uuid: &str, body: &Value) -> Result<Drive, ApiError> {
        let existing = self.get_drive(uuid)?.clone();
        let o = body.as_object().ok_or_else(|| {
            ApiError::validation("Request body must be the drive definition", None)
        })?;
        if get_u64(o, "size")?.is_none() {
            return Err(ApiError::validation(
                "resize needs the drive definition with the new size",
                Some("size"),
            ));
        }
        let (mut d, tags) = self.drive_from_body(o, Some(&existing))?;
        self.check_resizable(&existing, d.size)?;
        d.status = DriveStatus::Resizing;
        let gen = self.bump_gen(uuid);
        self.drives.insert(uuid.to_string(), d);
        self.set_resource_tags(uuid, &tags);
        let after = self.timings.drive_resize;
        self.schedule(
            after,
            Transition::Drive {
                uuid: uuid.into(),
                gen,
                to: DriveStatus::Unmounted,
            },
        );
        self.touch();
        Ok(self.render_drive(&self.drives[uuid]))
    }

    /// Clone a drive or a library drive into a new account drive (`cloning_dst`).
    /// Returns the new drive, whether the source was a library drive, and the size.
    pub fn clone_drive(&mut self, src: &str, body: &Value) -> Result<(Drive, bool), ApiError> {
        let o = match body {
            Value::Object(o) => o.clone(),
            Value::Null => Map::new(),
            _ => {
                return Err(ApiError::validation(
                    "Request body must be a JSON object",
                    None,
                ))
            }
        };
        let (name, media, size, storage_type, meta, is_lib, extra_src) =
            if let Some(d) = self.drives.get(src) {
                if !matches!(d.status, DriveStatus::Unmounted | DriveStatus::CloningSrc) {
                    return Err(ApiError::permission(format!(
                        "Cannot clone drive {src} in state \"{}\"; wait until it is \"unmounted\"",
                        d.status
                    )));
                }
                (
                    d.name.clone(),
                    d.media.clone(),
                    d.size,
                    d.storage_type.clone(),
                    d.meta.clone(),
                    false,
                    d.status,
                )
            } else if let Some(l) = self.libdrives.get(src) {
                // [V reference] library fields are copied into the clone's meta
                let mut meta = Meta::new();
                for (k, v) in [
                    ("os", &l.os),
                    ("distribution", &l.distribution),
                    ("version", &l.version),
                    ("arch", &l.arch),
                    ("image_type", &l.image_type),
                    ("default_user", &l.default_user),
                    ("description", &l.description),
                ] {
                    if let Some(v) = v {
                        meta.insert(k.to_string(), v.clone());
                    }
                }
                if let Some(c) = l.cloud_init_service {
                    meta.insert("cloud_init_service".into(), c.to_string());
                }
                meta.insert("cloned_from_library".into(), l.uuid.clone());
                (
                    l.name.clone(),
                    l.media.clone(),
                    l.size,
                    None,
                    meta,
                    true,
                    DriveStatus::Unmounted,
                )
            } else {
                return Err(ApiError::notexist("drive", src));
            };
        let new_name = get_str(&o, "name")?.unwrap_or(name);
        let new_media = get_str(&o, "media")?.unwrap_or(media);
        if new_media != "disk" && new_media != "cdrom" {
            return Err(ApiError::validation(
                format!("media {new_media:?} is not one of disk, cdrom"),
                Some("media"),
            ));
        }
        let new_size = match get_u64(&o, "size")? {
            // [V reference] size must be ≥ the source's
            Some(s) if s < size => {
                return Err(ApiError::validation(
                    format!("size {s} is smaller than the source drive's size {size}"),
                    Some("size"),
                ))
            }
            Some(s) => s,
            None => size,
        };
        let storage_type = get_str(&o, "storage_type")?
            .or(storage_type)
            .unwrap_or_else(|| "dssd".into());
        let affinities = match o.get("affinities") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let uuid = new_uuid();
        let mut extra = default_drive_extra(&storage_type);
        let job = new_uuid();
        extra.insert(
            "jobs".into(),
            json!([{"resource_uri": format!("/api/2.0/jobs/{job}/"), "uuid": job}]),
        );
        let d = Drive {
            uuid: uuid.clone(),
            name: new_name,
            size: new_size,
            media: new_media,
            status: DriveStatus::CloningDst,
            storage_type: Some(storage_type),
            mounted_on: Vec::new(),
            meta,
            tags: Vec::new(),
            affinities,
            allow_multimount: false,
            resource_uri: None,
            owner: None,
            extra,
        };
        self.drives.insert(uuid.clone(), d);
        let gen = self.bump_gen(&uuid);
        let after = self.timings.drive_clone;
        self.schedule(
            after,
            Transition::Drive {
                uuid: uuid.clone(),
                gen,
                to: DriveStatus::Unmounted,
            },
        );
        // [D] cloning a drive mounted on a running server is allowed (a live copy); it keeps
        // showing `mounted` instead of `cloning_src`.
        if !is_lib && !self.is_mounted(src) {
            *self.clone_refs.entry(src.to_string()).or_insert(0) += 1;
            let back = if extra_src == DriveStatus::CloningSrc {
                DriveStatus::Unmounted
            } else {
                extra_src
            };
            if let Some(s) = self.drives.get_mut(src) {
                s.status = DriveStatus::CloningSrc;
            }
            self.schedule(
                after,
                Transition::CloneSrcDone {
                    uuid: src.to_string(),
                    to: back,
                },
            );
        }
        self.touch();
        Ok((self.render_drive(&self.drives[&uuid]), is_lib))
    }

    /// Mark the clone's job done early (not used by the state machine; kept for symmetry).
    pub fn plan_delete_drive(&self, uuid: &str) -> Result<(), ApiError> {
        let d = self.get_drive(uuid)?;
        // [V dumps] a drive mounted on a running server cannot be deleted
        if self.is_mounted(uuid) {
            return Err(ApiError::permission(format!(
                "Cannot delete drive {uuid} in state \"mounted\"; stop the server it is mounted on first"
            )));
        }
        // [D] busy drives (creating, cloning, resizing) cannot be deleted either
        if d.status != DriveStatus::Unmounted {
            return Err(ApiError::permission(format!(
                "Cannot delete drive {uuid} in state \"{}\"; wait until it is \"unmounted\"",
                d.status
            )));
        }
        Ok(())
    }

    pub fn delete_drive(&mut self, uuid: &str) {
        self.remove_drive(uuid);
        self.touch();
    }

    fn remove_drive(&mut self, uuid: &str) {
        // [D] deleting a drive attached to a stopped server detaches it from that server
        if let Some(servers) = self.attach.remove(uuid) {
            for s in servers {
                if let Some(sv) = self.servers.get_mut(&s) {
                    sv.drives.retain(|d| d.drive.uuid() != uuid);
                }
            }
        }
        self.drives.shift_remove(uuid);
        self.clone_refs.remove(uuid);
        self.forget_resource(uuid);
    }

    // ------------------------------------------------------------------ tags

    pub fn create_tags(&mut self, items: &[Value]) -> Result<Vec<Value>, ApiError> {
        let mut built = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let o = item.as_object().ok_or_else(|| {
                ApiError::validation(format!("objects[{i}] must be an object"), Some("objects"))
            })?;
            let name = get_str(o, "name")?
                .ok_or_else(|| ApiError::validation("This field is required", Some("name")))?;
            let resources = match o.get("resources") {
                Some(v) if !v.is_null() => parse_refs(v, "resources")?,
                _ => Vec::new(),
            };
            for r in &resources {
                if self.kind_of(r).is_none() {
                    return Err(ApiError::validation(
                        format!("Resource {r} does not exist"),
                        Some("resources"),
                    ));
                }
            }
            let meta = match o.get("meta") {
                Some(v) if !v.is_null() => parse_meta(v)?,
                _ => Meta::new(),
            };
            built.push((name, resources, meta));
        }
        let mut out = Vec::new();
        for (name, resources, meta) in built {
            let uuid = new_uuid();
            self.tags.insert(
                uuid.clone(),
                Tag {
                    uuid: uuid.clone(),
                    name,
                    resources: Vec::new(),
                    meta,
                    resource_uri: None,
                    extra: Default::default(),
                },
            );
            self.set_tag_resources(&uuid, &resources);
            out.push(self.render_tag(&self.tags[&uuid]));
        }
        self.touch();
        Ok(out)
    }

    fn set_tag_resources(&mut self, tag: &str, resources: &[String]) {
        if let Some(t) = self.tags.get(tag) {
            let old: Vec<String> = t.resources.iter().map(|r| r.uuid().to_string()).collect();
            for r in old {
                if let Some(set) = self.tags_of.get_mut(&r) {
                    set.remove(tag);
                    if set.is_empty() {
                        self.tags_of.remove(&r);
                    }
                }
            }
        }
        let mut uniq = Vec::new();
        for r in resources {
            if !uniq.contains(r) {
                uniq.push(r.clone());
                self.tags_of
                    .entry(r.clone())
                    .or_default()
                    .insert(tag.to_string());
            }
        }
        if let Some(t) = self.tags.get_mut(tag) {
            t.resources = uniq.into_iter().map(Ref::Uuid).collect();
        }
    }

    pub fn get_tag(&self, uuid: &str) -> Result<&Tag, ApiError> {
        self.tags
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("tag", uuid))
    }

    pub fn update_tag(&mut self, uuid: &str, body: &Value) -> Result<Value, ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        self.get_tag(uuid)?;
        let name = get_str(o, "name")?;
        if let Some(n) = &name {
            if n.trim().is_empty() {
                return Err(ApiError::validation("name must not be empty", Some("name")));
            }
        }
        let resources = match o.get("resources") {
            Some(v) if !v.is_null() => {
                let r = parse_refs(v, "resources")?;
                for x in &r {
                    if self.kind_of(x).is_none() {
                        return Err(ApiError::validation(
                            format!("Resource {x} does not exist"),
                            Some("resources"),
                        ));
                    }
                }
                Some(r)
            }
            _ => None,
        };
        let meta = match o.get("meta") {
            Some(v) if !v.is_null() => Some(parse_meta(v)?),
            _ => None,
        };
        if let Some(r) = resources {
            self.set_tag_resources(uuid, &r);
        }
        if let Some(t) = self.tags.get_mut(uuid) {
            if let Some(n) = name {
                t.name = n;
            }
            if let Some(m) = meta {
                t.meta = m;
            }
        }
        self.touch();
        Ok(self.render_tag(&self.tags[uuid]))
    }

    pub fn delete_tag(&mut self, uuid: &str) -> Result<(), ApiError> {
        self.get_tag(uuid)?;
        self.set_tag_resources(uuid, &[]);
        self.tags.shift_remove(uuid);
        self.touch();
        Ok(())
    }

    /// Resources of one kind carrying a tag.
    pub fn tagged(&self, tag: &str, kind: Kind) -> Result<Vec<String>, ApiError> {
        let t = self.get_tag(tag)?;
        Ok(t.resources
            .iter()
            .map(|r| r.uuid().to_string())
            .filter(|u| self.kind_of(u) == Some(kind))
            .collect())
    }

    // ------------------------------------------------------------------ server context

    /// The context a guest sees over its serial port ([V docs server_context.rst]):
    /// `GET /servers/{uuid}/` minus owner/subscriptions/status/runtime, plus `global_context`
    /// and `vendor_data` (when set); drives expanded; NICs without runtime and with
    /// `ip_v4_conf.ip` expanded to the IP object even for dhcp.
    pub fn server_context(&self, uuid: &str) -> Option<Value> {
        let s = self.servers.get(uuid)?;
        let rendered = self.render_server(s);
        let mut v = serde_json::to_value(&rendered).ok()?;
        let m = v.as_object_mut()?;
        for k in [
            "owner",
            "subscriptions",
            "status",
            "runtime",
            "resource_uri",
            "grantees",
            "permissions",
            "jobs",
            // [V dumps/response_context_all] the `context` flag itself is not in the context
            "context",
        ] {
            m.remove(k);
        }
        // drives expanded to drive details
        let drives: Vec<Value> = s
            .drives
            .iter()
            .map(|d| {
                let mut dv = serde_json::to_value(d).unwrap_or(Value::Null);
                if let (Some(obj), Some(drive)) =
                    (dv.as_object_mut(), self.drives.get(d.drive.uuid()))
                {
                    let mut full =
                        serde_json::to_value(self.render_drive(drive)).unwrap_or(Value::Null);
                    if let Some(f) = full.as_object_mut() {
                        // [V dumps/response_context_all] the expanded drive carries exactly these
                        const KEEP: [&str; 9] = [
                            "uuid",
                            "tags",
                            "media",
                            "name",
                            "meta",
                            "allow_multimount",
                            "licenses",
                            "affinities",
                            "size",
                        ];
                        f.retain(|k, _| KEEP.contains(&k.as_str()));
                    }
                    obj.insert("drive".into(), full);
                }
                dv
            })
            .collect();
        m.insert("drives".into(), Value::Array(drives));
        let nics: Vec<Value> = s
            .nics
            .iter()
            .map(|n| {
                let mut n = n.clone();
                let rt_addr = n.runtime_ipv4().map(str::to_string);
                n.runtime = None;
                if let Some(conf) = n.ip_v4_conf.as_mut() {
                    let addr = match conf.conf {
                        IpConfMode::Static => conf.ip.as_ref().map(|r| r.address().to_string()),
                        IpConfMode::Dhcp => rt_addr,
                        IpConfMode::Manual => None,
                    };
                    conf.ip = addr.map(|a| IpRef::Full(Box::new(self.context_ip(&a))));
                }
                let mut nv = serde_json::to_value(&n).unwrap_or(Value::Null);
                // [V docs] the expanded IP carries uuid, netmask, gateway, nameservers, tags, meta
                if let Some(ip) = nv
                    .pointer_mut("/ip_v4_conf/ip")
                    .and_then(Value::as_object_mut)
                {
                    ip.retain(|k, v| {
                        !(matches!(k.as_str(), "server" | "resource_uri" | "owner") && v.is_null())
                    });
                    ip.remove("owner");
                }
                if let Some(o) = nv.as_object_mut() {
                    // [V dumps/response_context_all] NICs: boot_order, vlan, ip_v4_conf, mac,
                    // model, ip_v6_conf — no runtime, no firewall_policy
                    o.remove("runtime");
                    o.remove("firewall_policy");
                }
                nv
            })
            .collect();
        m.insert("nics".into(), Value::Array(nics));
        m.insert(
            "global_context".into(),
            serde_json::to_value(&self.global_context).unwrap_or(Value::Null),
        );
        if let Some(vd) = &self.vendor_data {
            m.insert("vendor_data".into(), vd.clone());
        }
        Some(v)
    }

    fn context_ip(&self, addr: &str) -> Ip {
        if let Some(ip) = self.ips.get(addr) {
            let mut ip = ip.clone();
            ip.tags = self.tag_refs(addr);
            ip.resource_uri = None;
            return ip;
        }
        // NAT address: /24 with .1 as gateway [D]
        let gw = match addr.rsplit_once('.') {
            Some((net, _)) => format!("{net}.1"),
            None => String::new(),
        };
        Ip {
            uuid: addr.to_string(),
            netmask: Some(24),
            gateway: Some(gw),
            nameservers: NAMESERVERS.iter().map(|s| s.to_string()).collect(),
            server: None,
            meta: Meta::new(),
            tags: Vec::new(),
            resource_uri: None,
            extra: Default::default(),
        }
    }
}

/// Nameservers handed out with NAT and seeded IPs (documentation range; loopback-only emulator).
pub const NAMESERVERS: [&str; 2] = ["198.51.100.53", "203.0.113.53"];

const SERVER_KNOWN: &[&str] = &[
    "uuid",
    "name",
    "cpu",
    "mem",
    "smp",
    "status",
    "vnc_password",
    "drives",
    "nics",
    "meta",
    "tags",
    "runtime",
    "resource_uri",
    "owner",
    "pubkeys",
];
const DRIVE_KNOWN: &[&str] = &[
    "uuid",
    "name",
    "size",
    "media",
    "status",
    "storage_type",
    "mounted_on",
    "meta",
    "tags",
    "affinities",
    "allow_multimount",
    "resource_uri",
    "owner",
];

/// Fields the real API returns on every server that we do not model otherwise
/// ([V dumps/response_server_get_running]).
fn default_server_extra() -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("context".into(), json!(true));
    m.insert("cpu_model".into(), Value::Null);
    m.insert("cpus_instead_of_cores".into(), json!(false));
    m.insert("enable_numa".into(), json!(false));
    m.insert("grantees".into(), json!([]));
    m.insert("hv_relaxed".into(), json!(false));
    m.insert("hv_tsc".into(), json!(false));
    m.insert("jobs".into(), json!([]));
    m.insert("permissions".into(), json!([]));
    m.insert("requirements".into(), json!([]));
    // [D] present in the reference's list of context keys (newer API than the 2014 dumps);
    // values are what a Linux KVM guest on CloudSigma reports
    m.insert("hypervisor".into(), json!("kvm"));
    m.insert("cpu_type".into(), json!("amd"));
    m
}

/// ([V dumps/response_drive_get_unmounted])
fn default_drive_extra(storage_type: &str) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("grantees".into(), json!([]));
    m.insert("jobs".into(), json!([]));
    m.insert("licenses".into(), json!([]));
    m.insert("permissions".into(), json!([]));
    m.insert("runtime".into(), json!({"is_snapshotable": true, "snapshots_allocated_size": 0, "storage_type": storage_type}));
    m.insert("snapshots".into(), json!([]));
    m
}

/// CloudSigma's internal guest state names used in error messages ([V fixtures]: a running
/// server is "started").
fn guest_state(s: ServerStatus) -> &'static str {
    match s {
        ServerStatus::Running => "started",
        ServerStatus::Stopped => "stopped",
        ServerStatus::Starting => "starting",
        ServerStatus::Stopping => "stopping",
        ServerStatus::Paused => "paused",
        ServerStatus::Unavailable => "unavailable",
    }
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `2014-06-05T09:51:08+00:00` as in [V dumps] `runtime.active_since`.
pub fn now_iso() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------- body parsing helpers

pub fn get_str(o: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(
            format!("{k} must be a string"),
            Some(k),
        )),
    }
}

/// Integers; numeric strings are accepted too [D] (the Python API coerces them).
pub fn get_u64(o: &Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::validation(format!("{k} must be a non-negative integer"), Some(k))
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| {
            ApiError::validation(
                format!("{k} must be a non-negative integer, got {s:?}"),
                Some(k),
            )
        }),
        Some(_) => Err(ApiError::validation(
            format!("{k} must be a non-negative integer"),
            Some(k),
        )),
    }
}

/// `meta`: a flat string→string map. [D] numbers and booleans are stored as strings.
pub fn parse_meta(v: &Value) -> Result<Meta, ApiError> {
    let o = v
        .as_object()
        .ok_or_else(|| ApiError::validation("meta must be an object of strings", Some("meta")))?;
    let mut m = Meta::new();
    for (k, v) in o {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::validation(
                    format!("meta value of {k:?} must be a string"),
                    Some("meta"),
                ))
            }
        };
        m.insert(k.clone(), s);
    }
    Ok(m)
}

/// A reference: a bare uuid string or `{"uuid": ...}`.
pub fn ref_uuid(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("uuid").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

pub fn parse_refs(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let arr = v
        .as_array()
        .ok_or_else(|| ApiError::validation(format!("{field} must be a list"), Some(field)))?;
    arr.iter()
        .map(|x| {
            ref_uuid(x).ok_or_else(|| {
                ApiError::validation(
                    format!("each of {field} must be a uuid or {{\"uuid\": ...}}"),
                    Some(field),
                )
            })
        })
        .collect()
}
