//! Addresses of Nodes whose server has a VLAN NIC, against a REAL kube-apiserver
//! (tests/kube/build.sh) and the emulator (issue 24 item 3): the kubelet's provided node IP is the
//! InternalIP, the NAT address the ExternalIP; a VLAN server whose kubelet gave no node IP gets a
//! `NoVLANNodeIP` Warning, once; a server without VLAN is unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_controller::node::{self, TAINT_UNINITIALIZED};
use cloudsigma_controller::testkit::{self, Cluster};
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, Timings};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

fn cs_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.timeout = Duration::from_secs(3);
    })
}

/// Events about `node` as "reason|note|series count", one per Event.
fn events_of(cluster: &Cluster, node: &str) -> Vec<String> {
    cluster
        .events_about(node)
        .into_iter()
        .map(|e| {
            format!(
                "{}|{}|{}",
                e.reason,
                e.note,
                e.count.map(|c| c.to_string()).unwrap_or_default()
            )
        })
        .collect()
}

async fn wait_for(nodes: &Api<Node>, name: &str, what: &str, f: impl Fn(&Node) -> bool) -> Node {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = nodes.get(name).await.expect("get node");
        if f(&n) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: timed out waiting for {what}; node: {}",
            serde_json::to_string_pretty(&n).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn initialized(n: &Node) -> bool {
    !node::has_taint(n, TAINT_UNINITIALIZED)
}

fn addrs(n: &Node) -> Vec<(String, String)> {
    node::current_addresses(n)
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect()
}

fn pair(t: &str, a: &str) -> (String, String) {
    (t.to_string(), a.to_string())
}

async fn nat_ip(cs: &Client, uuid: &str) -> String {
    let s = cs.get_server(uuid).await.expect("get server");
    s.nics
        .iter()
        .find(|n| !n.is_private())
        .and_then(|n| n.runtime_ipv4())
        .expect("NAT IP of a running server")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlan_nodes_get_the_provided_ip_or_a_warning() {
    let Some(cluster) = testkit::cluster_or_skip("vlan_nodes_get_the_provided_ip_or_a_warning")
    else {
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

    // vlan-ip: VLAN NIC, kubelet --node-ip=10.20.0.5. vlan-none: VLAN NIC, no --node-ip.
    // plain: public NIC only, no --node-ip. vlan-stolen: VLAN NIC, --node-ip = plain's NAT IP.
    let vlan_ip = testkit::emulator_vlan_server(&cs, "vlan-ip").await;
    let vlan_none = testkit::emulator_vlan_server(&cs, "vlan-none").await;
    let plain = testkit::emulator_server(&cs, "plain", true).await;
    testkit::emulator_vlan_server(&cs, "vlan-stolen").await;
    let (nat_vlan_ip, nat_vlan_none, nat_plain) = (
        nat_ip(&cs, &vlan_ip).await,
        nat_ip(&cs, &vlan_none).await,
        nat_ip(&cs, &plain).await,
    );
    for (name, ip) in [
        ("vlan-ip", Some("10.20.0.5")),
        ("vlan-none", None),
        ("plain", None),
        ("vlan-stolen", Some(nat_plain.as_str())),
    ] {
        nodes
            .create(
                &PostParams::default(),
                &testkit::tainted_node(name, None, ip),
            )
            .await
            .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
    }

    use clap::Parser;
    let mut o = Options::parse_from(["cloudsigma-controller", "--region=zrh"]);
    o.api_url = Some(emu.api_url());
    o.leader_elect = false;
    // Every Node's re-sync runs each second: a Warning repeated per re-sync would show here.
    o.sync_period = Duration::from_secs(1);
    o.min_refresh_interval = Duration::from_millis(200);
    o.metrics_bind = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .expect("addr");
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(o, kube.clone().into(), cs_client(&emu), metrics, rx));

    let mut failures: Vec<String> = vec![];
    let n = wait_for(&nodes, "vlan-ip", "initialization", initialized).await;
    let want = vec![
        pair("InternalIP", "10.20.0.5"),
        pair("ExternalIP", &nat_vlan_ip),
        pair("Hostname", "vlan-ip"),
    ];
    if addrs(&n) != want {
        failures.push(format!("vlan-ip: addresses {:?}, want {want:?}", addrs(&n)));
    }
    let n = wait_for(&nodes, "plain", "initialization", initialized).await;
    let want = vec![
        pair("InternalIP", &nat_plain),
        pair("ExternalIP", &nat_plain),
        pair("Hostname", "plain"),
    ];
    if addrs(&n) != want {
        failures.push(format!("plain: addresses {:?}, want {want:?}", addrs(&n)));
    }
    // Initialized as upstream initializes a Node the cloud has no address for kubelet's choice:
    // ExternalIP only, and a Warning saying what to do.
    let n = wait_for(&nodes, "vlan-none", "initialization", initialized).await;
    let want = vec![
        pair("ExternalIP", &nat_vlan_none),
        pair("Hostname", "vlan-none"),
    ];
    if addrs(&n) != want {
        failures.push(format!(
            "vlan-none: addresses {:?}, want {want:?}",
            addrs(&n)
        ));
    }

    // Several re-syncs (1 s each) pass: the Warning must be there, recorded once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ev = events_of(&cluster, "vlan-none");
    let warnings: Vec<&String> = ev
        .iter()
        .filter(|l| l.starts_with("NoVLANNodeIP|"))
        .collect();
    match warnings.as_slice() {
        [one] => {
            for what in [vlan_none.as_str(), "--node-ip", "DHCP", "no InternalIP"] {
                if !one.contains(what) {
                    failures.push(format!(
                        "vlan-none: the Warning does not say {what:?}: {one}"
                    ));
                }
            }
            if !one.ends_with('|') {
                failures.push(format!(
                    "vlan-none: the Warning was repeated (series count) within the repeat interval: {one}"
                ));
            }
        }
        _ => failures.push(format!(
            "vlan-none: want one NoVLANNodeIP Event, events: {ev:#?}"
        )),
    }
    for quiet in ["vlan-ip", "plain"] {
        let ev = events_of(&cluster, quiet);
        if !ev.is_empty() {
            failures.push(format!("{quiet}: unexpected Events {ev:#?}"));
        }
    }

    // Another server's public address is refused as a VLAN address: tainted, InvalidNodeIP.
    let n = nodes.get("vlan-stolen").await.expect("vlan-stolen");
    if initialized(&n) {
        failures.push(format!(
            "vlan-stolen: initialized with another server's NAT IP {nat_plain}: {:?}",
            addrs(&n)
        ));
    }
    let ev = events_of(&cluster, "vlan-stolen");
    if !ev
        .iter()
        .any(|l| l.starts_with("InvalidNodeIP|") && l.contains(&plain))
    {
        failures.push(format!(
            "vlan-stolen: no InvalidNodeIP Event naming {plain}: {ev:#?}"
        ));
    }

    // kubelet restarted with --node-ip: the re-sync adds the InternalIP.
    let patch = serde_json::json!({"metadata": {"annotations": {node::ANNOTATION_PROVIDED_IP: "10.20.0.6"}}});
    nodes
        .patch("vlan-none", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate vlan-none");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = nodes.get("vlan-none").await.expect("vlan-none");
        if addrs(&n).first() == Some(&pair("InternalIP", "10.20.0.6")) {
            break;
        }
        if Instant::now() > deadline {
            failures.push(format!(
                "vlan-none: no InternalIP after kubelet provided one: {:?}",
                addrs(&n)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
