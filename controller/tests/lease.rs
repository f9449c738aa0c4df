//! Leader election against a REAL kube-apiserver (tests/kube/build.sh): a stalled apiserver
//! connection, a slow CloudSigma API during the first listing, and expiry judged by local
//! observation as client-go does (see src/leader.rs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_controller::leader::{Attempt, Elector, LeaseConfig};
use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit::{self, StallingProxy};
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, FaultConfig, Timings};
use k8s_openapi::api::coordination::v1::Lease;
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

fn cs_client(emu: &EmulatorHandle, timeout: Duration) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.retry.max_attempts = 2;
        cfg.retry.base_delay = Duration::from_millis(50);
        cfg.timeout = timeout;
    })
}

/// Leader-electing options with a short lease: 3 s lease, 2 s renew deadline, 300 ms retry.
fn leader_opts(api_url: &str, identity: &str) -> Options {
    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(api_url.into());
    o.sync_period = Duration::from_secs(30);
    o.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    o.leader_elect = true;
    o.lease_namespace = "kube-system".into();
    o.lease_name = format!("lease-{identity}");
    o.identity = Some(identity.into());
    o.lease_duration = Duration::from_secs(3);
    o.renew_deadline = Duration::from_secs(2);
    o.retry_period = Duration::from_millis(300);
    o
}

fn lease_cfg(name: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: name.into(),
        namespace: "kube-system".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

async fn wait_holder(leases: &Api<Lease>, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while holder(leases, name).await.as_deref() != Some(want) {
        assert!(Instant::now() < deadline, "{want} never took Lease {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue #10 item 5: the old renew had no timeout, so a leader whose apiserver connection
/// stalled kept reconciling long after its renew deadline (the request hung for the client's
/// 295 s read timeout). Now every renewal is cut off at the deadline and the leader stops before
/// the lease duration is over, i.e. before any other replica may take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_behind_a_stalled_apiserver_stops_within_its_renew_deadline() {
    let Some(cluster) = testkit::cluster_or_skip("stalled apiserver") else {
        return;
    };
    let admin = cluster.client().await;
    let proxy = StallingProxy::start(cluster.addr()).await.expect("proxy");
    let proxied = testkit::client_for(
        &cluster
            .kubeconfig_for_url("proxied", &proxy.url())
            .expect("kubeconfig"),
    )
    .await;
    let emu = emulator().await;
    let cs = cs_client(&emu, Duration::from_secs(3));
    let nodes: Api<Node> = Api::all(admin.clone());
    testkit::server_and_tainted_node(&cs, &nodes, "stall-1").await;

    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        leader_opts(&emu.api_url(), "stalled-leader"),
        proxied.into(),
        cs_client(&emu, Duration::from_secs(3)),
        metrics.clone(),
        rx,
    ));
    // Leading and working: the Node gets initialized through the proxy.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = nodes.get("stall-1").await.expect("node");
        if !cloudsigma_controller::node::has_taint(&n, TAINT_UNINITIALIZED) {
            break;
        }
        assert!(Instant::now() < deadline, "never initialized");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metrics.is_leader.get(), 1);

    proxy.stall();
    let stalled_at = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("run() must end once the renew deadline passes, not hang on the stalled connection")
        .expect("join");
    let took = stalled_at.elapsed();
    let err = format!("{:#}", res.expect_err("losing leadership is an error"));
    assert!(err.contains("lost leadership"), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "stopped {took:?} after the stall: not before the 3 s lease could be taken by another"
    );
    assert_eq!(metrics.is_leader.get(), 0);
    emu.shutdown().await;
}

/// Issue #10 item 6: nothing renewed the Lease between acquiring it and the end of the first
/// CloudSigma listing. With a listing slower than the lease duration, a rival could take the
/// Lease while the first leader went on to reconcile. Now renewal starts at acquisition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_while_the_first_listing_is_slow() {
    let Some(cluster) = testkit::cluster_or_skip("slow first listing") else {
        return;
    };
    let kube = cluster.client().await;
    let leases: Api<Lease> = Api::namespaced(kube.clone(), "kube-system");
    let emu = emulator().await;
    // Every CloudSigma answer takes 5 s: longer than the 3 s lease.
    emu.set_faults(FaultConfig {
        latency_ms: 5000,
        ..Default::default()
    });
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let opts = leader_opts(&emu.api_url(), "slow-leader");
    let lease_name = opts.lease_name.clone();
    let ctl = tokio::spawn(run(
        opts,
        kube.clone().into(),
        cs_client(&emu, Duration::from_secs(20)),
        metrics.clone(),
        rx,
    ));
    wait_holder(&leases, &lease_name, "slow-leader").await;

    // A rival candidate tries for 4.5 s (> the 3 s lease) while the listing is still pending.
    let rival = Elector::new(kube.clone(), lease_cfg(&lease_name, "rival"));
    let until = Instant::now() + Duration::from_millis(4500);
    let mut renewals = std::collections::BTreeSet::new();
    while Instant::now() < until {
        let a = rival.try_acquire_or_renew().await.expect("rival attempt");
        assert_eq!(
            a,
            Attempt::HeldBy("slow-leader".into()),
            "the rival took the Lease during the slow first listing"
        );
        let l = leases.get(&lease_name).await.expect("lease");
        renewals.insert(format!("{:?}", l.spec.and_then(|s| s.renew_time)));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(renewals.len() >= 5, "renewTime barely moved: {renewals:?}");
    assert_eq!(metrics.is_leader.get(), 1);
    assert_eq!(
        metrics.api_calls_total("list_servers"),
        0,
        "the first listing should still be pending (5 s latency)"
    );
    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(30), ctl)
        .await
        .expect("stops")
        .expect("join")
        .expect("run ok");
    emu.shutdown().await;
}

