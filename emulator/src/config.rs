//! Configuration of an emulator instance (shared by the binary and the embedding API).

use cloudsigma_api::LibDrive;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
// FaultConfig lives with the faults it configures (faults.rs), so that faults.rs needs
// nothing from this file.
use crate::faults::ContextNotReady;
pub use crate::faults::FaultConfig;
pub use crate::tls::TlsConfig;
use crate::vlan::DhcpConfig;

/// How long each status transition takes. Transitions are driven by time (settled lazily on the
/// next request and by a background ticker), never by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// drive `creating` → `unmounted`
    #[serde(with = "ms")]
    pub drive_create: Duration,
    /// clone: destination `cloning_dst` → `unmounted`, source `cloning_src` → previous status
    #[serde(with = "ms")]
    pub drive_clone: Duration,
    /// `resizing` → `unmounted`
    #[serde(with = "ms")]
    pub drive_resize: Duration,
    /// server `starting` → `running`
    #[serde(with = "ms")]
    pub server_start: Duration,
    /// server `stopping` → `stopped` after a hard `stop`
    #[serde(with = "ms")]
    pub server_stop: Duration,
    /// server `stopping` → `stopped` after an ACPI `shutdown` that the guest honours
    #[serde(with = "ms")]
    pub server_shutdown: Duration,
    /// How long an ACPI shutdown waits for the guest before the server goes back to `running`
    /// ([V] reference: "ACPI for up to 60 s").
    #[serde(with = "ms")]
    pub shutdown_timeout: Duration,
}

