//! The VLAN NIC's address from the server meta, for the `node_ip` step (docs/agent.md, step 10a,
//! "Address assignment from the server meta").
//!
//! A CloudSigma VLAN has no DHCP server and the API never knows its addresses. When the operator
//! puts a pool on the VLAN (VLAN meta `k8s-ipv4-pool`), cloudsigma-controller gives each server's
//! NIC on it an address and writes it into the server's meta under `k8s-ipv4-<mac>`
//! (`cloudsigma_api::pool`, the contract both sides share). This module holds what the step does
//! with such a value: read it (pure: [`read`]), decide between it and an address the NIC already
//! has ([`decide`]), render the systemd-networkd file that keeps it across reboots
//! ([`render_network`]) and configure it ([`configure`]: the file, then `ip` at once).

use std::fs;
use std::net::Ipv4Addr;

use cloudsigma_api::pool::{assignment_key, Assignment};

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{atomic_write, Owner, WriteMode};
use crate::net::Lookup;

/// The directory of systemd-networkd's own configuration (the admin's, above /run and /lib).
pub const NETWORK_DIR: &str = "/etc/systemd/network";

/// The networkd file of the VLAN NIC with `mac`:
/// `/etc/systemd/network/05-cloudsigma-vlan-<mac without colons>.network`.
///
/// networkd applies to a link the **first** matching `.network` file, all directories sorted
/// together by file name. `05-` sorts before every file the images have (`10-dhcp.network` of the
/// e2e image, netplan's `10-netplan-*` in /run, cloud-init's `10-cloud-init-<if>.network`,
/// imgbuild's catch-all `99-imgbuild-dhcp.network`), so for this NIC ours wins and no DHCP
/// catch-all grabs it; the other NICs still match the catch-all. Named by the MAC (what it
/// matches), not the interface name, so a renamed interface never leaves a second file behind.
pub fn network_file(mac: &str) -> String {
    let hex: String = mac
        .to_ascii_lowercase()
        .chars()
        .filter(|c| *c != ':')
        .collect();
    format!("{NETWORK_DIR}/05-cloudsigma-vlan-{hex}.network")
}

/// The networkd file: the address on the NIC with `mac`, nothing else. No `Gateway=` (the default
/// route stays on the public NIC: a VLAN is a private segment), `DHCP=no` (no DHCP client waiting
/// on a segment with no server), no link-local addresses and no router advertisements (the NIC
/// has exactly the assigned address). `Type=ether`: an 802.1Q sub-interface or a bridge that
/// copies the NIC's MAC must not get the same address.
pub fn render_network(mac: &str, key: &str, a: Assignment) -> String {
    format!(
        "# Written by cloudsigma-agent (node_ip step, docs/agent.md): the address cloudsigma-controller\n\
         # assigned to this VLAN NIC in the server's meta ({key}). Rewritten when the assignment\n\
         # changes; no gateway: the default route stays on the public NIC.\n\
         [Match]\n\
         MACAddress={}\n\
         Type=ether\n\
         \n\
         [Network]\n\
         Address={a}\n\
         DHCP=no\n\
         LinkLocalAddressing=no\n\
         IPv6AcceptRA=no\n",
        mac.to_ascii_lowercase()
    )
}

/// What the server meta holds for the NIC's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// No such key (the serial port answers an empty line, as for null), or an empty value.
    Absent,
    Valid(Assignment),
    /// A value that is not a usable address: the warning, naming the key and the value.
    Bad(String),
}

/// The assignment in the meta value `value` of `key` (as the serial port returns it: a bare
/// string, or JSON for anything else).
pub fn read(key: &str, value: Option<&serde_json::Value>) -> Read {
    let text = match value {
        None | Some(serde_json::Value::Null) => return Read::Absent,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => return Read::Absent,
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let bad = |why: String| {
        let shown: String = text.chars().take(64).collect();
        Read::Bad(format!(
            "server meta {key} = {shown:?} is not a usable address assignment: {why}; ignored (no networkd file written), node_ip waits for an address on the NIC as without one. Fix the value (\"<address>/<prefix>\", e.g. \"192.168.77.10/24\", as cloudsigma-controller writes it) or remove the key"
        ))
    };
    let a = match Assignment::parse(&text) {
        Ok(a) => a,
        Err(e) => return bad(e.why),
    };
    match host_problem(a) {
        Some(why) => bad(why),
        None => Read::Valid(a),
    }
}

/// Why `a` cannot be a host's address, if it cannot: the network or broadcast address of its
/// own prefix, or an address of a special range.
fn host_problem(a: Assignment) -> Option<String> {
    let ip = a.addr;
    let host_bits = u32::MAX >> a.prefix;
    let special = ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || u32::from(ip) >= u32::from(Ipv4Addr::new(240, 0, 0, 0));
    if special {
        Some(format!(
            "{ip} is a loopback, link-local, multicast or reserved address"
        ))
    } else if u32::from(ip) & host_bits == 0 {
        Some(format!("{ip} is the network address of /{}", a.prefix))
    } else if u32::from(ip) & host_bits == host_bits {
        Some(format!("{ip} is the broadcast address of /{}", a.prefix))
    } else {
        None
    }
}

/// What the step does after one look at the NIC and (maybe) the meta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The NIC has an address (DHCP, the operator's own configuration, or this module's networkd
    /// file from an earlier run): it is the node IP, whatever the meta says.
    UseInterface { name: String, ip: String },
    /// The NIC is there without an address and the meta assigns one: configure it.
    Configure { name: String, a: Assignment },
    /// Nothing yet: look again (until the timeout).
    Wait,
}

