//! The OpenSSH transport against a real sshd on 127.0.0.1 (a private instance with its own
//! config, host key and authorized_keys; nothing of the machine's SSH setup is used or changed).

use imgbuild::hostkey::HostKey;
use imgbuild::transport::{OpenSsh, Target, Transport, TransportError};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[path = "support/sshd.rs"]
mod sshd;
use sshd::{alive, free_port, master_pid, Sshd};

/// The tests' "guest" is this machine: they share its /tmp/imgbuild (and uploads' temp names
/// carry the process id), so the tests that talk to sshd run one at a time.
static GUEST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip_or_fail(why: &str) -> bool {
    if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {why}");
        return true;
    }
    panic!("{why} (scripts/install-deps installs openssh-server; set CLOUDSIGMA_K8S_ALLOW_SKIP=1 to skip)");
}

fn start_sshd(dir: &Path, pubkey: &str) -> Option<Sshd> {
    match sshd::start_sshd(dir, pubkey) {
        Ok(s) => Some(s),
        Err(why) => {
            skip_or_fail(&why);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_transport_runs_scripts_uploads_and_verifies_against_real_sshd() {
    let _guest = GUEST.lock().await;
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
        host_key: sshd.host_key.clone(),
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

    // upload_hashed: one session that writes the file once, in place, and returns the guest's
    // sha256 of `dest` — over an existing file, into a new directory, leaving no temp file
    let hashed_dest = dir.path().join("hashed/sub/payload");
    std::fs::create_dir_all(hashed_dest.parent().unwrap()).unwrap();
    std::fs::write(&hashed_dest, "old content").unwrap();
    for (name, body) in [("a.bin", vec![7u8; 300_000]), ("b.bin", b"short".to_vec())] {
        let src = dir.path().join(name);
        std::fs::write(&src, &body).unwrap();
        let got = t
            .upload_hashed(
                &target,
                &src,
                &hashed_dest.display().to_string(),
                "0751",
                Duration::from_secs(30),
            )
            .await
            .expect("upload_hashed");
        assert_eq!(got, imgbuild::recipe::sha256_file(&src).unwrap(), "{name}");
        assert_eq!(std::fs::read(&hashed_dest).unwrap(), body, "{name}");
        assert_eq!(
            std::fs::metadata(&hashed_dest)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o751
        );
        let left: Vec<_> = std::fs::read_dir(hashed_dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("payload")], "{name}");
    }
    // upload_many: several files in one session (header + exact byte count each), each with
    // its mode, over an existing file and into new directories; the sums in order, no temp file
    let many_dir = dir.path().join("many");
    std::fs::create_dir_all(many_dir.join("old")).unwrap();
    std::fs::write(many_dir.join("old/x"), "previous").unwrap();
    let bodies: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "old/x".into(),
            (0..70_000u32).map(|i| (i % 13) as u8).collect(),
            "0644",
        ),
        (
            "new/deep/y".into(),
            b"line\n\nwith a newline at the end\n".to_vec(),
            "0755",
        ),
        ("new/empty".into(), Vec::new(), "0600"),
        ("z with space".into(), vec![0u8; 5], "0640"),
    ];
    let mut srcs = Vec::new();
    for (i, (_, body, _)) in bodies.iter().enumerate() {
        let p = dir.path().join(format!("many-src-{i}"));
        std::fs::write(&p, body).unwrap();
        srcs.push(p);
    }
    let dests: Vec<String> = bodies
        .iter()
        .map(|(rel, _, _)| many_dir.join(rel).display().to_string())
        .collect();
    let plan: Vec<(&Path, &str, &str)> = bodies
        .iter()
        .enumerate()
        .map(|(i, (_, _, mode))| (srcs[i].as_path(), dests[i].as_str(), *mode))
        .collect();
    let sums = t
        .upload_many(&target, &plan, Duration::from_secs(30))
        .await
        .expect("upload_many");
    assert_eq!(sums.len(), bodies.len());
    for (i, (rel, body, mode)) in bodies.iter().enumerate() {
        assert_eq!(
            sums[i],
            imgbuild::recipe::sha256_file(&srcs[i]).unwrap(),
            "{rel}"
        );
        assert_eq!(&std::fs::read(many_dir.join(rel)).unwrap(), body, "{rel}");
        assert_eq!(
            std::fs::metadata(many_dir.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            u32::from_str_radix(mode, 8).unwrap(),
            "{rel}"
        );
    }
    let temps = std::process::Command::new("find")
        .arg(&many_dir)
        .args(["-name", ".imgbuild-upload.*"])
        .output()
        .unwrap();
    assert!(temps.stdout.is_empty(), "{temps:?}");
    // a source that cannot be read fails before anything is sent
    let missing = dir.path().join("no-such-file");
    assert!(t
        .upload_many(
            &target,
            &[(missing.as_path(), dests[0].as_str(), "0644")],
            Duration::from_secs(30)
        )
        .await
        .is_err());
    assert_eq!(
        &std::fs::read(many_dir.join("old/x")).unwrap(),
        &bodies[0].1
    );

    // a path that cannot be written is an error, not a digest
    let blocked = dir.path().join("hashed/sub/payload/not-a-dir");
    assert!(t
        .upload_hashed(
            &target,
            &src,
            &blocked.display().to_string(),
            "0644",
            Duration::from_secs(30),
        )
        .await
        .is_err());

    drop(sshd);
    // the scripts' upload dir on "the guest" (this machine here)
    let _ = std::fs::remove_dir_all("/tmp/imgbuild");
}

/// A secret reaches a script through a 0600 file under `$IMGBUILD_SECRETS` (issue #10 item 3):
/// the value goes over the channel's stdin, so it is on no command line (the script's env holds
/// only the directory), and nothing the guest prints about the delivery contains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_is_delivered_on_stdin_as_a_0600_file_a_script_reads() {
    use imgbuild::secrets::{SecretArgs, ENV_DIR, GUEST_DIR};
    use std::os::unix::fs::PermissionsExt;
    const VALUE: &str = "tok-'quoted' $HOME `x`";
    let _guest = GUEST.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let t = OpenSsh::new("imgbuild-test")
        .await
        .expect("ssh-keygen works");
    let Some(sshd) = start_sshd(dir.path(), &t.public_key()) else {
        return;
    };
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: "root".into(),
        host_key: sshd.host_key.clone(),
    };
    t.wait_ready(&target, Duration::from_secs(30), &CancellationToken::new())
        .await
        .expect("SSH comes up");
    let src = dir.path().join("token");
    std::fs::write(&src, VALUE).unwrap();
    let secrets = SecretArgs::parse(&[format!("registry_token=file:{}", src.display())])
        .unwrap()
        .read()
        .unwrap();
    t.put_secrets(&target, &secrets, Duration::from_secs(30))
        .await
        .expect("secrets delivered");
    let file = Path::new(GUEST_DIR).join("registry_token");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(GUEST_DIR).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let out_file = dir.path().join("seen.txt");
    let script = dir.path().join("10-login.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\ncat \"$IMGBUILD_SECRETS/registry_token\" > {}\necho done\n",
            out_file.display()
        ),
    )
    .unwrap();
    let lines = Mutex::new(Vec::<String>::new());
    let sink = |l: &str| lines.lock().unwrap().push(l.to_string());
    let env = vec![(ENV_DIR.to_string(), GUEST_DIR.to_string())];
    t.run_script(&target, &script, &env, Duration::from_secs(30), &sink)
        .await
        .expect("script runs");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), VALUE);
    let said = lines.lock().unwrap().join("\n");
    assert!(!said.contains("tok-"), "{said}");

    drop(sshd);
    let _ = std::fs::remove_dir_all("/run/imgbuild");
    let _ = std::fs::remove_dir_all("/tmp/imgbuild");
}