/// client-go measures expiry from when a candidate *observed* the record, on its own clock. The
/// old code compared the Lease's renewTime with the local wall clock, so a holder whose clock is
/// behind (or a record written long ago by a skewed clock) was overtaken at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_timed_from_local_observation_not_the_lease_timestamps() {
    let Some(cluster) = testkit::cluster_or_skip("local observation") else {
        return;
    };
    let kube = cluster.client().await;
    let leases: Api<Lease> = Api::namespaced(kube.clone(), "kube-system");
    // Another holder, with a clock an hour behind ours, that keeps renewing.
    let skewed = |ms: i64| k8s_openapi::api::coordination::v1::LeaseSpec {
        holder_identity: Some("other".into()),
        lease_duration_seconds: Some(3),
        renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now()
                - k8s_openapi::jiff::SignedDuration::from_secs(3600)
                + k8s_openapi::jiff::SignedDuration::from_millis(ms),
        )),
        ..Default::default()
    };
    let l = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("skewed".into()),
            ..Default::default()
        },
        spec: Some(skewed(0)),
    };
    leases
        .create(&PostParams::default(), &l)
        .await
        .expect("create");
    let me = Elector::new(kube.clone(), lease_cfg("skewed", "me"));
    // While "other" keeps renewing (every 500 ms, for 4 s > the 3 s lease), it is not expired.
    let t0 = Instant::now();
    let mut k = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            me.try_acquire_or_renew().await.expect("attempt"),
            Attempt::HeldBy("other".into()),
            "took a Lease that its holder keeps renewing, {:?} in",
            t0.elapsed()
        );
        k += 1;
        let mut cur = leases.get("skewed").await.expect("get");
        cur.spec = Some(skewed(k * 500));
        leases
            .replace("skewed", &PostParams::default(), &cur)
            .await
            .expect("renew as other");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // "other" stops: the Lease is ours 3 s after we last saw it change, not earlier.
    let stopped = Instant::now();
    loop {
        match me.try_acquire_or_renew().await.expect("attempt") {
            Attempt::Held => break,
            _ => {
                assert!(stopped.elapsed() < Duration::from_secs(8), "never expired");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(
        stopped.elapsed() >= Duration::from_millis(2400),
        "taken {:?} after the last renewal seen",
        stopped.elapsed()
    );
    assert_eq!(holder(&leases, "skewed").await.as_deref(), Some("me"));
}

/// Issue #12 item 8: the Node watch and the first CloudSigma listing start while the Lease is
/// still being taken, so that a new leader does not begin with both round trips. What that must
/// not change: a standby writes nothing, and acts on the Node as it is when it takes over, not
/// on the copy it saw while waiting; a shutdown while standing by ends the run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_watches_ahead_but_writes_nothing_until_it_holds_the_lease() {
    let Some(cluster) = testkit::cluster_or_skip("standby") else {
        return;
    };
    let emu = emulator().await;
    let cs = cs_client(&emu, Duration::from_secs(5));
    let kube = cluster.client().await;
    let leases: Api<Lease> = Api::namespaced(kube.clone(), "kube-system");
    let nodes: Api<Node> = Api::all(kube.clone());
    // Held by another replica for an hour.
    let held = |name: &str| Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(3600),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..Default::default()
        }),
    };
    let uuid = testkit::server_and_tainted_node(&cs, &nodes, "standby-worker").await;
    let opts = leader_opts(&emu.api_url(), "standby");
    leases
        .create(&PostParams::default(), &held(&opts.lease_name))
        .await
        .expect("lease");
    let lease_name = opts.lease_name.clone();
    emu.reset_counters();
    let metrics = Arc::new(Metrics::new());
    let (stop, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        opts,
        kube.clone().into(),
        cs.clone(),
        metrics.clone(),
        rx,
    ));

    // Standing by: a leader initializes a Node in well under a second here; 3 s pass untouched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = nodes.get("standby-worker").await.expect("get");
    assert!(
        cloudsigma_controller::node::has_taint(&n, TAINT_UNINITIALIZED),
        "a standby initialized a Node"
    );
    assert_eq!(n.spec.as_ref().and_then(|s| s.provider_id.clone()), None);
    let m = metrics.render();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("cloudsigma_controller_reconciles_total") && !l.ends_with(" 0")),
        "a standby counted reconciles:\n{m}"
    );
    assert!(m.contains("cloudsigma_controller_leader 0"), "{m}");
    // The listing ran ahead, once.
    let listings = emu
        .counters()
        .1
        .get("GET /api/2.0/servers/detail/")
        .copied()
        .unwrap_or(0);
    assert!(
        listings >= 1,
        "no CloudSigma listing while standing by: {:?}",
        emu.counters().1
    );

    // Changed while the standby waits: the Node it acts on once leading must be this one.
    nodes
        .patch(
            "standby-worker",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"changed-while-standing-by": "yes"}}}),
            ),
        )
        .await
        .expect("label");
    // The other replica goes away: this one takes over and initializes the Node.
    leases
        .delete(&lease_name, &Default::default())
        .await
        .expect("release");
    let took_over = Instant::now();
    let n = loop {
        let n = nodes.get("standby-worker").await.expect("get");
        if !cloudsigma_controller::node::has_taint(&n, TAINT_UNINITIALIZED) {
            break n;
        }
        assert!(
            took_over.elapsed() < Duration::from_secs(5),
            "not initialized 5 s after the Lease was free"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        n.spec.as_ref().and_then(|s| s.provider_id.clone()),
        Some(format!("cloudsigma://{uuid}"))
    );
    assert_eq!(
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("changed-while-standing-by"))
            .map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        holder(&leases, &lease_name).await.as_deref(),
        Some("standby")
    );
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("a leader shuts down gracefully")
        .expect("join")
        .expect("run");

    // A second replica that never leads: a shutdown ends it at once, although its reconciles
    // wait for a Lease that will not come.
    let opts = leader_opts(&emu.api_url(), "never-leads");
    leases
        .create(&PostParams::default(), &held(&opts.lease_name))
        .await
        .expect("lease");
    let (stop, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        opts,
        kube.clone().into(),
        cs,
        Arc::new(Metrics::new()),
        rx,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(3), ctl)
        .await
        .expect("a standby stops at once on shutdown")
        .expect("join")
        .expect("run");
}

