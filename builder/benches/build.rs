//! Bench: full builds of the shipped ubuntu-k8s recipe against the in-process emulator (instant
//! timings) with the recording transport. Prints the builder's own time per build — wall time
//! minus time waiting on the cloud (inside API requests, sleeping between polls) and on the guest
//! (transport operations) — and the API calls per build as the emulator counted them.
//! Targets (issue 4): own time < 1 s, ≤ 40 API calls.
//!
//! Run: `cargo bench -p imgbuild --bench build` (BUILDS=N to change the number of builds).

use cloudsim::{Emulator, EmulatorConfig};
use imgbuild::build::{Builder, Options};
use imgbuild::cloud::{Auth, Cloud, Config};
use imgbuild::progress::{Mode, Reporter};
use imgbuild::recipe::Recipe;
use imgbuild::transport::LocalTransport;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let builds: usize = std::env::var("BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let emu = Emulator::start(EmulatorConfig::for_tests()).await?;
    let dir = tempfile::tempdir()?;
    let agent = dir.path().join("cloudsigma-agent");
    // a realistically sized agent binary (4 MiB) so hashing is part of the figure
    std::fs::write(&agent, vec![0x5au8; 4 << 20])?;
    let unit = dir.path().join("cloudsigma-bootstrap.service");
    std::fs::write(&unit, "[Unit]\n")?;
    let recipe_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes/ubuntu-k8s/recipe.yaml");

    let mut own = Vec::new();
    let mut wall = Vec::new();
    let mut calls = Vec::new();
    let mut load_ms = Vec::new();
    for i in 0..=builds {
        // each build differs in one variable, so none is a cache hit
        let mut vars = BTreeMap::new();
        vars.insert("agent_binary".to_string(), agent.display().to_string());
        vars.insert("bootstrap_unit".to_string(), unit.display().to_string());
        vars.insert("kubernetes_version".to_string(), format!("1.34.{i}"));
        let t0 = std::time::Instant::now();
        let recipe = Recipe::load(&recipe_file, &vars).map_err(|e| anyhow::anyhow!("{e}"))?;
        let load = t0.elapsed();
        let cloud = Cloud::new(
            Config::for_url(
                &emu.api_url(),
                Auth::Basic {
                    username: emu.username().into(),
                    password: emu.password().into(),
                },
            )?
            .with_timeout(Duration::from_secs(10)),
        )?;
        let t = LocalTransport::new(dir.path().join(format!("sb{i}")));
        let b = Builder::new(
            cloud,
            Arc::new(t),
            Reporter::new(Mode::Quiet),
            CancellationToken::new(),
            Options::default(),
        );
        emu.reset_counters();
        let m = b.build(&recipe).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let (total, _) = emu.counters();
        if i == 0 {
            continue; // warm-up (first connection, tag creation)
        }
        own.push((m.stats.own_ms as f64) + load.as_secs_f64() * 1000.0);
        wall.push(m.stats.wall_ms as f64 + load.as_secs_f64() * 1000.0);
        calls.push(total as f64);
        load_ms.push(load.as_secs_f64() * 1000.0);
    }
    // a cached run (identical inputs to the last build)
    let mut vars = BTreeMap::new();
    vars.insert("agent_binary".to_string(), agent.display().to_string());
    vars.insert("bootstrap_unit".to_string(), unit.display().to_string());
    vars.insert("kubernetes_version".to_string(), format!("1.34.{builds}"));
    let recipe = Recipe::load(&recipe_file, &vars).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cloud = Cloud::new(Config::for_url(
        &emu.api_url(),
        Auth::Basic {
            username: emu.username().into(),
            password: emu.password().into(),
        },
    )?)?;
    let b = Builder::new(
        cloud,
        Arc::new(LocalTransport::new(dir.path().join("cached"))),
        Reporter::new(Mode::Quiet),
        CancellationToken::new(),
        Options::default(),
    );
    emu.reset_counters();
    let m = b.build(&recipe).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(m.cached);
    let cached_calls = emu.counters().0;

    println!("imgbuild bench: {builds} full builds of ubuntu-k8s against cloudsim (instant timings, recording transport, 4 MiB agent)");
    println!("  builder own time per build (wall − cloud/guest waits, incl. recipe load+hash): p50 {:.1} ms  p95 {:.1} ms  max {:.1} ms   (target < 1000 ms)", pct(&mut own.clone(), 0.5), pct(&mut own.clone(), 0.95), pct(&mut own, 1.0));
    println!(
        "  wall time per build:                 p50 {:.1} ms  max {:.1} ms",
        pct(&mut wall.clone(), 0.5),
        pct(&mut wall, 1.0)
    );
    println!(
        "  recipe load + fingerprint inputs:    p50 {:.1} ms",
        pct(&mut load_ms, 0.5)
    );
    println!(
        "  API calls per build (emulator count): p50 {:.0}  max {:.0}   (target ≤ 40)",
        pct(&mut calls.clone(), 0.5),
        pct(&mut calls, 1.0)
    );
    println!("  API calls for a cached (no-op) run:  {cached_calls}");
    emu.shutdown().await;
    Ok(())
}
