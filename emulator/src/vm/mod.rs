//! The QEMU backend: drives are qcow2 files, servers are QEMU processes.
//!
//! Layout under [`QemuConfig::data_dir`]:
//! - `drives/<uuid>.qcow2` — every account drive; `drives/<uuid>.boot` names the directory holding
//!   `vmlinuz` + `initrd.img` for drives descended from a library image built by
//!   `tests/vm-image/build.sh` (that image has no bootloader: QEMU boots its kernel directly).
//! - `servers/<uuid>/console.log` (ttyS0, kept until the server is deleted), `qmp.sock`,
//!   `qemu.log` (QEMU's own stderr).
//!
//! Networking, NICs wired by kind (`args.rs`, `NicWiring`): the first public NIC (no VLAN),
//! wherever it is in the list, is QEMU user-mode NAT with the guest's ports 22 and 10250 (kubelet)
//! forwarded from a loopback address of its own, 127.77.0.N, which is also that NIC's runtime NAT
//! IP in the API, so clients SSH to `runtime` IP:22 exactly as on CloudSigma. Each VLAN NIC is a
//! port of its VLAN's switch (`src/vlan/`): one L2 segment per VLAN, DHCP only when configured.
//! A further public NIC gets an isolated restricted user-mode network.
//!
//! Serial ports: ttyS0 → console log file; ttyS1 → the emulator's per-server context socket
//! (QEMU connects as a client and reconnects if the emulator restarts the socket).
//!
//! One file per concern:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the backend struct and its [`Backend`] hooks |
//! | `config.rs` | [`QemuConfig`] |
//! | `accel.rs` | KVM or TCG: the probe |
//! | `args.rs` | QEMU's command line (pure) |
//! | `run.rs` | QEMU processes: start, watch, kill; the loopback address per server |
//! | `process.rs` | running `qemu-img` (the one way short-lived tools are run) |
//! | `drives.rs` | drive image files: create, clone, resize, delete |
//! | `library.rs` | the local library image as a library drive |
//! | `hotplug.rs` | drives hot-plugged over QMP |
//! | `qmp.rs` | the QMP client |

mod accel;
mod args;
mod config;
mod drives;
mod hotplug;
mod library;
mod process;
pub(crate) mod qmp;
mod run;

pub use accel::Accel;
pub use config::QemuConfig;
pub use library::{library_drive, local_library_drive};

use crate::backend::{Backend, BackendError, BackendSink, ShutdownMode, StartDrive, StartSpec};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

struct Vm {
    kill: Option<oneshot::Sender<()>>,
    exited: watch::Receiver<bool>,
    qmp: PathBuf,
    /// drive uuid → (QEMU device id, block node name when hot-plugged), for unplugging
    drives: HashMap<String, (String, Option<String>)>,
    /// counter for the ids of hot-plugged drives (`hp<n>` node, `vhp<n>` device)
    hotplugged: u32,
}

/// How long a QMP request may take; a detach waits this long for the guest to release the disk.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    vms: HashMap<String, Vm>,
    /// server uuid → N of 127.77.0.N and the address (kept while the server runs; the address
    /// also in run.rs's process-wide `HELD`).
    ips: HashMap<String, (u8, String)>,
}

/// The QEMU backend (see the module docs).
pub struct QemuBackend {
    cfg: QemuConfig,
    accel: Accel,
    events: OnceLock<Arc<dyn BackendSink>>,
    inner: Arc<Mutex<Inner>>,
    /// The VLAN segments (`src/vlan/`): VLAN NICs are its ports.
    switch: Arc<crate::vlan::Switch>,
}

fn err(msg: impl Into<String>) -> BackendError {
    BackendError(msg.into())
}

