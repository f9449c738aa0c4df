//! What both loops need: prerequisites, progress lines, the builds they run (static agent,
//! imgbuild, the controller), SSH into a node, the emulator's REST API, and a failure report that
//! prints the node's console and agent journal when a test panics after boot.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

pub fn repo() -> PathBuf {
    std::fs::canonicalize(REPO).expect("repo root")
}

pub use test_support::{cache_dir, shell_quote};

pub fn say(t0: Instant, msg: &str) {
    eprintln!("[e2e {:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Returns the reason a VM test cannot run here, if any.
pub fn missing_prereq() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Some("must run as root (debootstrap builds the library image)".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "debootstrap",
        "mke2fs",
        "ssh",
        "ssh-keygen",
    ] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!(
                "{tool} not found (scripts/install-deps installs it)"
            ));
        }
    }
    None
}

/// Panics (or, with CLOUDSIGMA_K8S_ALLOW_SKIP=1, returns false) when the VM tests cannot run.
pub fn prereqs_or_skip(test: &str) -> bool {
    match missing_prereq() {
        None => true,
        Some(why) if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
        Some(why) => {
            panic!("{test} cannot run: {why} (set CLOUDSIGMA_K8S_ALLOW_SKIP=1 to skip)")
        }
    }
}

pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        // The program only: `{cmd:?}` would print the environment, i.e. the emulator password.
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a repo script whose last stdout line is its result (a path), progress on stderr.
pub fn script_last_line(repo: &Path, script: &str, args: &[&str]) -> String {
    let out = run(
        Command::new(repo.join(script))
            .args(args)
            .stderr(std::process::Stdio::inherit()),
        script,
    );
    out.lines().last().unwrap_or_default().trim().to_string()
}

/// The Debian library image the QEMU backend boots (tests/vm-image/build.sh; cached after the
/// first run): the directory holding it.
pub fn library_image(t0: Instant, repo: &Path) -> PathBuf {
    say(
        t0,
        "library image: tests/vm-image/build.sh (cached after the first run)",
    );
    PathBuf::from(script_last_line(repo, "tests/vm-image/build.sh", &[]))
}

/// The binaries the loops run. The debug builds (imgbuild, the host-process controller) go to a
/// target dir of their own, `e2e-build` (the outer `cargo test` holds the lock of the main one's
/// debug profile); the static release builds to the main one (`static_release`).
/// E2E_AGENT_BIN / E2E_IMGBUILD_BIN / E2E_CONTROLLER_BIN use prebuilt ones.
pub struct Binaries {
    pub agent: PathBuf,
    pub imgbuild: PathBuf,
    pub controller: PathBuf,
}

/// `$CARGO_TARGET_DIR`, else the clone's `target/`.
pub fn main_target() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
}

pub fn e2e_target() -> PathBuf {
    main_target().join("e2e-build")
}

/// `cargo build ARGS` into `target`.
fn cargo_build(repo: &Path, target: &Path, env: &[(&str, &str)], args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(&cargo)
            .current_dir(repo)
            .envs(env.iter().copied())
            .arg("build")
            .args(args)
            .env("CARGO_TARGET_DIR", target)
            .stderr(std::process::Stdio::inherit()),
        what,
    );
}

/// A static release build of `package`'s binary of the same name (as the image and the
/// controller's container ship it; glibc linked in). It goes to the main target dir, where the
/// recipes' default `agent_binary` (`${CARGO_TARGET_DIR:-../../target}/x86_64-unknown-linux-gnu/
/// release/cloudsigma-agent`) finds it after the tests: a build for another `--target` and
/// profile takes other locks than the debug build `cargo test` holds.
fn static_release(repo: &Path, package: &str) -> PathBuf {
    cargo_build(
        repo,
        &main_target(),
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
        &[
            "--release",
            "-p",
            package,
            "--bin",
            package,
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
        &format!("cargo build {package} (static)"),
    );
    main_target()
        .join("x86_64-unknown-linux-gnu/release")
        .join(package)
}

/// The controller's container image as an OCI archive: `$CONTROLLER_IMAGE_ARCHIVE` (scripts/test
/// builds it with scripts/controller-image), else `scripts/controller-image` here, packaging a
/// static release build.
pub fn controller_image_archive(repo: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CONTROLLER_IMAGE_ARCHIVE") {
        return PathBuf::from(p);
    }
    let binary = static_release(repo, "cloudsigma-controller");
    let out = e2e_target().join("controller.tar");
    run(
        Command::new(repo.join("scripts/controller-image"))
            .arg("--binary")
            .arg(&binary)
            .arg("--out")
            .arg(&out)
            .stderr(std::process::Stdio::inherit()),
        "scripts/controller-image",
    );
    out
}

