//! `node_ip`: kubelet's `--node-ip` from the NIC on the VLAN (docs/agent.md, step 10a).
//!
//! The address is the IPv4 of the guest interface whose MAC the context gives for the first VLAN
//! NIC. A VLAN address comes from DHCP on the VLAN (or the operator's configuration), often a few
//! seconds after the NAT NIC made the network "online", or from the address cloudsigma-controller
//! assigns in the server meta (`k8s-ipv4-<mac>`, [`vlan_assign`]), which the step configures. It
//! waits for either, bounded by `--vlan-address-timeout`, listing the interfaces again every
//! [`POLL_INTERVAL`] and reading the live meta every [`META_POLL_INTERVAL`].

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use cloudsigma_api::pool::{assignment_key, Assignment, POOL_KEY};
use cloudsigma_api::{context, ServerContext};

use super::scripts::Cmd;
use super::vlan_assign::{self, Decision, Runner};
use super::write_files::{Encoding, WriteFile};
use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};
use crate::net::{self, Iface, Lookup};

/// How often the interfaces are listed again while waiting: getifaddrs(3) costs microseconds,
/// and 200 ms is small against a DHCP exchange.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often the server meta is read again while the NIC has no address and no assignment: one
/// request on the serial port (milliseconds), against a controller that writes the assignment
/// within its sync period (tens of seconds).
pub const META_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bound of one meta read on the serial port (retries within it included).
const META_READ_DEADLINE: Duration = Duration::from_secs(2);

/// The default of `--vlan-address-timeout`, in seconds (docs/agent.md explains the choice).
pub const DEFAULT_TIMEOUT_SECS: &str = "60";

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

/// The live value of one server meta key (the serial port's `/meta/<key>`, read again at every
/// call; a `--context-file` read again), `None` when it has none; Err: why it could not be read.
pub type MetaSource<'a> =
    dyn FnMut(&str) -> std::result::Result<Option<serde_json::Value>, String> + 'a;

/// Where the step looks and what it runs: the guest's interfaces, the live server meta, the
/// tools that set an assigned address at once, and the clock.
pub struct Sources<'s, 'a> {
    pub interfaces: &'s mut InterfaceSource<'a>,
    pub meta: &'s mut MetaSource<'a>,
    pub run: &'s mut Runner<'a>,
    pub clock: &'s mut dyn Clock,
}

/// What the step found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The address written as `--node-ip`.
    pub ip: Option<String>,
    /// Where it came from: `"interface"` (DHCP or the operator's configuration) or
    /// `"assignment"` (the server meta, see [`vlan_assign`]).
    pub source: Option<&'static str>,
    /// The last listing of the interfaces (for the status file), when one was taken.
    pub interfaces: Option<Vec<Iface>>,
}

/// What the wait has seen so far (for the decision and for the warning at the timeout).
#[derive(Default)]
struct Watch {
    /// The last listing failed: why.
    list_error: Option<String>,
    /// The last meta read failed: why.
    meta_error: Option<String>,
    /// When the meta is read next (elapsed time).
    next_meta: Duration,
    /// The valid assignment the meta holds.
    assignment: Option<Assignment>,
    /// Unusable values already warned about (once each).
    bad: Vec<String>,
    /// The assignment was configured but `ip` failed: wait for the address on the NIC.
    tried: bool,
}

/// Write the node IP for kubelet when the context has a VLAN NIC, waiting up to `timeout` for its
/// address: one the NIC gets (DHCP) or one the server meta assigns ([`vlan_assign`], configured
/// here). No VLAN NIC: nothing (the cloud controller's addresses from the API apply). No address
/// in time: a warning (log and status) and no `--node-ip` — never another NIC's address.
pub fn apply(
    cx: &mut Cx,
    ctx: &ServerContext,
    timeout: Duration,
    src: &mut Sources,
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
    let mut w = Watch::default();
    let Some((name, ip)) = wait(cx, nic, timeout, src, &mut out, &mut w)? else {
        let warning = no_address(nic, timeout, &out, &w);
        cx.warn(warning);
        return Ok(out);
    };
    let source = match w.assignment {
        Some(a) if a.addr.to_string() == ip => "assignment",
        _ => "interface",
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
        "kubelet --node-ip={ip} in /etc/default/kubelet (interface {name}, MAC {}, VLAN {}, from the {}; after {} ms)",
        nic.mac,
        nic.vlan,
        if source == "assignment" { "server meta's assignment" } else { "interface's address" },
        src.clock.elapsed().as_millis()
    ));
    out.ip = Some(ip);
    out.source = Some(source);
    Ok(out)
}

