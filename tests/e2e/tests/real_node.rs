//! A real Kubernetes node, end to end, offline (issue 14; docs/e2e.md):
//!
//! 1. Kubernetes v1.34.1, containerd 1.7.28, crictl and the CNI plugins built from Go modules
//!    (tests/kube/build.sh --node), the pause and test images as OCI archives (tests/kube/images.sh).
//! 2. A real kubeadm control plane as host processes (e2e::control_plane): etcd, kube-apiserver,
//!    kube-controller-manager, kube-scheduler; a real bootstrap token and CA pin.
//! 3. cloudsim boots real QEMU VMs; `imgbuild debian-k8s` (the product recipe ubuntu-k8s on
//!    Debian 12 with the `local` artifact source) builds the node image through it over SSH.
//! 4. A node server boots from that image with CABPK-shaped join data; the agent runs the real
//!    `kubeadm join`; the kubelet registers with the `uninitialized` taint.
//! 5. The real cloudsigma-controller (a host process with the kustomize ServiceAccount's token)
//!    initializes the Node from the emulator's API: providerID, addresses, labels, taint gone.
//! 6. A bridge + host-local CNI config (written by the join data) makes it Ready; a Pod from the
//!    local test image runs and answers HTTP from inside the node; `kubectl logs` reaches the
//!    kubelet through the NAT address.
//! 7. The server is deleted through the API; the controller deletes the Node; everything is
//!    cleaned up: no server, drive, VM or control-plane process is left.
//!
//! `scripts/demo` runs this test with its progress output.

