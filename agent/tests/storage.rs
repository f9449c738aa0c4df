//! ntp, disk_setup, fs_setup and mounts as the Cluster API kubeadm provider renders a
//! KubeadmConfig's `ntp`, `diskSetup` and `mounts`, run by the real binary under --root with
//! storage tools stubbed on PATH (a fake disk whose state lives in the test's directory).

mod common;
use common::*;

fn pos(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
}

#[test]
fn kubeadm_init_with_etcd_disk_and_ntp() {
    let n = Node::new(data("kubeadm-init-disks.yaml").as_bytes());
    n.fake_disk("sdb");
    n.run_ok(&[]);
    assert_eq!(
        n.stub_calls(),
        vec![
            "blkid -p -o export /dev/sdb",
            "blockdev --getsize64 /dev/sdb",
            "sfdisk --wipe always /dev/sdb",
            "udevadm settle",
            "lsblk --pairs --paths --output NAME,TYPE,FSTYPE,LABEL /dev/sdb",
            "mkfs.ext4 -L etcd_disk -E lazy_itable_init=1,lazy_journal_init=1 /dev/sdb1",
            "udevadm settle",
            "systemctl daemon-reload",
            "mount -a",
            "systemctl enable systemd-timesyncd",
            "systemctl restart systemd-timesyncd",
            "kubeadm init --config /run/kubeadm/kubeadm.yaml",
        ]
    );
    // sfdisk got a GPT table with one Linux partition over the whole disk.
    assert_eq!(
        std::fs::read_to_string(n.dir.path().join("state/sfdisk.in")).unwrap(),
        "label: gpt\ntype=L\n"
    );
    // fstab: the image's lines kept, ours marked like cloud-init's, mount point created.
    assert_eq!(
        n.read("/etc/fstab"),
        "UUID=abcd / ext4 errors=remount-ro 0 1\n\
         #cloudsigma-agent: swap disabled for kubelet# /swap.img none swap sw 0 0\n\
         LABEL=etcd_disk\t/var/lib/etcddisk\tauto\tdefaults,nofail,comment=cloudconfig\t0\t2\n"
    );
    assert!(n.p("/var/lib/etcddisk").is_dir());
    assert_eq!(n.mode("/var/lib/etcddisk"), 0o755);
    // timesyncd drop-in.
    assert_eq!(
        n.read("/etc/systemd/timesyncd.conf.d/cloud-init.conf"),
        "# Written by cloudsigma-agent from the bootstrap data's ntp\n[Time]\nNTP=0.pool.ntp.org ntp1.example.net\n"
    );
    assert_eq!(
        n.mode("/etc/systemd/timesyncd.conf.d/cloud-init.conf"),
        0o644
    );

    let st = n.status();
    assert_eq!(st["result"], "success");
    assert_eq!(st["unsupported"], serde_json::json!([]));
    let names: Vec<String> = n.phases().into_iter().map(|(n, _)| n).collect();
    let at = |x: &str| names.iter().position(|n| n == x).unwrap();
    // cloud-init's order: write_files → disk_setup → (fs_setup) → mounts → hostname … ntp → runcmd.
    assert!(at("write_files") < at("disk_setup"));
    assert!(at("disk_setup") < at("fs_setup") && at("fs_setup") < at("mounts"));
    assert!(at("mounts") < at("hostname") && at("users") < at("ntp"));
    assert!(at("ntp") < at("runcmd"));
    for (name, result) in n.phases() {
        if ["disk_setup", "fs_setup", "mounts", "ntp"].contains(&name.as_str()) {
            assert_eq!(result, "ok", "{name}");
        }
    }
    for p in st["phases"].as_array().unwrap() {
        assert!(p["duration_ms"].is_u64());
    }
    // The command order across stages, from the stubs' log.
    let calls = n.stub_calls();
    assert!(pos(&calls, "sfdisk") < pos(&calls, "mkfs.ext4"));
    assert!(pos(&calls, "mkfs.ext4") < pos(&calls, "mount -a"));
    assert!(pos(&calls, "mount -a") < pos(&calls, "kubeadm init"));
    assert!(pos(&calls, "systemctl restart systemd-timesyncd") < pos(&calls, "kubeadm init"));
    n.assert_no_secrets(&["abcdef.0123456789abcdef"]);
    assert!(n.marker());

    // A forced second run finds the table and the filesystem: nothing is partitioned or
    // formatted again, fstab is unchanged.
    let first = calls.len();
    let fstab = n.read("/etc/fstab");
    let out = n.run(&["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    let again = n.stub_calls()[first..].to_vec();
    assert_eq!(
        again,
        vec![
            "blkid -p -o export /dev/sdb",
            "lsblk --pairs --paths --output NAME,TYPE,FSTYPE,LABEL /dev/sdb",
            "mount -a",
            "systemctl enable systemd-timesyncd",
            "systemctl restart systemd-timesyncd",
            "kubeadm init --config /run/kubeadm/kubeadm.yaml",
        ]
    );
    assert_eq!(n.read("/etc/fstab"), fstab);
    assert!(n
        .log()
        .contains("/dev/sdb1 already has a ext4 filesystem: kept"));
}

#[test]
fn existing_filesystem_is_never_formatted() {
    // A reused disk: partitioned and formatted before this instance existed.
    let n = Node::new(data("kubeadm-init-disks.yaml").as_bytes());
    n.fake_disk("sdb");
    std::fs::write(n.p("/dev/sdb1"), "").unwrap();
    let state = n.dir.path().join("state");
    std::fs::write(state.join("_dev_sdb"), "PTTYPE=gpt\n").unwrap();
    std::fs::write(state.join("_dev_sdb1"), "TYPE=ext4\nLABEL=old\n").unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    let calls = n.stub_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("mkfs") || c.starts_with("sfdisk")),
        "{calls:#?}"
    );

    // partition: 1 names it explicitly: another filesystem there is an error, not a format.
    let data = data("kubeadm-init-disks.yaml").replace(
        "    device: /dev/sdb\n",
        "    device: /dev/sdb\n    partition: 1\n",
    );
    let n = Node::new(data.as_bytes());
    n.fake_disk("sdb");
    std::fs::write(n.p("/dev/sdb1"), "").unwrap();
    let state = n.dir.path().join("state");
    std::fs::write(state.join("_dev_sdb"), "PTTYPE=gpt\n").unwrap();
    std::fs::write(state.join("_dev_sdb1"), "TYPE=xfs\n").unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", n.log());
    let st = n.status();
    assert_eq!(st["error"]["step"], "fs_setup");
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("/dev/sdb1 already has a xfs filesystem")
            && msg.contains("overwrite is false"),
        "{msg}"
    );
    assert!(!n.stub_calls().iter().any(|c| c.starts_with("mkfs")));
    assert!(!n.marker());
}

