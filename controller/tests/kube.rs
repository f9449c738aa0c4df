//! Integration tests against a REAL kube-apiserver + etcd (tests/kube/build.sh) and the CloudSigma
//! emulator (cloudsim, in-process).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::ServerStatus;
use cloudsigma_controller::node::{TAINT_SHUTDOWN, TAINT_UNINITIALIZED};
use cloudsigma_controller::testkit::{self, Cluster};
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, FaultConfig, Timings};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

async fn emulator() -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator start")
}

fn cs_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        // Outage tests should not sit in client retries for long.
        cfg.retry.max_attempts = 2;
        cfg.retry.base_delay = Duration::from_millis(50);
        cfg.timeout = Duration::from_secs(3);
    })
}

fn opts(api_url: &str, sync: Duration, metrics_port: u16) -> Options {
    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(api_url.into());
    o.sync_period = sync;
    o.min_refresh_interval = Duration::from_millis(200);
    o.metrics_bind = format!("127.0.0.1:{metrics_port}").parse().expect("addr");
    o.lease_namespace = "kube-system".into();
    o
}

async fn wait_for<F: Fn(&Node) -> bool>(api: &Api<Node>, name: &str, what: &str, f: F) -> Node {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(n)) = api.get_opt(name).await {
            if f(&n) {
                return n;
            }
            if Instant::now() > deadline {
                panic!(
                    "node {name}: timed out waiting for {what}; node: {}",
                    serde_json::to_string_pretty(&n).unwrap_or_default()
                );
            }
        } else if Instant::now() > deadline {
            panic!("node {name}: timed out waiting for {what}; node missing");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(api: &Api<Node>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt(name).await.ok().flatten().is_some() {
        assert!(Instant::now() < deadline, "node {name} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every Event as "regarding-name reason note", one per line.
fn events(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.regarding.name} {.reason} {.note}{\"\\n\"}{end}",
        ])
        .expect("events")
}

fn taint_keys(n: &Node) -> Vec<String> {
    cloudsigma_controller::node::taints(n)
        .into_iter()
        .map(|t| t.key)
        .collect()
}

fn addrs(n: &Node) -> Vec<(String, String)> {
    cloudsigma_controller::node::current_addresses(n)
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect()
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn initializes_tracks_lifecycle_and_survives_outages() {
    let Some(cluster) =
        testkit::cluster_or_skip("initializes_tracks_lifecycle_and_survives_outages")
    else {
        return;
    };
    let kube = cluster.client().await;
    let nodes: Api<Node> = Api::all(kube.clone());
    let emu = emulator().await;
    let cs = cs_client(&emu);

    let a = testkit::emulator_server(&cs, "node-a", true).await;
    let b = testkit::emulator_server(&cs, "node-b", true).await;
    let srv_a = cs.get_server(&a).await.expect("get a");
    let nat_a = srv_a.nics[0]
        .runtime_ipv4()
        .expect("NAT IP of a running server")
        .to_string();

    // node-a: providerID set by kubelet, provided IP = its public address. node-b: no providerID
    // (found by name), no provided IP. node-x: unknown name: must stay tainted.
    nodes
        .create(
            &PostParams::default(),
            &testkit::tainted_node("node-a", Some(&format!("cloudsigma://{a}")), Some(&nat_a)),
        )
        .await
        .expect("create a");
    nodes
        .create(
            &PostParams::default(),
            &testkit::tainted_node("node-b", None, None),
        )
        .await
        .expect("create b");
    nodes
        .create(
            &PostParams::default(),
            &testkit::tainted_node("node-x", None, None),
        )
        .await
        .expect("create x");

    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let port = testkit::free_port();
    let ctl = tokio::spawn(run(
        opts(&emu.api_url(), Duration::from_secs(1), port),
        kube.clone().into(),
        cs_client(&emu),
        metrics.clone(),
        rx,
    ));

    let na = wait_for(&nodes, "node-a", "initialization", |n| {
        !taint_keys(n).contains(&TAINT_UNINITIALIZED.to_string())
    })
    .await;
    assert_eq!(
        na.spec.as_ref().and_then(|s| s.provider_id.clone()),
        Some(format!("cloudsigma://{a}"))
    );
    assert_eq!(
        addrs(&na),
        vec![
            ("InternalIP".into(), nat_a.clone()),
            ("ExternalIP".into(), nat_a.clone()),
            ("Hostname".into(), "node-a".into())
        ]
    );
    let l = labels(&na);
    assert_eq!(
        l.get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("2c-2000mhz-2g")
    );
    assert_eq!(
        l.get("beta.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("2c-2000mhz-2g")
    );
    assert_eq!(
        l.get("topology.kubernetes.io/region").map(String::as_str),
        Some("zrh")
    );
    assert_eq!(
        l.get("topology.kubernetes.io/zone").map(String::as_str),
        Some("zrh")
    );
    assert_eq!(
        l.get("kubernetes.io/hostname").map(String::as_str),
        Some("node-a"),
        "existing labels kept"
    );

    let nb = wait_for(&nodes, "node-b", "initialization by name", |n| {
        !taint_keys(n).contains(&TAINT_UNINITIALIZED.to_string())
    })
    .await;
    assert_eq!(
        nb.spec.as_ref().and_then(|s| s.provider_id.clone()),
        Some(format!("cloudsigma://{b}"))
    );
    assert!(
        addrs(&nb).iter().any(|(t, _)| t == "ExternalIP"),
        "{:?}",
        addrs(&nb)
    );
    // The re-reconcile caused by our own status patch sees a stale tainted copy; it must be
    // recognised, not answered with another Update that the apiserver rejects as a conflict.
    let metrics_text = cluster
        .kubectl(&["get", "--raw", "/metrics"])
        .expect("apiserver metrics");
    let conflicts: f64 = metrics_text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("code=\"409\"")
                && l.contains("resource=\"nodes\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(conflicts, 0.0, "Node writes that met a 409");

    // /metrics and /readyz are served.
    let body = reqwest_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(
        body.contains("cloudsigma_controller_cloudsigma_api_calls_total"),
        "{body}"
    );
    assert_eq!(
        reqwest_get(&format!("http://127.0.0.1:{port}/readyz")).await,
        "ok"
    );

    // Stopped server → shutdown taint; started again → removed.
    cs.stop_server(&a).await.expect("stop");
    cs.wait_server_status(&a, ServerStatus::Stopped, Duration::from_secs(10))
        .await
        .expect("stopped");
    wait_for(&nodes, "node-a", "shutdown taint", |n| {
        taint_keys(n).contains(&TAINT_SHUTDOWN.to_string())
    })
    .await;
    cs.start_server(&a).await.expect("start again");
    wait_for(&nodes, "node-a", "shutdown taint removed", |n| {
        !taint_keys(n).contains(&TAINT_SHUTDOWN.to_string())
    })
    .await;

    // An unknown name stays tainted (never guessed).
    let nx = nodes.get("node-x").await.expect("node-x");
    assert!(taint_keys(&nx).contains(&TAINT_UNINITIALIZED.to_string()));
    assert!(nx
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.clone())
        .is_none());
    // …and says why in an Event.
    let ev = events(&cluster);
    assert!(
        ev.lines()
            .any(|l| l.starts_with("node-x ServerNotFound")
                && l.contains("no CloudSigma server named")),
        "events:\n{ev}"
    );
    // Successful initializations record no Event by default (--record-success-events).
    assert!(
        !ev.lines().any(|l| l.contains(" Initialized ")),
        "events:\n{ev}"
    );

    // Outage: 100% 500s. A Node whose server never existed must survive while the API fails…
    let ghost = "00000000-0000-4000-8000-000000000001";
    let mut g = testkit::tainted_node("node-ghost", Some(&format!("cloudsigma://{ghost}")), None);
    g.spec.as_mut().expect("spec").taints = None;
    emu.set_faults(FaultConfig {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_millis(1200)).await; // let the cached listing age past the sync period
    nodes
        .create(&PostParams::default(), &g)
        .await
        .expect("create ghost");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        nodes.get_opt("node-ghost").await.expect("get").is_some(),
        "deleted during an outage"
    );
    assert!(nodes.get_opt("node-b").await.expect("get").is_some());
    assert!(
        metrics.deletions_skipped.get() > 0,
        "outage should be counted as skipped deletions"
    );
    let calls_during_outage = metrics.api_calls_total("list_servers");
    // …and is deleted once the API answers "gone" for certain (proves the check above can fail).
    emu.set_faults(FaultConfig::default());
    wait_gone(&nodes, "node-ghost").await;
    assert!(metrics.api_calls_total("list_servers") > calls_during_outage);

    // Deleted server → Node deleted.
    cs.stop_server(&b).await.expect("stop b");
    cs.wait_server_status(&b, ServerStatus::Stopped, Duration::from_secs(10))
        .await
        .expect("b stopped");
    cs.delete_server(&b, None).await.expect("delete b");
    wait_gone(&nodes, "node-b").await;
    assert!(
        nodes.get_opt("node-a").await.expect("get").is_some(),
        "node-a must stay"
    );

    // A stopped emulator (connection refused): nothing is deleted.
    let pid_c = testkit::emulator_server(&cs, "node-c", true).await;
    let mut c = testkit::tainted_node("node-c", Some(&format!("cloudsigma://{pid_c}")), None);
    c.spec.as_mut().expect("spec").taints = None;
    nodes
        .create(&PostParams::default(), &c)
        .await
        .expect("create c");
    emu.shutdown().await;
    cs.delete_server(&pid_c, None).await.ok(); // fails: emulator is down; the node must stay anyway
    tokio::time::sleep(Duration::from_secs(4)).await;
    for n in ["node-a", "node-c", "node-x"] {
        assert!(
            nodes.get_opt(n).await.expect("get").is_some(),
            "{n} deleted while the API was down"
        );
    }

    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("controller stops")
        .expect("join")
        .expect("run ok");
}

async fn reqwest_get(url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The real binary, under the kustomize ServiceAccount's RBAC only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_runs_under_kustomize_rbac() {
    let Some(cluster) = testkit::cluster_or_skip("binary_runs_under_kustomize_rbac") else {
        return;
    };
    let rendered = testkit::kubectl()
        .args(["kustomize"])
        .arg(testkit::repo_root().join("controller/config"))
        .output()
        .expect("kubectl kustomize");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8_lossy(&rendered.stdout).to_string();
    // Everything except the Deployment (no kubelet/scheduler here to run it).
    let docs: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|d| !d.contains("kind: Deployment"))
        .collect();
    cluster
        .kubectl_as(
            &cluster.kubeconfig,
            &["apply", "-f", "-"],
            Some(&docs.join("\n---\n")),
        )
        .expect("apply rbac");
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
    let sa_kc = cluster
        .kubeconfig_for_token("sa", token.trim())
        .expect("sa kubeconfig");

    // Least privilege, answered by the real RBAC.
    // `kubectl auth can-i` prints yes/no (exit status 1 for no).
    let can = |args: &[&str]| -> String {
        let out = testkit::kubectl()
            .arg(format!("--kubeconfig={}", sa_kc.display()))
            .args(["auth", "can-i"])
            .args(args)
            .output()
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(can(&["list", "secrets", "--all-namespaces"]), "no");
    assert_eq!(can(&["get", "secrets", "-n", "cloudsigma-system"]), "no");
    assert_eq!(can(&["create", "pods", "-n", "default"]), "no");
    assert_eq!(can(&["list", "services", "--all-namespaces"]), "no");
    assert_eq!(
        can(&["update", "leases", "-n", "kube-system"]),
        "no",
        "leases only in its own namespace"
    );
    assert_eq!(can(&["update", "leases", "-n", "cloudsigma-system"]), "yes");
    assert_eq!(can(&["patch", "nodes", "--subresource=status"]), "yes");
    // Verbs the code never uses are not granted.
    assert_eq!(can(&["patch", "nodes"]), "no");
    assert_eq!(can(&["update", "nodes", "--subresource=status"]), "no");
    assert_eq!(can(&["delete", "nodes"]), "yes");
    assert_eq!(can(&["watch", "nodes"]), "yes");

    let emu = emulator().await;
    let cs = cs_client(&emu);
    let admin = cluster.client().await;
    let nodes: Api<Node> = Api::all(admin);
    let uuid = testkit::server_and_tainted_node(&cs, &nodes, "worker-1").await;

    let bin = env!("CARGO_BIN_EXE_cloudsigma-controller");
    let port = testkit::free_port();
    let log = std::fs::File::create(cluster.dir.path().join("controller.log")).expect("log");
    let mut child = tokio::process::Command::new(bin)
        .arg(format!("--kubeconfig={}", sa_kc.display()))
        .arg(format!("--api-url={}", emu.api_url()))
        .arg("--region=fra")
        .arg("--sync-period=1s")
        .arg(format!("--metrics-bind=127.0.0.1:{port}"))
        .arg("--log-format=json")
        .arg("--record-success-events=true")
        .env("POD_NAMESPACE", "cloudsigma-system")
        .env("CLOUDSIGMA_USERNAME", emu.username())
        .env("CLOUDSIGMA_PASSWORD", emu.password())
        .env_remove("CLOUDSIGMA_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn controller");

    let n = wait_for(&nodes, "worker-1", "initialization by the binary", |n| {
        !taint_keys(n).contains(&TAINT_UNINITIALIZED.to_string())
    })
    .await;
    assert_eq!(
        n.spec.as_ref().and_then(|s| s.provider_id.clone()),
        Some(format!("cloudsigma://{uuid}"))
    );
    assert_eq!(
        labels(&n)
            .get("topology.kubernetes.io/region")
            .map(String::as_str),
        Some("fra")
    );
    // It took the Lease in its namespace.
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
        .expect("lease");
    assert!(!holder.trim().is_empty());
    // The Event was written under the ServiceAccount's RBAC (asynchronously: poll for it).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ev = events(&cluster);
        if ev.lines().any(|l| l.starts_with("worker-1 Initialized ")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Initialized event; events:\n{ev}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        can(&["create", "events.events.k8s.io", "-n", "default"]),
        "yes"
    );
    let log =
        std::fs::read_to_string(cluster.dir.path().join("controller.log")).unwrap_or_default();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "RBAC denied something:\n{log}"
    );
    assert!(!log.contains(emu.password()), "password leaked into logs");

    // SIGTERM → clean exit.
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

/// A running server and its tainted Node; returns once something removed the taint.
async fn register_and_initialize(cs: &Client, nodes: &Api<Node>, name: &str, what: &str) -> Node {
    testkit::server_and_tainted_node(cs, nodes, name).await;
    wait_for(nodes, name, what, |n| {
        !taint_keys(n).contains(&TAINT_UNINITIALIZED.to_string())
    })
    .await
}

fn lease_holder(cluster: &Cluster) -> String {
    cluster
        .kubectl(&[
            "-n",
            "kube-system",
            "get",
            "lease",
            "cloudsigma-controller",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}",
        ])
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn wait_lease(cluster: &Cluster, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = lease_holder(cluster);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lease holder/transitions: want {want:?}, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas of the real binary: only the Lease holder reconciles; a killed leader's replica
/// takes over once the Lease expires; a leader whose Lease is taken exits instead of acting on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_fails_over_and_never_has_two_leaders() {
    let Some(cluster) = testkit::cluster_or_skip("leader_election_fails_over") else {
        return;
    };
    let emu = emulator().await;
    let cs = cs_client(&emu);
    let nodes: Api<Node> = Api::all(cluster.client().await);
    let bin = env!("CARGO_BIN_EXE_cloudsigma-controller");
    let replica = |identity: &str| {
        let port = testkit::free_port();
        let log = std::fs::File::create(
            cluster
                .dir
                .path()
                .join(format!("controller-{identity}.log")),
        )
        .expect("log");
        let child = tokio::process::Command::new(bin)
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .arg(format!("--api-url={}", emu.api_url()))
            .args(["--region=zrh", "--sync-period=1s", "--leader-elect=true"])
            .args([
                "--lease-duration=3s",
                "--renew-deadline=2s",
                "--retry-period=300ms",
            ])
            .arg(format!("--identity={identity}"))
            .arg(format!("--metrics-bind=127.0.0.1:{port}"))
            .env("POD_NAMESPACE", "kube-system")
            .env("CLOUDSIGMA_USERNAME", emu.username())
            .env("CLOUDSIGMA_PASSWORD", emu.password())
            .env_remove("CLOUDSIGMA_TOKEN")
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn controller");
        (child, format!("http://127.0.0.1:{port}/metrics"))
    };
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };

    let (mut a, a_metrics) = replica("replica-a");
    wait_lease(&cluster, "replica-a 0", Duration::from_secs(20)).await;
    let (mut b, b_metrics) = replica("replica-b");

    register_and_initialize(&cs, &nodes, "worker-a", "initialization by the leader").await;
    // The standby is up (serving metrics) and has done nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let standby = loop {
        let m = reqwest_get(&b_metrics).await;
        if m.contains("cloudsigma_controller_leader") {
            break m;
        }
        assert!(Instant::now() < deadline, "replica-b serves no metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metric(&standby, "cloudsigma_controller_leader "), 0.0);
    assert_eq!(
        metric(&standby, "cloudsigma_controller_reconciles_total"),
        0.0
    );
    assert!(
        metric(
            &reqwest_get(&a_metrics).await,
            "cloudsigma_controller_reconciles_total"
        ) >= 1.0
    );

    // The leader dies without releasing the Lease: the standby waits out the lease duration.
    a.start_kill().expect("kill replica-a");
    let _ = a.wait().await;
    let killed = Instant::now();
    wait_lease(&cluster, "replica-b 1", Duration::from_secs(15)).await;
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "replica-b took an unexpired Lease after {:?}",
        killed.elapsed()
    );
    register_and_initialize(&cs, &nodes, "worker-b", "initialization by the new leader").await;
    assert_eq!(
        metric(
            &reqwest_get(&b_metrics).await,
            "cloudsigma_controller_leader "
        ),
        1.0
    );

    // Someone else holds the Lease now (fresh renewTime): replica-b must stop, not keep acting.
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("date");
    // A spec-level replace of the holder, as another candidate's write would do.
    let patch = format!(
        r#"{{"spec":{{"holderIdentity":"intruder","renewTime":"{now}","leaseDurationSeconds":60}}}}"#
    );
    cluster
        .kubectl(&[
            "-n",
            "kube-system",
            "patch",
            "lease",
            "cloudsigma-controller",
            "--type=merge",
            "-p",
            &patch,
        ])
        .expect("steal the lease");
    let st = tokio::time::timeout(Duration::from_secs(10), b.wait())
        .await
        .expect("replica-b exits after losing the Lease")
        .expect("wait");
    assert!(
        !st.success(),
        "losing leadership must exit non-zero, got {st}"
    );
    let log = std::fs::read_to_string(cluster.dir.path().join("controller-replica-b.log"))
        .unwrap_or_default();
    assert!(
        log.contains("lost leadership") || log.contains("taken by another"),
        "log:\n{log}"
    );
    emu.shutdown().await;
}
