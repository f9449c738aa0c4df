//! File safety and `--root` (issue #10): the real binary under a temporary root.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::symlink;

const MARKER: &str = "/run/cluster-api/bootstrap-success.complete";

fn phase<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name}: {st:#}"))
}

/// `--root` without `--execute` writes only under the root: no bootcmd, runcmd or node tool
/// (sfdisk, mkfs, mount, systemctl) runs, although they are on PATH.
#[test]
fn root_without_execute_runs_nothing() {
    let n = Node::new(data("kubeadm-init-disks.yaml").as_bytes());
    n.fake_disk("sdb");
    let out = n.run_dry(&[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), n.log());
    assert_eq!(n.stub_calls(), Vec::<String>::new(), "nothing executed");
    // Files are written under the root; no script, no marker, no stamp.
    assert!(n.p("/etc/hostname").exists());
    assert!(!n.p("/var/lib/cloudsigma-agent/scripts/runcmd").exists());
    assert!(!n.marker());
    assert!(!n
        .p(&format!("/var/lib/cloudsigma-agent/instance-{UUID}.done"))
        .exists());
    let st = n.status();
    for name in ["disk_setup", "fs_setup", "runcmd", "marker", "done_stamp"] {
        let p = phase(&st, name);
        assert_eq!(p["result"], "skipped", "{name}: {p}");
        assert!(
            p["detail"].as_str().unwrap().contains("--execute"),
            "{name}: {p}"
        );
    }
    // mounts: /etc/fstab is written, but neither daemon-reload nor mount -a ran.
    assert!(n.read("/etc/fstab").contains("comment=cloudconfig"));
    assert!(n.log().contains("mount -a not run"));

    // bootcmd (every boot) does not run either.
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let out = n.run_dry(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(n.stub_calls(), Vec::<String>::new());
    let st = n.status();
    assert_eq!(phase(&st, "bootcmd")["result"], "skipped");
    assert!(!n.p("/var/lib/cloudsigma-agent/scripts/bootcmd").exists());
}

/// write_files through a symlink writes its target, as cloud-init's util.write_file (an
/// open(2) of the path) does: systemd-resolved's /etc/resolv.conf stays a link.
#[test]
fn write_files_follow_a_symlink_like_cloud_init() {
    let n = Node::new(
        b"#cloud-config\nwrite_files:\n  - path: /etc/resolv.conf\n    content: |\n      nameserver 10.0.0.2\n    permissions: '0644'\n",
    );
    fs::create_dir_all(n.p("/run/systemd/resolve")).unwrap();
    fs::write(
        n.p("/run/systemd/resolve/stub-resolv.conf"),
        "nameserver 127.0.0.53\n",
    )
    .unwrap();
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        n.p("/etc/resolv.conf"),
    )
    .unwrap();
    n.run(&[]);
    assert_eq!(
        n.status()["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "write_files")
            .unwrap()["result"],
        "ok"
    );
    let link = fs::symlink_metadata(n.p("/etc/resolv.conf")).unwrap();
    assert!(link.file_type().is_symlink(), "the link stays a link");
    assert_eq!(
        n.read("/run/systemd/resolve/stub-resolv.conf"),
        "nameserver 10.0.0.2\n",
        "its target (inside the root) got the content"
    );
}

/// A user's `~/.ssh/authorized_keys` that is a symlink (to a root-owned file) is neither read
/// nor replaced by the agent running as root; nor is a `~/.ssh` that links elsewhere.
#[test]
fn authorized_keys_links_are_never_followed() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let victim = n.dir.path().join("shadow");
    fs::write(&victim, "root:$6$secret:19000:0:99999:7:::\n").unwrap();
    fs::create_dir_all(n.p("/home/debian/.ssh")).unwrap();
    symlink(&victim, n.p("/home/debian/.ssh/authorized_keys")).unwrap();
    n.run_ok(&[]);
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "root:$6$secret:19000:0:99999:7:::\n",
        "the link's target is untouched"
    );
    assert!(
        fs::symlink_metadata(n.p("/home/debian/.ssh/authorized_keys"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let warnings = n.status()["warnings"].to_string();
    assert!(warnings.contains("not followed"), "{warnings}");
    // Root's own keys are still installed.
    assert!(n
        .read("/root/.ssh/authorized_keys")
        .contains("ssh-ed25519 AAAAC3 test"));

    // ~/.ssh itself a link to a directory the user does not own.
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let elsewhere = n.dir.path().join("etc-like");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(n.p("/home/debian")).unwrap();
    symlink(&elsewhere, n.p("/home/debian/.ssh")).unwrap();
    n.run_ok(&[]);
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written there"
    );
    assert!(n.status()["warnings"].to_string().contains("not followed"));
}

/// The stamp is written before runcmd starts. An agent killed after the data's marker but
/// before its own "done" (the window the issue names) must not run kubeadm join again on the
/// next boot; --force does.
#[test]
fn a_crash_after_the_commands_started_never_reruns_them() {
    let n = Node::new(
        format!(
            "#cloud-config\nruncmd:\n  - kubeadm join --config /run/kubeadm/x.yaml\n  - mkdir -p /run/cluster-api && echo success > {MARKER}\n  - kill -9 $PPID\n"
        )
        .as_bytes(),
    );
    let out = n.run(&[]);
    assert_eq!(out.status.code(), None, "the agent was killed: {}", n.log());
    let stamp = n.read(&format!("/var/lib/cloudsigma-agent/instance-{UUID}.done"));
    assert!(stamp.contains("state=started"), "{stamp}");
    // Reboot: /run is a tmpfs.
    fs::remove_dir_all(n.p("/run/cluster-api")).unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", n.log());
    let joins = || {
        n.stub_calls()
            .iter()
            .filter(|c| c.starts_with("kubeadm join"))
            .count()
    };
    assert_eq!(joins(), 1, "kubeadm join ran once");
    let st = n.status();
    assert_eq!(st["error"]["step"], "bootstrap");
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("not run twice") && msg.contains("--force"),
        "{msg}"
    );
    assert!(!n.marker());
    // An operator who checked the node re-runs on purpose (the kill line is the data's own).
    n.run(&["--force"]);
    assert_eq!(joins(), 2);
}

