//! NIC MAC addresses from clients: validated before they are stored or reach QEMU.
//!
//! A MAC ends up inside QEMU's `-device virtio-net-pci,...,mac=<MAC>` option, whose commas
//! separate properties: an unchecked `22:..:01,romfile=/etc/passwd` would add a property of the
//! client's choosing to the VM. So every client-supplied MAC goes through [`parse_mac`] (in the
//! API's NIC parsing) and the QEMU backend checks again where it builds the command line.

use std::fmt;

/// Why a MAC was refused. The message quotes (escaped, shortened) what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for MacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid MAC address {:?}: {}; expected six two-digit hex bytes separated by ':', e.g. 22:aa:bb:cc:dd:ee",
            self.input, self.reason
        )
    }
}

impl std::error::Error for MacError {}

/// Parse a MAC as `xx:xx:xx:xx:xx:xx` (hex, either case) and return it lower-case.
///
/// [D] Only the colon form: it is what CloudSigma answers and what every client sends (the
/// reference and captured dumps show `22:xx:...`). [D] Multicast (low bit of the first byte) and
/// all-zero addresses are refused: no NIC can use them, and QEMU would boot a guest without a
/// working network instead of failing.
pub fn parse_mac(s: &str) -> Result<String, MacError> {
    let refuse = |reason| MacError {
        // keep error messages short whatever the client sent
        input: s.chars().take(40).collect(),
        reason,
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(refuse("not six ':'-separated bytes"));
    }
    let mut bytes = [0u8; 6];
    for (b, p) in bytes.iter_mut().zip(&parts) {
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(refuse("each byte must be exactly two hex digits"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| refuse("not hex"))?;
    }
    if bytes[0] & 1 == 1 {
        return Err(refuse("a multicast address cannot be a NIC's"));
    }
    if bytes == [0; 6] {
        return Err(refuse("the all-zero address cannot be a NIC's"));
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_colon_hex_and_lowercases() {
        assert_eq!(parse_mac("22:AA:bb:0c:dd:e1").unwrap(), "22:aa:bb:0c:dd:e1");
        assert_eq!(parse_mac("52:54:00:00:00:01").unwrap(), "52:54:00:00:00:01");
    }

    #[test]
    fn refuses_injection_and_malformed() {
        for bad in [
            "52:54:00:00:00:01,romfile=/etc/passwd",
            "52:54:00:00:00:01 ",
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "52-54-00-00-00-01",
            "5:54:00:00:00:01",
            "+5:54:00:00:00:01",
            "g2:54:00:00:00:01",
            "",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} must be refused");
        }
        let e = parse_mac("52:54:00:00:00:01,romfile=/etc/passwd")
            .unwrap_err()
            .to_string();
        assert!(e.contains("romfile") && e.contains("e.g. 22:aa"), "{e}");
    }
}
