//! VLAN address churn against the emulator's API (state-only backend, no VMs, no apiserver):
//! 500 servers with a NIC on a pooled VLAN, created and deleted in overlapping waves, while the
//! allocating instance is killed twice (its task aborted, mid-round or not) and a new one, with
//! no memory, takes over from the listings alone.
//!
//! Leadership is simulated: the Lease (tests/pool.rs runs two real controllers against a real
//! kube-apiserver) only decides *which* instance runs `Allocator::round`; here exactly one
//! does at a time, and a takeover starts the new one at once, as a new Lease holder would after
//! the lease duration. An independent observer lists the servers every 200 ms and checks:
//! - never two servers' meta holding one address;
//! - every server's address appears within two sync periods of its creation;
//! - an address freed by a deletion is seen again on another server only after the
//!   quarantine (less the 1 s resolution of the release times), and such reuse does happen;
//! - after the last deletion and the quarantine, the whole pool is free again.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::{Nic, Ref, ServerCreate};
use cloudsigma_api::pool::{assignment_mac, Assignment, POOL_KEY};
use cloudsigma_controller::allocator::Allocator;
use cloudsigma_controller::cache::ServerCache;
use cloudsigma_controller::testkit;
use cloudsigma_controller::Metrics;
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, Timings};
use futures::{stream, StreamExt};

const SYNC: Duration = Duration::from_secs(1);
const QUARANTINE: Duration = Duration::from_secs(2);
const SERVERS: usize = 500;
const WAVE: usize = 50;
const WAVE_GAP: Duration = Duration::from_millis(1500);
/// 400 addresses: fewer than the 500 servers, so addresses must come back.
const POOL: &str = "10.50.0.0/16 10.50.0.10-10.50.1.153";
const POOL_SIZE: i64 = 400;

fn cs_client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.timeout = Duration::from_secs(10);
    })
}

/// One allocating instance: its own client, cache, metrics and memory.
struct Instance {
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

fn start_instance(emu: &EmulatorHandle) -> Instance {
    let metrics = Arc::new(Metrics::new());
    let cache = ServerCache::new(
        cs_client(emu),
        metrics.clone(),
        SYNC,
        Duration::from_millis(200),
    );
    let alloc = Allocator::new(metrics.clone(), QUARANTINE);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = alloc.round(&cache).await {
                eprintln!("round failed: {e}");
            }
        }
    });
    Instance { task, metrics }
}

#[derive(Default)]
struct Seen {
    /// uuid → (when first observed with an address, the address)
    assigned: HashMap<String, (Instant, Ipv4Addr)>,
    duplicates: Vec<String>,
    observations: usize,
}

