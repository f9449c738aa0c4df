//! The serial context client over a pseudo-terminal: a peer thread plays the hypervisor on the
//! master side, the client opens the slave path exactly like /dev/ttyS1.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cloudsigma_api::context::{self, ContextError, ReadOptions};

const CONTEXT: &str = r#"{"uuid":"1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff","name":"worker-0","cpu":2000,"mem":2147483648,"smp":1,"meta":{"base64_fields":"cloudinit-user-data","cloudinit-user-data":"I2Nsb3VkLWNvbmZpZwo=","ssh_public_key":"ssh-ed25519 AAAA"},"nics":[{"ip_v4_conf":{"conf":"dhcp","ip":{"uuid":"31.171.1.2","netmask":24,"gateway":"31.171.1.1","nameservers":["8.8.8.8"],"tags":[],"meta":{}}},"mac":"22:aa:bb:cc:dd:01","model":"virtio","vlan":null}],"global_context":{"region":"zrh"},"tags":[],"drives":[],"vnc_password":"x"}"#;

struct Pty {
    master: File,
    // Held open so the pty stays alive between client opens.
    slave: OwnedFd,
    path: PathBuf,
}

fn pty() -> Pty {
    let r = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&r.slave).expect("ttyname");
    Pty {
        master: File::from(r.master),
        slave: r.slave,
        path,
    }
}

/// Reads one request `<\n KEY \n>` from the master side, skipping anything before `<` (echo,
/// stale bytes). Returns the key, or None when the client side is gone.
fn read_request(master: &mut File) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match master.read(&mut b) {
            Ok(1) => buf.push(b[0]),
            _ => return None,
        }
        if let Some(start) = buf.iter().rposition(|&c| c == b'<') {
            let tail = &buf[start..];
            if tail.len() >= 4 && tail[1] == b'\n' && tail.ends_with(b"\n>") {
                return Some(String::from_utf8_lossy(&tail[2..tail.len() - 2]).into_owned());
            }
        }
    }
}

/// One exchange only (the backoff exceeds the deadline): the error is that exchange's, not the
/// `NoAnswer` of a short last retry when a loaded machine delays the peer thread.
fn one_attempt(deadline_ms: u64) -> ReadOptions {
    ReadOptions {
        deadline: Duration::from_millis(deadline_ms),
        attempt_timeout: Duration::from_millis(deadline_ms),
        initial_backoff: Duration::from_millis(deadline_ms * 2),
        max_backoff: Duration::from_millis(deadline_ms * 2),
    }
}

fn opts(deadline_ms: u64) -> ReadOptions {
    ReadOptions {
        deadline: Duration::from_millis(deadline_ms),
        attempt_timeout: Duration::from_millis(deadline_ms.min(1500)),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

/// What the host answers for a key: leaves unquoted, null as empty.
fn leaf(ctx: &serde_json::Value, key: &str) -> String {
    let ptr = key.trim_end_matches('/');
    match ctx.pointer(ptr) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

#[test]
fn full_context_over_pty() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let peer = thread::spawn(move || {
        let key = read_request(&mut master).unwrap();
        tx.send(key).unwrap();
        master
            .write_all(format!("{CONTEXT}\n\x04").as_bytes())
            .unwrap();
    });
    let ctx = context::read_context_with(&p.path, opts(5000)).expect("context");
    peer.join().unwrap();
    assert_eq!(rx.recv().unwrap(), "", "whole context is the empty key");
    assert_eq!(ctx.uuid, "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff");
    assert_eq!(ctx.name, "worker-0");
    assert_eq!(
        ctx.meta.get("base64_fields").map(String::as_str),
        Some("cloudinit-user-data")
    );
    assert_eq!(
        ctx.global_context.get("region").map(String::as_str),
        Some("zrh")
    );
    assert_eq!(ctx.nics.len(), 1);
    // The termios state we left on the port: raw, no echo.
    let t = nix::sys::termios::tcgetattr(&p.slave).unwrap();
    assert!(!t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO));
    assert!(!t
        .local_flags
        .contains(nix::sys::termios::LocalFlags::ICANON));
}

#[test]
fn single_key_is_bare_string() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    let full: serde_json::Value = serde_json::from_str(CONTEXT).unwrap();
    let (tx, rx) = mpsc::channel();
    let peer = thread::spawn(move || {
        for _ in 0..2 {
            let key = read_request(&mut master).unwrap();
            let v = leaf(&full, &key);
            tx.send(key).unwrap();
            master.write_all(format!("{v}\n\x04").as_bytes()).unwrap();
        }
    });
    let name = context::read_key_with(&p.path, "/name", opts(5000)).unwrap();
    assert_eq!(name, serde_json::json!("worker-0"));
    let ud = context::read_key_with(&p.path, "/meta/cloudinit-user-data", opts(5000)).unwrap();
    assert_eq!(ud, serde_json::json!("I2Nsb3VkLWNvbmZpZwo="));
    peer.join().unwrap();
    assert_eq!(rx.recv().unwrap(), "/name");
    assert_eq!(rx.recv().unwrap(), "/meta/cloudinit-user-data");
}

#[test]
fn slow_peer_in_pieces() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    let peer = thread::spawn(move || {
        read_request(&mut master).unwrap();
        thread::sleep(Duration::from_millis(400));
        let reply = format!("{CONTEXT}\n\x04");
        for chunk in reply.as_bytes().chunks(97) {
            master.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(15));
        }
    });
    let started = Instant::now();
    let ctx = context::read_context_with(&p.path, opts(5000)).expect("slow peer answers");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(ctx.name, "worker-0");
    peer.join().unwrap();
}

