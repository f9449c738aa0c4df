//! Catch-up after a CloudSigma API outage (issue 21 item 8), against a REAL kube-apiserver + etcd
//! and the emulator: 150 Nodes, sync period 2 s, three outages (every GET answered 503, every GET
//! answered 429, the emulator process gone). During each, two servers are deleted and a new Node
//! registers; once the API answers again, the deleted servers' Nodes must go within 5 sync periods
//! and the new Node be initialized within 2; and since the first listing after the outage answers
//! every pending lookup, the six go within one sync period of each other.
//!
//! Found from outside before the fix: four of six such Nodes were deleted only after more than two
//! minutes. A miss was confirmed only by a listing that *started after the lookup*; each retry
//! was a new lookup, and with 150 Nodes sharing one rate-limited listing the listing a retry met
//! had nearly always been started (by another Node) just before it asked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::ServerStatus;
use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit;
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, OnceRule, Timings};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

const NODES: usize = 150;
/// Servers deleted during each outage (six, as in the report).
const DELETED: usize = 6;
const SYNC: Duration = Duration::from_secs(2);
/// Added to every emulator answer: a listing of 150 servers (two pages) then takes about 0.3 s,
/// as the real API's does or longer. Without it the listings are so quick that the lookups
/// waiting for one mostly meet the same listing and the effect below hides.
const LATENCY_MS: u64 = 150;
/// How long each outage lasts: long enough for the listing's backoff to reach its cap.
const OUTAGE: Duration = Duration::from_secs(10);

async fn start_emulator(listen: std::net::SocketAddr, state: &std::path::Path) -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        listen,
        timings: Timings::instant(),
        state_file: Some(state.to_path_buf()),
        faults: cloudsim::FaultConfig {
            latency_ms: LATENCY_MS,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("emulator start")
}

/// The test's own client: a few quick retries (a restarted emulator drops pooled connections).
fn test_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.retry.max_attempts = 4;
        cfg.retry.base_delay = Duration::from_millis(50);
        cfg.timeout = Duration::from_secs(5);
    })
}

/// Every GET of servers (listing and single server) answers `status`; other methods pass, so the
/// test can still delete servers. Cleared by [`clear_once_rules`].
fn fail_server_gets(emu: &EmulatorHandle, status: u16) {
    emu.add_once_rule(OnceRule {
        method: Some("GET".into()),
        path: "/api/2.0/servers/".into(),
        status,
        count: u32::MAX,
    });
}

/// `DELETE /admin/faults/once`, in process (the admin endpoints are on a unix socket by default).
async fn clear_once_rules(emu: &EmulatorHandle) {
    let (status, body) = emu.admin("DELETE", "faults/once", None).await;
    assert!(
        (200..300).contains(&status),
        "clearing the emulator's once rules: {status} {body}"
    );
}

fn tainted(n: &Node) -> bool {
    cloudsigma_controller::node::taints(n)
        .iter()
        .any(|t| t.key == TAINT_UNINITIALIZED)
}

/// Running servers `prefix-0..count` and their tainted Nodes (providerID set, as our agent
/// registers them); returns the uuids.
async fn servers_and_nodes(
    cs: &Client,
    nodes: &Api<Node>,
    prefix: &str,
    count: usize,
) -> Vec<String> {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let name = format!("{prefix}-{i}");
            let uuid = testkit::emulator_server(cs, &name, true).await;
            nodes
                .create(
                    &PostParams::default(),
                    &testkit::tainted_node(&name, Some(&format!("cloudsigma://{uuid}")), None),
                )
                .await
                .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
            Ok::<_, ()>(uuid)
        })
        .buffered(16)
        .try_collect()
        .await
        .expect("servers and Nodes")
}

/// Stopped servers (deleting needs it); the controller has seen them stopped.
async fn stop(cs: &Client, uuids: &[&str]) {
    for u in uuids {
        cs.stop_server(u).await.expect("stop");
        cs.wait_server_status(u, ServerStatus::Stopped, Duration::from_secs(10))
            .await
            .expect("stopped");
    }
}

/// What one outage's catch-up took, from the moment the API answered again.
struct CatchUp {
    phase: &'static str,
    deleted: Vec<Duration>,
    initialized: Duration,
}