/// List the interfaces (recording the listing in `out`) and look up `mac`.
fn look(src: &mut Sources, mac: &str, out: &mut Outcome, w: &mut Watch) -> Lookup {
    match (src.interfaces)() {
        Ok(ifs) => {
            let l = net::lookup(&ifs, mac);
            out.interfaces = Some(ifs);
            w.list_error = None;
            l
        }
        Err(e) => {
            w.list_error = Some(e);
            Lookup::NoInterface
        }
    }
}

/// Read the NIC's assignment from the live meta into `w` (a bad value warned about once).
fn poll_meta(cx: &mut Cx, key: &str, src: &mut Sources, w: &mut Watch) {
    let value = match (src.meta)(key) {
        Ok(v) => {
            w.meta_error = None;
            v
        }
        Err(e) => {
            w.meta_error = Some(e);
            return;
        }
    };
    match vlan_assign::read(key, value.as_ref()) {
        vlan_assign::Read::Absent => {}
        vlan_assign::Read::Valid(a) => {
            cx.info(&format!("server meta {key} assigns {a}"));
            w.assignment = Some(a);
        }
        vlan_assign::Read::Bad(warning) => {
            if !w.bad.contains(&warning) {
                w.bad.push(warning.clone());
                cx.warn(warning);
            }
        }
    }
}

/// Poll until the NIC has an address (its name and the address) or `timeout` has passed (None).
fn wait(
    cx: &mut Cx,
    nic: &net::VlanNic,
    timeout: Duration,
    src: &mut Sources,
    out: &mut Outcome,
    w: &mut Watch,
) -> Result<Option<(String, String)>> {
    let key = assignment_key(&nic.mac);
    let mut waiting = false;
    loop {
        let state = look(src, &nic.mac, out, w);
        let elapsed = src.clock.elapsed();
        let bare = !matches!(state, Lookup::Address(..));
        if bare && !w.tried && w.assignment.is_none() && elapsed >= w.next_meta {
            w.next_meta = elapsed + META_POLL_INTERVAL;
            poll_meta(cx, &key, src, w);
        }
        let assignment = w.assignment.filter(|_| !w.tried);
        match vlan_assign::decide(&state, assignment) {
            Decision::UseInterface { name, ip } => return Ok(Some((name, ip))),
            Decision::Configure { name, a } => {
                w.tried = true;
                if vlan_assign::configure(cx, &nic.mac, &name, a, src.run)? {
                    // The status shows the listing with the address.
                    look(src, &nic.mac, out, w);
                    return Ok(Some((name, a.addr.to_string())));
                }
            }
            Decision::Wait => {}
        }
        if elapsed >= timeout {
            return Ok(None);
        }
        if !waiting {
            waiting = true;
            cx.info(&format!(
                "waiting up to {} for an IPv4 address on the VLAN NIC (MAC {}, VLAN {}): from DHCP, or assigned in the server meta {key}",
                secs(timeout),
                nic.mac,
                nic.vlan
            ));
        }
        src.clock.sleep(POLL_INTERVAL.min(timeout - elapsed));
    }
}

/// The warning when no address came in time: what the NIC and the meta showed, what to do.
fn no_address(nic: &net::VlanNic, timeout: Duration, out: &Outcome, w: &Watch) -> String {
    let seen = match (
        &w.list_error,
        out.interfaces.as_deref().map(|i| net::lookup(i, &nic.mac)),
    ) {
        (Some(e), _) => format!("the interfaces could not be listed ({e})"),
        (None, Some(Lookup::NoAddress(name))) => {
            format!("its interface {name} has no IPv4 address")
        }
        _ => "no interface in the guest has its MAC".to_string(),
    };
    let key = assignment_key(&nic.mac);
    let meta = match (&w.meta_error, w.assignment, w.bad.is_empty()) {
        (_, Some(a), _) if w.tried => format!("The assignment {a} from the server meta {key} could not be set (see the warning above)"),
        (_, Some(a), _) => format!("The server meta {key} assigns {a}, but no interface has the MAC"),
        (Some(e), _, _) => format!("The server meta could not be read for {key} ({e})"),
        (None, None, false) => format!("The server meta {key} holds no usable address (see the warning above)"),
        (None, None, true) => format!("The server meta has no {key} (no address pool on the VLAN, or cloudsigma-controller has not assigned one yet)"),
    };
    format!(
        "no --node-ip: the VLAN NIC (MAC {}, VLAN {}) got no IPv4 address within {}: {seen}. {meta}. kubelet joins without --node-ip and the Node may get no InternalIP; run DHCP on the VLAN (e.g. a CloudSigma Virtual Router LAN), put an address pool on the VLAN (VLAN meta {POOL_KEY}, assigned by cloudsigma-controller), or configure the address (or node-ip) in the bootstrap data, or raise --vlan-address-timeout (env CLOUDSIGMA_AGENT_VLAN_ADDRESS_TIMEOUT)",
        nic.mac,
        nic.vlan,
        secs(timeout)
    )
}

