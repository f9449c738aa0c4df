mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn create_start_stop_delete_roundtrip() {
    let t = instant().await;
    let (s, libs) = t
        .get("libdrives/?distribution=Ubuntu&version=24.04&image_type=preinst")
        .await;
    assert_eq!(s, StatusCode::OK);
    let lib = libs["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (s, c) = t
        .post(
            &format!("libdrives/{lib}/action/?do=clone"),
            json!({"name": "build"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{c}");
    let d = c["objects"][0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(c["objects"][0]["status"], "cloning_dst");
    t.wait_status("drives", &d, "unmounted").await;
    let srv = t.create_server("s1", Some(&d)).await;
    let u = srv["uuid"].as_str().unwrap().to_string();
    let (s, a) = t.action("servers", &u, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    assert_eq!(
        a,
        json!({"action": "start", "result": "success", "uuid": u})
    );
    t.wait_status("servers", &u, "running").await;
    assert_eq!(t.status("drives", &d).await, "mounted");
    let (_, v) = t.get(&format!("servers/{u}/")).await;
    assert!(v["nics"][0]["runtime"]["ip_v4"]["uuid"]
        .as_str()
        .unwrap()
        .contains('.'));
    let (s, _) = t.action("servers", &u, "stop").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    t.wait_status("servers", &u, "stopped").await;
    let (s, _) = t.delete(&format!("servers/{u}/?recurse=all_drives")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t.get(&format!("drives/{d}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.emu.shutdown().await;
}
