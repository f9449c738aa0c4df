//! A real cluster in the production topology, end to end, offline (issue 24; docs/e2e.md):
//!
//! 1. Kubernetes v1.34.1 and its node parts, flannel, kube-proxy and CoreDNS, all built from Go
//!    modules (tests/kube/build.sh --node, tests/kube/addons.sh); the node image built by
//!    `imgbuild debian-k8s` through cloudsim's real QEMU VMs, shared with the other loops.
//! 2. A real kubeadm control plane as host processes, allocating node pod CIDRs.
//! 3. One VLAN in the emulator's account: a real L2 segment between the VMs (cloudsim's switch)
//!    with no DHCP, as on CloudSigma; its address pool in the VLAN's meta (issue 22,
//!    docs/vlan-pools.md). `E2E_VLAN_ADDRESSES=dhcp` runs a stand-in DHCP server instead (an
//!    operator's, as in the deployment report).
//! 4. The cloudsigma-controller outside the cluster; kube-proxy and CoreDNS through kubeadm's
//!    addon phase, flannel (host-gw, `--iface=$(POD_IP)`) with `kubectl apply`.
//! 5. Two workers created at once, as a MachineDeployment of 2 creates them: a public NAT NIC and
//!    a VLAN NIC each, one Cluster API join template. The controller assigns each VLAN NIC an
//!    address from the pool into the server's meta; the agent configures it and joins with it as
//!    `--node-ip`; the controller makes it the InternalIP and the NAT address the
//!    ExternalIP; flannel routes pods over the VLAN, so Ready proves those addresses right.
//! 6. Pods on both nodes: pod → pod across nodes by pod IP, the Service's ClusterIP and DNS name
//!    from a pod with endpoints on both nodes, `kubectl logs` and `exec`.
//! 7. One server deleted: its Node goes, the other stays Ready with its pod. Then everything is
//!    deleted and nothing is left behind.
//!
//! `scripts/demo` runs this test with its progress output; `scripts/demo --keep` keeps the
//! cluster up until `scripts/demo down` (E2E_KEEP).

use e2e::cluster::{self, VLAN_CIDR};
use e2e::harness::{self, say};
use e2e::kube_node::{self as kn, condition, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};

const WORKERS: [&str; 2] = ["e2e-worker-a", "e2e-worker-b"];

