//! The emulator in process with the QEMU backend (`VmCloud`), the node servers the loops boot in
//! it, and its REST API spoken raw (`Api`): the tests check the wire, not our client.

use crate::harness::say;
use crate::ssh::{FailureReport, Ssh};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The emulator in process with the QEMU backend and the local library image: its data dir
/// (drive files, consoles), the emulator, and its REST API.
pub struct VmCloud {
    pub data: tempfile::TempDir,
    pub emu: cloudsim::EmulatorHandle,
    pub api: Api,
}

impl VmCloud {
    pub async fn start(t0: Instant, img_dir: &Path) -> VmCloud {
        // one no text contains by chance, so that "the password is not in X" means something
        let password = format!("e2e-pw-{:016x}", {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(t0.elapsed().as_nanos());
            h.finish()
        });
        VmCloud::start_with_password(t0, img_dir, password).await
    }

    /// [`VmCloud::start`] with the account's password given: emulators standing for several
    /// locations of one account (imgbuild's `--matrix location=…` logs in to each with the same
    /// credentials).
    pub async fn start_with_password(t0: Instant, img_dir: &Path, password: String) -> VmCloud {
        let data = tempfile::tempdir().expect("tempdir");
        let backend = std::sync::Arc::new(
            cloudsim::vm::QemuBackend::new(cloudsim::vm::QemuConfig::new(data.path().join("vm")))
                .unwrap_or_else(|e| panic!("QEMU backend: {e}")),
        );
        say(
            t0,
            &format!(
                "emulator: QEMU backend, accel {:?}, data {}",
                backend.accel(),
                data.path().display()
            ),
        );
        let mut timings = cloudsim::Timings::instant();
        // the guest decides when an ACPI shutdown is done; give it time
        timings.shutdown_timeout = Duration::from_secs(180);
        // E2E_EMULATOR_ADMIN=tcp is a negative control for `guest_cannot_reach_admin`: the admin
        // endpoints on a loopback TCP port without a login, which is what the emulator served
        // before issue 21 (on its API port); the probe must then fail.
        let admin_listen = match std::env::var("E2E_EMULATOR_ADMIN").as_deref() {
            Ok("tcp") => cloudsim::AdminListen::loopback(),
            Ok("") | Ok("unix") | Err(_) => cloudsim::AdminListen::default(),
            Ok(other) => {
                panic!("E2E_EMULATOR_ADMIN={other:?}: expected `unix` (the default) or `tcp`")
            }
        };
        let emu = cloudsim::Emulator::start(cloudsim::EmulatorConfig {
            admin_listen,
            timings,
            context_dir: Some(data.path().join("ctx")),
            backend: Some(backend),
            extra_libdrives: vec![
                cloudsim::vm::local_library_drive(img_dir).unwrap_or_else(|e| panic!("{e}"))
            ],
            password,
            ..Default::default()
        })
        .await
        .expect("emulator start");
        let api = Api {
            http: reqwest::Client::new(),
            base: emu.api_url(),
            user: emu.username().to_string(),
            pass: emu.password().to_string(),
        };
        VmCloud { data, emu, api }
    }

    pub fn console(&self, server: &str) -> PathBuf {
        self.data
            .path()
            .join("vm/servers")
            .join(server)
            .join("console.log")
    }

    /// Clones `image`, creates the server `spec` describes (2 vCPU, one DHCP NIC, the user data
    /// base64-encoded as CloudSigma's cloud-init meta), starts it and waits for it to run. The
    /// failure report prints its console, and over SSH (`key`) the agent's journal and the
    /// spec's extra commands.
    pub async fn boot_node(&self, image: &str, spec: NodeSpec<'_>, key: &Path) -> BootedNode {
        self.boot_node_meta(image, spec, key, serde_json::Map::new())
            .await
    }