#[test]
fn chrony_is_preferred_when_present() {
    let n = Node::new(b"#cloud-config\nntp:\n  servers:\n    - 10.0.0.1\n  pools:\n    - pool.example.org\nruncmd:\n  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n");
    std::fs::create_dir_all(n.p("/etc/chrony")).unwrap();
    std::fs::write(
        n.p("/etc/chrony/chrony.conf"),
        "pool 2.debian.pool.ntp.org iburst\n",
    )
    .unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(
        n.read("/etc/chrony/sources.d/cloudsigma-agent.sources"),
        "# Written by cloudsigma-agent from the bootstrap data's ntp\nserver 10.0.0.1 iburst\npool pool.example.org iburst\n"
    );
    assert!(n
        .read("/etc/chrony/chrony.conf")
        .ends_with("\nsourcedir /etc/chrony/sources.d\n"));
    assert!(!n.p("/etc/systemd/timesyncd.conf.d").exists());
    assert_eq!(
        n.stub_calls(),
        vec!["systemctl enable chrony", "systemctl restart chrony"]
    );
    // Idempotent: the sourcedir line is not added twice.
    let conf = n.read("/etc/chrony/chrony.conf");
    assert_eq!(n.run(&["--force"]).status.code(), Some(0), "{}", n.log());
    assert_eq!(n.read("/etc/chrony/chrony.conf"), conf);
}

#[test]
fn ntp_disabled_and_mount_entries_replaced() {
    let n = Node::new(b"#cloud-config\nntp:\n  enabled: false\n  servers: [a.example]\nmounts:\n  - [/dev/sdc1, /data, ext4, 'defaults,noatime', '0', '0']\n  - [/dev/sda1, /boot]\nruncmd:\n  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n");
    std::fs::write(
        n.p("/etc/fstab"),
        "UUID=abcd / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\nLABEL=gone\t/gone\tauto\tdefaults,nofail,comment=cloudconfig\t0\t2\n",
    )
    .unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(
        n.read("/etc/fstab"),
        "UUID=abcd / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n/dev/sdc1\t/data\text4\tdefaults,noatime,comment=cloudconfig\t0\t0\n"
    );
    assert_eq!(n.stub_calls(), vec!["systemctl daemon-reload", "mount -a"]);
    let phases = n.phases();
    assert!(phases.contains(&("ntp".to_string(), "skipped".to_string())));
    assert!(n.status()["warnings"]
        .to_string()
        .contains("/dev/sda1 is already in /etc/fstab"));
}

#[test]
fn ntp_without_a_time_client_fails_the_step() {
    let n = Node::new(b"#cloud-config\nntp: {servers: [a.example]}\nruncmd: [kubeadm join]\n");
    std::fs::remove_file(n.p("/etc/systemd/timesyncd.conf")).unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let st = n.status();
    assert_eq!(st["error"]["step"], "ntp");
    assert!(st["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no supported time client"));
    assert!(n.stub_calls().is_empty(), "runcmd did not run");
}
