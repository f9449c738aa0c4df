//! Benchmark (not a test): requests/s of the emulator's detail listing with 1,000 servers.
//!
//! `cargo run --release -p cloudsim --bin cloudsim-bench -- [--servers 1000] [--seconds 5] [--concurrency 4]`
//!
//! Starts an in-process emulator on 127.0.0.1:0 (instant timings), seeds servers (with a drive
//! and a public NIC each; half of them running so runtime blocks are rendered), then for a bounded
//! time hammers `GET /api/2.0/servers/detail/?limit=0` and paged `?limit=100&offset=N` over
//! loopback and prints requests/s, latency percentiles and the emulator's own counters.

use anyhow::{ensure, Context as _};
use clap::Parser;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsim::{Emulator, EmulatorConfig};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    servers: usize,
    /// Duration of each measured phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let emu = Emulator::start(EmulatorConfig::for_tests()).await?;
    let http = reqwest::Client::new();
    let (user, pass) = (emu.username().to_string(), emu.password().to_string());
    let api = emu.api_url();

    let t0 = Instant::now();
    let mut created = 0;
    while created < a.servers {
        let n = (a.servers - created).min(100);
        let drives: Vec<Value> = (0..n).map(|i| json!({"name": format!("disk-{}", created + i), "size": 10u64 << 30, "media": "disk"})).collect();
        let r: Value = http
            .post(format!("{api}drives/"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"objects": drives}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let servers: Vec<Value> = r["objects"]
            .as_array()
            .context("drive create answer has objects")?
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({"name": format!("node-{:04}", created + i), "cpu": 2000, "mem": 4294967296u64, "vnc_password": "x",
                    "meta": {"role": "worker", "cluster": "bench"},
                    "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": d["uuid"]}],
                    "nics": [{"ip_v4_conf": {"conf": "dhcp", "ip": null}, "model": "virtio"}]})
            })
            .collect();
        let r: Value = http
            .post(format!("{api}servers/"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"objects": servers}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for (i, s) in r["objects"]
            .as_array()
            .context("objects")?
            .iter()
            .enumerate()
        {
            if (created + i) % 2 == 0 {
                let u = s["uuid"].as_str().context("uuid")?;
                http.post(format!("{api}servers/{u}/action/?do=start"))
                    .basic_auth(&user, Some(&pass))
                    .json(&json!({}))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        created += n;
    }
    println!(
        "seeded {} servers (+{} drives, half running) in {:.2?}",
        a.servers,
        a.servers,
        t0.elapsed()
    );

    let probe: Value = http
        .get(format!("{api}servers/detail/?limit=0"))
        .basic_auth(&user, Some(&pass))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        probe["meta"]["total_count"] == a.servers,
        "unexpected total_count {}",
        probe["meta"]["total_count"]
    );
    let body_len = serde_json::to_vec(&probe)?.len();
    println!(
        "one full listing: {} objects, {:.1} KiB JSON",
        a.servers,
        body_len as f64 / 1024.0
    );

    let limit0 = format!("{api}servers/detail/?limit=0");
    phase(
        "GET servers/detail/?limit=0",
        &http,
        &user,
        &pass,
        a.concurrency,
        a.seconds,
        Arc::new(move |_| limit0.clone()),
    )
    .await?;
    let pages = a.servers.div_ceil(100).max(1);
    let api2 = api.clone();
    phase(
        "GET servers/detail/?limit=100&offset=N",
        &http,
        &user,
        &pass,
        a.concurrency,
        a.seconds,
        Arc::new(move |i| {
            format!(
                "{api2}servers/detail/?limit=100&offset={}",
                (i % pages) * 100
            )
        }),
    )
    .await?;
    let (_, counters) = emu.admin("GET", "counters", None).await;
    println!(
        "emulator counters: total {} ; detail listings {}",
        counters["total"], counters["endpoints"]["GET /api/2.0/servers/detail/"]
    );
    emu.shutdown().await;
    Ok(())
}

async fn phase(
    name: &str,
    http: &reqwest::Client,
    user: &str,
    pass: &str,
    concurrency: usize,
    seconds: f64,
    url: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (http, user, pass, url) = (
            http.clone(),
            user.to_string(),
            pass.to_string(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .get(url(i))
                    .basic_auth(&user, Some(&pass))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "status {}", r.status());
                let _ = r.bytes().await?;
                lat.push(t.elapsed());
                i += concurrency;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{name}: {} requests in {elapsed:.2} s = {:.1} req/s (concurrency {concurrency}); latency p50 {:.2?} p99 {:.2?}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}
