//! `node_ip`: kubelet's `--node-ip` from the NIC on the VLAN (docs/agent.md, step 10a).
//!
//! The address is the IPv4 of the guest interface whose MAC the context gives for the first VLAN
//! NIC. A VLAN address comes from DHCP on the VLAN (or the operator's configuration), often a few
//! seconds after the NAT NIC made the network "online": the step waits for it, bounded by
//! `--vlan-address-timeout`, listing the interfaces again every [`POLL_INTERVAL`].

use std::fs;
use std::time::{Duration, Instant};

use cloudsigma_api::ServerContext;

use super::scripts::Cmd;
use super::write_files::{Encoding, WriteFile};
use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};
use crate::net::{self, Iface, Lookup};

/// How often the interfaces are listed again while waiting: getifaddrs(3) costs microseconds,
/// and 200 ms is small against a DHCP exchange.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The default of `--vlan-address-timeout`, in seconds (docs/agent.md explains the choice).
pub const DEFAULT_TIMEOUT_SECS: &str = "30";

/// Time for the wait: the real one, or a virtual one in tests.
pub trait Clock {
    /// Time since the wait began.
    fn elapsed(&self) -> Duration;
    fn sleep(&mut self, d: Duration);
}

/// The wall clock, from the moment it is made.
pub struct RealClock(Instant);

impl RealClock {
    pub fn start() -> RealClock {
        RealClock(Instant::now())
    }
}

impl Clock for RealClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// The interfaces as the guest shows them now (getifaddrs, or a fixture in tests).
pub type InterfaceSource<'a> = dyn FnMut() -> std::result::Result<Vec<Iface>, String> + 'a;

/// What the step found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The address written as `--node-ip`.
    pub ip: Option<String>,
    /// The last listing of the interfaces (for the status file), when one was taken.
    pub interfaces: Option<Vec<Iface>>,
}

/// Write the node IP for kubelet when the context has a VLAN NIC, waiting up to `timeout` for its
/// address. No VLAN NIC: nothing (the cloud controller's addresses from the API apply). No address
/// in time: a warning (log and status) and no `--node-ip` — never another NIC's address.
pub fn apply(
    cx: &mut Cx,
    ctx: &ServerContext,
    timeout: Duration,
    source: &mut InterfaceSource,
    clock: &mut dyn Clock,
) -> Result<Outcome> {
    let nics = net::vlan_nics(ctx);
    let Some(nic) = nics.first() else {
        cx.info(
            "no VLAN NIC in the context: no --node-ip, the cloud controller sets the addresses",
        );
        return Ok(Outcome::default());
    };
    if nics.len() > 1 {
        cx.info(&format!(
            "{} VLAN NICs in the context: the first in context order (MAC {}, VLAN {}) gives --node-ip",
            nics.len(),
            nic.mac,
            nic.vlan
        ));
    }
    let mut out = Outcome::default();
    let mut last_error: Option<String>;
    let mut waiting = false;
    let found = loop {
        let state = match source() {
            Ok(ifs) => {
                let l = net::lookup(&ifs, &nic.mac);
                out.interfaces = Some(ifs);
                last_error = None;
                l
            }
            Err(e) => {
                last_error = Some(e);
                Lookup::NoInterface
            }
        };
        if let Lookup::Address(name, ip) = state {
            break Some((name, ip));
        }
        let elapsed = clock.elapsed();
        if elapsed >= timeout {
            break None;
        }
        if !waiting {
            waiting = true;
            cx.info(&format!(
                "waiting up to {} for an IPv4 address on the VLAN NIC (MAC {}, VLAN {})",
                secs(timeout),
                nic.mac,
                nic.vlan
            ));
        }
        clock.sleep(POLL_INTERVAL.min(timeout - elapsed));
    };
    let Some((name, ip)) = found else {
        let seen = match (
            &last_error,
            out.interfaces.as_deref().map(|i| net::lookup(i, &nic.mac)),
        ) {
            (Some(e), _) => format!("the interfaces could not be listed ({e})"),
            (None, Some(Lookup::NoAddress(name))) => {
                format!("its interface {name} has no IPv4 address")
            }
            _ => "no interface in the guest has its MAC".to_string(),
        };
        cx.warn(format!(
            "no --node-ip: the VLAN NIC (MAC {}, VLAN {}) got no IPv4 address within {}: {seen}. kubelet joins without --node-ip and the Node may get no InternalIP; run DHCP on the VLAN (e.g. a CloudSigma Virtual Router LAN) or configure the address (or node-ip) in the bootstrap data, or raise --vlan-address-timeout (env CLOUDSIGMA_AGENT_VLAN_ADDRESS_TIMEOUT)",
            nic.mac,
            nic.vlan,
            secs(timeout)
        ));
        return Ok(out);
    };
    let path = cx.path("/etc/default/kubelet");
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(IoOp::Access, path, e)),
    };
    let new = set_node_ip(&old, &ip);
    atomic_write(
        &path,
        new.as_bytes(),
        0o644,
        Owner::default(),
        WriteMode::Replace,
    )
    .at(IoOp::Access, &path)?;
    cx.info(&format!(
        "kubelet --node-ip={ip} in /etc/default/kubelet (interface {name}, MAC {}, VLAN {}; after {} ms)",
        nic.mac,
        nic.vlan,
        clock.elapsed().as_millis()
    ));
    out.ip = Some(ip);
    Ok(out)
}

