//! VLAN NICs in the API (the networks themselves: src/vlan/ and the QEMU VM test): the request
//! kube-dc's provider sends, NICs wired by kind, refusals of bad VLANs and MACs, DHCP on a VLAN
//! through /admin/, and a recursively deleted server's drives.
mod common;
use async_trait::async_trait;
use cloudsim::{Backend, EmulatorConfig};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const VA: &str = "5e0a1a7e-3b7d-4c1e-8f00-0000000c0001";
const VB: &str = "5e0a1a7e-3b7d-4c1e-8f00-0000000c0002";

fn server(name: &str, nics: Value) -> Value {
    json!({"objects": [{"name": name, "cpu": 1000, "mem": 536870912, "vnc_password": "pw",
        "nics": nics}]})
}

fn error_message(v: &Value) -> String {
    v[0]["error_message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Like the QEMU backend: a NAT address for the first public NIC only.
struct FirstPublicNat;

#[async_trait]
impl Backend for FirstPublicNat {
    fn runtime_ip(&self, _server: &str, public_nic: usize) -> Option<String> {
        (public_nic == 0).then(|| "127.77.0.10".to_string())
    }
}

#[tokio::test]
async fn the_providers_vlan_nic_is_a_vlan_nic_and_the_nat_ip_follows_the_public_nic() {
    let t = start(EmulatorConfig {
        backend: Some(std::sync::Arc::new(FirstPublicNat)),
        ..EmulatorConfig::for_tests()
    })
    .await;
    // [VLAN, public] in that order, the VLAN NIC as kube-dc's machine controller sends it
    let (s, v) = t
        .post(
            "servers/",
            server(
                "w",
                json!([{"vlan": VA, "ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"},
                       {"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"}]),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let u = uuid_of(&v["objects"][0]);
    assert_eq!(v["objects"][0]["nics"][0]["vlan"]["uuid"], VA);
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, v) = t.get(&format!("servers/{u}/")).await;
    let vlan_rt = &v["nics"][0]["runtime"];
    assert_eq!(vlan_rt["interface_type"], "private", "{v}");
    assert!(
        vlan_rt.get("ip_v4").is_some() && vlan_rt["ip_v4"].is_null(),
        "{v}"
    );
    let pub_rt = &v["nics"][1]["runtime"];
    assert_eq!(pub_rt["interface_type"], "public", "{v}");
    assert_eq!(
        pub_rt["ip_v4"]["uuid"], "127.77.0.10",
        "the backend's NAT address is on the public NIC wherever it is: {v}"
    );
    // the VLAN lists the server
    let (_, vl) = t.get(&format!("vlans/{VA}/")).await;
    assert_eq!(vl["servers"][0]["uuid"], u.as_str(), "{vl}");
    // static with a vlan stays refused
    let (s, v) = t
        .post(
            "servers/",
            server(
                "x",
                json!([{"vlan": VA, "ip_v4_conf": {"conf": "static", "ip": "203.0.113.200"}}]),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn an_unknown_vlan_creates_nothing_and_reserves_no_mac() {
    let t = instant().await;
    let ghost = "0bad0bad-0000-4000-8000-000000000000";
    let mac = "22:aa:bb:cc:dd:01";
    let (s, v) = t
        .post(
            "servers/",
            server(
                "w",
                json!([{"ip_v4_conf": {"conf": "dhcp"}, "mac": mac}, {"vlan": ghost}]),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_message(&v).contains(ghost), "{v}");
    let (_, l) = t.get("servers/").await;
    assert_eq!(l["meta"]["total_count"], 0, "{l}");
    // the refused request did not keep the MAC
    let (s, v) = t
        .post(
            "servers/",
            server("w", json!([{"ip_v4_conf": {"conf": "dhcp"}, "mac": mac}])),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // a PUT naming an unknown VLAN changes nothing either
    let u = uuid_of(&v["objects"][0]);
    let (s, v) = t
        .put(
            &format!("servers/{u}/"),
            json!({"name": "w", "cpu": 1000, "mem": 536870912,
                "nics": [{"ip_v4_conf": {"conf": "dhcp"}, "mac": "22:aa:bb:cc:dd:02"}, {"vlan": {"uuid": ghost}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_message(&v).contains(ghost), "{v}");
    let (s, v) = t
        .post(
            "servers/",
            server("y", json!([{"vlan": VA, "mac": "22:aa:bb:cc:dd:02"}])),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "the PUT reserved no MAC: {v}");
}

#[tokio::test]
async fn a_mac_twice_on_a_vlan_is_refused_by_name() {
    let t = instant().await;
    let mac = "22:aa:bb:cc:dd:07";
    // twice in one server
    let (s, v) = t
        .post(
            "servers/",
            server(
                "a",
                json!([{"vlan": VA, "mac": mac}, {"vlan": VB, "mac": mac}]),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let m = error_message(&v);
    assert!(m.contains(mac) && m.contains("two NICs"), "{v}");
    // in two servers on the same VLAN: the second names the first
    let (s, v) = t
        .post("servers/", server("a", json!([{"vlan": VA, "mac": mac}])))
        .await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "the refused request kept no MAC: {v}"
    );
    let a = uuid_of(&v["objects"][0]);
    let (s, v) = t
        .post("servers/", server("b", json!([{"vlan": VA, "mac": mac}])))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let m = error_message(&v);
    assert!(m.contains(mac) && m.contains(&a) && m.contains(VA), "{v}");
    // a PUT giving a server's own MAC to two NICs
    let (s, v) = t
        .put(
            &format!("servers/{a}/"),
            json!({"name": "a", "cpu": 1000, "mem": 536870912,
                "nics": [{"vlan": VA, "mac": mac}, {"vlan": VA, "mac": mac}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(error_message(&v).contains("two NICs"), "{v}");
}

#[tokio::test]
async fn dhcp_on_a_vlan_through_admin() {
    let t = instant().await;
    let path = format!("vlans/{VA}/dhcp");
    let (s, v) = t.admin(Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"vlan": VA, "dhcp": null, "leases": []}));
    let body = json!({"cidr": "192.168.50.0/24", "range": ["192.168.50.10", "192.168.50.200"]});
    let (s, v) = t.admin(Method::POST, &path, Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dhcp"], body);
    assert_eq!(t.admin(Method::GET, &path, None).await.1["dhcp"], body);
    // refusals: an unknown VLAN (by uuid), a bad subnet, an unknown field
    let ghost = "0bad0bad-0000-4000-8000-000000000000";
    let (s, v) = t
        .admin(Method::POST, &format!("vlans/{ghost}/dhcp"), Some(body))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains(ghost), "{v}");
    let (s, v) = t
        .admin(
            Method::POST,
            &path,
            Some(json!({"cidr": "192.168.50.0/33"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("192.168.50.0/33"),
        "{v}"
    );
    let (s, v) = t
        .admin(
            Method::POST,
            &path,
            Some(json!({"cidr": "192.168.50.0/24", "router": "192.168.50.1"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // the refused requests kept the configuration
    assert_eq!(
        t.admin(Method::GET, &path, None).await.1["dhcp"]["cidr"],
        "192.168.50.0/24"
    );
    let (s, v) = t.admin(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["dhcp"].is_null(), "{v}");
    // the in-process handle does the same
    t.emu
        .set_vlan_dhcp(
            VB,
            Some(cloudsim::vlan::DhcpConfig {
                cidr: "10.20.0.0/16".into(),
                range: None,
                server: None,
                lease_secs: Some(120),
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        t.emu.vlan_dhcp(VB).await.unwrap().dhcp.unwrap().cidr,
        "10.20.0.0/16"
    );
}

#[tokio::test]
async fn dhcp_configured_at_start_needs_an_existing_vlan() {
    let dhcp = |vlan: &str| EmulatorConfig {
        vlan_dhcp: [(
            vlan.to_string(),
            cloudsim::vlan::DhcpConfig {
                cidr: "192.168.60.0/24".into(),
                range: None,
                server: None,
                lease_secs: None,
            },
        )]
        .into(),
        ..EmulatorConfig::for_tests()
    };
    let e = match cloudsim::Emulator::start(dhcp("0bad0bad-0000-4000-8000-000000000000")).await {
        Ok(_) => panic!("an unknown VLAN must refuse the start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("0bad0bad-0000-4000-8000-000000000000"), "{e}");
    let t = start(dhcp(VA)).await;
    let (_, v) = t
        .admin(Method::GET, &format!("vlans/{VA}/dhcp/"), None)
        .await;
    assert_eq!(v["dhcp"]["cidr"], "192.168.60.0/24", "{v}");
}

#[tokio::test]
async fn a_server_being_deleted_lists_no_drive_the_delete_removed() {
    let t = with_timings(400).await;
    let disk = t.ready_drive("disk", 1 << 30).await;
    let (s, v) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x",
                "drives": [{"dev_channel": "0:0", "device": "virtio", "drive": disk, "boot_order": 1}],
                "nics": [{"vlan": VA}]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let u = uuid_of(&v["objects"][0]);
    let (s, _) = t.delete(&format!("servers/{u}/?recurse=disks")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        t.get(&format!("drives/{disk}/")).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, v) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "deleting");
    let listed: Vec<&str> = v["drives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["drive"]["uuid"].as_str().unwrap())
        .collect();
    for d in &listed {
        assert_eq!(
            t.get(&format!("drives/{d}/")).await.0,
            StatusCode::OK,
            "a server being deleted lists drive {d}, which does not exist: {v}"
        );
    }
    assert!(!listed.contains(&disk.as_str()), "{v}");
    let (_, l) = t.get("servers/detail/").await;
    assert!(
        l["objects"][0]["drives"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["drive"]["uuid"] != disk.as_str()),
        "{l}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        t.get(&format!("servers/{u}/")).await.0,
        StatusCode::NOT_FOUND
    );
}
