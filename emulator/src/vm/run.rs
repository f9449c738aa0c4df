//! VM processes: QEMU started, watched and killed; the per-server loopback address.
//!
//! Processes never outlive the emulator: QEMU gets `PR_SET_PDEATHSIG(SIGKILL)`, the child handle
//! kills on drop, and [`crate::Backend::shutdown`] kills and reaps every VM.

use super::{args, err, Inner, QemuBackend, Vm};
use crate::backend::{BackendError, StartSpec};
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

/// The 127.77.0.N addresses a backend of this process holds, whichever backend: two emulators
/// in one process (the e2e location matrix) start VMs at the same instant, and each would find
/// the same N free — no QEMU has bound its forwards yet — so one QEMU failed to start ("Could not
/// set up host forwarding rule"). Held from allocation to release, like `Inner::ips`.
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn held() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

impl QemuBackend {
    /// The server's loopback address 127.77.0.N: the same while it runs, else the first N that
    /// no backend of this process holds and no other process has bound.
    pub(super) fn allocate_ip(&self, server: &str) -> Option<String> {
        let mut g = self.lock();
        let prefix = &self.cfg.ip_prefix;
        let n = match g.ips.get(server) {
            Some((n, _)) => *n,
            None => {
                let mut held = held();
                let n = (2u8..=254)
                    .find(|n| !held.contains(&format!("{prefix}.{n}")) && self.forwards_free(*n))?;
                held.insert(format!("{prefix}.{n}"));
                g.ips
                    .insert(server.to_string(), (n, format!("{prefix}.{n}")));
                n
            }
        };
        Some(format!("{prefix}.{n}"))
    }

    pub(super) fn release_ip(inner: &Mutex<Inner>, uuid: &str) {
        let removed = inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ips
            .remove(uuid);
        if let Some((_, ip)) = removed {
            held().remove(&ip);
        }
    }

