//! Shared helpers for the emulator's wire-level tests (raw reqwest + serde_json::Value).
#![allow(dead_code)]

pub mod client;

use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub struct T {
    pub emu: EmulatorHandle,
    pub http: reqwest::Client,
}

pub async fn start(cfg: EmulatorConfig) -> T {
    let emu = Emulator::start(cfg).await.expect("emulator starts");
    T {
        emu,
        http: reqwest::Client::new(),
    }
}

pub async fn instant() -> T {
    start(EmulatorConfig::for_tests()).await
}

/// Every transition takes `ms` milliseconds.
pub async fn with_timings(ms: u64) -> T {
    start(EmulatorConfig {
        timings: cloudsim::Timings::uniform(std::time::Duration::from_millis(ms)),
        ..EmulatorConfig::for_tests()
    })
    .await
}

/// `v["uuid"]` as a String.
pub fn uuid_of(v: &Value) -> String {
    v["uuid"].as_str().unwrap_or_default().to_string()
}

impl T {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.emu.api_url(), path.trim_start_matches('/'))
    }
    pub async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut r = self
            .http
            .request(method, self.url(path))
            .basic_auth(self.emu.username(), Some(self.emu.password()));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v, headers)
    }
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.req(Method::GET, path, None).await;
        (s, v)
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.req(Method::POST, path, Some(body)).await;
        (s, v)
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.req(Method::PUT, path, Some(body)).await;
        (s, v)
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.req(Method::DELETE, path, None).await;
        (s, v)
    }
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        // in process: the admin endpoints listen on a unix socket by default
        let (s, v) = self.emu.admin(method.as_str(), path, body).await;
        (StatusCode::from_u16(s).expect("status"), v)
    }

    pub async fn create_drive(&self, name: &str, size: u64) -> Value {
        let (s, v) = self
            .post(
                "drives/",
                json!({"objects": [{"name": name, "size": size, "media": "disk"}]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["objects"][0].clone()
    }
    /// A new disk that has finished `creating` (status `unmounted`, ready to attach): its uuid.
    pub async fn ready_drive(&self, name: &str, size: u64) -> String {
        let d = self.create_drive(name, size).await["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        self.wait_status("drives", &d, "unmounted").await;
        d
    }
    /// A stopped server with one drive and one public DHCP NIC.
    pub async fn create_server(&self, name: &str, drive: Option<&str>) -> Value {
        let mut o = json!({"name": name, "cpu": 1000, "mem": 536870912, "vnc_password": "pw",
            "nics": [{"ip_v4_conf": {"conf": "dhcp", "ip": null}, "model": "virtio"}]});
        if let Some(d) = drive {
            o["drives"] =
                json!([{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": d}]);
        }
        let (s, v) = self.post("servers/", json!({"objects": [o]})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["objects"][0].clone()
    }
    /// [`T::create_server`]'s uuid.
    pub async fn server_uuid(&self, name: &str, drive: Option<&str>) -> String {
        uuid_of(&self.create_server(name, drive).await)
    }
    /// A new server started with `?do=start{start_query}` (e.g. `&avoid=...`), once `running`.
    pub async fn running_server(
        &self,
        name: &str,
        drive: Option<&str>,
        start_query: &str,
    ) -> String {
        let u = self.server_uuid(name, drive).await;
        let start = format!("servers/{u}/action/?do=start{start_query}");
        let (s, v) = self.post(&start, json!({})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        self.wait_status("servers", &u, "running").await;
        u
    }
    pub async fn status(&self, res: &str, uuid: &str) -> String {
        let (s, v) = self.get(&format!("{res}/{uuid}/")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["status"].as_str().unwrap_or_default().to_string()
    }
    /// Poll until status (instant timings settle on the next request).
    pub async fn wait_status(&self, res: &str, uuid: &str, want: &str) {
        for _ in 0..200 {
            if self.status(res, uuid).await == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{res}/{uuid} never reached {want}");
    }
    pub async fn action(&self, res: &str, uuid: &str, what: &str) -> (StatusCode, Value) {
        self.post(&format!("{res}/{uuid}/action/?do={what}"), json!({}))
            .await
    }
}

/// Assert the CloudSigma error body shape and return the first entry.
pub fn assert_error(v: &Value, error_type: &str) -> Value {
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("error body must be a JSON array: {v}"));
    assert!(!arr.is_empty(), "error array empty");
    let e = &arr[0];
    assert_eq!(e["error_type"], error_type, "{v}");
    assert!(
        e["error_message"]
            .as_str()
            .map(|m| !m.is_empty())
            .unwrap_or(false),
        "{v}"
    );
    assert!(
        e.as_object()
            .map(|o| o.contains_key("error_point"))
            .unwrap_or(false),
        "{v}"
    );
    e.clone()
}
