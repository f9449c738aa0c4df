//! Benchmark: VLAN address assignment for N (default 500) new servers on a pooled VLAN, the
//! allocator (`cloudsigma_controller::allocator`, the leader's round) against the in-process
//! emulator. Prints the latency from each server's creation to its address seen in a listing
//! (p50, p90, max), the allocator's CPU time (its own OS thread: the emulator runs on other
//! threads and is not counted), its CloudSigma calls, and the CPU of an idle round over N
//! assigned servers. Figures are printed, not asserted.
//!
//!   cargo bench -p cloudsigma-controller --bench vlan_pool -- [SERVERS] [--sync-period=1s]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_api::client::Client;
use cloudsigma_api::models::{Nic, Ref, ServerCreate};
use cloudsigma_api::pool::{assignment_mac, POOL_KEY};
use cloudsigma_controller::allocator::Allocator;
use cloudsigma_controller::cache::ServerCache;
use cloudsigma_controller::{parse_duration, testkit, Metrics};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, Timings};
use futures::{stream, StreamExt};

/// CPU seconds (user + system) of one thread of this process, from /proc/self/task/TID/stat.
fn thread_cpu(tid: &str) -> f64 {
    cpu_of(&format!("/proc/self/task/{tid}/stat"))
}

/// The same for the whole process (the emulator included).
fn process_cpu() -> f64 {
    cpu_of("/proc/self/stat")
}

fn cpu_of(stat: &str) -> f64 {
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|st| {
            let rest = st.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn client(emu: &EmulatorHandle) -> Client {
    testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.timeout = Duration::from_secs(20);
    })
}

/// The allocator on its own OS thread (a current-thread runtime), one round per `sync`; returns
/// its thread id (for /proc), its metrics and a stop switch.
fn spawn_allocator(
    emu: &EmulatorHandle,
    sync: Duration,
) -> (String, Arc<Metrics>, Arc<std::sync::atomic::AtomicBool>) {
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (cs, m, st) = (client(emu), metrics.clone(), stop.clone());
    std::thread::spawn(move || {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let _ = tid_tx.send(tid);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cache = ServerCache::new(cs, m.clone(), sync, Duration::from_millis(200));
            let alloc = Allocator::new(m, Duration::from_secs(300));
            let mut tick = tokio::time::interval(sync);
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                if let Err(e) = alloc.round(&cache).await {
                    eprintln!("round failed: {e}");
                }
            }
        });
    });
    (tid_rx.recv().expect("tid"), metrics, stop)
}

async fn create(cs: &Client, vlan: &str, n: usize) -> HashMap<String, Instant> {
    stream::iter(0..n)
        .map(|i| {
            let (cs, vlan) = (cs.clone(), vlan.to_string());
            async move {
                let s = cs
                    .create_server(&ServerCreate {
                        name: format!("bench-{i}"),
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
                    .expect("create");
                (s.uuid, Instant::now())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Polls the listing every 50 ms until every server has an address; the latencies.
async fn latencies(cs: &Client, created: &HashMap<String, Instant>) -> Vec<Duration> {
    let mut seen: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < created.len() && Instant::now() < deadline {
        for s in cs.list_servers().await.unwrap_or_default() {
            if s.meta.keys().any(|k| assignment_mac(k).is_some()) {
                if let Some(t) = created.get(&s.uuid) {
                    seen.entry(s.uuid.clone()).or_insert_with(|| t.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut l: Vec<Duration> = seen.into_values().collect();
    l.sort();
    l
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(500);
    let sync = args
        .iter()
        .find_map(|a| a.strip_prefix("--sync-period="))
        .map(|s| parse_duration(s).expect("--sync-period"))
        .unwrap_or(Duration::from_secs(1));
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = client(&emu);
    let vlan = cs.list_vlans().await.expect("vlans")[0].uuid.clone();
    cs.modify_vlan_meta(&vlan, |m| {
        m.insert(POOL_KEY.into(), "10.60.0.0/20".into());
        true
    })
    .await
    .expect("pool");
    let (tid, metrics, stop) = spawn_allocator(&emu, sync);
    tokio::time::sleep(sync * 2).await;
    let (cpu0, proc0) = (thread_cpu(&tid), process_cpu());
    let t0 = Instant::now();
    let created = create(&cs, &vlan, n).await;
    let created_in = t0.elapsed();
    let l = latencies(&cs, &created).await;
    let took = t0.elapsed();
    let cpu_assign = thread_cpu(&tid) - cpu0;
    let cpu_process = process_cpu() - proc0;
    let pct = |p: usize| {
        l.get((l.len() * p / 100).min(l.len().saturating_sub(1)))
            .copied()
    };
    println!(
        "vlan_pool: {n} servers created in {created_in:.2?} (16 at a time), sync period {sync:?}"
    );
    println!(
        "  assigned {} of {n}; creation → address seen: p50 {:?} p90 {:?} max {:?}; all within {took:.2?}",
        l.len(),
        pct(50).unwrap_or_default(),
        pct(90).unwrap_or_default(),
        l.last().copied().unwrap_or_default()
    );
    let calls = |op| metrics.api_calls_total(op);
    println!(
        "  allocator CPU {cpu_assign:.2}s for the burst (whole process, emulator and the bench's polling included: {cpu_process:.2}s); calls: list_servers {} list_vlans {} update_server_meta {} update_vlan_meta {} (each meta write is a GET + PUT)",
        calls("list_servers"),
        calls("list_vlans"),
        calls("update_server_meta"),
        calls("update_vlan_meta")
    );
    // Idle rounds: nothing to assign, N servers listed each period.
    let rounds = 5;
    let cpu1 = thread_cpu(&tid);
    tokio::time::sleep(sync * rounds).await;
    println!(
        "  idle: {:.3}s CPU per round over {n} assigned servers ({rounds} rounds)",
        (thread_cpu(&tid) - cpu1) / f64::from(rounds)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    emu.shutdown().await;
}
