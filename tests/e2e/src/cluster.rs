//! The production topology (issue 24, docs/e2e.md "The cluster loop"): several workers, each with a
//! public NAT NIC and a NIC on one private VLAN, joined with Cluster API data; a real CNI
//! (flannel, host-gw over the VLAN), kube-proxy and CoreDNS installed as an operator installs them;
//! the Nodes' InternalIPs are their VLAN addresses, set by the agent (`--node-ip`) and validated by
//! the cloud controller. What lives here is that topology's vocabulary: the VLAN with its stand-in
//! DHCP server, the workers' servers, the addons and the test workload.

use crate::cloud::{BootedNode, VmCloud};
use crate::control_plane::{ControlPlane, JoinCredentials};
use crate::ssh::{FailureReport, Ssh};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// The VLAN's addresses: the pool the controller hands out (or, in the DHCP variant, what the
/// stand-in DHCP server hands out). Private to the emulator's switch (frames between socketpairs
/// inside cloudsim): no packet to it ever leaves this host.
pub const VLAN_CIDR: &str = "192.168.77.0/24";
pub const VLAN_RANGE: (&str, &str) = ("192.168.77.10", "192.168.77.99");

/// The flannel manifest (upstream's kube-flannel.yml adapted; its header lists the changes).
pub const FLANNEL_MANIFEST: &str = "tests/kube/addons/kube-flannel.yml";

/// How the workers' VLAN NICs get their addresses (`E2E_VLAN_ADDRESSES`, docs/e2e.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanAddresses {
    /// The production case and the default: no DHCP on the VLAN (CloudSigma runs none); the pool
    /// is set in the VLAN's meta, the controller assigns, the agent configures (issue 22).
    Pool,
    /// An operator's DHCP server on the VLAN (cloudsim's stand-in), as the deployment report had.
    Dhcp,
}

impl VlanAddresses {
    /// From `E2E_VLAN_ADDRESSES` (`pool`, the default, or `dhcp`); anything else is refused by
    /// name rather than silently running the default.
    pub fn from_env() -> VlanAddresses {
        match std::env::var("E2E_VLAN_ADDRESSES").as_deref() {
            Err(_) | Ok("") | Ok("pool") => VlanAddresses::Pool,
            Ok("dhcp") => VlanAddresses::Dhcp,
            Ok(other) => panic!("E2E_VLAN_ADDRESSES={other:?}: expected pool (default) or dhcp"),
        }
    }
}

/// One of the account's VLANs (subscribed ones, as on the real cloud: the emulator's seed has
/// two), addressed as `how` says: the pool in its meta, or the stand-in DHCP server running on
/// it. Returns the VLAN's uuid.
pub async fn vlan(cloud: &VmCloud, how: VlanAddresses) -> String {
    let vlans = cloud.api.get("vlans/").await;
    let vlan = vlans["objects"][0]["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("the account has no VLAN: {vlans}"))
        .to_string();
    match how {
        VlanAddresses::Pool => {
            // As an operator sets it (docs/vlan-pools.md): the VLAN's own meta, read by every
            // cluster's controller that has servers on it.
            let pool = format!("{VLAN_CIDR} {}-{}", VLAN_RANGE.0, VLAN_RANGE.1);
            cloud
                .api
                .put(
                    &format!("vlans/{vlan}/"),
                    json!({"meta": {cloudsigma_api::pool::POOL_KEY: pool}}),
                )
                .await;
        }
        VlanAddresses::Dhcp => {
            let range = [VLAN_RANGE.0, VLAN_RANGE.1].map(|a| a.parse().expect("VLAN_RANGE"));
            cloud
                .emu
                .set_vlan_dhcp(
                    &vlan,
                    Some(cloudsim::vlan::DhcpConfig {
                        cidr: VLAN_CIDR.into(),
                        range: Some(range),
                        server: None,
                        lease_secs: None,
                    }),
                )
                .await
                .unwrap_or_else(|e| panic!("DHCP on VLAN {vlan}: {e}"));
        }
    }
    vlan
}

/// The assignment the controller wrote into `server`'s meta for its NIC on `vlan`
/// (`k8s-ipv4-<mac>`), or None.
pub async fn assignment(cloud: &VmCloud, server: &str, vlan: &str) -> Option<String> {
    let s = cloud.api.get(&format!("servers/{server}/")).await;
    let nic = s["nics"]
        .as_array()?
        .iter()
        .find(|n| n["vlan"].as_str() == Some(vlan) || n["vlan"]["uuid"].as_str() == Some(vlan))?;
    let key = cloudsigma_api::pool::assignment_key(nic["mac"].as_str()?);
    s["meta"][key.as_str()].as_str().map(str::to_string)
}

/// The join data of the pool's workers, one template for all as a MachineDeployment renders it:
/// the real token and CA pin, the external cloud provider, and no CNI file (Ready comes from the
/// CNI's DaemonSet) and no --node-ip (the agent finds the VLAN address).
pub fn worker_data(join: &JoinCredentials, pubkey: &str) -> String {
    crate::bootstrap_data::cabpk_worker_data(
        &join.endpoint,
        &join.token,
        &join.ca_cert_hash,
        &[("cloud-provider", "external")],
        &[],
        pubkey,
    )
}

/// A worker as the provider creates it: the public NAT NIC and a NIC on `vlan` in the request
/// shape kube-dc's machine controller sends (`vlan` with `ip_v4_conf: dhcp`, accepted as the real
/// cloud accepts it; docs/emulator.md).
pub fn worker_nics(vlan: &str) -> Value {
    json!([
        {"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"},
        {"vlan": vlan, "ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"}
    ])
}

/// Creates the workers' servers from `image` all at once (clones first, then every start
/// together), as a MachineDeployment scaled to N creates its Machines, and waits until all run.
pub async fn create_workers(
    cloud: &VmCloud,
    image: &str,
    names: &[&str],
    vlan: &str,
    user_data: &str,
    key: &Path,
) -> Vec<BootedNode> {
    use base64::Engine as _;
    let api = &cloud.api;
    let roots: Vec<String> = names.iter().map(|n| format!("{n}-root")).collect();
    let clones = futures::future::join_all(roots.iter().map(|r| api.clone_drive(image, r))).await;
    let data = base64::engine::general_purpose::STANDARD.encode(user_data);
    let objects: Vec<Value> = names
        .iter()
        .zip(&clones)
        .map(|(name, clone)| {
            json!({
                "name": name, "cpu": 4000, "mem": 2u64 << 30, "smp": 2, "vnc_password": "e2e-vnc",
                "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": {"uuid": clone}}],
                "nics": worker_nics(vlan),
                "meta": {"cloudinit-user-data": data, "base64_fields": "cloudinit-user-data"}
            })
        })
        .collect();
    let created = api.post("servers/", json!({ "objects": objects })).await;
    let servers: Vec<String> = created["objects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["uuid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(servers.len(), names.len(), "servers created: {created}");
    let started = Instant::now();
    for s in &servers {
        api.post(&format!("servers/{s}/action/?do=start"), json!({}))
            .await;
    }
    let mut out = Vec::new();
    for s in servers {
        let running = api
            .wait_status(&format!("servers/{s}/"), "running", Duration::from_secs(60))
            .await;
        let ip = nat_ip(&running).unwrap_or_else(|| panic!("no runtime NAT IP: {running}"));
        let ssh = Ssh {
            key: key.to_path_buf(),
            host: ip.clone(),
            user: "debian".into(),
        };
        out.push(BootedNode {
            report: FailureReport {
                console: Some(cloud.console(&s)),
                ssh: Some(ssh.clone()),
                extra: vec![
                    "ip -br addr".into(),
                    "sudo journalctl -b -u kubelet --no-pager | tail -30".into(),
                    "sudo tail -40 /var/log/cloudsigma-bootstrap-output.log".into(),
                ],
            },
            server: s,
            ip,
            ssh,
            started,
        });
    }
    out
}

