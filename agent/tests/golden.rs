//! Golden tests: real bootstrap data as the Cluster API kubeadm (join, init) and RKE2 providers
//! emit it, run by the real binary under --root with stub commands on PATH.

mod common;
use common::*;

#[test]
fn kubeadm_join_worker() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let out = n.run_ok(&[]);

    // Files: rendered, with modes.
    let cfg = n.read("/run/kubeadm/kubeadm-join-config.yaml");
    assert!(
        cfg.contains(&format!("provider-id: cloudsigma://{UUID}")),
        "{cfg}"
    );
    assert!(cfg.contains("name: 'worker-0'"), "{cfg}");
    assert!(!cfg.contains("{{"), "fully rendered");
    assert_eq!(n.mode("/run/kubeadm/kubeadm-join-config.yaml"), 0o640);
    assert_eq!(n.mode("/run/cluster-api/placeholder"), 0o640);

    // Commands in cloud-init order: bootcmd, then runcmd lines in order.
    assert_eq!(
        n.stub_calls(),
        vec![
            "systemctl daemon-reload",
            "systemctl restart containerd",
            "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml",
            "systemctl is-active kubelet",
        ]
    );
    // runcmd script built like cloud-init's shellify.
    let script = n.read("/var/lib/cloudsigma-agent/scripts/runcmd");
    assert!(
        script.starts_with("#!/bin/sh\nsystemctl restart containerd\nkubeadm join"),
        "{script}"
    );
    let boot = n.read("/var/lib/cloudsigma-agent/scripts/bootcmd");
    assert!(
        boot.contains(&format!("echo boot {UUID}")),
        "bootcmd rendered too: {boot}"
    );
    assert!(boot.contains("\n'systemctl' 'daemon-reload'\n"), "{boot}");

    // Node prep.
    assert_eq!(n.read("/etc/hostname"), "worker-0\n");
    assert!(n
        .read("/etc/fstab")
        .contains("#cloudsigma-agent: swap disabled for kubelet# /swap.img"));
    assert_eq!(
        n.read("/etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-ip=10.10.0.5\n"
    );

    // SSH keys from meta.ssh_public_key for the login user (uid 1000) and, as cloud-init's
    // disable_root (the default) writes them, for root behind the "login as debian" command.
    assert_eq!(
        n.read("/root/.ssh/authorized_keys"),
        format!("{} ssh-ed25519 AAAAC3 test\n", disabled_root("debian"))
    );
    assert_eq!(
        n.read("/home/debian/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3 test\n"
    );
    assert_eq!(n.mode("/root/.ssh/authorized_keys"), 0o600);
    assert_eq!(n.mode("/home/debian/.ssh"), 0o700);

    // Success.
    assert!(n.marker());
    assert!(n
        .p(&format!("/var/lib/cloudsigma-agent/instance-{UUID}.done"))
        .exists());
    let st = n.status();
    assert_eq!(st["result"], "success");
    assert_eq!(st["instance_id"], UUID);
    assert_eq!(st["hostname"], "worker-0");
    assert_eq!(st["node_ip"], "10.10.0.5");
    assert_eq!(st["marker_present"], true);
    assert!(st["error"].is_null());
    assert_eq!(st["user_data_kind"], "cloud-config");
    let names: Vec<String> = n.phases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "growpart",
            "context",
            "userdata",
            "userdata_format",
            "template",
            "cloudconfig",
            // the data has a bootcmd: cloud-init runs it after the network is up
            "online",
            "bootcmd",
            "write_files",
            "disk_setup",
            "fs_setup",
            "mounts",
            "hostname",
            "users",
            "ssh_keys",
            "swap",
            "ntp",
            "packages",
            "write_files_deferred",
            "node_ip",
            "runcmd",
            "marker",
            "done_stamp"
        ]
    );
    let ifs = st["interfaces"].as_array().unwrap();
    let class = |name: &str| {
        ifs.iter().find(|i| i["name"] == name).unwrap()["class"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(class("ens3"), "public");
    assert_eq!(class("ens4"), "private");
    assert_eq!(class("lo"), "loopback");
    for p in st["phases"].as_array().unwrap() {
        assert!(p["start_ms"].is_u64() && p["duration_ms"].is_u64());
    }

    // Secrets: no token, no CA hash, no file content in log or status.
    n.assert_no_secrets(&[
        "abcdef.0123456789abcdef",
        "5b5ea6b2e6c4",
        "apiServerEndpoint",
        "vncsecret",
    ]);
    assert!(
        n.log()
            .contains("wrote /run/kubeadm/kubeadm-join-config.yaml ("),
        "paths and sizes are logged"
    );
    assert!(
        stderr(&out).contains("SUCCESS"),
        "summary line: {}",
        stderr(&out)
    );
}

#[test]
fn kubeadm_join_is_idempotent_and_force_reruns() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    assert_eq!(n.run(&[]).status.code(), Some(0));
    let first = n.stub_calls().len();
    // Reboot: /run is a tmpfs, the marker is gone.
    std::fs::remove_file(n.p("/run/cluster-api/bootstrap-success.complete")).unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    let calls = n.stub_calls();
    assert_eq!(
        calls[first..],
        ["systemctl daemon-reload"],
        "only bootcmd runs again"
    );
    assert_eq!(n.status()["result"], "skipped");
    assert!(n.marker(), "marker restored from the done-stamp");
    // --force runs everything again.
    let out = n.run(&["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(
        n.stub_calls()
            .iter()
            .filter(|c| c.starts_with("kubeadm join"))
            .count(),
        2
    );
    assert_eq!(n.status()["result"], "success");
}

#[test]
fn kubeadm_init_control_plane() {
    let n = Node::new(data("kubeadm-init.yaml").as_bytes());
    n.run_ok(&[]);
    assert_eq!(n.mode("/etc/kubernetes/pki/ca.key"), 0o600);
    assert_eq!(n.mode("/etc/kubernetes/pki/ca.crt"), 0o640);
    assert_eq!(n.mode("/etc/kubernetes/pki/etcd/ca.crt"), 0o640);
    assert!(n
        .read("/etc/kubernetes/pki/ca.key")
        .starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    assert_eq!(
        n.read("/etc/kubernetes/pki/sa.key"),
        "-----BEGIN RSA PRIVATE KEY-----\nsa-key\n-----END RSA PRIVATE KEY-----\n"
    );
    assert_eq!(n.read("/etc/kubernetes/cloudsigma.conf"), "region: zrh\n");
    assert_eq!(n.read("/etc/kubernetes/manifests/late.yaml"), "kind: Pod\n");
    let kcfg = n.read("/run/kubeadm/kubeadm.yaml");
    assert!(kcfg.contains(&format!("provider-id: cloudsigma://{UUID}")));
    assert_eq!(
        n.stub_calls(),
        vec![
            "systemctl enable systemd-timesyncd",
            "systemctl restart systemd-timesyncd",
            "swapoff -a",
            "kubeadm init --config /run/kubeadm/kubeadm.yaml"
        ],
        "ntp before runcmd; agent's own swapoff is not run under a test root; the data's is"
    );
    let st = n.status();
    assert_eq!(st["result"], "success");
    assert_eq!(st["unsupported"], serde_json::json!([]));
    assert_eq!(
        n.read("/etc/systemd/timesyncd.conf.d/cloud-init.conf"),
        "# Written by cloudsigma-agent from the bootstrap data's ntp\n[Time]\nNTP=0.pool.ntp.org\n"
    );
    let log = n.log();
    assert!(
        log.contains("user capi does not exist under the test root"),
        "{log}"
    );
    // Deferred files are written after the others, just before runcmd.
    let names: Vec<String> = n.phases().into_iter().map(|(n, _)| n).collect();
    let pos = |x: &str| names.iter().position(|n| n == x).unwrap();
    assert!(
        pos("write_files") < pos("write_files_deferred")
            && pos("write_files_deferred") < pos("runcmd")
    );
    n.assert_no_secrets(&[
        "secretsecret",
        "MIIC6jCC",
        "abcdef.0123456789abcdef",
        "sa-key",
    ]);
    // Top-level ssh_authorized_keys join meta.ssh_public_key; `users` itself is not implemented.
    let keys = n.read("/home/debian/.ssh/authorized_keys");
    assert_eq!(
        keys,
        "ssh-ed25519 AAAAC3 test\nssh-ed25519 AAAAC3Nza capi@example\n"
    );
    let p = disabled_root("debian");
    assert_eq!(
        n.read("/root/.ssh/authorized_keys"),
        format!("{p} ssh-ed25519 AAAAC3 test\n{p} ssh-ed25519 AAAAC3Nza capi@example\n")
    );
}

/// cloud-init's DISABLE_USER_OPTS (cloudinit/ssh_util.py) for `user`, written out by hand so
/// that a change of the agent's constant shows here.
fn disabled_root(user: &str) -> String {
    format!(
        "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"{user}\\\" rather than the user \\\"root\\\".';echo;sleep 10;exit 142\""
    )
}

#[test]
fn rke2_agent() {
    let n = Node::new(data("rke2-agent.yaml").as_bytes());
    n.run_ok(&[]);
    let cfg = n.read("/etc/rancher/rke2/config.yaml");
    assert!(
        cfg.contains(&format!("- provider-id=cloudsigma://{UUID}\n")),
        "{cfg}"
    );
    assert!(cfg.contains("node-name: worker-0\n"), "{cfg}");
    assert_eq!(n.mode("/etc/rancher/rke2/config.yaml"), 0o640);
    assert_eq!(
        n.mode("/etc/rancher/rke2/registries.yaml"),
        0o644,
        "default mode"
    );
    assert_eq!(
        n.stub_calls(),
        vec![
            "curl -sfL https://get.rke2.io",
            "systemctl enable rke2-agent.service",
            "systemctl start rke2-agent.service"
        ]
    );
    assert!(n.marker());
    assert_eq!(n.status()["result"], "success");
    n.assert_no_secrets(&["K10secret", "secretsecret"]);
}

#[test]
fn plain_cloud_config_without_base64_and_shell_script() {
    // Not listed in base64_fields: taken as is.
    let mut ctx = context_json("");
    ctx["meta"]["cloudinit-user-data"] =
        serde_json::json!("#cloud-config\nruncmd:\n - [kubeadm, version, \"it's\"]\n - echo success > /run/cluster-api/bootstrap-success.complete\n");
    ctx["meta"]["base64_fields"] = serde_json::json!("");
    let n = Node::with_context(ctx);
    std::fs::create_dir_all(n.p("/run/cluster-api")).unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(n.stub_calls(), vec!["kubeadm version it's"]);

    // A #! script is run as the user script.
    let n = Node::new(b"#!/bin/sh\nkubeadm reset -f\nmkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n");
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(n.stub_calls(), vec!["kubeadm reset -f"]);
    assert_eq!(n.status()["user_data_kind"], "script");
}

#[test]
fn users_sudo_and_keys_for_existing_user() {
    let n = Node::new(
        b"#cloud-config\nusers:\n  - name: debian\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    passwd: $6$hash\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAAuser debian@x\n  - default\n",
    );
    let out = n.run(&[]);
    // No runcmd and thus no marker: the data does not bootstrap anything.
    assert_eq!(out.status.code(), Some(1), "{}", n.log());
    assert_eq!(n.status()["error"]["step"], "marker");
    assert_eq!(
        n.read("/etc/sudoers.d/90-cloudsigma-agent-users"),
        "# Written by cloudsigma-agent from the bootstrap data's users\ndebian ALL=(ALL) NOPASSWD:ALL\n"
    );
    assert_eq!(n.mode("/etc/sudoers.d/90-cloudsigma-agent-users"), 0o440);
    let keys = n.read("/home/debian/.ssh/authorized_keys");
    assert!(
        keys.contains("ssh-ed25519 AAAAuser debian@x\n")
            && keys.contains("ssh-ed25519 AAAAC3 test\n"),
        "{keys}"
    );
    let st = n.status();
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains("user debian exists: passwd/inactive not changed"),
        "{warnings}"
    );
    assert!(!warnings.contains("$6$hash"), "no secret in warnings");
    n.assert_no_secrets(&["$6$hash"]);
}
