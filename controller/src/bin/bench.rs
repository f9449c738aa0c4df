//! Benchmark: N (default 1,000) Nodes registered at once against a real kube-apiserver, the real
//! controller binary initializing them from the emulator. Prints the time until the last Node is
//! initialized, the CloudSigma calls made (emulator counters) and the controller's peak RSS.
//!
//!   cargo build --release -p cloudsigma-controller --features bench --bins
//!   target/release/cloudsigma-controller-bench [NODES]
//! Targets: < 2 s, ≤ 1 servers listing per sync period, ≤ 64 MB.

use std::time::{Duration, Instant};

use cloudsigma_api::client::{Auth, Client, Config};
use cloudsigma_api::models::{Nic, ServerCreate};
use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit::{self, Cluster};
use cloudsim::{Emulator, EmulatorConfig, Timings};
use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (etcd, api) = testkit::binaries().map_err(anyhow::Error::msg)?;
    let ctl_bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("cloudsigma-controller"))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!("cloudsigma-controller binary not next to the bench; build with --bins")
        })?;
    let cluster = Cluster::start(&etcd, &api).map_err(anyhow::Error::msg)?;
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await?;
    let cs = Client::new(Config::for_url(
        &emu.api_url(),
        Auth::Basic {
            username: emu.username().into(),
            password: emu.password().into(),
        },
    )?)?;

    eprintln!("creating and starting {n} servers in the emulator ...");
    let uuids: Vec<String> = stream::iter(0..n)
        .map(|i| {
            let cs = cs.clone();
            async move {
                let s = cs
                    .create_server(&ServerCreate {
                        name: format!("bench-{i:04}"),
                        cpu: 2000,
                        mem: 2 << 30,
                        smp: Some(1),
                        vnc_password: "vncpass".into(),
                        nics: vec![Nic::public_dhcp()],
                        ..Default::default()
                    })
                    .await?;
                cs.start_server(&s.uuid).await?;
                anyhow::Ok(s.uuid)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    let port = testkit::free_port();
    let log = std::fs::File::create(cluster.dir.path().join("controller.log"))?;
    let mut child = tokio::process::Command::new(&ctl_bin)
        .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg(format!("--api-url={}", emu.api_url()))
        .args(["--region=zrh", "--sync-period=30s", "--leader-elect=false"])
        .arg(format!("--metrics-bind=127.0.0.1:{port}"))
        .env("CLOUDSIGMA_USERNAME", emu.username())
        .env("CLOUDSIGMA_PASSWORD", emu.password())
        .env("RUST_LOG", "warn")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("controller exited at once"))?;
    // Wait until the controller has its first listing (ready), then count from a clean slate.
    let t_ready = Instant::now();
    loop {
        let out = std::process::Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}/readyz")])
            .output()?;
        if out.stdout == b"ok" {
            break;
        }
        anyhow::ensure!(
            t_ready.elapsed() < Duration::from_secs(30),
            "controller not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, before) = emu.counters();

    let kube = cluster.client().await;
    let nodes: Api<Node> = Api::all(kube);
    eprintln!("registering {n} tainted Nodes ...");
    let t0 = Instant::now();
    let created: Vec<_> = stream::iter(uuids.iter().enumerate())
        .map(|(i, uuid)| {
            let nodes = nodes.clone();
            let pid = (i % 2 == 0).then(|| format!("cloudsigma://{uuid}"));
            async move {
                let node = testkit::tainted_node(&format!("bench-{i:04}"), pid.as_deref(), None);
                nodes.create(&PostParams::default(), &node).await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let registered = t0.elapsed();
    let failed = created.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} Node creations failed");

    let done_at = loop {
        let list = nodes.list(&ListParams::default()).await?;
        let pending = list
            .items
            .iter()
            .filter(|n| cloudsigma_controller::node::has_taint(n, TAINT_UNINITIALIZED))
            .count();
        if pending == 0 && list.items.len() == n {
            break t0.elapsed();
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "{pending} Nodes still uninitialized after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (_, after) = emu.counters();
    let mut calls: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    calls.sort();
    let total: u64 = calls.iter().map(|(_, v)| v).sum();

    println!("nodes:                       {n}");
    println!(
        "registration (64 parallel):  {:.3} s",
        registered.as_secs_f64()
    );
    println!(
        "time to last initialized:    {:.3} s  (target < 2 s)",
        done_at.as_secs_f64()
    );
    println!(
        "CloudSigma calls during run: {total}  (target: <= 1 servers listing per 30 s sync period)"
    );
    for (k, v) in &calls {
        println!("  {v:6}  {k}");
    }
    println!(
        "controller peak RSS:         {:.1} MB  (target <= 64 MB)",
        hwm_kb as f64 / 1024.0
    );

    let _ = child.kill().await;
    emu.shutdown().await;
    Ok(())
}