impl QemuBackend {
    /// Checks the tools exist and creates the data directory.
    pub fn new(cfg: QemuConfig) -> Result<QemuBackend, BackendError> {
        for d in ["drives", "servers"] {
            std::fs::create_dir_all(cfg.data_dir.join(d)).map_err(|e| {
                err(format!(
                    "cannot create VM data dir {}: {e}",
                    cfg.data_dir.join(d).display()
                ))
            })?;
        }
        for tool in [&cfg.qemu_system, &cfg.qemu_img] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !found {
                return Err(err(format!(
                    "{} not found or not working; install qemu-system-x86 and qemu-utils (scripts/install-deps)",
                    tool.display()
                )));
            }
        }
        let accel = cfg.accel.resolve(&cfg.qemu_system);
        tracing::info!(?accel, dir = %cfg.data_dir.display(), "QEMU backend ready");
        Ok(QemuBackend {
            cfg,
            accel,
            events: OnceLock::new(),
            inner: Arc::new(Mutex::new(Inner::default())),
            switch: Arc::new(crate::vlan::Switch::new()),
        })
    }

    /// The accelerator actually used (Auto resolved).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn server_dir(&self, uuid: &str) -> PathBuf {
        self.cfg.data_dir.join("servers").join(uuid)
    }

    /// Console log path of a server (ttyS0).
    pub fn console_path(&self, uuid: &str) -> PathBuf {
        self.server_dir(uuid).join("console.log")
    }

    fn events(&self) -> Option<&Arc<dyn BackendSink>> {
        self.events.get()
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn attach(&self, events: Arc<dyn BackendSink>) {
        let _ = self.events.set(events);
    }

    async fn drive_created(&self, uuid: &str, size: u64, _media: &str) -> Result<(), BackendError> {
        self.create_drive(uuid, size).await
    }

    async fn drive_cloned(
        &self,
        src: &str,
        src_is_library: bool,
        dst: &str,
        size: u64,
    ) -> Result<(), BackendError> {
        self.clone_drive(src, src_is_library, dst, size).await
    }

    async fn drive_resized(&self, uuid: &str, new_size: u64) -> Result<(), BackendError> {
        self.resize_drive(uuid, new_size).await
    }

    async fn drive_deleted(&self, uuid: &str) -> Result<(), BackendError> {
        self.delete_drive(uuid)
    }

    /// The first public NIC is the NAT NIC with the forwards (`args.rs`, `NicWiring::Nat`).
    fn runtime_ip(&self, server: &str, public_nic: usize) -> Option<String> {
        if public_nic != 0 {
            return None;
        }
        self.allocate_ip(server)
    }

    async fn vlan_dhcp(
        &self,
        vlan: &str,
        dhcp: Option<&crate::vlan::DhcpConfig>,
    ) -> Result<(), BackendError> {
        let server = dhcp
            .map(|d| d.validate())
            .transpose()
            .map_err(|e| err(format!("DHCP on VLAN {vlan}: {e}")))?;
        self.switch.set_dhcp(vlan, server).await;
        Ok(())
    }

    async fn vlan_leases(&self, vlan: &str) -> Vec<crate::vlan::Lease> {
        self.switch.leases(vlan).await
    }

    async fn server_start(&self, spec: &StartSpec) -> Result<(), BackendError> {
        let res = self.start_inner(spec).await;
        if res.is_err() {
            Self::release_ip(&self.inner, &spec.uuid);
            self.switch.detach_owner(&spec.uuid).await;
        }
        res
    }

    async fn server_stop(&self, uuid: &str) -> Result<(), BackendError> {
        self.kill_vm(uuid).await;
        Self::release_ip(&self.inner, uuid);
        Ok(())
    }

    async fn server_shutdown(&self, uuid: &str) -> Result<ShutdownMode, BackendError> {
        let qmp = {
            let g = self.lock();
            g.vms.get(uuid).map(|v| v.qmp.clone())
        };
        match qmp {
            Some(q) => {
                qmp::run(&q, &qmp::command("system_powerdown"), QMP_TIMEOUT)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                Ok(ShutdownMode::AwaitPowerOff)
            }
            // No VM (never started by this backend): let the emulator's timer decide.
            None => Ok(ShutdownMode::Timed),
        }
    }

    async fn server_drives_changed(
        &self,
        server: &str,
        attached: &[StartDrive],
        detached: &[String],
    ) -> Result<(), BackendError> {
        self.hotplug(server, attached, detached).await
    }

    async fn server_deleted(&self, uuid: &str) -> Result<(), BackendError> {
        self.kill_vm(uuid).await;
        Self::release_ip(&self.inner, uuid);
        let d = self.server_dir(uuid);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("cannot remove {}: {e}", d.display()))),
        }
    }

    async fn console_log(&self, uuid: &str) -> Option<String> {
        let b = tokio::fs::read(self.console_path(uuid)).await.ok()?;
        // the tail is what matters; a console can grow large over many boots
        const MAX: usize = 1 << 20;
        let b = if b.len() > MAX {
            &b[b.len() - MAX..]
        } else {
            &b[..]
        };
        Some(String::from_utf8_lossy(b).into_owned())
    }

    async fn shutdown(&self) {
        let uuids: Vec<String> = self.lock().vms.keys().cloned().collect();
        for u in uuids {
            self.kill_vm(&u).await;
        }
    }
}

#[cfg(test)]
mod tests;
