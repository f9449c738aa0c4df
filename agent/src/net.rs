//! Guest interfaces, classified public/private by matching them to the context's NICs.

use std::collections::BTreeMap;
use std::path::Path;

use cloudsigma_api::ServerContext;
use serde::Deserialize;

use crate::report::{AddressInfo, InterfaceInfo};

#[derive(Debug, Clone, Deserialize)]
pub struct Iface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    /// "a.b.c.d/prefix" or "a.b.c.d"
    #[serde(default)]
    pub ipv4: Vec<String>,
}

/// The node's interfaces: from a JSON fixture (tests, `--net-fixture`) or getifaddrs(3).
pub fn interfaces(fixture: Option<&Path>) -> Result<Vec<Iface>, String> {
    if let Some(f) = fixture {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()));
    }
    let mut by_name: BTreeMap<String, Iface> = BTreeMap::new();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    for a in addrs {
        let entry = by_name
            .entry(a.interface_name.clone())
            .or_insert_with(|| Iface {
                name: a.interface_name.clone(),
                mac: None,
                ipv4: Vec::new(),
            });
        let Some(addr) = a.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                entry.mac = Some(
                    mac.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
        } else if let Some(sin) = addr.as_sockaddr_in() {
            let prefix = a
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| u32::from(m.ip()).count_ones()))
                .unwrap_or(32);
            entry.ipv4.push(format!("{}/{prefix}", sin.ip()));
        }
    }
    Ok(by_name.into_values().collect())
}

fn norm_mac(m: &str) -> String {
    m.trim().to_ascii_lowercase()
}

fn split_cidr(s: &str) -> (String, Option<u8>) {
    match s.split_once('/') {
        Some((a, p)) => (a.to_string(), p.parse().ok()),
        None => (s.to_string(), None),
    }
}

/// Classify each interface: by MAC against the context's NICs (vlan set → private, else public),
/// then by address against the NICs' IPs; loopback is loopback; the rest unknown.
pub fn classify(ctx: &ServerContext, ifaces: &[Iface]) -> Vec<InterfaceInfo> {
    let ctx_ips: Vec<String> = ctx
        .nics
        .iter()
        .filter_map(|n| {
            n.ip_v4_conf
                .as_ref()?
                .ip
                .as_ref()
                .map(|ip| ip.address().to_string())
        })
        .collect();
    ifaces
        .iter()
        .map(|i| {
            let addresses: Vec<AddressInfo> = i
                .ipv4
                .iter()
                .map(|s| {
                    let (address, prefix) = split_cidr(s);
                    AddressInfo { address, prefix }
                })
                .collect();
            let nic = i.mac.as_deref().and_then(|m| {
                ctx.nics
                    .iter()
                    .find(|n| n.mac.as_deref().map(norm_mac) == Some(norm_mac(m)))
            });
            let (class, vlan) = if let Some(n) = nic {
                if n.is_private() {
                    ("private", n.vlan.as_ref().map(|v| v.uuid().to_string()))
                } else {
                    ("public", None)
                }
            } else if addresses.iter().any(|a| a.address.starts_with("127.")) || i.name == "lo" {
                ("loopback", None)
            } else if addresses.iter().any(|a| ctx_ips.contains(&a.address)) {
                ("public", None)
            } else {
                ("unknown", None)
            };
            InterfaceInfo {
                name: i.name.clone(),
                mac: i.mac.clone(),
                addresses,
                class: class.into(),
                vlan,
            }
        })
        .collect()
}

/// A context NIC on a VLAN (private network): its MAC (lower case) and the VLAN's uuid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanNic {
    pub mac: String,
    pub vlan: String,
}

