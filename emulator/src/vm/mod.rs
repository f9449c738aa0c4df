//! The QEMU backend: drives are qcow2 files, servers are QEMU processes.
//!
//! Layout under [`QemuConfig::data_dir`]:
//! - `drives/<uuid>.qcow2` — every account drive; `drives/<uuid>.boot` names the directory holding
//!   `vmlinuz` + `initrd.img` for drives descended from a library image built by
//!   `tests/vm-image/build.sh` (that image has no bootloader: QEMU boots its kernel directly).
//! - `servers/<uuid>/console.log` (ttyS0, kept until the server is deleted), `qmp.sock`,
//!   `qemu.log` (QEMU's own stderr).
//!
//! Clones: a clone of a *library* drive is a qcow2 overlay whose backing file is the library
//! image (instant; library images are immutable and outlive the emulator in the cache — deleting
//! the cache breaks such drives, documented in docs/e2e.md). A clone of an *account* drive is a
//! full `qemu-img convert` copy, so deleting the source drive can never break the clone.
//!
//! Networking: QEMU user-mode networking per server, the guest's ports 22 and 10250 (kubelet)
//! forwarded from a loopback address of its own, 127.77.0.N, which is also the server's runtime NAT IP in the
//! API, so clients SSH to `runtime` IP:22 exactly as on CloudSigma. Only the first NIC is wired
//! (VLAN NICs get an isolated user-mode network with no forwards).
//!
//! Serial ports: ttyS0 → console log file; ttyS1 → the emulator's per-server context socket
//! (QEMU connects as a client and reconnects if the emulator restarts the socket).
//!
//! Processes never outlive the emulator: QEMU gets `PR_SET_PDEATHSIG(SIGKILL)`, the child handle
//! kills on drop, and [`Backend::shutdown`] kills and reaps every VM.

pub(crate) mod qmp;

use crate::backend::{Backend, BackendError, BackendSink, ShutdownMode, StartDrive, StartSpec};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

/// Hardware acceleration choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened read-write, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    fn resolve(self, qemu: &Path) -> Accel {
        match self {
            Accel::Auto => {
                let ok = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok();
                if ok && !kvm_is_pvm() && kvm_boots(qemu) {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            a => a,
        }
    }
}

/// PVM (`kvm_pvm`, a nested hypervisor without hardware virtualization) opens `/dev/kvm` and
/// passes the probe below, but runs only PVM-aware guest kernels: a stock kernel dies early in
/// boot with "KVM internal error … emulation failure" (seen on `lock cmpxchg16b`) and QEMU sits
/// paused, so the VM never answers. Such a host gets TCG.
fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// `/dev/kvm` opening is not enough: under some nested hypervisors QEMU aborts at vCPU setup
/// ("failed to set MSR 0x10a"). Start a diskless KVM VM for a moment: alive after 1.5 s = usable.
fn kvm_boots(qemu: &Path) -> bool {
    let child = std::process::Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-m",
            "64",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    std::thread::sleep(Duration::from_millis(1500));
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    alive
}

/// Configuration of the QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Where drive images, console logs and QMP sockets live (created if missing).
    pub data_dir: PathBuf,
    pub qemu_system: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    /// Kernel command line for direct kernel boot (the library image has no bootloader).
    pub cmdline: String,
    /// Guest memory cap in MiB: a builder server asking 4 GiB gets this much at most, so several
    /// VMs fit on a CI machine.
    pub max_mem_mib: u64,
    /// First three octets of the per-server loopback addresses (127.77.0.N, N = 2..=254).
    pub ip_prefix: String,
    /// Guest TCP ports reachable on the server's NAT IP, as on the real cloud where the NAT IP
    /// exposes every port: SSH, and the kubelet's 10250 so that `kubectl logs`/`exec` work
    /// (the apiserver dials the Node's address).
    pub forwarded_ports: Vec<u16>,
}

impl QemuConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> QemuConfig {
        QemuConfig {
            data_dir: data_dir.into(),
            qemu_system: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            // CLOUDSIM_VM_ACCEL=kvm|tcg overrides the probe
            accel: match std::env::var("CLOUDSIM_VM_ACCEL").as_deref() {
                Ok("kvm") => Accel::Kvm,
                Ok("tcg") => Accel::Tcg,
                _ => Accel::Auto,
            },
            cmdline: "root=/dev/vda rw console=ttyS0,115200 net.ifnames=1 quiet".into(),
            max_mem_mib: 2048,
            ip_prefix: "127.77.0".into(),
            forwarded_ports: vec![22, 10250],
        }
    }
}

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

