//! VLAN address pools: the meta keys the controller and the node agent share (issue "VLAN
//! addresses with no DHCP server", docs/vlan-pools.md).
//!
//! A CloudSigma VLAN has no DHCP and the API never knows its addresses
//! (`../shared/reference/cloudsigma.md`, Servers). The pool therefore lives where the operator
//! can set it once for every cluster that uses the VLAN: in the VLAN object's own `meta`
//! ([`POOL_KEY`]). The controller's leader gives each server's NIC on a pooled VLAN an address
//! and writes it into the *server's* `meta` under [`assignment_key`] (one key per NIC, by MAC);
//! the agent reads it from the live server context and configures it. The cloud is the only
//! source of truth: "free" means no server's meta holds the address.
//!
//! Pure: parsing and formatting only, no I/O (the agent builds this crate without `client`).

use std::fmt;
use std::net::Ipv4Addr;

/// VLAN `meta` key holding the pool: `"<network>/<prefix>"`, optionally followed by one space and
/// the range to hand out, `"<first>-<last>"` (both inside the network). Without a range every
/// host address of the network but the first (kept for a router) is used.
/// Example: `"192.168.77.0/24 192.168.77.10-192.168.77.250"`.
pub const POOL_KEY: &str = "k8s-ipv4-pool";

/// Prefix of the server `meta` key of one NIC's assignment; the full key is
/// [`assignment_key`]`(mac)`, the value `"<address>/<prefix>"` (see [`Assignment`]).
pub const ASSIGNMENT_PREFIX: &str = "k8s-ipv4-";

/// The server `meta` key of the assignment for the NIC with `mac`: `k8s-ipv4-<mac>`, MAC in
/// lower case with colons (`k8s-ipv4-22:aa:bb:cc:dd:01`). Meta keys are free-form strings.
pub fn assignment_key(mac: &str) -> String {
    format!("{ASSIGNMENT_PREFIX}{}", mac.to_ascii_lowercase())
}

/// The MAC of an assignment key, or None for any other key (the pool key included).
pub fn assignment_mac(key: &str) -> Option<&str> {
    let mac = key.strip_prefix(ASSIGNMENT_PREFIX)?;
    (mac.len() == 17 && mac.split(':').count() == 6).then_some(mac)
}

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Net {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a pool or an assignment value does not parse: names the value and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?}: {why} (expected {expected})")]
pub struct ParseError {
    pub what: &'static str,
    pub value: String,
    pub why: String,
    pub expected: &'static str,
}

const POOL_FORM: &str = "\"<network>/<prefix>\" or \"<network>/<prefix> <first>-<last>\", e.g. \"192.168.77.0/24 192.168.77.10-192.168.77.250\"";
const ASSIGNMENT_FORM: &str = "\"<address>/<prefix>\", e.g. \"192.168.77.10/24\"";

fn parse_net(
    s: &str,
    what: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<(Ipv4Addr, u8), ParseError> {
    let err = |why: String| ParseError {
        what,
        value: value.to_string(),
        why,
        expected,
    };
    let (a, p) = s.split_once('/').ok_or_else(|| err("no /prefix".into()))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| err(format!("{a:?} is not an IPv4 address")))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| err(format!("prefix {p:?} is not a number from 8 to 30")))?;
    Ok((addr, prefix))
}