/// The NAT address of a running server: the runtime address of its public NIC, wherever that NIC
/// is in the list.
pub fn nat_ip(server: &Value) -> Option<String> {
    server["runtime"]["nics"]
        .as_array()?
        .iter()
        .find_map(|n| n["ip_v4"]["uuid"].as_str().map(str::to_string))
}

/// kube-proxy and CoreDNS through kubeadm's addon phase, then flannel with `kubectl apply`: the
/// order and the tools of an operator after `kubeadm init`.
pub fn install_addons(cp: &ControlPlane, repo: &Path) {
    cp.addons()
        .unwrap_or_else(|e| panic!("kubeadm init phase addon: {e}"));
    cp.kubectl(&[
        "apply",
        "-f",
        &repo.join(FLANNEL_MANIFEST).display().to_string(),
    ])
    .unwrap_or_else(|e| panic!("kubectl apply -f {FLANNEL_MANIFEST}: {e}"));
}

/// The test workload: `replicas` pods of the local hello image, at most one per node (required
/// anti-affinity), behind a ClusterIP Service `hello`.
pub fn workload(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: hello}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: hello
        image: cloudsigma-k8s.test/hello:v1
        imagePullPolicy: Never
        ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: default}}
spec:
  selector: {{app: hello}}
  ports: [{{port: 8080, targetPort: 8080}}]
"#
    )
}

/// The Node's addresses of one type.
pub fn addresses(node: &Value, kind: &str) -> Vec<String> {
    node["status"]["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["type"] == kind)
                .filter_map(|x| x["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `ip` (dotted IPv4) lies in `cidr`.
pub fn in_cidr(ip: &str, cidr: &str) -> bool {
    let parse = |s: &str| s.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Some(ip), Some(net), Ok(bits)) = (parse(ip), parse(net), bits.parse::<u32>()) else {
        return false;
    };
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits.min(32))
    };
    ip & mask == net & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        assert!(in_cidr("192.168.77.10", VLAN_CIDR));
        assert!(!in_cidr("10.0.2.15", VLAN_CIDR));
        assert!(!in_cidr("not-an-ip", VLAN_CIDR));
        assert!(in_cidr("1.2.3.4", "0.0.0.0/0"));
    }

    #[test]
    fn nat_ip_is_the_public_nics_wherever_it_is() {
        let s = json!({"runtime": {"nics": [
            {"interface_type": "private", "ip_v4": null},
            {"interface_type": "public", "ip_v4": {"uuid": "127.77.0.3"}}
        ]}});
        assert_eq!(nat_ip(&s).as_deref(), Some("127.77.0.3"));
    }
}
