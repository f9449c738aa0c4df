//! The whole loop in real VMs (issue 6): cloudsim with the QEMU backend and the local Debian
//! library image → the real `imgbuild debian-test-node` (real SSH into the real VM) → a node
//! server from that image with Cluster API kubeadm-join bootstrap data → it boots, the agent runs
//! from systemd → assertions over SSH → shutdown (ACPI) and delete → zero resources left.
//!
//! Needs root (debootstrap), qemu-system-x86_64, qemu-img, ssh, ssh-keygen. When one is missing
//! the test fails, or is skipped with a message when CLOUDSIGMA_K8S_ALLOW_SKIP=1.
//! `scripts/demo` runs this test with its progress output (`--nocapture`).

use e2e::cloud::NodeSpec;
use e2e::harness::{self, say};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Cluster API kubeadm bootstrap data for a worker (the stub only records the join: placeholder
/// credentials).
fn bootstrap_data(pubkey: &str) -> String {
    e2e::bootstrap_data::stub_worker_data(pubkey)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_loop() {
    let t0 = Instant::now();
    let mut phases = test_support::Phases::new();
    if !harness::prereqs_or_skip("whole_loop") {
        return;
    }
    let repo = harness::repo();

    // 1. library image (cached by build.sh)
    let p = Instant::now();
    let img_dir = e2e::builds::library_image(t0, &repo);
    phases.done("library image", p);

    // 2. binaries: the static agent (what the recipe uploads) and imgbuild
    let p = Instant::now();
    say(
        t0,
        "binaries: static cloudsigma-agent (release) and imgbuild",
    );
    let bins = e2e::builds::build_binaries(&repo, false);
    phases.done("binaries", p);

    // 3. emulator with the QEMU backend, in process
    let cloud = e2e::cloud::VmCloud::start(t0, &img_dir).await;
    let (data, api) = (&cloud.data, &cloud.api);

    // 4. imgbuild: the real build, real SSH into the real VM
    let p = Instant::now();
    say(
        t0,
        "imgbuild debian-test-node (boots the library image, provisions over SSH)",
    );
    let image = e2e::image_cache::test_node_image(&cloud, &bins, &repo, true).await;
    phases.done("imgbuild", p);
    say(t0, &format!("image {image} built"));

    // 5. the node: clone the image, boot it with Cluster API bootstrap data
    let p = Instant::now();
    let (_keydir, key, pubkey) = e2e::ssh::ssh_keypair();
    let spec = NodeSpec {
        name: "e2e-node-1",
        cpu_mhz: 2000,
        mem: 1 << 30,
        user_data: bootstrap_data(&pubkey),
        extra: Vec::new(),
    };
    let mut booted = cloud.boot_node(&image, spec, &key).await;
    let (server, ip, ssh) = (booted.server.clone(), booted.ip.clone(), booted.ssh.clone());
    say(
        t0,
        &format!("node {server} started, NAT IP {ip}; waiting for the agent's marker"),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match ssh.run("test -e /run/cluster-api/bootstrap-success.complete && echo MARKER; sudo test -s /run/cloudsigma/bootstrap.json && echo STATUS") {
            Ok(o) if o.contains("MARKER") => break,
            Ok(o) if o.contains("STATUS") => {
                // the status file exists but no marker: give the agent a moment, then fail
                tokio::time::sleep(Duration::from_secs(3)).await;
                if ssh.run("test -e /run/cluster-api/bootstrap-success.complete").is_ok() {
                    break;
                }
                panic!("agent finished without the success marker");
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "node did not bootstrap within 10 min"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    phases.done("node boot + bootstrap", p);
    say(t0, "marker present; checking what the agent did");

    // 6. assertions
    let hostname = ssh.run("hostname").expect("hostname");
    assert_eq!(
        hostname.trim(),
        "e2e-node-1",
        "hostname from the context name"
    );
    let swaps = ssh.run("tail -n +2 /proc/swaps").expect("/proc/swaps");
    assert!(swaps.trim().is_empty(), "swap still on: {swaps}");
    let stub = ssh
        .run("sudo cat /var/log/kubeadm-stub.log")
        .expect("stub log");
    assert!(
        stub.contains("argv: join --config /run/kubeadm/kubeadm-join-config.yaml"),
        "kubeadm join not called as expected:\n{stub}"
    );
    assert!(
        stub.contains(&format!("cloudsigma://{server}")),
        "rendered config lacks the provider id:\n{stub}"
    );
    assert!(
        stub.contains("name: 'e2e-node-1'") || stub.contains("name: e2e-node-1"),
        "rendered config lacks the node name:\n{stub}"
    );
    assert!(
        !stub.contains("{{"),
        "unrendered template in the config:\n{stub}"
    );
    assert_eq!(
        stub.matches("=== kubeadm stub").count(),
        1,
        "kubeadm called more than once:\n{stub}"
    );
    let status: Value = serde_json::from_str(
        &ssh.run("sudo cat /run/cloudsigma/bootstrap.json")
            .expect("status"),
    )
    .expect("status file is JSON");
    let st = status.to_string();
    assert!(
        st.contains(&ip) || st.contains("10.0.2.15"),
        "status file lacks the node's addresses: {status}"
    );
    let ci = ssh
        .run("test -e /etc/cloud/cloud-init.disabled && echo DISABLED; test -e /run/cloud-init/result.json && echo RAN; systemctl is-active cloud-init.service cloud-config.service cloud-final.service || true")
        .expect("cloud-init check");
    assert!(ci.contains("DISABLED"), "cloud-init not disabled: {ci}");
    assert!(
        !ci.contains("RAN") && !ci.lines().any(|l| l.trim() == "active"),
        "cloud-init ran: {ci}"
    );
    // agent time: unit start (journal, monotonic) → kubeadm exec (stub records /proc/uptime)
    let started = e2e::ssh::journal_uptime(&ssh, "cloudsigma-bootstrap.service", "Starting");
    let exec_at = stub
        .lines()
        .find_map(|l| l.split("uptime=").nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let agent_ms = match (started, exec_at) {
        (Some(s), Some(e)) => Some(((e - s) * 1000.0).round()),
        _ => None,
    };
    let boot_done = ssh.run("cut -d' ' -f1 /proc/uptime").unwrap_or_default();
    say(t0, &format!("agent: unit start -> kubeadm exec = {} ms (unit start at {}s, kubeadm at {:?}s of guest uptime); guest uptime now {}s",
        agent_ms.map(|m| m.to_string()).unwrap_or_else(|| "?".into()), started.unwrap_or(f64::NAN), exec_at, boot_done.trim()));

    // 7. shutdown (ACPI) and delete: zero resources left
    let p = Instant::now();
    booted.report.ssh = None;
    api.power_off_and_delete(&server, "shutdown", Duration::from_secs(180))
        .await;
    assert!(
        !data.path().join("vm/servers").join(&server).exists(),
        "server dir left"
    );
    // the image, imgbuild's tags (imgbuild, k8s-node, e2e-test): account resources too
    cloud.finish(&image).await;
    phases.done("shutdown + delete + nothing left", p);
    drop(booted);

    eprint!("\n{}", phases.table("whole loop"));
    if let Some(ms) = agent_ms {
        eprintln!("  agent unit start -> kubeadm exec: {ms} ms");
    }
}
