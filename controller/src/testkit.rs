//! Test/bench harness: a real etcd + kube-apiserver on loopback (binaries built by
//! tests/kube/build.sh into $CLOUDSIGMA_K8S_CACHE/kube-bin). Not used by the controller itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "cloudsigma-test-admin-token";

pub use test_support::{cache_dir, free_port};

/// kubectl v1.34.1 built by tests/kube/build.sh next to the apiserver (same version, and present on a
/// fresh machine); else whatever `kubectl` is on PATH.
pub fn kubectl() -> Command {
    let pinned = cache_dir().join("kube-bin/kubectl");
    Command::new(if pinned.exists() {
        pinned.into_os_string()
    } else {
        "kubectl".into()
    })
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Paths of etcd and kube-apiserver, building them with tests/kube/build.sh when missing.
/// Err = unavailable (the caller fails, or skips when CLOUDSIGMA_K8S_ALLOW_SKIP=1).
pub fn binaries() -> Result<(PathBuf, PathBuf), String> {
    let bin = cache_dir().join("kube-bin");
    let etcd = bin.join("etcd");
    let api = bin.join("kube-apiserver");
    if !(etcd.exists() && api.exists()) {
        let script = repo_root().join("tests/kube/build.sh");
        eprintln!(
            "kube binaries missing in {}; running {}",
            bin.display(),
            script.display()
        );
        let st = Command::new("bash")
            .arg(&script)
            .status()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !st.success() {
            return Err(format!(
                "{} failed ({st}); see its output",
                script.display()
            ));
        }
    }
    if etcd.exists() && api.exists() {
        Ok((etcd, api))
    } else {
        Err(format!(
            "{} and {} still missing after the build",
            etcd.display(),
            api.display()
        ))
    }
}

/// Returns None (after printing why) when the prerequisites are missing and skipping is allowed;
/// panics with the reason otherwise.
pub fn binaries_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    match binaries() {
        Ok(b) => Some(b),
        Err(e) if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIP {test}: {e} (CLOUDSIGMA_K8S_ALLOW_SKIP=1)");
            None
        }
        Err(e) => panic!("{test}: kube-apiserver/etcd unavailable: {e}; run tests/kube/build.sh (or set CLOUDSIGMA_K8S_ALLOW_SKIP=1 to skip)"),
    }
}

/// The real etcd + kube-apiserver for `test`, or `None` (test skipped) as [`binaries_or_skip`].
pub fn cluster_or_skip(test: &str) -> Option<Cluster> {
    let (etcd, api_bin) = binaries_or_skip(test)?;
    Some(Cluster::start(&etcd, &api_bin).expect("cluster"))
}

/// A running etcd + kube-apiserver; stopped (apiserver first) and cleaned up on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub kubeconfig: PathBuf,
    apiserver: Child,
    etcd: Child,
}

