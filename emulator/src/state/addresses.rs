//! Addresses handed out by the emulator: NIC MACs and the NAT pool of public runtime IPs.

use crate::error::ApiError;

use super::State;

/// Nameservers handed out with NAT and seeded IPs (documentation range; loopback-only emulator).
pub const NAMESERVERS: [&str; 2] = ["198.51.100.53", "203.0.113.53"];

impl State {
    pub(super) fn new_mac(&mut self) -> String {
        // [D] CloudSigma MACs start with 22: (locally administered); unique per account here
        loop {
            let b: [u8; 5] = rand::random();
            let mac = format!(
                "22:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[0], b[1], b[2], b[3], b[4]
            );
            if self.macs.insert(mac.clone()) {
                return mac;
            }
        }
    }

    /// NAT pool for public DHCP NICs: the documentation ranges 198.51.100.0/24 and
    /// 203.0.113.0/24 first, then the shared range 100.64.0.0/16 for big fleets.
    fn pool_addr(i: usize) -> Option<String> {
        if i < 253 {
            return Some(format!("198.51.100.{}", i + 2));
        }
        let i = i - 253;
        if i < 190 {
            // 203.0.113.200+ is left for the seeded static IPs
            return Some(format!("203.0.113.{}", i + 2));
        }
        let i = i - 190;
        if i < 254 * 256 {
            return Some(format!("100.64.{}.{}", i / 254, i % 254 + 1));
        }
        None
    }

    pub(super) fn alloc_ip(&mut self, server: &str) -> Result<String, ApiError> {
        let total = 253 + 190 + 254 * 256;
        for k in 0..total {
            let i = (self.ip_cursor + k) % total;
            if let Some(a) = Self::pool_addr(i) {
                if !self.used_ips.contains_key(&a) && !self.ips.contains_key(&a) {
                    self.ip_cursor = i + 1;
                    self.used_ips.insert(a.clone(), server.to_string());
                    return Ok(a);
                }
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "backend",
            "No free public IP address in the NAT pool",
            None,
        ))
    }
}
