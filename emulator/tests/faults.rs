//! Fault injection (latency, error rate, one-shot, rate limit) and per-endpoint counters.
mod common;
use cloudsim::{EmulatorConfig, FaultConfig};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn latency_is_added() {
    let t = instant().await;
    let t0 = Instant::now();
    t.get("servers/").await;
    let base = t0.elapsed();
    let (s, v) = t
        .admin(Method::PUT, "faults", Some(json!({"latency_ms": 200})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["latency_ms"], 200);
    let t0 = Instant::now();
    let (s, _) = t.get("servers/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?} (base {base:?})",
        t0.elapsed()
    );
}

#[tokio::test]
async fn error_rate_answers_configured_status() {
    let t = start(EmulatorConfig {
        faults: FaultConfig {
            error_rate: 1.0,
            error_status: 503,
            ..Default::default()
        },
        ..EmulatorConfig::for_tests()
    })
    .await;
    for _ in 0..5 {
        let (s, v) = t.get("servers/").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_error(&v, "concurrency");
    }
    t.admin(
        Method::PUT,
        "faults",
        Some(json!({"error_rate": 0.5, "error_status": 500})),
    )
    .await;
    let mut fails = 0;
    for _ in 0..200 {
        let (s, _) = t.get("servers/").await;
        if s == StatusCode::INTERNAL_SERVER_ERROR {
            fails += 1;
        } else {
            assert_eq!(s, StatusCode::OK);
        }
    }
    assert!(
        (50..=150).contains(&fails),
        "about half should fail, got {fails}/200"
    );
    t.admin(Method::PUT, "faults", Some(json!({"error_rate": 0.0})))
        .await;
    assert_eq!(t.get("servers/").await.0, StatusCode::OK);
    // bad settings are refused
    let (s, _) = t
        .admin(Method::PUT, "faults", Some(json!({"error_rate": 3})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .admin(Method::PUT, "faults", Some(json!({"bogus": 1})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn one_shot_failures_match_method_and_path() {
    let t = instant().await;
    let d = t.ready_drive("d", 1 << 30).await;
    let (s, _) = t
        .admin(Method::POST, "faults/once", Some(json!({"method": "POST", "path": "/api/2.0/drives/{uuid}/action/", "status": 500, "count": 2})))
        .await;
    assert_eq!(s, StatusCode::OK);
    // other endpoints are unaffected
    assert_eq!(t.get(&format!("drives/{d}/")).await.0, StatusCode::OK);
    let (s, v) = t
        .post(&format!("drives/{d}/action/?do=clone"), json!({}))
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&v, "backend");
    assert_eq!(
        t.post(&format!("drives/{d}/action/?do=clone"), json!({}))
            .await
            .0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        t.post(&format!("drives/{d}/action/?do=clone"), json!({}))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    // nothing was cloned by the failed attempts
    let (_, v) = t.get("drives/?limit=0").await;
    assert_eq!(v["meta"]["total_count"], 2);
    // prefix rule with 429 carries Retry-After
    t.admin(
        Method::POST,
        "faults/once",
        Some(json!({"path": "/api/2.0/servers/", "status": 429})),
    )
    .await;
    let (s, _, h) = t.req(Method::GET, "servers/detail/", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.get("retry-after").unwrap(), "1");
    assert_eq!(t.get("servers/detail/").await.0, StatusCode::OK);
    let (_, rules) = t.admin(Method::GET, "faults/once", None).await;
    assert_eq!(rules, json!([]));
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let t = start(EmulatorConfig {
        faults: FaultConfig {
            rate_limit_per_sec: 5,
            ..Default::default()
        },
        ..EmulatorConfig::for_tests()
    })
    .await;
    let mut limited = 0;
    for _ in 0..30 {
        let (s, v, h) = t.req(Method::GET, "servers/", None).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert!(h.get("retry-after").is_some());
            assert_error(&v, "backend");
        }
    }
    // even if the 30 requests straddle a few one-second windows, most are refused
    assert!(limited >= 10, "limited {limited}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        t.get("servers/").await.0,
        StatusCode::OK,
        "a new window accepts again"
    );
}

#[tokio::test]
async fn counters_per_endpoint_and_reset() {
    let t = instant().await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.get("servers/detail/").await;
    t.get("servers/detail/?limit=0").await;
    t.get(&format!("servers/{u}/")).await;
    t.action("servers", &u, "start").await;
    let (_, c) = t.admin(Method::GET, "counters", None).await;
    assert_eq!(c["endpoints"]["GET /api/2.0/servers/detail/"], 2, "{c}");
    assert_eq!(c["endpoints"]["GET /api/2.0/servers/{uuid}/"], 1);
    assert_eq!(c["endpoints"]["POST /api/2.0/servers/{uuid}/action/"], 1);
    assert_eq!(c["endpoints"]["POST /api/2.0/servers/"], 1);
    assert_eq!(c["total"], 5);
    t.admin(Method::POST, "counters/reset", None).await;
    let (_, c) = t.admin(Method::GET, "counters", None).await;
    assert_eq!(c["total"], 0);
    t.get("drives/").await;
    let (_, c) = t.admin(Method::GET, "counters", None).await;
    assert_eq!(c["endpoints"], json!({"GET /api/2.0/drives/": 1}));
}

#[tokio::test]
async fn admin_state_dumps_everything() {
    let t = instant().await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.create_drive("d", 1 << 30).await;
    let (s, v) = t.admin(Method::GET, "state", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["servers"][0]["uuid"], u.as_str());
    assert_eq!(v["drives"].as_array().unwrap().len(), 1);
    assert!(v["libdrives"].as_array().unwrap().len() >= 3);
    assert!(v["context_sockets"][&u]
        .as_str()
        .unwrap()
        .ends_with(&format!("{u}.sock")));
}

#[tokio::test]
async fn admin_accepts_json_without_content_type() {
    // what `curl -X PUT $A/faults -d '{...}'` sends: form content type, JSON body
    let t = start(cloudsim::EmulatorConfig {
        admin_listen: cloudsim::AdminListen::loopback(),
        ..cloudsim::EmulatorConfig::for_tests()
    })
    .await;
    let r = t
        .http
        .put(format!("{}faults", t.emu.admin_url().unwrap()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"latency_ms": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["latency_ms"], 5);
    let r = t
        .http
        .put(format!("{}faults", t.emu.admin_url().unwrap()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn handle_methods_drive_faults_and_counters() {
    let t = instant().await;
    t.emu.add_once_rule(cloudsim::OnceRule {
        method: Some("GET".into()),
        path: "/api/2.0/drives/".into(),
        status: 503,
        count: 1,
    });
    assert_eq!(t.get("drives/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(t.get("drives/").await.0, StatusCode::OK);
    let (total, by) = t.emu.counters();
    assert_eq!(total, 2);
    assert_eq!(by["GET /api/2.0/drives/"], 2);
    t.emu.reset_counters();
    assert_eq!(t.emu.counters().0, 0);
    t.emu.set_faults(FaultConfig {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    });
    assert_eq!(t.get("drives/").await.0, StatusCode::INTERNAL_SERVER_ERROR);
}