    /// [`VmCloud::boot_node`] with more server meta (`meta`) beside the user data.
    pub async fn boot_node_meta(
        &self,
        image: &str,
        spec: NodeSpec<'_>,
        key: &Path,
        mut meta: serde_json::Map<String, Value>,
    ) -> BootedNode {
        use base64::Engine as _;
        let api = &self.api;
        let NodeSpec {
            name,
            cpu_mhz,
            mem,
            user_data,
            extra,
        } = spec;
        let clone = api.clone_drive(image, &format!("{name}-root")).await;
        let user_data = base64::engine::general_purpose::STANDARD.encode(user_data);
        meta.insert("cloudinit-user-data".into(), user_data.into());
        meta.insert("base64_fields".into(), "cloudinit-user-data".into());
        let created = api
            .post(
                "servers/",
                serde_json::json!({"objects": [{
                    "name": name, "cpu": cpu_mhz, "mem": mem, "smp": 2, "vnc_password": "e2e-vnc",
                    "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": {"uuid": clone}}],
                    "nics": [{"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"}],
                    "meta": meta
                }]}),
            )
            .await;
        let server = created["objects"][0]["uuid"]
            .as_str()
            .expect("server uuid")
            .to_string();
        let mut report = FailureReport {
            console: Some(self.console(&server)),
            ssh: None,
            extra,
        };
        api.post(
            &format!("servers/{server}/action/?do=start"),
            serde_json::json!({}),
        )
        .await;
        let started = Instant::now();
        let running = api
            .wait_status(
                &format!("servers/{server}/"),
                "running",
                Duration::from_secs(60),
            )
            .await;
        let ip = running["runtime"]["nics"][0]["ip_v4"]["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("no runtime NAT IP: {running}"))
            .to_string();
        let ssh = Ssh {
            key: key.to_path_buf(),
            host: ip.clone(),
            user: "debian".into(),
        };
        report.ssh = Some(ssh.clone());
        BootedNode {
            server,
            ip,
            ssh,
            report,
            started,
        }
    }

    /// The end of every loop, once the node's server is deleted: the image and imgbuild's tags
    /// deleted, then zero servers, drives, tags and drive files, and the emulator (with every
    /// QEMU it started) shut down.
    pub async fn finish(self, image: &str) {
        self.api.delete(&format!("drives/{image}/")).await;
        self.finish_empty().await;
    }

    /// [`VmCloud::finish`] when every drive is deleted already: the tags deleted, then zero
    /// servers, drives, tags, drive files and QEMU processes; the emulator shut down.
    pub async fn finish_empty(self) {
        self.api.assert_empty_after_tags().await;
        let files = self.drive_files();
        assert!(files.is_empty(), "drive files left: {files:?}");
        let data_dir = self.data.path().display().to_string();
        self.emu.shutdown().await;
        let qemu_left = Command::new("pgrep")
            .args(["-f", &data_dir])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert!(qemu_left.is_empty(), "QEMU processes left: {qemu_left}");
    }

    /// Drive files left in the backend's data dir.
    pub fn drive_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data.path().join("vm/drives"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Issue 21 item 6, from inside a VM: a guest reaches the host's loopback through 10.0.2.2
    /// (QEMU user networking), so the emulator's API port answers it; the admin endpoints (every
    /// server's user-data, fault injection, host paths as images) must not. They are on a unix
    /// socket by default, and the API listener refuses `/admin/` without credentials like any
    /// API path. When admin is on TCP (`E2E_EMULATOR_ADMIN=tcp`), that port is probed too.
    pub fn assert_guest_cannot_reach_admin(&self, ssh: &Ssh) {
        let probe = |port: u16, path: &str| {
            let cmd = format!(
                "exec 3<>/dev/tcp/10.0.2.2/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && head -1 <&3"
            );
            ssh.run(&format!("bash -c {}", test_support::shell_quote(&cmd)))
                .unwrap_or_else(|e| panic!("probing port {port} {path} from the guest: {e}"))
        };
        let api_port = self.emu.addr().port();
        // The API answers the guest (so the probe reaches cloudsim at all) and asks for a login ...
        let api = probe(api_port, "/api/2.0/servers/");
        assert!(api.contains(" 401"), "the guest's GET of the API: {api:?}");
        // ... and no port of the emulator serves admin to it.
        let ports = std::iter::once(api_port).chain(self.emu.admin_addr().map(|a| a.port()));
        for port in ports {
            for path in ["/admin/counters", "/admin/faults", "/admin/servers/"] {
                let answer = probe(port, path);
                assert!(
                    answer.starts_with("HTTP/") && !answer.contains(" 200"),
                    "the guest reached the emulator's admin on port {port} {path}: {answer:?}"
                );
            }
        }
    }
}

/// The node server `VmCloud::boot_node` creates.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub cpu_mhz: u64,
    /// Bytes.
    pub mem: u64,
    /// Cloud-init user data (plain; base64-encoded on the wire).
    pub user_data: String,
    /// Commands whose output the failure report prints.
    pub extra: Vec<String>,
}