/// The name an OCI archive's image gets when containerd imports it: its index.json's
/// `io.containerd.image.name` annotation.
pub fn archive_image_ref(archive: &Path) -> String {
    let index = run(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("./index.json"),
        "reading index.json of the image archive",
    );
    let index: Value = serde_json::from_str(&index)
        .unwrap_or_else(|e| panic!("{}: index.json is not JSON: {e}", archive.display()));
    index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{}: no io.containerd.image.name in index.json: {index}",
                archive.display()
            )
        })
        .to_string()
}

pub fn build_binaries(repo: &Path, with_controller: bool) -> Binaries {
    let target = e2e_target();
    let build = |env: &[(&str, &str)], args: &[&str], what: &str| {
        cargo_build(repo, &target, env, args, what)
    };
    let agent = match std::env::var("E2E_AGENT_BIN") {
        Ok(p) => PathBuf::from(p),
        // static, as the image ships it
        Err(_) => static_release(repo, "cloudsigma-agent"),
    };
    let imgbuild = match std::env::var("E2E_IMGBUILD_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            build(
                &[],
                &["-p", "imgbuild", "--bin", "imgbuild"],
                "cargo build imgbuild",
            );
            target.join("debug/imgbuild")
        }
    };
    let controller = match std::env::var("E2E_CONTROLLER_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) if with_controller => {
            build(
                &[],
                &[
                    "-p",
                    "cloudsigma-controller",
                    "--bin",
                    "cloudsigma-controller",
                ],
                "cargo build cloudsigma-controller",
            );
            target.join("debug/cloudsigma-controller")
        }
        Err(_) => PathBuf::new(),
    };
    Binaries {
        agent,
        imgbuild,
        controller,
    }
}

/// Runs `imgbuild build RECIPE --output json` against the emulator and returns the image uuid.
pub fn imgbuild(
    bin: &Path,
    repo: &Path,
    api: &Api,
    recipe: &str,
    vars: &[(&str, String)],
) -> String {
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo)
        .env("CLOUDSIGMA_USERNAME", &api.user)
        .env("CLOUDSIGMA_PASSWORD", &api.pass)
        .args([
            "build",
            recipe,
            "--api-url",
            &api.base,
            "--output",
            "json",
            "--plain",
        ])
        .stderr(std::process::Stdio::inherit());
    for (k, v) in vars {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    let out = run(&mut cmd, &format!("imgbuild {recipe}"));
    let manifest: Value = serde_json::from_str(out.trim())
        .or_else(|_| serde_json::from_str(out.lines().last().unwrap_or_default()))
        .unwrap_or_else(|e| {
            panic!("imgbuild --output json printed no JSON manifest ({e}):\n{out}")
        });
    manifest["image"]["uuid"]
        .as_str()
        .or_else(|| manifest["image_uuid"].as_str())
        .or_else(|| manifest["uuid"].as_str())
        .unwrap_or_else(|| panic!("no image uuid in manifest: {manifest}"))
        .to_string()
}

/// A fresh ed25519 key pair for SSH into a node: (dir holding it, private key path, public key).
pub fn ssh_keypair() -> (tempfile::TempDir, PathBuf, String) {
    let keydir = tempfile::tempdir().expect("tempdir");
    let key = keydir.path().join("id");
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
        "ssh-keygen",
    );
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pubkey");
    (keydir, key, pubkey.trim().to_string())
}

/// Prints the node's console log and agent status when the test fails anywhere after boot.
pub struct FailureReport {
    pub console: Option<PathBuf>,
    pub ssh: Option<Ssh>,
    /// Extra commands whose output helps (e.g. the kubelet's journal).
    pub extra: Vec<String>,
}

impl Drop for FailureReport {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(p) = &self.console {
            let log = std::fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
            let tail: String = log
                .chars()
                .rev()
                .take(20_000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!(
                "===== VM console log ({}) =====\n{tail}\n===== end console =====",
                p.display()
            );
        }
        if let Some(s) = &self.ssh {
            let st = s.run("sudo cat /run/cloudsigma/bootstrap.json; echo; sudo journalctl -b -u cloudsigma-bootstrap --no-pager | tail -50");
            eprintln!(
                "===== agent status / journal =====\n{}\n=====",
                st.unwrap_or_else(|e| e)
            );
            for cmd in &self.extra {
                eprintln!(
                    "===== {cmd} =====\n{}\n=====",
                    s.run(cmd).unwrap_or_else(|e| e)
                );
            }
        }
    }
}

