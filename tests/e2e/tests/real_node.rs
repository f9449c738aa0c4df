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

use base64::Engine as _;
use e2e::control_plane::{free_port, ControlPlane, JoinCredentials};
use e2e::harness::{self, say, FailureReport, Ssh};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "e2e-node-1";
const UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";

/// The pod network of the one node: the bridge plugin with host-local addresses, as a
/// KubeadmConfig `files` entry would carry it.
const CNI_CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"e2e-bridge","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

/// The join data a CloudSigma worker gets: the real token and CA pin, the external cloud
/// provider, no --node-ip (the server has no private NIC, so the controller's addresses rule),
/// and the CNI config as a KubeadmConfig `files` entry.
fn bootstrap_data(join: &JoinCredentials, pubkey: &str) -> String {
    harness::cabpk_worker_data(
        &join.endpoint,
        &join.token,
        &join.ca_cert_hash,
        &[("cloud-provider", "external")],
        &[("/etc/cni/net.d/10-bridge.conflist", "0644", CNI_CONFLIST)],
        pubkey,
    )
}

/// The test Pod: the local image (never pulled), one HTTP port.
const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hello","namespace":"default"},
"spec":{"containers":[{"name":"hello","image":"cloudsigma-k8s.test/hello:v1","imagePullPolicy":"Never",
"ports":[{"containerPort":8080}]}],"terminationGracePeriodSeconds":5}}"#;

