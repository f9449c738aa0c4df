//! Mode "management" (controller/overlays/management + workload) against a REAL kube-apiserver:
//! `overlays/workload` applied in the "workload cluster", the real binary started with the
//! arguments of the rendered management Deployment (the kubeconfig path pointed at a file holding
//! a token of the workload ServiceAccount, `$(POD_IP)` = loopback), and POD_NAMESPACE naming a
//! management namespace that does not exist in the workload cluster. It must initialize a Node
//! and hold its Lease in the workload cluster, under the workload RBAC only.

use std::time::{Duration, Instant};

use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit;
use cloudsim::{Emulator, EmulatorConfig, Timings};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

fn render(dir: &str) -> String {
    let out = testkit::kubectl()
        .arg("kustomize")
        .arg(testkit::repo_root().join(dir))
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The controller container's `args` in the rendered management Deployment.
fn management_args() -> Vec<String> {
    let text = render("controller/overlays/management");
    let dep: serde_yaml::Value = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .find(|d: &serde_yaml::Value| d["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_with_the_management_overlays_flags() {
    let Some(cluster) = testkit::cluster_or_skip("management mode") else {
        return;
    };
    cluster
        .kubectl_as(
            &cluster.kubeconfig,
            &["apply", "-f", "-"],
            Some(&render("controller/overlays/workload")),
        )
        .expect("apply overlays/workload");
    let token = cluster
        .kubectl(&[
            "-n",
            "cloudsigma-system",
            "create",
            "token",
            "cloudsigma-controller",
            "--duration=1h",
        ])
        .expect("create token");
    let workload_kc = cluster
        .kubeconfig_for_token("workload", token.trim())
        .expect("workload kubeconfig");

    let port = testkit::free_port();
    let args: Vec<String> = management_args()
        .into_iter()
        .map(|a| match a.split_once('=') {
            Some(("--kubeconfig", _)) => format!("--kubeconfig={}", workload_kc.display()),
            Some(("--metrics-bind", v)) => {
                assert_eq!(v, "$(POD_IP):10258", "{a}");
                format!("--metrics-bind=127.0.0.1:{port}")
            }
            _ => a,
        })
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--kubeconfig=")),
        "{args:?}"
    );

    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |_| {});
    let nodes: Api<Node> = Api::all(cluster.client().await);
    testkit::server_and_tainted_node(&cs, &nodes, "hosted-1").await;

    let log = std::fs::File::create(cluster.dir.path().join("controller.log")).expect("log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-controller"))
        .args(&args)
        .arg(format!("--api-url={}", emu.api_url()))
        .arg("--sync-period=1s")
        // The management cluster's namespace: it does not exist in the workload cluster.
        .env("POD_NAMESPACE", "tenant-a")
        .env("POD_NAME", "cloudsigma-controller-abc")
        .env("CLOUDSIGMA_USERNAME", emu.username())
        .env("CLOUDSIGMA_PASSWORD", emu.password())
        .env_remove("CLOUDSIGMA_TOKEN")
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn controller");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = nodes.get("hosted-1").await.expect("node");
        if !cloudsigma_controller::node::has_taint(&n, TAINT_UNINITIALIZED) {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(cluster.dir.path().join("controller.log"))
                .unwrap_or_default();
            panic!("hosted-1 not initialized in management mode; controller log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let holder = cluster
        .kubectl(&[
            "-n",
            "cloudsigma-system",
            "get",
            "lease",
            "cloudsigma-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .expect("the Lease is in the workload cluster's cloudsigma-system");
    // POD_NAME + "_" + a per-process uuid (src/lib.rs default_identity).
    let (pod, suffix) = holder.trim().rsplit_once('_').expect("<pod>_<uuid>");
    assert_eq!(pod, "cloudsigma-controller-abc", "{holder}");
    assert_eq!(suffix.len(), 36, "{holder}");
    let log =
        std::fs::read_to_string(cluster.dir.path().join("controller.log")).unwrap_or_default();
    assert!(
        !log.to_ascii_lowercase().contains("forbidden"),
        "RBAC denied something:\n{log}"
    );

    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .arg(&pid)
        .status()
        .expect("kill");
    let st = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(st.success(), "exit status {st}");
    emu.shutdown().await;
}
