//! The `nics` of a server create/PUT body: the VLAN, `ip_v4_conf` (a static IP used once), the
//! rules between them, and the MAC (kept on a PUT, fresh for a new NIC, once in the account).

use cloudsigma_api::{IpConfMode, IpRef, IpV4Conf, Nic, Ref, Server};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

use super::parse::nic_mac;
use super::{get_str, ref_uuid, State};
use crate::error::ApiError;

fn nic_error(msg: impl Into<String>) -> ApiError {
    ApiError::validation(msg, Some("nics"))
}

impl State {
    /// `existing`: the server a PUT changes (its NICs keep their MACs and runtime);
    /// `self_uuid`: its uuid (its own static IPs are not "taken").
    pub(super) fn parse_nics(
        &mut self,
        v: &Value,
        existing: Option<&Server>,
        self_uuid: Option<&str>,
    ) -> Result<Vec<Nic>, ApiError> {
        let arr = v
            .as_array()
            .ok_or_else(|| nic_error("nics must be a list"))?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for item in arr {
            let o = item
                .as_object()
                .ok_or_else(|| nic_error("each nic must be an object"))?;
            let vlan = self.nic_vlan(o)?;
            let conf = match o.get("ip_v4_conf") {
                Some(c) if !c.is_null() => Some(self.nic_ip_v4_conf(c, self_uuid)?),
                _ => None,
            };
            check_vlan_and_conf(vlan.as_deref(), conf.as_ref())?;
            let model = get_str(o, "model")?.unwrap_or_else(|| "virtio".into());
            let mac = self.nic_claim_mac(o, existing, &mut seen)?;
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
                extra: nic_extra(o),
            });
        }
        Ok(out)
    }

    /// The NIC's VLAN uuid, which must be one of the account's.
    fn nic_vlan(&self, o: &Map<String, Value>) -> Result<Option<String>, ApiError> {
        let Some(v) = o.get("vlan").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let u = ref_uuid(v).ok_or_else(|| nic_error("vlan must be a uuid or {\"uuid\"}"))?;
        // [D] one account per emulator: a VLAN of another account is simply not
        // among this account's VLANs
        if !self.vlans.contains_key(&u) {
            return Err(nic_error(format!(
                "VLAN {u} does not exist in this account (GET /vlans/ lists the subscribed ones)"
            )));
        }
        Ok(Some(u))
    }

    /// `ip_v4_conf`: the mode, and for `static` an IP subscribed in the account and used by no
    /// other server.
    fn nic_ip_v4_conf(&self, c: &Value, self_uuid: Option<&str>) -> Result<IpV4Conf, ApiError> {
        let co = c
            .as_object()
            .ok_or_else(|| nic_error("ip_v4_conf must be an object"))?;
        let mode = match co.get("conf").and_then(Value::as_str) {
            Some("dhcp") => IpConfMode::Dhcp,
            Some("static") => IpConfMode::Static,
            Some("manual") => IpConfMode::Manual,
            other => {
                return Err(nic_error(format!(
                    "ip_v4_conf.conf {other:?} is not one of dhcp, static, manual"
                )))
            }
        };
        let ip = match co.get("ip") {
            Some(i) if !i.is_null() => {
                Some(ref_uuid(i).ok_or_else(|| nic_error("ip_v4_conf.ip must be an address"))?)
            }
            _ => None,
        };
        if mode == IpConfMode::Static {
            let Some(addr) = &ip else {
                return Err(nic_error("ip_v4_conf.conf static needs ip_v4_conf.ip"));
            };
            self.check_static_ip(addr, self_uuid)?;
        }
        Ok(IpV4Conf {
            conf: mode,
            ip: ip.map(|a| IpRef::Ref(Ref::to_resource("ips", &a))),
        })
    }

    fn check_static_ip(&self, addr: &str, self_uuid: Option<&str>) -> Result<(), ApiError> {
        if !self.ips.contains_key(addr) {
            return Err(nic_error(format!(
                "IP {addr} is not subscribed in this account"
            )));
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
            return Err(nic_error(format!(
                "IP {addr} is already used by another server"
            )));
        }
        Ok(())
    }

    /// [V reference] NICs are matched by mac in a PUT; a new NIC gets a fresh MAC
    /// [D] a MAC appears once in the account, so once per VLAN (one L2 segment cannot
    /// have two NICs with one MAC; the switch refuses it too). The caller restores the
    /// MAC set when the request fails later, so a refused request reserves nothing.
    /// `seen`: the MACs of this body's NICs so far.
    fn nic_claim_mac(
        &mut self,
        o: &Map<String, Value>,
        existing: Option<&Server>,
        seen: &mut HashSet<String>,
    ) -> Result<String, ApiError> {
        let Some(m) = nic_mac(o)? else {
            return Ok(self.new_mac());
        };
        if !seen.insert(m.clone()) {
            return Err(nic_error(format!(
                "MAC {m} is given to two NICs of this server"
            )));
        }
        let owned_by_self = existing
            .map(|e| e.nics.iter().any(|n| n.mac.as_deref() == Some(m.as_str())))
            .unwrap_or(false);
        if !owned_by_self && !self.macs.insert(m.clone()) {
            return Err(nic_error(self.mac_in_use(&m)));
        }
        Ok(m)
    }

    /// Why MAC `m` is taken: the server (and VLAN) whose NIC has it.
    fn mac_in_use(&self, m: &str) -> String {
        let holder = self
            .servers
            .values()
            .find(|s| s.nics.iter().any(|n| n.mac.as_deref() == Some(m)));
        match holder {
            Some(h) => {
                let on_vlan = h
                    .nics
                    .iter()
                    .find(|n| n.mac.as_deref() == Some(m))
                    .and_then(|n| n.vlan.as_ref())
                    .map(|v| format!(" on VLAN {}", v.uuid()))
                    .unwrap_or_default();
                format!(
                    "MAC {m} is already used by a NIC{on_vlan} of server {}",
                    h.uuid
                )
            }
            None => format!("MAC {m} is already in use"),
        }
    }
}

/// [V docs] forbid vlan with ip_v4_conf on one NIC, but [V deployment report] the
/// real cloud accepts `{"vlan": u, "ip_v4_conf": {"conf": "dhcp"}}` (kube-dc's
/// machine controller sends it): accepted, and a vlan set wins (a VLAN NIC: no
/// address from the cloud, DHCP only from a server on the VLAN). `manual` likewise.
/// [D] `static` with a vlan stays refused: it would put a subscribed public IP on a
/// private NIC, and nothing shows the cloud accepting that.
fn check_vlan_and_conf(vlan: Option<&str>, conf: Option<&IpV4Conf>) -> Result<(), ApiError> {
    if vlan.is_some() && conf.map(|c| c.conf == IpConfMode::Static).unwrap_or(false) {
        return Err(nic_error(
            "A NIC cannot have both vlan and ip_v4_conf static (a VLAN NIC gets no public IP)",
        ));
    }
    if vlan.is_none() && conf.is_none() {
        return Err(nic_error("A NIC needs ip_v4_conf or vlan"));
    }
    Ok(())
}

/// The NIC fields the emulator keeps as given (null when absent).
fn nic_extra(o: &Map<String, Value>) -> BTreeMap<String, Value> {
    ["boot_order", "firewall_policy", "ip_v6_conf"]
        .into_iter()
        .map(|k| (k.to_string(), o.get(k).cloned().unwrap_or(Value::Null)))
        .collect()
}
