//! Boot order (docs/agent.md, "Boot order"): the unit starts before the network and the agent
//! waits once, in its `online` phase, before the first step that may need the network, time sync
//! or containerd. Under a test root the phase is recorded as skipped at the place where it would
//! wait, so its position is what these tests check.

mod common;
use common::*;

fn names(n: &Node) -> Vec<String> {
    n.phases().into_iter().map(|(n, _)| n).collect()
}

fn at(names: &[String], x: &str) -> usize {
    names
        .iter()
        .position(|n| n == x)
        .unwrap_or_else(|| panic!("no phase {x} in {names:?}"))
}

const JOIN: &str = "#cloud-config\nwrite_files:\n  - path: /etc/x\n    content: x\nruncmd:\n  - kubeadm join x\n  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n";

#[test]
fn local_steps_run_before_the_wait_and_the_join_after_it() {
    let n = Node::new(JOIN.as_bytes());
    n.run_ok(&[]);
    let names = names(&n);
    assert_eq!(
        names.iter().filter(|x| *x == "online").count(),
        1,
        "{names:?}"
    );
    let online = at(&names, "online");
    // cloud-init's init and config stages' work needs neither the network nor containerd.
    for early in [
        "growpart",
        "context",
        "write_files",
        "hostname",
        "users",
        "ssh_keys",
        "swap",
        "ntp",
    ] {
        assert!(
            at(&names, early) < online,
            "{early} after online: {names:?}"
        );
    }
    // The final stage: packages, the VLAN address, kubeadm join.
    for late in ["packages", "node_ip", "runcmd"] {
        assert!(online < at(&names, late), "{late} before online: {names:?}");
    }
    assert_eq!(online + 1, at(&names, "packages"), "{names:?}");
    let phase = &n.status()["phases"][online];
    assert_eq!(phase["result"], "skipped");
    assert!(
        phase["detail"]
            .as_str()
            .unwrap()
            .contains("--root is not /"),
        "{phase}"
    );
    assert_eq!(n.stub_calls(), ["kubeadm join x"]);
}

#[test]
fn bootcmd_waits_for_the_network_as_in_cloud_init() {
    let n = Node::new(format!("{JOIN}bootcmd:\n  - echo early\n").as_bytes());
    n.run_ok(&[]);
    let names = names(&n);
    assert_eq!(at(&names, "online") + 1, at(&names, "bootcmd"), "{names:?}");
    assert!(at(&names, "context") < at(&names, "online"), "{names:?}");
    assert_eq!(
        names.iter().filter(|x| *x == "online").count(),
        1,
        "waited once: {names:?}"
    );
}

#[test]
fn mounts_wait_for_the_network_but_disks_do_not() {
    // `mount -a` may mount a network file system.
    let n = Node::new(
        format!("{JOIN}mounts:\n  - [ /dev/vdb1, /data, ext4, \"defaults\", \"0\", \"2\" ]\n")
            .as_bytes(),
    );
    n.run_ok(&[]);
    let names = names(&n);
    assert!(at(&names, "fs_setup") < at(&names, "online"), "{names:?}");
    assert_eq!(at(&names, "online") + 1, at(&names, "mounts"), "{names:?}");
    assert!(at(&names, "online") < at(&names, "hostname"), "{names:?}");
    assert_eq!(
        names.iter().filter(|x| *x == "online").count(),
        1,
        "{names:?}"
    );
}

#[test]
fn a_bootstrapped_node_without_bootcmd_never_waits() {
    let n = Node::new(JOIN.as_bytes());
    n.run_ok(&[]);
    n.run_ok(&[]);
    assert_eq!(n.status()["result"], "skipped");
    let names = names(&n);
    assert!(!names.iter().any(|x| x == "online"), "{names:?}");
}

#[test]
fn the_status_lists_the_interfaces_as_they_are_after_the_wait() {
    // The unit now starts before DHCP: the listing taken after the context read may show no
    // address yet. The one taken after `online` is what the status keeps (no VLAN NIC here, so
    // node_ip does not list them again).
    let data = "#cloud-config\nwrite_files:\n  - path: /tmp/net.json\n    content: '[{\"name\":\"ens3\",\"mac\":\"22:aa:bb:cc:dd:01\",\"ipv4\":[\"31.171.250.20/24\"]}]'\nruncmd:\n  - kubeadm join x\n  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n";
    let mut ctx = context_json(&b64(data.as_bytes()));
    ctx["nics"][1]["vlan"] = serde_json::Value::Null;
    let n = Node::with_context(ctx);
    // Before DHCP: ens3 without an address. write_files (before the wait) plays DHCP.
    let fixture = n.p("/tmp/net.json");
    std::fs::write(
        &fixture,
        r#"[{"name":"ens3","mac":"22:aa:bb:cc:dd:01","ipv4":[]}]"#,
    )
    .unwrap();
    n.run_ok(&["--net-fixture", fixture.to_str().unwrap()]);
    let st = n.status();
    let ens3 = &st["interfaces"][0];
    assert_eq!(ens3["name"], "ens3", "{st}");
    assert_eq!(ens3["addresses"][0]["address"], "31.171.250.20", "{st}");
}
