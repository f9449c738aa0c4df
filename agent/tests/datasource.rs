//! Parity with cloud-init's CloudSigma datasource and ssh module (issue #13): dsmode values,
//! vendor data, keypairs attached to the server, root's keys, RKE2's pass-through keys.

mod common;
use common::*;

fn warnings(n: &Node) -> String {
    n.status()["warnings"].to_string()
}

fn with_meta(user_data: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Node {
    let mut ctx = context_json(&b64(user_data.as_bytes()));
    edit(&mut ctx);
    Node::with_context(ctx)
}

const JOIN_MARKER: &str = "#cloud-config\nruncmd:\n  - kubeadm join x\n  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n";

#[test]
fn every_dsmode_value() {
    // local and net: the agent runs once after network-online either way, without remark.
    for mode in ["local", "net"] {
        let n = with_meta(JOIN_MARKER, |c| {
            c["meta"]["cloudinit-dsmode"] = serde_json::json!(mode)
        });
        n.run_ok(&[]);
        assert_eq!(n.status()["result"], "success", "{mode}");
        assert!(!warnings(&n).contains("dsmode"), "{mode}: {}", warnings(&n));
    }
    // pass and unknown values: cloud-init warns and uses net; so do we.
    for mode in ["pass", "Disabled", "bogus"] {
        let n = with_meta(JOIN_MARKER, |c| {
            c["meta"]["cloudinit-dsmode"] = serde_json::json!(mode)
        });
        n.run_ok(&[]);
        assert_eq!(n.status()["result"], "success", "{mode}");
        let w = warnings(&n);
        assert!(
            w.contains("cloudinit-dsmode") && w.contains("using net"),
            "{mode}: {w}"
        );
        assert_eq!(n.stub_calls(), ["kubeadm join x"], "{mode}");
    }
    // disabled: nothing runs.
    let n = with_meta(JOIN_MARKER, |c| {
        c["meta"]["cloudinit-dsmode"] = serde_json::json!("disabled")
    });
    n.run_ok(&[]);
    assert_eq!(n.status()["result"], "skipped");
    assert!(n.stub_calls().is_empty());
}

/// vendor_data.cloudinit is deliberately not executed (docs/agent.md): a warning says so.
#[test]
fn vendor_data_is_refused_with_a_warning() {
    let n = with_meta(JOIN_MARKER, |c| {
        c["vendor_data"] = serde_json::json!({
            "location": "zrh",
            "cloudinit": "#cloud-config\nruncmd:\n  - kubeadm reset -f\n"
        })
    });
    n.run_ok(&[]);
    assert_eq!(n.stub_calls(), ["kubeadm join x"], "vendor runcmd not run");
    let w = warnings(&n);
    assert!(
        w.contains("vendor_data.cloudinit") && w.contains("not executed"),
        "{w}"
    );
    assert!(!w.contains("kubeadm reset"), "no content in warnings");
    // Absent or empty: no remark.
    let n = with_meta(JOIN_MARKER, |c| {
        c["vendor_data"] = serde_json::json!({"location": "zrh"})
    });
    n.run_ok(&[]);
    assert!(!warnings(&n).contains("vendor_data"));
}

/// Keypairs attached to the server are installed like meta.ssh_public_key; root's copies get
/// cloud-init's disable_root prefix naming the default user.
#[test]
fn server_keypairs_are_installed_like_ssh_public_key() {
    let n = with_meta(JOIN_MARKER, |c| {
        c["pubkeys"] = serde_json::json!([
            {"uuid": "0d5b6e4c-1111-4222-8333-944444444444", "name": "ops", "public_key": "ssh-ed25519 AAAAkeypair ops@laptop"},
            {"uuid": "7e3f0b1a-1111-4222-8333-944444444444", "resource_uri": "/api/2.0/keypairs/7e3f0b1a-1111-4222-8333-944444444444/"}
        ])
    });
    n.run_ok(&[]);
    assert_eq!(
        n.read("/home/debian/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3 test\nssh-ed25519 AAAAkeypair ops@laptop\n"
    );
    let root = n.read("/root/.ssh/authorized_keys");
    assert_eq!(root.lines().count(), 2, "{root}");
    assert!(
        root.lines().all(|l| l.starts_with("no-port-forwarding,")
            && l.contains(
                "Please login as the user \\\"debian\\\" rather than the user \\\"root\\\""
            )),
        "{root}"
    );
    let w = warnings(&n);
    assert!(
        w.contains("pubkeys[1]") && w.contains("7e3f0b1a-1111-4222-8333-944444444444"),
        "{w}"
    );
}

/// `disable_root: false` gives root the real keys; an existing prefixed line is rewritten, and a
/// re-run with the default turns it back (cloud-init rewrites a key's options in place).
#[test]
fn disable_root_false_and_back() {
    let n = Node::new(format!("{JOIN_MARKER}disable_root: false\n").as_bytes());
    n.run_ok(&[]);
    assert_eq!(
        n.read("/root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3 test\n"
    );
    let n2 = Node::new(JOIN_MARKER.as_bytes());
    std::fs::create_dir_all(n2.p("/root/.ssh")).unwrap();
    std::fs::write(
        n2.p("/root/.ssh/authorized_keys"),
        "ssh-rsa AAAAother admin\nssh-ed25519 AAAAC3 test\n",
    )
    .unwrap();
    n2.run_ok(&[]);
    let keys = n2.read("/root/.ssh/authorized_keys");
    let lines: Vec<&str> = keys.lines().collect();
    assert_eq!(lines.len(), 2, "{keys}");
    assert_eq!(
        lines[0], "ssh-rsa AAAAother admin",
        "other keys are kept as they are"
    );
    assert!(
        lines[1].starts_with("no-port-forwarding,")
            && lines[1].ends_with("\" ssh-ed25519 AAAAC3 test"),
        "{keys}"
    );
}

/// RKE2's additionalUserData passes packages/package_update/package_upgrade through: executed
/// as cloud-init does (apt-get update once, dist-upgrade, install), in the final stage before
/// runcmd; an unknown key stays a warning.
#[test]
fn rke2_additional_user_data_packages() {
    let ud = format!(
        "{}package_update: true\npackage_upgrade: true\npackages:\n  - nfs-common\n  - [open-iscsi, 2.1.8-1]\ntimezone: Europe/Zurich\n",
        data("rke2-agent.yaml")
    );
    let n = Node::new(ud.as_bytes());
    n.run_ok(&[]);
    let calls = n.stub_calls();
    let apt: Vec<&String> = calls.iter().filter(|c| c.starts_with("apt-get")).collect();
    let opts = "apt-get --option=Dpkg::Options::=--force-confold --option=Dpkg::options::=--force-unsafe-io --option=DPkg::Lock::Timeout=30 --assume-yes --quiet";
    assert_eq!(
        apt,
        [
            &format!("{opts} update"),
            &format!("{opts} dist-upgrade"),
            &format!("{opts} install nfs-common open-iscsi=2.1.8-1"),
        ]
    );
    let pos = |p: &str| calls.iter().position(|c| c.starts_with(p)).unwrap();
    assert!(
        pos("apt-get") < pos("curl"),
        "packages before runcmd: {calls:?}"
    );
    let st = n.status();
    assert_eq!(st["unsupported"], serde_json::json!(["timezone"]));
    assert_eq!(st["result"], "success");

    // A failing apt-get fails the step by name (after trying the rest, as cloud-init).
    let n = Node::new(ud.as_bytes());
    let out = n.run_env(&[], &[("STUB_FAIL", "apt-get")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(n.status()["error"]["step"], "packages");
    assert_eq!(
        n.stub_calls()
            .iter()
            .filter(|c| c.starts_with("apt-get"))
            .count(),
        3
    );
    assert!(
        !n.stub_calls().iter().any(|c| c.starts_with("curl")),
        "runcmd not reached"
    );
}

/// A context value of the wrong type fails the context step naming the field, never quoting
/// the value (it may be a password or key).
#[test]
fn context_decode_error_names_the_field_not_the_value() {
    let n = with_meta(JOIN_MARKER, |c| {
        // serde's own message would be `invalid type: string "cpu-hunter2", expected u64`.
        c["cpu"] = serde_json::json!("cpu-hunter2");
    });
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let st = n.status();
    assert_eq!(st["error"]["step"], "context");
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("cpu: invalid type: string, expected u64"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    n.assert_no_secrets(&["hunter2"]);
    assert!(!stderr(&out).contains("hunter2"));
}