/// The rule (docs/agent.md): an address on the NIC wins (today's behaviour, and a DHCP server the
/// operator runs keeps working); else a valid assignment wins over waiting any longer for DHCP;
/// an assignment for a NIC that the guest does not show yet waits for the NIC.
pub fn decide(state: &Lookup, assignment: Option<Assignment>) -> Decision {
    match (state, assignment) {
        (Lookup::Address(name, ip), _) => Decision::UseInterface {
            name: name.clone(),
            ip: ip.clone(),
        },
        (Lookup::NoAddress(name), Some(a)) => Decision::Configure {
            name: name.clone(),
            a,
        },
        _ => Decision::Wait,
    }
}

/// Runs a system tool: Ok, or why not (the command line and its error).
pub type Runner<'a> = dyn FnMut(&str, &[&str]) -> std::result::Result<(), String> + 'a;

/// The real [`Runner`]: the tool from PATH through [`crate::sys`].
pub fn run_tool(tool: &str, args: &[&str]) -> std::result::Result<(), String> {
    match crate::sys::check(tool, args, None) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Configure `a` on interface `name` (MAC `mac`): the networkd file first (persistent; written
/// only when its content differs, atomically), then the address at once. Ok(true): the address
/// is on the interface (or would be: not executed under a test root); Ok(false): `ip` failed (a
/// warning says so) and the step goes on waiting for an address on the NIC (networkd, reloaded,
/// may still bring it). Err: the file could not be written.
pub fn configure(
    cx: &mut Cx,
    mac: &str,
    name: &str,
    a: Assignment,
    run: &mut Runner,
) -> Result<bool> {
    let key = assignment_key(mac);
    let file = network_file(mac);
    let path = cx.path(&file);
    let new = render_network(mac, &key, a);
    let old = match fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(IoOp::Access, path, e)),
    };
    if old.as_deref() == Some(new.as_str()) {
        cx.info(&format!(
            "{file} already configures {a} on the VLAN NIC (MAC {mac}): unchanged"
        ));
    } else {
        atomic_write(
            &path,
            new.as_bytes(),
            0o644,
            Owner::default(),
            WriteMode::Replace,
        )
        .at(IoOp::Access, &path)?;
        cx.info(&format!(
            "{file}: {a} on the VLAN NIC (MAC {mac}, interface {name}) from the server meta {key}, no DHCP, no gateway"
        ));
    }
    Ok(bring_up(cx, name, a, run))
}

