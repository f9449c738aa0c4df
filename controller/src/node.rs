//! Pure Node logic: providerID parsing, address selection, label values, taint edits. No I/O here,
//! so every rule the controller applies is unit-tested.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cloudsigma_api::models::Server;
use k8s_openapi::api::core::v1::{Node, NodeAddress, Taint};

pub const PROVIDER_PREFIX: &str = "cloudsigma://";
pub const TAINT_UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";
pub const TAINT_SHUTDOWN: &str = "node.cloudprovider.kubernetes.io/shutdown";
pub const ANNOTATION_PROVIDED_IP: &str = "alpha.kubernetes.io/provided-node-ip";

pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_INSTANCE_TYPE_BETA: &str = "beta.kubernetes.io/instance-type";
pub const LABEL_REGION_BETA: &str = "failure-domain.beta.kubernetes.io/region";
pub const LABEL_ZONE_BETA: &str = "failure-domain.beta.kubernetes.io/zone";

/// What a Node's `spec.providerID` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderId {
    /// No providerID yet: the server is looked up by name.
    Empty,
    /// `cloudsigma://<uuid>`.
    CloudSigma(String),
    /// Another cloud's node (hybrid cluster): never touched.
    Foreign(String),
}

/// Parses `spec.providerID`. A `cloudsigma://` value whose rest is not a plausible uuid is
/// reported as an error rather than treated as foreign: it is ours but broken.
pub fn parse_provider_id(raw: Option<&str>) -> Result<ProviderId, String> {
    let raw = raw.map(str::trim).unwrap_or("");
    if raw.is_empty() {
        return Ok(ProviderId::Empty);
    }
    let Some(rest) = raw.strip_prefix(PROVIDER_PREFIX) else {
        return Ok(ProviderId::Foreign(raw.to_string()));
    };
    // Tolerate the legacy `cloudsigma:///uuid` form some tools write.
    let uuid = rest.trim_start_matches('/');
    let plausible = uuid.len() == 36
        && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && uuid.chars().filter(|c| *c == '-').count() == 4;
    if !plausible {
        return Err(format!(
            "providerID {raw:?} is not cloudsigma://<server uuid>; fix spec.providerID (it is immutable: re-register the Node)"
        ));
    }
    Ok(ProviderId::CloudSigma(uuid.to_ascii_lowercase()))
}

pub fn provider_id(uuid: &str) -> String {
    format!("{PROVIDER_PREFIX}{uuid}")
}

/// Instance type label value: `<smp>c-<cpu MHz>mhz-<mem GiB>g`, e.g. `2c-4000mhz-4g`.
/// CloudSigma has no instance types (cpu, mem and smp are free), so the value spells out the size;
/// it only contains label-safe characters. Memory not a whole GiB is written in MiB (`1536m`).
pub fn instance_type(server: &Server) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    let mem = if server.mem.is_multiple_of(GIB) {
        format!("{}g", server.mem / GIB)
    } else {
        format!("{}m", server.mem / MIB)
    };
    format!("{}c-{}mhz-{}", server.smp.max(1), server.cpu, mem)
}

