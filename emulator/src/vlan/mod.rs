//! VLANs as networks: one shared L2 segment per VLAN uuid, without root and without multicast.
//!
//! Each VLAN is a MAC-learning switch: one tokio task owning the VLAN's ports, MAC table and
//! optional DHCP server ([`dhcp`]). A port is one VLAN NIC of a running VM, wired to QEMU as
//! `-netdev socket,id=nN,fd=FD` over a `socketpair(AF_UNIX, SOCK_STREAM)`: QEMU gets one end,
//! the switch keeps the other. On that stream every frame is a 4-byte big-endian length and the
//! Ethernet frame (QEMU `net/socket.c` `net_socket_receive`, `net_fill_rstate` in `net/net.c`;
//! checked by experiment with QEMU 7.2, see ../shared/reference/multi-node.md).
//!
//! Rules:
//! - Frames reach only ports of the same VLAN: a unicast frame to a known MAC goes to that port,
//!   broadcast, multicast and unknown unicast are flooded to every other port of the VLAN.
//! - [V cloudsigma-docs `network_interfaces.rst`] the real cloud drops frames whose source MAC is
//!   not the NIC's; so does the switch (a port's MAC is the NIC's, given at attach). The MAC table
//!   is therefore exactly the ports' MACs, capped at [`MAX_PORTS`] per VLAN.
//! - A port goes when QEMU closes its end (the VM stopped or died) or its server's ports are
//!   detached ([`Switch::detach_owner`]).
//! - A frame longer than [`MAX_FRAME`] makes QEMU drop the connection; the switch does the same
//!   with a port announcing one.
//! - A port whose queue is full (a guest not reading) loses frames, as on a congested switch;
//!   the VLAN never waits for one slow VM.

pub mod dhcp;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub use dhcp::{DhcpConfig, DhcpServer, Lease};

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The largest frame QEMU's socket netdev sends or accepts (`NET_BUFSIZE` 4096 + 65536).
pub const MAX_FRAME: usize = 4096 + 65536;
/// Ports (and so MAC table entries) per VLAN.
pub const MAX_PORTS: usize = 1024;
/// Frames queued towards one port before it loses frames.
const PORT_QUEUE: usize = 512;

/// `aa:bb:cc:dd:ee:ff`
pub fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC as the API stores it (validated by [`crate::mac::parse_mac`]).
pub fn mac_bytes(s: &str) -> Result<Mac, String> {
    let s = crate::mac::parse_mac(s).map_err(|e| e.to_string())?;
    let mut m = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).map_err(|e| format!("{s}: {e}"))?;
    }
    Ok(m)
}

/// Why a port was not added ([`Switch::attach`]); the tests and the backend tell the causes
/// apart.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("MAC {mac} is already on VLAN {vlan} (server {owner}); a MAC may appear once per VLAN", mac = fmt_mac(.mac))]
    MacInUse {
        vlan: String,
        mac: Mac,
        /// The server whose port has the MAC.
        owner: String,
    },
    #[error("VLAN {vlan} has {max_ports} ports already (the emulator's cap)")]
    Full { vlan: String, max_ports: usize },
    #[error("VLAN {vlan}: socket pair: {source}")]
    Socket {
        vlan: String,
        source: std::io::Error,
    },
    #[error("VLAN {vlan}: switch stopped")]
    Stopped { vlan: String },
}

enum Cmd {
    Attach {
        id: u64,
        mac: Mac,
        owner: String,
        tx: mpsc::Sender<Vec<u8>>,
        done: oneshot::Sender<Result<(), AttachError>>,
    },
    Detach {
        id: u64,
    },
    DetachOwner {
        owner: String,
        done: oneshot::Sender<()>,
    },
    Frame {
        id: u64,
        frame: Vec<u8>,
    },
    SetDhcp {
        dhcp: Option<DhcpServer>,
        done: oneshot::Sender<()>,
    },
    Leases {
        done: oneshot::Sender<Vec<Lease>>,
    },
    Ports {
        done: oneshot::Sender<Vec<Mac>>,
    },
}

/// Every VLAN segment of one emulator (the QEMU backend owns it).
pub struct Switch {
    vlans: Mutex<HashMap<String, mpsc::Sender<Cmd>>>,
    next_id: AtomicU64,
    max_ports: usize,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::with_max_ports(MAX_PORTS)
    }
}

impl Switch {
    pub fn new() -> Switch {
        Switch::default()
    }

    /// A switch whose VLANs take at most `max_ports` ports (MAC table entries) each.
    pub fn with_max_ports(max_ports: usize) -> Switch {
        Switch {
            vlans: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            max_ports,
        }
    }