/// A runcmd that fails cleanly removes the stamp: the next boot retries (as before).
#[test]
fn a_failed_run_leaves_no_stamp() {
    let n = Node::new(b"#cloud-config\nruncmd:\n  - kubeadm join x\n  - exit 3\n");
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!n
        .p(&format!("/var/lib/cloudsigma-agent/instance-{UUID}.done"))
        .exists());
}

/// A disk cloned from a bootstrapped server carries its stamp. On the clone, with a readable
/// context (another uuid) the bootstrap runs; with an unreadable one the stamp counts only on
/// the machine that wrote it.
#[test]
fn a_cloned_disks_stamp_is_not_this_instances() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let dmi = n.p("/sys/class/dmi/id/product_uuid");
    fs::create_dir_all(dmi.parent().unwrap()).unwrap();
    fs::write(&dmi, "AAAAAAAA-1111-2222-3333-444444444444\n").unwrap();
    n.run_ok(&[]);
    let stamp = n.read(&format!("/var/lib/cloudsigma-agent/instance-{UUID}.done"));
    assert!(
        stamp.contains("state=done") && stamp.contains("machine=aaaaaaaa-1111"),
        "{stamp}"
    );

    // The clone boots on another machine and its context cannot be read: not "bootstrapped".
    fs::write(&dmi, "BBBBBBBB-1111-2222-3333-444444444444\n").unwrap();
    fs::remove_dir_all(n.p("/run/cluster-api")).unwrap();
    fs::rename(&n.context, n.dir.path().join("ctx.saved")).unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", n.log());
    assert_eq!(n.status()["error"]["step"], "context");
    assert!(!n.marker());

    // On the machine that wrote it, the same unreadable context is a known reboot: skipped.
    fs::write(&dmi, "AAAAAAAA-1111-2222-3333-444444444444\n").unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", n.log());
    assert_eq!(n.status()["result"], "skipped");

    // The clone with its own (readable) context: another uuid, so the full bootstrap runs.
    fs::write(&dmi, "BBBBBBBB-1111-2222-3333-444444444444\n").unwrap();
    let mut ctx: serde_json::Value =
        serde_json::from_slice(&fs::read(n.dir.path().join("ctx.saved")).unwrap()).unwrap();
    ctx["uuid"] = serde_json::json!("2c6fb9e3-0000-4000-8000-000000000002");
    fs::write(&n.context, serde_json::to_vec(&ctx).unwrap()).unwrap();
    n.run_ok(&[]);
    assert_eq!(n.status()["result"], "success");
    assert_eq!(
        n.stub_calls()
            .iter()
            .filter(|c| c.starts_with("kubeadm join"))
            .count(),
        2
    );
}