/// Labels to add at initialization: never overwrites an existing label, skips empty values.
pub fn labels_to_add(
    existing: &BTreeMap<String, String>,
    instance_type: &str,
    region: &str,
    zone: &str,
) -> BTreeMap<String, String> {
    let wanted = [
        (LABEL_INSTANCE_TYPE, instance_type),
        (LABEL_INSTANCE_TYPE_BETA, instance_type),
        (LABEL_REGION, region),
        (LABEL_REGION_BETA, region),
        (LABEL_ZONE, zone),
        (LABEL_ZONE_BETA, zone),
    ];
    wanted
        .into_iter()
        .filter(|(k, v)| !v.is_empty() && !existing.contains_key(*k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The NAT/public runtime IPv4 addresses of a running server (NICs without a VLAN).
pub fn external_ips(server: &Server) -> Vec<IpAddr> {
    server
        .nics
        .iter()
        .filter(|n| !n.is_private())
        .filter_map(|n| n.runtime_ipv4())
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .collect()
}

pub fn has_vlan(server: &Server) -> bool {
    server.nics.iter().any(|n| n.is_private())
}

/// Parses `alpha.kubernetes.io/provided-node-ip`: one IP or a dual-stack pair (one IPv4, one
/// IPv6), as upstream's `ParseNodeIPAnnotation` (`k8s.io/component-helpers/node/util/ips.go`)
/// accepts it. Anything else is an error naming the value.
pub fn provided_ips(node: &Node) -> Result<Vec<IpAddr>, String> {
    let Some(raw) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PROVIDED_IP))
    else {
        return Ok(vec![]);
    };
    let ips = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>().map_err(|_| {
                format!("annotation {ANNOTATION_PROVIDED_IP}={raw:?} holds {s:?}, not an IP address; check kubelet --node-ip")
            })
        })
        .collect::<Result<Vec<IpAddr>, String>>()?;
    let pair_of_one_family = ips.len() == 2 && ips[0].is_ipv4() == ips[1].is_ipv4();
    if ips.len() > 2 || pair_of_one_family {
        return Err(format!(
            "annotation {ANNOTATION_PROVIDED_IP}={raw:?} is neither one IP nor an IPv4,IPv6 pair; check kubelet --node-ip"
        ));
    }
    Ok(ips)
}

/// Why `ip` can never be a node's address, or `None`. The kubelet refuses the same kinds for
/// `--node-ip` (`ValidateNodeIP`, `pkg/kubelet/kubelet_node_status.go`: loopback, multicast,
/// link-local unicast, unspecified); the IPv4 broadcast address is added. An annotation holding
/// one was therefore not written by a kubelet's own check, and no peer could reach the Node there.
pub fn unusable_node_ip(ip: &IpAddr) -> Option<&'static str> {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if link_local {
        Some("a link-local address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// The server has a VLAN NIC but its kubelet provided no node IP: the Node can get no
/// InternalIP (the API does not know VLAN addresses), and CNIs that need one (Cilium, flannel)
/// fail on it. A broken annotation is not this case: it is an `InvalidNodeIP` error.
pub fn vlan_without_node_ip(node: &Node, server: &Server) -> bool {
    has_vlan(server) && matches!(provided_ips(node), Ok(ips) if ips.is_empty())
}

/// The addresses the Node should carry.
///
/// CloudSigma knows only the NAT runtime IP (ExternalIP); the private VLAN address is configured
/// inside the guest, so the kubelet-provided node IP is the only source for it. Rules:
/// - ExternalIP: every NAT runtime IPv4.
/// - InternalIP: each provided IP. Without a VLAN NIC it must be one of the NAT IPs (the guest's
///   public address), else error and the Node stays tainted, as upstream does. With a VLAN NIC it
///   is guest knowledge the API cannot confirm, so only what can be refused soundly is refused:
///   an address no node can have ([`unusable_node_ip`]) and a NAT IP of another server of the
///   account (`nat_owner` answers which server's, if any), which the cloud routes to that server.
///   With no provided IP and no VLAN, the NAT IP also serves as InternalIP so CNIs that need an
///   InternalIP work; with a VLAN and no provided IP there is no InternalIP
///   ([`vlan_without_node_ip`]).
/// - Hostname: kept from kubelet, else the node name.
pub fn desired_addresses(
    node: &Node,
    server: &Server,
    nat_owner: &dyn Fn(&IpAddr) -> Option<String>,
) -> Result<Vec<NodeAddress>, String> {
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let ext = external_ips(server);
    let provided = provided_ips(node)?;
    let vlan = has_vlan(server);
    let mut internal: Vec<IpAddr> = Vec::new();
    for ip in &provided {
        if ext.contains(ip) {
            internal.push(*ip);
            continue;
        }
        if !vlan {
            return Err(format!(
                "node {node_name}: provided node IP {ip} is not an address of server {} (NAT IPs {:?}) and the server has no VLAN NIC; fix kubelet --node-ip",
                server.uuid, ext
            ));
        }
        if let Some(why) = unusable_node_ip(ip) {
            return Err(format!(
                "node {node_name}: provided node IP {ip} is {why}, never a node's VLAN address; set kubelet --node-ip to the address of the VLAN NIC of server {}",
                server.uuid
            ));
        }
        if let Some(other) = nat_owner(ip).filter(|o| !o.eq_ignore_ascii_case(&server.uuid)) {
            return Err(format!(
                "node {node_name}: provided node IP {ip} is the public (NAT) address of another CloudSigma server, {other}, not a VLAN address of server {}; set kubelet --node-ip to the address of its VLAN NIC",
                server.uuid
            ));
        }
        internal.push(*ip);
    }
    if provided.is_empty() && !vlan {
        internal.extend(ext.iter().copied());
    }
    let hostname = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "Hostname"))
        .map(|a| a.address.clone())
        .unwrap_or(node_name);

    let mut out = Vec::new();
    for ip in internal {
        out.push(addr("InternalIP", ip.to_string()));
    }
    for ip in ext {
        out.push(addr("ExternalIP", ip.to_string()));
    }
    if !hostname.is_empty() {
        out.push(addr("Hostname", hostname));
    }
    Ok(out)
}

