//! One test per refusal rule: status code and CloudSigma's error body.
mod common;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn running_server(t: &T) -> (String, String) {
    let d = t.ready_drive("d", 1 << 30).await;
    let u = t.create_server("s", Some(&d)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = t.action("servers", &u, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    t.wait_status("servers", &u, "running").await;
    (u, d)
}

#[tokio::test]
async fn start_running_server_is_refused() {
    let t = instant().await;
    let (u, _) = running_server(&t).await;
    let (s, v) = t.action("servers", &u, "start").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let e = assert_error(&v, "permission");
    assert_eq!(
        e["error_message"],
        "Cannot start guest in state \"started\". Guest should be in state \"stopped\""
    );
    assert!(e["error_point"].is_null());
}

#[tokio::test]
async fn stop_stopped_server_is_refused() {
    let t = instant().await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t.action("servers", &u, "stop").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let e = assert_error(&v, "permission");
    assert!(e["error_message"]
        .as_str()
        .unwrap()
        .starts_with("Cannot stop guest in state \"stopped\""));
    let (s, v) = t.action("servers", &u, "shutdown").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_error(&v, "permission");
}

#[tokio::test]
async fn delete_running_server_is_refused() {
    let t = instant().await;
    let (u, _) = running_server(&t).await;
    let (s, v) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_error(&v, "permission");
    assert_eq!(t.status("servers", &u).await, "running");
}

#[tokio::test]
async fn delete_mounted_drive_is_refused() {
    let t = instant().await;
    let (_, d) = running_server(&t).await;
    assert_eq!(t.status("drives", &d).await, "mounted");
    let (s, v) = t.delete(&format!("drives/{d}/")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let e = assert_error(&v, "permission");
    assert!(e["error_message"].as_str().unwrap().contains("mounted"));
    let (s, _) = t.get(&format!("drives/{d}/")).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn resize_mounted_drive_is_refused() {
    let t = instant().await;
    let (_, d) = running_server(&t).await;
    let (_, drive) = t.get(&format!("drives/{d}/")).await;
    let mut body = drive.clone();
    body["size"] = json!(2u64 << 30);
    let (s, v) = t.post(&format!("drives/{d}/action/?do=resize"), body).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_error(&v, "permission");
    let (_, after) = t.get(&format!("drives/{d}/")).await;
    assert_eq!(after["size"], json!(1u64 << 30));
}

#[tokio::test]
async fn starting_with_busy_drive_is_refused() {
    let t = start(cloudsim::EmulatorConfig {
        timings: cloudsim::Timings::uniform(std::time::Duration::from_secs(30)),
        ..Default::default()
    })
    .await;
    let d = t.create_drive("d", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let u = t.create_server("s", Some(&d)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t.action("servers", &u, "start").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(assert_error(&v, "permission")["error_message"]
        .as_str()
        .unwrap()
        .contains("creating"));
}

#[tokio::test]
async fn unknown_uuid_is_404_notexist() {
    let t = instant().await;
    let ghost = "00000000-0000-4000-8000-000000000000";
    for path in [
        format!("servers/{ghost}/"),
        format!("drives/{ghost}/"),
        format!("libdrives/{ghost}/"),
        format!("tags/{ghost}/"),
        "ips/192.0.2.99/".to_string(),
        format!("vlans/{ghost}/"),
        format!("servers/{ghost}/runtime/"),
    ] {
        let (s, v) = t.get(&path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_error(&v, "notexist");
    }
    let (s, v) = t.action("servers", ghost, "start").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "notexist");
    let (s, v) = t.delete(&format!("drives/{ghost}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "notexist");
}

#[tokio::test]
async fn wrong_credentials_are_401() {
    let t = start(cloudsim::EmulatorConfig {
        token: Some("tok-123".into()),
        ..cloudsim::EmulatorConfig::for_tests()
    })
    .await;
    let url = t.url("servers/");
    let cases = [
        t.http.get(&url).basic_auth(t.emu.username(), Some("wrong")),
        t.http
            .get(&url)
            .basic_auth("nobody@example.com", Some(t.emu.password())),
        t.http.get(&url),
        t.http.get(&url).bearer_auth("nope"),
    ];
    for c in cases {
        let r = c.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key("x-request-id"));
        let v: serde_json::Value = r.json().await.unwrap();
        assert_error(&v, "permission");
    }
    let r = t
        .http
        .get(&url)
        .bearer_auth("tok-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_body_is_400_validation() {
    let t = instant().await;
    let r = t
        .http
        .post(t.url("servers/"))
        .basic_auth(t.emu.username(), Some(t.emu.password()))
        .header("content-type", "application/json")
        .body("{\"objects\": [ {\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(assert_error(&v, "validation")["error_point"], "body");
    // a well-formed body missing a required field names it
    let (s, v) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "x", "mem": 536870912, "vnc_password": "p"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&v, "validation")["error_point"], "cpu");
    let (s, v) = t
        .post(
            "drives/",
            json!({"objects": [{"name": "x", "size": 1073741824, "media": "floppy"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&v, "validation")["error_point"], "media");
    // nothing was created by the failed requests
    let (_, l) = t.get("servers/").await;
    assert_eq!(l["meta"]["total_count"], 0);
}

#[tokio::test]
async fn wrong_method_is_405() {
    let t = instant().await;
    for (m, p) in [
        (Method::DELETE, "tags/"),
        (Method::POST, "servers/detail/"),
        (Method::PUT, "libdrives/"),
        (Method::GET, "servers/x/action/"),
        (Method::PATCH, "drives/"),
    ] {
        let (s, v, h) = t.req(m.clone(), p, Some(json!({}))).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        assert_error(&v, "validation");
        assert!(h.contains_key("allow"));
    }
}

#[tokio::test]
async fn clone_smaller_than_source_is_refused() {
    let t = instant().await;
    let d = t.ready_drive("d", 2 << 30).await;
    let (s, v) = t
        .post(
            &format!("drives/{d}/action/?do=clone"),
            json!({"size": 1u64 << 30}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&v, "validation")["error_point"], "size");
}

#[tokio::test]
async fn every_answer_has_a_request_id() {
    let t = instant().await;
    let (_, _, h) = t.req(Method::GET, "servers/", None).await;
    assert!(h.get("x-request-id").unwrap().to_str().unwrap().len() >= 32);
    let (_, _, h) = t.req(Method::GET, "servers/nope/", None).await;
    assert!(h.contains_key("x-request-id"));
}

#[tokio::test]
async fn notexist_message_matches_the_real_api() {
    let t = instant().await;
    let (_, v) = t.get("servers/472835d5-2bbb-4d87-9d08-7364bc373692/").await;
    assert_eq!(
        assert_error(&v, "notexist")["error_message"],
        "Object with uuid 472835d5-2bbb-4d87-9d08-7364bc373692 does not exist"
    );
}

#[tokio::test]
async fn dev_channel_limits_are_enforced() {
    let t = instant().await;
    let d = t.create_drive("d", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    for (device, ch) in [("ide", "2:0"), ("ide", "0:2"), ("virtio", "0:6")] {
        let (s, v) = t
            .post(
                "servers/",
                json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x",
                    "drives": [{"dev_channel": ch, "device": device, "drive": d}]}]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{device} {ch}");
        assert_eq!(assert_error(&v, "validation")["error_point"], "drives");
    }
}

#[tokio::test]
async fn put_on_mounted_drive_ignores_size_and_media() {
    let t = instant().await;
    let (_, d) = running_server(&t).await;
    let (s, v) = t
        .put(
            &format!("drives/{d}/"),
            json!({"name": "renamed", "size": 4u64 << 30, "media": "cdrom", "meta": {"k": "v"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["meta"], json!({"k": "v"}));
    assert_eq!(v["size"], json!(1u64 << 30), "size ignored while mounted");
    assert_eq!(v["media"], "disk", "media ignored while mounted");
    assert_eq!(v["status"], "mounted");
}

#[tokio::test]
async fn bulk_delete_refuses_all_if_one_is_refused() {
    let t = instant().await;
    let (_, mounted) = running_server(&t).await;
    let free = t.ready_drive("free", 1 << 30).await;
    let (s, v, _) = t
        .req(
            Method::DELETE,
            "drives/",
            Some(json!({"objects": [{"uuid": free}, {"uuid": mounted}]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        t.get(&format!("drives/{free}/")).await.0,
        StatusCode::OK,
        "nothing deleted"
    );
    let (s, _, _) = t
        .req(
            Method::DELETE,
            "drives/",
            Some(json!({"objects": [{"uuid": free}]})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        t.get(&format!("drives/{free}/")).await.0,
        StatusCode::NOT_FOUND
    );
}
