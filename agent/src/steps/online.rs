//! `online`: the one place where the bootstrap waits for the rest of the boot (docs/agent.md,
//! "Boot order").
//!
//! The unit starts early, with systemd's default dependencies only (after `sysinit.target`: the
//! local file systems are mounted and swap is on, so `swapoff` sticks), not after the network.
//! The steps that need neither the network nor the container runtime (growpart, the context,
//! write_files, disks, hostname, users, ssh keys, swap, ntp's configuration) run while the network
//! comes up. Before the first step that may need more (the data's bootcmd or `mount -a`, else the
//! final stage: packages, node_ip, runcmd), the agent waits here, once, for exactly what the unit
//! used to be ordered after.
//!
//! It does not poll for each condition itself: it starts a transient unit with those `After=`
//! (and the `Wants=network-online.target` the unit had) through `systemd-run --wait` and waits
//! for it to finish. systemd applies its own ordering to it, so the semantics are the unit file's:
//! a unit with a pending start job (containerd still starting) is waited for; one that is not part
//! of the boot (no containerd on an RKE2 image) is neither waited for nor started; a failed
//! `systemd-networkd-wait-online` does not stop the join. cloud-init's own units do the same
//! since 24.x: one process (cloud-init-main.service) starts early and each stage's shim unit,
//! ordered by systemd, tells it when that stage may run.

use super::Cx;
use crate::error::Result;
use crate::fsutil::under;
use crate::sys;

/// What `kubeadm join` (and the RKE2 installer) needs: the unit file's former `After=` list.
pub const AFTER: &[&str] = &[
    "network-online.target",
    "systemd-networkd-wait-online.service",
    "time-sync.target",
    "containerd.service",
];

/// Pulled into the boot (and started when the agent runs by hand): the unit's `Wants=`.
pub const WANTS: &[&str] = &["network-online.target"];

/// Why there is nothing to wait for, or None when the wait runs.
pub fn skip(real_root: bool, root: &std::path::Path) -> Option<&'static str> {
    if !real_root {
        Some("not the booted system (--root is not /)")
    } else if !under(root, "/run/systemd/system").exists() {
        // sd_booted(3): without it there is no systemd to order anything.
        Some("systemd is not the running init system (no /run/systemd/system)")
    } else {
        None
    }
}

/// `systemd-run` arguments of the transient unit that finishes once every unit of [`AFTER`] that
/// is part of the boot has started (or failed).
pub fn systemd_run_args() -> Vec<String> {
    let mut a: Vec<String> = [
        "--wait",
        "--quiet",
        "--collect",
        "--service-type=oneshot",
        "--description=cloudsigma-bootstrap: wait for the network, time sync and containerd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for w in WANTS {
        a.push("--property".into());
        a.push(format!("Wants={w}"));
    }
    for u in AFTER {
        a.push("--property".into());
        a.push(format!("After={u}"));
    }
    // An absolute path: no PATH lookup involved.
    a.push("/bin/true".into());
    a
}

/// Start the wait (see the module doc) without blocking: the agent starts it when it starts, so
/// that systemd-run's own start-up (an exec and a bus call, seconds in a busy boot: the
/// transient unit started 2.8 s after systemd-run in the e2e VM) and the wait overlap the local
/// steps. [`apply`] then only collects it.
pub fn start() -> Result<std::process::Child> {
    let args = systemd_run_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sys::spawn("systemd-run", &args)
}

/// Wait for the [`start`]ed wait. If that one failed (it could not be started, or the system
/// bus it needs was not there: `systemd-run --wait` always talks to D-Bus, never to systemd's
/// private socket), the wait is started once more, now, with `again` ([`start`] on a node). If
/// that fails too, `fallback` ([`start_network_online`] on a node) waits for
/// network-online.target alone, with a warning: the join then does not wait for containerd or
/// time sync. `before` names the step that needs it.
pub fn apply(
    cx: &mut Cx,
    before: &str,
    started: Option<Result<std::process::Child>>,
    again: impl Fn() -> Result<std::process::Child>,
    fallback: impl Fn() -> Result<()>,
) -> Result<()> {
    cx.info(&format!(
        "online: waiting for {} (needed from step {before} on)",
        AFTER.join(", ")
    ));
    let first = match started {
        Some(c) => c.and_then(collect),
        None => again().and_then(collect),
    };
    match first {
        Ok(()) => Ok(()),
        Err(e) => {
            cx.info(&format!("online: {e}; starting the wait again"));
            match again().and_then(collect) {
                Ok(()) => Ok(()),
                Err(e) => {
                    cx.warn(format!(
                        "online: {e}; waiting for network-online.target only (systemctl start), not for {}",
                        AFTER[1..].join(", ")
                    ));
                    fallback()
                }
            }
        }
    }
}

