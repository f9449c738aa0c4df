//! VLANs with real VMs (QEMU, the library image of tests/vm-image/build.sh): one test booting
//! three VMs once (TCG on a small machine makes each boot cost a minute or more):
//!
//! - A `[VLAN a, public]` and B `[public, VLAN a]`, with DHCP on VLAN a: both get a VLAN
//!   address and B reaches A's sshd over the VLAN; A keeps a single default route (the NAT NIC's:
//!   the DHCP server sends no router option);
//! - C `[VLAN b, public]`, no DHCP on VLAN b: its VLAN NIC has no IPv4 address, and ARP requests
//!   it sends for A's and B's VLAN addresses stay unanswered (another segment);
//! - A's forwards follow its public NIC although it is second: the API shows the NAT IP on NIC 1
//!   and its port 22 answers with A's sshd banner.
//!
//! The guests report over their serial console (ttyS0, the backend's console.log) from a
//! cloud-init user-data script, so the test needs no SSH key.
use base64::Engine as _;
use cloudsim::{Emulator, EmulatorConfig};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VA: &str = "5e0a1a7e-3b7d-4c1e-8f00-0000000c0001";
const VB: &str = "5e0a1a7e-3b7d-4c1e-8f00-0000000c0002";
const MAC_A: &str = "22:00:00:00:a0:01";
const MAC_B: &str = "22:00:00:00:b0:01";
const MAC_C: &str = "22:00:00:00:c0:01";
/// Nobody logs in (the guests report on their console); the datasource just needs a key.
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFwJQ0kq0q7yq3pPj1V4B1o8kq7xQ8N0sT3vKc9r2Yxh vlan-test";

/// The library image directory: `$CLOUDSIM_VM_IMAGE`, else the build script's cache entry.
fn image_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CLOUDSIM_VM_IMAGE") {
        return d.into();
    }
    let cache = std::env::var_os("CLOUDSIGMA_K8S_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/cloudsigma-k8s")))
        .unwrap_or_default();
    cache.join("vm-image/current")
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    for tool in ["qemu-system-x86_64", "qemu-img"] {
        let ok = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("{tool} not installed (scripts/install-deps)"));
        }
    }
    let img = image_dir();
    if !img.join("debian-12.qcow2").exists() {
        return Some(format!(
            "no library image in {} (build it with tests/vm-image/build.sh, ~3 min)",
            img.display()
        ));
    }
    None
}

/// The guest side: find the VLAN NIC by MAC, wait for an address, then per role report on
/// ttyS0 (lines starting with `VT <role>`).
fn user_data(role: &str, vlan_mac: &str) -> String {
    format!(
        r#"#!/bin/sh
say() {{ echo "VT {role} $*" > /dev/ttyS0; }}
vif=$(ip -o link | grep -i "link/ether {vlan_mac}" | cut -d: -f2 | tr -d ' ')
# ARP requests for the given addresses from this NIC (raw socket: no address needed); prints the
# addresses that answered, or "none"
cat > /run/arp.py <<'PY'
import socket, struct, sys, time
ifn, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(':', ''))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifn, 0))
s.settimeout(0.5)
me = socket.inet_aton('192.168.50.99')
for t in sys.argv[3:]:
    arp = struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, 1, mac, me, b'\0' * 6, socket.inet_aton(t))
    s.send(b'\xff' * 6 + mac + b'\x08\x06' + arp)
got, end = set(), time.time() + 3
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if len(f) >= 42 and f[12:14] == b'\x08\x06' and f[20:22] == b'\x00\x02':
        got.add(socket.inet_ntoa(f[28:32]))
print(' '.join(sorted(got)) or 'none')
PY
addr=""
for i in $(seq 1 60); do
  addr=$(ip -4 -o addr show dev "$vif" | awk '{{print $4}}' | cut -d/ -f1)
  [ -n "$addr" ] && break
  sleep 1
done
say "vlan=$vif addr=${{addr:-none}} defaults=$(ip -4 route show default | wc -l)"
case {role} in
B)
  for i in $(seq 1 90); do
    for t in 192.168.50.10 192.168.50.11; do
      [ "$t" = "$addr" ] && continue
      b=$(python3 -c "import socket; s=socket.create_connection(('$t', 22), 3); print(s.recv(64).decode().strip())" 2>/dev/null)
      case "$b" in SSH-*) say "reach $t ok $b"; exit 0;; esac
    done
    sleep 2
  done
  say "reach none";;
C)
  n=0
  while [ $n -lt 200 ]; do
    n=$((n+1))
    say "probe $n arp=$(python3 /run/arp.py "$vif" {vlan_mac} 192.168.50.10 192.168.50.11)"
    sleep 2
  done;;
