//! What the Kubernetes loops share: `cluster` (two workers on a VLAN, the controller as a host
//! process) and `in_cluster` (one node, the controller installed with `kubectl apply -k`, running
//! on the very node it initializes). Both build the Kubernetes artifacts and the node image the
//! same way (one build for both, `image_cache`), run the same control plane and join with the same
//! CABPK-shaped data; the single-node helpers (`boot`, `assert_initialized`) are in_cluster's.

use crate::builds::Binaries;
use crate::cloud::{BootedNode, NodeSpec, VmCloud};
use crate::control_plane::{ControlPlane, JoinCredentials, GUEST_HOST};
use crate::harness::{self, say};
use crate::ssh::Ssh;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const NODE: &str = "e2e-node-1";
pub const UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";

/// The pod network of the one node: the bridge plugin with host-local addresses, as a
/// KubeadmConfig `files` entry would carry it.
pub const CNI_CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"e2e-bridge","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

/// The join data a CloudSigma worker gets: the real token and CA pin, the external cloud
/// provider, no --node-ip (the server has no private NIC, so the controller's addresses rule),
/// and the CNI config as a KubeadmConfig `files` entry.
pub fn bootstrap_data(join: &JoinCredentials, pubkey: &str) -> String {
    crate::bootstrap_data::cabpk_worker_data(
        &join.endpoint,
        &join.token,
        &join.ca_cert_hash,
        &[("cloud-provider", "external")],
        &[("/etc/cni/net.d/10-bridge.conflist", "0644", CNI_CONFLIST)],
        pubkey,
    )
}

/// Everything built before the control plane: the Kubernetes artifacts and images (Go, cached),
/// the library image (cached) and the binaries.
pub struct Prepared {
    pub kube_bin: PathBuf,
    pub artifacts: PathBuf,
    pub img_dir: PathBuf,
    pub bins: Binaries,
}

/// The phases before the control plane, each timed into `phases`.
pub fn prepare(
    t0: Instant,
    repo: &Path,
    with_controller: bool,
    phases: &mut test_support::Phases,
) -> Prepared {
    let cache = harness::cache_dir();
    // The three are independent, and from nothing they are most of the README's first command
    // (issue 25 item 4): the Go builds (~10 min, much of it fetching modules and single-threaded
    // links), the library image (debootstrap: downloads and dpkg, ~2 min) and the static Rust
    // binaries. Run side by side they fill each other's idle time on 2 cores; warm, each is a
    // cache check of seconds. Each phase's own duration is recorded (they overlap).
    let (artifacts, (img_dir, library), (bins, binaries)) = std::thread::scope(|s| {
        let library = s.spawn(|| {
            let p = Instant::now();
            (crate::builds::library_image(t0, repo), p.elapsed())
        });
        let binaries = s.spawn(|| {
            let p = Instant::now();
            say(
                t0,
                if with_controller {
                    "binaries: static cloudsigma-agent, imgbuild, cloudsigma-controller"
                } else {
                    "binaries: static cloudsigma-agent, imgbuild"
                },
            );
            (
                crate::builds::build_binaries(repo, with_controller),
                p.elapsed(),
            )
        });
        let p = Instant::now();
        say(t0, "artifacts: tests/kube/build.sh --node, images.sh and addons.sh (cached after the first run)");
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
        // kube-proxy, CoreDNS and flannel: every node image carries them (one image for all loops)
        harness::run(
            Command::new(repo.join("tests/kube/addons.sh"))
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit()),
            "tests/kube/addons.sh",
        );
        let artifacts = p.elapsed();
        // a panic in either thread (a failed build) is re-raised here with its message
        (
            artifacts,
            library
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
            binaries
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    });
    phases.push("artifacts (Go builds)", artifacts);
    phases.push("library image (beside them)", library);
    phases.push("binaries (beside them)", binaries);
    Prepared {
        kube_bin: cache.join("kube-bin"),
        artifacts: cache.join("node-artifacts"),
        img_dir,
        bins,
    }
}

/// The kubeadm control plane as host processes, and a worker's join credentials.
pub fn control_plane(t0: Instant, kube_bin: &Path) -> (ControlPlane, JoinCredentials) {
    say(t0, "control plane: kubeadm init phases + etcd, kube-apiserver, kube-controller-manager, kube-scheduler as processes");
    let cp = ControlPlane::start(kube_bin, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("control plane: {e}"));
    let join = cp.join_credentials().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        join.endpoint,
        format!("{GUEST_HOST}:{}", cp.port),
        "join endpoint"
    );
    say(
        t0,
        &format!(
            "control plane up at 127.0.0.1:{} ({GUEST_HOST}:{} from the guest); join token {}.…",
            cp.port,
            cp.port,
            join.token.split('.').next().unwrap_or("")
        ),
    );
    (cp, join)
}