fn addr(t: &str, a: String) -> NodeAddress {
    NodeAddress {
        type_: t.to_string(),
        address: a,
    }
}

pub fn current_addresses(node: &Node) -> Vec<NodeAddress> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default()
}

pub fn has_taint(node: &Node, key: &str) -> bool {
    taints(node).iter().any(|t| t.key == key)
}

pub fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

pub fn shutdown_taint() -> Taint {
    Taint {
        key: TAINT_SHUTDOWN.to_string(),
        effect: "NoSchedule".to_string(),
        ..Default::default()
    }
}

/// Ready condition is True. Lifecycle deletes only Nodes that are not Ready (as upstream does): a
/// kubelet still reporting Ready contradicts "server gone".
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudsigma_api::models::{Nic, NicRuntime, Ref, ServerStatus};

    fn server(nics: Vec<Nic>) -> Server {
        serde_json::from_value::<Server>(serde_json::json!({
            "uuid": "4b2d3a5e-1111-4222-8333-944455556666", "name": "n1",
            "cpu": 2000, "mem": 4294967296u64, "smp": 2, "status": "running"
        }))
        .map(|mut s| {
            s.nics = nics;
            s.status = ServerStatus::Running;
            s
        })
        .expect("fixture")
    }
    fn nat(ip: &str) -> Nic {
        Nic {
            runtime: Some(NicRuntime {
                ip_v4: Some(Ref::Uuid(ip.into())),
                ..Default::default()
            }),
            ..Nic::public_dhcp()
        }
    }
    fn vlan() -> Nic {
        Nic {
            vlan: Some(Ref::Uuid("vlan-1".into())),
            ..Default::default()
        }
    }
    fn node(provided: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        if let Some(p) = provided {
            n.metadata.annotations =
                Some([(ANNOTATION_PROVIDED_IP.to_string(), p.to_string())].into());
        }
        n
    }
    fn pairs(a: &[NodeAddress]) -> Vec<(String, String)> {
        a.iter()
            .map(|a| (a.type_.clone(), a.address.clone()))
            .collect()
    }
    fn p(t: &str, a: &str) -> (String, String) {
        (t.into(), a.into())
    }
    /// No other server owns any NAT IP.
    fn none(_: &IpAddr) -> Option<String> {
        None
    }

    #[test]
    fn provider_id_parsing() {
        assert_eq!(parse_provider_id(None), Ok(ProviderId::Empty));
        assert_eq!(parse_provider_id(Some("  ")), Ok(ProviderId::Empty));
        assert_eq!(
            parse_provider_id(Some("cloudsigma://4B2D3A5E-1111-4222-8333-944455556666")),
            Ok(ProviderId::CloudSigma(
                "4b2d3a5e-1111-4222-8333-944455556666".into()
            ))
        );
        assert_eq!(
            parse_provider_id(Some("cloudsigma:///4b2d3a5e-1111-4222-8333-944455556666")),
            Ok(ProviderId::CloudSigma(
                "4b2d3a5e-1111-4222-8333-944455556666".into()
            ))
        );
        assert_eq!(
            parse_provider_id(Some("hcloud://123")),
            Ok(ProviderId::Foreign("hcloud://123".into()))
        );
        assert!(parse_provider_id(Some("cloudsigma://not-a-uuid")).is_err());
        assert!(parse_provider_id(Some("cloudsigma://")).is_err());
        assert_eq!(provider_id("abc"), "cloudsigma://abc");
    }

    #[test]
    fn instance_type_values() {
        let mut s = server(vec![]);
        assert_eq!(instance_type(&s), "2c-2000mhz-4g");
        s.mem = 1536 << 20;
        s.smp = 0;
        assert_eq!(instance_type(&s), "1c-2000mhz-1536m");
    }

    #[test]
    fn labels_never_overwrite_and_skip_empty() {
        let existing: BTreeMap<String, String> =
            [(LABEL_ZONE.to_string(), "mine".to_string())].into();
        let l = labels_to_add(&existing, "2c-2000mhz-4g", "zrh", "zrh");
        assert_eq!(
            l.get(LABEL_INSTANCE_TYPE).map(String::as_str),
            Some("2c-2000mhz-4g")
        );
        assert_eq!(
            l.get(LABEL_INSTANCE_TYPE_BETA).map(String::as_str),
            Some("2c-2000mhz-4g")
        );
        assert_eq!(l.get(LABEL_REGION_BETA).map(String::as_str), Some("zrh"));
        assert!(
            !l.contains_key(LABEL_ZONE),
            "existing label must not be overwritten"
        );
        assert_eq!(l.get(LABEL_ZONE_BETA).map(String::as_str), Some("zrh"));
        let l = labels_to_add(&BTreeMap::new(), "t", "", "");
        assert_eq!(l.len(), 2, "empty region/zone are not written: {l:?}");
    }

    #[test]
    fn addresses_no_vlan_no_provided_uses_nat_as_internal() {
        let a = desired_addresses(&node(None), &server(vec![nat("185.12.0.5")]), &none).unwrap();
        assert_eq!(
            pairs(&a),
            vec![
                p("InternalIP", "185.12.0.5"),
                p("ExternalIP", "185.12.0.5"),
                p("Hostname", "n1")
            ]
        );
    }

    #[test]
    fn addresses_vlan_accepts_provided_private_ip() {
        let a = desired_addresses(
            &node(Some("10.0.0.7")),
            &server(vec![nat("185.12.0.5"), vlan()]),
            &none,
        )
        .unwrap();
        assert_eq!(
            pairs(&a),
            vec![
                p("InternalIP", "10.0.0.7"),
                p("ExternalIP", "185.12.0.5"),
                p("Hostname", "n1")
            ]
        );
    }

    #[test]
    fn addresses_vlan_without_provided_ip_has_no_internal() {
        let a = desired_addresses(&node(None), &server(vec![nat("185.12.0.5"), vlan()]), &none)
            .unwrap();
        assert_eq!(
            pairs(&a),
            vec![p("ExternalIP", "185.12.0.5"), p("Hostname", "n1")]
        );
    }

    #[test]
    fn addresses_no_vlan_foreign_provided_ip_is_an_error() {
        let e = desired_addresses(
            &node(Some("10.9.9.9")),
            &server(vec![nat("185.12.0.5")]),
            &none,
        )
        .unwrap_err();
        assert!(e.contains("10.9.9.9") && e.contains("--node-ip"), "{e}");
        let e = desired_addresses(
            &node(Some("garbage")),
            &server(vec![nat("185.12.0.5")]),
            &none,
        )
        .unwrap_err();
        assert!(e.contains("garbage"), "{e}");
    }

    #[test]
    fn addresses_keep_kubelet_hostname_and_stopped_server() {
        let mut n = node(Some("185.12.0.5"));
        n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            addresses: Some(vec![addr("Hostname", "n1.example".into())]),
            ..Default::default()
        });
        let a = desired_addresses(&n, &server(vec![nat("185.12.0.5")]), &none).unwrap();
        assert_eq!(
            pairs(&a),
            vec![
                p("InternalIP", "185.12.0.5"),
                p("ExternalIP", "185.12.0.5"),
                p("Hostname", "n1.example")
            ]
        );
        // A stopped server has no runtime IP: with a VLAN the provided IP is still kept.
        let stopped = server(vec![Nic::public_dhcp(), vlan()]);
        let a = desired_addresses(&node(Some("10.0.0.7")), &stopped, &none).unwrap();
        assert_eq!(
            pairs(&a),
            vec![p("InternalIP", "10.0.0.7"), p("Hostname", "n1")]
        );
    }

    #[test]
    fn vlan_provided_ip_that_no_node_can_have_is_refused() {
        let s = server(vec![nat("185.12.0.5"), vlan()]);
        for (ip, why) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("169.254.10.1", "link-local"),
            ("fe80::1", "link-local"),
            ("224.0.0.5", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let e = desired_addresses(&node(Some(ip)), &s, &none).unwrap_err();
            assert!(
                e.contains(ip) && e.contains(why) && e.contains("--node-ip"),
                "{ip}: {e}"
            );
        }
        // Private, shared (CGNAT), unique-local and even public ranges are the guest's choice.
        for ip in [
            "10.0.0.7",
            "172.16.5.5",
            "192.168.1.9",
            "100.64.0.3",
            "fd00::7",
            "8.8.8.8",
        ] {
            let a = desired_addresses(&node(Some(ip)), &s, &none).unwrap();
            assert_eq!(pairs(&a)[0], p("InternalIP", ip));
        }
    }

    #[test]
    fn vlan_provided_ip_that_is_another_servers_nat_ip_is_refused() {
        let s = server(vec![nat("185.12.0.5"), vlan()]);
        let owner = |ip: &IpAddr| match ip.to_string().as_str() {
            "185.12.0.9" => Some("0f0f0f0f-2222-4333-8444-955566667777".to_string()),
            "185.12.0.5" => Some(s.uuid.clone()),
            _ => None,
        };
        let e = desired_addresses(&node(Some("185.12.0.9")), &s, &owner).unwrap_err();
        assert!(
            e.contains("185.12.0.9") && e.contains("0f0f0f0f-2222-4333-8444-955566667777"),
            "{e}"
        );
        // Its own NAT IP is fine (kubelet chose the public address), and so is a VLAN address.
        let a = desired_addresses(&node(Some("185.12.0.5")), &s, &owner).unwrap();
        assert_eq!(pairs(&a)[0], p("InternalIP", "185.12.0.5"));
        let a = desired_addresses(&node(Some("10.0.0.7")), &s, &owner).unwrap();
        assert_eq!(pairs(&a)[0], p("InternalIP", "10.0.0.7"));
    }

    #[test]
    fn vlan_dual_stack_pair_is_kept_and_malformed_lists_are_refused() {
        let s = server(vec![nat("185.12.0.5"), vlan()]);
        let a = desired_addresses(&node(Some("10.0.0.7,fd00::7")), &s, &none).unwrap();
        assert_eq!(
            pairs(&a),
            vec![
                p("InternalIP", "10.0.0.7"),
                p("InternalIP", "fd00::7"),
                p("ExternalIP", "185.12.0.5"),
                p("Hostname", "n1")
            ]
        );
        for bad in [
            "10.0.0.7,10.0.0.8",
            "fd00::7,fd00::8",
            "10.0.0.7,fd00::7,10.0.0.9",
        ] {
            let e = desired_addresses(&node(Some(bad)), &s, &none).unwrap_err();
            assert!(e.contains("pair") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn vlan_without_node_ip_only_with_a_vlan_and_no_annotation() {
        let with_vlan = server(vec![nat("185.12.0.5"), vlan()]);
        let without = server(vec![nat("185.12.0.5")]);
        assert!(vlan_without_node_ip(&node(None), &with_vlan));
        assert!(!vlan_without_node_ip(&node(Some("10.0.0.7")), &with_vlan));
        assert!(!vlan_without_node_ip(&node(None), &without));
        // A broken annotation is reported as InvalidNodeIP, not as missing.
        assert!(!vlan_without_node_ip(&node(Some("garbage")), &with_vlan));
    }

    #[test]
    fn readiness() {
        let mut n = node(None);
        assert!(!is_ready(&n));
        n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(is_ready(&n));
    }
}