/// Lists every 200 ms until `stop`; records first sightings and duplicates.
async fn observe(cs: Client, seen: Arc<Mutex<Seen>>, stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        let Ok(list) = cs.list_servers().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let now = Instant::now();
        let mut holders: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        {
            let mut s = seen.lock().unwrap();
            for srv in &list {
                for (k, v) in &srv.meta {
                    if assignment_mac(k).is_none() {
                        continue;
                    }
                    let Ok(a) = Assignment::parse(v) else {
                        continue;
                    };
                    holders.entry(a.addr).or_default().push(srv.uuid.clone());
                    s.assigned.entry(srv.uuid.clone()).or_insert((now, a.addr));
                }
            }
            for (a, h) in holders.iter().filter(|(_, h)| h.len() > 1) {
                s.duplicates.push(format!("{a} held by {h:?}"));
            }
            s.observations += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_wave(cs: &Client, vlan: &str, wave: usize) -> Vec<(String, Instant)> {
    stream::iter(0..WAVE)
        .map(|i| {
            let cs = cs.clone();
            let vlan = vlan.to_string();
            async move {
                let s = cs
                    .create_server(&ServerCreate {
                        name: format!("churn-{wave}-{i}"),
                        cpu: 1000,
                        mem: 1 << 30,
                        vnc_password: "vncpass".into(),
                        nics: vec![Nic {
                            vlan: Some(Ref::Uuid(vlan)),
                            model: Some("virtio".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .await
                    .expect("create server");
                (s.uuid, Instant::now())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn delete_all(cs: &Client, uuids: &[String]) -> Vec<(String, Instant)> {
    stream::iter(uuids.iter().cloned())
        .map(|u| {
            let cs = cs.clone();
            async move {
                // Before the call: the address cannot be released earlier than this.
                let t = Instant::now();
                cs.delete_server(&u, None).await.expect("delete server");
                (u, t)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// The created, deleted and killed-at times of a run of waves.
struct Run {
    created: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
    last: Instance,
}

async fn run_waves(emu: &EmulatorHandle, cs: &Client, vlan: &str) -> Run {
    let mut leader = start_instance(emu);
    let mut created = HashMap::new();
    let mut deleted = HashMap::new();
    let mut waves: Vec<Vec<String>> = vec![];
    for w in 0..SERVERS / WAVE {
        let made = create_wave(cs, vlan, w).await;
        waves.push(made.iter().map(|(u, _)| u.clone()).collect());
        created.extend(made);
        if w >= 2 {
            deleted.extend(delete_all(cs, &waves[w - 2]).await);
        }
        if w == 3 || w == 7 {
            // Killed right after a wave arrived: its round may be mid-write.
            tokio::time::sleep(SYNC / 2).await;
            leader.task.abort();
            let _ = leader.task.await;
            eprintln!("wave {w}: leader killed; a new instance takes over");
            leader = start_instance(emu);
        }
        tokio::time::sleep(WAVE_GAP).await;
    }
    let n = waves.len();
    for w in &waves[n - 2..] {
        deleted.extend(delete_all(cs, w).await);
    }
    Run {
        created,
        deleted,
        last: leader,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_leader_kills_never_duplicates_and_reuses_after_quarantine() {
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = cs_client(&emu);
    let vlan = cs.list_vlans().await.expect("vlans")[0].uuid.clone();
    cs.modify_vlan_meta(&vlan, |m| {
        m.insert(POOL_KEY.into(), POOL.into());
        true
    })
    .await
    .expect("set the pool");

    let started = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let observer = tokio::spawn(observe(cs.clone(), seen.clone(), stop));
    let run = run_waves(&emu, &cs, &vlan).await;

    // The pool comes back whole once the quarantine of the last deletions has passed.
    let deadline = Instant::now() + QUARANTINE + SYNC * 5;
    let m = &run.last.metrics;
    while (m.pool_gauge(&vlan, "free"), m.pool_gauge(&vlan, "in_use")) != (POOL_SIZE, 0) {
        assert!(
            Instant::now() < deadline,
            "pool not free again: in_use {} quarantined {} free {}",
            m.pool_gauge(&vlan, "in_use"),
            m.pool_gauge(&vlan, "quarantined"),
            m.pool_gauge(&vlan, "free")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).expect("stop");
    observer.await.expect("observer");
    run.last.task.abort();
    emu.shutdown().await;
    let seen = seen.lock().unwrap();
    check(&run, &seen, started.elapsed());
}

fn check(run: &Run, seen: &Seen, took: Duration) {
    let mut failures = vec![];
    if !seen.duplicates.is_empty() {
        failures.push(format!(
            "{} duplicate observations, e.g. {:?}",
            seen.duplicates.len(),
            &seen.duplicates[..seen.duplicates.len().min(5)]
        ));
    }
    let mut latencies = vec![];
    for (u, t) in &run.created {
        match seen.assigned.get(u) {
            Some((at, _)) => latencies.push(at.saturating_duration_since(*t)),
            None => failures.push(format!("server {u} never seen with an address")),
        }
    }
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    if max > SYNC * 2 {
        let late = latencies.iter().filter(|l| **l > SYNC * 2).count();
        failures.push(format!(
            "{late} servers assigned later than 2 sync periods (max {max:?})"
        ));
    }
    // Reuse: an address seen on a server created after another holder of it was deleted.
    let mut by_addr: HashMap<Ipv4Addr, Vec<(&String, Instant)>> = HashMap::new();
    for (u, (at, a)) in &seen.assigned {
        by_addr.entry(*a).or_default().push((u, *at));
    }
    let mut reused = 0;
    let mut min_gap = Duration::MAX;
    for holders in by_addr.values_mut() {
        holders.sort_by_key(|(_, at)| *at);
        for pair in holders.windows(2) {
            let (prev, next_at) = (pair[0].0, pair[1].1);
            let Some(del) = run.deleted.get(prev) else {
                failures.push(format!("{prev}'s address reused while it was not deleted"));
                continue;
            };
            let gap = next_at.saturating_duration_since(*del);
            min_gap = min_gap.min(gap);
            reused += 1;
            if gap + Duration::from_secs(1) < QUARANTINE {
                failures.push(format!(
                    "address of {prev} back after {gap:?}, quarantine {QUARANTINE:?}"
                ));
            }
        }
    }
    if reused == 0 {
        failures.push("no address was ever reused".into());
    }
    eprintln!(
        "churn: {} servers, {} observations, 0 dup: {}, latency p50 {:?} max {:?}, reused {reused} (min deletion→reuse {min_gap:?}), took {took:?}",
        run.created.len(),
        seen.observations,
        seen.duplicates.is_empty(),
        latencies.get(latencies.len() / 2).copied().unwrap_or_default(),
        max
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
