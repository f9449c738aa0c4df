//! `cloudsim`: a CloudSigma API 2.0 emulator with the per-server serial context (cepko).
//!
//! Embedding (tests of other crates):
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let emu = cloudsim::Emulator::start(cloudsim::EmulatorConfig::for_tests()).await?;
//! let base = emu.api_url(); // http://127.0.0.1:PORT/api/2.0/
//! let (status, counters) = emu.admin("GET", "counters", None).await; // /admin/, in process
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//! See docs/emulator.md for what is covered and the rules taken from the reference.

pub mod admin;
pub mod api;
pub mod app;
pub mod backend;
pub mod config;
pub mod context;
pub mod error;
pub mod faults;
pub mod keygen;
pub mod mac;
pub mod persist;
pub mod pty;
pub mod seed;
pub mod state;
pub mod tls;
/// VLANs as L2 segments (a switch per VLAN, DHCP on a VLAN) for the QEMU backend.
pub mod vlan;
/// The QEMU backend (`--backend qemu`): real VMs, qcow2 drives. Owned by the vm-e2e work.
pub mod vm;

pub use backend::{
    Backend, BackendError, BackendSink, ShutdownMode, StartDrive, StartNic, StartSpec,
    StateOnlyBackend,
};
pub use config::{AdminListen, EmulatorConfig, FaultConfig, LibDriveSeed, Timings};
pub use faults::{ContextNotReady, OnceRule, NOT_READY_REPLY};
pub use tls::TlsConfig;

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::context::ContextManager;
use crate::faults::Faults;
use crate::state::State;

pub struct Emulator;

/// A running emulator. Dropping it without [`EmulatorHandle::shutdown`] aborts its tasks.
pub struct EmulatorHandle {
    addr: SocketAddr,
    /// The admin endpoints' TCP listener (`AdminListen::Tcp`).
    admin_addr: Option<SocketAddr>,
    /// The admin endpoints' unix socket (`AdminListen::Unix`), removed on shutdown.
    admin_socket: Option<PathBuf>,
    /// `http` or `https`
    scheme: &'static str,
    /// The generated CA (self-signed TLS), PEM.
    ca_pem: Option<String>,
    app: Arc<App>,
    shutdown_tx: Option<watch::Sender<bool>>,
    /// The API and the admin HTTP servers.
    servers: Vec<JoinHandle<()>>,
    ticker: Option<JoinHandle<()>>,
    state_file: Option<PathBuf>,
    temp_dir: Option<PathBuf>,
}

impl Emulator {
    pub async fn start(cfg: EmulatorConfig) -> anyhow::Result<EmulatorHandle> {
        let st = initial_state(&cfg)?;
        let (ctx_dir, temp_dir) = context_dirs(&cfg)?;
        let app = new_app(&cfg, st, &ctx_dir).await?;
        let admin_tcp = match &cfg.admin_listen {
            AdminListen::Tcp(a) => Some(*a),
            AdminListen::Unix(_) => None,
        };
        refuse_default_credentials_off_loopback(&cfg, admin_tcp)?;
        // TLS first: a bad certificate fails before anything listens
        let tls = match &cfg.tls {
            Some(t) => {
                let names: Vec<SocketAddr> = std::iter::once(cfg.listen).chain(admin_tcp).collect();
                Some(tls::setup(t, &names)?)
            }
            None => None,
        };
        let (tx, rx) = watch::channel(false);
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let (addr, api_server) = serve_api(&cfg, &app, acceptor.clone(), rx.clone()).await?;
        let (admin, admin_server) = serve_admin(&cfg, &app, acceptor, rx, &ctx_dir).await?;
        let (admin_addr, admin_socket) = match admin {
            AdminAt::Tcp(a) => (Some(a), None),
            AdminAt::Unix(p) => (None, Some(p)),
        };
        for w in listen_warnings(addr, admin_addr, tls.is_some()) {
            tracing::warn!("{w}");
        }
        let ticker = tokio::spawn(ticker(
            Arc::downgrade(&app),
            cfg.state_file.clone(),
            cfg.save_debounce,
        ));
        tracing::info!(%addr, admin = ?admin_addr.map(|a| a.to_string()).or(admin_socket.as_ref().map(|p| format!("unix:{}", p.display()))), tls = tls.is_some(), "cloudsim listening");
        Ok(EmulatorHandle {
            addr,
            admin_addr,
            admin_socket,
            scheme: if tls.is_some() { "https" } else { "http" },
            ca_pem: tls.and_then(|t| t.ca_pem),
            app,
            shutdown_tx: Some(tx),
            servers: vec![api_server, admin_server],
            ticker: Some(ticker),
            state_file: cfg.state_file,
            temp_dir,
        })
    }
}

