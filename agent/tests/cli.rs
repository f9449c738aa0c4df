//! The command line: `bootstrap` is the default (the systemd unit's `--serial /dev/ttyS1`
//! invocation has no subcommand), `status` reads the last run back.

mod common;
use common::*;

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bootstrap_subcommand_then_status() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let root = n.root.to_str().unwrap();
    // No status yet: says so, exit 1.
    let out = agent(&["status", "--root", root]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read status file"),
        "{}",
        stderr(&out)
    );

    let path = format!(
        "{}:{}",
        n.stub_dir.display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .args(["bootstrap", "--root", root, "--execute", "--quiet"])
        .arg("--context-file")
        .arg(&n.context)
        .arg("--net-fixture")
        .arg(&n.fixture)
        .env("PATH", path)
        .env("STUB_LOG", &n.stub_log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(n.marker());

    let out = agent(&["status", "--root", root]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("last run: success (agent "), "{text}");
    assert!(text.contains(&format!("instance: {UUID}\n")), "{text}");
    assert!(text.contains("hostname: worker-0\n"), "{text}");
    assert!(
        text.contains("node ip: 10.10.0.5 (from the interface)\n"),
        "{text}"
    );
    assert!(text.contains("(present)"), "{text}");
    assert!(text.contains("  runcmd "), "{text}");

    let out = agent(&["status", "--root", root, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, n.status(), "the status file as written");

    let status_file = n.p("/run/cloudsigma/bootstrap.json");
    let out = agent(&["status", "--status-file", status_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), text);
}

#[test]
fn failed_run_status_exits_1() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let out = n.run_env(&["--quiet"], &[("STUB_FAIL", "kubeadm")]);
    assert_eq!(out.status.code(), Some(1));
    let out = agent(&["status", "--root", n.root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.starts_with("last run: failure"), "{text}");
    // The join data's last command still succeeds: the missing marker is the failure.
    assert!(text.contains("error: step marker: "), "{text}");
}

#[test]
fn version_help_and_usage_errors() {
    for v in ["--version", "-V"] {
        let out = agent(&[v]);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).starts_with("cloudsigma-agent "));
    }
    let out = agent(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    for word in [
        "bootstrap",
        "status",
        "--serial",
        "--context-file",
        "--net-fixture",
    ] {
        assert!(stdout(&out).contains(word), "{word}: {}", stdout(&out));
    }
    for bad in [
        &["--timeout", "0"][..],
        &["--timeout", "soon"],
        &["status", "--output", "yaml"],
        &["frobnicate"],
    ] {
        let out = agent(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