/// A VLAN's pool: the network and the inclusive range of addresses to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub net: Net,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Pool {
    /// Parse the value of [`POOL_KEY`].
    pub fn parse(value: &str) -> Result<Pool, ParseError> {
        let err = |why: String| ParseError {
            what: "VLAN pool",
            value: value.to_string(),
            why,
            expected: POOL_FORM,
        };
        let mut words = value.split_whitespace();
        let cidr = words.next().ok_or_else(|| err("empty".into()))?;
        let (addr, prefix) = parse_net(cidr, "VLAN pool", value, POOL_FORM)?;
        let net = Net { addr, prefix };
        if u32::from(addr) & net.mask() != u32::from(addr) {
            return Err(err(format!(
                "{cidr} has host bits set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(addr) & net.mask())
            )));
        }
        let (first, last) = match words.next() {
            None => (
                Ipv4Addr::from(u32::from(addr) + 2),
                Ipv4Addr::from(u32::from(net.broadcast()) - 1),
            ),
            Some(range) => {
                let (f, l) = range
                    .split_once('-')
                    .ok_or_else(|| err(format!("range {range:?} has no '-'")))?;
                let ip = |s: &str| -> Result<Ipv4Addr, ParseError> {
                    s.parse()
                        .map_err(|_| err(format!("{s:?} is not an IPv4 address")))
                };
                (ip(f)?, ip(l)?)
            }
        };
        if let Some(extra) = words.next() {
            return Err(err(format!("unexpected {extra:?} after the range")));
        }
        let host = |ip: Ipv4Addr| net.contains(ip) && ip != addr && ip != net.broadcast();
        if !host(first) || !host(last) {
            return Err(err(format!(
                "range {first}-{last} is not inside the host addresses of {net}"
            )));
        }
        if first > last {
            return Err(err(format!("range {first}-{last} runs backwards")));
        }
        Ok(Pool { net, first, last })
    }

    /// Whether `ip` is one the pool hands out.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }

    /// How many addresses the pool hands out.
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// The pool's addresses, lowest first.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}-{}", self.net, self.first, self.last)
    }
}

/// One NIC's assignment: the address and the prefix of its VLAN's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Assignment {
    /// Parse the value of an [`assignment_key`].
    pub fn parse(value: &str) -> Result<Assignment, ParseError> {
        let (addr, prefix) = parse_net(value.trim(), "address assignment", value, ASSIGNMENT_FORM)?;
        Ok(Assignment { addr, prefix })
    }
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_with_and_without_range() {
        let p = Pool::parse("192.168.77.0/24 192.168.77.10-192.168.77.12").unwrap();
        assert_eq!(p.size(), 3);
        assert_eq!(p.to_string(), "192.168.77.0/24 192.168.77.10-192.168.77.12");
        let all: Vec<_> = p.addresses().map(|a| a.to_string()).collect();
        assert_eq!(all, ["192.168.77.10", "192.168.77.11", "192.168.77.12"]);
        let p = Pool::parse("10.0.0.0/29").unwrap();
        assert_eq!(
            (p.first.to_string(), p.last.to_string()),
            ("10.0.0.2".into(), "10.0.0.6".into())
        );
    }

    #[test]
    fn bad_pools_name_the_value_and_the_form() {
        for (v, why) in [
            ("", "empty"),
            ("192.168.77.0", "no /prefix"),
            ("192.168.77.0/33", "prefix"),
            ("192.168.77.5/24", "host bits"),
            ("192.168.77.0/24 10.0.0.1-10.0.0.5", "not inside"),
            ("192.168.77.0/24 192.168.77.0-192.168.77.5", "not inside"),
            ("192.168.77.0/24 192.168.77.9-192.168.77.255", "not inside"),
            ("192.168.77.0/24 192.168.77.9-192.168.77.3", "backwards"),
            ("192.168.77.0/24 192.168.77.9", "no '-'"),
            ("192.168.77.0/24 192.168.77.2-192.168.77.3 x", "unexpected"),
            ("nonsense/24", "not an IPv4"),
        ] {
            let e = Pool::parse(v).unwrap_err().to_string();
            assert!(e.contains(why), "{v:?}: {e}");
            assert!(e.contains("expected"), "{e}");
        }
    }

    #[test]
    fn overlap() {
        let a = Pool::parse("10.0.0.0/16").unwrap().net;
        let b = Pool::parse("10.0.5.0/24").unwrap().net;
        let c = Pool::parse("10.1.0.0/24").unwrap().net;
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn assignment_keys_and_values() {
        let k = assignment_key("22:AA:bb:cc:dd:01");
        assert_eq!(k, "k8s-ipv4-22:aa:bb:cc:dd:01");
        assert_eq!(assignment_mac(&k), Some("22:aa:bb:cc:dd:01"));
        assert_eq!(assignment_mac(POOL_KEY), None);
        assert_eq!(assignment_mac("k8s-ipv4-released"), None);
        let a = Assignment::parse("192.168.77.10/24").unwrap();
        assert_eq!(a.to_string(), "192.168.77.10/24");
        assert!(Assignment::parse("192.168.77.10").is_err());
    }
}
