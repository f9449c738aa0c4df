//! A dead Node-watch connection is noticed (issue 21 item 2), against a REAL kube-apiserver
//! (tests/kube/build.sh): a TCP proxy between the controller's watch client and the apiserver stops
//! forwarding on the open connections and keeps the sockets open (a peer that vanished), while the
//! request connection (Lease, Node writes) goes direct and stays healthy. A Node created after the
//! stall must still be initialized within the bound, over HTTP/1.1 (no PINGs: before, only
//! kube-runtime's 295 s bound) and HTTP/2.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_controller::apiserver::{self, Connections, Liveness};
use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit::{self, StallingProxy};
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, Timings};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tokio::sync::watch;

fn cs_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.timeout = Duration::from_secs(3);
    })
}

async fn config(kubeconfig: &std::path::Path) -> kube::Config {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config")
}

/// How long `name` took to lose its uninitialized taint, or `Err` after `within`.
async fn initialized_within(
    nodes: &Api<Node>,
    name: &str,
    within: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    loop {
        let n = nodes.get(name).await.expect("get node");
        if !cloudsigma_controller::node::has_taint(&n, TAINT_UNINITIALIZED) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            return Err(format!("{name} still tainted after {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_node_created_after_the_watch_stalled_is_initialized(http2: bool) {
    let test = format!("watch stall (http2 {http2})");
    let Some(cluster) = testkit::cluster_or_skip(&test) else {
        return;
    };
    let nodes: Api<Node> = Api::all(cluster.client().await);
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = cs_client(&emu);
    let proxy = StallingProxy::start(cluster.addr()).await.expect("proxy");
    let proxied = cluster
        .kubeconfig_for_url("watch-proxied", &proxy.url())
        .expect("kubeconfig");
    // Short bounds, so that the test takes seconds: a silent response body or a missing answer
    // is given up after 3 s, a PING after 1 s of silence must be answered within 1 s.
    let live = Liveness {
        ping_after_idle: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(1),
        idle: Duration::from_secs(3),
    };
    let kube = Connections {
        requests: apiserver::client_with_liveness(config(&cluster.kubeconfig).await, http2, live)
            .expect("requests client"),
        watch: apiserver::client_with_liveness(config(&proxied).await, http2, live)
            .expect("watch client"),
    };

    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(emu.api_url());
    o.leader_elect = false;
    o.sync_period = Duration::from_secs(10);
    o.min_refresh_interval = Duration::from_millis(200);
    o.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(o, kube, cs_client(&emu), Arc::new(Metrics::new()), rx));

    // The watch works through the proxy.
    testkit::server_and_tainted_node(&cs, &nodes, "before-stall").await;
    initialized_within(&nodes, "before-stall", Duration::from_secs(30))
        .await
        .expect("initialized through the proxy");

    // The watch's connection goes dead; the requests' connection stays healthy.
    let before = proxy.connections();
    proxy.stall_existing();
    testkit::server_and_tainted_node(&cs, &nodes, "after-stall").await;
    // The bound: 3 s of silence, the watcher's retry backoff (about 1 s), the resumed watch and
    // the two writes, with room for a loaded machine. kube-runtime alone would wait 295 s.
    let took = initialized_within(&nodes, "after-stall", Duration::from_secs(20)).await;
    let reconnected = proxy.connections() > before;

    tx.send(true).expect("shutdown");
    let stopped = tokio::time::timeout(Duration::from_secs(15), ctl).await;
    emu.shutdown().await;
    let took = took.unwrap_or_else(|e| {
        panic!("{test}: the stalled watch was not noticed: {e} (connections through the proxy: {before} before the stall, {} now)", proxy.connections())
    });
    eprintln!("{test}: Node created after the stall initialized after {took:?}");
    assert!(
        reconnected,
        "{test}: initialized after {took:?} but no new watch connection was opened"
    );
    stopped
        .expect("run() stops")
        .expect("join")
        .expect("run ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http1_watch_is_noticed_and_resumed() {
    a_node_created_after_the_watch_stalled_is_initialized(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_watch_is_noticed_and_resumed() {
    a_node_created_after_the_watch_stalled_is_initialized(true).await;
}