/// `imgbuild debian-k8s`: the product recipe's scripts with the local artifacts, on the Debian
/// library image; the image an earlier loop built is reused when imgbuild finds it current
/// (`image_cache`). Returns the image's uuid.
pub async fn build_image(t0: Instant, repo: &Path, cloud: &VmCloud, prepared: &Prepared) -> String {
    say(
        t0,
        "imgbuild debian-k8s (ubuntu-k8s's scripts, kubernetes_source=local; reused when current)",
    );
    let image = crate::image_cache::build_shared(
        cloud,
        &prepared.bins.imgbuild,
        repo,
        "image-recipes/debian-k8s",
        &[
            ("agent_binary", prepared.bins.agent.display().to_string()),
            // cloudsim boots the library image's kernel and initrd directly, never the disk's
            // /boot: regenerating the image's initramfs would cost minutes under TCG for nothing
            // (docs/imgbuild.md, initramfs_update).
            ("initramfs_update", "no".into()),
            ("artifacts_dir", prepared.artifacts.display().to_string()),
        ],
        false,
    )
    .await;
    say(t0, &format!("image {image} built"));
    image
}

/// The control plane (with a worker's join credentials), the emulator with the QEMU backend,
/// and the node image built in it: what both real-node loops stand on.
pub struct Stage {
    pub cp: ControlPlane,
    pub join: JoinCredentials,
    pub cloud: VmCloud,
    pub image: String,
}

/// Starts the control plane and the emulator, builds the node image; each timed into `phases`.
pub async fn stage(
    t0: Instant,
    repo: &Path,
    prepared: &Prepared,
    phases: &mut test_support::Phases,
) -> Stage {
    let p = Instant::now();
    let (cp, join) = tokio::task::block_in_place(|| control_plane(t0, &prepared.kube_bin));
    phases.done("control plane", p);
    let cloud = VmCloud::start(t0, &prepared.img_dir).await;
    let p = Instant::now();
    let image = build_image(t0, repo, &cloud, prepared).await;
    phases.done("imgbuild", p);
    Stage {
        cp,
        join,
        cloud,
        image,
    }
}

/// Boots the node server from `image` with the join data; the failure report adds the
/// kubelet's, containerd's and the bootstrap's logs.
pub async fn boot(
    cloud: &VmCloud,
    image: &str,
    join: &JoinCredentials,
    key: &Path,
    pubkey: &str,
) -> BootedNode {
    cloud
        .boot_node(
            image,
            NodeSpec {
                name: NODE,
                cpu_mhz: 4000,
                mem: 2 << 30,
                user_data: bootstrap_data(join, pubkey),
                extra: vec![
                    "sudo journalctl -b -u kubelet --no-pager | tail -40".into(),
                    "sudo journalctl -b -u containerd --no-pager | tail -20".into(),
                    "sudo tail -60 /var/log/cloudsigma-bootstrap-output.log".into(),
                ],
            },
            key,
        )
        .await
}