impl Timings {
    /// Everything settles on the next request: for fast tests. Responses to the triggering call
    /// still show the transitional status (`creating`, `starting`, ...), like the real API.
    pub fn instant() -> Timings {
        Timings {
            drive_create: Duration::ZERO,
            drive_clone: Duration::ZERO,
            drive_resize: Duration::ZERO,
            server_start: Duration::ZERO,
            server_stop: Duration::ZERO,
            server_shutdown: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(60),
        }
    }
    /// Roughly what CloudSigma takes for small objects (seconds), so pollers and waiters get
    /// exercised realistically.
    pub fn realistic() -> Timings {
        Timings {
            drive_create: Duration::from_secs(2),
            drive_clone: Duration::from_secs(5),
            drive_resize: Duration::from_secs(3),
            server_start: Duration::from_secs(3),
            server_stop: Duration::from_secs(1),
            server_shutdown: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(60),
        }
    }
    /// Every transition takes `d` (handy for tests that want to observe intermediate states).
    pub fn uniform(d: Duration) -> Timings {
        Timings {
            drive_create: d,
            drive_clone: d,
            drive_resize: d,
            server_start: d,
            server_stop: d,
            server_shutdown: d,
            shutdown_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings::realistic()
    }
}

mod ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A library drive to add to the seed, optionally backed by a local image file (a VM backend
/// uses `image_path` to materialise clones; the state-only backend ignores it).
#[derive(Debug, Clone)]
pub struct LibDriveSeed {
    pub drive: LibDrive,
    pub image_path: Option<PathBuf>,
}

/// The account's user name when none is configured.
pub const DEFAULT_USERNAME: &str = "test@example.com";
/// The account's password when none is configured. The emulator refuses to listen on a
/// non-loopback address with it (and [`DEFAULT_USERNAME`]).
pub const DEFAULT_PASSWORD: &str = "secret";

/// Where the admin endpoints (`/admin/`) are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    /// A unix socket, owner-only (mode 0600); `None` = `admin.sock` in the context dir. The
    /// default, because no guest can reach it: QEMU's user networking maps a guest's 10.0.2.2 to
    /// the host's loopback, so every loopback TCP port is within every guest's reach.
    Unix(Option<PathBuf>),
    /// A TCP listener. Loopback is reachable from QEMU guests (see above), so only for a
    /// deployment without VMs or with [`EmulatorConfig::admin_auth`]; on a non-loopback address
    /// it asks for the API credentials.
    Tcp(SocketAddr),
}

impl Default for AdminListen {
    fn default() -> Self {
        AdminListen::Unix(None)
    }
}

impl AdminListen {
    /// TCP on 127.0.0.1 with a free port (tests that speak HTTP to it).
    pub fn loopback() -> AdminListen {
        AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Everything an emulator instance needs. `Default` gives the API on 127.0.0.1:0, the admin
/// endpoints on a unix socket in the context dir, plain HTTP, user `test@example.com` /
/// `secret`, realistic timings, the seed library, no state file, a temporary context dir.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// The API listener (`/api/2.0/` only).
    pub listen: SocketAddr,
    /// The admin listener (`/admin/` only, never on the API's): a unix socket by default (see
    /// [`AdminListen`]). In process, [`crate::EmulatorHandle::admin`] calls it directly.
    pub admin_listen: AdminListen,
    /// Require the API credentials (Basic or Bearer) on `/admin/` too.
    pub admin_auth: bool,
    /// Serve HTTPS (both listeners) instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    pub username: String,
    pub password: String,
    /// Accepted as `Authorization: Bearer <token>` besides Basic auth.
    pub token: Option<String>,
    pub timings: Timings,
    pub state_file: Option<PathBuf>,
    /// Where per-server unix sockets (`<uuid>.sock`) go; `None` = a fresh temporary directory
    /// removed on shutdown.
    pub context_dir: Option<PathBuf>,
    /// Also open a pty per server answering cepko (its path shows in `GET /admin/state`).
    pub context_pty: bool,
    pub seed_library: bool,
    pub extra_libdrives: Vec<LibDriveSeed>,
    /// Account-wide `global_context` key/values served in every server context.
    pub global_context: cloudsigma_api::Meta,
    pub faults: FaultConfig,
    /// Serial-context faults from the start (e.g. every server's first N requests answer "not
    /// ready"); more with `POST /admin/faults/context`.
    pub context_not_ready: Vec<ContextNotReady>,
    /// `None` = [`crate::backend::StateOnlyBackend`].
    pub backend: Option<Arc<dyn Backend>>,
    /// Delay between a change and the state-file save (changes within it are coalesced).
    pub save_debounce: Duration,
    /// DHCP servers on VLANs from the start (VLAN uuid → configuration); more or fewer with
    /// `POST|DELETE /admin/vlans/{uuid}/dhcp`. Each VLAN must exist (seeded or in the state file).
    pub vlan_dhcp: BTreeMap<String, DhcpConfig>,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password or token.
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_auth", &self.admin_auth)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timings", &self.timings)
            .field("state_file", &self.state_file)
            .field("context_dir", &self.context_dir)
            .field("context_pty", &self.context_pty)
            .field("seed_library", &self.seed_library)
            .field("extra_libdrives", &self.extra_libdrives.len())
            .field("faults", &self.faults)
            .field("context_not_ready", &self.context_not_ready)
            .field("vlan_dhcp", &self.vlan_dhcp)
            .finish()
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: AdminListen::default(),
            admin_auth: false,
            tls: None,
            username: DEFAULT_USERNAME.into(),
            password: DEFAULT_PASSWORD.into(),
            token: None,
            timings: Timings::realistic(),
            state_file: None,
            context_dir: None,
            context_pty: false,
            seed_library: true,
            extra_libdrives: Vec::new(),
            global_context: Default::default(),
            faults: FaultConfig::default(),
            context_not_ready: Vec::new(),
            backend: None,
            save_debounce: Duration::from_millis(200),
            vlan_dhcp: BTreeMap::new(),
        }
    }
}

impl EmulatorConfig {
    /// Defaults with instant timings: what tests of other crates usually want.
    pub fn for_tests() -> EmulatorConfig {
        EmulatorConfig {
            timings: Timings::instant(),
            ..Default::default()
        }
    }
}
