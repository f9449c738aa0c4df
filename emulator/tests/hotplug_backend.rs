//! Drive hot-plug reaches the backend: a PUT of a running server that adds or removes drives
//! calls `Backend::server_drives_changed` (the QEMU backend turns it into QMP, `src/vm/qmp.rs`);
//! when the backend refuses, the PUT fails and the server's drives are as before.

mod common;
use async_trait::async_trait;
use cloudsim::backend::{Backend, BackendError, StartDrive};
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// One hot-plug call: (server, attached drive uuids, detached drive uuids).
type Call = (String, Vec<String>, Vec<String>);

/// Records every hot-plug call.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    fail: bool,
}

#[async_trait]
impl Backend for Recorder {
    async fn server_drives_changed(
        &self,
        server: &str,
        attached: &[StartDrive],
        detached: &[String],
    ) -> Result<(), BackendError> {
        self.calls.lock().unwrap().push((
            server.to_string(),
            attached.iter().map(|d| d.uuid.clone()).collect(),
            detached.to_vec(),
        ));
        if self.fail {
            return Err(BackendError(
                "QMP device_add failed: no free PCI slot".into(),
            ));
        }
        Ok(())
    }
}

async fn with(rec: Arc<Recorder>) -> T {
    start(cloudsim::EmulatorConfig {
        backend: Some(rec),
        ..cloudsim::EmulatorConfig::for_tests()
    })
    .await
}

#[tokio::test]
async fn attach_and_detach_on_a_running_server_call_the_backend() {
    let rec = Arc::new(Recorder::default());
    let t = with(rec.clone()).await;
    let boot = t.ready_drive("b", 1 << 30).await;
    let vol = t.ready_drive("v", 1 << 30).await;
    let u = t.running_server("node", Some(&boot), "").await;
    let (_, srv) = t.get(&format!("servers/{u}/")).await;
    let mut body = srv.clone();
    body["drives"]
        .as_array_mut()
        .unwrap()
        .push(json!({"dev_channel": "0:2", "device": "virtio", "drive": vol}));
    let (s, v) = t.put(&format!("servers/{u}/"), body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // a PUT that changes no drive (rename) does not call it
    let (s, _) = t.put(&format!("servers/{u}/"), json!({"name": "n2"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t.put(&format!("servers/{u}/"), srv).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        *rec.calls.lock().unwrap(),
        vec![
            (u.clone(), vec![vol.clone()], vec![]),
            (u.clone(), vec![], vec![vol.clone()]),
        ]
    );

    // a stopped server: drives change in the state only, the backend is not asked
    t.action("servers", &u, "stop").await;
    t.wait_status("servers", &u, "stopped").await;
    let (s, v) = t
        .put(
            &format!("servers/{u}/"),
            json!({"drives": [{"dev_channel": "0:0", "device": "virtio", "drive": boot},
                              {"dev_channel": "0:1", "device": "virtio", "drive": vol}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(rec.calls.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_hot_plug_fails_the_put_and_changes_nothing() {
    let rec = Arc::new(Recorder {
        fail: true,
        ..Default::default()
    });
    let t = with(rec.clone()).await;
    let boot = t.ready_drive("b", 1 << 30).await;
    let vol = t.ready_drive("v", 1 << 30).await;
    let u = t.running_server("node", Some(&boot), "").await;
    let (_, srv) = t.get(&format!("servers/{u}/")).await;
    let mut body = srv.clone();
    body["drives"]
        .as_array_mut()
        .unwrap()
        .push(json!({"dev_channel": "0:2", "device": "virtio", "drive": vol}));
    let (s, e) = t.put(&format!("servers/{u}/"), body).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    let msg = assert_error(&e, "backend")["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("no free PCI slot"), "{msg}");
    assert_eq!(rec.calls.lock().unwrap().len(), 1);
    let (_, now) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(now["drives"].as_array().unwrap().len(), 1, "{now}");
    let (_, d) = t.get(&format!("drives/{vol}/")).await;
    assert_eq!(d["status"], "unmounted");
    assert_eq!(d["mounted_on"], json!([]));
}
