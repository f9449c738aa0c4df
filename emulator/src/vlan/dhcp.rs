//! A DHCP server on one VLAN: it stands in for the DHCP server an operator runs on a CloudSigma
//! VLAN (the cloud itself runs none there [V reference], or one through a Virtual Router LAN).
//!
//! Pure: an Ethernet frame in, at most one Ethernet frame out ([`DhcpServer::handle`]), so the
//! switch (`mod.rs`) and the tests drive it alike. Packets: `dhcproto` (DHCP), `etherparse`
//! (Ethernet, IPv4, UDP, ARP).
//!
//! Rules (RFC 2131 unless noted):
//! - DISCOVER → OFFER of the client's lease (stable per MAC, never expires in the emulator: a
//!   VM that restarts gets its address back), else the lowest free address of the range.
//! - REQUEST → ACK when the requested address (option 50, or `ciaddr` when renewing) is the
//!   client's lease or free in the range; NAK otherwise (a foreign address). A REQUEST naming
//!   another server identifier is not for us: no answer.
//! - Options: message type, server identifier, lease time, T1/T2, subnet mask. [D] **No router
//!   and no DNS option**: the VLAN NIC must not get a default route, so the NAT NIC keeps the only
//!   one (the guest reaches the host and the internet through the NAT NIC, as on the real cloud
//!   through its public NIC).
//! - Replies go to the broadcast MAC and 255.255.255.255 for a client without an address (always
//!   allowed by RFC 2131 4.1), unicast to `ciaddr`/chaddr when the client has one (renewing).
//! - ARP requests for the server's own address are answered, so a renewing client's unicast
//!   REQUEST reaches it.

use super::{fmt_mac, Mac};
use dhcproto::v4::{DhcpOption, DhcpOptions, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Header, NetSlice, PacketBuilder,
    SlicedPacket, TransportSlice,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The DHCP server's own MAC on every VLAN (locally administered; VLANs are separate segments,
/// so one MAC for all is fine). [D]
pub const SERVER_MAC: Mac = [0x02, 0xc5, 0xd4, 0xc0, 0x00, 0x01];

/// Default lease time: an hour, so a long test sees renewals (answered: see ARP above). [D]
pub const DEFAULT_LEASE_SECS: u32 = 3600;

/// DHCP on a VLAN as configured (`POST /admin/vlans/{uuid}/dhcp`, `--vlan-dhcp`,
/// `EmulatorConfig::vlan_dhcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// The VLAN's subnet, e.g. `192.168.50.0/24` (prefix 8..=30).
    pub cidr: String,
    /// First and last address handed out; default: the second host address to the last one
    /// (the first host address is then the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[Ipv4Addr; 2]>,
    /// The server's own address (server identifier, ARP); default: the first host address of
    /// the subnet outside the range, else the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Ipv4Addr>,
    /// Lease time in seconds (60..=2^31); default [`DEFAULT_LEASE_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u32>,
}

/// A lease as shown by `GET /admin/vlans/{uuid}/dhcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// A validated [`DhcpConfig`] with its leases.
#[derive(Debug, Clone)]
pub struct DhcpServer {
    net: Ipv4Net,
    first: u32,
    last: u32,
    server: Ipv4Addr,
    lease_secs: u32,
    leases: BTreeMap<Mac, Ipv4Addr>,
}

impl DhcpConfig {
    /// Checks the configuration; the error names the field and what is wrong.
    pub fn validate(&self) -> Result<DhcpServer, String> {
        let net: Ipv4Net = self.cidr.parse().map_err(|e| {
            format!(
                "cidr {:?} is not an IPv4 subnet like 192.168.50.0/24: {e}",
                self.cidr
            )
        })?;
        if !(8..=30).contains(&net.prefix_len()) {
            return Err(format!(
                "cidr {}: the prefix must be 8..=30 (room for a server and clients)",
                self.cidr
            ));
        }
        let net = net.trunc();
        let host_first = u32::from(net.network()) + 1;
        let host_last = u32::from(net.broadcast()) - 1;
        let in_hosts = |a: u32| (host_first..=host_last).contains(&a);
        let (first, last) = match self.range {
            Some([a, b]) => (u32::from(a), u32::from(b)),
            None => (host_first + 1, host_last),
        };
        if !in_hosts(first) || !in_hosts(last) || first > last {
            return Err(format!(
                "range [{}, {}] must be host addresses of {net}, first ≤ last",
                Ipv4Addr::from(first),
                Ipv4Addr::from(last)
            ));
        }
        let in_range = |a: u32| (first..=last).contains(&a);
        let server = match self.server {
            Some(s) => {
                let s = u32::from(s);
                if !in_hosts(s) || in_range(s) {
                    return Err(format!(
                        "server {} must be a host address of {net} outside the range",
                        Ipv4Addr::from(s)
                    ));
                }
                s
            }
            None => [host_first, host_last]
                .into_iter()
                .find(|a| !in_range(*a))
                .ok_or_else(|| {
                    format!(
                        "range covers every host of {net}: leave the first or last host address for the DHCP server, or set \"server\""
                    )
                })?,
        };
        let lease_secs = self.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
        if !(60..=(1 << 31)).contains(&lease_secs) {
            return Err(format!("lease_secs {lease_secs} must be 60..=2147483648"));
        }
        Ok(DhcpServer {
            net,
            first,
            last,
            server: Ipv4Addr::from(server),
            lease_secs,
            leases: BTreeMap::new(),
        })
    }
}