/// Issue 21 item 4: whoever answers first on the build server's address must get nothing. A
/// rogue sshd (real OpenSSH, its own host key) listens where the build expects its server, and
/// would even accept the build's login key; the build knows its server's host key (it made it),
/// so SSH stops at the key exchange: no login, no command, no secret, and an error naming the
/// mismatch at once rather than after the SSH wait. With trust on first use (the old
/// `StrictHostKeyChecking=accept-new`) the rogue ran the command and received the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_host_key_gets_no_login_no_command_and_no_secret() {
    use imgbuild::secrets::{SecretArgs, GUEST_DIR};
    let _guest = GUEST.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let t = OpenSsh::new("imgbuild-test")
        .await
        .expect("ssh-keygen works");
    let Some(rogue) = start_sshd(dir.path(), &t.public_key()) else {
        return;
    };
    let ours = HostKey::generate().unwrap();
    let target = Target {
        host: "127.0.0.1".into(),
        port: rogue.port,
        user: "root".into(),
        host_key: ours.public().to_string(),
    };
    let mismatch = |r: Result<(), TransportError>, what: &str| match r {
        Err(TransportError::HostKeyMismatch(m)) => {
            assert!(m.contains(&format!("127.0.0.1:{}", rogue.port)), "{m}");
            assert!(
                TransportError::HostKeyMismatch(m.clone())
                    .to_string()
                    .starts_with("host key mismatch"),
                "{m}"
            );
        }
        other => panic!("{what}: expected a host key mismatch, got {other:?}"),
    };

    let start = std::time::Instant::now();
    let r = t
        .wait_ready(&target, Duration::from_secs(60), &CancellationToken::new())
        .await;
    mismatch(r, "wait_ready");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "a mismatch ends the SSH wait at once, took {:?}",
        start.elapsed()
    );

    let marker = dir.path().join("rogue-ran-this");
    let script = dir.path().join("10-step.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash
touch {}
",
            marker.display()
        ),
    )
    .unwrap();
    let sink = |_: &str| {};
    let r = t
        .run_script(&target, &script, &[], Duration::from_secs(30), &sink)
        .await;
    mismatch(r, "run_script");

    let src = dir.path().join("token");
    std::fs::write(&src, "rogue-must-not-see-this").unwrap();
    let secrets = SecretArgs::parse(&[format!(
        "rogue_probe={}",
        format_args!("file:{}", src.display())
    )])
    .unwrap()
    .read()
    .unwrap();
    let r = t
        .put_secrets(&target, &secrets, Duration::from_secs(30))
        .await;
    mismatch(r, "put_secrets");

    assert!(!marker.exists(), "the rogue server ran the build's command");
    assert!(
        !Path::new(GUEST_DIR).join("rogue_probe").exists(),
        "the rogue server received the secret"
    );
    let log = std::fs::read_to_string(&rogue.log).unwrap_or_default();
    assert!(
        !log.contains("Accepted publickey"),
        "the rogue server accepted a login:\n{log}"
    );
    // the known_hosts file pins exactly our key for the address
    let kh = std::fs::read_to_string(t.private_dir().join("known_hosts")).unwrap();
    let want = format!("[127.0.0.1]:{} {}", rogue.port, ours.public());
    assert_eq!(kh.trim(), want.trim());
    drop(rogue);
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
        host_key: HostKey::generate().unwrap().public().to_string(),
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