/// The account at start: the seeded library and network, the configured library drives and
/// global context, then the state file's content.
fn initial_state(cfg: &EmulatorConfig) -> anyhow::Result<State> {
    let mut st = State::new(cfg.timings);
    if cfg.seed_library {
        for l in seed::default_library() {
            st.libdrives.insert(l.uuid.clone(), l);
        }
        seed::seed_network(&mut st);
    }
    for x in &cfg.extra_libdrives {
        st.libdrives.insert(x.drive.uuid.clone(), x.drive.clone());
    }
    st.global_context = cfg.global_context.clone();
    if let Some(p) = &cfg.state_file {
        if let Some(snap) = persist::load(p)? {
            let seeded_ips = std::mem::take(&mut st.ips);
            let seeded_vlans = std::mem::take(&mut st.vlans);
            st.load(snap);
            // keep seeds when the file has none (first run with an empty file)
            if st.ips.is_empty() {
                st.ips = seeded_ips;
            }
            if st.vlans.is_empty() {
                st.vlans = seeded_vlans;
            }
            st.rebuild_indexes();
        }
    }
    Ok(st)
}

/// The context directory, created, and the same path again when it is a temporary one the
/// emulator removes on shutdown.
fn context_dirs(cfg: &EmulatorConfig) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let (ctx_dir, temp_dir, made) = match &cfg.context_dir {
        Some(d) => (d.clone(), None, context::ensure_dir(d)),
        None => {
            let d = context::default_dir();
            let made = context::create_private_dir(&d);
            (d.clone(), Some(d), made)
        }
    };
    made.with_context(|| format!("cannot create context dir {}", ctx_dir.display()))?;
    Ok((ctx_dir, temp_dir))
}

/// The app over `st`: faults, the backend attached, VLAN DHCP servers and the contexts of the
/// loaded servers open.
async fn new_app(
    cfg: &EmulatorConfig,
    st: State,
    ctx_dir: &std::path::Path,
) -> anyhow::Result<Arc<App>> {
    let backend: Arc<dyn Backend> = cfg
        .backend
        .clone()
        .unwrap_or_else(|| Arc::new(StateOnlyBackend));
    let mut faults = Faults::new(cfg.faults.clone());
    for r in &cfg.context_not_ready {
        r.validate()
            .map_err(|e| anyhow::anyhow!("context_not_ready: {e}"))?;
        faults.add_context_rule(r.clone());
    }
    let server_uuids: Vec<String> = st.servers.keys().cloned().collect();
    let app = Arc::new(App::new(
        st,
        cfg.username.clone(),
        cfg.password.clone(),
        cfg.token.clone(),
        backend.clone(),
        faults,
        ContextManager::new(ctx_dir.to_path_buf(), cfg.context_pty),
    ));
    for x in &cfg.extra_libdrives {
        if let Some(p) = &x.image_path {
            app.lib_images
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(x.drive.uuid.clone(), p.clone());
        }
    }
    backend.attach(Arc::new(app::AppSink(Arc::downgrade(&app))));
    for (vlan, d) in &cfg.vlan_dhcp {
        app.set_vlan_dhcp(vlan, Some(d.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("vlan_dhcp: {e}"))?;
    }
    for u in &server_uuids {
        app.contexts.open(&app, u);
    }
    Ok(app)
}

/// The API listener and its server.
async fn serve_api(
    cfg: &EmulatorConfig,
    app: &Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (API)", cfg.listen))?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new()
        .fallback(api::handle)
        .with_state(app.clone());
    Ok((addr, spawn_server(listener, router, tls, stop, "API")?))
}

/// Where the admin endpoints listen.
enum AdminAt {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The admin listener (TCP, or the unix socket, by default in the context directory) and its
/// server.
async fn serve_admin(
    cfg: &EmulatorConfig,
    app: &Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    ctx_dir: &std::path::Path,
) -> anyhow::Result<(AdminAt, JoinHandle<()>)> {
    Ok(match &cfg.admin_listen {
        AdminListen::Tcp(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (admin)"))?;
            let admin_addr = l.local_addr()?;
            let admin_auth = cfg.admin_auth || !admin_addr.ip().is_loopback();
            let router = admin::service(app.clone(), admin_auth);
            (
                AdminAt::Tcp(admin_addr),
                spawn_server(l, router, tls, stop, "admin")?,
            )
        }
        AdminListen::Unix(p) => {
            let path = p.clone().unwrap_or_else(|| ctx_dir.join("admin.sock"));
            let l = bind_admin_socket(&path)?;
            let router = admin::service(app.clone(), cfg.admin_auth);
            (AdminAt::Unix(path), spawn_unix_server(l, router, stop))
        }
    })
}

/// [issue: guests must not reach the admin endpoints] the account's default credentials are
/// public (they are in the docs); on an address other machines can reach they would give the
/// account away.
fn refuse_default_credentials_off_loopback(
    cfg: &EmulatorConfig,
    admin_tcp: Option<SocketAddr>,
) -> anyhow::Result<()> {
    if cfg.username != config::DEFAULT_USERNAME || cfg.password != config::DEFAULT_PASSWORD {
        return Ok(());
    }
    let off = std::iter::once(("API", cfg.listen))
        .chain(admin_tcp.map(|a| ("admin", a)))
        .find(|(_, a)| !a.ip().is_loopback());
    if let Some((what, a)) = off {
        anyhow::bail!(
            "refusing to serve the {what} on {a}, which is not a loopback address, with the default credentials ({} and the documented default password): anyone reaching it would own the account; set --user/--password (CLOUDSIM_USER/CLOUDSIM_PASSWORD) or EmulatorConfig::username/password",
            config::DEFAULT_USERNAME
        );
    }
    Ok(())
}

/// The admin unix socket: a stale file from an earlier run is replaced; owner-only.
fn bind_admin_socket(path: &std::path::Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(path);
    let l = tokio::net::UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen on the admin socket {} (unix socket paths are limited to 107 bytes)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict the admin socket {}", path.display()))?;
    Ok(l)
}

/// Serve `router` on a unix socket until `stop` turns true.
fn spawn_unix_server(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "emulator admin server failed");
        }
    })
}