    /// Whether another process (another emulator on this machine) holds a forwarded port of
    /// 127.77.0.N: QEMU would refuse to start on it. Only "in use" counts; any other bind error
    /// is left for QEMU to report.
    fn forwards_free(&self, n: u8) -> bool {
        let ip = format!("{}.{n}", self.cfg.ip_prefix);
        self.cfg.forwarded_ports.iter().all(|p| {
            !matches!(std::net::TcpListener::bind((ip.as_str(), *p)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
        })
    }

    pub(super) async fn kill_vm(&self, uuid: &str) {
        let vm = {
            let mut g = self.lock();
            g.vms.remove(uuid)
        };
        if let Some(mut vm) = vm {
            if let Some(k) = vm.kill.take() {
                let _ = k.send(());
            }
            let _ = tokio::time::timeout(Duration::from_secs(15), vm.exited.wait_for(|e| *e)).await;
        }
        self.switch.detach_owner(uuid).await;
    }

    pub(super) async fn start_inner(&self, spec: &StartSpec) -> Result<(), BackendError> {
        if self.lock().vms.contains_key(&spec.uuid) {
            return Err(err(format!(
                "server {} already has a running VM",
                spec.uuid
            )));
        }
        let ip = self
            .allocate_ip(&spec.uuid)
            .ok_or_else(|| err("no free 127.77.0.N address left for the VM's SSH forward"))?;
        let dir = self.server_dir(&spec.uuid);
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let boot = spec
            .boot_drive
            .as_ref()
            .and_then(|b| std::fs::read_to_string(self.boot_sidecar(b)).ok())
            .map(PathBuf::from);
        self.check_drive_files(spec)?;
        let ports = self.attach_vlan_ports(spec).await?;
        let vlan_fds: Vec<Option<i32>> = ports
            .iter()
            .map(|p| p.as_ref().map(|fd| fd.as_raw_fd()))
            .collect();
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let args = args::qemu_args(&args::Launch {
            cfg: &self.cfg,
            accel: self.accel,
            host_cpus,
            spec,
            ip: &ip,
            dir: &dir,
            boot: boot.as_deref(),
            vlan_fds: &vlan_fds,
        })?;
        let qlog_path = dir.join("qemu.log");
        let mut cmd = self.qemu_command(&args, &qlog_path, &vlan_fds)?;
        tracing::info!(server = %spec.uuid, %ip, accel = ?self.accel, "starting QEMU");
        let mut child = cmd.spawn().map_err(|e| {
            err(format!(
                "cannot start {}: {e}",
                self.cfg.qemu_system.display()
            ))
        })?;
        // QEMU holds its ends now; the emulator's copies must go, or a VM's exit would not
        // close its ports.
        drop(ports);
        // QEMU fails fast on bad arguments or a busy forward address: report that as the start error.
        if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
            let log = std::fs::read_to_string(&qlog_path).unwrap_or_default();
            return Err(err(format!("QEMU exited at start ({st}): {}", log.trim())));
        }
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exit_tx, exit_rx) = watch::channel(false);
        self.lock().vms.insert(
            spec.uuid.clone(),
            Vm {
                kill: Some(kill_tx),
                exited: exit_rx,
                qmp: dir.join("qmp.sock"),
                drives: args::ordered_drives(spec)
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (d.uuid, (format!("vd{i}"), None)))
                    .collect(),
                hotplugged: 0,
            },
        );
        self.watch_vm(child, spec.uuid.clone(), kill_rx, exit_tx);
        Ok(())
    }

    /// VLAN NICs: a switch port each (`None` for the other NICs); QEMU inherits its end of the
    /// socket pair (the close-on-exec flag is cleared in the child only, so no other child of
    /// the emulator holds it and a VM's exit closes the port). The ports go again if the start
    /// fails.
    async fn attach_vlan_ports(
        &self,
        spec: &StartSpec,
    ) -> Result<Vec<Option<OwnedFd>>, BackendError> {
        let mut ports: Vec<Option<OwnedFd>> = Vec::new();
        for (i, (n, w)) in spec.nics.iter().zip(args::nic_wiring(spec)).enumerate() {
            ports.push(match w {
                args::NicWiring::Vlan(vlan) => {
                    let mac = crate::vlan::mac_bytes(&n.mac)
                        .map_err(|e| err(format!("server {}: NIC {i}: {e}", spec.uuid)))?;
                    let fd = self
                        .switch
                        .attach(&vlan, mac, &spec.uuid)
                        .await
                        .map_err(|e| err(format!("server {}: NIC {i}: {e}", spec.uuid)))?;
                    Some(fd)
                }
                _ => None,
            });
        }
        Ok(ports)
    }

    /// QEMU's command: stderr to `qlog_path`, killed on drop and when the emulator dies, the
    /// VLAN ports' fds (`vlan_fds`) inherited.
    fn qemu_command(
        &self,
        args: &[String],
        qlog_path: &Path,
        vlan_fds: &[Option<i32>],
    ) -> Result<Command, BackendError> {
        let qlog = std::fs::File::create(qlog_path)
            .map_err(|e| err(format!("cannot create {}: {e}", qlog_path.display())))?;
        let mut cmd = Command::new(&self.cfg.qemu_system);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qlog)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            let inherit: Vec<i32> = vlan_fds.iter().flatten().copied().collect();
            cmd.pre_exec(move || {
                // QEMU dies with the emulator even on SIGKILL of the emulator.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                for fd in &inherit {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// The VM's watcher: waits for QEMU to exit or for a kill, then forgets the VM, frees its
    /// switch ports and, when the guest powered off by itself, tells the API.
    fn watch_vm(
        &self,
        mut child: tokio::process::Child,
        uuid: String,
        kill_rx: oneshot::Receiver<()>,
        exit_tx: watch::Sender<bool>,
    ) {
        let inner = self.inner.clone();
        let switch = self.switch.clone();
        let events = self.events().cloned();
        tokio::spawn(async move {
            let killed = tokio::select! {
                st = child.wait() => {
                    tracing::info!(server = %uuid, status = ?st, "QEMU exited");
                    false
                }
                _ = kill_rx => {
                    let _ = child.kill().await;
                    true
                }
            };
            {
                let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
                g.vms.remove(&uuid);
                if !killed {
                    g.ips.remove(&uuid);
                }
            }
            // before the API hears of it: a restart at once must find the MACs free
            switch.detach_owner(&uuid).await;
            let _ = exit_tx.send(true);
            // A guest that powered off by itself (ACPI shutdown, poweroff, crash): tell the API.
            if !killed {
                if let Some(ev) = events {
                    ev.power_off(&uuid);
                }
            }
        });
    }
}
