//! The node IP from the VLAN (docs/agent.md, `node_ip`): the real binary waits for the address of
//! the context's VLAN NIC, which DHCP on the VLAN brings seconds after the network is "online".

mod common;
use common::*;

use std::fs;
use std::time::{Duration, Instant};

/// The guest's interfaces: the NAT NIC with the emulator's 10.0.2.15, the VLAN NIC (its MAC in
/// the context is upper case) with `vlan` addresses.
fn interfaces(vlan: &[&str]) -> String {
    serde_json::json!([
        {"name": "lo", "mac": "00:00:00:00:00:00", "ipv4": ["127.0.0.1/8"]},
        {"name": "ens3", "mac": "22:aa:bb:cc:dd:01", "ipv4": ["10.0.2.15/24"]},
        {"name": "ens4", "mac": "22:aa:bb:cc:dd:02", "ipv4": vlan},
    ])
    .to_string()
}

/// Replace the fixture atomically (the agent lists it again while it waits).
fn set_interfaces(n: &Node, vlan: &[&str]) {
    let tmp = n.fixture.with_extension("tmp");
    fs::write(&tmp, interfaces(vlan)).unwrap();
    fs::rename(&tmp, &n.fixture).unwrap();
}

#[test]
fn a_vlan_address_that_arrives_after_the_context_read_becomes_node_ip() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    set_interfaces(&n, &[]);
    let fixture = n.fixture.clone();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let tmp = fixture.with_extension("tmp");
        fs::write(&tmp, interfaces(&["10.10.0.5/24"])).unwrap();
        fs::rename(&tmp, &fixture).unwrap();
    });
    let t = Instant::now();
    n.run_ok(&[]);
    late.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(
        n.read("/etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=10.10.0.5\n"
    );
    let st = n.status();
    assert_eq!(st["node_ip"], "10.10.0.5");
    assert_eq!(st["warnings"], serde_json::json!([]));
    // The status shows the interfaces as the step saw them last, not the early snapshot.
    let ens4 = &st["interfaces"][2];
    assert_eq!(ens4["class"], "private");
    assert_eq!(ens4["addresses"][0]["address"], "10.10.0.5");
    // The join ran after the address was written.
    assert!(n
        .stub_calls()
        .contains(&"kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml".to_string()));
    assert!(
        n.log().contains("waiting up to 30 s for an IPv4 address on the VLAN NIC (MAC 22:aa:bb:cc:dd:02, VLAN 5bc05e7e-6555-4f40-add8-3b8e91447702)"),
        "{}",
        n.log()
    );
}

#[test]
fn no_vlan_address_in_time_warns_in_log_and_status_and_the_join_goes_on_without_one() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    set_interfaces(&n, &[]);
    let t = Instant::now();
    // The timeout from the environment, as a systemd drop-in sets it.
    let out = n.run_env(&[], &[("CLOUDSIGMA_AGENT_VLAN_ADDRESS_TIMEOUT", "0.6")]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert!(t.elapsed() >= Duration::from_millis(600), "it waited");
    assert!(!n.p("/etc/default/kubelet").exists(), "no --node-ip at all");
    let st = n.status();
    assert!(st["node_ip"].is_null());
    let warnings = st["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.starts_with("no --node-ip: the VLAN NIC (MAC 22:aa:bb:cc:dd:02, VLAN 5bc05e7e-6555-4f40-add8-3b8e91447702) got no IPv4 address within 0.6 s: its interface ens4 has no IPv4 address."),
        "{w}"
    );
    assert!(w.contains("run DHCP on the VLAN"), "{w}");
    assert!(n.log().contains(&format!("WARN  {w}")), "{}", n.log());
    assert!(!n.log().contains("--node-ip=10.0.2.15"));
    assert!(n
        .stub_calls()
        .contains(&"kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml".to_string()));
    // `status` shows it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .args(["status", "--root"])
        .arg(&n.root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(w), "{text}");
}

#[test]
fn the_flag_bounds_the_wait_and_zero_looks_once() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    set_interfaces(&n, &[]);
    let t = Instant::now();
    n.run_ok(&["--vlan-address-timeout", "0"]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(n.status()["warnings"][0]
        .as_str()
        .unwrap()
        .contains("within 0 s"));
    let out = n.run(&["--vlan-address-timeout", "-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn of_two_vlan_nics_the_first_in_context_order_gives_node_ip() {
    // Context order: VLAN B's NIC (…:03) before VLAN A's (…:02); the guest names them the other
    // way round, and both have addresses.
    let mut ctx = context_json(&b64(data("kubeadm-join.yaml").as_bytes()));
    ctx["nics"].as_array_mut().unwrap().insert(
        1,
        serde_json::json!({"ip_v4_conf": null, "mac": "22:aa:bb:cc:dd:03", "model": "virtio",
            "vlan": {"uuid": "0c5a4a3e-1111-4f40-add8-3b8e91447703", "resource_uri": "/api/2.0/vlans/0c5a4a3e-1111-4f40-add8-3b8e91447703/"}}),
    );
    let n = Node::with_context(ctx);
    fs::write(
        &n.fixture,
        serde_json::json!([
            {"name": "ens3", "mac": "22:aa:bb:cc:dd:01", "ipv4": ["10.0.2.15/24"]},
            {"name": "ens4", "mac": "22:aa:bb:cc:dd:02", "ipv4": ["10.10.0.5/24"]},
            {"name": "ens5", "mac": "22:aa:bb:cc:dd:03", "ipv4": ["10.20.0.6/24"]},
        ])
        .to_string(),
    )
    .unwrap();
    n.run_ok(&[]);
    assert_eq!(
        n.read("/etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=10.20.0.6\n"
    );
    assert!(n.log().contains("2 VLAN NICs in the context: the first in context order (MAC 22:aa:bb:cc:dd:03, VLAN 0c5a4a3e-1111-4f40-add8-3b8e91447703) gives --node-ip"), "{}", n.log());
}