/// Issue 21 item 9: the default identity was `hostname_pid`. Under hostNetwork two Pods on one
/// node share the hostname and each container's process is pid 1, so both replicas had one
/// identity, and each took the other's Lease for its own: two leaders. Two replicas in this one
/// process (same hostname, same pid, no `--identity`) reproduce that; now each identity carries a
/// random uuid and exactly one leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_default_identities_on_one_host_never_both_lead() {
    let Some(cluster) = testkit::cluster_or_skip("default identities") else {
        return;
    };
    let emu = emulator().await;
    let leases: Api<Lease> = Api::namespaced(cluster.client().await, "kube-system");
    let (tx, rx) = watch::channel(false);
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let mut o = leader_opts(&emu.api_url(), "unused");
            o.identity = None;
            o.lease_name = "lease-default-identity".into();
            (o, Arc::new(Metrics::new()))
        })
        .collect();
    let mut tasks = Vec::new();
    for (o, m) in &replicas {
        tasks.push(tokio::spawn(run(
            o.clone(),
            cluster.client().await.into(),
            cs_client(&emu, Duration::from_secs(3)),
            m.clone(),
            rx.clone(),
        )));
    }
    let leading = || {
        replicas
            .iter()
            .filter(|(_, m)| m.is_leader.get() == 1)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while leading() == 0 {
        assert!(Instant::now() < deadline, "nobody took the Lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Longer than the lease (3 s): a second replica believing it holds the Lease would show.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            leading(),
            1,
            "both replicas lead; Lease holder {:?}",
            holder(&leases, "lease-default-identity").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = holder(&leases, "lease-default-identity")
        .await
        .expect("holder");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let pod = std::env::var("POD_NAME").unwrap_or_default();
    let readable = if pod.is_empty() {
        host.trim()
    } else {
        pod.as_str()
    };
    assert!(h.starts_with(&format!("{readable}_")), "holder {h}");
    eprintln!("Lease held by {h}");

    tx.send(true).expect("shutdown");
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
}
