//! Configuration of the QEMU backend.

use super::accel::Accel;
use std::path::PathBuf;

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
            // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can
            // fail and panic the guest ("IO-APIC + timer doesn't work"), seen on a reboot here.
            cmdline: "root=/dev/vda rw console=ttyS0,115200 net.ifnames=1 quiet no_timer_check"
                .into(),
            max_mem_mib: 2048,
            ip_prefix: "127.77.0".into(),
            forwarded_ports: vec![22, 10250],
        }
    }
}