pub fn node_json(cp: &ControlPlane) -> Option<Value> {
    cp.kubectl(&["get", "node", NODE, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

pub fn has_taint(node: &Value, key: &str) -> bool {
    node["spec"]["taints"]
        .as_array()
        .map(|ts| ts.iter().any(|t| t["key"] == key))
        .unwrap_or(false)
}

/// The status ("True", "False", "Unknown") of a Node's or Pod's condition, "" when absent.
pub fn condition(obj: &Value, kind: &str) -> String {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout` with `what` and the
/// output of `diag`.
pub async fn wait_for<T>(
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

/// Waits for the Node to register, then to be initialized by a cloudsigma-controller; returns
/// the initialized Node, whether the taint was there at first sight, when it registered and how
/// long initialization took from there.
pub async fn registered_then_initialized(
    cp: &ControlPlane,
    diag: impl Fn() -> String,
) -> (Value, bool, Instant, Duration) {
    let registered = wait_for(
        "Node registered",
        Duration::from_secs(900),
        || node_json(cp),
        &diag,
    )
    .await;
    let registered_at = Instant::now();
    let tainted = has_taint(&registered, UNINITIALIZED);
    let node = wait_for(
        "Node initialized by cloudsigma-controller",
        Duration::from_secs(300),
        || {
            node_json(cp)
                .filter(|n| !has_taint(n, UNINITIALIZED) && n["spec"]["providerID"].is_string())
        },
        &diag,
    )
    .await;
    (node, tainted, registered_at, registered_at.elapsed())
}

/// What the controller must have done to the Node of `server` with NAT IP `ip`, and that the
/// kubelet runs with the external cloud provider (the reason the taint was there).
pub fn assert_initialized(node: &Value, server: &str, ip: &str, ssh: &Ssh) {
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
        addresses.contains(ip),
        "the NAT IP is not an address of the Node: {addresses}"
    );
    let labels = node["metadata"]["labels"].to_string();
    assert!(
        labels.contains("node.kubernetes.io/instance-type"),
        "instance-type label missing: {labels}"
    );
}

/// Stops the control plane and checks it left no process and nothing in the host's
/// /etc/kubernetes.
pub fn stop_control_plane(mut cp: ControlPlane) {
    cp.stop();
    assert!(cp.running().is_empty(), "control-plane processes left");
    assert!(
        !Path::new("/etc/kubernetes/manifests").exists()
            || std::fs::read_dir("/etc/kubernetes/manifests")
                .map(|mut d| d.next().is_none())
                .unwrap_or(true),
        "the control plane must not write the host's /etc/kubernetes"
    );
}

/// Guest-side figures from the node's journal and the agent's status file: uptime at the
/// agent unit's start, and the join command's start (ms after the agent started) and duration.
pub struct GuestTimes {
    pub agent_start: Option<f64>,
    pub join_start_ms: Option<u64>,
    pub join_ms: Option<u64>,
}

/// Reads the guest's figures and checks the success marker of a real `kubeadm join`.
pub fn guest_times(ssh: &Ssh) -> GuestTimes {
    let agent_start = crate::ssh::journal_uptime(ssh, "cloudsigma-bootstrap.service", "Starting");
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
    GuestTimes {
        agent_start,
        join_start_ms: scripts["start_ms"].as_u64(),
        join_ms: scripts["duration_ms"].as_u64(),
    }
}

impl GuestTimes {
    pub fn print(&self) {
        if let Some(a) = self.agent_start {
            eprintln!("  guest: boot -> agent start          {a:>7.1}s (uptime)");
        }
        if let (Some(start), Some(dur)) = (self.join_start_ms, self.join_ms) {
            eprintln!(
                "  guest: agent start -> kubeadm exec  {:>7.3}s",
                start as f64 / 1000.0
            );
            eprintln!(
                "  guest: kubeadm join (whole)         {:>7.1}s",
                dur as f64 / 1000.0
            );
        }
    }
}

/// The cloudsigma-controller as a host process, killed on drop, as an operator of the
/// `management` install runs it outside the workload cluster (docs/controller.md): the `workload`
/// overlay applied, a token of its ServiceAccount in a kubeconfig, `--lease-namespace`, the
/// emulator's API credentials in its environment.
pub struct HostController {
    child: std::process::Child,
    pub log: PathBuf,
}

impl HostController {
    pub fn start(
        cp: &ControlPlane,
        repo: &Path,
        bin: &Path,
        emu: &cloudsim::EmulatorHandle,
    ) -> HostController {
        // Mode (b) of docs/controller.md, "management cluster": in the workload cluster only
        // the `workload` overlay (Namespace, ServiceAccount, RBAC, the Lease's Role), and the
        // controller outside it with that ServiceAccount's token in a kubeconfig file; the
        // CloudSigma credentials never reach a workload node.
        cp.kubectl(&[
            "apply",
            "-k",
            &repo
                .join("controller/overlays/workload")
                .display()
                .to_string(),
        ])
        .expect("kubectl apply -k controller/overlays/workload");
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
        let metrics_port = crate::control_plane::free_port();
        let log_path = cp.dir.path().join("cloudsigma-controller.log");
        let log = std::fs::File::create(&log_path).expect("controller log");
        let child = Command::new(bin)
            .env("CLOUDSIGMA_API_URL", emu.api_url())
            .env("CLOUDSIGMA_USERNAME", emu.username())
            .env("CLOUDSIGMA_PASSWORD", emu.password())
            .arg("--kubeconfig")
            .arg(&sa_kubeconfig)
            .args([
                "--lease-namespace=cloudsigma-system",
                "--identity=e2e-host",
                // the lifecycle check's period: short, so that a deleted server's Node goes
                // within the test (the default is 30s)
                "--sync-period=5s",
                &format!("--metrics-bind=127.0.0.1:{metrics_port}"),
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting cloudsigma-controller");
        HostController {
            child,
            log: log_path,
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        std::fs::read_to_string(&self.log)
            .map(|l| {
                let lines: Vec<&str> = l.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n")
            })
            .unwrap_or_default()
    }
}

impl Drop for HostController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