/// The command-line drives in QEMU order: the boot drive first, so it is /dev/vda (the kernel
/// command line's root). Device `i` has drive id `d{i}` and device id `vd{i}`.
fn ordered_drives(spec: &StartSpec) -> Vec<StartDrive> {
    let mut drives = spec.drives.clone();
    if let Some(b) = &spec.boot_drive {
        drives.sort_by_key(|d| if &d.uuid == b { 0 } else { 1 });
    }
    drives
}

#[derive(Default)]
struct Inner {
    vms: HashMap<String, Vm>,
    /// server uuid → N of 127.77.0.N (kept while the server runs).
    ips: HashMap<String, u8>,
}

/// The QEMU backend (see the module docs).
pub struct QemuBackend {
    cfg: QemuConfig,
    accel: Accel,
    events: OnceLock<Arc<dyn BackendSink>>,
    inner: Arc<Mutex<Inner>>,
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
        })
    }

    /// The accelerator actually used (Auto resolved).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Path of an account drive's image file.
    pub fn drive_path(&self, uuid: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("drives")
            .join(format!("{uuid}.qcow2"))
    }

    fn boot_sidecar(&self, uuid: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("drives")
            .join(format!("{uuid}.boot"))
    }

    fn server_dir(&self, uuid: &str) -> PathBuf {
        self.cfg.data_dir.join("servers").join(uuid)
    }

    /// Console log path of a server (ttyS0).
    pub fn console_path(&self, uuid: &str) -> PathBuf {
        self.server_dir(uuid).join("console.log")
    }

    async fn qemu_img(&self, args: &[&str]) -> Result<(), BackendError> {
        let out = Command::new(&self.cfg.qemu_img)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| err(format!("cannot run {}: {e}", self.cfg.qemu_img.display())))?;
        if !out.status.success() {
            return Err(err(format!(
                "qemu-img {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    async fn virtual_size(&self, path: &Path) -> Result<u64, BackendError> {
        let p = path.to_string_lossy();
        let out = Command::new(&self.cfg.qemu_img)
            .args(["info", "--output=json", "-U", &p])
            .output()
            .await
            .map_err(|e| err(format!("cannot run qemu-img info {p}: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| err(format!("qemu-img info {p}: unreadable output: {e}")))?;
        v.get("virtual-size")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| err(format!("qemu-img info {p}: no virtual-size")))
    }

    fn events(&self) -> Option<&Arc<dyn BackendSink>> {
        self.events.get()
    }

    fn release_ip(inner: &Mutex<Inner>, uuid: &str) {
        inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ips
            .remove(uuid);
    }

    /// Builds QEMU's argument list for a server.
    fn qemu_args(
        &self,
        spec: &StartSpec,
        ip: &str,
        dir: &Path,
        boot: Option<&Path>,
    ) -> Result<Vec<String>, BackendError> {
        let mem_mib = (spec.mem / (1024 * 1024)).clamp(256, self.cfg.max_mem_mib.max(256));
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let smp = spec.smp.clamp(1, host_cpus.max(1));
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("cloudsim-{}", spec.uuid),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-machine".into(),
            "pc".into(),
            "-m".into(),
            mem_mib.to_string(),
            "-smp".into(),
            smp.to_string(),
            "-uuid".into(),
            spec.uuid.clone(),
            // cloud-init's CloudSigma datasource only engages when DMI says so.
            "-smbios".into(),
            format!(
                "type=1,manufacturer=CloudSigma,product=CloudSigma,serial={}",
                spec.uuid
            ),
            "-chardev".into(),
            format!(
                "file,id=con0,path={},append=on",
                dir.join("console.log").display()
            ),
            "-serial".into(),
            "chardev:con0".into(),
            "-chardev".into(),
            format!(
                "socket,id=ctx0,path={},server=off,reconnect=1",
                spec.context_socket.display()
            ),
            "-serial".into(),
            "chardev:ctx0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
        ];
        match self.accel {
            Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
            _ => a.extend(["-accel".into(), "tcg,thread=multi".into()]),
        }
        for (i, d) in ordered_drives(spec).iter().enumerate() {
            let path = self.drive_path(&d.uuid);
            if !path.exists() {
                return Err(err(format!(
                    "drive {} of server {} has no image file {} (created before the VM backend was in use?)",
                    d.uuid,
                    spec.uuid,
                    path.display()
                )));
            }
            if d.media == "cdrom" {
                a.push("-drive".into());
                a.push(format!(
                    "file={},if=none,id=d{i},format=qcow2,media=cdrom,readonly=on",
                    path.display()
                ));
                a.push("-device".into());
                a.push(format!("ide-cd,drive=d{i},id=vd{i}"));
            } else {
                a.push("-drive".into());
                a.push(format!(
                    "file={},if=none,id=d{i},format=qcow2,cache=writeback,discard=unmap",
                    path.display()
                ));
                a.push("-device".into());
                // bootindex 0 belongs to the linuxboot ROM under direct kernel boot
                a.push(format!(
                    "virtio-blk-pci,drive=d{i},id=vd{i},bootindex={}",
                    i + 1
                ));
            }
        }
        for (i, n) in spec.nics.iter().enumerate() {
            // The API validated it; check again here because a comma would add a QEMU device
            // property of the client's choosing (and a state file may carry anything).
            let mac = crate::mac::parse_mac(&n.mac)
                .map_err(|e| err(format!("server {}: NIC {i}: {e}", spec.uuid)))?;
            let netdev = if i == 0 {
                let fwd: String = self
                    .cfg
                    .forwarded_ports
                    .iter()
                    .map(|p| format!(",hostfwd=tcp:{ip}:{p}-:{p}"))
                    .collect();
                format!("user,id=n{i}{fwd}")
            } else {
                format!("user,id=n{i},restrict=on")
            };
            a.push("-netdev".into());
            a.push(netdev);
            a.push("-device".into());
            a.push(format!("virtio-net-pci,netdev=n{i},mac={mac}"));
        }
        if let Some(bootdir) = boot {
            a.push("-kernel".into());
            a.push(bootdir.join("vmlinuz").display().to_string());
            a.push("-initrd".into());
            a.push(bootdir.join("initrd.img").display().to_string());
            a.push("-append".into());
            a.push(self.cfg.cmdline.clone());
        }
        Ok(a)
    }

    /// Hot-plugs `attached` into and out `detached` of the running VM of `server` over QMP.
    /// [D] Only virtio disks are hot-plugged: QEMU's IDE bus (and so an IDE cdrom) takes no
    /// hot-plug; such a drive is logged and appears at the next start.
    async fn hotplug(
        &self,
        server: &str,
        attached: &[StartDrive],
        detached: &[String],
    ) -> Result<(), BackendError> {
        let Some(sock) = self.lock().vms.get(server).map(|v| v.qmp.clone()) else {
            // no VM (never started by this backend): nothing runs to tell
            return Ok(());
        };
        for uuid in detached {
            let Some((dev, node)) = self
                .lock()
                .vms
                .get(server)
                .and_then(|v| v.drives.get(uuid).cloned())
            else {
                continue; // never plugged into this VM (e.g. an IDE drive added while running)
            };
            qmp::run(
                &sock,
                &qmp::detach_steps(&dev, node.as_deref()),
                QMP_TIMEOUT,
            )
            .await
            .map_err(|e| err(format!("detaching drive {uuid} from server {server}: {e}")))?;
            if let Some(v) = self.lock().vms.get_mut(server) {
                v.drives.remove(uuid);
            }
        }
        for d in attached {
            if d.media == "cdrom" || d.device != "virtio" {
                tracing::warn!(server, drive = %d.uuid, device = %d.device, media = %d.media,
                    "only virtio disks are hot-plugged into a QEMU guest; this one appears at the next start");
                continue;
            }
            let path = self.drive_path(&d.uuid);
            if !path.exists() {
                return Err(err(format!(
                    "drive {} has no image file {} (created before the VM backend was in use?)",
                    d.uuid,
                    path.display()
                )));
            }
            let n = match self.lock().vms.get_mut(server) {
                Some(v) => {
                    v.hotplugged += 1;
                    v.hotplugged
                }
                None => return Ok(()), // the VM went away meanwhile
            };
            let (node, dev) = (format!("hp{n}"), format!("vhp{n}"));
            qmp::run(&sock, &qmp::attach_steps(&path, &node, &dev), QMP_TIMEOUT)
                .await
                .map_err(|e| {
                    err(format!(
                        "attaching drive {} to server {server}: {e}",
                        d.uuid
                    ))
                })?;
            if let Some(v) = self.lock().vms.get_mut(server) {
                v.drives.insert(d.uuid.clone(), (dev, Some(node)));
            }
        }
        Ok(())
    }

    async fn kill_vm(&self, uuid: &str) {
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
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn attach(&self, events: Arc<dyn BackendSink>) {
        let _ = self.events.set(events);
    }

    async fn drive_created(&self, uuid: &str, size: u64, _media: &str) -> Result<(), BackendError> {
        let p = self.drive_path(uuid);
        let ps = p.to_string_lossy();
        self.qemu_img(&["create", "-q", "-f", "qcow2", &ps, &size.max(1).to_string()])
            .await
    }

    async fn drive_cloned(
        &self,
        src: &str,
        src_is_library: bool,
        dst: &str,
        size: u64,
    ) -> Result<(), BackendError> {
        let dst_path = self.drive_path(dst);
        let dps = dst_path.to_string_lossy().to_string();
        if src_is_library {
            let img = self.events().and_then(|e| e.library_image(src));
            let Some(img) = img else {
                // A library entry without a local image (the seed's catalogue): an empty disk of
                // the right size, so state-level flows keep working.
                tracing::warn!(
                    libdrive = src,
                    "library drive has no local image; clone is an empty disk"
                );
                return self.drive_created(dst, size, "disk").await;
            };
            let img = std::fs::canonicalize(&img)
                .map_err(|e| err(format!("library image {} of {src}: {e}", img.display())))?;
            let vsize = self.virtual_size(&img).await?;
            let ips = img.to_string_lossy().to_string();
            self.qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &ips,
                &dps,
                &size.max(vsize).to_string(),
            ])
            .await?;
            if let Some(dir) = img.parent() {
                if dir.join("vmlinuz").exists() {
                    write_atomic(&self.boot_sidecar(dst), dir.to_string_lossy().as_bytes())?;
                }
            }
            return Ok(());
        }
        let src_path = self.drive_path(src);
        let sps = src_path.to_string_lossy().to_string();
        // Full copy (not an overlay): the source may be deleted while the clone lives on.
        let tmp = format!("{dps}.part");
        self.qemu_img(&["convert", "-U", "-O", "qcow2", &sps, &tmp])
            .await?;
        let vsize = self.virtual_size(Path::new(&tmp)).await?;
        if size > vsize {
            self.qemu_img(&["resize", "-q", &tmp, &size.to_string()])
                .await?;
        }
        std::fs::rename(&tmp, &dst_path)
            .map_err(|e| err(format!("cannot rename {tmp} to {dps}: {e}")))?;
        if let Ok(b) = std::fs::read(self.boot_sidecar(src)) {
            write_atomic(&self.boot_sidecar(dst), &b)?;
        }
        Ok(())
    }

    async fn drive_resized(&self, uuid: &str, new_size: u64) -> Result<(), BackendError> {
        let p = self.drive_path(uuid);
        let vsize = self.virtual_size(&p).await?;
        if new_size == vsize {
            return Ok(());
        }
        let ps = p.to_string_lossy();
        if new_size < vsize {
            return Err(err(format!(
                "drive {uuid}: shrinking from {vsize} to {new_size} bytes would destroy data"
            )));
        }
        self.qemu_img(&["resize", "-q", &ps, &new_size.to_string()])
            .await
    }

    async fn drive_deleted(&self, uuid: &str) -> Result<(), BackendError> {
        for p in [self.drive_path(uuid), self.boot_sidecar(uuid)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("cannot remove {}: {e}", p.display()))),
            }
        }
        Ok(())
    }

    fn runtime_ip(&self, server: &str, nic_index: usize) -> Option<String> {
        if nic_index != 0 {
            return None;
        }
        let mut g = self.lock();
        let n = match g.ips.get(server) {
            Some(n) => *n,
            None => {
                let used: std::collections::HashSet<u8> = g.ips.values().copied().collect();
                let n = (2u8..=254).find(|n| !used.contains(n) && self.forwards_free(*n))?;
                g.ips.insert(server.to_string(), n);
                n
            }
        };
        Some(format!("{}.{n}", self.cfg.ip_prefix))
    }

    async fn server_start(&self, spec: &StartSpec) -> Result<(), BackendError> {
        let res = self.start_inner(spec).await;
        if res.is_err() {
            Self::release_ip(&self.inner, &spec.uuid);
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
                    .map_err(err)?;
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

impl QemuBackend {
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

    async fn start_inner(&self, spec: &StartSpec) -> Result<(), BackendError> {
        if self.lock().vms.contains_key(&spec.uuid) {
            return Err(err(format!(
                "server {} already has a running VM",
                spec.uuid
            )));
        }
        let ip = self
            .runtime_ip(&spec.uuid, 0)
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
        let args = self.qemu_args(spec, &ip, &dir, boot.as_deref())?;
        let qlog_path = dir.join("qemu.log");
        let qlog = std::fs::File::create(&qlog_path)
            .map_err(|e| err(format!("cannot create {}: {e}", qlog_path.display())))?;
        let mut cmd = Command::new(&self.cfg.qemu_system);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qlog)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // QEMU dies with the emulator even on SIGKILL of the emulator.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        tracing::info!(server = %spec.uuid, %ip, accel = ?self.accel, "starting QEMU");
        let mut child = cmd.spawn().map_err(|e| {
            err(format!(
                "cannot start {}: {e}",
                self.cfg.qemu_system.display()
            ))
        })?;
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
                drives: ordered_drives(spec)
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (d.uuid, (format!("vd{i}"), None)))
                    .collect(),
                hotplugged: 0,
            },
        );
        let inner = self.inner.clone();
        let events = self.events().cloned();
        let uuid = spec.uuid.clone();
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
            let _ = exit_tx.send(true);
            // A guest that powered off by itself (ACPI shutdown, poweroff, crash): tell the API.
            if !killed {
                if let Some(ev) = events {
                    ev.power_off(&uuid);
                }
            }
        });
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BackendError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// A library image built by `tests/vm-image/build.sh`: the directory holding
/// `debian-12.qcow2`, `vmlinuz`, `initrd.img` and `manifest.json`.
pub fn local_library_drive(image_dir: &Path) -> Result<crate::config::LibDriveSeed, BackendError> {
    let manifest_path = image_dir.join("manifest.json");
    let m: serde_json::Value = std::fs::read(&manifest_path)
        .map_err(|e| {
            err(format!(
                "cannot read {}: {e} (build it with tests/vm-image/build.sh)",
                manifest_path.display()
            ))
        })
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| err(format!("{} is not JSON: {e}", manifest_path.display())))
        })?;
    let image = image_dir.join("debian-12.qcow2");
    if !image.exists() {
        return Err(err(format!("{} missing", image.display())));
    }
    let s = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let size = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&image)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v.get("virtual-size").and_then(|x| x.as_u64()))
        .unwrap_or(3 << 30);
    // A fixed uuid so state files and scripts can name it.
    let drive = cloudsigma_api::LibDrive {
        uuid: "6b1fb1a9-7b2e-4f0b-9c1e-0de5e7a10c12".into(),
        name: s("name").unwrap_or_else(|| "Debian 12 (local test image)".into()),
        os: Some("linux".into()),
        distribution: s("distribution").or(Some("Debian".into())),
        version: s("version").or(Some("12".into())),
        arch: Some("64".into()),
        image_type: Some("preinst".into()),
        media: "disk".into(),
        size,
        description: Some(
            "Local Debian 12 test image (tests/vm-image/build.sh), booted by the QEMU backend"
                .into(),
        ),
        default_user: s("default_user").or(Some("debian".into())),
        cloud_init_service: Some(true),
        deprecated: Some(false),
        status: None,
        resource_uri: None,
        extra: Default::default(),
    };
    Ok(crate::config::LibDriveSeed {
        drive,
        image_path: Some(image),
    })
}

#[cfg(test)]
mod tests;
