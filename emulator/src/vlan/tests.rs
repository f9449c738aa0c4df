//! The switch without VMs: each port's QEMU end is driven by the test, speaking QEMU's framing.

use super::*;
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use std::time::Duration;
use tokio::net::UnixStream;

const VA: &str = "5e0a1a7e-3b7d-4c1e-8f00-0000000c0001";
const VB: &str = "5e0a1a7e-3b7d-4c1e-8f00-0000000c0002";

/// The test's side of a port: what QEMU would hold.
struct FakeNic {
    s: UnixStream,
    mac: Mac,
}

async fn nic(sw: &Switch, vlan: &str, last: u8, owner: &str) -> FakeNic {
    let mac = [0x52, 0x54, 0, 0, 0, last];
    let fd = sw.attach(vlan, mac, owner).await.unwrap();
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).unwrap();
    FakeNic {
        s: UnixStream::from_std(std).unwrap(),
        mac,
    }
}

fn eth(src: Mac, dst: Mac, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.extend_from_slice(payload);
    f
}

impl FakeNic {
    async fn send(&mut self, frame: &[u8]) {
        self.s
            .write_all(&(frame.len() as u32).to_be_bytes())
            .await
            .unwrap();
        self.s.write_all(frame).await.unwrap();
    }
    async fn send_to(&mut self, dst: Mac, payload: &[u8]) {
        let f = eth(self.mac, dst, payload);
        self.send(&f).await;
    }
    /// The next frame within `wait`, if any.
    async fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let s = &mut self.s;
        tokio::time::timeout(wait, async {
            let len = s.read_u32().await.ok()? as usize;
            let mut f = vec![0u8; len];
            s.read_exact(&mut f).await.ok()?;
            Some(f)
        })
        .await
        .ok()
        .flatten()
    }
    async fn recv(&mut self) -> Vec<u8> {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("a frame within 5 s")
    }
    async fn nothing(&mut self) {
        if let Some(f) = self.recv_within(Duration::from_millis(300)).await {
            panic!("unexpected frame {f:02x?}");
        }
    }
}

#[tokio::test]
async fn unicast_reaches_its_port_and_no_other_vlan() {
    let sw = Switch::new();
    let mut a = nic(&sw, VA, 1, "s1").await;
    let mut b = nic(&sw, VA, 2, "s2").await;
    let mut c = nic(&sw, VA, 3, "s3").await;
    let mut other = nic(&sw, VB, 4, "s4").await;
    a.send_to(b.mac, b"hello b").await;
    let f = b.recv().await;
    assert_eq!(&f[14..], b"hello b");
    assert_eq!(&f[6..12], &a.mac);
    b.send_to(a.mac, b"hello a").await;
    assert_eq!(&a.recv().await[14..], b"hello a");
    // a known unicast is not flooded; the other VLAN sees nothing, even of a broadcast
    c.nothing().await;
    a.send_to([0xff; 6], b"all").await;
    assert_eq!(&b.recv().await[14..], b"all");
    assert_eq!(&c.recv().await[14..], b"all");
    other.nothing().await;
    a.nothing().await; // not echoed to its sender
                       // the other VLAN's port cannot reach VLAN A's MACs
    other.send_to(a.mac, b"cross").await;
    a.nothing().await;
    other.send_to([0xff; 6], b"cross-bcast").await;
    a.nothing().await;
    b.nothing().await;
}

#[tokio::test]
async fn a_spoofed_source_mac_is_dropped() {
    let sw = Switch::new();
    let mut a = nic(&sw, VA, 1, "s1").await;
    let mut b = nic(&sw, VA, 2, "s2").await;
    let spoofed = eth([0x52, 0x54, 0, 0, 0, 0x99], b.mac, b"spoof");
    a.send(&spoofed).await;
    let spoofed_bcast = eth(b.mac, [0xff; 6], b"pretending to be b");
    a.send(&spoofed_bcast).await;
    b.nothing().await;
    // the port still works with its own MAC
    a.send_to(b.mac, b"real").await;
    assert_eq!(&b.recv().await[14..], b"real");
}

