//! Status machines driven by time, and the backend seam.
mod common;
use async_trait::async_trait;
use cloudsim::{
    Backend, BackendError, BackendSink, EmulatorConfig, ShutdownMode, StartSpec, Timings,
};
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Long enough that a loaded CI machine still sees the transitional status right after the
// action; every wait below is STEP plus slack.
const STEP: Duration = Duration::from_millis(1000);

fn slow() -> EmulatorConfig {
    EmulatorConfig {
        timings: Timings::uniform(STEP),
        ..EmulatorConfig::for_tests()
    }
}

#[tokio::test]
async fn drive_create_clone_resize_take_time() {
    let t = start(slow()).await;
    let d = t.create_drive("d", 1 << 30).await;
    assert_eq!(d["status"], "creating");
    let d = d["uuid"].as_str().unwrap().to_string();
    assert_eq!(t.status("drives", &d).await, "creating");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("drives", &d).await, "unmounted");

    let (s, v) = t
        .post(
            &format!("drives/{d}/action/?do=clone"),
            json!({"name": "copy", "size": 2u64 << 30}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let c = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(v["objects"][0]["status"], "cloning_dst");
    assert_eq!(v["objects"][0]["size"], json!(2u64 << 30));
    assert_eq!(t.status("drives", &d).await, "cloning_src");
    assert_eq!(t.status("drives", &c).await, "cloning_dst");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("drives", &d).await, "unmounted");
    assert_eq!(t.status("drives", &c).await, "unmounted");

    let (s, v) = t
        .post(
            &format!("drives/{c}/action/?do=resize"),
            json!({"name": "copy", "media": "disk", "size": 3u64 << 30}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["objects"][0]["status"], "resizing");
    assert_eq!(t.status("drives", &c).await, "resizing");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    let (_, v) = t.get(&format!("drives/{c}/")).await;
    assert_eq!(v["status"], "unmounted");
    assert_eq!(v["size"], json!(3u64 << 30));
}

#[tokio::test]
async fn server_start_stop_shutdown_take_time() {
    let t = start(slow()).await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.status("servers", &u).await, "stopped");
    t.action("servers", &u, "start").await;
    assert_eq!(t.status("servers", &u).await, "starting");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("servers", &u).await, "running");
    let (s, _) = t.action("servers", &u, "shutdown").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(t.status("servers", &u).await, "stopping");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("servers", &u).await, "stopped");
    let (_, v) = t.get(&format!("servers/{u}/")).await;
    assert!(v["runtime"].is_null());
    t.action("servers", &u, "start").await;
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    t.action("servers", &u, "stop").await;
    assert_eq!(t.status("servers", &u).await, "stopping");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("servers", &u).await, "stopped");
}

#[tokio::test]
async fn transitions_happen_without_requests() {
    // The background ticker settles and persists state while no client asks: observed through
    // the state file only (any API or handle call would settle by itself).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    let t = start(EmulatorConfig {
        timings: Timings::uniform(Duration::from_millis(100)),
        state_file: Some(file.clone()),
        save_debounce: Duration::from_millis(50),
        ..EmulatorConfig::for_tests()
    })
    .await;
    let d = t.create_drive("d", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(b) = std::fs::read(&file) {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            seen = v["drives"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["uuid"] == d.as_str())
                .map(|x| x["status"].to_string())
                .unwrap_or_default();
            if seen == "\"unmounted\"" {
                return;
            }
        }
    }
    panic!("drive never became unmounted in the saved state (last seen {seen})");
}

/// A backend that records starts and wants the guest to power off on shutdown.
#[derive(Default)]
struct Recorder {
    starts: Mutex<Vec<StartSpec>>,
    events: Mutex<Option<Arc<dyn BackendSink>>>,
}

#[async_trait]
impl Backend for Recorder {
    fn attach(&self, events: Arc<dyn BackendSink>) {
        *self.events.lock().unwrap() = Some(events);
    }
    fn runtime_ip(&self, _server: &str, nic_index: usize) -> Option<String> {
        Some(format!("127.77.0.{}", 10 + nic_index))
    }
    async fn server_start(&self, spec: &StartSpec) -> Result<(), BackendError> {
        if spec.name == "explode" {
            return Err(BackendError("no capacity".into()));
        }
        self.starts.lock().unwrap().push(spec.clone());
        Ok(())
    }
    async fn server_shutdown(&self, _uuid: &str) -> Result<ShutdownMode, BackendError> {
        Ok(ShutdownMode::AwaitPowerOff)
    }
}

#[tokio::test]
async fn backend_sees_start_spec_and_controls_shutdown() {
    let rec = Arc::new(Recorder::default());
    let mut timings = Timings::instant();
    timings.shutdown_timeout = STEP;
    let t = start(EmulatorConfig {
        timings,
        backend: Some(rec.clone()),
        ..EmulatorConfig::for_tests()
    })
    .await;
    let d = t.ready_drive("boot", 1 << 30).await;
    let srv = t.create_server("s", Some(&d)).await;
    let u = srv["uuid"].as_str().unwrap().to_string();
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    {
        let starts = rec.starts.lock().unwrap();
        let spec = &starts[0];
        assert_eq!(spec.boot_drive.as_deref(), Some(d.as_str()));
        assert_eq!(spec.nics[0].ip_v4.as_deref(), Some("127.77.0.10"));
        assert_eq!(spec.nics[0].mac, srv["nics"][0]["mac"].as_str().unwrap());
        assert_eq!(spec.context_socket, t.emu.context_socket(&u));
        assert!(spec.context_socket.exists());
    }
    let (_, v) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(v["nics"][0]["runtime"]["ip_v4"]["uuid"], "127.77.0.10");

    // shutdown waits for the guest: nobody powers off → back to running after the timeout
    t.action("servers", &u, "shutdown").await;
    assert_eq!(t.status("servers", &u).await, "stopping");
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("servers", &u).await, "running");
    // now the guest powers off
    t.action("servers", &u, "shutdown").await;
    assert_eq!(t.status("servers", &u).await, "stopping");
    rec.events.lock().unwrap().as_ref().unwrap().power_off(&u);
    assert_eq!(t.status("servers", &u).await, "stopped");
    // and stays stopped after the old timeout would have fired
    tokio::time::sleep(STEP + Duration::from_millis(200)).await;
    assert_eq!(t.status("servers", &u).await, "stopped");

    // a backend refusal is a 500 backend error and the server stays stopped
    let bad = t.create_server("explode", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t.action("servers", &bad, "start").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&v, "backend");
    assert_eq!(t.status("servers", &bad).await, "stopped");
}

