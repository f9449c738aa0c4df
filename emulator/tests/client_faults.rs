//! The REST client under cloudsim's injected faults: idempotent calls are retried (with
//! Retry-After honoured), POST creates and actions are sent exactly once — proven with the
//! emulator's per-endpoint counters.

mod common;
use cloudsigma_api::client::{Client, Error, RetryPolicy};
use cloudsigma_api::*;
use cloudsim::{EmulatorConfig, EmulatorHandle, FaultConfig};
use common::client::{self, admin, client_for, ready_drive, retry, WAIT};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

/// A client with 5 attempts: enough to ride through the 2-failure one-shot rules used here.
async fn start(cfg: EmulatorConfig) -> (EmulatorHandle, Client) {
    client::start(cfg, 5).await
}

async fn once(emu: &EmulatorHandle, method: &str, path: &str, status: u16, count: u32) {
    admin(
        emu,
        Method::POST,
        "faults/once",
        Some(json!({"method": method, "path": path, "status": status, "count": count})),
    )
    .await;
}

async fn reset_counters(emu: &EmulatorHandle) {
    admin(emu, Method::POST, "counters/reset", None).await;
}

async fn count(emu: &EmulatorHandle, key: &str) -> u64 {
    let c = admin(emu, Method::GET, "counters", None).await;
    c["endpoints"][key].as_u64().unwrap_or(0)
}

