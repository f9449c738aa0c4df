//! Benchmark: N (default 1,000) Nodes registered at once against a real kube-apiserver, the real
//! controller binary initializing them from the emulator. Prints the time until the last Node is
//! initialized (seen by an independent watch), the CloudSigma calls made (emulator counters) and
//! the controller's peak RSS.
//!
//!   cargo bench -p cloudsigma-controller --bench initialize -- [NODES] [--streaming] [--<controller flag>=...]
//!
//! Default: the Nodes are all registered, then the controller starts (timed from its start).
//! `--streaming`: the controller runs first and the Nodes arrive 64 at a time.
//! Targets: within 1.15× of the apiserver floor (printed as a ratio), ≤ 1 servers listing per
//! sync period, ≤ 64 MB.

use std::time::{Duration, Instant};

use cloudsigma_api::client::{Auth, Client, Config};
use cloudsigma_api::models::{Nic, ServerCreate};
use cloudsigma_controller::node::TAINT_UNINITIALIZED;
use cloudsigma_controller::testkit::{self, Cluster};
use cloudsim::{Emulator, EmulatorConfig, Timings};
use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use std::collections::HashSet;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// All Nodes exist before the controller starts; timed from its start.
    Preregistered,
    /// The controller runs; Nodes are registered 64 at a time; timed from the first registration.
    Streaming,
}

/// `apiserver_request_total` for nodes and events, keyed "VERB resource[/subresource] code".
fn apiserver_requests(cluster: &Cluster) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(text) = cluster.kubectl(&["get", "--raw", "/metrics"]) else {
        return out;
    };
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let resource = label("resource");
        if resource != "nodes" && resource != "events" {
            continue;
        }
        let sub = label("subresource");
        let key = format!(
            "{} {}{}{} {}",
            label("verb"),
            resource,
            if sub.is_empty() { "" } else { "/" },
            sub,
            label("code")
        );
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// When the first and the last of the Nodes named `<prefix>-NNNN` (`n` of them) lost their
/// uninitialized taint, as seen by a watch. `ready` fires once the watch is established, so the
/// clock is not started before the observer is in place.
async fn initialized(
    nodes: Api<Node>,
    prefix: &'static str,
    n: usize,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<(Instant, Instant)> {
    let mut pending: HashSet<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    let mut ready = Some(ready);
    let mut first = None;
    let mut events = std::pin::pin!(watcher(nodes, watcher::Config::default()));
    while let Some(ev) = events.try_next().await? {
        let node = match ev {
            watcher::Event::InitDone => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                continue;
            }
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => n,
            _ => continue,
        };
        if !cloudsigma_controller::node::has_taint(&node, TAINT_UNINITIALIZED) {
            let name = node.metadata.name.unwrap_or_default();
            if pending.remove(&name) {
                let now = Instant::now();
                let first = *first.get_or_insert(now);
                if pending.is_empty() {
                    return Ok((first, now));
                }
            }
        }
    }
    anyhow::bail!("the Node watch ended with {} Nodes pending", pending.len())
}