#[test]
fn no_peer_times_out_with_no_answer() {
    let p = pty();
    let started = Instant::now();
    let err = context::read_context_with(&p.path, opts(800)).unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        ContextError::NoAnswer { path, waited } => {
            assert_eq!(path, &p.path);
            assert!(*waited >= Duration::from_millis(500), "{waited:?}");
        }
        other => panic!("expected NoAnswer, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(3),
        "deadline respected: {elapsed:?}"
    );
    assert!(err.to_string().contains(&p.path.display().to_string()));
}

#[test]
fn missing_device_is_io_error() {
    let err = context::read_context_with(std::path::Path::new("/nonexistent/ttyS9"), opts(200))
        .unwrap_err();
    assert!(
        matches!(err, ContextError::Io { op: "open", .. }),
        "{err:?}"
    );
}

#[test]
fn garbage_then_good_answer_on_retry() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    let peer = thread::spawn(move || {
        read_request(&mut master).unwrap();
        master.write_all(b"\xff\xfegarbage\n\x04").unwrap();
        read_request(&mut master).unwrap();
        master
            .write_all(format!("{CONTEXT}\n\x04").as_bytes())
            .unwrap();
    });
    let ctx = context::read_context_with(&p.path, opts(5000)).expect("retry succeeds");
    assert_eq!(ctx.uuid, "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff");
    peer.join().unwrap();
}

#[test]
fn not_ready_until_the_deadline_is_a_clear_error() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    thread::spawn(move || {
        while read_request(&mut master).is_some() {
            if master.write_all(b"context not ready\n\x04").is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let err = context::read_context_with(&p.path, opts(700)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "bounded wait");
    match &err {
        ContextError::NotReady {
            attempts,
            last,
            waited,
            ..
        } => {
            assert!(*attempts >= 2, "retried: {err}");
            assert_eq!(last, "context not ready");
            assert!(*waited >= Duration::from_millis(500), "{err}");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(err.to_string().contains("was not ready"), "{err}");
}

/// The early-boot reply real hosts send (and the emulator's `context not ready` fault): a few
/// status lines, one unanswered request, then the context. Tolerated within the deadline.
#[test]
fn not_ready_replies_then_the_context_are_tolerated() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    let peer = thread::spawn(move || {
        for _ in 0..3 {
            read_request(&mut master).unwrap();
            master.write_all(b"context not ready\n\x04").unwrap();
        }
        // Silent once: the attempt times out, the next one is answered.
        read_request(&mut master).unwrap();
        read_request(&mut master).unwrap();
        master
            .write_all(format!("{CONTEXT}\n\x04").as_bytes())
            .unwrap();
    });
    let ctx = context::read_context_with(&p.path, opts(6000)).expect("tolerated");
    assert_eq!(ctx.name, "worker-0");
    peer.join().unwrap();
}

#[test]
fn truncated_json_is_reported() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    thread::spawn(move || {
        while read_request(&mut master).is_some() {
            // Half a document and then silence: the line never ends.
            if master.write_all(&CONTEXT.as_bytes()[..120]).is_err() {
                break;
            }
        }
    });
    let err = context::read_context_with(&p.path, one_attempt(1500)).unwrap_err();
    match err {
        ContextError::Truncated { got, .. } => assert_eq!(got, 120),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn truncated_line_with_newline_is_reported() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    thread::spawn(move || {
        while read_request(&mut master).is_some() {
            let cut = format!("{}\n\x04", &CONTEXT[..200]);
            if master.write_all(cut.as_bytes()).is_err() {
                break;
            }
        }
    });
    let err = context::read_context_with(&p.path, one_attempt(3000)).unwrap_err();
    assert!(matches!(err, ContextError::Truncated { .. }), "{err:?}");
}

#[test]
fn stale_bytes_are_flushed() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    // An abandoned reply from an earlier request is still queued on the port.
    master
        .write_all(b"{\"uuid\":\"stale\",\"name\":\"stale\"}\n\x04")
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    let peer = thread::spawn(move || {
        read_request(&mut master).unwrap();
        master
            .write_all(format!("{CONTEXT}\n\x04").as_bytes())
            .unwrap();
    });
    let ctx = context::read_context_with(&p.path, opts(5000)).unwrap();
    assert_eq!(ctx.name, "worker-0", "the stale reply must not be taken");
    peer.join().unwrap();
}

#[test]
fn leading_eot_from_previous_reply_is_ignored() {
    let p = pty();
    let mut master = p.master.try_clone().unwrap();
    let peer = thread::spawn(move || {
        read_request(&mut master).unwrap();
        master
            .write_all(format!("\x04{CONTEXT}\r\n\x04").as_bytes())
            .unwrap();
    });
    let ctx = context::read_context_with(&p.path, opts(5000)).unwrap();
    assert_eq!(ctx.name, "worker-0");
    peer.join().unwrap();
}

#[test]
fn unix_socket_like_the_emulator() {
    let dir = tempfile_dir();
    let sock = dir.join("ctx.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 4];
        s.read_exact(&mut req).unwrap();
        assert_eq!(&req, b"<\n\n>");
        s.write_all(format!("{CONTEXT}\n\x04").as_bytes()).unwrap();
    });
    let ctx = context::read_context_with(&sock, opts(5000)).unwrap();
    assert_eq!(ctx.name, "worker-0");
    peer.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cs-ctx-test-{}-{:?}",
        std::process::id(),
        thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