esac
"#
    )
}

struct Console(PathBuf);

impl Console {
    fn text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.0) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
    /// `VT ...` lines, the role prefix removed.
    fn lines(&self, role: &str) -> Vec<String> {
        let prefix = format!("VT {role} ");
        self.text()
            .lines()
            .filter_map(|l| {
                l.find(&prefix)
                    .map(|i| l[i + prefix.len()..].trim().to_string())
            })
            .collect()
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    user: String,
    pass: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.pass));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("API request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }
    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn wait_status(&self, path: &str, want: &str) -> Value {
        for _ in 0..600 {
            let v = self.get(path).await;
            if v["status"] == want {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} never reached {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlans_are_segments_with_dhcp_and_nic_order_keeps_the_forwards() {
    if let Some(why) = missing() {
        if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: {why}");
            return;
        }
        panic!("{why}; CLOUDSIGMA_K8S_ALLOW_SKIP=1 skips");
    }
    let t0 = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let mut qc = cloudsim::vm::QemuConfig::new(data.path().join("vm"));
    qc.max_mem_mib = 512;
    let backend = cloudsim::vm::QemuBackend::new(qc).expect("QEMU backend");
    let lib = backend
        .local_library_drive(&image_dir())
        .expect("library image");
    let lib_uuid = lib.drive.uuid.clone();
    let emu = Emulator::start(EmulatorConfig {
        context_dir: Some(data.path().join("ctx")),
        backend: Some(std::sync::Arc::new(backend)),
        extra_libdrives: vec![lib],
        vlan_dhcp: [(
            VA.to_string(),
            cloudsim::vlan::DhcpConfig {
                cidr: "192.168.50.0/24".into(),
                range: Some([
                    "192.168.50.10".parse().unwrap(),
                    "192.168.50.11".parse().unwrap(),
                ]),
                server: None,
                lease_secs: None,
            },
        )]
        .into(),
        ..EmulatorConfig::for_tests()
    })
    .await
    .expect("emulator");
    let api = Api {
        http: reqwest::Client::new(),
        base: emu.api_url(),
        user: emu.username().into(),
        pass: emu.password().into(),
    };
    let public = json!({"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"});
    // the VLAN NIC as kube-dc's machine controller sends it
    let on = |vlan: &str, mac: &str| json!({"vlan": vlan, "ip_v4_conf": {"conf": "dhcp"}, "model": "virtio", "mac": mac});
    let roles = [
        ("A", MAC_A, json!([on(VA, MAC_A), public.clone()])),
        ("B", MAC_B, json!([public.clone(), on(VA, MAC_B)])),
        ("C", MAC_C, json!([on(VB, MAC_C), public.clone()])),
    ];
    let mut servers = Vec::new();
    for (role, mac, nics) in roles {
        let clone = api
            .post(
                &format!("drives/{lib_uuid}/action/?do=clone"),
                json!({"name": format!("vt-{role}")}),
            )
            .await;
        let drive = clone["objects"][0]["uuid"]
            .as_str()
            .or_else(|| clone["uuid"].as_str())
            .unwrap()
            .to_string();
        api.wait_status(&format!("drives/{drive}/"), "unmounted")
            .await;
        let ud = base64::engine::general_purpose::STANDARD.encode(user_data(role, mac));
        let v = api
            .post(
                "servers/",
                json!({"objects": [{"name": format!("vt-{role}"), "cpu": 1000, "mem": 512u64 << 20,
                    "vnc_password": "vt",
                    "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": drive}],
                    "nics": nics,
                    // cloud-init's CloudSigma datasource fails without meta.ssh_public_key
                    "meta": {"cloudinit-user-data": ud, "base64_fields": "cloudinit-user-data",
                        "ssh_public_key": SSH_KEY}}]}),
            )
            .await;
        let uuid = v["objects"][0]["uuid"].as_str().unwrap().to_string();
        api.post(&format!("servers/{uuid}/action/?do=start"), json!({}))
            .await;
        servers.push(uuid);
    }
    let console = |i: usize| {
        Console(
            data.path()
                .join("vm/servers")
                .join(&servers[i])
                .join("console.log"),
        )
    };
    let (ca, cb, cc) = (console(0), console(1), console(2));
    let a_running = api
        .wait_status(&format!("servers/{}/", servers[0]), "running")
        .await;
    eprintln!("[{:>4}s] 3 VMs started", t0.elapsed().as_secs());

    // NIC order does not move the forwards: the NAT IP is on A's public NIC (index 1)
    let rt = &a_running["runtime"]["nics"];
    assert_eq!(rt[0]["interface_type"], "private", "{a_running}");
    assert!(rt[0]["ip_v4"].is_null(), "{a_running}");
    assert_eq!(rt[1]["interface_type"], "public", "{a_running}");
    let nat_ip = rt[1]["ip_v4"]["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no NAT IP on A's public NIC: {a_running}"))
        .to_string();
    assert!(nat_ip.starts_with("127.77.0."), "{nat_ip}");

    // wait for the guests' reports: B reaching A, then a probe of C made after that
    let deadline = Instant::now() + Duration::from_secs(540);
    let mut b_ok = None;
    let mut c_after: Option<(usize, String)> = None;
    let mut probes_before = 0;
    while Instant::now() < deadline {
        if b_ok.is_none() {
            if let Some(l) = cb.lines("B").into_iter().find(|l| l.starts_with("reach ")) {
                eprintln!("[{:>4}s] B: {l}", t0.elapsed().as_secs());
                probes_before = cc
                    .lines("C")
                    .iter()
                    .filter(|l| l.starts_with("probe"))
                    .count();
                b_ok = Some(l);
            }
        }
        if b_ok.is_some() {
            let probes: Vec<String> = cc
                .lines("C")
                .into_iter()
                .filter(|l| l.starts_with("probe"))
                .collect();
            if probes.len() > probes_before {
                c_after = Some((probes.len(), probes[probes.len() - 1].clone()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = || {
        format!(
            "\n--- A console ---\n{}\n--- B console ---\n{}\n--- C console ---\n{}",
            tail(&ca.text()),
            tail(&cb.text()),
            tail(&cc.text())
        )
    };
    // the forward reaches A's sshd through its second NIC (checked while A surely runs)
    let banner = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect((nat_ip.as_str(), 22))
            .await
            .ok()?;
        let mut b = vec![0u8; 64];
        let n = s.read(&mut b).await.ok()?;
        Some(String::from_utf8_lossy(&b[..n]).to_string())
    })
    .await
    .ok()
    .flatten();
    let leases = emu.vlan_dhcp(VA).await.unwrap().leases;
    let c_leases = emu.vlan_dhcp(VB).await.unwrap().leases;
    let (a_lines, b_lines, c_lines) = (ca.lines("A"), cb.lines("B"), cc.lines("C"));
    let full_report = report();
    emu.shutdown().await;
    eprintln!("[{:>4}s] done", t0.elapsed().as_secs());

    let lease_of = |mac: &str| {
        leases
            .iter()
            .find(|l| l.mac == mac)
            .map(|l| l.ip.to_string())
            .unwrap_or_else(|| panic!("no lease for {mac}: {leases:?}{full_report}"))
    };
    let (a_ip, b_ip) = (lease_of(MAC_A), lease_of(MAC_B));
    // A: the DHCP'd VLAN address, and still one default route (the NAT NIC's)
    let a_first = a_lines.first().cloned().unwrap_or_default();
    assert!(
        a_first.contains(&format!("addr={a_ip} ")) && a_first.ends_with("defaults=1"),
        "A: {a_lines:?}{full_report}"
    );
    assert!(
        b_lines.iter().any(|l| l.contains(&format!("addr={b_ip} "))),
        "B: {b_lines:?}{full_report}"
    );
    // two VMs on one VLAN exchange packets
    let b_ok = b_ok.unwrap_or_else(|| panic!("B never reported{full_report}"));
    assert!(
        b_ok.starts_with(&format!("reach {a_ip} ok SSH-")),
        "B: {b_ok}{full_report}"
    );
    // a VLAN NIC without DHCP has no address; the other VLAN does not see A and B
    assert!(
        c_lines.first().map(|l| l.contains("addr=none")) == Some(true),
        "C: {c_lines:?}{full_report}"
    );
    assert!(c_leases.is_empty(), "{c_leases:?}");
    let (_, probe) =
        c_after.unwrap_or_else(|| panic!("C made no probe after B reached A{full_report}"));
    assert!(
        probe.ends_with("arp=none"),
        "C heard VLAN a: {probe}{full_report}"
    );
    assert!(
        c_lines
            .iter()
            .all(|l| !l.starts_with("probe") || l.ends_with("arp=none")),
        "C: {c_lines:?}"
    );
    // A's sshd behind the forward on its public NIC
    let banner = banner.unwrap_or_default();
    assert!(
        banner.starts_with("SSH-2.0-"),
        "{nat_ip}:22 said {banner:?}{full_report}"
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