/// A started node server: its uuid, NAT IP, SSH into it, the failure report (armed) and when it
/// was started.
pub struct BootedNode {
    pub server: String,
    pub ip: String,
    pub ssh: Ssh,
    pub report: FailureReport,
    pub started: Instant,
}

/// The emulator's REST API, raw: the tests check the wire, not our client.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub user: String,
    pub pass: String,
}

impl Api {
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{}", self.base, path);
        let mut rq = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.pass));
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let rs = rq
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = rs.status();
        let text = rs.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {url} -> {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
    pub async fn get(&self, p: &str) -> Value {
        self.call(reqwest::Method::GET, p, None).await
    }
    pub async fn post(&self, p: &str, b: Value) -> Value {
        self.call(reqwest::Method::POST, p, Some(b)).await
    }
    pub async fn put(&self, p: &str, b: Value) -> Value {
        self.call(reqwest::Method::PUT, p, Some(b)).await
    }
    pub async fn delete(&self, p: &str) {
        self.call(reqwest::Method::DELETE, p, None).await;
    }
    pub async fn wait_status(&self, p: &str, want: &str, timeout: Duration) -> Value {
        let t = Instant::now();
        loop {
            let v = self.get(p).await;
            if v["status"] == want {
                return v;
            }
            assert!(
                t.elapsed() < timeout,
                "{p}: status {} after {timeout:?}, wanted {want}",
                v["status"]
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Powers a server off (`action`: `stop`, or `shutdown` for ACPI), waits up to `within` for
    /// `stopped`, and deletes it with its drives.
    pub async fn power_off_and_delete(&self, server: &str, action: &str, within: Duration) {
        self.post(
            &format!("servers/{server}/action/?do={action}"),
            serde_json::json!({}),
        )
        .await;
        self.wait_status(&format!("servers/{server}/"), "stopped", within)
            .await;
        self.delete(&format!("servers/{server}/?recurse=all_drives"))
            .await;
    }

    /// Clones a drive and waits until the clone is ready; returns its uuid.
    pub async fn clone_drive(&self, src: &str, name: &str) -> String {
        self.clone_drive_with(src, serde_json::json!({ "name": name }))
            .await
    }

    /// Deletes every tag (imgbuild's tags are account resources too) and asserts that no server
    /// and no drive is left.
    pub async fn assert_empty_after_tags(&self) {
        let tags = self.get("tags/").await;
        for t in tags["objects"].as_array().cloned().unwrap_or_default() {
            if let Some(u) = t["uuid"].as_str() {
                self.delete(&format!("tags/{u}/")).await;
            }
        }
        let servers = self.get("servers/").await;
        let drives = self.get("drives/").await;
        assert_eq!(
            servers["objects"].as_array().map(Vec::len),
            Some(0),
            "servers left: {servers}"
        );
        assert_eq!(
            drives["objects"].as_array().map(Vec::len),
            Some(0),
            "drives left: {drives}"
        );
    }
}

impl Api {
    /// Clones a drive at `size` bytes (≥ the source's; the QEMU backend grows the copy with
    /// `qemu-img resize`), as providers clone the image at the Machine's disk size, and waits
    /// until the clone is ready; returns its uuid.
    pub async fn clone_drive_sized(&self, src: &str, name: &str, size: u64) -> String {
        self.clone_drive_with(src, serde_json::json!({ "name": name, "size": size }))
            .await
    }

    /// `POST drives/SRC/action/?do=clone` with `body`, then waits until the clone is ready.
    async fn clone_drive_with(&self, src: &str, body: Value) -> String {
        let clone = self
            .post(&format!("drives/{src}/action/?do=clone"), body)
            .await;
        let uuid = clone["objects"][0]["uuid"]
            .as_str()
            .or_else(|| clone["uuid"].as_str())
            .expect("clone uuid")
            .to_string();
        self.wait_status(
            &format!("drives/{uuid}/"),
            "unmounted",
            Duration::from_secs(300),
        )
        .await;
        uuid
    }
}

impl VmCloud {
    /// The backend's qcow2 file of an account drive.
    pub fn drive_file(&self, uuid: &str) -> PathBuf {
        self.data
            .path()
            .join("vm/drives")
            .join(format!("{uuid}.qcow2"))
    }
}