fn node(cp: &e2e::control_plane::ControlPlane, name: &str) -> Option<Value> {
    cp.kubectl(&["get", "node", name, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn pods(cp: &e2e::control_plane::ControlPlane) -> Vec<Value> {
    cp.kubectl(&[
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        "app=hello",
        "-o",
        "json",
    ])
    .ok()
    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
    .and_then(|v| v["items"].as_array().cloned())
    .unwrap_or_default()
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["podIP"].is_string()
        && p["metadata"]["deletionTimestamp"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster() {
    let t0 = Instant::now();
    let mut phases = test_support::Phases::new();
    if !harness::prereqs_or_skip("cluster") {
        return;
    }
    let repo = harness::repo();

    // 1. artifacts (Kubernetes, addons), the library image, the binaries; 2. the control plane,
    //    the emulator, the node image
    let prepared = kn::prepare(t0, &repo, true, &mut phases);
    let kn::Stage {
        cp,
        join,
        cloud,
        image,
    } = kn::stage(t0, &repo, &prepared, &mut phases).await;
    let api = &cloud.api;

    // 3. the VLAN; 4. the controller and the addons
    let p = Instant::now();
    let how = cluster::VlanAddresses::from_env();
    let vlan = cluster::vlan(&cloud, how).await;
    say(
        t0,
        &match how {
            cluster::VlanAddresses::Pool => format!(
                "VLAN {vlan}: one L2 segment, no DHCP; pool {VLAN_CIDR} {}-{} in its meta (the controller assigns)",
                cluster::VLAN_RANGE.0,
                cluster::VLAN_RANGE.1
            ),
            cluster::VlanAddresses::Dhcp => {
                format!("VLAN {vlan}: one L2 segment, DHCP {VLAN_CIDR} (no router option)")
            }
        },
    );
    let controller = kn::HostController::start(&cp, &repo, &prepared.bins.controller, &cloud.emu);
    tokio::task::block_in_place(|| cluster::install_addons(&cp, &repo));
    say(
        t0,
        "addons: kube-proxy and CoreDNS (kubeadm init phase addon), flannel (kubectl apply)",
    );
    phases.done("VLAN, controller, addons", p);

    // 5. two workers at once
    let p = Instant::now();
    let (_keydir, key, pubkey) = e2e::ssh::ssh_keypair();
    let data = cluster::worker_data(&join, &pubkey);
    let mut workers = cluster::create_workers(&cloud, &image, &WORKERS, &vlan, &data, &key).await;
    for (w, name) in workers.iter().zip(WORKERS) {
        say(
            t0,
            &format!("{name}: server {} running, NAT IP {}", w.server, w.ip),
        );
    }
    let cp_ref = &cp;
    let ctl = &controller;
    let diag = || {
        format!(
            "{}\n{}\n--- cloudsigma-controller\n{}\n--- pods\n{}",
            cp_ref.log_tail("kube-controller-manager", 15),
            cp_ref.log_tail("kube-apiserver", 10),
            ctl.log_tail(20),
            cp_ref
                .kubectl(&["get", "pods", "-A", "-o", "wide"])
                .unwrap_or_else(|e| e)
        )
    };
    for name in WORKERS {
        wait_for(
            &format!("Node {name} registered"),
            Duration::from_secs(900),
            || node(cp_ref, name),
            &diag,
        )
        .await;
    }
    phases.done("boot + agent + join (both)", p);
    say(t0, "both Nodes registered");

    // Ready: flannel's pod on each node runs only with the node's InternalIP as POD_IP, and
    // routes the other's pod CIDR over the VLAN.
    let p = Instant::now();
    let mut nodes = Vec::new();
    for name in WORKERS {
        nodes.push(
            wait_for(
                &format!("Node {name} initialized and Ready"),
                Duration::from_secs(600),
                || {
                    node(cp_ref, name).filter(|n| {
                        !kn::has_taint(n, kn::UNINITIALIZED) && condition(n, "Ready") == "True"
                    })
                },
                &diag,
            )
            .await,
        );
    }
    phases.done("registered -> initialized + Ready", p);
    let mut internal = Vec::new();
    for ((n, w), name) in nodes.iter().zip(&workers).zip(WORKERS) {
        let int = cluster::addresses(n, "InternalIP");
        let ext = cluster::addresses(n, "ExternalIP");
        assert_eq!(
            int.len(),
            1,
            "{name}: one InternalIP: {}",
            n["status"]["addresses"]
        );
        assert!(
            cluster::in_cidr(&int[0], VLAN_CIDR),
            "{name}: InternalIP {} is not its VLAN address ({VLAN_CIDR})",
            int[0]
        );
        assert_eq!(
            ext,
            vec![w.ip.clone()],
            "{name}: ExternalIP is the NAT address"
        );
        assert_eq!(
            n["spec"]["providerID"].as_str(),
            Some(format!("cloudsigma://{}", w.server).as_str())
        );
        assert!(n["spec"]["podCIDR"].is_string(), "{name}: no podCIDR");
        if how == cluster::VlanAddresses::Pool {
            // The address came from the pool: the controller's assignment in the server's meta,
            // configured by the agent (not DHCP: none runs on the VLAN).
            let assigned = cluster::assignment(&cloud, &w.server, &vlan).await;
            assert_eq!(
                assigned,
                Some(format!("{}/24", int[0])),
                "{name}: InternalIP is the controller's assignment in the server meta"
            );
            let status = w
                .ssh
                .run("sudo cat /run/cloudsigma/bootstrap.json")
                .unwrap_or_else(|e| panic!("{name}: bootstrap.json: {e}"));
            assert!(
                status.contains(r#""node_ip_source": "assignment""#)
                    || status.contains(r#""node_ip_source":"assignment""#),
                "{name}: the agent's node IP did not come from the assignment: {status}"
            );
        }
        internal.push(int[0].clone());
    }
    assert_ne!(internal[0], internal[1], "the two InternalIPs must differ");
    let wide = cp
        .kubectl(&["get", "nodes", "-o", "wide"])
        .unwrap_or_default();
    say(
        t0,
        &format!("both Nodes Ready, InternalIPs {internal:?}\n{wide}"),
    );

    // 6. the workload: one pod per node, a Service
    let p = Instant::now();
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || cp_ref.kubectl(&["get", "serviceaccount", "default"]).ok(),
        &diag,
    )
    .await;
    cp.kubectl_stdin(&["apply", "-f", "-"], &cluster::workload(2))
        .expect("applying the workload");
    let hello = wait_for(
        "two hello pods Running, one per node",
        Duration::from_secs(300),
        || {
            let ps: Vec<Value> = pods(cp_ref).into_iter().filter(running).collect();
            (ps.len() == 2 && ps[0]["spec"]["nodeName"] != ps[1]["spec"]["nodeName"]).then_some(ps)
        },
        &diag,
    )
    .await;
    phases.done("workload Running", p);
    let name_of = |p: &Value| {
        p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let ip_of = |p: &Value| {
        p["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (a, b) = (&hello[0], &hello[1]);

    // pod A -> pod B by pod IP, across the VLAN
    let p = Instant::now();
    let exec_get =
        |pod: &str, url: &str| cp_ref.kubectl(&["exec", pod, "--", "/hello", "get", url]);
    let cross = wait_for(
        "pod -> pod across nodes",
        Duration::from_secs(120),
        || exec_get(&name_of(a), &format!("http://{}:8080/", ip_of(b))).ok(),
        &diag,
    )
    .await;
    assert!(
        cross.contains(&name_of(b)),
        "pod {} answered {cross:?}, wanted {}",
        ip_of(b),
        name_of(b)
    );
    say(
        t0,
        &format!(
            "{} ({}) -> {} ({}) on the other node: {}",
            name_of(a),
            a["spec"]["nodeName"],
            name_of(b),
            ip_of(b),
            cross.trim()
        ),
    );

    // the Service: endpoints on both nodes; ClusterIP and DNS name answer from a pod, and over
    // a few requests both pods answer
    let slices = cp
        .kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=hello",
            "-o",
            "json",
        ])
        .unwrap_or_default();
    for w in WORKERS {
        assert!(
            slices.contains(w),
            "no endpoint of Service hello on {w}: {slices}"
        );
    }
    let cluster_ip = cp
        .kubectl(&[
            "get",
            "service",
            "hello",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("Service hello");
    for target in [
        format!("http://{cluster_ip}:8080/"),
        "http://hello.default.svc.cluster.local:8080/".to_string(),
        "http://hello:8080/".to_string(),
    ] {
        let mut seen = std::collections::BTreeSet::new();
        let got = wait_for(
            &format!("{target} answered by both pods"),
            Duration::from_secs(120),
            || {
                if let Ok(out) = exec_get(&name_of(a), &target) {
                    for p in [a, b] {
                        if out.contains(&name_of(p)) {
                            seen.insert(name_of(p));
                        }
                    }
                }
                (seen.len() == 2).then(|| seen.clone())
            },
            &diag,
        )
        .await;
        say(
            t0,
            &format!("{target} from {}: answered by {got:?}", name_of(a)),
        );
    }
    // apiserver -> kubelet, both nodes
    for pod in [a, b] {
        let logs = cp
            .kubectl(&["logs", &name_of(pod)])
            .unwrap_or_else(|e| panic!("kubectl logs {}: {e}", name_of(pod)));
        assert!(logs.contains("listening on :8080"), "pod log: {logs}");
    }
    phases.done("cross-node, Service, DNS, logs, exec", p);

    if std::env::var_os("E2E_KEEP").is_some() {
        keep(&cp, &cloud, &workers, &key).await;
    }

    // 7. one server deleted: its Node goes, the other stays Ready with its pod
    let p = Instant::now();
    let gone = workers.pop().expect("worker b");
    let (stays_name, gone_name) = (WORKERS[0], WORKERS[1]);
    let pod_on_stays = hello
        .iter()
        .find(|p| p["spec"]["nodeName"] == stays_name)
        .map(|p| p["metadata"]["uid"].clone())
        .expect("a pod on the staying node");
    api.power_off_and_delete(&gone.server, "stop", Duration::from_secs(120))
        .await;
    drop(gone);
    wait_for(
        &format!("Node {gone_name} deleted by cloudsigma-controller"),
        Duration::from_secs(180),
        || node(cp_ref, gone_name).is_none().then_some(()),
        &diag,
    )
    .await;
    phases.done("server deleted -> Node deleted", p);
    let n = node(cp_ref, stays_name).expect("the other Node");
    assert_eq!(condition(&n, "Ready"), "True", "{stays_name} stays Ready");
    assert!(
        pods(cp_ref)
            .iter()
            .any(|p| p["metadata"]["uid"] == pod_on_stays && running(p)),
        "the pod on {stays_name} keeps running"
    );
    say(
        t0,
        &format!("server of {gone_name} deleted: Node gone, {stays_name} Ready with its pod"),
    );

    // nothing left behind
    let p = Instant::now();
    let last = workers.pop().expect("worker a");
    api.power_off_and_delete(&last.server, "stop", Duration::from_secs(120))
        .await;
    drop(last);
    drop(controller);
    cloud.finish(&image).await;
    kn::stop_control_plane(cp);
    phases.done("teardown", p);

    eprint!("\n{}", phases.table("cluster (production topology)"));
    // boot_bench prints the demo's phases from here (issue 25 item 6) rather than run it again
    let commit = e2e::builds::checkout_commit(&repo);
    phases.record(
        "cluster (production topology)",
        "cluster",
        &format!("commit {commit}"),
    );
    eprintln!("\n$ kubectl get nodes -o wide   (both Ready)\n{wide}");
    eprintln!(
        "$ kubectl exec {} -- /hello get http://{}:8080/   (pod -> pod, across nodes)\n{}",
        name_of(a),
        ip_of(b),
        cross.trim()
    );
}

/// `scripts/demo --keep`: the cluster stays up and the test prints how to reach it, until
/// `scripts/demo down` creates the stop file (or the process is interrupted: then the emulator's
/// QEMU children die with it and the temp dirs stay, which the printed command removes).
async fn keep(
    cp: &e2e::control_plane::ControlPlane,
    cloud: &e2e::cloud::VmCloud,
    workers: &[e2e::cloud::BootedNode],
    key: &std::path::Path,
) {
    let dir = harness::cache_dir().join("demo");
    std::fs::create_dir_all(&dir).expect("demo dir");
    let stop = dir.join("teardown");
    let _ = std::fs::remove_file(&stop);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&cp.admin, &kubeconfig).expect("copying the kubeconfig");
    let mut msg = format!(
        "\n== the cluster is kept ==\n  kubectl --kubeconfig {} get nodes -o wide\n",
        kubeconfig.display()
    );
    for (w, name) in workers.iter().zip(WORKERS) {
        msg += &format!(
            "  ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null debian@{}   # {name}\n",
            key.display(),
            w.ip
        );
    }
    msg += &format!(
        "  emulator API: {} (user {}, password in {})\n  tear down:    scripts/demo down\n",
        cloud.emu.api_url(),
        cloud.emu.username(),
        dir.join("emulator-password").display()
    );
    write_private(&dir.join("emulator-password"), cloud.emu.password());
    eprintln!("{msg}");
    while !stop.exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = std::fs::remove_file(&stop);
    let _ = std::fs::remove_file(dir.join("emulator-password"));
    let _ = std::fs::remove_file(&kubeconfig);
    eprintln!("== tearing down ==");
}

/// A file only its owner reads (the emulator's password is a secret: never printed).
fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("writing the emulator password file");
    f.write_all(text.as_bytes())
        .expect("writing the emulator password file");
}
