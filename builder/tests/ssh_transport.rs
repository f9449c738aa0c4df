//! The OpenSSH transport against a real sshd on 127.0.0.1 (a private instance with its own
//! config, host key and authorized_keys; nothing of the machine's SSH setup is used or changed).

use imgbuild::transport::{OpenSsh, Target, Transport, TransportError};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Sshd {
    child: Child,
    port: u16,
}
impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skip_or_fail(why: &str) -> bool {
    if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {why}");
        return true;
    }
    panic!("{why} (scripts/install-deps installs openssh-server; set CLOUDSIGMA_K8S_ALLOW_SKIP=1 to skip)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sshd(dir: &Path, pubkey: &str) -> Option<Sshd> {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(sshd) = sshd else {
        skip_or_fail("sshd not installed");
        return None;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("the sshd test needs root (sshd's privilege separation)");
        return None;
    }
    std::fs::create_dir_all("/run/sshd").ok();
    let host = dir.join("host_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(dir.join("authorized_keys"), format!("{pubkey}\n")).unwrap();
    let port = free_port();
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {h}\nAuthorizedKeysFile {a}\nPidFile {p}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n",
            h = host.display(),
            a = dir.join("authorized_keys").display(),
            p = dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let child = Command::new(sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(Sshd { child, port })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_transport_runs_scripts_uploads_and_verifies_against_real_sshd() {
    let dir = tempfile::tempdir().unwrap();
    let t = OpenSsh::new("imgbuild-test")
        .await
        .expect("ssh-keygen works");
    assert!(t.public_key().starts_with("ssh-ed25519 "));
    let Some(sshd) = start_sshd(dir.path(), &t.public_key()) else {
        return;
    };
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: "root".into(),
    };
    let cancel = CancellationToken::new();
    t.wait_ready(&target, Duration::from_secs(30), &cancel)
        .await
        .expect("SSH comes up");

    // a script gets the variables in its environment (quoted safely) and its output streams
    let out_file = dir.path().join("env.txt");
    let script = dir.path().join("10-step.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\necho \"line one\"\necho \"line two\" >&2\nprintf '%s' \"$TRICKY\" > {}\n",
            out_file.display()
        ),
    )
    .unwrap();
    let lines = Mutex::new(Vec::<String>::new());
    let sink = |l: &str| lines.lock().unwrap().push(l.to_string());
    let env = vec![(
        "TRICKY".to_string(),
        "it's \"quoted\" $HOME `x`".to_string(),
    )];
    t.run_script(&target, &script, &env, Duration::from_secs(30), &sink)
        .await
        .expect("script runs");
    let got = lines.lock().unwrap().clone();
    assert!(
        got.contains(&"line one".to_string()) && got.contains(&"line two".to_string()),
        "{got:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "it's \"quoted\" $HOME `x`"
    );

    // a failing script is an error naming it
    let bad = dir.path().join("20-bad.sh");
    std::fs::write(&bad, "#!/bin/bash\nfalse\necho unreachable\n").unwrap();
    match t
        .run_script(&target, &bad, &[], Duration::from_secs(30), &sink)
        .await
    {
        Err(TransportError::Failed(m)) => assert!(m.contains("20-bad.sh"), "{m}"),
        other => panic!("expected failure, got {other:?}"),
    }

    // upload with mode, then the remote sha256 matches the local one
    let src = dir.path().join("payload.bin");
    std::fs::write(
        &src,
        (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let dest = dir.path().join("installed/bin/payload");
    t.upload(
        &target,
        &src,
        &dest.display().to_string(),
        "0750",
        Duration::from_secs(30),
    )
    .await
    .expect("upload");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o750
    );
    let remote = t
        .remote_sha256(&target, &dest.display().to_string())
        .await
        .unwrap();
    assert_eq!(remote, imgbuild::recipe::sha256_file(&src).unwrap());

    drop(sshd);
    // the scripts' upload dir on "the guest" (this machine here)
    let _ = std::fs::remove_dir_all("/tmp/imgbuild");
}

#[tokio::test]
async fn wait_ready_gives_up_at_its_deadline_and_on_cancel() {
    let t = OpenSsh::new("imgbuild-test")
        .await
        .expect("ssh-keygen works");
    let target = Target {
        host: "127.0.0.1".into(),
        port: free_port(),
        user: "nobody".into(),
    };
    let start = std::time::Instant::now();
    let r = t
        .wait_ready(&target, Duration::from_secs(2), &CancellationToken::new())
        .await;
    assert!(matches!(r, Err(TransportError::Timeout(..))), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(15));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = t
        .wait_ready(&target, Duration::from_secs(60), &cancel)
        .await;
    assert!(matches!(r, Err(TransportError::Cancelled)), "{r:?}");
}