fn disk(name: &str) -> DriveCreate {
    DriveCreate {
        name: name.into(),
        size: 1 << 30,
        media: "disk".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn get_put_delete_are_retried_through_5xx() {
    let (emu, c) = start(EmulatorConfig::for_tests()).await;
    let d = ready_drive(&c, &disk("r")).await;

    reset_counters(&emu).await;
    once(&emu, "GET", "/api/2.0/drives/detail/", 500, 2).await;
    let all = c.list_drives().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        count(&emu, "GET /api/2.0/drives/detail/").await,
        3,
        "2 failures + 1 success"
    );

    once(&emu, "PUT", "/api/2.0/drives/{uuid}/", 503, 2).await;
    let mut upd = d.clone();
    upd.name = "renamed".into();
    assert_eq!(c.update_drive(&upd).await.unwrap().name, "renamed");
    assert_eq!(count(&emu, "PUT /api/2.0/drives/{uuid}/").await, 3);

    once(&emu, "DELETE", "/api/2.0/drives/{uuid}/", 502, 1).await;
    c.delete_drive(&d.uuid).await.unwrap();
    assert_eq!(count(&emu, "DELETE /api/2.0/drives/{uuid}/").await, 2);
    assert!(c.get_drive(&d.uuid).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn post_create_and_actions_are_never_retried() {
    let (emu, c) = start(EmulatorConfig::for_tests()).await;
    reset_counters(&emu).await;
    once(&emu, "POST", "/api/2.0/drives/", 500, 1).await;
    let e = c.create_drive(&disk("once")).await.unwrap_err();
    assert_eq!(e.status(), Some(500), "{e}");
    assert_eq!(
        count(&emu, "POST /api/2.0/drives/").await,
        1,
        "create sent exactly once"
    );
    assert!(
        c.list_drives().await.unwrap().is_empty(),
        "and nothing was created"
    );

    // the next create (no fault left) works: the client did not swallow anything
    let d = ready_drive(&c, &disk("twice")).await;

    // clone action
    once(&emu, "POST", "/api/2.0/drives/{uuid}/action/", 503, 1).await;
    let e = c
        .clone_drive(&d.uuid, &DriveClone::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert_eq!(count(&emu, "POST /api/2.0/drives/{uuid}/action/").await, 1);
    assert_eq!(c.list_drives().await.unwrap().len(), 1, "no clone was made");

    // server start action, even for a 429 with Retry-After
    let s = c
        .create_server(&ServerCreate {
            name: "s".into(),
            cpu: 1000,
            mem: 1 << 30,
            vnc_password: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    once(&emu, "POST", "/api/2.0/servers/{uuid}/action/", 429, 1).await;
    let e = c.start_server(&s.uuid).await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(count(&emu, "POST /api/2.0/servers/{uuid}/action/").await, 1);
    assert_eq!(
        c.get_server(&s.uuid).await.unwrap().status,
        ServerStatus::Stopped
    );
}

#[tokio::test]
async fn retry_after_from_429_is_honoured() {
    let (emu, c) = start(EmulatorConfig::for_tests()).await;
    once(&emu, "GET", "/api/2.0/servers/", 429, 1).await;
    let t = Instant::now();
    c.list_servers().await.unwrap();
    let el = t.elapsed();
    // the backoff alone would be <= 5 ms; the emulator says Retry-After: 1
    assert!(el >= Duration::from_secs(1), "retried after only {el:?}");
    assert!(el < Duration::from_secs(4), "{el:?}");
}

#[tokio::test]
async fn rate_limited_listing_completes() {
    let (emu, c) = start(EmulatorConfig {
        faults: FaultConfig {
            rate_limit_per_sec: 4,
            ..Default::default()
        },
        ..EmulatorConfig::for_tests()
    })
    .await;
    reset_counters(&emu).await;
    let before = c.calls();
    for _ in 0..10 {
        c.list_servers().await.unwrap();
    }
    let sent = c.calls() - before;
    assert!(
        sent > 10,
        "some requests must have been refused and retried ({sent})"
    );
    let c2 = admin(&emu, Method::GET, "counters", None).await;
    assert_eq!(
        c2["total"].as_u64(),
        Some(sent),
        "client and emulator agree on calls: {c2}"
    );
}

#[tokio::test]
async fn random_errors_are_absorbed_by_retries() {
    let (emu, _) = start(EmulatorConfig::for_tests()).await;
    let c = client_for(&emu, retry(10), Duration::from_secs(10));
    admin(
        &emu,
        Method::PUT,
        "faults",
        Some(json!({"error_rate": 0.3, "error_status": 503})),
    )
    .await;
    reset_counters(&emu).await;
    // P(one call fails 10 times) = 0.3^10 ≈ 6e-6
    for _ in 0..20 {
        c.list_tags().await.unwrap();
        c.list_ips().await.unwrap();
    }
    let total = admin(&emu, Method::GET, "counters", None).await["total"]
        .as_u64()
        .unwrap();
    assert!(
        total > 40,
        "with a 30% error rate some calls were retried: {total}"
    );
    assert_eq!(total, c.calls());
}

#[tokio::test]
async fn latency_beyond_timeout_is_a_request_timeout() {
    let (emu, _) = start(EmulatorConfig::for_tests()).await;
    admin(
        &emu,
        Method::PUT,
        "faults",
        Some(json!({"latency_ms": 1500})),
    )
    .await;
    let c = client_for(&emu, RetryPolicy::none(), Duration::from_millis(300));
    let t = Instant::now();
    let e = c.list_vlans().await.unwrap_err();
    assert!(matches!(e, Error::RequestTimeout { .. }), "{e:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    // attempts are bounded: 3 attempts x 300 ms, then the timeout error
    let c = client_for(&emu, retry(3), Duration::from_millis(300));
    let t = Instant::now();
    assert!(c.list_vlans().await.unwrap_err().is_timeout());
    assert_eq!(c.calls(), 3);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn waiter_rides_through_transient_errors() {
    let (emu, c) = start(EmulatorConfig::for_tests()).await;
    let d = c.create_drive(&disk("w")).await.unwrap();
    once(&emu, "GET", "/api/2.0/drives/{uuid}/", 503, 2).await;
    let d = c
        .wait_drive_status(&d.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap();
    assert_eq!(d.status, DriveStatus::Unmounted);
}