#[derive(Clone)]
pub struct Ssh {
    pub key: PathBuf,
    pub host: String,
    pub user: String,
}

impl Ssh {
    /// `ssh` or `scp` with our key and no host-key bookkeeping (every node is new).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(["-F", "/dev/null", "-i"]).arg(&self.key).args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ]);
        c
    }

    fn result(
        &self,
        what: &str,
        out: std::io::Result<std::process::Output>,
    ) -> Result<String, String> {
        let out = out.map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{what} {}@{} exited {}: {}",
                self.user,
                self.host,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn run(&self, script: &str) -> Result<String, String> {
        let out = self
            .command("ssh")
            .arg(format!("{}@{}", self.user, self.host))
            .arg(script)
            .output();
        self.result("ssh", out)
    }

    /// Copies a local file to `remote` (a path the SSH user may write) with scp.
    pub fn copy_to(&self, local: &Path, remote: &str) -> Result<(), String> {
        let out = self
            .command("scp")
            .arg(local)
            .arg(format!("{}@{}:{remote}", self.user, self.host))
            .output();
        self.result("scp", out).map(drop)
    }
}

impl Ssh {
    /// `run`, repeated every 2 s until it succeeds or `within` has passed (sshd may be restarting
    /// or the guest busy right after boot); the last error otherwise.
    pub fn run_retrying(&self, script: &str, within: Duration) -> Result<String, String> {
        let t = Instant::now();
        loop {
            match self.run(script) {
                Ok(out) => return Ok(out),
                Err(e) if t.elapsed() >= within => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }
}

/// The emulator in process with the QEMU backend and the local library image: its data dir
/// (drive files, consoles), the emulator, and its REST API.
pub struct VmCloud {
    pub data: tempfile::TempDir,
    pub emu: cloudsim::EmulatorHandle,
    pub api: Api,
}

impl VmCloud {
    pub async fn start(t0: Instant, img_dir: &Path) -> VmCloud {
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
        let emu = cloudsim::Emulator::start(cloudsim::EmulatorConfig {
            timings,
            context_dir: Some(data.path().join("ctx")),
            backend: Some(backend),
            extra_libdrives: vec![
                cloudsim::vm::local_library_drive(img_dir).unwrap_or_else(|e| panic!("{e}"))
            ],
            // one no text contains by chance, so that "the password is not in X" means something
            password: format!("e2e-pw-{:016x}", {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(t0.elapsed().as_nanos());
                h.finish()
            }),
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
        let created = api
            .post(
                "servers/",
                serde_json::json!({"objects": [{
                    "name": name, "cpu": cpu_mhz, "mem": mem, "smp": 2, "vnc_password": "e2e-vnc",
                    "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": {"uuid": clone}}],
                    "nics": [{"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"}],
                    "meta": {"cloudinit-user-data": user_data, "base64_fields": "cloudinit-user-data"}
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

/// Cluster API kubeadm bootstrap data for a worker as CABPK renders it (`## template: jinja`, the
/// JoinConfiguration in write_files, the join and the success marker in runcmd), with the given
/// join credentials, kubelet flags (name, value) beyond the provider-id, extra files
/// (path, mode, content) and our SSH key for the checks.
pub fn cabpk_worker_data(
    endpoint: &str,
    token: &str,
    ca_cert_hash: &str,
    kubelet_args: &[(&str, &str)],
    files: &[(&str, &str, &str)],
    pubkey: &str,
) -> String {
    let args: String = kubelet_args
        .iter()
        .map(|(n, v)| format!("        - name: {n}\n          value: {v}\n"))
        .collect();
    let files: String = files
        .iter()
        .map(|(path, mode, content)| {
            format!(
                "-   path: {path}\n    owner: root:root\n    permissions: '{mode}'\n    content: \"{}\"\n",
                content.replace('"', "\\\"")
            )
        })
        .collect();
    format!(
        r#"## template: jinja
#cloud-config

write_files:
-   path: /run/kubeadm/kubeadm-join-config.yaml
    owner: root:root
    permissions: '0640'
    content: |
      ---
      apiVersion: kubeadm.k8s.io/v1beta4
      discovery:
        bootstrapToken:
          apiServerEndpoint: {endpoint}
          caCertHashes:
          - {ca_cert_hash}
          token: {token}
      kind: JoinConfiguration
      nodeRegistration:
        criSocket: unix:///var/run/containerd/containerd.sock
        kubeletExtraArgs:
{args}        - name: provider-id
          value: cloudsigma://{{{{ ds.meta_data.instance_id }}}}
        name: '{{{{ ds.meta_data.local_hostname }}}}'
{files}-   path: /run/cluster-api/placeholder
    owner: root:root
    permissions: '0640'
    content: "This placeholder file is used to create the /run/cluster-api sub directory in a way that is compatible with both Linux and Windows (mkdir -p /run/cluster-api does not work with Windows)"
-   path: /home/debian/.ssh/authorized_keys
    owner: root:root
    permissions: '0644'
    content: "{pubkey}"
runcmd:
  - kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && echo success > /run/cluster-api/bootstrap-success.complete
"#
    )
}

/// The guest's journal: monotonic time (guest uptime, s) of the first line of `unit` matching
/// `pattern` (grep -m1), or None.
pub fn journal_uptime(ssh: &Ssh, unit: &str, pattern: &str) -> Option<f64> {
    let out = ssh
        .run(&format!(
            "sudo journalctl -b -o short-monotonic --no-pager -u {unit} | grep -m1 -- {pattern} | sed -E 's/^\\[ *([0-9.]+)\\].*/\\1/'",
            pattern = shell_quote(pattern)
        ))
        .ok()?;
    out.trim().parse().ok()
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

/// A drive's ext4 filesystem read without booting or mounting it (no loop devices in the test
/// sandbox): the qcow2 (with its backing chain) converted to a sparse raw file, read with
/// e2fsprogs' `debugfs`. Only for drives whose whole disk is the filesystem (the local library
/// image's layout, tests/vm-image/build.sh).
pub struct DiskImage {
    _dir: tempfile::TempDir,
    pub raw: PathBuf,
}

impl DiskImage {
    pub fn open(qcow2: &Path) -> DiskImage {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("disk.raw");
        run(
            Command::new("qemu-img")
                .args(["convert", "-U", "-O", "raw"])
                .arg(qcow2)
                .arg(&raw),
            "qemu-img convert",
        );
        DiskImage { _dir: dir, raw }
    }

    /// `debugfs -R REQUEST` on the raw image (read-only); its stdout.
    pub fn debugfs(&self, request: &str) -> String {
        run(
            Command::new("debugfs")
                .args(["-R", request])
                .arg(&self.raw)
                .stderr(std::process::Stdio::null()),
            &format!("debugfs -R {request:?}"),
        )
    }

    /// A file's content, or None when it does not exist.
    pub fn read(&self, path: &str) -> Option<String> {
        let listed = self.debugfs(&format!("stat {path}"));
        if !listed.contains("Inode:") {
            return None;
        }
        Some(self.debugfs(&format!("cat {path}")))
    }

    /// The names in a directory (empty when it does not exist).
    pub fn list(&self, dir: &str) -> Vec<String> {
        self.debugfs(&format!("ls -p {dir}"))
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    /// The filesystem's size in bytes (block count × block size from the superblock).
    pub fn fs_bytes(&self) -> u64 {
        let stats = self.debugfs("stats");
        let field = |name: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("debugfs stats has no {name}:\n{stats}"))
        };
        field("Block count:") * field("Block size:")
    }
}

#[cfg(test)]
mod tests {
    /// The rendered data is what CABPK writes: args before the provider-id, extra files before the
    /// placeholder, quotes in file content escaped for the double-quoted YAML scalar.
    #[test]
    fn cabpk_worker_data_shape() {
        let d = super::cabpk_worker_data(
            "10.0.2.2:6443",
            "abcdef.0123456789abcdef",
            "sha256:00",
            &[("cloud-provider", "external")],
            &[("/etc/x.json", "0644", r#"{"a":"b"}"#)],
            "ssh-ed25519 AAAA k",
        );
        assert!(d.starts_with("## template: jinja\n#cloud-config\n"), "{d}");
        assert!(d.contains("        kubeletExtraArgs:\n        - name: cloud-provider\n          value: external\n        - name: provider-id\n          value: cloudsigma://{{ ds.meta_data.instance_id }}\n"), "{d}");
        assert!(d.contains("-   path: /etc/x.json\n    owner: root:root\n    permissions: '0644'\n    content: \"{\\\"a\\\":\\\"b\\\"}\"\n-   path: /run/cluster-api/placeholder\n"), "{d}");
        let plain = super::cabpk_worker_data("e:1", "t", "h", &[], &[], "k");
        assert!(
            plain.contains("        kubeletExtraArgs:\n        - name: provider-id\n"),
            "{plain}"
        );
        assert!(plain.contains("name: '{{ ds.meta_data.local_hostname }}'\n-   path: /run/cluster-api/placeholder\n"), "{plain}");
    }
}