    /// The command channel of `vlan`'s task, started on first use (needs a tokio runtime).
    fn segment(&self, vlan: &str) -> mpsc::Sender<Cmd> {
        let mut g = self.vlans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = g.get(vlan).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(1024);
        let seg = Segment {
            vlan: vlan.to_string(),
            max_ports: self.max_ports,
            ports: HashMap::new(),
            table: HashMap::new(),
            dhcp: None,
            spoofed: 0,
        };
        tokio::spawn(seg.run(rx));
        g.insert(vlan.to_string(), tx.clone());
        tx
    }

    /// Adds a port with the NIC's `mac` to `vlan` for server `owner`. Returns QEMU's end of the
    /// socket pair (close-on-exec still set: the spawner clears it in the child only).
    pub async fn attach(&self, vlan: &str, mac: Mac, owner: &str) -> Result<OwnedFd, AttachError> {
        let socket = |source| AttachError::Socket {
            vlan: vlan.to_string(),
            source,
        };
        let stopped = || AttachError::Stopped {
            vlan: vlan.to_string(),
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(socket)?;
        ours.set_nonblocking(true).map_err(socket)?;
        let ours = tokio::net::UnixStream::from_std(ours).map_err(socket)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PORT_QUEUE);
        let seg = self.segment(vlan);
        let (done_tx, done_rx) = oneshot::channel();
        seg.send(Cmd::Attach {
            id,
            mac,
            owner: owner.to_string(),
            tx,
            done: done_tx,
        })
        .await
        .map_err(|_| stopped())?;
        done_rx.await.map_err(|_| stopped())??;
        let (r, w) = ours.into_split();
        tokio::spawn(write_port(w, rx));
        tokio::spawn(read_port(r, id, seg));
        Ok(theirs.into())
    }

    /// Removes every port of server `owner` on every VLAN.
    pub async fn detach_owner(&self, owner: &str) {
        let segs: Vec<_> = self
            .vlans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in segs {
            let (done, wait) = oneshot::channel();
            if s.send(Cmd::DetachOwner {
                owner: owner.to_string(),
                done,
            })
            .await
            .is_ok()
            {
                let _ = wait.await;
            }
        }
    }

    /// Runs `dhcp` on `vlan` (`None`: no DHCP). A new configuration keeps the leases that fit it.
    pub async fn set_dhcp(&self, vlan: &str, dhcp: Option<DhcpServer>) {
        let (done, wait) = oneshot::channel();
        if self
            .segment(vlan)
            .send(Cmd::SetDhcp { dhcp, done })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// The DHCP leases handed out on `vlan`.
    pub async fn leases(&self, vlan: &str) -> Vec<Lease> {
        let (done, wait) = oneshot::channel();
        let Some(seg) = self.existing(vlan) else {
            return Vec::new();
        };
        if seg.send(Cmd::Leases { done }).await.is_err() {
            return Vec::new();
        }
        wait.await.unwrap_or_default()
    }

    /// The MACs of `vlan`'s ports.
    pub async fn ports(&self, vlan: &str) -> Vec<Mac> {
        let (done, wait) = oneshot::channel();
        let Some(seg) = self.existing(vlan) else {
            return Vec::new();
        };
        if seg.send(Cmd::Ports { done }).await.is_err() {
            return Vec::new();
        }
        wait.await.unwrap_or_default()
    }

    fn existing(&self, vlan: &str) -> Option<mpsc::Sender<Cmd>> {
        self.vlans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vlan)
            .cloned()
    }
}

/// Frames from QEMU → the VLAN task, until QEMU closes its end; then the port goes.
async fn read_port(mut r: tokio::net::unix::OwnedReadHalf, id: u64, seg: mpsc::Sender<Cmd>) {
    while let Ok(len) = r.read_u32().await {
        let len = len as usize;
        if len > MAX_FRAME {
            tracing::warn!(
                port = id,
                len,
                "VLAN port sent a frame over {MAX_FRAME} bytes; dropping the port"
            );
            break;
        }
        let mut frame = vec![0u8; len];
        if r.read_exact(&mut frame).await.is_err() {
            break;
        }
        if seg.send(Cmd::Frame { id, frame }).await.is_err() {
            return;
        }
    }
    let _ = seg.send(Cmd::Detach { id }).await;
}

/// Queued frames → QEMU, length-prefixed. Ends when the port is removed (its sender dropped),
/// which closes the stream for QEMU too.
async fn write_port(mut w: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(f) = rx.recv().await {
        let mut b = Vec::with_capacity(4 + f.len());
        b.extend_from_slice(&(f.len() as u32).to_be_bytes());
        b.extend_from_slice(&f);
        if w.write_all(&b).await.is_err() {
            break;
        }
    }
}

