//! Test harness: a fake root, stub commands that record their argv, and a context around given
//! user data, as the infrastructure provider puts it (base64 + base64_fields).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;

pub const UUID: &str = "1b5ea8f2-3a1c-4b7e-9f10-aabbccddeeff";
pub const STUBS: &[&str] = &[
    "kubeadm",
    "systemctl",
    "hostname",
    "swapoff",
    "curl",
    // The agent's own storage tools: never the host's real ones in a test.
    "blkid",
    "blockdev",
    "sfdisk",
    "lsblk",
    "mkfs.ext4",
    "mount",
    "udevadm",
    "apt-get",
    // The node_ip step's assigned address: never the host's interfaces in a test.
    "ip",
    "networkctl",
];

pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub stub_dir: PathBuf,
    pub stub_log: PathBuf,
    pub context: PathBuf,
    pub fixture: PathBuf,
}

pub fn data(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

pub fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The server context as the hypervisor serves it: a public NIC and a private (VLAN) NIC.
pub fn context_json(user_data_b64: &str) -> serde_json::Value {
    serde_json::json!({
        "uuid": UUID,
        "name": "worker-0",
        "cpu": 2000, "mem": 4294967296u64, "smp": 2,
        "meta": {
            "base64_fields": "cloudinit-user-data",
            "cloudinit-user-data": user_data_b64,
            "ssh_public_key": "ssh-ed25519 AAAAC3 test",
            "cloudinit-dsmode": "net"
        },
        "nics": [
            {"ip_v4_conf": {"conf": "dhcp", "ip": {"uuid": "31.171.250.20", "netmask": 24, "gateway": "31.171.250.1", "nameservers": ["8.8.8.8"], "tags": [], "meta": {}}},
             "mac": "22:aa:bb:cc:dd:01", "model": "virtio", "vlan": null},
            {"ip_v4_conf": null, "mac": "22:AA:BB:CC:DD:02", "model": "virtio",
             "vlan": {"uuid": "5bc05e7e-6555-4f40-add8-3b8e91447702", "resource_uri": "/api/2.0/vlans/5bc05e7e-6555-4f40-add8-3b8e91447702/"}}
        ],
        "global_context": {"region": "zrh"},
        "tags": [], "drives": [], "vnc_password": "vncsecret"
    })
}

impl Node {
    pub fn new(user_data: &[u8]) -> Node {
        Node::with_context(context_json(&b64(user_data)))
    }

    pub fn with_context(ctx: serde_json::Value) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["etc", "run", "proc", "var/lib", "tmp"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndebian:x:1000:1000:Debian:/home/debian:/bin/bash\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\ndebian:x:1000:\n").unwrap();
        // A Debian image: systemd-timesyncd is the time client.
        fs::create_dir_all(root.join("etc/systemd")).unwrap();
        fs::write(root.join("etc/systemd/timesyncd.conf"), "[Time]\n").unwrap();
        fs::write(
            root.join("etc/fstab"),
            "UUID=abcd / ext4 errors=remount-ro 0 1\n/swap.img none swap sw 0 0\n",
        )
        .unwrap();
        fs::write(
            root.join("proc/swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swap.img                               file\t\t2097148\t\t0\t\t-2\n",
        )
        .unwrap();
        let stub_dir = dir.path().join("bin");
        fs::create_dir_all(&stub_dir).unwrap();
        let stub_log = dir.path().join("stub.log");
        for s in STUBS {
            let p = stub_dir.join(s);
            // Each stub records its name and argv; STUB_FAIL=<name> makes that stub fail.
            // curl prints a harmless install script (the RKE2 data pipes it into sh).
            let extra = if *s == "curl" {
                "echo 'echo rke2-installed'\n"
            } else {
                ""
            };
            fs::write(
                &p,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"{s} $*\" >> \"$STUB_LOG\"\n{extra}[ \"$STUB_FAIL\" = \"{s}\" ] && exit 1\nexit 0\n"
                ),
            )
            .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let context = dir.path().join("context.json");
        fs::write(&context, serde_json::to_vec(&ctx).unwrap()).unwrap();
        let fixture = dir.path().join("net.json");
        fs::write(
            &fixture,
            r#"[{"name":"lo","mac":"00:00:00:00:00:00","ipv4":["127.0.0.1/8"]},
                {"name":"ens3","mac":"22:aa:bb:cc:dd:01","ipv4":["31.171.250.20/24"]},
                {"name":"ens4","mac":"22:aa:bb:cc:dd:02","ipv4":["10.10.0.5/24"]}]"#,
        )
        .unwrap();
        Node {
            dir,
            root,
            stub_dir,
            stub_log,
            context,
            fixture,
        }
    }

    pub fn run(&self, extra: &[&str]) -> Output {
        self.run_env(extra, &[])
    }

    /// Runs and asserts exit status 0, showing stderr and the agent's log otherwise.
    pub fn run_ok(&self, extra: &[&str]) -> Output {
        let out = self.run(extra);
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr: {}\nlog: {}",
            stderr(&out),
            self.log()
        );
        out
    }

    pub fn run_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_with(true, extra, env)
    }

    /// As a person debugging with a scratch root runs it: without `--execute`.
    pub fn run_dry(&self, extra: &[&str]) -> Output {
        self.run_with(false, extra, &[])
    }

    fn run_with(&self, execute: bool, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command(execute, extra);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// The agent's command line as the tests run it (stubs first on PATH), not yet started.
    pub fn command(&self, execute: bool, extra: &[&str]) -> Command {
        let path = format!(
            "{}:{}",
            self.stub_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--context-file")
            .arg(&self.context)
            .arg("--net-fixture")
            .arg(&self.fixture)
            // The scripts and tools run (stubs first on PATH): the tests check what they do.
            .args(execute.then_some("--execute"))
            .args(extra)
            .env("PATH", path)
            .env("STUB_LOG", &self.stub_log)
            .env("STUB_ROOT", &self.root)
            .env("STUB_STATE", self.dir.path().join("state"))
            .env_remove("STUB_FAIL");
        c
    }

    /// Runs the agent reading its context from the serial port `tty` (a pty the test answers
    /// on), giving up after `timeout_secs`, with the stubs first on PATH.
    pub fn run_serial(&self, tty: &Path, timeout_secs: u32) -> Output {
        let path = format!(
            "{}:{}",
            self.stub_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(env!("CARGO_BIN_EXE_cloudsigma-agent"))
            .arg("--serial")
            .arg(tty)
            .args(["--timeout", &timeout_secs.to_string(), "--execute"])
            .arg("--net-fixture")
            .arg(&self.fixture)
            .arg("--root")
            .arg(&self.root)
            .env("PATH", path)
            .env("STUB_LOG", &self.stub_log)
            .output()
            .unwrap()
    }

    /// Replace a stub: it records its argv, fails when STUB_FAIL names it, else runs `body`.
    pub fn stub(&self, name: &str, body: &str) {
        let p = self.stub_dir.join(name);
        fs::write(
            &p,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> \"$STUB_LOG\"\n[ \"$STUB_FAIL\" = \"{name}\" ] && exit 1\n{body}\nexit 0\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A blank disk `/dev/NAME` (a stand-in file under the root) and storage tools that keep its
    /// state in STUB_STATE: sfdisk writes a table and creates the partition nodes, mkfs.ext4
    /// records the filesystem, blkid and lsblk report what is there.
    pub fn fake_disk(&self, name: &str) {
        fs::create_dir_all(self.p("/dev")).unwrap();
        fs::write(self.p(&format!("/dev/{name}")), "").unwrap();
        fs::create_dir_all(self.dir.path().join("state")).unwrap();
        // State file of a device: STUB_STATE/_dev_sdb1.
        let st = r#"st() { printf '%s/%s' "$STUB_STATE" "$(printf '%s' "$1" | tr / _)"; }"#;
        self.stub(
            "blkid",
            &format!("{st}\nf=$(st \"$4\")\n[ -f \"$f\" ] || exit 2\ncat \"$f\""),
        );
        self.stub("blockdev", "echo 10737418240");
        self.stub(
            "sfdisk",
            &format!(
                r#"{st}
if [ "$1" = "--json" ]; then
  n=$(ls "$STUB_ROOT$2"[0-9]* 2>/dev/null | wc -l)
  printf '{{"partitiontable": {{"label": "gpt", "partitions": [%s]}}}}
' "$(i=0; while [ $i -lt $n ]; do [ $i -gt 0 ] && printf ,; printf '{{}}'; i=$((i+1)); done)"
  exit 0
fi
dev="$3"
cat > "$STUB_STATE/sfdisk.in"
printf 'PTTYPE=%s
' "$(sed -n 's/^label: //p' "$STUB_STATE/sfdisk.in")" > "$(st "$dev")"
i=1
for l in $(grep -c '^\(size\|type\)=' "$STUB_STATE/sfdisk.in" | xargs seq 1); do : > "$STUB_ROOT$dev$l"; done"#
            ),
        );
        self.stub(
            "lsblk",
            &format!(
                r#"{st}
dev="$5"
printf 'NAME="%s" TYPE="disk" FSTYPE="" LABEL=""
' "$dev"
for p in "$STUB_ROOT$dev"[0-9]*; do
  [ -e "$p" ] || continue
  node=${{p#"$STUB_ROOT"}}
  f=$(st "$node")
  t=$(sed -n 's/^TYPE=//p' "$f" 2>/dev/null); l=$(sed -n 's/^LABEL=//p' "$f" 2>/dev/null)
  printf 'NAME="%s" TYPE="part" FSTYPE="%s" LABEL="%s"
' "$node" "$t" "$l"
done"#
            ),
        );
        self.stub(
            "mkfs.ext4",
            &format!(
                r#"{st}
label=""; for a in "$@"; do [ "$prev" = "-L" ] && label="$a"; prev="$a"; dev="$a"; done
printf 'TYPE=ext4
LABEL=%s
' "$label" > "$(st "$dev")""#
            ),
        );
    }

    pub fn p(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn read(&self, abs: &str) -> String {
        fs::read_to_string(self.p(abs)).unwrap_or_else(|e| panic!("{abs}: {e}"))
    }

    pub fn mode(&self, abs: &str) -> u32 {
        fs::metadata(self.p(abs)).unwrap().permissions().mode() & 0o7777
    }

    pub fn stub_calls(&self) -> Vec<String> {
        fs::read_to_string(&self.stub_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("/run/cloudsigma/bootstrap.json")).unwrap()
    }

    pub fn marker(&self) -> bool {
        self.p("/run/cluster-api/bootstrap-success.complete")
            .exists()
    }

    pub fn log(&self) -> String {
        self.read("/var/log/cloudsigma-bootstrap.log")
    }

    pub fn phases(&self) -> Vec<(String, String)> {
        self.status()["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Every file under the root (relative), to check nothing half-written or temporary is left.
    pub fn all_files(&self) -> Vec<String> {
        fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root, &self.root, &mut v);
        v.sort();
        v
    }

    pub fn assert_no_secrets(&self, secrets: &[&str]) {
        let log = self.log();
        let status = self.read("/run/cloudsigma/bootstrap.json");
        for s in secrets {
            assert!(!log.contains(s), "log leaks {s:?}:\n{log}");
            assert!(!status.contains(s), "status leaks {s:?}:\n{status}");
        }
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