/// The address at once, whatever runs the network: `ip addr replace` and `ip link set up` are
/// synchronous (netlink) and need no daemon. Then, best effort, `networkctl reload` and
/// `networkctl reconfigure`: where networkd runs, it switches the link from the DHCP catch-all to
/// the new file now (no DHCP client left on the NIC, and the address is no "foreign" one that a
/// later reconfiguration would drop); where it does not run, the commands fail and the file
/// applies from the next boot under networkd.
fn bring_up(cx: &mut Cx, name: &str, a: Assignment, run: &mut Runner) -> bool {
    let addr = a.to_string();
    let ip: [&[&str]; 2] = [
        &["addr", "replace", &addr, "dev", name],
        &["link", "set", name, "up"],
    ];
    if !cx.execute {
        cx.info(&format!(
            "not run (--root is not / and --execute was not given): ip addr replace {addr} dev {name}; ip link set {name} up; networkctl reload; networkctl reconfigure {name}"
        ));
        return true;
    }
    for args in ip {
        if let Err(e) = run("ip", args) {
            cx.warn(format!(
                "the assigned address {addr} could not be set on {name} now: {e}; the networkd file applies it when systemd-networkd (re)configures the link, and node_ip waits for it until --vlan-address-timeout"
            ));
            return false;
        }
    }
    let networkd =
        run("networkctl", &["reload"]).and_then(|()| run("networkctl", &["reconfigure", name]));
    match networkd {
        Ok(()) => cx.info(&format!(
            "{addr} set on {name}; systemd-networkd reloaded and {name} reconfigured from the new file"
        )),
        Err(e) => cx.info(&format!(
            "{addr} set on {name}; systemd-networkd not reloaded ({e}): the file applies from the next boot where networkd runs"
        )),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAC: &str = "22:AA:bb:cc:dd:02";
    const KEY: &str = "k8s-ipv4-22:aa:bb:cc:dd:02";

    fn a(s: &str) -> Assignment {
        Assignment::parse(s).unwrap()
    }

    #[test]
    fn the_file_sorts_before_the_images_dhcp_files_and_is_named_by_the_mac() {
        let f = network_file(MAC);
        assert_eq!(
            f,
            "/etc/systemd/network/05-cloudsigma-vlan-22aabbccdd02.network"
        );
        let name = f.rsplit('/').next().unwrap();
        for other in [
            "10-dhcp.network",
            "10-netplan-imgbuild-en.network",
            "10-cloud-init-ens4.network",
            "99-imgbuild-dhcp.network",
        ] {
            assert!(name < other, "{name} sorts before {other}");
        }
    }

    #[test]
    fn the_file_has_the_address_and_no_gateway_or_dhcp() {
        let t = render_network(MAC, KEY, a("192.168.77.10/24"));
        assert!(t.contains("\n[Match]\nMACAddress=22:aa:bb:cc:dd:02\nType=ether\n\n[Network]\nAddress=192.168.77.10/24\nDHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"), "{t}");
        assert!(t.contains(KEY), "{t}");
        assert!(!t.contains("Gateway"), "{t}");
        assert!(t
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("Route")));
        assert!(t.ends_with('\n'));
    }

    #[test]
    fn reading_the_meta_value() {
        assert_eq!(read(KEY, None), Read::Absent);
        assert_eq!(read(KEY, Some(&json!(null))), Read::Absent);
        // A missing key comes back from the serial port as an empty line.
        assert_eq!(read(KEY, Some(&json!(""))), Read::Absent);
        assert_eq!(
            read(KEY, Some(&json!("192.168.77.10/24"))),
            Read::Valid(a("192.168.77.10/24"))
        );
        assert_eq!(
            read(KEY, Some(&json!(" 10.1.2.3/16\n"))),
            Read::Valid(a("10.1.2.3/16"))
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        for (v, why) in [
            (json!("192.168.77.10"), "no /prefix"),
            (json!("192.168.77.10/33"), "prefix"),
            (json!("192.168.77.10/0"), "prefix"),
            (json!("nonsense/24"), "not an IPv4 address"),
            (json!("192.168.77.0/24"), "network address of /24"),
            (json!("192.168.77.255/24"), "broadcast address of /24"),
            (json!("127.0.0.5/8"), "loopback"),
            (json!("169.254.1.1/16"), "link-local"),
            (json!("224.0.0.5/8"), "multicast"),
            (json!(42), "no /prefix"),
            (json!({"a": 1}), "no /prefix"),
        ] {
            let Read::Bad(w) = read(KEY, Some(&v)) else {
                panic!("{v} should be bad");
            };
            assert!(w.starts_with(&format!("server meta {KEY} = ")), "{w}");
            assert!(w.contains(why), "{why:?} in {w}");
            assert!(w.contains("no networkd file written"), "{w}");
            assert!(w.contains("e.g. \"192.168.77.10/24\""), "{w}");
        }
        // A long value is shortened in the warning.
        let long = "x".repeat(500);
        let Read::Bad(w) = read(KEY, Some(&json!(long))) else {
            panic!()
        };
        assert!(w.len() < 600, "{w}");
    }

    #[test]
    fn an_address_on_the_nic_wins_then_the_assignment_then_waiting() {
        let assigned = Some(a("192.168.77.10/24"));
        let has = Lookup::Address("ens4".into(), "10.10.0.5".into());
        assert_eq!(
            decide(&has, assigned),
            Decision::UseInterface {
                name: "ens4".into(),
                ip: "10.10.0.5".into()
            },
            "DHCP (or the operator) came first: today's behaviour"
        );
        assert_eq!(
            decide(&has, None),
            Decision::UseInterface {
                name: "ens4".into(),
                ip: "10.10.0.5".into()
            }
        );
        let bare = Lookup::NoAddress("ens4".into());
        assert_eq!(
            decide(&bare, assigned),
            Decision::Configure {
                name: "ens4".into(),
                a: a("192.168.77.10/24")
            },
            "the assignment wins over waiting for DHCP"
        );
        assert_eq!(decide(&bare, None), Decision::Wait);
        assert_eq!(
            decide(&Lookup::NoInterface, assigned),
            Decision::Wait,
            "no interface with the MAC yet: nothing to configure"
        );
    }
}