impl Cluster {
    pub fn start(etcd_bin: &Path, api_bin: &Path) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("cs-kube-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path();
        let (cport, pport, aport) = (free_port(), free_port(), free_port());
        let log = |name: &str| {
            std::fs::File::create(d.join(name))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        let etcd = Command::new(etcd_bin)
            .args([
                "--name=default",
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{cport}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{cport}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{pport}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{pport}"),
                &format!("--initial-cluster=default=http://127.0.0.1:{pport}"),
                "--log-level=warn",
                // Throwaway test data: fsync per write would make the disk, not the controller,
                // the bottleneck of the 1,000-Node bench.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=1073741824",
            ])
            .stdout(log("etcd.log"))
            .stderr(log("etcd.log"))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", etcd_bin.display()))?;
        let mut guard = PartialCluster { etcd: Some(etcd) };

        let key = d.join("sa.key");
        let pubkey = d.join("sa.pub");
        run_ok(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048"),
        )?;
        run_ok(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&pubkey),
        )?;
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .map_err(|e| format!("writing tokens.csv: {e}"))?;
        let apiserver = Command::new(api_bin)
            .args([
                format!("--etcd-servers=http://127.0.0.1:{cport}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={aport}"),
                format!("--cert-dir={}", d.join("certs").display()),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", pubkey.display()),
                format!("--service-account-signing-key-file={}", key.display()),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // The 1,000-Node bench writes fast; the default flow-control budget would throttle
                // the test client, not the controller under test.
                "--max-requests-inflight=2000".into(),
                "--max-mutating-requests-inflight=1000".into(),
            ])
            .stdout(log("kube-apiserver.log"))
            .stderr(log("kube-apiserver.log"))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", api_bin.display()))?;
        let url = format!("https://127.0.0.1:{aport}");
        let kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &url, ADMIN_TOKEN)?;
        let etcd = guard.etcd.take().expect("etcd child");
        let c = Cluster {
            dir,
            url,
            kubeconfig,
            apiserver,
            etcd,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = c.kubectl(&["get", "--raw", "/readyz"]);
            if matches!(&out, Ok(s) if s.trim() == "ok") {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(c.dir.path().join("kube-apiserver.log"))
                    .unwrap_or_default();
                let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                return Err(format!(
                    "kube-apiserver not ready after 90 s: {out:?}\nlog tail (reversed):\n{tail}"
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(c)
    }

    /// The process ids of kube-apiserver and etcd (benches read their CPU time from /proc).
    pub fn pids(&self) -> (u32, u32) {
        (self.apiserver.id(), self.etcd.id())
    }

    /// The Events (events.k8s.io) about the object named `name`, in every namespace: one
    /// [`NodeEvent`] each, in the apiserver's order.
    pub fn events_about(&self, name: &str) -> Vec<NodeEvent> {
        // Fields are separated by a control character no reason or note contains.
        let out = self
            .kubectl(&[
                "get",
                "events.events.k8s.io",
                "-A",
                "-o",
                "jsonpath={range .items[*]}{.regarding.name}\x1f{.reason}\x1f{.note}\x1f{.series.count}{\"\\n\"}{end}",
            ])
            .expect("kubectl get events");
        out.lines()
            .filter_map(|l| {
                let mut f = l.split('\x1f');
                (f.next()? == name).then(|| NodeEvent {
                    reason: f.next().unwrap_or_default().to_string(),
                    note: f.next().unwrap_or_default().to_string(),
                    count: f.next().and_then(|c| c.parse().ok()),
                })
            })
            .collect()
    }

    /// kubectl as the admin; Ok(stdout) on success.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_as(&self.kubeconfig, args, None)
    }

    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        use std::io::Write;
        let mut cmd = kubectl();
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("kubectl: {e}"))?;
        if let (Some(input), Some(mut si)) = (stdin, child.stdin.take()) {
            let _ = si.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "kubectl {args:?}: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A kubeconfig authenticating with `token` (e.g. a ServiceAccount token).
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> Result<PathBuf, String> {
        let p = self.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&p, &self.url, token)?;
        Ok(p)
    }

    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// The apiserver's loopback address (for a proxy in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("https://")
            .parse()
            .expect("apiserver url is https://127.0.0.1:port")
    }

    /// An admin kubeconfig pointing at `url` instead (e.g. a [`StallingProxy`]).
    pub fn kubeconfig_for_url(&self, name: &str, url: &str) -> Result<PathBuf, String> {
        let p = self.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&p, url, ADMIN_TOKEN)?;
        Ok(p)
    }
}

/// A TCP proxy that forwards until [`StallingProxy::stall`], then holds every byte (and new
/// connections) without closing anything: a stalled apiserver connection, as a hung load
/// balancer or a half-dead network path produces it. [`StallingProxy::stall_existing`] stalls
/// only the connections open now: a peer that vanished, while a new connection would work.
pub struct StallingProxy {
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// New connections start stalled.
    all: bool,
    /// One switch per connection accepted so far.
    conns: Vec<tokio::sync::watch::Sender<bool>>,
}

impl StallingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> std::io::Result<StallingProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState::default()));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = {
                    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                    let (tx, rx) = tokio::sync::watch::channel(st.all);
                    st.conns.push(tx);
                    rx
                };
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, rx.clone()), pipe(sr, cw, rx));
                });
            }
        });
        Ok(StallingProxy {
            addr,
            state,
            accept,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stop forwarding (connections stay open, nothing is answered), new connections included.
    pub fn stall(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.all = true;
        for c in &st.conns {
            c.send_replace(true);
        }
    }

    /// Stop forwarding on the connections open now only; later ones are forwarded.
    pub fn stall_existing(&self) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for c in &st.conns {
            c.send_replace(true);
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .conns
            .len()
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as the stall began are held too.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("reading test kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("test kubeconfig");
    kube::Client::try_from(cfg).expect("kube client")
}

struct PartialCluster {
    etcd: Option<Child>,
}
impl Drop for PartialCluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // apiserver before etcd, each by the pid we started.
        stop(&mut self.apiserver);
        stop(&mut self.etcd);
    }
}

fn stop(c: &mut Child) {
    // SIGTERM for a graceful stop, SIGKILL after 5 s.
    let _ = Command::new("kill").arg(c.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn write_kubeconfig(path: &Path, url: &str, token: &str) -> Result<(), String> {
    test_support::write_kubeconfig(path, url, test_support::Trust::Insecure, "u", token)
}

/// A Node as kubelet `--cloud-provider=external` registers it.
pub fn tainted_node(
    name: &str,
    provider_id: Option<&str>,
    provided_ip: Option<&str>,
) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
            "annotations": provided_ip.map(|ip| serde_json::json!({"alpha.kubernetes.io/provided-node-ip": ip})).unwrap_or(serde_json::json!({})),
        },
        "spec": {
            "providerID": provider_id,
            "taints": [{"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true", "effect": "NoSchedule"}]
        }
    }))
    .expect("node fixture")
}