/// `/etc/hostname` bind-mounted over (as container runtimes and namespace tests do): rename(2)
/// onto a mount point fails with EBUSY, so the agent writes it in place, as cloud-init does.
/// Needs a private mount namespace (`unshare -m`, root): skipped where that is not allowed.
#[test]
fn bind_mounted_hostname_is_written_in_place() {
    let probe = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!(
            "unshare -m not permitted here: skipping (the EBUSY path is unit-tested in fsutil)"
        );
        return;
    }
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let outside = n.dir.path().join("hostname.outside");
    fs::write(&outside, "old-name\n").unwrap();
    fs::write(n.p("/etc/hostname"), "").unwrap();
    let path = format!(
        "{}:{}",
        n.stub_dir.display(),
        std::env::var("PATH").unwrap()
    );
    // The mount exists only in the agent's namespace: nothing to clean up on the host. The
    // host's mount(8) does it; the agent then runs with the stubs (a stub `mount` among them)
    // first on PATH.
    let out = std::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$1\" \"$2/etc/hostname\" && p=\"$3\" && shift 3 && PATH=\"$p\" exec \"$@\"",
            "sh",
        ])
        .arg(&outside)
        .arg(&n.root)
        .arg(path)
        .arg(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .arg("--root")
        .arg(&n.root)
        .arg("--context-file")
        .arg(&n.context)
        .arg("--net-fixture")
        .arg(&n.fixture)
        .arg("--execute")
        .env("STUB_LOG", &n.stub_log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stderr(&out), n.log());
    assert_eq!(
        fs::read_to_string(&outside).unwrap(),
        "worker-0\n",
        "the bind-mounted file got the name, in place"
    );
    assert!(
        !n.all_files().iter().any(|f| f.contains(".cs-agent-tmp")),
        "no temporary file left"
    );
}

/// A `--force` re-run that fails before its commands start leaves the earlier success's stamp:
/// the next boot must still know this instance joined.
#[test]
fn a_failed_forced_rerun_before_runcmd_keeps_the_done_stamp() {
    let n = Node::new(data("kubeadm-init-disks.yaml").as_bytes());
    n.fake_disk("sdb");
    n.run_ok(&[]);
    let stamp = format!("/var/lib/cloudsigma-agent/instance-{UUID}.done");
    assert!(n.read(&stamp).contains("state=done"));
    let out = n.run_env(&["--force"], &[("STUB_FAIL", "mount")]);
    assert_eq!(out.status.code(), Some(1), "{}", n.log());
    assert_eq!(n.status()["error"]["step"], "mounts");
    assert!(n.read(&stamp).contains("state=done"), "the stamp survived");
}