/// The live value of the server meta key `key`: from the serial port (`/meta/<key>`, one short
/// request: a missing key comes back as an empty line, which [`vlan_assign::read`] takes as
/// absent), or from `--context-file` read again (a test or a debugging session edits it).
pub fn live_meta(
    context_file: Option<&Path>,
    serial: &Path,
    key: &str,
) -> std::result::Result<Option<serde_json::Value>, String> {
    if let Some(f) = context_file {
        let bytes = fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not JSON: {}", f.display(), context::scrub(&e)))?;
        return Ok(v.get("meta").and_then(|m| m.get(key)).cloned());
    }
    // Short: the loop reads again a second later, and a silent port must not hold the wait.
    let opts = context::ReadOptions {
        deadline: META_READ_DEADLINE,
        attempt_timeout: META_READ_DEADLINE,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
    };
    context::read_key_with(serial, &format!("/meta/{key}"), opts)
        .map(Some)
        .map_err(|e| e.to_string())
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
        meta_reads: u32,
        calls: Vec<String>,
    }

    impl Run {
        fn kubelet(&self) -> Option<String> {
            fs::read_to_string(self.root.join("etc/default/kubelet")).ok()
        }
        fn network(&self) -> Option<String> {
            fs::read_to_string(
                self.root
                    .join("etc/systemd/network/05-cloudsigma-vlan-22aabbccdd02.network"),
            )
            .ok()
        }
    }

    /// Run the step under a test root with a virtual clock; `ifs(t)` is what the guest shows at
    /// virtual time t.
    fn run(ctx: &ServerContext, timeout: Duration, ifs: impl Fn(Duration) -> Vec<Iface>) -> Run {
        run_with(ctx, timeout, ifs, Meta::default())
    }

    /// The server meta and the tools, as one test sets them.
    #[derive(Default)]
    struct Meta {
        /// The value of the NIC's key from this virtual time on (None: never).
        value: Option<(Duration, serde_json::Value)>,
        /// Every read fails with this.
        error: Option<&'static str>,
        /// Run the tools (`--execute`); the runner fails `ip` when set.
        execute: bool,
        ip_fails: bool,
        /// A networkd file already under the root (an earlier run).
        existing: Option<String>,
    }

    /// [`run`] with the server meta and the tools of `m`; `Run::calls` has the tools it ran and
    /// `Run::meta_reads` how often the meta was read.
    fn run_with(
        ctx: &ServerContext,
        timeout: Duration,
        ifs: impl Fn(Duration) -> Vec<Iface>,
        m: Meta,
    ) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc/default")).unwrap();
        if let Some(t) = &m.existing {
            let p = root.join("etc/systemd/network/05-cloudsigma-vlan-22aabbccdd02.network");
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, t).unwrap();
        }
        let log_path = dir.path().join("agent.log");
        let mut log = Logger::open(&log_path, true);
        let mut warnings = Vec::new();
        let now = Rc::new(Cell::new(Duration::ZERO));
        let mut clock = Virtual(now.clone());
        let polls = Cell::new(0);
        let mut interfaces = || {
            polls.set(polls.get() + 1);
            Ok(ifs(now.get()))
        };
        let reads = Cell::new(0);
        let mut meta = |key: &str| {
            reads.set(reads.get() + 1);
            assert!(key.starts_with("k8s-ipv4-"), "{key}");
            if let Some(e) = m.error {
                return Err(e.to_string());
            }
            Ok(m.value
                .as_ref()
                .filter(|(at, _)| now.get() >= *at)
                .map(|(_, v)| v.clone()))
        };
        let calls = std::cell::RefCell::new(Vec::new());
        let mut runner = |tool: &str, args: &[&str]| {
            calls
                .borrow_mut()
                .push(format!("{tool} {}", args.join(" ")));
            if m.ip_fails && tool == "ip" {
                Err("ip addr replace …: exited with exit status: 2: RTNETLINK answers: Operation not permitted".to_string())
            } else {
                Ok(())
            }
        };
        let mut cx = Cx {
            root: &root,
            real_root: false,
            execute: m.execute,
            log: &mut log,
            warnings: &mut warnings,
        };
        let mut src = Sources {
            interfaces: &mut interfaces,
            meta: &mut meta,
            run: &mut runner,
            clock: &mut clock,
        };
        let out = apply(&mut cx, ctx, timeout, &mut src).unwrap();
        drop(log);
        Run {
            log: fs::read_to_string(&log_path).unwrap(),
            _dir: dir,
            root,
            warnings,
            out,
            took: now.get(),
            polls: polls.get(),
            meta_reads: reads.get(),
            calls: calls.into_inner(),
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

    const ASSIGNED: &str = "192.168.77.10/24";
    const NETWORK: &str = "/etc/systemd/network/05-cloudsigma-vlan-22aabbccdd02.network";

    fn assigned_at(at: Duration, v: &str) -> Meta {
        Meta {
            value: Some((at, serde_json::json!(v))),
            execute: true,
            ..Meta::default()
        }
    }

    #[test]
    fn an_assignment_that_appears_late_in_the_meta_is_configured_and_becomes_node_ip() {
        let ctx = context(&[("22:AA:BB:CC:DD:02", VLAN_A)]);
        let never = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let r = run_with(
            &ctx,
            T30,
            never,
            assigned_at(Duration::from_secs(7), ASSIGNED),
        );
        assert_eq!(r.out.ip.as_deref(), Some("192.168.77.10"));
        assert_eq!(r.out.source, Some("assignment"));
        assert_eq!(
            r.kubelet().as_deref(),
            Some("KUBELET_EXTRA_ARGS=--node-ip=192.168.77.10\n")
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // The meta is read once a second (not at every 200 ms listing) until the value is there.
        assert_eq!(r.took, Duration::from_secs(7));
        assert_eq!(r.meta_reads, 8);
        assert_eq!(
            r.network().unwrap(),
            vlan_assign::render_network(
                "22:aa:bb:cc:dd:02",
                "k8s-ipv4-22:aa:bb:cc:dd:02",
                Assignment::parse(ASSIGNED).unwrap()
            )
        );
        assert_eq!(
            r.calls,
            [
                "ip addr replace 192.168.77.10/24 dev ens4",
                "ip link set ens4 up",
                "networkctl reload",
                "networkctl reconfigure ens4"
            ]
        );
        for line in [
            "from DHCP, or assigned in the server meta k8s-ipv4-22:aa:bb:cc:dd:02",
            "server meta k8s-ipv4-22:aa:bb:cc:dd:02 assigns 192.168.77.10/24",
            "05-cloudsigma-vlan-22aabbccdd02.network: 192.168.77.10/24 on the VLAN NIC",
            "kubelet --node-ip=192.168.77.10 in /etc/default/kubelet (interface ens4, MAC 22:aa:bb:cc:dd:02, VLAN 5bc05e7e-6555-4f40-add8-3b8e91447702, from the server meta's assignment;",
        ] {
            assert!(r.log.contains(line), "{line:?} in {}", r.log);
        }
    }

    #[test]
    fn an_address_on_the_nic_wins_and_the_meta_is_not_read() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let dhcp = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::ZERO);
        let r = run_with(&ctx, T30, dhcp, assigned_at(Duration::ZERO, ASSIGNED));
        assert_eq!(r.out.ip.as_deref(), Some("10.10.0.5"));
        assert_eq!(r.out.source, Some("interface"));
        assert_eq!(r.meta_reads, 0);
        assert_eq!(r.network(), None);
        assert!(r.calls.is_empty());
    }

    #[test]
    fn dhcp_before_the_assignment_wins() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let dhcp = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::from_secs(2));
        let r = run_with(
            &ctx,
            T30,
            dhcp,
            assigned_at(Duration::from_secs(9), ASSIGNED),
        );
        assert_eq!(r.out.ip.as_deref(), Some("10.10.0.5"));
        assert_eq!(r.network(), None);
        assert_eq!(r.took, Duration::from_secs(2));
    }

    #[test]
    fn a_bad_assignment_is_warned_about_once_and_dhcp_is_still_waited_for() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let dhcp = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::from_secs(4));
        let r = run_with(
            &ctx,
            T30,
            dhcp,
            assigned_at(Duration::ZERO, "192.168.77.0/24"),
        );
        assert_eq!(r.out.ip.as_deref(), Some("10.10.0.5"));
        assert_eq!(r.network(), None, "no file for a bad value");
        assert!(r.calls.is_empty());
        assert_eq!(r.meta_reads, 4, "read again: the controller may correct it");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("server meta k8s-ipv4-22:aa:bb:cc:dd:02 = \"192.168.77.0/24\" is not a usable address assignment: 192.168.77.0 is the network address of /24"),
            "{}",
            r.warnings[0]
        );

        // Nothing else in time: the timeout's warning points at it.
        let never = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let r = run_with(
            &ctx,
            Duration::from_secs(3),
            never,
            assigned_at(Duration::ZERO, "x"),
        );
        assert_eq!(r.kubelet(), None);
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[1].contains("The server meta k8s-ipv4-22:aa:bb:cc:dd:02 holds no usable address (see the warning above)"), "{}", r.warnings[1]);
    }

    #[test]
    fn when_ip_fails_the_file_stays_and_the_address_is_waited_for() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        // networkd brings the address from the file 3 s later.
        let later = appears(
            "22:aa:bb:cc:dd:02",
            "192.168.77.10/24",
            Duration::from_secs(3),
        );
        let mut m = assigned_at(Duration::ZERO, ASSIGNED);
        m.ip_fails = true;
        let r = run_with(&ctx, T30, later, m);
        assert!(r.network().is_some());
        assert_eq!(r.calls, ["ip addr replace 192.168.77.10/24 dev ens4"]);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("the assigned address 192.168.77.10/24 could not be set on ens4 now: ip addr replace"), "{}", r.warnings[0]);
        assert_eq!(r.out.ip.as_deref(), Some("192.168.77.10"));
        assert_eq!(r.out.source, Some("assignment"));
        assert_eq!(r.took, Duration::from_secs(3));

        let never = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let mut m = assigned_at(Duration::ZERO, ASSIGNED);
        m.ip_fails = true;
        let r = run_with(&ctx, Duration::from_secs(2), never, m);
        assert_eq!(r.kubelet(), None);
        assert!(r.warnings[1].contains("The assignment 192.168.77.10/24 from the server meta k8s-ipv4-22:aa:bb:cc:dd:02 could not be set"), "{}", r.warnings[1]);
    }

    #[test]
    fn a_correct_file_from_an_earlier_run_is_left_alone() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let a = Assignment::parse(ASSIGNED).unwrap();
        let current =
            vlan_assign::render_network("22:aa:bb:cc:dd:02", "k8s-ipv4-22:aa:bb:cc:dd:02", a);
        let never = || appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let mut m = assigned_at(Duration::ZERO, ASSIGNED);
        m.existing = Some(current.clone());
        let r = run_with(&ctx, T30, never(), m);
        assert_eq!(r.network().unwrap(), current);
        assert!(r.log.contains(&format!("{NETWORK} already configures 192.168.77.10/24 on the VLAN NIC (MAC 22:aa:bb:cc:dd:02): unchanged")), "{}", r.log);
        assert_eq!(r.out.ip.as_deref(), Some("192.168.77.10"));
        // A stale one (another address) is replaced.
        let mut m = assigned_at(Duration::ZERO, ASSIGNED);
        m.existing = Some(current.replace("192.168.77.10/24", "192.168.77.99/24"));
        let r = run_with(&ctx, T30, never(), m);
        assert_eq!(r.network().unwrap(), current);
    }

    #[test]
    fn without_execute_the_file_is_written_and_the_tools_are_not_run() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let never = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let mut m = assigned_at(Duration::ZERO, ASSIGNED);
        m.execute = false;
        let r = run_with(&ctx, T30, never, m);
        assert!(r.calls.is_empty());
        assert!(r.network().is_some());
        assert!(r.log.contains("not run (--root is not / and --execute was not given): ip addr replace 192.168.77.10/24 dev ens4"), "{}", r.log);
        assert_eq!(r.out.ip.as_deref(), Some("192.168.77.10"));
    }

    #[test]
    fn an_unreadable_meta_is_said_at_the_timeout() {
        let ctx = context(&[("22:aa:bb:cc:dd:02", VLAN_A)]);
        let never = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let m = Meta {
            error: Some("no answer from the server context on /dev/ttyS1"),
            ..Meta::default()
        };
        let r = run_with(&ctx, Duration::from_secs(2), never, m);
        assert_eq!(r.kubelet(), None);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("The server meta could not be read for k8s-ipv4-22:aa:bb:cc:dd:02 (no answer from the server context on /dev/ttyS1)"), "{}", r.warnings[0]);
        // An absent key says so too.
        let never = appears("22:aa:bb:cc:dd:02", "10.10.0.5/24", Duration::MAX);
        let r = run_with(&ctx, Duration::from_secs(1), never, Meta::default());
        assert!(
            r.warnings[0].contains(
                "The server meta has no k8s-ipv4-22:aa:bb:cc:dd:02 (no address pool on the VLAN"
            ),
            "{}",
            r.warnings[0]
        );
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
