//! Bench: runs the real agent binary on a realistic context (Cluster API kubeadm join data,
//! base64 in meta, `## template: jinja`) under a temporary --root with stub commands, and prints:
//! - wall time from spawning the agent to the first runcmd command being executed (the stub
//!   records a nanosecond timestamp; includes the stub's own `date` exec, ~1 ms),
//! - peak RSS (getrusage RUSAGE_CHILDREN: the largest process of the agent's tree),
//! - the size of the static, stripped binary.
//!
//! usage: cloudsigma-agent-bench [--agent PATH] [--static PATH] [--runs N]
//! Targets (issue): < 100 ms, <= 10 MB, <= 5 MB. Exit status 1 if a target is missed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

const JOIN: &str = include_str!("../../tests/data/kubeadm-join.yaml");

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let root = dir.join("root");
    for d in ["etc", "run", "proc", "var/lib"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::write(
        root.join("etc/fstab"),
        "UUID=abcd / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n",
    )
    .expect("fstab");
    fs::write(
        root.join("proc/swaps"),
        "Filename Type Size Used Priority\n/swap.img file 2097148 0 -2\n",
    )
    .expect("swaps");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir bin");
    for s in ["kubeadm", "systemctl", "hostname", "swapoff"] {
        let p = bin.join(s);
        fs::write(
            &p,
            format!("#!/bin/sh\necho \"$(date +%s%N) {s} $*\" >> \"$STUB_LOG\"\n"),
        )
        .expect("stub");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let ud = base64::engine::general_purpose::STANDARD.encode(JOIN);
    let ctx = serde_json::json!({
        "uuid": "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff", "name": "worker-0", "cpu": 2000, "mem": 4294967296u64, "smp": 2,
        "meta": {"base64_fields": "cloudinit-user-data", "cloudinit-user-data": ud, "ssh_public_key": "ssh-ed25519 AAAA"},
        "nics": [
            {"ip_v4_conf": {"conf": "dhcp", "ip": {"uuid": "31.171.250.20", "netmask": 24, "gateway": "31.171.250.1", "nameservers": ["8.8.8.8"], "tags": [], "meta": {}}}, "mac": "22:aa:bb:cc:dd:01", "model": "virtio", "vlan": null},
            {"ip_v4_conf": null, "mac": "22:aa:bb:cc:dd:02", "model": "virtio", "vlan": {"uuid": "5bc05e7e-6555-4f40-add8-3b8e91447702"}}
        ],
        "global_context": {}, "tags": [], "drives": []
    });
    let ctx_path = dir.join("context.json");
    fs::write(&ctx_path, serde_json::to_vec(&ctx).expect("json")).expect("ctx");
    let net = dir.join("net.json");
    fs::write(&net, r#"[{"name":"ens3","mac":"22:aa:bb:cc:dd:01","ipv4":["31.171.250.20/24"]},{"name":"ens4","mac":"22:aa:bb:cc:dd:02","ipv4":["10.10.0.5/24"]}]"#).expect("net");
    (root, bin, ctx_path, net)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let agent = arg("--agent")
        .map(PathBuf::from)
        .unwrap_or_else(|| here.join("cloudsigma-agent"));
    let static_bin = arg("--static").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        PathBuf::from(target).join("x86_64-unknown-linux-gnu/release/cloudsigma-agent")
    });
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(20);
    if !agent.exists() {
        eprintln!(
            "agent binary {} not found (build it or pass --agent)",
            agent.display()
        );
        std::process::exit(2);
    }

    let mut times_ms: Vec<f64> = Vec::new();
    for i in 0..runs {
        let dir = std::env::temp_dir().join(format!("cs-agent-bench-{}-{i}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("tmp");
        let (root, bin, ctx, net) = setup(&dir);
        let log = dir.join("stub.log");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let t0 = now_ns();
        let st = Command::new(&agent)
            .arg("--root")
            .arg(&root)
            .arg("--context-file")
            .arg(&ctx)
            .arg("--net-fixture")
            .arg(&net)
            // runcmd must run (the stubs): the figure is the time to its first command.
            .arg("--execute")
            .arg("--quiet")
            .env("PATH", path)
            .env("STUB_LOG", &log)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("spawn agent");
        let calls = fs::read_to_string(&log).unwrap_or_default();
        let first_runcmd = calls
            .lines()
            .find(|l| l.contains(" systemctl restart containerd"))
            .and_then(|l| l.split(' ').next())
            .and_then(|t| t.parse::<u128>().ok());
        match (st.success(), first_runcmd) {
            (true, Some(t)) => times_ms.push((t.saturating_sub(t0)) as f64 / 1e6),
            _ => {
                eprintln!("run {i} failed (status {st}); stub log:\n{calls}");
                std::process::exit(1);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
    times_ms.sort_by(|a, b| a.total_cmp(b));
    let median = times_ms[times_ms.len() / 2];
    let (min, max) = (times_ms[0], times_ms[times_ms.len() - 1]);

    // SAFETY: getrusage only writes into the provided struct.
    let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let rss_kib = if unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut ru) } == 0 {
        ru.ru_maxrss
    } else {
        -1
    };
    let rss_mib = rss_kib as f64 / 1024.0;

    let size = fs::metadata(&static_bin).map(|m| m.len()).ok();
    println!("agent binary:               {}", agent.display());
    println!("runs:                       {runs}");
    println!("start -> first runcmd exec: median {median:.1} ms (min {min:.1}, max {max:.1})   target < 100 ms");
    println!("peak RSS (process tree):    {rss_mib:.1} MiB ({rss_kib} KiB)   target <= 10 MB");
    match size {
        Some(s) => println!(
            "static binary size:         {:.2} MiB ({s} bytes, {})   target <= 5 MB",
            s as f64 / 1048576.0,
            static_bin.display()
        ),
        None => println!(
            "static binary size:         {} not built (see docs/agent.md)",
            static_bin.display()
        ),
    }
    let ok = median < 100.0 && rss_kib <= 10 * 1000 && size.map(|s| s <= 5_000_000).unwrap_or(true);
    if !ok {
        println!("RESULT: a target was missed");
        std::process::exit(1);
    }
    println!("RESULT: all targets met");
}
