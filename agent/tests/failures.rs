//! Each failing step: no marker, a status naming the step, exit code != 0, nothing half-written.

mod common;
use common::*;

fn assert_failed_at(n: &Node, out: &std::process::Output, step: &str) -> String {
    assert_eq!(out.status.code(), Some(1), "exit code; log:\n{}", n.log());
    assert!(!n.marker(), "no marker after a failure");
    let st = n.status();
    assert_eq!(st["result"], "failure");
    assert_eq!(st["error"]["step"], step, "status: {st:#}");
    assert_eq!(st["marker_present"], false);
    let failed: Vec<(String, String)> = n
        .phases()
        .into_iter()
        .filter(|(_, r)| r == "failed")
        .collect();
    assert_eq!(failed, vec![(step.to_string(), "failed".to_string())]);
    assert!(
        !n.p(&format!("/var/lib/cloudsigma-agent/instance-{UUID}.done"))
            .exists(),
        "no done-stamp"
    );
    let leftovers: Vec<String> = n
        .all_files()
        .into_iter()
        .filter(|f| f.contains(".cs-agent-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(
        stderr(out).contains(&format!("FAILED at step {step}")),
        "{}",
        stderr(out)
    );
    st["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn bad_base64() {
    let mut ctx = context_json("");
    ctx["meta"]["cloudinit-user-data"] = serde_json::json!("#cloud-config\nnot base64 at all!");
    let n = Node::with_context(ctx);
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "userdata");
    assert!(msg.contains("base64"), "{msg}");
    assert!(n.stub_calls().is_empty());
}

#[test]
fn bad_yaml() {
    let n = Node::new(b"#cloud-config\nwrite_files:\n  - path: /etc/x\n    content: [unclosed\nruncmd: [kubeadm]\n");
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "cloudconfig");
    assert!(msg.contains("YAML") && msg.contains("line"), "{msg}");
    assert!(n.stub_calls().is_empty());
    assert!(!n.p("/etc/x").exists());
}

#[test]
fn undefined_template_variable() {
    let n = Node::new(b"## template: jinja\n#cloud-config\nruncmd:\n  - kubeadm join --node-name {{ ds.meta_data.no_such_key }}\n");
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "template");
    assert!(
        msg.contains("ds.meta_data.no_such_key") && msg.contains("line 4"),
        "{msg}"
    );
    assert!(n.stub_calls().is_empty());
}

#[test]
fn unsupported_user_data_format() {
    let n = Node::new(b"just some text with a password=hunter2\n");
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "userdata_format");
    assert!(msg.contains("#cloud-config"), "{msg}");
    n.assert_no_secrets(&["hunter2"]);
}

#[test]
fn failing_kubeadm() {
    let n = Node::new(data("kubeadm-join.yaml").as_bytes());
    let out = n.run_env(&[], &[("STUB_FAIL", "kubeadm")]);
    // The data's last line is `systemctl is-active kubelet` (exit 0), so the script exits 0 but the
    // `kubeadm join ... && echo success > marker` chain never wrote the marker.
    let msg = assert_failed_at(&n, &out, "marker");
    assert!(msg.contains("bootstrap-success.complete"), "{msg}");
    assert!(n.stub_calls().iter().any(|c| c.starts_with("kubeadm join")));
}

#[test]
fn failing_last_command_fails_runcmd_and_removes_marker() {
    let n = Node::new(
        b"#cloud-config\nruncmd:\n  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete\n  - kubeadm upgrade\n",
    );
    let out = n.run_env(&[], &[("STUB_FAIL", "kubeadm")]);
    let msg = assert_failed_at(&n, &out, "runcmd");
    assert!(msg.contains("exit status: 1"), "{msg}");
}

#[test]
fn unwritable_path() {
    // /etc/kubernetes is a regular file: /etc/kubernetes/pki/ca.crt cannot be created.
    let n = Node::new(data("kubeadm-init.yaml").as_bytes());
    std::fs::write(n.p("/etc/kubernetes"), "not a directory").unwrap();
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "write_files");
    assert!(msg.contains("/etc/kubernetes/pki/ca.crt"), "{msg}");
    assert!(
        n.stub_calls().is_empty(),
        "nothing runs after a failed step"
    );
    assert!(
        !n.p("/run/kubeadm/kubeadm.yaml").exists(),
        "later files not written"
    );
}

#[test]
fn bad_file_encoding_content() {
    let n = Node::new(
        b"#cloud-config\nwrite_files:\n  - path: /etc/a\n    encoding: b64\n    content: '***'\n",
    );
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "write_files");
    assert!(msg.contains("/etc/a") && msg.contains("base64"), "{msg}");
    assert!(!n.p("/etc/a").exists());
}

#[test]
fn unknown_owner() {
    let n = Node::new(
        b"#cloud-config\nwrite_files:\n  - path: /etc/a\n    owner: etcd:etcd\n    content: x\n",
    );
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "write_files");
    assert!(msg.contains("etcd") && msg.contains("passwd"), "{msg}");
}

#[test]
fn stale_marker_is_removed_on_failure() {
    let n = Node::new(b"#cloud-config\nruncmd:\n  - kubeadm join\n");
    std::fs::create_dir_all(n.p("/run/cluster-api")).unwrap();
    std::fs::write(
        n.p("/run/cluster-api/bootstrap-success.complete"),
        "success\n",
    )
    .unwrap();
    let out = n.run_env(&[], &[("STUB_FAIL", "kubeadm")]);
    assert_failed_at(&n, &out, "runcmd");
}

#[test]
fn missing_context_file() {
    let n = Node::new(b"#cloud-config\n");
    std::fs::remove_file(&n.context).unwrap();
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "context");
    assert!(msg.contains("context.json"), "{msg}");
}

#[test]
fn usage_error_exit_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--bogus"));
}

#[test]
fn failing_mkfs() {
    let n = Node::new(data("kubeadm-init-disks.yaml").as_bytes());
    n.fake_disk("sdb");
    let fstab = n.read("/etc/fstab");
    let out = n.run_env(&[], &[("STUB_FAIL", "mkfs.ext4")]);
    let msg = assert_failed_at(&n, &out, "fs_setup");
    assert!(
        msg.contains("mkfs.ext4") && msg.contains("/dev/sdb1"),
        "{msg}"
    );
    assert!(!n
        .stub_calls()
        .iter()
        .any(|c| c.starts_with("kubeadm") || c.starts_with("mount")));
    assert_eq!(n.read("/etc/fstab"), fstab, "mounts did not run");
    n.assert_no_secrets(&["abcdef.0123456789abcdef"]);
}

#[test]
fn missing_disk_is_named() {
    let n = Node::new(data("kubeadm-init-disks.yaml").as_bytes());
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "disk_setup");
    assert!(msg.contains("device /dev/sdb does not exist"), "{msg}");
    assert!(!n
        .stub_calls()
        .iter()
        .any(|c| c.starts_with("sfdisk") || c.starts_with("kubeadm")));
}

#[test]
fn bad_storage_key_fails_parsing_without_content() {
    let n = Node::new(b"#cloud-config\nfs_setup:\n  - device: /dev/sdb\n    filesystem: 'ext4 --secret=hunter2'\n");
    let out = n.run(&[]);
    let msg = assert_failed_at(&n, &out, "cloudconfig");
    assert!(msg.contains("fs_setup[0].filesystem"), "{msg}");
}