impl DhcpServer {
    /// The leases handed out so far (MAC order).
    pub fn leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(m, ip)| Lease {
                mac: fmt_mac(m),
                ip: *ip,
            })
            .collect()
    }

    /// Keeps the leases of `old` that still fit this configuration (a re-POST of the same VLAN
    /// must not move running VMs).
    pub fn keep_leases(&mut self, old: &DhcpServer) {
        for (m, ip) in &old.leases {
            if self.in_range(*ip) && !self.taken(*ip) {
                self.leases.insert(*m, *ip);
            }
        }
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    fn taken(&self, ip: Ipv4Addr) -> bool {
        self.leases.values().any(|l| *l == ip)
    }

    /// The client's lease, or a new one (lowest free address); `None` when the range is full.
    fn lease_for(&mut self, mac: Mac) -> Option<Ipv4Addr> {
        if let Some(ip) = self.leases.get(&mac) {
            return Some(*ip);
        }
        let ip = (self.first..=self.last)
            .map(Ipv4Addr::from)
            .find(|ip| !self.taken(*ip))?;
        self.leases.insert(mac, ip);
        Some(ip)
    }

    /// The answer to one frame seen on the VLAN, if it calls for one.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let p = SlicedPacket::from_ethernet(frame).ok()?;
        match p.net? {
            NetSlice::Arp(a) => self.arp(a.to_packet().try_eth_ipv4().ok()?),
            NetSlice::Ipv4(_) => match p.transport? {
                TransportSlice::Udp(u) if u.destination_port() == 67 => self.dhcp(u.payload()),
                _ => None,
            },
            _ => None,
        }
    }

    fn arp(&self, a: ArpEthIpv4Packet) -> Option<Vec<u8>> {
        if a.operation != ArpOperation::REQUEST || a.target_ipv4_addr() != self.server {
            return None;
        }
        let reply = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: SERVER_MAC,
            sender_ipv4: self.server.octets(),
            target_mac: a.sender_mac,
            target_ipv4: a.sender_ipv4,
        };
        let mut out = Ethernet2Header {
            source: SERVER_MAC,
            destination: a.sender_mac,
            ether_type: EtherType::ARP,
        }
        .to_bytes()
        .to_vec();
        out.extend_from_slice(&reply.to_bytes());
        Some(out)
    }

    fn dhcp(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let req = Message::decode(&mut Decoder::new(payload)).ok()?;
        if req.opcode() != Opcode::BootRequest || req.chaddr().len() < 6 {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&req.chaddr()[..6]);
        let opts = req.opts();
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
            _ => None,
        };
        let ciaddr = Some(req.ciaddr()).filter(|a| !a.is_unspecified());
        let (kind, yiaddr) = match opts.msg_type()? {
            MessageType::Discover => (MessageType::Offer, self.lease_for(mac)?),
            MessageType::Request => {
                if let Some(DhcpOption::ServerIdentifier(s)) =
                    opts.get(OptionCode::ServerIdentifier)
                {
                    if *s != self.server {
                        return None; // the client chose another server
                    }
                }
                let want = requested.or(ciaddr)?;
                let ok = match self.leases.get(&mac) {
                    Some(l) => *l == want,
                    None => self.in_range(want) && !self.taken(want),
                };
                if ok {
                    self.leases.insert(mac, want);
                    (MessageType::Ack, want)
                } else {
                    (MessageType::Nak, Ipv4Addr::UNSPECIFIED)
                }
            }
            // RELEASE/DECLINE/INFORM: leases are stable per MAC, nothing to do
            _ => return None,
        };
        let mut reply = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        reply.set_opcode(Opcode::BootReply).set_flags(req.flags());
        let mut o = DhcpOptions::new();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(self.server));
        if kind != MessageType::Nak {
            o.insert(DhcpOption::AddressLeaseTime(self.lease_secs));
            o.insert(DhcpOption::Renewal(self.lease_secs / 2));
            o.insert(DhcpOption::Rebinding(self.lease_secs / 8 * 7));
            o.insert(DhcpOption::SubnetMask(self.net.netmask()));
        }
        reply.set_opts(o);
        let mut body = Vec::new();
        reply.encode(&mut Encoder::new(&mut body)).ok()?;
        // RFC 2131 4.1: unicast to a client that has an address (renewing) unless it asked for
        // broadcast; broadcast otherwise (and always for a NAK).
        let unicast = ciaddr.filter(|_| kind != MessageType::Nak && !req.flags().broadcast());
        let (dst_mac, dst_ip) = match unicast {
            Some(ip) => (mac, ip),
            None => ([0xff; 6], Ipv4Addr::BROADCAST),
        };
        let b = PacketBuilder::ethernet2(SERVER_MAC, dst_mac)
            .ipv4(self.server.octets(), dst_ip.octets(), 64)
            .udp(67, 68);
        let mut out = Vec::with_capacity(b.size(body.len()));
        b.write(&mut out, &body).ok()?;
        Some(out)
    }
}

