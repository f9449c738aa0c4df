//! `/readyz` follows the CloudSigma API (issue 21 item 3): the leader turns unready once no
//! server listing has succeeded for `--ready-listing-max-age`, and ready again after one does.
//! Against a REAL kube-apiserver and the emulator, with no Node at all (the listing is kept fresh
//! by the controller itself, not by Nodes asking for it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsigma_controller::testkit;
use cloudsigma_controller::{run, Metrics, Options};
use cloudsim::{Emulator, EmulatorConfig, FaultConfig, Timings};
use tokio::sync::watch;

/// `(status code, body)` of a plain HTTP GET.
async fn get(url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `/readyz` until its status is `want`; the time it took and the last body.
async fn wait_readyz(url: &str, want: u16, within: Duration) -> (Duration, String) {
    let t0 = Instant::now();
    loop {
        let (code, body) = get(url).await;
        if code == want {
            return (t0.elapsed(), body);
        }
        assert!(
            t0.elapsed() < within,
            "/readyz still {code} ({body:?}) after {within:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_no_listing_succeeded_for_the_configured_age() {
    let Some(cluster) =
        testkit::cluster_or_skip("readyz_fails_when_no_listing_succeeded_for_the_configured_age")
    else {
        return;
    };
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let port = testkit::free_port();
    let max_age = Duration::from_secs(3);
    let mut opts = {
        use clap::Parser;
        Options::parse_from([
            "cloudsigma-controller",
            "--region=zrh",
            "--leader-elect=false",
            "--sync-period=1s",
            "--ready-listing-max-age=3s",
        ])
    };
    opts.api_url = Some(emu.api_url());
    opts.metrics_bind = format!("127.0.0.1:{port}").parse().expect("addr");
    let cs = testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |cfg| {
        cfg.retry.max_attempts = 2;
        cfg.retry.base_delay = Duration::from_millis(50);
        cfg.timeout = Duration::from_secs(2);
    });
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(false);
    let ctl = tokio::spawn(run(
        opts,
        cluster.client().await.into(),
        cs,
        metrics.clone(),
        rx,
    ));
    let url = format!("http://127.0.0.1:{port}/readyz");
    wait_readyz(&url, 200, Duration::from_secs(20)).await;

    // Healthy for longer than the bound, with no Node: stays ready (the controller lists on its own).
    let t0 = Instant::now();
    while t0.elapsed() < max_age * 2 {
        let (code, body) = get(&url).await;
        assert_eq!(code, 200, "unready while the API answers: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every request fails: unready once the last success is older than the bound, saying why.
    emu.set_faults(FaultConfig {
        error_rate: 1.0,
        error_status: 503,
        ..Default::default()
    });
    let (took, why) = wait_readyz(&url, 503, Duration::from_secs(20)).await;
    eprintln!("/readyz unready {took:.1?} after the API began failing: {why}");
    // The last success may be up to two sync periods (2 s) older than the first failure.
    assert!(
        took >= max_age - Duration::from_secs(2),
        "unready after only {took:?}"
    );
    assert!(
        why.contains("no CloudSigma server listing succeeded for")
            && why.contains("--ready-listing-max-age=3s"),
        "{why}"
    );
    assert!(!metrics.ready());

    // The API answers again: ready after the next listing.
    emu.set_faults(FaultConfig::default());
    let (took, _) = wait_readyz(&url, 200, Duration::from_secs(20)).await;
    eprintln!("/readyz ready again {took:.1?} after the API recovered");

    tx.send(true).expect("shutdown");
    tokio::time::timeout(Duration::from_secs(10), ctl)
        .await
        .expect("controller stops")
        .expect("join")
        .expect("run ok");
    emu.shutdown().await;
}
