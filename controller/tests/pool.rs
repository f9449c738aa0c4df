//! VLAN address pools (issue 22, docs/vlan-pools.md) with the whole controller (`run`) against a
//! REAL kube-apiserver (tests/kube/build.sh) and the emulator:
//! - two replicas on one Lease: only the holder assigns, no address is ever held twice, and
//!   after the holder is killed the other one takes over and assigns the rest;
//! - a Node on a pooled VLAN is initialized only with its assigned address as node IP; a wrong
//!   one keeps it tainted with a Warning naming the expected address and the meta key; a bad
//!   pool is reported on the Nodes of the servers on its VLAN; a Node whose server waits in a
//!   full pool waits too, tainted, with a `VLANPoolFull` Warning and no error; an initialized
//!   Node whose node IP changes away from its address gets a Warning and stays initialized.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::{Nic, Ref, ServerCreate};
use cloudsigma_api::pool::{assignment_key, assignment_mac, Assignment, POOL_KEY};
use cloudsigma_controller::node::{self, TAINT_UNINITIALIZED};
use cloudsigma_controller::testkit::{self, Cluster};
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, Timings};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

fn cs_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.timeout = Duration::from_secs(5);
    })
}

async fn emulator() -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator")
}

fn opts(emu: &EmulatorHandle) -> Options {
    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(emu.api_url());
    o.sync_period = Duration::from_secs(1);
    o.min_refresh_interval = Duration::from_millis(200);
    o.vlan_address_quarantine = Duration::from_secs(2);
    o.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    o
}

/// Leader-electing options on one shared Lease: 3 s lease, 2 s renew deadline, 300 ms retry.
fn leader_opts(emu: &EmulatorHandle, identity: &str) -> Options {
    let mut o = opts(emu);
    o.leader_elect = true;
    o.lease_namespace = "kube-system".into();
    o.lease_name = "pool-lease".into();
    o.identity = Some(identity.into());
    o.lease_duration = Duration::from_secs(3);
    o.renew_deadline = Duration::from_secs(2);
    o.retry_period = Duration::from_millis(300);
    o
}

async fn set_pool(cs: &Client, vlan: &str, pool: &str) {
    cs.modify_vlan_meta(vlan, |m| {
        m.insert(POOL_KEY.into(), pool.into());
        true
    })
    .await
    .expect("set the pool");
}

async fn vlan_server(cs: &Client, name: &str, vlan: &str, start: bool) -> String {
    let nic = Nic {
        vlan: Some(Ref::Uuid(vlan.into())),
        model: Some("virtio".into()),
        ..Default::default()
    };
    if start {
        return testkit::emulator_server_with_nics(cs, name, true, vec![Nic::public_dhcp(), nic])
            .await;
    }
    cs.create_server(&ServerCreate {
        name: name.into(),
        cpu: 1000,
        mem: 1 << 30,
        vnc_password: "vncpass".into(),
        nics: vec![nic],
        ..Default::default()
    })
    .await
    .expect("create server")
    .uuid
}

/// Every server's assignments (uuid → addresses) and the addresses held more than once.
async fn assignments(cs: &Client) -> (BTreeMap<String, Vec<Ipv4Addr>>, Vec<String>) {
    let mut by_server: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let mut holders: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for s in cs.list_servers().await.expect("list") {
        for (k, v) in &s.meta {
            if let (Some(_), Ok(a)) = (assignment_mac(k), Assignment::parse(v)) {
                by_server.entry(s.uuid.clone()).or_default().push(a.addr);
                holders.entry(a.addr).or_default().push(s.uuid.clone());
            }
        }
    }
    let dups = holders
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|(a, h)| format!("{a}: {h:?}"))
        .collect();
    (by_server, dups)
}

