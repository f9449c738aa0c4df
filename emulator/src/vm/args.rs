//! QEMU's command line for a server, built from the start spec alone: pure (no file system, no
//! processes), so every wiring rule is unit-tested without QEMU installed.

use super::accel::Accel;
use super::config::QemuConfig;
use super::err;
use crate::backend::{BackendError, StartDrive, StartSpec};
use std::path::Path;

/// Everything the command line depends on.
pub(crate) struct Launch<'a> {
    pub cfg: &'a QemuConfig,
    pub accel: Accel,
    /// CPUs of the host: the guest's `smp` is capped to it.
    pub host_cpus: u32,
    pub spec: &'a StartSpec,
    /// The server's loopback address (127.77.0.N): the forwards listen there.
    pub ip: &'a str,
    /// The server's directory (console log, QMP socket).
    pub dir: &'a Path,
    /// Directory of `vmlinuz` + `initrd.img` for direct kernel boot.
    pub boot: Option<&'a Path>,
    /// Per NIC (same index as `spec.nics`): the inherited socket fd of a VLAN NIC's switch port.
    pub vlan_fds: &'a [Option<i32>],
}

/// How one NIC is wired, by kind (not by position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NicWiring {
    /// The first public NIC: user-mode NAT with the forwards on the server's loopback address
    /// (its runtime NAT IP in the API).
    Nat,
    /// Any further public NIC: an isolated, restricted user-mode network (no forwards, no way
    /// out). [D] slirp's DHCP still answers there (10.0.3.15, with a default route via
    /// 10.0.3.2 that leads nowhere); a second public NIC is not something the project uses.
    Isolated,
    /// A VLAN NIC: a port of that VLAN's switch (`src/vlan/`), over an inherited socket.
    Vlan(String),
}

/// The wiring of each NIC of `spec`, in order.
pub(crate) fn nic_wiring(spec: &StartSpec) -> Vec<NicWiring> {
    let mut nat_taken = false;
    spec.nics
        .iter()
        .map(|n| match &n.vlan {
            Some(v) => NicWiring::Vlan(v.clone()),
            None if !nat_taken => {
                nat_taken = true;
                NicWiring::Nat
            }
            None => NicWiring::Isolated,
        })
        .collect()
}

/// The command-line drives in QEMU order: the boot drive first, so it is /dev/vda (the kernel
/// command line's root). Device `i` has drive id `d{i}` and device id `vd{i}`.
pub(crate) fn ordered_drives(spec: &StartSpec) -> Vec<StartDrive> {
    let mut drives = spec.drives.clone();
    if let Some(b) = &spec.boot_drive {
        drives.sort_by_key(|d| if &d.uuid == b { 0 } else { 1 });
    }
    drives
}

/// Path of an account drive's image file under the data dir (see `drives.rs`).
pub(crate) fn drive_file(cfg: &QemuConfig, uuid: &str) -> std::path::PathBuf {
    cfg.data_dir.join("drives").join(format!("{uuid}.qcow2"))
}

/// Builds QEMU's argument list for a server.
pub(crate) fn qemu_args(l: &Launch<'_>) -> Result<Vec<String>, BackendError> {
    let (cfg, spec, ip, dir) = (l.cfg, l.spec, l.ip, l.dir);
    let mem_mib = (spec.mem / (1024 * 1024)).clamp(256, cfg.max_mem_mib.max(256));
    let smp = spec.smp.clamp(1, l.host_cpus.max(1));
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
    match l.accel {
        Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
        _ => a.extend(["-accel".into(), "tcg,thread=multi".into()]),
    }
    for (i, d) in ordered_drives(spec).iter().enumerate() {
        let path = drive_file(cfg, &d.uuid);
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
    let wiring = nic_wiring(spec);
    for (i, n) in spec.nics.iter().enumerate() {
        // The API validated it; check again here because a comma would add a QEMU device
        // property of the client's choosing (and a state file may carry anything).
        let mac = crate::mac::parse_mac(&n.mac)
            .map_err(|e| err(format!("server {}: NIC {i}: {e}", spec.uuid)))?;
        let netdev = match &wiring[i] {
            NicWiring::Nat => {
                let fwd: String = cfg
                    .forwarded_ports
                    .iter()
                    .map(|p| format!(",hostfwd=tcp:{ip}:{p}-:{p}"))
                    .collect();
                format!("user,id=n{i}{fwd}")
            }
            // another subnet than the NAT NIC's 10.0.2.0/24, so the two never clash
            NicWiring::Isolated => format!("user,id=n{i},restrict=on,net=10.0.3.0/24"),
            NicWiring::Vlan(v) => {
                let fd = l.vlan_fds.get(i).copied().flatten().ok_or_else(|| {
                    err(format!(
                        "server {}: NIC {i} on VLAN {v} has no switch port",
                        spec.uuid
                    ))
                })?;
                format!("socket,id=n{i},fd={fd}")
            }
        };
        a.push("-netdev".into());
        a.push(netdev);
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n{i},mac={mac}"));
    }
    if let Some(bootdir) = l.boot {
        a.push("-kernel".into());
        a.push(bootdir.join("vmlinuz").display().to_string());
        a.push("-initrd".into());
        a.push(bootdir.join("initrd.img").display().to_string());
        a.push("-append".into());
        a.push(cfg.cmdline.clone());
    }
    Ok(a)
}
