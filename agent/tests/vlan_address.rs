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
        n.log().contains("waiting up to 60 s for an IPv4 address on the VLAN NIC (MAC 22:aa:bb:cc:dd:02, VLAN 5bc05e7e-6555-4f40-add8-3b8e91447702)"),
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

const KEY: &str = "k8s-ipv4-22:aa:bb:cc:dd:02";
const NETWORK: &str = "/etc/systemd/network/05-cloudsigma-vlan-22aabbccdd02.network";

/// Set the server meta key `KEY` in the context file after `delay`, atomically, as the
/// controller's PUT does while the agent polls (the agent reads a `--context-file` again).
fn assign_later(n: &Node, delay: Duration, value: &str) -> std::thread::JoinHandle<()> {
    let path = n.context.clone();
    let value = value.to_string();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut ctx: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        ctx["meta"][KEY] = serde_json::json!(value);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(&ctx).unwrap()).unwrap();
        fs::rename(&tmp, &path).unwrap();
    })
}

#[test]
fn an_assignment_written_into_the_meta_after_boot_is_configured_before_the_join() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    set_interfaces(&n, &[]);
    let late = assign_later(&n, Duration::from_millis(1500), "192.168.77.10/24");
    let t = Instant::now();
    n.run_ok(&[]);
    late.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let file = n.read(NETWORK);
    assert!(
        file.contains("[Match]\nMACAddress=22:aa:bb:cc:dd:02\nType=ether\n\n[Network]\nAddress=192.168.77.10/24\nDHCP=no\n"),
        "{file}"
    );
    assert!(!file.contains("Gateway"), "{file}");
    assert_eq!(n.mode(NETWORK), 0o644);
    assert_eq!(
        n.read("/etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=192.168.77.10\n"
    );
    let st = n.status();
    assert_eq!(st["node_ip"], "192.168.77.10");
    assert_eq!(st["node_ip_source"], "assignment");
    assert_eq!(st["warnings"], serde_json::json!([]));
    // The address at once, networkd told, and only then the join.
    let calls = n.stub_calls();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} in {calls:?}"))
    };
    let ip = pos("ip addr replace 192.168.77.10/24 dev ens4");
    assert!(ip < pos("ip link set ens4 up"));
    assert!(pos("ip link set ens4 up") < pos("networkctl reload"));
    assert!(pos("networkctl reload") < pos("networkctl reconfigure ens4"));
    assert!(ip < pos("kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml"));
    assert!(
        n.log()
            .contains(&format!("server meta {KEY} assigns 192.168.77.10/24")),
        "{}",
        n.log()
    );
    assert!(
        !n.all_files().iter().any(|f| f.contains("cs-agent-tmp")),
        "no temporary file left"
    );

    // Again (--force, as after a crash): the file is already right and stays as it is.
    let before = fs::metadata(n.p(NETWORK)).unwrap().modified().unwrap();
    n.run_ok(&["--force"]);
    assert_eq!(
        fs::metadata(n.p(NETWORK)).unwrap().modified().unwrap(),
        before
    );
    assert!(n.log().contains(&format!("{NETWORK} already configures 192.168.77.10/24 on the VLAN NIC (MAC 22:aa:bb:cc:dd:02): unchanged")), "{}", n.log());
}

#[test]
fn a_bad_assignment_is_named_in_a_warning_and_writes_no_file() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    set_interfaces(&n, &[]);
    assign_later(&n, Duration::ZERO, "192.168.77.10/40")
        .join()
        .unwrap();
    n.run_ok(&["--vlan-address-timeout", "1.5"]);
    assert!(!n.p(NETWORK).exists());
    assert!(!n.p("/etc/default/kubelet").exists());
    assert!(!n.stub_calls().iter().any(|c| c.starts_with("ip ")));
    let st = n.status();
    let w: Vec<&str> = st["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with(&format!("server meta {KEY} = \"192.168.77.10/40\" is not a usable address assignment: prefix \"40\" is not a number from 8 to 30")),
        "{}",
        w[0]
    );
    assert!(w[1].starts_with("no --node-ip:"), "{}", w[1]);
    // The join still runs (without --node-ip), as without an address.
    assert!(n
        .stub_calls()
        .contains(&"kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml".to_string()));
}

/// A pty host: the whole context for the empty key, the meta key `KEY` as an empty line (absent)
/// until `delay` has passed since the first request and `value` after. Returns how often `KEY`
/// was asked for.
fn live_host(
    ctx: String,
    delay: Duration,
    value: &'static str,
) -> (
    nix::pty::OpenptyResult,
    std::path::PathBuf,
    std::thread::JoinHandle<usize>,
) {
    use std::io::{Read, Write};
    let pty = nix::pty::openpty(None, None).unwrap();
    let tty = nix::unistd::ttyname(&pty.slave).unwrap();
    let mut master = fs::File::from(pty.master.try_clone().unwrap());
    let host = std::thread::spawn(move || {
        let start = Instant::now();
        let mut asked = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut b = [0u8; 256];
        loop {
            let n = match master.read(&mut b) {
                Ok(0) | Err(_) => return asked,
                Ok(n) => n,
            };
            buf.extend_from_slice(&b[..n]);
            while let Some(lt) = buf.windows(2).position(|w| w == b"<\n") {
                let Some(end) = buf[lt + 2..].windows(2).position(|w| w == b"\n>") else {
                    break;
                };
                let key = String::from_utf8_lossy(&buf[lt + 2..lt + 2 + end]).to_string();
                buf.drain(..lt + 2 + end + 2);
                let line = if key.is_empty() {
                    ctx.clone()
                } else if key == format!("/meta/{KEY}") {
                    asked += 1;
                    if start.elapsed() >= delay {
                        value.to_string()
                    } else {
                        String::new()
                    }
                } else {
                    String::new()
                };
                if master
                    .write_all(format!("{line}\n\x04").as_bytes())
                    .is_err()
                {
                    return asked;
                }
            }
        }
    });
    (pty, tty, host)
}

#[test]
fn the_assignment_is_read_live_from_the_serial_port() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    set_interfaces(&n, &[]);
    let ctx = fs::read_to_string(&n.context).unwrap();
    let (pty, tty, host) = live_host(ctx, Duration::from_millis(2500), "192.168.77.11/24");
    let out = n.run_serial(&tty, 10);
    drop(pty);
    let asked = host.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), n.log());
    assert!(
        asked >= 2,
        "the meta key was read again until it was there ({asked})"
    );
    assert_eq!(
        n.read("/etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=192.168.77.11\n"
    );
    assert!(n.read(NETWORK).contains("Address=192.168.77.11/24\n"));
    assert!(n
        .stub_calls()
        .contains(&"ip addr replace 192.168.77.11/24 dev ens4".to_string()));
}
