//! The context port's UART, tuned before the context is read.
//!
//! The context (3.6 KB in the e2e VM, more with large user data) comes over an emulated 16550A
//! whose receive FIFO raises an interrupt at its trigger level, 8 bytes as Linux sets it for that
//! UART. Under QEMU each of those interrupts is a hand-off between the VM's vCPU and QEMU's main
//! loop (QEMU only offers the guest as many bytes as the trigger level asks for), so a reply
//! costs one round trip per 8 bytes, and early in boot, with the host and the guest busy, each
//! round trip waits its turn. Measured in the e2e VM (TCG), reading the context took 62-116 ms
//! with the trigger at 8 bytes, 44-53 ms at 14 and ~300 ms at 1; the baud rate made no
//! difference (QEMU does not pace a socket-backed port by it). Linux lets root raise the trigger
//! through sysfs (`rx_trig_bytes`, the 16550A's 1/4/8/14); 14 is the highest, and the bytes left
//! below it at the end of a reply come with the UART's character timeout (4 character times).
//! Only the agent reads this port (the unit conflicts with a getty on it).

use std::path::{Path, PathBuf};

/// The receive trigger the agent sets (bytes): the 16550A's highest.
pub const RX_TRIGGER: u32 = 14;

/// Where Linux exposes a tty's attributes.
const SYS_CLASS_TTY: &str = "/sys/class/tty";

/// Raise the receive FIFO trigger of the UART behind `dev` (e.g. /dev/ttyS1) to [`RX_TRIGGER`]
/// when it is lower. Returns what to log: None when there is nothing to do (not a UART with that
/// attribute: a pty in the tests, the emulator's unix socket, or already at 14).
pub fn raise_rx_trigger(dev: &Path) -> Option<String> {
    raise_rx_trigger_in(Path::new(SYS_CLASS_TTY), dev)
}

fn attribute(sys_class_tty: &Path, dev: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(dev).ok()?;
    let name = real.file_name()?;
    let attr = sys_class_tty.join(name).join("rx_trig_bytes");
    attr.exists().then_some(attr)
}

fn raise_rx_trigger_in(sys_class_tty: &Path, dev: &Path) -> Option<String> {
    let attr = attribute(sys_class_tty, dev)?;
    let now = std::fs::read_to_string(&attr).ok()?;
    let now: u32 = now.trim().parse().ok()?;
    if now >= RX_TRIGGER {
        return None;
    }
    Some(match std::fs::write(&attr, format!("{RX_TRIGGER}\n")) {
        Ok(()) => format!(
            "context: {} receive FIFO trigger {now} -> {RX_TRIGGER} bytes (fewer interrupts per reply)",
            dev.display()
        ),
        // The read works at any trigger level: only slower.
        Err(e) => format!(
            "context: {} receive FIFO trigger left at {now} bytes ({}: {e})",
            dev.display(),
            attr.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose sysfs attribute says 8 gets 14, once; a device without the attribute (a
    /// pty, a socket) and an unreadable value are left alone.
    #[test]
    fn raises_the_trigger_of_a_uart_only() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("ttyS1");
        std::fs::write(&dev, "").unwrap();
        let sys = t.path().join("sys");
        let attr = sys.join("ttyS1/rx_trig_bytes");
        std::fs::create_dir_all(attr.parent().unwrap()).unwrap();
        std::fs::write(&attr, "8\n").unwrap();

        let msg = raise_rx_trigger_in(&sys, &dev).expect("raised");
        assert!(msg.contains("trigger 8 -> 14 bytes"), "{msg}");
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "14\n");
        assert_eq!(raise_rx_trigger_in(&sys, &dev), None, "already at 14");

        // through a link (/dev/serial/by-path/… → ttyS1), the link's target names the tty
        let link = t.path().join("context-port");
        std::os::unix::fs::symlink(&dev, &link).unwrap();
        std::fs::write(&attr, "1\n").unwrap();
        assert!(raise_rx_trigger_in(&sys, &link).is_some());
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "14\n");

        let pty = t.path().join("3");
        std::fs::write(&pty, "").unwrap();
        assert_eq!(raise_rx_trigger_in(&sys, &pty), None, "no attribute");
        std::fs::write(&attr, "garbage").unwrap();
        assert_eq!(raise_rx_trigger_in(&sys, &dev), None, "unreadable value");
        assert_eq!(std::fs::read_to_string(&attr).unwrap(), "garbage");
    }
}
