//! The optional state file survives a restart.
mod common;
use cloudsim::EmulatorConfig;
use common::*;
use serde_json::json;

#[tokio::test]
async fn state_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let cfg = || EmulatorConfig {
        state_file: Some(file.clone()),
        ..EmulatorConfig::for_tests()
    };
    let t = start(cfg()).await;
    let d = t.ready_drive("keep", 1 << 30).await;
    let u = t.create_server("keep-me", Some(&d)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, tag) = t
        .post(
            "tags/",
            json!({"objects": [{"name": "k", "resources": [u]}]}),
        )
        .await;
    let tag = tag["objects"][0]["uuid"].as_str().unwrap().to_string();
    t.put(&format!("servers/{u}/"), json!({"meta": {"x": "y"}}))
        .await;
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    // debounced save happens without shutdown
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(file.exists(), "saved after changes");
    let T { emu, .. } = t;
    emu.shutdown().await;
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");

    let t = start(cfg()).await;
    let (_, v) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(v["name"], "keep-me");
    assert_eq!(v["meta"]["x"], "y");
    assert_eq!(v["status"], "running");
    assert_eq!(v["tags"][0]["uuid"], tag.as_str());
    assert_eq!(v["drives"][0]["drive"]["uuid"], d.as_str());
    assert_eq!(t.status("drives", &d).await, "mounted");
    assert!(t.emu.context_socket(&u).exists(), "context socket reopened");
    // and still behaves: stop, delete with drives
    t.action("servers", &u, "stop").await;
    t.wait_status("servers", &u, "stopped").await;
    assert_eq!(
        t.delete(&format!("servers/{u}/?recurse=all_drives"))
            .await
            .0,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn corrupt_state_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    std::fs::write(&file, "{not json").unwrap();
    let err = cloudsim::Emulator::start(EmulatorConfig {
        state_file: Some(file.clone()),
        ..EmulatorConfig::for_tests()
    })
    .await
    .err()
    .expect("must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("state.json"), "{msg}");
}
