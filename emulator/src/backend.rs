//! The seam between the API state machine and whatever runs the servers.
//!
//! The emulator owns all API state and status transitions. A backend is told about lifecycle
//! events and may veto them (an `Err` makes the API call fail with a 500 `backend` error and the
//! state stays as it was). The default [`StateOnlyBackend`] does nothing: servers "run" only as
//! state. A QEMU backend (emulator/src/vm/) boots real VMs:
//!
//! - (a) [`Backend::server_start`] receives a [`StartSpec`] with the boot drive uuid, every drive,
//!   the NICs with MACs and their runtime IPs, and the server's context socket path (the emulator
//!   listens on it; QEMU connects as a client: `-chardev socket,path=..,server=off` on ttyS1).
//! - (b) the backend reports that a guest powered off via [`BackendSink::power_off`] (given to it
//!   in [`Backend::attach`]); the server then becomes `stopped` whatever it was doing.
//! - (c) [`Backend::server_shutdown`] returns [`ShutdownMode::AwaitPowerOff`]: the server stays
//!   `stopping` until the guest powers off, or goes back to `running` after
//!   [`crate::Timings::shutdown_timeout`] — like CloudSigma's ACPI shutdown.
//!
//! - (d) [`Backend::server_drives_changed`]: drives hot-plugged into or out of a running server
//!   by a PUT (QEMU: QMP, `vm/qmp.rs`).
//!
//! - (e) [`Backend::vlan_dhcp`]: DHCP on a VLAN configured or removed (the QEMU backend's VLAN
//!   switch serves it, `src/vlan/`).
//!
//! Runtime IPs: the emulator allocates NAT addresses from its pool unless
//! [`Backend::runtime_ip`] returns one (a VM backend returns e.g. 127.77.0.N so SSH works).

use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;

/// A drive attached to a starting server.
#[derive(Debug, Clone)]
pub struct StartDrive {
    pub uuid: String,
    pub dev_channel: String,
    /// "virtio" | "ide"
    pub device: String,
    pub boot_order: Option<u32>,
    /// "disk" | "cdrom"
    pub media: String,
    pub size: u64,
}

/// A NIC of a starting server. Its kind is set by `vlan`: a NIC with a VLAN is a VLAN NIC
/// whatever its `ip_v4_conf` says (a vlan set wins, see docs/emulator.md), any other NIC is
/// public.
#[derive(Debug, Clone)]
pub struct StartNic {
    pub mac: String,
    pub model: String,
    /// The runtime (NAT or static) IPv4 address for public NICs; `None` for VLAN NICs.
    pub ip_v4: Option<String>,
    /// The VLAN uuid of a VLAN NIC.
    pub vlan: Option<String>,
}

impl StartNic {
    /// A public NIC (no VLAN): NAT or a static IP.
    pub fn is_public(&self) -> bool {
        self.vlan.is_none()
    }
}

/// Everything a backend needs to boot a server.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub uuid: String,
    pub name: String,
    pub cpu: u64,
    pub mem: u64,
    pub smp: u32,
    /// The drive with the lowest `boot_order` (first drive when none has one).
    pub boot_drive: Option<String>,
    pub drives: Vec<StartDrive>,
    pub nics: Vec<StartNic>,
    /// Unix socket answering cepko for this server (attach as the guest's ttyS1).
    pub context_socket: PathBuf,
}

/// What a shutdown (ACPI) request leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// The emulator's timer decides: `stopping` → `stopped` after `Timings::server_shutdown`
    /// (the state-only backend assumes a well-behaved guest).
    Timed,
    /// Wait for [`BackendSink::power_off`]; back to `running` after `Timings::shutdown_timeout`.
    AwaitPowerOff,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Lifecycle hooks. All have no-op defaults so a backend implements only what it needs.
