//! Objects → wire JSON: what every GET answers (references, `owner`, `resource_uri`, the derived
//! `mounted` status, tags from the index, the short list forms).

use cloudsigma_api::{Drive, DriveStatus, Ip, LibDrive, Ref, Server, Tag, Vlan};
use serde_json::{json, Value};

use super::State;

/// The account uuid every object's `owner` points to.
pub const OWNER_UUID: &str = "0e6f3c1a-7c1b-4b8e-9d3e-c10550000001";

pub fn owner_ref() -> Ref {
    Ref::Object {
        uuid: OWNER_UUID.into(),
        resource_uri: Some(format!("/api/2.0/user/{OWNER_UUID}/")),
    }
}

/// Insert the keys `extra` lacks (a registered or older object keeps what it has).
fn fill(extra: &mut std::collections::BTreeMap<String, Value>, keys: &[(&str, Value)]) {
    for (k, v) in keys {
        extra.entry((*k).to_string()).or_insert_with(|| v.clone());
    }
}

impl State {
    /// The full server. Keys the models skip when empty are put back as the real API sends
    /// them: [V dumps/response_server_get_two_nics, response_pubkeys_server] a NIC of a stopped
    /// server has `"runtime": null`; [V dumps/response_server_attach_drive,
    /// response_server_get_running] a server drive has `boot_order` (null when unset) and
    /// `runtime` (null while stopped, I/O counters while running).
    pub fn render_server(&self, s: &Server) -> Server {
        let mut out = s.clone();
        out.tags = self.tag_refs(&s.uuid);
        out.owner = Some(owner_ref());
        out.resource_uri = Some(format!("/api/2.0/servers/{}/", s.uuid));
        for n in &mut out.nics {
            if n.runtime.is_none() {
                n.extra.insert("runtime".into(), Value::Null);
            }
        }
        let drive_runtime = match s.runtime {
            None => Value::Null,
            Some(_) => json!({"io": {"bytes_read": 0, "bytes_written": 0, "count_flush": 0,
                "count_read": 0, "count_written": 0, "total_time_ns_flush": 0,
                "total_time_ns_read": 0, "total_time_ns_write": 0}}),
        };
        for d in &mut out.drives {
            if d.boot_order.is_none() {
                d.extra.insert("boot_order".into(), Value::Null);
            }
            d.extra.insert("runtime".into(), drive_runtime.clone());
        }
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

    /// [V dumps/response_libdrive_get] every key; the ones a registered library drive did not
    /// bring get the dump's empty values (`owner` and `storage_type` are null there).
    pub fn render_libdrive(&self, d: &LibDrive) -> LibDrive {
        let mut out = d.clone();
        out.status = Some(DriveStatus::Unmounted);
        out.resource_uri = Some(format!("/api/2.0/libdrives/{}/", d.uuid));
        fill(
            &mut out.extra,
            &[
                ("affinities", json!([])),
                ("allow_multimount", json!(false)),
                ("category", json!([])),
                ("favourite", json!(false)),
                ("install_notes", json!("")),
                ("jobs", json!([])),
                ("licenses", json!([])),
                ("meta", json!({})),
                ("mounted_on", json!([])),
                ("owner", Value::Null),
                ("paid", json!(false)),
                ("storage_type", Value::Null),
                ("tags", json!([])),
                ("url", json!("")),
            ],
        );
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
        // [V dumps/response_ip_get] (values of an IP registered without them)
        fill(
            &mut out.extra,
            &[
                ("grantees", json!([])),
                ("permissions", json!([])),
                ("subscription", Value::Null),
            ],
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
        // [V dumps/response_vlan_get]
        fill(
            &mut out.extra,
            &[
                ("bottom_vlan_tag", Value::Null),
                ("grantees", json!([])),
                ("permissions", json!([])),
                ("subscription", Value::Null),
            ],
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
}
