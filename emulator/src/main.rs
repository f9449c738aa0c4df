//! `cloudsim`: run the CloudSigma emulator.

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

use cloudsim::{ContextNotReady, Emulator, EmulatorConfig, FaultConfig, Timings, TlsConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TimingsArg {
    Instant,
    Realistic,
}

/// CloudSigma API 2.0 emulator (with per-server serial context sockets).
#[derive(Parser, Debug)]
#[command(version = env!("CLOUDSIGMA_BUILD_VERSION"), about)]
struct Args {
    /// Address of the API (loopback recommended; elsewhere use TLS).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The admin endpoints (/admin/) on this unix socket (mode 0600): the default, as
    /// `<context dir>/admin.sock`, because no VM can reach a unix socket (QEMU's user networking
    /// lets every guest reach the host's loopback TCP ports). Use it with
    /// `curl --unix-socket PATH http://cloudsim/admin/counters`.
    #[arg(long, value_name = "PATH", conflicts_with = "admin_listen")]
    admin_socket: Option<PathBuf>,
    /// Serve the admin endpoints on TCP instead. Loopback is reachable from QEMU guests; on any
    /// other address they require the API credentials.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Require the API credentials on /admin/ (any listener).
    #[arg(long)]
    admin_auth: bool,
    /// Serve HTTPS with this PEM certificate chain (server certificate first); needs --tls-key.
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "tls_self_signed_ca"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate signed by a CA generated at start, and write that CA's
    /// certificate (PEM) to this file for clients to trust.
    #[arg(long, value_name = "CA_FILE")]
    tls_self_signed_ca: Option<PathBuf>,
    /// Another host name or IP address the generated certificate is valid for (besides
    /// localhost, 127.0.0.1, ::1 and the listen addresses). Repeatable.
    #[arg(
        long = "tls-name",
        value_name = "NAME",
        requires = "tls_self_signed_ca"
    )]
    tls_name: Vec<String>,
    /// Serial context: answer each server's first N requests with the early-boot "not ready"
    /// reply, then the context (more rules: POST /admin/faults/context).
    #[arg(long, value_name = "N", default_value_t = 0)]
    context_not_ready: u32,
    /// Account user (e-mail) for HTTP Basic auth.
    #[arg(long, env = "CLOUDSIM_USER", default_value = "test@example.com")]
    user: String,
    /// Account password for HTTP Basic auth.
    #[arg(
        long,
        env = "CLOUDSIM_PASSWORD",
        default_value = "secret",
        hide_env_values = true
    )]
    password: String,
    /// Also accept `Authorization: Bearer <token>`.
    #[arg(long, env = "CLOUDSIM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Load objects from this JSON file at start; save them there after changes and on exit.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Directory for per-server context sockets `<uuid>.sock` (default: a temporary directory).
    #[arg(long)]
    context_dir: Option<PathBuf>,
    /// Also open a pty per server answering the context (paths in GET /admin/state).
    #[arg(long)]
    context_pty: bool,
    /// Transition durations.
    #[arg(long, value_enum, default_value = "realistic")]
    timings: TimingsArg,
    /// Override one transition duration in milliseconds, e.g. `--timing server_start=500`
    /// (keys: drive_create, drive_clone, drive_resize, server_start, server_stop, server_shutdown,
    /// shutdown_timeout). Repeatable.
    #[arg(long = "timing", value_name = "KEY=MS")]
    timing: Vec<String>,
    /// Added latency per API request (ms).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of API requests answered with --error-status (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Status of random faults: 500, 503 or 429.
    #[arg(long, default_value_t = 503)]
    error_status: u16,
    /// Requests per second before answering 429 with Retry-After (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// Start without the seed library, IPs and VLANs.
    #[arg(long)]
    no_seed: bool,
    /// Account-wide global_context entries, KEY=VALUE (repeatable).
    #[arg(long = "global-context", value_name = "KEY=VALUE")]
    global_context: Vec<String>,
    /// What runs the servers: `state` (API state only, default) or `qemu` (real VMs, qcow2 drives;
    /// see docs/e2e.md).
    #[arg(long, value_enum, default_value = "state")]
    backend: BackendArg,
    /// QEMU backend: directory for drive images, console logs and QMP sockets.
    #[arg(long, default_value = "cloudsim-vm")]
    vm_data_dir: PathBuf,
    /// QEMU backend: a library image directory from tests/vm-image/build.sh to register as the
    /// library drive "Debian 12 (local test image)".
    #[arg(long)]
    vm_image: Option<PathBuf>,
    /// A DHCP server on a VLAN from the start: `VLAN_UUID=CIDR` or `VLAN_UUID=CIDR,FIRST-LAST`
    /// (e.g. `5e0a1a7e-3b7d-4c1e-8f00-0000000c0001=192.168.50.0/24,192.168.50.10-192.168.50.200`).
    /// No router or DNS option is sent. Repeatable; also POST /admin/vlans/{uuid}/dhcp.
    #[arg(long = "vlan-dhcp", value_name = "UUID=CIDR[,FIRST-LAST]")]
    vlan_dhcp: Vec<String>,
    /// QEMU backend: guest memory cap in MiB.
    #[arg(long, default_value_t = 2048)]
    vm_max_mem: u64,
}