/// `systemctl start network-online.target`: what the unit's `Wants=`/`After=` on it did, through
/// systemd's private socket (no D-Bus needed); the start job merges with the boot's.
pub fn start_network_online() -> Result<()> {
    sys::check("systemctl", &["start", "network-online.target"], None).map(|_| ())
}

fn collect(child: std::process::Child) -> Result<()> {
    let out = sys::wait("systemd-run", child)?;
    if out.ok() {
        return Ok(());
    }
    let args = systemd_run_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Err(out.failed("systemd-run", &args))
}

/// A started wait that is not needed after all (the node was bootstrapped before, a step failed
/// first): stop systemd-run. Its transient unit still runs `/bin/true` when its turn comes and
/// is collected (`--collect`).
pub fn abandon(started: Option<Result<std::process::Child>>) {
    if let Some(Ok(mut c)) = started {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_unit_has_the_units_ordering() {
        let a = systemd_run_args();
        let props: Vec<&str> = a
            .windows(2)
            .filter(|w| w[0] == "--property")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            props,
            [
                "Wants=network-online.target",
                "After=network-online.target",
                "After=systemd-networkd-wait-online.service",
                "After=time-sync.target",
                "After=containerd.service",
            ]
        );
        assert!(a.iter().any(|x| x == "--wait"), "{a:?}");
        assert_eq!(a.last().map(String::as_str), Some("/bin/true"));
        // Never a Requires=: a unit missing from the image must not fail the wait.
        assert!(!a.iter().any(|x| x.starts_with("Requires=")), "{a:?}");
    }

    fn with_cx<T>(f: impl FnOnce(&mut Cx) -> T) -> T {
        let mut log = crate::report::Logger::buffered();
        let mut warnings = Vec::new();
        f(&mut Cx {
            root: std::path::Path::new("/nonexistent"),
            real_root: false,
            execute: false,
            log: &mut log,
            warnings: &mut warnings,
        })
    }

    #[test]
    fn collects_the_started_wait_and_its_failures() {
        let fail = || {
            sys::spawn(
                "sh",
                &[
                    "-c",
                    "echo 'Failed to start transient service unit' >&2; exit 1",
                ],
            )
        };
        let ok = || sys::spawn("true", &[]);
        let never = || -> Result<std::process::Child> { panic!("started again") };
        let no_fallback = || -> Result<()> { panic!("fell back") };
        let fallback_ok = || -> Result<()> { Ok(()) };
        let fallback_fails =
            || -> Result<()> { Err(crate::error::Error::Refused("no systemctl".into())) };
        assert!(with_cx(|cx| apply(cx, "packages", Some(ok()), never, no_fallback)).is_ok());
        // The early one failed (no bus yet): started again, and that one counts.
        assert!(with_cx(|cx| apply(cx, "packages", Some(fail()), ok, no_fallback)).is_ok());
        let missing = sys::spawn("/nonexistent/systemd-run", &[]);
        assert!(with_cx(|cx| apply(cx, "bootcmd", Some(missing), ok, no_fallback)).is_ok());
        // Failing again (no D-Bus): network-online.target alone, with a warning naming why.
        let warnings = with_cx(|cx| {
            apply(cx, "packages", Some(fail()), fail, fallback_ok).unwrap();
            cx.warnings.clone()
        });
        assert!(
            warnings.len() == 1
                && warnings[0].contains("Failed to start transient")
                && warnings[0].contains("not for systemd-networkd-wait-online.service"),
            "{warnings:?}"
        );
        // ...and if that fails as well, the phase fails.
        assert!(with_cx(|cx| apply(cx, "packages", Some(fail()), fail, fallback_fails)).is_err());
        // Not started early: started now.
        assert!(with_cx(|cx| apply(cx, "packages", None, ok, no_fallback)).is_ok());
        // an unneeded wait is stopped, not left behind
        let long = sys::spawn("sleep", &["30"]).unwrap();
        let pid = long.id();
        abandon(Some(Ok(long)));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "still running"
        );
    }

    #[test]
    fn skipped_outside_a_systemd_boot() {
        let d = tempfile::tempdir().unwrap();
        assert!(skip(false, d.path()).unwrap().contains("--root"));
        assert!(skip(true, d.path())
            .unwrap()
            .contains("/run/systemd/system"));
        std::fs::create_dir_all(d.path().join("run/systemd/system")).unwrap();
        assert_eq!(skip(true, d.path()), None);
    }
}