#[tokio::test]
async fn ports_go_when_qemu_closes_or_the_server_stops_and_macs_are_unique() {
    let sw = Switch::new();
    let a = nic(&sw, VA, 1, "s1").await;
    let _b = nic(&sw, VA, 2, "s2").await;
    let e = sw
        .attach(VA, [0x52, 0x54, 0, 0, 0, 2], "s9")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AttachError::MacInUse { vlan, mac, owner }
            if vlan == VA && *mac == [0x52, 0x54, 0, 0, 0, 2] && owner == "s2"),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("52:54:00:00:00:02") && e.contains(VA) && e.contains("s2"),
        "{e}"
    );
    // the same MAC on another VLAN is another segment
    let _x = nic(&sw, VB, 2, "s9").await;
    drop(a); // QEMU exited
    for _ in 0..50 {
        if sw.ports(VA).await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sw.ports(VA).await, vec![[0x52, 0x54, 0, 0, 0, 2]]);
    sw.detach_owner("s2").await;
    assert!(sw.ports(VA).await.is_empty());
    assert_eq!(sw.ports(VB).await.len(), 1);
    // a freed MAC can come back (a restarted VM)
    let _a2 = nic(&sw, VA, 1, "s1").await;
}

#[tokio::test]
async fn an_oversized_frame_drops_the_port() {
    let sw = Switch::new();
    let mut a = nic(&sw, VA, 1, "s1").await;
    a.s.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    for _ in 0..50 {
        if sw.ports(VA).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("port still attached: {:?}", sw.ports(VA).await);
}

#[tokio::test]
async fn dhcp_on_one_vlan_offers_without_a_router_and_is_not_heard_elsewhere() {
    let sw = Switch::new();
    let mut a = nic(&sw, VA, 1, "s1").await;
    let mut b = nic(&sw, VA, 2, "s2").await;
    let mut other = nic(&sw, VB, 3, "s3").await;
    let cfg = DhcpConfig {
        cidr: "192.168.50.0/24".into(),
        range: Some([
            "192.168.50.10".parse().unwrap(),
            "192.168.50.20".parse().unwrap(),
        ]),
        server: None,
        lease_secs: Some(600),
    };
    sw.set_dhcp(VA, Some(cfg.validate().unwrap())).await;
    a.send(&dhcp::client_frame(a.mac, MessageType::Discover, &[]))
        .await;
    let offer = dhcp::parse_reply(&a.recv().await);
    a.nothing().await; // its own DISCOVER is not echoed
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        offer.yiaddr(),
        "192.168.50.10".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert!(offer.opts().get(OptionCode::Router).is_none(), "{offer:?}");
    assert!(offer.opts().get(OptionCode::DomainNameServer).is_none());
    assert_eq!(
        offer.opts().get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    // b is on the same L2 segment: it sees the broadcast OFFER and the DISCOVER
    let mut seen: Vec<Mac> = Vec::new();
    for _ in 0..2 {
        seen.push(b.recv().await[6..12].try_into().unwrap());
    }
    seen.sort();
    assert_eq!(seen, vec![dhcp::SERVER_MAC, a.mac]);
    // the other VLAN has no DHCP and hears nothing
    other
        .send(&dhcp::client_frame(other.mac, MessageType::Discover, &[]))
        .await;
    other.nothing().await;
    assert!(sw.leases(VB).await.is_empty());
    assert_eq!(sw.leases(VA).await.len(), 1);
    // DHCP off: no more offers, a lease list of none
    sw.set_dhcp(VA, None).await;
    assert!(sw.leases(VA).await.is_empty());
}

#[tokio::test]
async fn unknown_unicast_floods_the_vlan_and_the_port_count_is_capped() {
    let sw = Switch::with_max_ports(3);
    let mut a = nic(&sw, VA, 1, "s1").await;
    let mut b = nic(&sw, VA, 2, "s2").await;
    let mut c = nic(&sw, VA, 3, "s3").await;
    let mut other = nic(&sw, VB, 4, "s4").await;
    // a MAC no port has: every other port of the VLAN gets it, no other VLAN
    a.send_to([0x52, 0x54, 0, 0, 0, 0x77], b"who?").await;
    assert_eq!(&b.recv().await[14..], b"who?");
    assert_eq!(&c.recv().await[14..], b"who?");
    other.nothing().await;
    a.nothing().await;
    // the fourth port of VLAN A is refused by name; VLAN B has room of its own
    let e = sw
        .attach(VA, [0x52, 0x54, 0, 0, 0, 9], "s9")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AttachError::Full { vlan, max_ports: 3 } if vlan == VA),
        "{e:?}"
    );
    assert!(e.to_string().contains("3 ports"), "{e}");
    let _b2 = nic(&sw, VB, 5, "s5").await;
}