/// The floor: the controller's two writes per Node (status patch, then an Update removing the
/// taint) from a bare client with the controller's parallelism, on `n` fresh Nodes. With
/// `observed`, the bench's own watch runs as during the controller run (an apiserver watcher
/// costs it CPU for every event), so both sides are measured under the same observation.
async fn floor(
    nodes: &Api<Node>,
    prefix: &'static str,
    n: usize,
    observed: bool,
) -> anyhow::Result<Duration> {
    let fresh: Vec<_> = stream::iter(0..n)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let node = testkit::tainted_node(&format!("{prefix}-{i:04}"), None, None);
                nodes.create(&PostParams::default(), &node).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    anyhow::ensure!(
        fresh.iter().all(|r| r.is_ok()),
        "floor Node creation failed"
    );
    let watch = if observed {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = tokio::spawn(initialized(nodes.clone(), prefix, n, tx));
        rx.await?;
        Some(h)
    } else {
        None
    };
    let t_floor = Instant::now();
    let written: Vec<_> = stream::iter(0..n)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let name = format!("{prefix}-{i:04}");
                let addrs = serde_json::json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": format!("10.1.{}.{}", i / 250, i % 250 + 1)},
                    {"type": "ExternalIP", "address": format!("10.2.{}.{}", i / 250, i % 250 + 1)},
                    {"type": "Hostname", "address": name},
                ]}});
                let mut cur = nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&addrs))
                    .await?;
                let spec = cur.spec.get_or_insert_with(Default::default);
                spec.provider_id = Some(format!("cloudsigma://{prefix}-{i}"));
                spec.taints = None;
                cur.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(
                        "node.kubernetes.io/instance-type".into(),
                        "c2000-m2048".into(),
                    );
                nodes.replace(&name, &PostParams::default(), &cur).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    anyhow::ensure!(written.iter().all(|r| r.is_ok()), "floor writes failed");
    // Observed: done when the watch has seen the last write, as for the controller run.
    let done = match watch {
        Some(h) => h.await??.1,
        None => Instant::now(),
    };
    Ok(done.duration_since(t_floor))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut n = 1000usize;
    let mut mode = Mode::Preregistered;
    let mut extra_args = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--streaming" => mode = Mode::Streaming,
            "--bench" => {} // added by `cargo bench`
            a if a.starts_with("--") => extra_args.push(a.to_string()), // passed to the controller
            a => {
                n = a.parse().map_err(|_| {
                    anyhow::anyhow!("usage: cargo bench -p cloudsigma-controller --bench initialize -- [NODES] [--streaming] [--controller-flag=...]")
                })?
            }
        }
    }
    let (etcd, api) = testkit::binaries().map_err(anyhow::Error::msg)?;
    // The real controller binary, built by cargo alongside this bench.
    let ctl_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cloudsigma-controller"));
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

    let kube = cluster.client().await;
    let nodes: Api<Node> = Api::all(kube);
    let register = |nodes: Api<Node>| {
        let uuids = uuids.clone();
        async move {
            let t = Instant::now();
            let created: Vec<_> = stream::iter(uuids.iter().enumerate())
                .map(|(i, uuid)| {
                    let nodes = nodes.clone();
                    // Half by providerID, half by name: both lookups are exercised.
                    let pid = (i % 2 == 0).then(|| format!("cloudsigma://{uuid}"));
                    async move {
                        let node =
                            testkit::tainted_node(&format!("bench-{i:04}"), pid.as_deref(), None);
                        nodes.create(&PostParams::default(), &node).await
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            let failed = created.iter().filter(|r| r.is_err()).count();
            anyhow::ensure!(failed == 0, "{failed} Node creations failed");
            anyhow::Ok(t.elapsed())
        }
    };

    // Registered before the controller starts: the burst is all there when it comes up, and the
    // clock runs from the controller's start, so the figure is the controller's alone.
    let registered = if mode == Mode::Preregistered {
        eprintln!("registering {n} tainted Nodes before the controller starts ...");
        Some(register(nodes.clone()).await?)
    } else {
        None
    };
    // The bench watches (one stream) rather than re-listing 1,000 Nodes in a loop: a tight LIST
    // loop costs the apiserver more CPU than the controller's own writes.
    let (watching, watch_ready) = tokio::sync::oneshot::channel();
    let all_initialized = tokio::spawn(initialized(nodes.clone(), "bench", n, watching));
    watch_ready.await?;

    let port = testkit::free_port();
    let log = std::fs::File::create(cluster.dir.path().join("controller.log"))?;
    let (_, before) = emu.counters();
    let kube_before = apiserver_requests(&cluster);
    let t_start = Instant::now();
    let mut child = tokio::process::Command::new(&ctl_bin)
        .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg(format!("--api-url={}", emu.api_url()))
        // As deployed: leader election on, so taking the Lease is part of the figure.
        .args(["--region=zrh", "--sync-period=30s", "--leader-elect=true"])
        .arg(format!("--identity=bench-{}", std::process::id()))
        .env("POD_NAMESPACE", "kube-system")
        .arg(format!("--metrics-bind=127.0.0.1:{port}"))
        .args(extra_args)
        .env("CLOUDSIGMA_USERNAME", emu.username())
        .env("CLOUDSIGMA_PASSWORD", emu.password())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("controller exited at once"))?;
    // BENCH_APISERVER_PROFILE=FILE: a 2 s CPU profile of kube-apiserver during the burst
    // (`go tool pprof -top FILE`), to see where the apiserver spends it.
    let profile = std::env::var_os("BENCH_APISERVER_PROFILE").map(|path| {
        let kubeconfig = cluster.kubeconfig.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let out = testkit::kubectl()
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "--raw", "/debug/pprof/profile?seconds=2"])
                .output();
            match out {
                Ok(o) if o.status.success() => std::fs::write(&path, o.stdout).is_ok(),
                _ => false,
            }
        })
    });

    let mut reg_line = String::new();
    let t0 = if mode == Mode::Streaming {
        // Wait until the controller has its first listing (ready), then register the burst.
        loop {
            let out = std::process::Command::new("curl")
                .args(["-s", &format!("http://127.0.0.1:{port}/readyz")])
                .output()?;
            if out.stdout == b"ok" {
                break;
            }
            anyhow::ensure!(
                t_start.elapsed() < Duration::from_secs(30),
                "controller not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("registering {n} tainted Nodes while the controller runs ...");
        let t0 = Instant::now();
        let took = register(nodes.clone()).await?;
        reg_line = format!(
            "registration (64 parallel):  {:.3} s  (controller running)",
            took.as_secs_f64()
        );
        t0
    } else {
        t_start
    };
    if let Some(took) = registered {
        reg_line = format!(
            "registration (64 parallel):  {:.3} s  (before the controller started)",
            took.as_secs_f64()
        );
    }
    let (first_at, done_at) =
        match tokio::time::timeout(Duration::from_secs(120), all_initialized).await {
            Ok(r) => r??,
            Err(_) => anyhow::bail!("Nodes still uninitialized after 120 s"),
        };
    let first_at = first_at.duration_since(t0);
    let done_at = done_at.duration_since(t0);

    if let Some(h) = profile {
        if h.join().unwrap_or(false) {
            println!("kube-apiserver CPU profile written (BENCH_APISERVER_PROFILE)");
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (_, after) = emu.counters();
    let kube_after = apiserver_requests(&cluster);
    let mut calls: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    calls.sort();
    let total: u64 = calls.iter().map(|(_, v)| v).sum();

    println!("nodes:                       {n}");
    println!("{reg_line}");
    println!(
        "time to last initialized:    {:.3} s  (from {}; target < 2 s)",
        done_at.as_secs_f64(),
        match mode {
            Mode::Preregistered => "the controller's start",
            Mode::Streaming => "the first registration",
        }
    );
    println!(
        "CloudSigma calls, controller lifetime: {total}  (target: <= 1 servers listing per 30 s sync period; a listing is one GET per {} servers)",
        cloudsigma_api::client::DEFAULT_PAGE_SIZE
    );
    for (k, v) in &calls {
        println!("  {v:6}  {k}");
    }
    println!("kube-apiserver requests during the run (all clients, incl. the bench's watch):");
    for (k, v) in &kube_after {
        let d = v - kube_before.get(k).copied().unwrap_or(0.0);
        if d >= 1.0 {
            println!("  {d:6}  {k}");
        }
    }
    println!(
        "  first Node initialized:    {:.3} s  (start-up: process, Lease, Node LIST + CloudSigma listing, first two writes)",
        first_at.as_secs_f64()
    );
    println!(
        "  first to last:             {:.3} s  (the burst of writes)",
        (done_at - first_at).as_secs_f64()
    );
    println!(
        "controller peak RSS:         {:.1} MB  (target <= 64 MB)",
        hwm_kb as f64 / 1024.0
    );

    let _ = child.kill().await;
    let _ = child.wait().await;

    // The floor, twice: observed by the same watch as the controller run (like for like), and
    // bare (no watcher at all, the figure earlier versions printed). What is left between the
    // observed floor and the run is the controller's own cost.
    eprintln!("measuring the apiserver floor on {n} fresh Nodes, observed and bare ...");
    let observed = floor(&nodes, "floor", n, true).await?;
    let bare = floor(&nodes, "bare", n, false).await?;
    println!(
        "apiserver floor:             {:.3} s  (the same 2 writes per Node from a bare client, 64 parallel, observed by the same watch)",
        observed.as_secs_f64()
    );
    println!(
        "apiserver floor, unobserved: {:.3} s  (no watcher at all)",
        bare.as_secs_f64()
    );
    println!(
        "ratio to the floor:          {:.2}x  (target <= 1.15x; {:.2}x to the unobserved floor; the burst alone {:.2}x)",
        done_at.as_secs_f64() / observed.as_secs_f64(),
        done_at.as_secs_f64() / bare.as_secs_f64(),
        (done_at - first_at).as_secs_f64() / observed.as_secs_f64()
    );
    let kept = std::env::temp_dir().join("cloudsigma-controller-bench.log");
    if std::fs::copy(cluster.dir.path().join("controller.log"), &kept).is_ok() {
        println!("controller log:              {}", kept.display());
    }
    emu.shutdown().await;
    Ok(())
}