/// Issue 21 item 5: the root agent's own files (the join's output, its log) are never written
/// through a planted symlink, and an existing file is made private.
#[test]
fn the_output_file_and_the_log_are_never_redirected() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let target = n.dir.path().join("victim");
    fs::write(&target, "untouched\n").unwrap();
    fs::create_dir_all(n.p("/var/log")).unwrap();
    symlink(&target, n.p("/var/log/cloudsigma-bootstrap-output.log")).unwrap();
    let out = n.run(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", n.log());
    let st = n.status();
    let msg = st["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("cloudsigma-bootstrap-output.log: is a symbolic link: refused"),
        "{msg}"
    );
    // bootcmd is the first script to write there.
    assert_eq!(st["error"]["step"], "bootcmd");
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched\n");
    assert!(n.stub_calls().is_empty(), "nothing ran");

    // The log: a planted link is refused (a warning, the run goes on), its target untouched.
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    fs::create_dir_all(n.p("/var/log")).unwrap();
    symlink(&target, n.p("/var/log/cloudsigma-bootstrap.log")).unwrap();
    n.run_ok(&[]);
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched\n");
    let w = n.status()["warnings"][0].as_str().unwrap().to_string();
    assert!(
        w.starts_with("cannot open log file ") && w.contains("symbolic link: refused"),
        "{w}"
    );

    // Existing files from an older agent (0644) become 0600.
    use std::os::unix::fs::PermissionsExt;
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    fs::create_dir_all(n.p("/var/log")).unwrap();
    for f in [
        "/var/log/cloudsigma-bootstrap.log",
        "/var/log/cloudsigma-bootstrap-output.log",
    ] {
        fs::write(n.p(f), "old\n").unwrap();
        fs::set_permissions(n.p(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    n.run_ok(&[]);
    for f in [
        "/var/log/cloudsigma-bootstrap.log",
        "/var/log/cloudsigma-bootstrap-output.log",
    ] {
        assert_eq!(n.mode(f), 0o600, "{f}");
        assert!(n.read(f).starts_with("old\n"), "appended: {f}");
    }
}

/// A FIFO planted as the output file or the log never blocks the boot (no reader: the open
/// would wait forever without O_NONBLOCK).
#[test]
fn a_planted_fifo_does_not_block_the_boot() {
    use std::time::{Duration, Instant};
    for file in [
        "/var/log/cloudsigma-bootstrap-output.log",
        "/var/log/cloudsigma-bootstrap.log",
    ] {
        let n = Node::new(data("kubeadm-join.yaml").as_bytes());
        fs::create_dir_all(n.p("/var/log")).unwrap();
        nix::unistd::mkfifo(&n.p(file), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let mut child = n
            .command(true, &["--quiet"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if t.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let status = status.unwrap_or_else(|| panic!("{file}: the agent blocked on the FIFO"));
        let st = n.status();
        if file.ends_with("output.log") {
            assert_eq!(status.code(), Some(1));
            let msg = st["error"]["message"].as_str().unwrap();
            assert!(msg.contains("FIFO"), "{msg}");
        } else {
            assert_eq!(status.code(), Some(0));
            let w = st["warnings"][0].as_str().unwrap();
            assert!(
                w.starts_with("cannot open log file") && w.contains("FIFO"),
                "{w}"
            );
        }
    }
}

/// The context's uuid names the stamp file: anything but a UUID is refused before a path is made.
#[test]
fn a_context_uuid_that_is_not_a_uuid_is_refused() {
    for bad in [
        "../../etc/cron.d/x",
        "../../etc",
        "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff/..",
        "",
    ] {
        let mut ctx = context_json(&b64(data("kubeadm-join.yaml").as_bytes()));
        ctx["uuid"] = bad.into();
        let n = Node::with_context(ctx);
        let out = n.run(&[]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", n.log());
        let st = n.status();
        assert_eq!(st["error"]["step"], "context", "{bad:?}");
        let msg = st["error"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("the context's uuid {bad:?} is not a UUID")),
            "{msg}"
        );
        assert!(n.stub_calls().is_empty(), "{bad:?}: nothing ran");
        assert!(!n.root.join("etc/cron.d").exists());
        assert!(
            !n.p("/var/lib/cloudsigma-agent").exists(),
            "no stamp anywhere"
        );
    }
}
