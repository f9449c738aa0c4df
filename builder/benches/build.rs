//! Bench: full builds of the shipped ubuntu-k8s recipe against the in-process emulator (instant
//! timings) with the recording transport. Prints the builder's own time per build — wall time
//! minus time waiting on the cloud (inside API requests, sleeping between polls) and on the guest
//! (transport operations) — and the API calls per build as the emulator counted them.
//! Targets (issue 4): own time < 1 s, ≤ 40 API calls.
//!
//! Second part: the OpenSSH transport against a real sshd on 127.0.0.1 (needs root and sshd, as
//! tests/ssh_transport.rs; skipped with a note otherwise). Per operation — a step (trivial
//! script), an upload, a remote sha256 — the time with one SSH connection per operation (as
//! before issue 12) and with the build's shared connection, interleaved in the same run, and
//! their ratio. Loopback has no network latency and fast crypto, so the ratio understates the
//! gain on an emulated or remote VM, where each new connection costs seconds.
//!
//! Run: `cargo bench -p imgbuild --bench build` (BUILDS=N to change the number of builds,
//! SSH_OPS=N the operations per kind and mode).

use cloudsim::{Emulator, EmulatorConfig};
use imgbuild::build::{Builder, Options};
use imgbuild::cloud::{Auth, Cloud, Config};
use imgbuild::progress::{Mode, Reporter};
use imgbuild::recipe::Recipe;
use imgbuild::transport::{LocalTransport, OpenSsh, Target, Transport};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[path = "../tests/support/sshd.rs"]
mod sshd;

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
    let ops: usize = std::env::var("SSH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    ssh_bench(ops).await
}

/// Per-operation SSH overhead, one connection per operation vs the shared connection.
async fn ssh_bench(ops: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let per_op = OpenSsh::new("imgbuild-bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .without_multiplexing();
    let shared = OpenSsh::new("imgbuild-bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = format!("{}\n{}", per_op.public_key(), shared.public_key());
    let sshd = match sshd::start_sshd(dir.path(), &keys) {
        Ok(s) => s,
        Err(why) => {
            println!("imgbuild SSH bench: SKIPPED ({why})");
            return Ok(());
        }
    };
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: "root".into(),
        host_key: sshd.host_key.clone(),
    };
    let cancel = CancellationToken::new();
    for t in [&per_op, &shared] {
        t.wait_ready(&target, Duration::from_secs(30), &cancel)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let script = dir.path().join("step.sh");
    std::fs::write(&script, "#!/bin/bash\ntrue\n")?;
    let payload = dir.path().join("payload");
    std::fs::write(&payload, vec![0x5au8; 4096])?;
    let dest = dir.path().join("dest/payload").display().to_string();
    let quiet = |_: &str| {};
    // [mode][kind] → per-operation ms
    let mut ms = [
        [Vec::new(), Vec::new(), Vec::new()],
        [Vec::new(), Vec::new(), Vec::new()],
    ];
    for _ in 0..ops {
        // interleaved, so both modes see the same machine load
        for (m, t) in [&per_op, &shared].into_iter().enumerate() {
            let s = Instant::now();
            t.run_script(&target, &script, &[], Duration::from_secs(60), &quiet)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ms[m][0].push(s.elapsed().as_secs_f64() * 1000.0);
            let s = Instant::now();
            t.upload(&target, &payload, &dest, "0644", Duration::from_secs(60))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ms[m][1].push(s.elapsed().as_secs_f64() * 1000.0);
            let s = Instant::now();
            t.remote_sha256(&target, &dest)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            ms[m][2].push(s.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!("imgbuild SSH bench: {ops} operations of each kind per mode against sshd on 127.0.0.1 (interleaved)");
    println!(
        "  operation                     one connection each   shared connection   ratio (p50)"
    );
    for (k, name) in ["step (trivial script)", "upload (4 KiB)", "remote sha256"]
        .into_iter()
        .enumerate()
    {
        let a = pct(&mut ms[0][k].clone(), 0.5);
        let b = pct(&mut ms[1][k].clone(), 0.5);
        println!(
            "  {name:<28}  p50 {a:6.1} ms p95 {:6.1}   p50 {b:6.1} ms p95 {:6.1}   {:5.1}x",
            pct(&mut ms[0][k], 0.95),
            pct(&mut ms[1][k], 0.95),
            a / b
        );
    }
    per_op.close().await;
    shared.close().await;
    drop(sshd);
    // the steps' upload dir on "the guest" (this machine here)
    let _ = std::fs::remove_dir_all("/tmp/imgbuild");
    Ok(())
}