/// The controller as a host process, killed on drop.
struct Controller(Child);
impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_json(cp: &ControlPlane) -> Option<Value> {
    cp.kubectl(&["get", "node", NODE, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn has_taint(node: &Value, key: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .map(|ts| ts.iter().any(|t| t["key"] == key))
        .unwrap_or(false)
}

fn condition(node: &Value, kind: &str) -> String {
    node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout` with `what` and the
/// output of `diag`.
async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    diag: impl Fn() -> String,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = tokio::task::block_in_place(&mut f) {
            return v;
        }
        if t.elapsed() > timeout {
            panic!("{what}: not reached within {timeout:?}\n{}", diag());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_node() {
    let t0 = Instant::now();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    if !harness::prereqs_or_skip("real_node") {
        return;
    }
    let repo = harness::repo();
    let cache = harness::cache_dir();

    // 1. artifacts: Kubernetes, containerd, crictl, CNI plugins, runc; the two images
    let p = Instant::now();
    say(t0, "artifacts: tests/kube/build.sh --node and tests/kube/images.sh (cached after the first run)");
    harness::run(
        Command::new(repo.join("tests/kube/build.sh"))
            .arg("--node")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit()),
        "tests/kube/build.sh --node",
    );
    harness::run(
        Command::new(repo.join("tests/kube/images.sh"))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit()),
        "tests/kube/images.sh",
    );
    let kube_bin = cache.join("kube-bin");
    let artifacts = cache.join("node-artifacts");
    phases.push(("artifacts", p.elapsed()));

    let p = Instant::now();
    let img_dir = harness::library_image(t0, &repo);
    phases.push(("library image", p.elapsed()));

    let p = Instant::now();
    say(
        t0,
        "binaries: static cloudsigma-agent, imgbuild, cloudsigma-controller",
    );
    let bins = harness::build_binaries(&repo, true);
    phases.push(("binaries", p.elapsed()));

    // 2. the control plane
    let p = Instant::now();
    say(t0, "control plane: kubeadm init phases + etcd, kube-apiserver, kube-controller-manager, kube-scheduler as processes");
    let mut cp = tokio::task::block_in_place(|| {
        ControlPlane::start(&kube_bin, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("control plane: {e}"))
    });
    let join =
        tokio::task::block_in_place(|| cp.join_credentials()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        join.endpoint,
        format!("10.0.2.2:{}", cp.port),
        "join endpoint"
    );
    say(
        t0,
        &format!(
            "control plane up at 127.0.0.1:{} (10.0.2.2:{} from the guest); join token {}.…",
            cp.port,
            cp.port,
            join.token.split('.').next().unwrap_or("")
        ),
    );
    phases.push(("control plane", p.elapsed()));

    // 3. the emulator with the QEMU backend, in process
    let cloud = harness::VmCloud::start(t0, &img_dir).await;
    let (data, emu, api) = (&cloud.data, &cloud.emu, &cloud.api);

    // 4. imgbuild: the product recipe's scripts, local artifacts, on the Debian library image
    let p = Instant::now();
    say(
        t0,
        "imgbuild debian-k8s (ubuntu-k8s's scripts, kubernetes_source=local)",
    );
    let image = tokio::task::block_in_place(|| {
        harness::imgbuild(
            &bins.imgbuild,
            &repo,
            api,
            "image-recipes/debian-k8s",
            &[
                ("agent_binary", bins.agent.display().to_string()),
                ("artifacts_dir", artifacts.display().to_string()),
            ],
        )
    });
    phases.push(("imgbuild", p.elapsed()));
    say(t0, &format!("image {image} built"));

    // 5. the controller, as an operator would run it outside the cluster: the kustomize
    //    ServiceAccount and RBAC, a token of that ServiceAccount, the emulator's API
    let rendered = cp
        .kubectl(&[
            "kustomize",
            &repo.join("controller/config").display().to_string(),
        ])
        .expect("kubectl kustomize controller/config");
    // everything but the Deployment (its image needs a registry; issue 11 runs it in-cluster)
    let objects: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|d| !d.contains("\nkind: Deployment\n") && !d.starts_with("kind: Deployment\n"))
        .collect();
    cp.kubectl_stdin(&["apply", "-f", "-"], &objects.join("\n---\n"))
        .expect("applying the controller's ServiceAccount and RBAC");
    let token = cp
        .kubectl(&[
            "create",
            "token",
            "cloudsigma-controller",
            "-n",
            "cloudsigma-system",
            "--duration=2h",
        ])
        .expect("ServiceAccount token");
    let sa_kubeconfig = cp
        .kubeconfig_for_token("cloudsigma-controller", token.trim())
        .expect("kubeconfig");
    let metrics_port = free_port();
    let controller_log = cp.dir.path().join("cloudsigma-controller.log");
    let log = std::fs::File::create(&controller_log).expect("controller log");
    let _controller = Controller(
        Command::new(&bins.controller)
            .env("CLOUDSIGMA_API_URL", emu.api_url())
            .env("CLOUDSIGMA_USERNAME", emu.username())
            .env("CLOUDSIGMA_PASSWORD", emu.password())
            .arg("--kubeconfig")
            .arg(&sa_kubeconfig)
            .args([
                "--lease-namespace=cloudsigma-system",
                "--identity=e2e-host",
                // the lifecycle check's period: short, so that the deleted server's Node goes
                // within the test (the default is 30s)
                "--sync-period=5s",
                &format!("--metrics-bind=127.0.0.1:{metrics_port}"),
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting cloudsigma-controller"),
    );

    // 6. the node: clone the image, boot it with the join data
    let p = Instant::now();
    let (_keydir, key, pubkey) = harness::ssh_keypair();
    let clone = api.clone_drive(&image, "e2e-node-1-root").await;
    let user_data =
        base64::engine::general_purpose::STANDARD.encode(bootstrap_data(&join, &pubkey));
    let created = api
        .post(
            "servers/",
            json!({"objects": [{
                "name": NODE, "cpu": 4000, "mem": 2147483648u64, "smp": 2, "vnc_password": "e2e-vnc",
                "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": {"uuid": clone}}],
                "nics": [{"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"}],
                "meta": {"cloudinit-user-data": user_data, "base64_fields": "cloudinit-user-data"}
            }]}),
        )
        .await;
    let server = created["objects"][0]["uuid"]
        .as_str()
        .expect("server uuid")
        .to_string();
    let mut report = FailureReport {
        console: Some(cloud.console(&server)),
        ssh: None,
        extra: vec![
            "sudo journalctl -b -u kubelet --no-pager | tail -40".into(),
            "sudo journalctl -b -u containerd --no-pager | tail -20".into(),
            "sudo tail -60 /var/log/cloudsigma-bootstrap-output.log".into(),
        ],
    };
    api.post(&format!("servers/{server}/action/?do=start"), json!({}))
        .await;
    let node_started = Instant::now();
    let running = api
        .wait_status(
            &format!("servers/{server}/"),
            "running",
            Duration::from_secs(60),
        )
        .await;
    let ip = running["runtime"]["nics"][0]["ip_v4"]["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no runtime NAT IP: {running}"))
        .to_string();
    let ssh = Ssh {
        key: key.clone(),
        host: ip.clone(),
        user: "debian".into(),
    };
    report.ssh = Some(ssh.clone());
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

    // 7. registered, with the uninitialized taint (unless the controller was faster than us)
    let registered = wait_for(
        "Node registered",
        Duration::from_secs(900),
        || node_json(cp_ref),
        &diag,
    )
    .await;
    let registered_at = Instant::now();
    phases.push(("boot + agent + join", p.elapsed()));
    let tainted_at_registration = has_taint(&registered, UNINITIALIZED);
    say(t0, &format!("Node {NODE} registered (uninitialized taint at first sight: {tainted_at_registration})"));

    // 8. initialized by the controller
    let node = wait_for(
        "Node initialized by cloudsigma-controller",
        Duration::from_secs(120),
        || {
            node_json(cp_ref)
                .filter(|n| !has_taint(n, UNINITIALIZED) && n["spec"]["providerID"].is_string())
        },
        &diag,
    )
    .await;
    let initialized = registered_at.elapsed();
    phases.push(("registered -> initialized", initialized));
    let kubelet_args = ssh
        .run_retrying(
            "sudo cat /var/lib/kubelet/kubeadm-flags.env",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("reading the kubelet's flags over SSH: {e}"));
    assert!(
        kubelet_args.contains("--cloud-provider=external"),
        "kubelet runs without the external cloud provider: {kubelet_args}"
    );
    assert_eq!(
        node["spec"]["providerID"].as_str(),
        Some(format!("cloudsigma://{server}").as_str()),
        "providerID"
    );
    let addresses = node["status"]["addresses"].to_string();
    assert!(
        addresses.contains(&ip),
        "the NAT IP is not an address of the Node: {addresses}"
    );
    let labels = node["metadata"]["labels"].to_string();
    assert!(
        labels.contains("node.kubernetes.io/instance-type"),
        "instance-type label missing: {labels}"
    );
    say(
        t0,
        &format!(
            "Node initialized: providerID {}, addresses {addresses}",
            node["spec"]["providerID"]
        ),
    );

    // 9. Ready
    let p = Instant::now();
    wait_for(
        "Node Ready",
        Duration::from_secs(300),
        || node_json(cp_ref).filter(|n| condition(n, "Ready") == "True"),
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
    let agent_start = harness::journal_uptime(&ssh, "cloudsigma-bootstrap.service", "Starting");
    let status: Value = ssh
        .run_retrying(
            "sudo cat /run/cloudsigma/bootstrap.json",
            Duration::from_secs(30),
        )
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let scripts = status["phases"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["name"] == "runcmd" || p["name"] == "scripts")
        })
        .cloned()
        .unwrap_or(Value::Null);
    let marker = ssh
        .run_retrying(
            "test -e /run/cluster-api/bootstrap-success.complete && echo yes",
            Duration::from_secs(30),
        )
        .unwrap_or_default();
    assert_eq!(
        marker.trim(),
        "yes",
        "the success marker after a real kubeadm join"
    );
    report.ssh = None;

    // 11. the server goes away through the API; the controller deletes the Node
    let p = Instant::now();
    api.post(&format!("servers/{server}/action/?do=stop"), json!({}))
        .await;
    api.wait_status(
        &format!("servers/{server}/"),
        "stopped",
        Duration::from_secs(120),
    )
    .await;
    api.delete(&format!("servers/{server}/?recurse=all_drives"))
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
    drop(_controller);
    api.delete(&format!("drives/{image}/")).await;
    api.assert_empty_after_tags().await;
    let files = cloud.drive_files();
    assert!(files.is_empty(), "drive files left: {files:?}");
    let data_dir = data.path().display().to_string();
    cloud.emu.shutdown().await;
    cp.stop();
    assert!(cp.running().is_empty(), "control-plane processes left");
    assert!(
        !Path::new("/etc/kubernetes/manifests").exists()
            || std::fs::read_dir("/etc/kubernetes/manifests")
                .map(|mut d| d.next().is_none())
                .unwrap_or(true),
        "the control plane must not write the host's /etc/kubernetes"
    );
    let qemu_left = Command::new("pgrep")
        .args(["-f", &data_dir])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(qemu_left.is_empty(), "QEMU processes left: {qemu_left}");
    drop(report);

    eprintln!("\n== real node: {:.1}s ==", t0.elapsed().as_secs_f64());
    for (name, d) in &phases {
        eprintln!("  {name:<32} {:>7.1}s", d.as_secs_f64());
    }
    eprintln!(
        "  controller: Node seen -> initialized seen {:.2}s (100 ms polls; the taint was {} at first sight)",
        initialized.as_secs_f64(),
        if tainted_at_registration { "there" } else { "already gone" }
    );
    if let Some(a) = agent_start {
        eprintln!("  guest: boot -> agent start          {a:>7.1}s (uptime)");
    }
    if let (Some(start), Some(dur)) = (
        scripts["start_ms"].as_u64(),
        scripts["duration_ms"].as_u64(),
    ) {
        eprintln!(
            "  guest: agent start -> kubeadm exec  {:>7.3}s",
            start as f64 / 1000.0
        );
        eprintln!(
            "  guest: kubeadm join (whole)         {:>7.1}s",
            dur as f64 / 1000.0
        );
    }
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