/// The context's VLAN NICs that carry a MAC, in context order. kubelet's `--node-ip` comes from
/// the first (docs/agent.md, `node_ip`): the one address the cloud controller cannot learn from the
/// API, since the cloud runs no DHCP on a VLAN and never knows its addresses. A server with only
/// public NICs gets none: the controller takes its addresses from the API, and the guest's view of
/// a public address need not equal the API's (1:1 NAT; the emulator's user-mode network, where the
/// guest has 10.0.2.15 and the API 127.77.0.N), and a mismatch would keep the Node uninitialized.
pub fn vlan_nics(ctx: &ServerContext) -> Vec<VlanNic> {
    ctx.nics
        .iter()
        .filter_map(|n| {
            Some(VlanNic {
                mac: norm_mac(n.mac.as_deref()?),
                vlan: n.vlan.as_ref()?.uuid().to_string(),
            })
        })
        .collect()
}

/// What the guest shows for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No interface has this MAC (yet).
    NoInterface,
    /// The interface exists (its name) but has no usable IPv4 address yet.
    NoAddress(String),
    /// The interface's name and its first usable IPv4 address.
    Address(String, String),
}

/// The first usable IPv4 of the interface whose MAC is `mac` (case-insensitive). Link-local
/// 169.254/16 does not count: it is what a NIC gets when DHCP failed (IPv4LL), never a node IP.
pub fn lookup(ifaces: &[Iface], mac: &str) -> Lookup {
    let mac = norm_mac(mac);
    let Some(i) = ifaces
        .iter()
        .find(|i| i.mac.as_deref().map(norm_mac).as_deref() == Some(mac.as_str()))
    else {
        return Lookup::NoInterface;
    };
    let usable = i.ipv4.iter().find_map(|s| {
        let ip: std::net::Ipv4Addr = split_cidr(s).0.parse().ok()?;
        (!ip.is_link_local() && !ip.is_unspecified() && !ip.is_loopback()).then(|| ip.to_string())
    });
    match usable {
        Some(ip) => Lookup::Address(i.name.clone(), ip),
        None => Lookup::NoAddress(i.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_wins() {
        let ctx: ServerContext = serde_json::from_value(serde_json::json!({
            "uuid":"u","name":"n",
            "nics":[
                {"mac":"22:AA:00:00:00:01","vlan":null,"ip_v4_conf":{"conf":"dhcp","ip":{"uuid":"31.171.1.2","netmask":24,"gateway":null,"nameservers":[],"tags":[],"meta":{}}}},
                {"mac":"22:aa:00:00:00:02","vlan":{"uuid":"vlan-1","resource_uri":"/api/2.0/vlans/vlan-1/"}}
            ]}))
        .unwrap();
        let ifs = vec![
            Iface {
                name: "lo".into(),
                mac: None,
                ipv4: vec!["127.0.0.1/8".into()],
            },
            Iface {
                name: "ens3".into(),
                mac: Some("22:aa:00:00:00:01".into()),
                ipv4: vec!["31.171.1.2/24".into()],
            },
            Iface {
                name: "ens4".into(),
                mac: Some("22:aa:00:00:00:02".into()),
                ipv4: vec!["10.10.0.5/24".into()],
            },
        ];
        let c = classify(&ctx, &ifs);
        assert_eq!(c[0].class, "loopback");
        assert_eq!(c[1].class, "public");
        assert_eq!(c[2].class, "private");
        assert_eq!(c[2].vlan.as_deref(), Some("vlan-1"));
        let v = vlan_nics(&ctx);
        assert_eq!(
            v,
            [VlanNic {
                mac: "22:aa:00:00:00:02".into(),
                vlan: "vlan-1".into()
            }],
            "only the VLAN NIC, its MAC in lower case"
        );
        assert_eq!(
            lookup(&ifs, "22:AA:00:00:00:02"),
            Lookup::Address("ens4".into(), "10.10.0.5".into())
        );
        assert_eq!(lookup(&ifs[..2], &v[0].mac), Lookup::NoInterface);
        let ll = [Iface {
            name: "ens4".into(),
            mac: Some("22:AA:00:00:00:02".into()),
            ipv4: vec!["169.254.3.4/16".into()],
        }];
        assert_eq!(
            lookup(&ll, &v[0].mac),
            Lookup::NoAddress("ens4".into()),
            "IPv4LL is what a failed DHCP leaves: never a node IP"
        );
    }
}