/// Creates a server `name` (2 GHz, 2 GiB, 2 cores, one public NIC) in the emulator behind `cs`
/// and, with `start`, starts it and waits until it runs; returns its uuid. One shape for every
/// controller test, so the instance-type label they see is the same (`c2000-m2048`).
pub async fn emulator_server(
    cs: &cloudsigma_api::client::Client,
    name: &str,
    start: bool,
) -> String {
    emulator_server_with_nics(
        cs,
        name,
        start,
        vec![cloudsigma_api::models::Nic::public_dhcp()],
    )
    .await
}

/// [`emulator_server`], running, with a public NIC and a NIC on the emulator's first VLAN (a real
/// VLAN object: the emulator seeds two, and refuses NICs naming unknown ones).
pub async fn emulator_vlan_server(cs: &cloudsigma_api::client::Client, name: &str) -> String {
    use cloudsigma_api::models::{Nic, Ref};
    let vlans = cs.list_vlans().await.expect("list VLANs");
    let vlan = vlans
        .first()
        .unwrap_or_else(|| panic!("the emulator has no VLAN (seed_library off?)"));
    let private = Nic {
        vlan: Some(Ref::Uuid(vlan.uuid.clone())),
        model: Some("virtio".into()),
        ..Default::default()
    };
    emulator_server_with_nics(cs, name, true, vec![Nic::public_dhcp(), private]).await
}

/// [`emulator_server`] with these NICs.
pub async fn emulator_server_with_nics(
    cs: &cloudsigma_api::client::Client,
    name: &str,
    start: bool,
    nics: Vec<cloudsigma_api::models::Nic>,
) -> String {
    use cloudsigma_api::models::{ServerCreate, ServerStatus};
    let s = cs
        .create_server(&ServerCreate {
            name: name.into(),
            cpu: 2000,
            mem: 2 << 30,
            smp: Some(2),
            vnc_password: "vncpass".into(),
            nics,
            ..Default::default()
        })
        .await
        .expect("create server");
    if start {
        cs.start_server(&s.uuid).await.expect("start");
        cs.wait_server_status(&s.uuid, ServerStatus::Running, Duration::from_secs(10))
            .await
            .expect("running");
    }
    s.uuid
}

/// A running emulator server `name` and its Node, registered under the same name, tainted, without
/// a providerID (as kubelet registers with `--cloud-provider=external`); returns the server's uuid.
pub async fn server_and_tainted_node(
    cs: &cloudsigma_api::client::Client,
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    name: &str,
) -> String {
    let uuid = emulator_server(cs, name, true).await;
    nodes
        .create(
            &kube::api::PostParams::default(),
            &tainted_node(name, None, None),
        )
        .await
        .unwrap_or_else(|e| panic!("create Node {name}: {e}"));
    uuid
}

/// A CloudSigma client for an emulator at `url`; `configure` sets what a test needs of retries and
/// timeouts (an outage test should not sit in client retries for long).
pub fn cloudsigma_client(
    url: &str,
    username: &str,
    password: &str,
    configure: impl FnOnce(&mut cloudsigma_api::client::Config),
) -> cloudsigma_api::client::Client {
    use cloudsigma_api::client::{Auth, Client, Config};
    let mut cfg = Config::for_url(
        url,
        Auth::Basic {
            username: username.into(),
            password: password.into(),
        },
    )
    .expect("emulator url");
    configure(&mut cfg);
    Client::new(cfg).expect("client")
}

/// One Event about an object, as [`Cluster::events_about`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub reason: String,
    pub note: String,
    /// `series.count`, for an Event that repeated (None before its first repeat).
    pub count: Option<u32>,
}