struct Port {
    mac: Mac,
    owner: String,
    tx: mpsc::Sender<Vec<u8>>,
}

/// One VLAN: its ports, MAC table and DHCP server.
struct Segment {
    vlan: String,
    max_ports: usize,
    ports: HashMap<u64, Port>,
    /// MAC → port. Source MACs are enforced, so this is exactly the ports' MACs.
    table: HashMap<Mac, u64>,
    dhcp: Option<DhcpServer>,
    /// Frames dropped for a foreign source MAC (logged at the first and every 1000th).
    spoofed: u64,
}

impl Segment {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = rx.recv().await {
            self.apply(cmd);
        }
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach {
                id,
                mac,
                owner,
                tx,
                done,
            } => {
                let r = if let Some(other) = self.table.get(&mac).and_then(|p| self.ports.get(p)) {
                    Err(AttachError::MacInUse {
                        vlan: self.vlan.clone(),
                        mac,
                        owner: other.owner.clone(),
                    })
                } else if self.ports.len() >= self.max_ports {
                    Err(AttachError::Full {
                        vlan: self.vlan.clone(),
                        max_ports: self.max_ports,
                    })
                } else {
                    self.table.insert(mac, id);
                    self.ports.insert(id, Port { mac, owner, tx });
                    tracing::debug!(vlan = %self.vlan, mac = %fmt_mac(&mac), "VLAN port up");
                    Ok(())
                };
                let _ = done.send(r);
            }
            Cmd::Detach { id } => self.remove(id),
            Cmd::DetachOwner { owner, done } => {
                let ids: Vec<u64> = self
                    .ports
                    .iter()
                    .filter(|(_, p)| p.owner == owner)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.remove(id);
                }
                let _ = done.send(());
            }
            Cmd::Frame { id, frame } => self.frame(id, frame),
            Cmd::SetDhcp { dhcp, done } => {
                self.dhcp = match (dhcp, self.dhcp.take()) {
                    (Some(mut new), Some(old)) => {
                        new.keep_leases(&old);
                        Some(new)
                    }
                    (new, _) => new,
                };
                let _ = done.send(());
            }
            Cmd::Leases { done } => {
                let _ = done.send(self.dhcp.as_ref().map(|d| d.leases()).unwrap_or_default());
            }
            Cmd::Ports { done } => {
                let _ = done.send(self.ports.values().map(|p| p.mac).collect());
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(p) = self.ports.remove(&id) {
            if self.table.get(&p.mac) == Some(&id) {
                self.table.remove(&p.mac);
            }
            tracing::debug!(vlan = %self.vlan, mac = %fmt_mac(&p.mac), "VLAN port down");
        }
    }

    fn frame(&mut self, from: u64, frame: Vec<u8>) {
        let Some(port) = self.ports.get(&from) else {
            return; // detached meanwhile
        };
        if frame.len() < 14 {
            return;
        }
        if frame[6..12] != port.mac {
            self.spoofed += 1;
            if self.spoofed % 1000 == 1 {
                tracing::info!(vlan = %self.vlan, port_mac = %fmt_mac(&port.mac),
                    source = %fmt_mac(&frame[6..12].try_into().unwrap_or([0; 6])),
                    dropped = self.spoofed,
                    "VLAN frame with a source MAC that is not the NIC's dropped (as the real cloud does)");
            }
            return;
        }
        let dst: Mac = frame[0..6].try_into().unwrap_or([0; 6]);
        if let Some(d) = self.dhcp.as_mut() {
            if dst == [0xff; 6] || dst == dhcp::SERVER_MAC {
                if let Some(reply) = d.handle(&frame) {
                    self.deliver(None, reply);
                }
            }
        }
        if dst != dhcp::SERVER_MAC {
            self.deliver(Some(from), frame);
        }
    }

    /// Unicast to a known MAC goes to its port; anything else floods every port but `from`.
    fn deliver(&self, from: Option<u64>, frame: Vec<u8>) {
        let dst: Mac = frame[0..6].try_into().unwrap_or([0; 6]);
        if dst[0] & 1 == 0 {
            if let Some(id) = self.table.get(&dst) {
                if Some(*id) != from {
                    if let Some(p) = self.ports.get(id) {
                        let _ = p.tx.try_send(frame);
                    }
                }
                return;
            }
        }
        for (id, p) in &self.ports {
            if Some(*id) != from {
                let _ = p.tx.try_send(frame.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