/// Waits (at most `limit`) for `gone` to be deleted and `new` to be untainted; the time of each
/// from `since`, or `limit` for what never happened.
async fn measure(
    nodes: &Api<Node>,
    phase: &'static str,
    since: Instant,
    gone: &[String],
    new: &str,
    limit: Duration,
) -> CatchUp {
    let mut deleted: Vec<Option<Duration>> = vec![None; gone.len()];
    let mut initialized = None;
    while since.elapsed() < limit && (deleted.iter().any(Option::is_none) || initialized.is_none())
    {
        for (i, name) in gone.iter().enumerate() {
            if deleted[i].is_none() && nodes.get_opt(name).await.expect("get").is_none() {
                deleted[i] = Some(since.elapsed());
            }
        }
        if initialized.is_none() {
            if let Some(n) = nodes.get_opt(new).await.expect("get") {
                if !tainted(&n) {
                    initialized = Some(since.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    CatchUp {
        phase,
        deleted: deleted.into_iter().map(|d| d.unwrap_or(limit)).collect(),
        initialized: initialized.unwrap_or(limit),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catches_up_at_once_after_an_api_outage() {
    let Some(cluster) = testkit::cluster_or_skip("catches_up_at_once_after_an_api_outage") else {
        return;
    };
    let kube = cluster.client().await;
    let nodes: Api<Node> = Api::all(kube.clone());
    let state = cluster.dir.path().join("emulator-state.json");
    let mut emu = start_emulator("127.0.0.1:0".parse().expect("addr"), &state).await;
    let api_addr = emu.addr();
    let mut cs = test_client(&emu);

    let uuids = servers_and_nodes(&cs, &nodes, "n", NODES).await;

    // The controller as deployed (the default client retries and timeout, leader election on),
    // only the sync period short.
    let mut opts = {
        use clap::Parser;
        Options::parse_from(["cloudsigma-controller", "--region=zrh"])
    };
    opts.api_url = Some(emu.api_url());
    opts.sync_period = SYNC;
    opts.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    let controller_client =
        testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |_| {});
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        opts,
        kube.clone().into(),
        controller_client,
        metrics.clone(),
        rx,
    ));

    let t0 = Instant::now();
    loop {
        let list = nodes.list(&Default::default()).await.expect("list");
        if list.items.iter().filter(|n| !tainted(n)).count() == NODES {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{NODES} Nodes not initialized within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{NODES} Nodes initialized in {:.1?}", t0.elapsed());

    // Long enough that an old build's 2-minute stragglers are seen as failures, short enough
    // that the test ends.
    let limit = SYNC * 15;
    let mut results = Vec::new();
    for (p, phase) in ["503", "429", "emulator killed"].into_iter().enumerate() {
        let range = DELETED * p..DELETED * (p + 1);
        let doomed: Vec<&str> = uuids[range.clone()].iter().map(String::as_str).collect();
        let doomed_nodes: Vec<String> = range.map(|i| format!("n-{i}")).collect();
        stop(&cs, &doomed).await;
        let late = format!("late-{p}");
        testkit::emulator_server(&cs, &late, true).await;

        // The outage begins; the servers are deleted and a Node registers during it.
        fail_server_gets(&emu, if phase == "429" { 429 } else { 503 });
        for u in &doomed {
            cs.delete_server(u, None).await.expect("delete server");
        }
        nodes
            .create(
                &PostParams::default(),
                &testkit::tainted_node(&late, None, None),
            )
            .await
            .expect("create the late Node");
        if phase == "emulator killed" {
            emu.shutdown().await; // saves the state, deletions included
            tokio::time::sleep(OUTAGE).await;
            emu = start_emulator(api_addr, &state).await;
            cs = test_client(&emu);
        } else {
            tokio::time::sleep(OUTAGE).await;
            clear_once_rules(&emu).await;
        }
        let back = Instant::now();
        for name in &doomed_nodes {
            assert!(
                nodes.get_opt(name).await.expect("get").is_some(),
                "{name} deleted while the API was failing ({phase})"
            );
        }
        let r = measure(&nodes, phase, back, &doomed_nodes, &late, limit).await;
        eprintln!(
            "catch-up after {phase}: deleted servers' Nodes gone after {:.1?}, late Node initialized after {:.1?} (sync period {SYNC:?})",
            r.deleted, r.initialized
        );
        results.push(r);
    }

    // Nothing else was deleted.
    let left = nodes.list(&Default::default()).await.expect("list");
    assert_eq!(left.items.len(), NODES - 3 * DELETED + 3, "Nodes left");

    for r in &results {
        for d in &r.deleted {
            assert!(
                *d <= SYNC * 5,
                "after {}: a deleted server's Node went only after {d:.1?} (> 5 sync periods); all: {:?}",
                r.phase,
                results.iter().map(|r| (r.phase, &r.deleted, r.initialized)).collect::<Vec<_>>()
            );
        }
        // The first listing after the outage answers every pending lookup: the six go together,
        // not one listing (min-refresh-interval = sync period here) after another.
        let first = r.deleted.iter().min().expect("six");
        let last = r.deleted.iter().max().expect("six");
        assert!(
            *last - *first < SYNC,
            "after {}: the deleted servers' Nodes went {:.1?} apart (one listing should answer them all): {:?}",
            r.phase,
            *last - *first,
            r.deleted
        );
        assert!(
            r.initialized <= SYNC * 2,
            "after {}: the Node registered during the outage was initialized only after {:.1?} (> 2 sync periods)",
            r.phase,
            r.initialized
        );
    }

    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("controller stops")
        .expect("join")
        .expect("run ok");
}