/// Waits until every server in `uuids` has an address, checking for duplicates at each look.
async fn wait_all_assigned(cs: &Client, uuids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (by_server, dups) = assignments(cs).await;
        assert!(dups.is_empty(), "duplicate addresses: {dups:?}");
        let missing = uuids.iter().filter(|u| !by_server.contains_key(*u)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} servers without an address after {within:?}",
            uuids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_lease_never_assign_the_same_address() {
    let Some(cluster) = testkit::cluster_or_skip("two replicas assign") else {
        return;
    };
    let kube = cluster.client().await;
    let emu = emulator().await;
    let cs = cs_client(&emu);
    let vlan = cs.list_vlans().await.expect("vlans")[0].uuid.clone();
    set_pool(&cs, &vlan, "192.168.77.0/24 192.168.77.10-192.168.77.250").await;

    let mut uuids = vec![];
    for i in 0..30 {
        uuids.push(vlan_server(&cs, &format!("first-{i}"), &vlan, false).await);
    }
    let (ma, mb) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let (_tx, rx) = watch::channel(false);
    let a = tokio::spawn(run(
        leader_opts(&emu, "replica-a"),
        kube.clone().into(),
        cs_client(&emu),
        ma.clone(),
        rx.clone(),
    ));
    let b = tokio::spawn(run(
        leader_opts(&emu, "replica-b"),
        kube.clone().into(),
        cs_client(&emu),
        mb.clone(),
        rx,
    ));
    wait_all_assigned(&cs, &uuids, Duration::from_secs(20)).await;
    let (leader, standby, lm, sm) = if ma.is_leader.get() == 1 {
        (a, b, ma, mb)
    } else {
        (b, a, mb, ma)
    };
    assert_eq!(sm.is_leader.get(), 0, "two leaders");
    assert_eq!(lm.addresses_assigned.get(), 30);
    assert_eq!(sm.addresses_assigned.get(), 0, "the standby assigned");

    // The holder dies; servers keep coming: the other replica takes the Lease and assigns them.
    leader.abort();
    for i in 0..30 {
        uuids.push(vlan_server(&cs, &format!("second-{i}"), &vlan, false).await);
    }
    // The 3 s lease must expire first.
    wait_all_assigned(&cs, &uuids, Duration::from_secs(20)).await;
    assert_eq!(sm.is_leader.get(), 1, "the standby never took over");
    assert_eq!(sm.addresses_assigned.get(), 30);
    let (by_server, _) = assignments(&cs).await;
    let mut all: Vec<Ipv4Addr> = by_server.values().flatten().copied().collect();
    all.sort();
    let want: Vec<Ipv4Addr> = (10u8..70).map(|i| Ipv4Addr::new(192, 168, 77, i)).collect();
    assert_eq!(all, want, "the lowest addresses, each once");
    standby.abort();
    emu.shutdown().await;
}

/// Events about `node` as "reason|note", one per Event.
fn events_of(cluster: &Cluster, node: &str) -> Vec<String> {
    cluster
        .events_about(node)
        .into_iter()
        .map(|e| format!("{}|{}", e.reason, e.note))
        .collect()
}

async fn wait_until<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_a_pooled_vlan_are_initialized_only_with_their_address() {
    let Some(cluster) = testkit::cluster_or_skip("pooled nodes") else {
        return;
    };
    let kube = cluster.client().await;
    let nodes: Api<Node> = Api::all(kube.clone());
    let emu = emulator().await;
    let cs = cs_client(&emu);
    let vlans = cs.list_vlans().await.expect("vlans");
    let (v1, v2) = (vlans[0].uuid.clone(), vlans[1].uuid.clone());
    set_pool(&cs, &v1, "192.168.77.0/24 192.168.77.10-192.168.77.20").await;
    set_pool(&cs, &v2, "192.168.78.0/33").await;
    let good = vlan_server(&cs, "good", &v1, true).await;
    let wrong = vlan_server(&cs, "wrong", &v1, true).await;
    vlan_server(&cs, "badpool", &v2, true).await;
    // The address is added to the server's meta, every other key kept (a PUT replaces it all).
    cs.modify_server_meta(&good, |m| {
        m.insert("cloudinit-user-data".into(), "#cloud-config\n".into());
        true
    })
    .await
    .expect("meta");

    let mut o = opts(&emu);
    o.leader_elect = false;
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        o,
        kube.clone().into(),
        cs_client(&emu),
        Arc::new(Metrics::new()),
        rx,
    ));
    // The addresses the controller wrote.
    let addr_of = |uuid: String| {
        let cs = cs.clone();
        async move {
            let s = cs.get_server(&uuid).await.ok()?;
            let mac = s.nics.iter().find(|n| n.vlan.is_some())?.mac.clone()?;
            let v = s.meta.get(&assignment_key(&mac))?.clone();
            Some((Assignment::parse(&v).ok()?.addr, assignment_key(&mac)))
        }
    };
    let (good_ip, _) = wait_until("good's address", Duration::from_secs(15), || {
        addr_of(good.clone())
    })
    .await;
    let (wrong_ip, wrong_key) = wait_until("wrong's address", Duration::from_secs(15), || {
        addr_of(wrong.clone())
    })
    .await;
    // Fill the pool (11 addresses): the next server waits, its Node with it.
    let mut fillers = vec![];
    for i in 0..9 {
        fillers.push(vlan_server(&cs, &format!("filler-{i}"), &v1, false).await);
    }
    wait_all_assigned(&cs, &fillers, Duration::from_secs(15)).await;
    vlan_server(&cs, "waiter", &v1, true).await;
    let kept = cs.get_server(&good).await.expect("good").meta;
    assert_eq!(
        kept.get("cloudinit-user-data").map(String::as_str),
        Some("#cloud-config\n"),
        "{kept:?}"
    );
    for (name, ip) in [
        ("waiter", "192.168.77.21".to_string()),
        ("good", good_ip.to_string()),
        ("wrong", "192.168.77.99".to_string()),
        ("badpool", "10.1.1.1".to_string()),
    ] {
        nodes
            .create(
                &PostParams::default(),
                &testkit::tainted_node(name, None, Some(&ip)),
            )
            .await
            .expect("create Node");
    }
    let initialized = |name: &'static str| {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get(name).await.ok()?;
            (!node::has_taint(&n, TAINT_UNINITIALIZED)).then_some(n)
        }
    };
    let n = wait_until("good initialized", Duration::from_secs(20), || {
        initialized("good")
    })
    .await;
    let internal = node::current_addresses(&n)
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address);
    assert_eq!(internal, Some(good_ip.to_string()));
    // The unusable pool is no pool: its Node is initialized as any VLAN Node, with a Warning.
    wait_until("badpool initialized", Duration::from_secs(20), || {
        initialized("badpool")
    })
    .await;
    let ev = wait_until("the Warnings", Duration::from_secs(20), || async {
        let w = events_of(&cluster, "wrong");
        let b = events_of(&cluster, "badpool");
        let ok = w.iter().any(|l| l.starts_with("VLANAddressMismatch|"))
            && b.iter().any(|l| l.starts_with("InvalidVLANPool|"));
        ok.then_some((w, b))
    })
    .await;
    let mismatch = ev.0.iter().find(|l| l.starts_with("VLANAddressMismatch|"));
    let mismatch = mismatch.expect("mismatch event");
    for what in [wrong_ip.to_string(), wrong_key, "192.168.77.99".into()] {
        assert!(mismatch.contains(&what), "{what:?} missing: {mismatch}");
    }
    let bad =
        ev.1.iter()
            .find(|l| l.starts_with("InvalidVLANPool|"))
            .expect("bad pool event");
    for what in [v2.as_str(), "192.168.78.0/33", "expected"] {
        assert!(bad.contains(what), "{what:?} missing: {bad}");
    }
    // A full pool: the Node waits, tainted, with a VLANPoolFull Warning and no error.
    let w = wait_until("the pool full Warning", Duration::from_secs(20), || async {
        let w = events_of(&cluster, "waiter");
        w.iter()
            .any(|l| l.starts_with("VLANPoolFull|"))
            .then_some(w)
    })
    .await;
    assert!(
        !w.iter().any(|l| l.starts_with("VLANAddressMismatch|")),
        "a Node waiting for its address got an error: {w:?}"
    );
    let n = nodes.get("waiter").await.expect("waiter");
    assert!(
        node::has_taint(&n, TAINT_UNINITIALIZED),
        "waiter was initialized"
    );
    let n = nodes.get("wrong").await.expect("wrong");
    assert!(
        node::has_taint(&n, TAINT_UNINITIALIZED),
        "wrong was initialized"
    );
    // An initialized Node whose node IP stops being its address: a Warning, nothing else.
    let patch = serde_json::json!({"metadata": {"annotations": {node::ANNOTATION_PROVIDED_IP: "192.168.77.98"}}});
    nodes
        .patch(
            "good",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotate good");
    let ev = wait_until(
        "good's mismatch Warning",
        Duration::from_secs(20),
        || async {
            let e = events_of(&cluster, "good");
            e.into_iter()
                .find(|l| l.starts_with("VLANAddressMismatch|"))
        },
    )
    .await;
    assert!(
        ev.contains(&good_ip.to_string()) && ev.contains("192.168.77.98"),
        "{ev}"
    );
    assert!(!ev.contains("uninitialized"), "{ev}");
    let n = nodes.get("good").await.expect("good");
    assert!(!node::has_taint(&n, TAINT_UNINITIALIZED));
    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(15), ctl)
        .await
        .expect("stops")
        .expect("join")
        .expect("run ok");
    emu.shutdown().await;
}
