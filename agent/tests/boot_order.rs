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

/// A booted root for growpart: /proc/self/mountinfo with / on /dev/vda1 and its sysfs links.
fn booted(n: &Node) {
    let r = &n.root;
    std::fs::create_dir_all(r.join("proc/self")).unwrap();
    std::fs::write(
        r.join("proc/self/mountinfo"),
        "28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n",
    )
    .unwrap();
    let part = r.join("sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1");
    std::fs::create_dir_all(&part).unwrap();
    std::fs::write(part.join("partition"), "1\n").unwrap();
    std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda1",
        r.join("sys/dev/block/254:1"),
    )
    .unwrap();
}

#[test]
fn growpart_runs_beside_the_other_steps_and_ends_before_the_join() {
    let n = Node::new(JOIN.as_bytes());
    booted(&n);
    n.stub("growpart", "echo 'CHANGED: partition=1 start=2048'; exit 0");
    // An online resize of a drive cloned larger takes seconds in a busy boot.
    n.stub("resize2fs", "sleep 1");
    n.run_ok(&[]);
    let st = n.status();
    let phases = st["phases"].as_array().unwrap();
    let phase = |name: &str| phases.iter().find(|p| p["name"] == name).unwrap();
    let g = phase("growpart");
    assert_eq!(g["result"], "ok", "{g}");
    assert_eq!(phases[0]["name"], "growpart", "still phase 0");
    let g_end = g["start_ms"].as_u64().unwrap() + g["duration_ms"].as_u64().unwrap();
    assert!(g["duration_ms"].as_u64().unwrap() >= 1000, "{g}");
    // The context was read and the files written while the root grew...
    for early in ["context", "write_files", "hostname"] {
        assert!(
            phase(early)["start_ms"].as_u64().unwrap() < g_end,
            "{early} waited for growpart: {st}"
        );
    }
    // ...and the join came after it.
    assert!(
        phase("runcmd")["start_ms"].as_u64().unwrap() >= g_end,
        "{st}"
    );
    let calls = n.stub_calls();
    let pos = |p: &str| calls.iter().position(|c| c.starts_with(p)).unwrap();
    assert!(
        pos("growpart /dev/vda 1") < pos("resize2fs /dev/vda1"),
        "{calls:?}"
    );
    assert!(pos("resize2fs") < pos("kubeadm join"), "{calls:?}");
    // Its log lines reach the log.
    assert!(
        n.log().contains("growpart /dev/vda 1: CHANGED"),
        "{}",
        n.log()
    );
}

#[test]
fn a_root_that_already_fills_its_disk_runs_neither_growpart_nor_resize2fs() {
    let n = Node::new(JOIN.as_bytes());
    booted(&n);
    n.stub("growpart", "exit 2");
    n.stub("resize2fs", "exit 1");
    // sysfs: vda1 ends 1 sector before the end of vda (growpart would say NOCHANGE).
    let vda = n.p("/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
    std::fs::write(vda.join("size"), "133121\n").unwrap();
    std::fs::write(vda.join("vda1/start"), "2048\n").unwrap();
    std::fs::write(vda.join("vda1/size"), "131072\n").unwrap();
    // /dev/vda1: an ext4 of exactly the partition's 131072 sectors (64 MiB).
    std::fs::create_dir_all(n.p("/dev")).unwrap();
    let dev = n.p("/dev/vda1");
    std::fs::File::create(&dev)
        .unwrap()
        .set_len(131072 * 512)
        .unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .arg(&dev)
        .output();
    if !matches!(mkfs, Ok(ref o) if o.status.success()) {
        println!("mkfs.ext4 not usable here: skipping");
        return;
    }
    n.run_ok(&[]);
    let calls = n.stub_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("growpart") || c.starts_with("resize2fs")),
        "{calls:?}"
    );
    let log = n.log();
    assert!(log.contains("growpart not run"), "{log}");
    assert!(log.contains("already fills the device"), "{log}");
    assert!(n.status()["warnings"].as_array().unwrap().is_empty());
}