/// Hooks are called without the state lock held; they may take time (the API call waits).
#[async_trait]
pub trait Backend: Send + Sync {
    /// Called once when the emulator starts, with the sink for reporting events back.
    fn attach(&self, _sink: Arc<dyn BackendSink>) {}
    /// A new empty drive was created.
    async fn drive_created(
        &self,
        _uuid: &str,
        _size: u64,
        _media: &str,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// `dst` is a copy of `src` (`src_is_library`: src is a `/libdrives/` uuid), grown to `size`.
    async fn drive_cloned(
        &self,
        _src: &str,
        _src_is_library: bool,
        _dst: &str,
        _size: u64,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    async fn drive_resized(&self, _uuid: &str, _new_size: u64) -> Result<(), BackendError> {
        Ok(())
    }
    async fn drive_deleted(&self, _uuid: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// Runtime IPv4 for a DHCP public NIC of a starting server; `None` = emulator's pool.
    /// `public_nic` is the NIC's position among the server's *public* NICs (those without a
    /// VLAN): 0 is the first public NIC wherever it is in the list (`[VLAN, public]` asks for 0).
    fn runtime_ip(&self, _server: &str, _public_nic: usize) -> Option<String> {
        None
    }
    async fn server_start(&self, _spec: &StartSpec) -> Result<(), BackendError> {
        Ok(())
    }
    /// Hard power-off (`stop`).
    async fn server_stop(&self, _uuid: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// ACPI shutdown request.
    async fn server_shutdown(&self, _uuid: &str) -> Result<ShutdownMode, BackendError> {
        Ok(ShutdownMode::Timed)
    }
    async fn server_deleted(&self, _uuid: &str) -> Result<(), BackendError> {
        Ok(())
    }
    /// A PUT hot-plugged drives into (`attached`) or out of (`detached`, drive uuids) a server
    /// that is not stopped. Called after the state changed; an `Err` puts the drives back.
    async fn server_drives_changed(
        &self,
        _server: &str,
        _attached: &[StartDrive],
        _detached: &[String],
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// DHCP on a VLAN was configured (`Some`) or removed (`None`), by `POST|DELETE
    /// /admin/vlans/{uuid}/dhcp` or at start (`EmulatorConfig::vlan_dhcp`). The emulator has
    /// checked the VLAN exists and the configuration is valid. Backends without networks
    /// ignore it.
    async fn vlan_dhcp(
        &self,
        _vlan: &str,
        _dhcp: Option<&crate::vlan::DhcpConfig>,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    /// The DHCP leases handed out on a VLAN (`GET /admin/vlans/{uuid}/dhcp`).
    async fn vlan_leases(&self, _vlan: &str) -> Vec<crate::vlan::Lease> {
        Vec::new()
    }
    /// The serial console (ttyS0) log, for `GET /admin/servers/{uuid}/console`.
    async fn console_log(&self, _uuid: &str) -> Option<String> {
        None
    }
    /// Called on emulator shutdown (stop VMs, clean up).
    async fn shutdown(&self) {}
}

/// The default backend: servers and drives exist only as API state.
#[derive(Debug, Default, Clone)]
pub struct StateOnlyBackend;

#[async_trait]
impl Backend for StateOnlyBackend {}

/// What a backend may tell (or ask) the emulator: exactly the calls backends make, nothing more.
/// The emulator hands one to [`Backend::attach`]. A trait rather than a handle to the emulator's
/// internals keeps this module free of them (no import circle through the app) and lets a test
/// backend or a future one depend on this seam alone. The emulator's sink holds only a weak
/// reference, so a backend keeping it does not keep a shut-down emulator alive (calls then do
/// nothing / answer `None`).
pub trait BackendSink: Send + Sync {
    /// The guest of `server_uuid` powered off (shut down by itself, crashed, or honoured ACPI):
    /// the server becomes `stopped`, its runtime and NAT IPs are released.
    fn power_off(&self, server_uuid: &str);

    /// The local image file registered for a library drive (`EmulatorConfig.extra_libdrives` or
    /// `POST /admin/libdrives` with `image_path`), so a backend can materialise library clones.
    fn library_image(&self, libdrive_uuid: &str) -> Option<PathBuf>;
}