/// `30 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Whether the data configures kubelet's node-ip itself (then ours would override it: skip).
pub fn mentioned<'a>(files: &[WriteFile], mut cmds: impl Iterator<Item = &'a Cmd>) -> bool {
    let in_files = files.iter().any(|f| {
        f.encoding == Encoding::Plain && String::from_utf8_lossy(&f.content).contains("node-ip")
    });
    let in_cmds = cmds.any(|c| match c {
        Cmd::Line(l) => l.contains("node-ip"),
        Cmd::Words(w) => w.iter().any(|x| x.contains("node-ip")),
    });
    in_files || in_cmds
}

/// Set `--node-ip=IP` in KUBELET_EXTRA_ARGS, keeping the other arguments and lines.
pub fn set_node_ip(old: &str, ip: &str) -> String {
    let mut found = false;
    let mut lines: Vec<String> = old
        .lines()
        .map(|l| {
            if let Some(v) = l.strip_prefix("KUBELET_EXTRA_ARGS=") {
                found = true;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                let mut args: Vec<&str> = v
                    .split_whitespace()
                    .filter(|a| !a.starts_with("--node-ip"))
                    .collect();
                let flag = format!("--node-ip={ip}");
                args.push(&flag);
                format!("KUBELET_EXTRA_ARGS={}", args.join(" "))
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(format!("KUBELET_EXTRA_ARGS=--node-ip={ip}"));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Logger;
    use std::cell::Cell;
    use std::rc::Rc;

    const NAT: &str = "52:54:00:12:34:56";
    const VLAN_A: &str = "5bc05e7e-6555-4f40-add8-3b8e91447702";
    const VLAN_B: &str = "0c5a4a3e-1111-4f40-add8-3b8e91447703";

    /// A virtual clock: `sleep` advances it, the interface source reads it.
    struct Virtual(Rc<Cell<Duration>>);

    impl Clock for Virtual {
        fn elapsed(&self) -> Duration {
            self.0.get()
        }
        fn sleep(&mut self, d: Duration) {
            self.0.set(self.0.get() + d)
        }
    }

    /// A context with the NAT NIC first, then VLAN NICs (mac, vlan) in this order.
    fn context(vlans: &[(&str, &str)]) -> ServerContext {
        let mut nics = vec![serde_json::json!({
            "mac": NAT, "vlan": null,
            "ip_v4_conf": {"conf": "dhcp", "ip": {"uuid": "127.77.0.3", "netmask": 24, "gateway": null, "nameservers": [], "tags": [], "meta": {}}}
        })];
        for (mac, vlan) in vlans {
            nics.push(serde_json::json!({
                "mac": mac, "ip_v4_conf": null,
                "vlan": {"uuid": vlan, "resource_uri": format!("/api/2.0/vlans/{vlan}/")}
            }));
        }
        serde_json::from_value(serde_json::json!({"uuid": "u", "name": "n", "nics": nics})).unwrap()
    }

    fn iface(name: &str, mac: &str, ipv4: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            mac: Some(mac.into()),
            ipv4: ipv4.iter().map(|s| s.to_string()).collect(),
        }
    }

    struct Run {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
        log: String,
        warnings: Vec<String>,
        out: Outcome,
        /// Virtual time when the step returned.
        took: Duration,
        /// How often the source was asked.
        polls: u32,
    }

    impl Run {
        fn kubelet(&self) -> Option<String> {
            fs::read_to_string(self.root.join("etc/default/kubelet")).ok()
        }
    }

    /// Run the step under a test root with a virtual clock; `ifs(t)` is what the guest shows at
    /// virtual time t.
    fn run(ctx: &ServerContext, timeout: Duration, ifs: impl Fn(Duration) -> Vec<Iface>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc/default")).unwrap();
        let log_path = dir.path().join("agent.log");
        let mut log = Logger::open(&log_path, true);
        let mut warnings = Vec::new();
        let now = Rc::new(Cell::new(Duration::ZERO));
        let mut clock = Virtual(now.clone());
        let polls = Cell::new(0);
        let mut source = || {
            polls.set(polls.get() + 1);
            Ok(ifs(now.get()))
        };
        let mut cx = Cx {
            root: &root,
            real_root: false,
            execute: false,
            log: &mut log,
            warnings: &mut warnings,
        };
        let out = apply(&mut cx, ctx, timeout, &mut source, &mut clock).unwrap();
        drop(log);
        Run {
            log: fs::read_to_string(&log_path).unwrap(),
            _dir: dir,
            root,
            warnings,
            out,
            took: now.get(),
            polls: polls.get(),
        }
    }

    /// The NAT NIC always has 10.0.2.15; the VLAN NIC `mac` gets `ip` from `at` on.
    fn appears(
        mac: &'static str,
        ip: &'static str,
        at: Duration,
    ) -> impl Fn(Duration) -> Vec<Iface> {
        move |t| {
            let vlan: &[&str] = if t >= at { &[ip] } else { &[] };
            vec![
                iface("lo", "00:00:00:00:00:00", &["127.0.0.1/8"]),
                iface("ens3", NAT, &["10.0.2.15/24"]),
                iface("ens4", mac, vlan),
            ]
        }
    }

    const T30: Duration = Duration::from_secs(30);

    #[test]
    fn a_vlan_address_that_comes_late_is_waited_for() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let r = run(
            &ctx,
            T30,
            appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::from_secs(5)),
        );
        assert_eq!(r.out.ip.as_deref(), Some("10.10.0.5"));
        assert_eq!(
            r.kubelet().as_deref(),
            Some("KUBELET_EXTRA_ARGS=--node-ip=10.10.0.5\n")
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // Found at the first poll after 5 s, not at the timeout.
        assert!(
            r.took >= Duration::from_secs(5) && r.took < Duration::from_millis(5300),
            "{:?}",
            r.took
        );
        assert!(r.log.contains("waiting up to 30 s for an IPv4 address on the VLAN NIC (MAC 22:aa:bb:cc:dd:02, VLAN 5bc05e7e-6555-4f40-add8-3b8e91447702)"), "{}", r.log);
        assert!(
            r.log
                .contains("kubelet --node-ip=10.10.0.5 in /etc/default/kubelet (interface ens4"),
            "{}",
            r.log
        );
        let ifs = r.out.interfaces.unwrap();
        assert_eq!(
            ifs[2].ipv4,
            ["10.10.0.5/24"],
            "the status gets the fresh listing"
        );
    }

    #[test]
    fn no_vlan_address_in_time_warns_and_writes_no_address() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let r = run(
            &ctx,
            Duration::from_secs(12),
            appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX),
        );
        assert_eq!(r.out.ip, None);
        assert_eq!(
            r.kubelet(),
            None,
            "no --node-ip, and never the NAT NIC's 10.0.2.15"
        );
        assert_eq!(r.took, Duration::from_secs(12), "bounded by the timeout");
        assert_eq!(r.polls, 61, "every 200 ms, and once more at the deadline");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let w = &r.warnings[0];
        for part in [
            "MAC 22:aa:bb:cc:dd:02",
            VLAN_A,
            "within 12 s",
            "its interface ens4 has no IPv4 address",
            "run DHCP on the VLAN",
            "--vlan-address-timeout",
        ] {
            assert!(w.contains(part), "{part:?} in {w}");
        }
        assert!(r.log.contains(&format!("WARN  {w}")), "{}", r.log);
        assert!(!r.log.contains("10.0.2.15"), "{}", r.log);

        // The interface itself missing (or an IPv4LL address only) is no address either.
        let r = run(&ctx, Duration::from_secs(1), |_| {
            vec![
                iface("ens3", NAT, &["10.0.2.15/24"]),
                iface("ens5", "22:aa:bb:cc:dd:09", &["10.10.0.9/24"]),
            ]
        });
        assert_eq!(r.kubelet(), None);
        assert!(
            r.warnings[0].contains("no interface in the guest has its MAC"),
            "{:?}",
            r.warnings
        );
        let r = run(&ctx, Duration::from_secs(1), |_| {
            vec![iface("ens4", "22:aa:bb:cc:dd:02", &["169.254.7.7/16"])]
        });
        assert_eq!(r.kubelet(), None, "IPv4LL is no node IP");
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn the_mac_matches_whatever_its_case() {
        for (in_context, in_guest) in [
            ("22:AA:BB:CC:DD:02", "22:aa:bb:cc:dd:02"),
            ("22:aa:bb:cc:dd:02", "22:AA:BB:CC:DD:02"),
        ] {
            let ctx = context(&[(in_context, VLAN_A)]);
            let guest: &'static str = Box::leak(in_guest.to_string().into_boxed_str());
            let r = run(
                &ctx,
                T30,
                appears(guest, "10.10.0.7/24", Duration::from_secs(2)),
            );
            assert_eq!(
                r.out.ip.as_deref(),
                Some("10.10.0.7"),
                "{in_context} vs {in_guest}"
            );
            assert!(r.kubelet().unwrap().contains("--node-ip=10.10.0.7"));
        }
    }

    #[test]
    fn of_two_vlan_nics_the_first_in_context_order_wins() {
        // The second VLAN NIC is ready long before the first: still the first's address.
        let ctx = context(&[("22:aa:bb:cc:dd:0b", VLAN_B), ("22:aa:bb:cc:dd:0a", VLAN_A)]);
        let ifs = |t: Duration| {
            let first: &[&str] = if t >= Duration::from_secs(3) {
                &["10.20.0.4/24"]
            } else {
                &[]
            };
            vec![
                iface("ens3", NAT, &["10.0.2.15/24"]),
                iface("ens4", "22:aa:bb:cc:dd:0a", &["10.10.0.4/24"]),
                iface("ens5", "22:aa:bb:cc:dd:0b", first),
            ]
        };
        let r = run(&ctx, T30, ifs);
        assert_eq!(r.out.ip.as_deref(), Some("10.20.0.4"));
        assert!(r.log.contains("2 VLAN NICs in the context: the first in context order (MAC 22:aa:bb:cc:dd:0b, VLAN 0c5a4a3e-1111-4f40-add8-3b8e91447703) gives --node-ip"), "{}", r.log);
    }

    #[test]
    fn without_a_vlan_nic_nothing_waits() {
        let r = run(&context(&[]), T30, |_| panic!("no listing needed"));
        assert_eq!(r.out.ip, None);
        assert_eq!(r.kubelet(), None);
        assert_eq!(r.took, Duration::ZERO);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn node_ip_merges() {
        assert_eq!(
            set_node_ip("", "10.0.0.5"),
            "KUBELET_EXTRA_ARGS=--node-ip=10.0.0.5\n"
        );
        assert_eq!(
            set_node_ip(
                "# x\nKUBELET_EXTRA_ARGS=\"--v=2 --node-ip=1.2.3.4\"\n",
                "10.0.0.5"
            ),
            "# x\nKUBELET_EXTRA_ARGS=--v=2 --node-ip=10.0.0.5\n"
        );
    }
}
