//! `--cluster-tag` (issue 25 item 5), against a REAL kube-apiserver (tests/kube/build.sh) and the
//! emulator: the controller lists only the servers carrying the cluster's tag, a Node whose server
//! lacks or lost the tag is kept (a direct GET finds the server) with a `ServerNotTagged` Warning,
//! and it is deleted only once that GET answers 404; without VLAN pools no account-wide server
//! listing is made at all. A tag name that matches nothing stops the start with an error naming it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::{Ref, ServerStatus, TagCreate};
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

fn options(emu: &EmulatorHandle, tag: &str) -> Options {
    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(emu.api_url());
    o.leader_elect = false;
    o.cluster_tag = Some(tag.into());
    o.sync_period = Duration::from_secs(2);
    o.min_refresh_interval = Duration::from_secs(1);
    o.ready_listing_max_age = Duration::from_secs(10);
    o.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    o
}

/// "reason note" of the Events about `node`.
fn events_of(cluster: &Cluster, node: &str) -> Vec<String> {
    cluster
        .events_about(node)
        .into_iter()
        .map(|e| format!("{} {}", e.reason, e.note))
        .collect()
}

async fn eventually<F: Fn() -> Option<T>, T>(what: &str, within: Duration, f: F) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn node(nodes: &Api<Node>, name: &str) -> Option<Node> {
    nodes.get_opt(name).await.expect("get node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_scoped_controller_lists_the_cluster_and_keeps_nodes_of_untagged_servers() {
    let Some(cluster) = testkit::cluster_or_skip("scope") else {
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

    // A name that matches no tag: the start fails, naming it.
    let (_tx0, rx0) = watch::channel(false);
    let e = run(
        options(&emu, "no-such-cluster"),
        kube.clone().into(),
        cs_client(&emu),
        Arc::new(Metrics::new()),
        rx0,
    )
    .await
    .expect_err("an unknown tag name must stop the start");
    assert!(format!("{e:#}").contains("\"no-such-cluster\""), "{e:#}");

    let mine = testkit::emulator_server(&cs, "mine-1", true).await;
    let lost = testkit::emulator_server(&cs, "lost-1", true).await;
    let other = testkit::emulator_server(&cs, "other-1", true).await;
    let mut tag = cs
        .create_tag(&TagCreate {
            name: "cluster-a".into(),
            resources: vec![Ref::from(mine.as_str()), Ref::from(lost.as_str())],
            meta: Default::default(),
        })
        .await
        .expect("tag");
    for (name, uuid) in [("mine-1", &mine), ("lost-1", &lost), ("other-1", &other)] {
        let pid = format!("cloudsigma://{uuid}");
        nodes
            .create(
                &PostParams::default(),
                &testkit::tainted_node(name, Some(&pid), None),
            )
            .await
            .expect("node");
    }
    emu.reset_counters();

    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        options(&emu, "cluster-a"),
        kube.clone().into(),
        cs_client(&emu),
        metrics.clone(),
        rx,
    ));
    let initialized = |n: &Option<Node>| {
        n.as_ref()
            .is_some_and(|n| !cloudsigma_controller::node::has_taint(n, TAINT_UNINITIALIZED))
    };
    for name in ["mine-1", "lost-1"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !initialized(&node(&nodes, name).await) {
            assert!(Instant::now() < deadline, "{name} never initialized");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // other-1's server exists but is another cluster's: the Node stays tainted, and says why.
    let ev = eventually("other-1 ServerNotTagged", Duration::from_secs(20), || {
        let ev = events_of(&cluster, "other-1");
        ev.iter()
            .any(|l| {
                l.starts_with("ServerNotTagged ") && l.contains("does not carry tag cluster-a")
            })
            .then_some(ev)
    })
    .await;
    assert!(ev.iter().all(|l| !l.contains("ServerNotFound")), "{ev:#?}");
    assert!(!initialized(&node(&nodes, "other-1").await));

    // lost-1's server loses the tag: its Node is kept, with a Warning naming server and tag.
    tag.resources = vec![Ref::from(mine.as_str())];
    cs.update_tag(&tag).await.expect("untag lost-1");
    eventually("lost-1 ServerNotTagged", Duration::from_secs(20), || {
        events_of(&cluster, "lost-1")
            .iter()
            .any(|l| {
                l.starts_with("ServerNotTagged ")
                    && l.contains(&format!("server {lost} no longer carries tag cluster-a"))
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // more than one sync period
    assert!(node(&nodes, "lost-1").await.is_some(), "lost-1 deleted");

    // Its server deleted: GET answers 404, and only now the Node goes.
    cs.stop_server(&lost).await.expect("stop");
    cs.wait_server_status(&lost, ServerStatus::Stopped, Duration::from_secs(10))
        .await
        .expect("stopped");
    cs.delete_server(&lost, None).await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(20);
    while node(&nodes, "lost-1").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "lost-1 not deleted after its server"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(node(&nodes, "mine-1").await.is_some());

    // Every listing was the tag's; without VLAN pools nothing listed the account's servers.
    let (_, counters) = emu.counters();
    let tagged = counters
        .get("GET /api/2.0/tags/{uuid}/servers/detail/")
        .copied()
        .unwrap_or(0);
    assert!(tagged >= 1, "{counters:#?}");
    assert!(
        !counters
            .keys()
            .any(|k| k.starts_with("GET /api/2.0/servers/detail")),
        "an account-wide listing was made: {counters:#?}"
    );

    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(15), ctl)
        .await
        .expect("stops")
        .expect("join")
        .expect("run ok");
    emu.shutdown().await;
}
