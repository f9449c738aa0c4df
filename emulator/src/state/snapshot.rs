//! The account as a serializable value: the state file and `GET /admin/state`.

use cloudsigma_api::{Drive, DriveStatus, Ip, LibDrive, Meta, Ref, Server, Tag, Vlan};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use super::State;

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
    /// `/keypairs/` as stored (no `resource_uri`)
    pub keypairs: Vec<Value>,
    /// `/profile/`; absent in older state files (then the default profile)
    pub profile: Option<Value>,
    /// Which host each server and drive is on (see `placement.rs`); absent in older state
    /// files (then everything is on host 0)
    pub placements: Placements,
}

/// `uuid → host index` for running servers (compute hosts) and drives (storage hosts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Placements {
    pub servers: BTreeMap<String, usize>,
    pub drives: BTreeMap<String, usize>,
}

impl State {
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
            keypairs: self.keypairs.values().cloned().collect(),
            profile: Some(self.profile.clone()),
            placements: Placements {
                servers: self.server_host.clone().into_iter().collect(),
                drives: self.drive_host.clone().into_iter().collect(),
            },
        }
    }

    /// Load a snapshot (state file). Transitional statuses are resolved immediately.
    pub fn load(&mut self, snap: Snapshot) {
        self.servers = snap
            .servers
            .into_iter()
            .map(|mut s| {
                // rendered-only keys (render_server puts them back)
                for d in &mut s.drives {
                    d.extra.remove("runtime");
                }
                (s.uuid.clone(), s)
            })
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
        self.keypairs = snap
            .keypairs
            .into_iter()
            .filter_map(|k| Some((k["uuid"].as_str()?.to_string(), k)))
            .collect();
        if let Some(p) = snap.profile {
            self.profile = p;
        }
        self.load_placements(snap.placements);
        self.rebuild_indexes();
        self.settle_all_now();
    }
}
