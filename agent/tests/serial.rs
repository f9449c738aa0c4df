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
    // No --context-file: run the binary directly with --serial.
    let path = format!(
        "{}:{}",
        n.stub_dir.display(),
        std::env::var("PATH").unwrap()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .args([
            "--serial",
            tty.to_str().unwrap(),
            "--timeout",
            "10",
            "--execute",
            "--net-fixture",
        ])
        .arg(&n.fixture)
        .arg("--root")
        .arg(&n.root)
        .env("PATH", path)
        .env("STUB_LOG", &n.stub_log)
        .output()
        .unwrap();
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
