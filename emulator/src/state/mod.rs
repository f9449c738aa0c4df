//! The emulator's in-memory account: objects, indexes and the time-driven status machine.
//!
//! Everything here is synchronous and runs under one lock held by [`crate::app::App`]; backend
//! hooks (async) are called by the app outside the lock. Transitions are kept in a deadline queue
//! and applied lazily ("settle") at the start of every request and by a background ticker, so
//! 1,000s of objects cost nothing while idle.
//!
//! [`State`] is one struct; its methods are grouped by what they do, one file each:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the struct, its indexes (drive → servers, resource → tags), ids and time helpers |
//! | `transitions.rs` | the deadline queue: scheduling, `settle`, per-object generations |
//! | `parse.rs` | request bodies → objects: field rules, limits, refusals of bad input |
//! | `nics.rs` | the `nics` of a server body: VLAN, `ip_v4_conf`, MACs |
//! | `render.rs` | objects → wire JSON (`resource_uri`, `owner`, derived `mounted`, short forms) |
//! | `servers.rs` | server create/update/delete/clone |
//! | `power.rs` | server start/stop/shutdown/restart, guest power-off, the backend's `StartSpec` |
//! | `drives.rs` | drive create/update/resize/clone/delete |
//! | `tags.rs` | tags and the tags every resource carries |
//! | `addresses.rs` | MACs and the NAT address pool |
//! | `account.rs` | the account's own objects: profile, capabilities, keypairs/pubkeys |
//! | `placement.rs` | physical hosts: availability groups and `avoid` |
//! | `hotplug.rs` | drives attached to / detached from a running server |
//! | `server_context.rs` | the context a guest reads over its serial port |
//! | `snapshot.rs` | the state file's content (save and load) |

mod account;
mod addresses;
mod drives;
mod hotplug;
mod nics;
mod parse;
mod placement;
mod power;
mod render;
mod server_context;
mod servers;
mod snapshot;
mod tags;
mod transitions;

pub use account::capabilities;
pub use addresses::NAMESERVERS;
pub use parse::{get_str, get_u64, parse_meta, parse_refs, ref_uuid};
pub use render::{owner_ref, OWNER_UUID};
pub use snapshot::Snapshot;

use cloudsigma_api::{Drive, DriveStatus, Ip, LibDrive, Meta, Server, ServerStatus, Tag, Vlan};
use indexmap::IndexMap;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use crate::config::Timings;

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
    /// `/keypairs/` objects as stored (wire shape minus `resource_uri`), by uuid
    pub keypairs: IndexMap<String, Value>,
    /// `/profile/` (a single object)
    pub profile: Value,
    /// running server → compute host; drive → storage host (see `placement.rs`)
    server_host: HashMap<String, usize>,
    drive_host: HashMap<String, usize>,
    /// servers being deleted → when they are gone, and what GET shows until then (status
    /// `deleting`; see `servers.rs`, `delete_server`)
    deleting: IndexMap<String, (Instant, Server)>,
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
            keypairs: IndexMap::new(),
            profile: account::default_profile(),
            server_host: HashMap::new(),
            drive_host: HashMap::new(),
            deleting: IndexMap::new(),
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
        ServerStatus::Deleting => "deleting",
        // never stored: the emulator only sets the statuses above
        ServerStatus::Unknown => "unknown",
    }
}

pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `2014-06-05T09:51:08+00:00` as in [V dumps] `runtime.active_since`.
pub fn now_iso() -> String {
    // The API's form, `2026-11-23T07:42:00+00:00`: seconds, an explicit UTC offset.
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}
