//! Warning Events on Nodes that fail to initialize, against a REAL kube-apiserver
//! (tests/kube/build.sh) and the emulator: no "not found" before a fresh listing confirms it, and
//! the Event shown for a Node follows its current cause (issue #10 item 7).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit::{self, Cluster};
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, Timings};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

fn cs_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.timeout = Duration::from_secs(3);
    })
}

/// Events about `node` as "reason note [count]", one per line.
fn events_of(cluster: &Cluster, node: &str) -> Vec<String> {
    cluster
        .events_about(node)
        .into_iter()
        .map(|e| {
            format!(
                "{} {} [{}]",
                e.reason,
                e.note,
                e.count.map(|c| c.to_string()).unwrap_or_default()
            )
        })
        .collect()
}

async fn wait_event(cluster: &Cluster, node: &str, what: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let ev = events_of(cluster, node);
        if ev.iter().any(|l| l.contains(what)) {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: no Event with {what:?}; events: {ev:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_only_confirmed_and_current_causes() {
    let Some(cluster) = testkit::cluster_or_skip("events") else {
        return;
    };
    let kube = cluster.client().await;
    let nodes: Api<Node> = Api::all(kube.clone());
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = cs_client(&emu);

    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(emu.api_url());
    o.leader_elect = false;
    o.sync_period = Duration::from_secs(10);
    // Wide enough that a Node registered after the first listing is looked up inside it.
    o.min_refresh_interval = Duration::from_secs(3);
    o.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        o,
        kube.clone().into(),
        cs_client(&emu),
        metrics.clone(),
        rx,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !metrics.ready() {
        assert!(Instant::now() < deadline, "no first listing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. A server and its Node (matched by name) created right after that listing: initialized
    // without any Warning. The listing predates the Node and cannot say its server is missing.
    testkit::server_and_tainted_node(&cs, &nodes, "late-1").await;
    // 2. A Node whose server does not exist yet, and whose --node-ip will not fit it.
    nodes
        .create(
            &PostParams::default(),
            &testkit::tainted_node("drift-1", None, Some("10.9.9.9")),
        )
        .await
        .expect("node drift-1");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = nodes.get("late-1").await.expect("late-1");
        if !cloudsigma_controller::node::has_taint(&n, TAINT_UNINITIALIZED) {
            break;
        }
        assert!(Instant::now() < deadline, "late-1 never initialized");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // drift-1: "not found" once a listing newer than the Node confirms it…
    let ev = wait_event(
        &cluster,
        "drift-1",
        "no CloudSigma server named",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        ev.iter().any(|l| l.starts_with("ServerNotFound ")),
        "{ev:#?}"
    );
    // …then its server appears, and the failure's cause changes: an Event must say so (before,
    // the recorder only bumped the count of the "not found" Event, keyed by reason alone).
    testkit::emulator_server(&cs, "drift-1", true).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let current_cause = loop {
        let ev = events_of(&cluster, "drift-1");
        if let Some(l) = ev
            .iter()
            .find(|l| l.contains("is not an address of server"))
        {
            break Ok(l.clone());
        }
        if Instant::now() > deadline {
            break Err(ev);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Events are recorded asynchronously: give a late one time to arrive before checking that
    // late-1 has none.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = events_of(&cluster, "late-1");
    let mut failures = vec![];
    if !late.is_empty() {
        failures.push(format!(
            "late-1 was initialized but carries Warnings: {late:#?}"
        ));
    }
    match current_cause {
        Ok(l) => assert!(
            l.starts_with("InvalidNodeIP node drift-1: provided node IP 10.9.9.9"),
            "{l}"
        ),
        Err(ev) => failures.push(format!(
            "drift-1: no Event names its current cause (provided node IP); events: {ev:#?}"
        )),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(15), ctl)
        .await
        .expect("stops")
        .expect("join")
        .expect("run ok");
    emu.shutdown().await;
}