use e2e::harness::{self, say};
use e2e::kube_node::{self as kn, condition, wait_for, NODE};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The test Pod: the local image (never pulled), one HTTP port.
const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hello","namespace":"default"},
"spec":{"containers":[{"name":"hello","image":"cloudsigma-k8s.test/hello:v1","imagePullPolicy":"Never",
"ports":[{"containerPort":8080}]}],"terminationGracePeriodSeconds":5}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_node() {
    let t0 = Instant::now();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    if !harness::prereqs_or_skip("real_node") {
        return;
    }
    let repo = harness::repo();

    // 1. artifacts: Kubernetes, containerd, crictl, CNI plugins, runc; the two images; the
    //    library image; the binaries
    let prepared = kn::prepare(t0, &repo, true, &mut phases);
    let bins = &prepared.bins;

    // 2. the control plane; 3. the emulator with the QEMU backend, in process; 4. imgbuild:
    //    the product recipe's scripts, local artifacts, on the Debian library image
    let kn::Stage {
        cp,
        join,
        cloud,
        image,
    } = kn::stage(t0, &repo, &prepared, &mut phases).await;
    let (emu, api) = (&cloud.emu, &cloud.api);

    // 5. the controller, as an operator would run it outside the cluster
    let controller = kn::HostController::start(&cp, &repo, &bins.controller, emu);
    let controller_log = controller.log.clone();

    // 6. the node: clone the image, boot it with the join data
    let p = Instant::now();
    let (_keydir, key, pubkey) = harness::ssh_keypair();
    let mut booted = kn::boot(&cloud, &image, &join, &key, &pubkey).await;
    let (server, ip, ssh) = (booted.server.clone(), booted.ip.clone(), booted.ssh.clone());
    let node_started = booted.started;
    say(
        t0,
        &format!("node {server} started, NAT IP {ip}; waiting for the kubelet to register"),
    );
    let cp_ref = &cp;
    let diag = || {
        format!(
            "{}\n{}\n{}",
            cp_ref.log_tail("kube-controller-manager", 15),
            cp_ref.log_tail("kube-apiserver", 15),
            std::fs::read_to_string(&controller_log)
                .map(|l| l.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default()
        )
    };

    // 7. registered, with the uninitialized taint (unless the controller was faster than us);
    // 8. initialized by the controller
    let (node, tainted_at_registration, registered_at, initialized) =
        kn::registered_then_initialized(cp_ref, &diag).await;
    phases.push(("boot + agent + join", registered_at.duration_since(p)));
    phases.push(("registered -> initialized", initialized));
    say(t0, &format!("Node {NODE} registered (uninitialized taint at first sight: {tainted_at_registration})"));
    kn::assert_initialized(&node, &server, &ip, &ssh);
    say(
        t0,
        &format!(
            "Node initialized: providerID {}, addresses {}",
            node["spec"]["providerID"], node["status"]["addresses"]
        ),
    );

    // 9. Ready
    let p = Instant::now();
    wait_for(
        "Node Ready",
        Duration::from_secs(300),
        || kn::node_json(cp_ref).filter(|n| condition(n, "Ready") == "True"),
        &diag,
    )
    .await;
    phases.push(("initialized -> Ready", p.elapsed()));
    let wide = cp
        .kubectl(&["get", "nodes", "-o", "wide"])
        .unwrap_or_default();
    let provider_col = cp
        .kubectl(&["get", "nodes", "-o", "custom-columns=NAME:.metadata.name,PROVIDER-ID:.spec.providerID,ADDRESSES:.status.addresses[*].address"])
        .unwrap_or_default();
    say(t0, "Node Ready");

    // 10. a Pod from the local image, answering from inside the node
    let p = Instant::now();
    wait_for(
        "the default ServiceAccount (kube-controller-manager)",
        Duration::from_secs(60),
        || {
            cp_ref
                .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .ok()
        },
        &diag,
    )
    .await;
    cp.kubectl_stdin(&["apply", "-f", "-"], POD)
        .expect("creating the Pod");
    let pod = wait_for(
        "Pod Running",
        Duration::from_secs(300),
        || {
            cp_ref
                .kubectl(&["get", "pod", "hello", "-n", "default", "-o", "json"])
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        },
        || {
            format!(
                "{}\n{}",
                cp_ref
                    .kubectl(&["describe", "pod", "hello"])
                    .unwrap_or_else(|e| e),
                diag()
            )
        },
    )
    .await;
    phases.push(("Pod Running", p.elapsed()));
    assert_eq!(pod["spec"]["nodeName"], NODE, "scheduled elsewhere?");
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let answer = ssh
        .run_retrying(
            &format!("curl -sS --max-time 10 http://{pod_ip}:8080/"),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| {
            panic!("the Pod's HTTP endpoint did not answer from inside the node: {e}")
        });
    assert_eq!(answer.trim(), "hello from pod hello", "the Pod's answer");
    // apiserver -> kubelet on the Node's address (the NAT IP's forwarded 10250)
    let logs = cp
        .kubectl(&["logs", "hello", "-n", "default"])
        .unwrap_or_else(|e| panic!("kubectl logs (apiserver -> kubelet at {ip}:10250): {e}"));
    assert!(logs.contains("listening on :8080"), "pod log: {logs}");
    say(
        t0,
        &format!(
            "Pod hello Running at {pod_ip}; it answered: {}",
            answer.trim()
        ),
    );

    // guest-side figures (uptime stamps): boot -> agent start -> kubeadm join exec -> done
    let guest = kn::guest_times(&ssh);
    booted.report.ssh = None;

    // 11. the server goes away through the API; the controller deletes the Node
    let p = Instant::now();
    api.power_off_and_delete(&server, "stop", Duration::from_secs(120))
        .await;
    wait_for(
        "Node deleted by cloudsigma-controller",
        Duration::from_secs(180),
        || {
            cp_ref
                .kubectl(&["get", "node", NODE, "--ignore-not-found", "-o", "name"])
                .ok()
                .filter(|s| s.trim().is_empty())
        },
        &diag,
    )
    .await;
    phases.push(("server deleted -> Node deleted", p.elapsed()));
    say(t0, "server deleted; the controller deleted the Node");

    // 12. nothing left behind
    drop(controller);
    cloud.finish(&image).await;
    kn::stop_control_plane(cp);
    drop(booted);

    kn::print_phases("real node", t0, &phases);
    eprintln!(
        "  controller: Node seen -> initialized seen {:.2}s (100 ms polls; the taint was {} at first sight)",
        initialized.as_secs_f64(),
        if tainted_at_registration { "there" } else { "already gone" }
    );
    guest.print();
    eprintln!(
        "  host: server start -> Node registered {:>5.1}s",
        registered_at.duration_since(node_started).as_secs_f64()
    );
    eprintln!("\n$ kubectl get nodes -o wide   (at Ready)\n{wide}\n{provider_col}");
    eprintln!(
        "$ curl http://{pod_ip}:8080/   (from the node)\n{}",
        answer.trim()
    );
}