/// `UUID=CIDR[,FIRST-LAST]` (`--vlan-dhcp`).
fn parse_vlan_dhcp(spec: &str) -> anyhow::Result<(String, cloudsim::vlan::DhcpConfig)> {
    let usage = || format!("--vlan-dhcp {spec:?} must be UUID=CIDR or UUID=CIDR,FIRST-LAST");
    let (vlan, rest) = spec.split_once('=').with_context(usage)?;
    let (cidr, range) = match rest.split_once(',') {
        Some((c, r)) => {
            let (a, b) = r.split_once('-').with_context(usage)?;
            let ip = |s: &str| {
                s.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .with_context(|| format!("{}: {s:?} is not an IPv4 address", usage()))
            };
            (c, Some([ip(a)?, ip(b)?]))
        }
        None => (rest, None),
    };
    let d = cloudsim::vlan::DhcpConfig {
        cidr: cidr.trim().to_string(),
        range,
        server: None,
        lease_secs: None,
    };
    d.validate()
        .map_err(|e| anyhow::anyhow!("--vlan-dhcp {spec:?}: {e}"))?;
    Ok((vlan.trim().to_string(), d))
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum BackendArg {
    State,
    Qemu,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    if !(0.0..=1.0).contains(&a.error_rate) {
        anyhow::bail!("--error-rate {} must be within 0.0..=1.0", a.error_rate);
    }
    let mut gc = cloudsigma_api::Meta::new();
    for kv in &a.global_context {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--global-context {kv:?} must be KEY=VALUE"))?;
        gc.insert(k.to_string(), v.to_string());
    }
    let mut timings = match a.timings {
        TimingsArg::Instant => Timings::instant(),
        TimingsArg::Realistic => Timings::realistic(),
    };
    for kv in &a.timing {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--timing {kv:?} must be KEY=MS"))?;
        let ms: u64 = v
            .trim()
            .parse()
            .with_context(|| format!("--timing {kv:?}: {v:?} is not a number of milliseconds"))?;
        let mut j = serde_json::to_value(timings)?;
        let slot = j.get_mut(k.trim()).with_context(|| {
            format!("--timing {kv:?}: unknown key {k:?} (known: drive_create, drive_clone, drive_resize, server_start, server_stop, server_shutdown, shutdown_timeout)")
        })?;
        *slot = serde_json::json!(ms);
        timings = serde_json::from_value(j)?;
    }
    let mut vlan_dhcp = std::collections::BTreeMap::new();
    for spec in &a.vlan_dhcp {
        let (vlan, d) = parse_vlan_dhcp(spec)?;
        vlan_dhcp.insert(vlan, d);
    }
    let mut backend: Option<std::sync::Arc<dyn cloudsim::Backend>> = None;
    let mut extra_libdrives = Vec::new();
    if a.backend == BackendArg::Qemu {
        let mut qc = cloudsim::vm::QemuConfig::new(&a.vm_data_dir);
        qc.max_mem_mib = a.vm_max_mem;
        let b = cloudsim::vm::QemuBackend::new(qc).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(dir) = &a.vm_image {
            extra_libdrives.push(
                b.local_library_drive(dir)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        backend = Some(std::sync::Arc::new(b));
    } else if a.vm_image.is_some() {
        anyhow::bail!("--vm-image needs --backend qemu");
    }
    let tls = match (a.tls_cert, a.tls_key, a.tls_self_signed_ca) {
        (Some(cert), Some(key), _) => Some(TlsConfig::Files { cert, key }),
        (_, _, Some(ca)) => Some(TlsConfig::SelfSigned {
            ca_out: Some(ca),
            extra_names: a.tls_name,
        }),
        _ => None,
    };
    let cfg = EmulatorConfig {
        listen: a.listen,
        admin_listen: match a.admin_listen {
            Some(addr) => cloudsim::AdminListen::Tcp(addr),
            None => cloudsim::AdminListen::Unix(a.admin_socket),
        },
        admin_auth: a.admin_auth,
        tls,
        context_not_ready: if a.context_not_ready > 0 {
            vec![ContextNotReady::every_server(a.context_not_ready)]
        } else {
            Vec::new()
        },
        username: a.user,
        password: a.password,
        token: a.token,
        timings,
        state_file: a.state_file,
        context_dir: a.context_dir,
        context_pty: a.context_pty,
        seed_library: !a.no_seed,
        global_context: gc,
        faults: FaultConfig {
            latency_ms: a.latency_ms,
            error_rate: a.error_rate,
            error_status: a.error_status,
            rate_limit_per_sec: a.rate_limit,
        },
        backend,
        extra_libdrives,
        vlan_dhcp,
        ..Default::default()
    };
    let cfg_tls = cfg.tls.clone();
    let emu = Emulator::start(cfg).await?;
    println!("cloudsim API:   {}", emu.api_url());
    match (emu.admin_url(), emu.admin_socket()) {
        (Some(url), _) => println!("cloudsim admin: {url}"),
        (None, Some(p)) => println!(
            "cloudsim admin: unix:{} (curl --unix-socket {} http://cloudsim/admin/counters)",
            p.display(),
            p.display()
        ),
        (None, None) => {}
    }
    if let Some(TlsConfig::SelfSigned {
        ca_out: Some(p), ..
    }) = &cfg_tls
    {
        println!("cloudsim CA:    {}", p.display());
    }
    wait_for_signal().await;
    emu.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
