//! The real binary reading the context from a serial port (a pty; a thread plays the hypervisor),
//! then bootstrapping: the path the service takes on a node, minus the hardware.

mod common;
use common::*;

use std::fs::File;
use std::io::{Read, Write};

#[test]
fn bootstrap_from_serial_port() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let ctx = std::fs::read_to_string(&n.context).unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    let tty = nix::unistd::ttyname(&pty.slave).unwrap();
    let mut master = File::from(pty.master);
    let host = std::thread::spawn(move || {
        // Read one request "<\n\n>" (skipping anything else) and answer with the context.
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !buf.ends_with(b"<\n\n>") {
            if master.read(&mut b).unwrap_or(0) == 0 {
                return false;
            }
            buf.push(b[0]);
        }
        master.write_all(format!("{ctx}\n\x04").as_bytes()).unwrap();
        // Keep the master open until the agent is done with the port.
        std::thread::sleep(std::time::Duration::from_secs(2));
        true
    });
    // No --context-file: the binary reads the context with --serial.
    let out = n.run_serial(&tty, 10);
    assert!(
        host.join().unwrap(),
        "the agent sent the whole-context request"
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), n.log());
    assert!(n.marker());
    assert!(n
        .read("/run/kubeadm/kubeadm-join-config.yaml")
        .contains(&format!("cloudsigma://{UUID}")));
    drop(pty.slave);
}

#[test]
fn silent_serial_port_fails_context_step() {
    let n = Node::new(b"#cloud-config\n");
    let pty = nix::pty::openpty(None, None).unwrap();
    let tty = nix::unistd::ttyname(&pty.slave).unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .args([
            "--serial",
            tty.to_str().unwrap(),
            "--timeout",
            "1",
            "--root",
        ])
        .arg(&n.root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let st = n.status();
    assert_eq!(st["error"]["step"], "context");
    assert!(
        st["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{st}"
    );
    drop(pty);
}

/// A pty host that answers the first `not_ready` requests with the early-boot status line, then
/// with the context (`None`: never).
fn not_ready_host(
    ctx: String,
    not_ready: Option<usize>,
) -> (
    nix::pty::OpenptyResult,
    std::path::PathBuf,
    std::thread::JoinHandle<usize>,
) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let tty = nix::unistd::ttyname(&pty.slave).unwrap();
    let mut master = File::from(pty.master.try_clone().unwrap());
    let host = std::thread::spawn(move || {
        let mut answered = 0;
        loop {
            let mut buf = Vec::new();
            let mut b = [0u8; 1];
            while !buf.ends_with(b"<\n\n>") {
                if master.read(&mut b).unwrap_or(0) == 0 {
                    return answered;
                }
                buf.push(b[0]);
            }
            if not_ready.is_none_or(|n| answered < n) {
                answered += 1;
                if master.write_all(b"context not ready\n\x04").is_err() {
                    return answered;
                }
            } else {
                master.write_all(format!("{ctx}\n\x04").as_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_secs(2));
                return answered;
            }
        }
    });
    (pty, tty, host)
}

#[test]
fn early_boot_not_ready_replies_are_waited_out() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let ctx = std::fs::read_to_string(&n.context).unwrap();
    let (pty, tty, host) = not_ready_host(ctx, Some(3));
    let out = n.run_serial(&tty, 10);
    assert_eq!(host.join().unwrap(), 3, "three not-ready replies were sent");
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), n.log());
    assert!(n.marker());
    drop(pty);
}

#[test]
fn a_context_never_ready_fails_with_a_clear_error() {
    let n = Node::new(b"#cloud-config\n");
    let (pty, tty, _host) = not_ready_host(String::new(), None);
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .args([
            "--serial",
            tty.to_str().unwrap(),
            "--timeout",
            "1.5",
            "--root",
        ])
        .arg(&n.root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "bounded"
    );
    let st = n.status();
    assert_eq!(st["error"]["step"], "context");
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("was not ready")
            && msg.contains("context not ready")
            && msg.contains("--timeout"),
        "{msg}"
    );
    drop(pty);
}