/// Serve `router` on `listener` (TLS-terminated when `tls` is given) until `stop` turns true.
fn spawn_server(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> std::io::Result<JoinHandle<()>> {
    let stopped = async move {
        let _ = stop.wait_for(|v| *v).await;
    };
    let report = move |r: std::io::Result<()>| {
        if let Err(e) = r {
            tracing::error!(error = %e, "emulator {what} server failed");
        }
    };
    Ok(match tls {
        Some(acceptor) => {
            let l = tls::TlsListener::new(listener, acceptor)?;
            tokio::spawn(async move {
                report(axum::serve(l, router).with_graceful_shutdown(stopped).await)
            })
        }
        None => tokio::spawn(async move {
            report(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await,
            )
        }),
    })
}

/// What to warn about before serving: listeners reachable from other machines (and an admin
/// TCP listener on loopback, which QEMU guests reach).
pub fn listen_warnings(api: SocketAddr, admin: Option<SocketAddr>, tls: bool) -> Vec<String> {
    let mut w = Vec::new();
    if !api.ip().is_loopback() {
        w.push(format!(
            "the API listens on {api}, which is not a loopback address: other machines can use this account{}",
            if tls {
                ""
            } else {
                " and see its credentials (plain HTTP; use --tls-cert/--tls-key or --tls-self-signed-ca)"
            }
        ));
    }
    match admin {
        Some(admin) if !admin.ip().is_loopback() => w.push(format!(
            "the admin endpoints listen on {admin}, which is not a loopback address: they require the API credentials{}",
            if tls { "" } else { ", sent over plain HTTP" }
        )),
        _ => {}
    }
    w
}

/// Background: apply due transitions even when no request arrives, and save the state file
/// (debounced) after changes.
async fn ticker(app: std::sync::Weak<App>, state_file: Option<PathBuf>, debounce: Duration) {
    let mut saved_version = u64::MAX;
    let mut changed_at: Option<(u64, Instant)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some(app) = app.upgrade() else { return };
        let version = app.lock().version;
        let Some(path) = &state_file else { continue };
        if version == saved_version {
            continue;
        }
        match changed_at {
            Some((v, t)) if v == version && t.elapsed() >= debounce => {
                let snap = app.lock().snapshot();
                if let Err(e) = persist::save(path, &snap) {
                    tracing::warn!(error = %format!("{e:#}"), "cannot save the state file");
                } else {
                    saved_version = version;
                }
                changed_at = None;
            }
            Some((v, _)) if v == version => {}
            _ => changed_at = Some((version, Instant::now())),
        }
    }
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The admin TCP listener's address (never the API's), with `AdminListen::Tcp`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }
    /// The admin unix socket, with `AdminListen::Unix` (the default):
    /// `curl --unix-socket PATH http://cloudsim/admin/counters`.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_deref()
    }
    /// `http://127.0.0.1:PORT/api/2.0/` (`https://` with TLS)
    pub fn api_url(&self) -> String {
        format!("{}://{}/api/2.0/", self.scheme, self.addr)
    }
    /// `http://127.0.0.1:ADMIN_PORT/admin/` (`https://` with TLS) with `AdminListen::Tcp`.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr
            .map(|a| format!("{}://{}/admin/", self.scheme, a))
    }
    /// Calls an admin endpoint in process, whatever it listens on (no credentials asked: the
    /// caller owns the emulator). `path` is relative to `/admin/` (`"counters"`,
    /// `"vlans/{uuid}/dhcp"`); answers the status and the JSON body (`null` when none).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        use tower::ServiceExt as _;
        let uri = format!(
            "/admin/{}",
            path.trim_start_matches("/admin/").trim_start_matches('/')
        );
        let body = match body {
            Some(b) => axum::body::Body::from(b.to_string()),
            None => axum::body::Body::empty(),
        };
        let req = axum::http::Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", "application/json")
            .body(body);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return (
                    400,
                    serde_json::json!({"error": format!("bad admin request {method} {uri}: {e}")}),
                )
            }
        };
        let resp = match admin::service(self.app.clone(), false).oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap_or_default();
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, v)
    }
    /// The generated CA certificate (PEM) when serving TLS with [`TlsConfig::SelfSigned`].
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }
    pub fn username(&self) -> &str {
        &self.app.username
    }
    pub fn password(&self) -> &str {
        &self.app.password
    }
    /// The unix socket answering cepko for that server (exists from create to delete).
    pub fn context_socket(&self, server_uuid: &str) -> PathBuf {
        self.app.contexts.socket_path(server_uuid)
    }
    /// The pty answering cepko for that server (when `context_pty` is on).
    pub fn context_pty(&self, server_uuid: &str) -> Option<PathBuf> {
        self.app.contexts.pty_path(server_uuid)
    }
    /// Report that a guest powered off (what a VM backend does through [`BackendSink`]).
    pub fn power_off(&self, server_uuid: &str) {
        self.app.power_off(server_uuid);
    }
    /// Set the account-wide `global_context`.
    pub fn set_global_context(&self, gc: cloudsigma_api::Meta) {
        let mut st = self.app.lock();
        st.global_context = gc;
        st.touch();
    }
    /// Replace the fault settings (like `PUT /admin/faults` with every field).
    pub fn set_faults(&self, faults: FaultConfig) {
        self.app
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cfg = faults;
    }
    /// Add a one-shot failure rule (like `POST /admin/faults/once`).
    pub fn add_once_rule(&self, rule: OnceRule) {
        self.app
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .once
            .push(rule);
    }
    /// Answer the serial context's next requests with the early-boot "not ready" reply (like
    /// `POST /admin/faults/context`).
    pub fn add_context_not_ready(&self, rule: ContextNotReady) -> anyhow::Result<()> {
        rule.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.app
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_context_rule(rule);
        Ok(())
    }
    /// Requests per `"METHOD /api/2.0/pattern/"` and the total (like `GET /admin/counters`).
    pub fn counters(&self) -> (u64, std::collections::BTreeMap<String, u64>) {
        let c = self.app.counters.lock().unwrap_or_else(|p| p.into_inner());
        (c.total, c.endpoints.clone())
    }
    pub fn reset_counters(&self) {
        *self.app.counters.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    }
    /// Change transition durations for transitions started from now on.
    pub fn set_timings(&self, timings: Timings) {
        self.app.lock().timings = timings;
    }
    /// Run (`Some`) or stop (`None`) a DHCP server on a VLAN (like `POST|DELETE
    /// /admin/vlans/{uuid}/dhcp`).
    pub async fn set_vlan_dhcp(
        &self,
        vlan: &str,
        dhcp: Option<vlan::DhcpConfig>,
    ) -> anyhow::Result<()> {
        Ok(self.app.set_vlan_dhcp(vlan, dhcp).await?)
    }
    /// DHCP on a VLAN: configuration and leases (like `GET /admin/vlans/{uuid}/dhcp`).
    pub async fn vlan_dhcp(&self, vlan: &str) -> anyhow::Result<app::VlanDhcpStatus> {
        Ok(self.app.vlan_dhcp_status(vlan).await?)
    }
    /// A JSON dump of all objects (like `GET /admin/state`).
    pub fn snapshot(&self) -> state::Snapshot {
        self.app.lock().snapshot()
    }

    /// Stop serving, save the state file, close sockets, stop the backend.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(true);
        }
        for s in std::mem::take(&mut self.servers) {
            // in-flight requests finish; long-polling clients are cut after a grace period
            let abort = s.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), s)
                .await
                .is_err()
            {
                tracing::warn!("emulator HTTP server did not stop within 5 s");
                abort.abort();
            }
        }
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(p) = &self.state_file {
            let snap = self.app.lock().snapshot();
            if let Err(e) = persist::save(p, &snap) {
                tracing::warn!(error = %format!("{e:#}"), "cannot save the state file on shutdown");
            }
        }
        self.app.contexts.close_all();
        if let Some(p) = self.admin_socket.take() {
            let _ = std::fs::remove_file(p);
        }
        self.app.backend.shutdown().await;
        if let Some(d) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        for s in self.servers.drain(..) {
            s.abort();
        }
        self.app.contexts.close_all();
        if let Some(p) = self.admin_socket.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some(d) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