/// `$SSH_CONNECTION` as a step sees it: client address *and port* — one port = one connection.
async fn connection_of(t: &OpenSsh, target: &Target, dir: &Path) -> String {
    let script = dir.join("conn.sh");
    std::fs::write(&script, "#!/bin/bash\necho \"conn=$SSH_CONNECTION\"\n").unwrap();
    let lines = Mutex::new(Vec::<String>::new());
    let sink = |l: &str| lines.lock().unwrap().push(l.to_string());
    t.run_script(target, &script, &[], Duration::from_secs(30), &sink)
        .await
        .expect("script runs");
    let got = lines.into_inner().unwrap();
    got.iter()
        .find_map(|l| l.strip_prefix("conn="))
        .unwrap_or_else(|| panic!("no SSH_CONNECTION in {got:?}"))
        .to_string()
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_build_survives_a_reboot_and_is_closed() {
    let _guest = GUEST.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let t = OpenSsh::new("imgbuild-test").await.unwrap();
    assert!(t.multiplexing());
    let Some(mut sshd) = start_sshd(dir.path(), &t.public_key()) else {
        return;
    };
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: "root".into(),
        host_key: sshd.host_key.clone(),
    };
    let cancel = CancellationToken::new();
    t.wait_ready(&target, Duration::from_secs(30), &cancel)
        .await
        .unwrap();

    // the key and the control socket live in the private 0700 dir
    use std::os::unix::fs::PermissionsExt;
    let private = t.private_dir().to_path_buf();
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let sockets = t.control_sockets();
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    assert!(sockets[0].starts_with(&private));
    let master = master_pid(&sockets[0]).expect("a master answers");

    // every operation — scripts (two sessions each), uploads, checksums — on that one connection
    let first = connection_of(&t, &target, dir.path()).await;
    let src = dir.path().join("f.txt");
    std::fs::write(&src, "x").unwrap();
    let dest = dir.path().join("up/f.txt").display().to_string();
    t.upload(&target, &src, &dest, "0644", Duration::from_secs(30))
        .await
        .unwrap();
    t.remote_sha256(&target, &dest).await.unwrap();
    assert_eq!(connection_of(&t, &target, dir.path()).await, first);
    assert_eq!(master_pid(&sockets[0]), Some(master));

    // a reboot kills the connection (and so the master) from the far side: the next
    // operation connects again, through a new master
    sshd.restart();
    eventually("the master notices its connection is gone", || {
        !alive(master)
    })
    .await;
    t.wait_ready(&target, Duration::from_secs(30), &cancel)
        .await
        .unwrap();
    let second = connection_of(&t, &target, dir.path()).await;
    assert_ne!(second, first);
    let master2 = master_pid(&t.control_sockets()[0]).expect("a new master");
    assert_ne!(master2, master);

    // a master killed outright leaves a stale socket: replaced by the next connection
    sshd::kill_tree(master2);
    eventually("the killed master is gone", || !alive(master2)).await;
    let third = connection_of(&t, &target, dir.path()).await;
    assert_ne!(third, second);

    // close(): the master exits and its socket is removed; a later operation reconnects
    let master3 = master_pid(&t.control_sockets()[0]).unwrap();
    t.close().await;
    assert!(t.control_sockets().is_empty());
    eventually("the master exits on close", || !alive(master3)).await;
    assert_ne!(connection_of(&t, &target, dir.path()).await, third);

    // drop (every exit path: errors, cancellation, signals) closes it as well and removes the
    // private dir with the key and the socket
    let master4 = master_pid(&t.control_sockets()[0]).unwrap();
    drop(t);
    eventually("the master exits on drop", || !alive(master4)).await;
    assert!(!private.exists());
    drop(sshd);
    let _ = std::fs::remove_dir_all("/tmp/imgbuild");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_multiplexing_every_operation_connects_anew() {
    let _guest = GUEST.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let t = OpenSsh::new("imgbuild-test")
        .await
        .unwrap()
        .without_multiplexing();
    assert!(!t.multiplexing());
    let Some(sshd) = start_sshd(dir.path(), &t.public_key()) else {
        return;
    };
    let target = Target {
        host: "127.0.0.1".into(),
        port: sshd.port,
        user: "root".into(),
        host_key: sshd.host_key.clone(),
    };
    t.wait_ready(&target, Duration::from_secs(30), &CancellationToken::new())
        .await
        .unwrap();
    let a = connection_of(&t, &target, dir.path()).await;
    let b = connection_of(&t, &target, dir.path()).await;
    assert_ne!(a, b);
    assert!(t.control_sockets().is_empty());
    drop(sshd);
    let _ = std::fs::remove_dir_all("/tmp/imgbuild");
}