/// A DHCP request as a client sends it: for the tests of this module and of the switch.
#[cfg(test)]
pub(crate) fn client_frame(mac: Mac, kind: MessageType, extra: &[DhcpOption]) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_flags(dhcproto::v4::Flags::default());
    let mut o = DhcpOptions::new();
    o.insert(DhcpOption::MessageType(kind));
    for e in extra {
        o.insert(e.clone());
    }
    m.set_opts(o);
    let mut body = Vec::new();
    m.encode(&mut Encoder::new(&mut body)).unwrap();
    let b = PacketBuilder::ethernet2(mac, [0xff; 6])
        .ipv4([0, 0, 0, 0], [255, 255, 255, 255], 64)
        .udp(68, 67);
    let mut out = Vec::new();
    b.write(&mut out, &body).unwrap();
    out
}

/// The DHCP message inside a reply frame (tests).
#[cfg(test)]
pub(crate) fn parse_reply(frame: &[u8]) -> Message {
    let p = SlicedPacket::from_ethernet(frame).expect("ethernet");
    let Some(TransportSlice::Udp(u)) = p.transport else {
        panic!("not UDP: {frame:02x?}")
    };
    assert_eq!((u.source_port(), u.destination_port()), (67, 68));
    Message::decode(&mut Decoder::new(u.payload())).expect("DHCP")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];

    fn server() -> DhcpServer {
        DhcpConfig {
            cidr: "192.168.50.0/24".into(),
            range: Some([
                "192.168.50.10".parse().unwrap(),
                "192.168.50.11".parse().unwrap(),
            ]),
            server: None,
            lease_secs: None,
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn discover_request_ack_with_mask_and_no_router_or_dns() {
        let mut s = server();
        let offer = parse_reply(
            &s.handle(&client_frame(A, MessageType::Discover, &[]))
                .unwrap(),
        );
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(192, 168, 50, 10));
        assert_eq!(offer.xid(), 0x1234_5678);
        assert_eq!(offer.chaddr(), &A);
        for absent in [OptionCode::Router, OptionCode::DomainNameServer] {
            assert!(
                offer.opts().get(absent).is_none(),
                "{absent:?} in {offer:?}"
            );
        }
        assert_eq!(
            offer.opts().get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            offer.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(
                192, 168, 50, 1
            )))
        );
        let req = client_frame(
            A,
            MessageType::Request,
            &[
                DhcpOption::RequestedIpAddress(offer.yiaddr()),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 50, 1)),
            ],
        );
        let ack = parse_reply(&s.handle(&req).unwrap());
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        // another client gets another address; the same client always the same one
        let b = parse_reply(
            &s.handle(&client_frame(B, MessageType::Discover, &[]))
                .unwrap(),
        );
        assert_eq!(b.yiaddr(), Ipv4Addr::new(192, 168, 50, 11));
        let again = parse_reply(
            &s.handle(&client_frame(A, MessageType::Discover, &[]))
                .unwrap(),
        );
        assert_eq!(again.yiaddr(), offer.yiaddr(), "stable per MAC");
        // a third client finds the range full: no offer
        assert!(s
            .handle(&client_frame(
                [2, 0, 0, 0, 0, 0xc],
                MessageType::Discover,
                &[]
            ))
            .is_none());
        assert_eq!(s.leases().len(), 2);
        assert_eq!(s.leases()[0].mac, "52:54:00:00:00:0a");
    }

    #[test]
    fn request_for_a_foreign_address_is_naked_and_another_servers_is_ignored() {
        let mut s = server();
        let foreign = client_frame(
            A,
            MessageType::Request,
            &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 15))],
        );
        let nak = parse_reply(&s.handle(&foreign).unwrap());
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(nak.yiaddr().is_unspecified());
        let other = client_frame(
            A,
            MessageType::Request,
            &[
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 50, 10)),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 50, 99)),
            ],
        );
        assert!(s.handle(&other).is_none());
        assert!(s.leases().is_empty());
        // INIT-REBOOT: a free address of the range is granted
        let reboot = client_frame(
            A,
            MessageType::Request,
            &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 50, 11,
            ))],
        );
        let ack = parse_reply(&s.handle(&reboot).unwrap());
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), Ipv4Addr::new(192, 168, 50, 11));
    }

    #[test]
    fn a_renewing_client_gets_a_unicast_ack() {
        let mut s = server();
        let offer = parse_reply(
            &s.handle(&client_frame(A, MessageType::Discover, &[]))
                .unwrap(),
        );
        // RENEWING: ciaddr set, no requested-address option, sent unicast to the server
        let mut m = Message::new_with_id(
            7,
            offer.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &A,
        );
        let mut o = DhcpOptions::new();
        o.insert(DhcpOption::MessageType(MessageType::Request));
        m.set_opts(o);
        let mut body = Vec::new();
        m.encode(&mut Encoder::new(&mut body)).unwrap();
        let b = PacketBuilder::ethernet2(A, SERVER_MAC)
            .ipv4(offer.yiaddr().octets(), s.server.octets(), 64)
            .udp(68, 67);
        let mut f = Vec::new();
        b.write(&mut f, &body).unwrap();
        let r = s.handle(&f).expect("an ACK");
        assert_eq!(&r[0..6], &A, "unicast to the client's MAC");
        let ack = parse_reply(&r);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        // the IPv4 destination is the client's address
        assert_eq!(&r[30..34], &offer.yiaddr().octets());
    }

    #[test]
    fn arp_for_the_server_address_is_answered() {
        let s = server();
        let req = ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: A,
            sender_ipv4: [192, 168, 50, 10],
            target_mac: [0; 6],
            target_ipv4: [192, 168, 50, 1],
        };
        let mut f = Ethernet2Header {
            source: A,
            destination: [0xff; 6],
            ether_type: EtherType::ARP,
        }
        .to_bytes()
        .to_vec();
        f.extend_from_slice(&req.to_bytes());
        let mut s2 = s.clone();
        let r = s2.handle(&f).expect("ARP reply");
        assert_eq!(&r[0..6], &A);
        assert_eq!(&r[6..12], &SERVER_MAC);
        let mut other = req;
        other.target_ipv4 = [192, 168, 50, 77];
        let mut f2 = f[..14].to_vec();
        f2.extend_from_slice(&other.to_bytes());
        assert!(s2.handle(&f2).is_none(), "only its own address");
    }

    #[test]
    fn bad_configurations_are_named() {
        let c = |cidr: &str, range: Option<[&str; 2]>| DhcpConfig {
            cidr: cidr.into(),
            range: range.map(|[a, b]| [a.parse().unwrap(), b.parse().unwrap()]),
            server: None,
            lease_secs: None,
        };
        let e = c("192.168.50.0", None).validate().unwrap_err();
        assert!(e.contains("192.168.50.0"), "{e}");
        let e = c("192.168.50.0/24", Some(["192.168.51.1", "192.168.51.9"]))
            .validate()
            .unwrap_err();
        assert!(e.contains("range"), "{e}");
        let e = c("192.168.50.0/24", Some(["192.168.50.1", "192.168.50.254"]))
            .validate()
            .unwrap_err();
        assert!(e.contains("server"), "{e}");
        let s = c("192.168.50.0/24", Some(["192.168.50.1", "192.168.50.100"]))
            .validate()
            .unwrap();
        assert_eq!(s.server, Ipv4Addr::new(192, 168, 50, 254));
        let s = c("10.9.0.0/16", None).validate().unwrap();
        assert_eq!(s.server, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(Ipv4Addr::from(s.first), Ipv4Addr::new(10, 9, 0, 2));
    }
}