#[tokio::test]
async fn guest_power_off_stops_a_running_server() {
    let t = instant().await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (s, _) = t
        .admin(
            reqwest::Method::POST,
            &format!("servers/{u}/power_off"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t.status("servers", &u).await, "stopped");
}

#[tokio::test]
async fn update_while_running_applies_only_name_meta_tags() {
    let t = instant().await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = t
        .put(
            &format!("servers/{u}/"),
            json!({"meta": {"a": "1", "b": "2"}}),
        )
        .await;
    assert_eq!(v["meta"], json!({"a": "1", "b": "2"}));
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (s, v) = t
        .put(
            &format!("servers/{u}/"),
            json!({"name": "renamed", "cpu": 4000, "mem": 4294967296u64, "meta": {"c": "3"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["cpu"], 1000, "cpu must not change while running");
    assert_eq!(v["mem"], 536870912);
    assert_eq!(v["meta"], json!({"c": "3"}), "meta is replaced wholesale");
    t.action("servers", &u, "stop").await;
    t.wait_status("servers", &u, "stopped").await;
    let (_, v) = t.put(&format!("servers/{u}/"), json!({"cpu": 4000})).await;
    assert_eq!(v["cpu"], 4000);
}

#[tokio::test]
async fn delete_recurse_variants() {
    let t = instant().await;
    let disk = t.create_drive("disk", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = t
        .post(
            "drives/",
            json!({"objects": [{"name": "cd", "size": 1073741824u64, "media": "cdrom"}]}),
        )
        .await;
    let cd = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    t.wait_status("drives", &cd, "unmounted").await;
    let (s, v) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x",
                "drives": [{"dev_channel": "0:0", "device": "virtio", "drive": disk, "boot_order": 1},
                           {"dev_channel": "0:1", "device": "ide", "drive": {"uuid": cd}}]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let u = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (s, _) = t.delete(&format!("servers/{u}/?recurse=cdroms")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        t.get(&format!("drives/{cd}/")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(t.get(&format!("drives/{disk}/")).await.0, StatusCode::OK);
    let (s, v) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn resize_action_is_a_full_definition_update() {
    let t = instant().await;
    let d = t.ready_drive("old", 1 << 30).await;
    let (s, v) = t
        .post(
            &format!("drives/{d}/action/?do=resize"),
            json!({"name": "new", "media": "disk", "size": 2u64 << 30, "meta": {"a": "b"}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["objects"][0]["name"], "new");
    assert_eq!(v["objects"][0]["meta"], json!({"a": "b"}));
    let (s, v) = t
        .post(
            &format!("drives/{d}/action/?do=resize"),
            json!({"name": "new"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "size is required: {v}");
    // a bare list is accepted as a create body
    let (s, v) = t
        .post(
            "drives/",
            json!([{"name": "bare", "size": 1073741824u64, "media": "disk"}]),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["objects"][0]["name"], "bare");
}

#[tokio::test]
async fn server_clone_clones_disks_and_attaches_cdroms() {
    let t = instant().await;
    let disk = t.create_drive("disk", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = t
        .post(
            "drives/",
            json!({"objects": [{"name": "cd", "size": 1073741824u64, "media": "cdrom"}]}),
        )
        .await;
    let cd = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    t.wait_status("drives", &disk, "unmounted").await;
    t.wait_status("drives", &cd, "unmounted").await;
    let (_, ips) = t.get("ips/").await;
    let ip = ips["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (s, v) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "src", "cpu": 1000, "mem": 536870912, "vnc_password": "x", "meta": {"k": "v"},
                "drives": [{"dev_channel": "0:0", "device": "virtio", "drive": disk}, {"dev_channel": "0:1", "device": "virtio", "drive": cd}],
                "nics": [{"ip_v4_conf": {"conf": "static", "ip": ip}}]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let src = v["objects"][0].clone();
    let (s, c) = t
        .post(
            &format!("servers/{}/action/?do=clone", src["uuid"].as_str().unwrap()),
            json!({"name": "copy", "random_vnc_password": true}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{c}");
    assert_eq!(c["name"], "copy");
    assert_eq!(c["status"], "stopped");
    assert_ne!(c["vnc_password"], "x");
    assert_eq!(c["meta"], json!({"k": "v"}));
    assert_ne!(
        c["drives"][0]["drive"]["uuid"],
        disk.as_str(),
        "disk cloned"
    );
    assert_eq!(
        c["drives"][1]["drive"]["uuid"],
        cd.as_str(),
        "cdrom attached as is"
    );
    assert_eq!(
        c["nics"][0]["ip_v4_conf"]["conf"], "dhcp",
        "IPs set to DHCP"
    );
    assert_ne!(c["nics"][0]["mac"], src["nics"][0]["mac"]);
    let new_disk = c["drives"][0]["drive"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.status("drives", &new_disk).await, "unmounted");
    assert!(t.emu.context_socket(c["uuid"].as_str().unwrap()).exists());
}
