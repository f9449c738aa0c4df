//! Hardware acceleration: KVM when it really works on this host, else TCG.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Hardware acceleration choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened read-write, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub(crate) fn resolve(self, qemu: &Path) -> Accel {
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
