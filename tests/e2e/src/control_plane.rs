//! A real kubeadm control plane on the host, as plain processes (no kubelet, no container images):
//! kubeadm lays out the PKI, the kubeconfigs, the cluster's ConfigMaps and the bootstrap token
//! exactly as `kubeadm init` does, and etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler run with the flags of kubeadm's static-pod manifests
//! (cmd/kubeadm/app/phases/controlplane/manifests.go, phases/etcd/local.go at v1.34.1), changed
//! only where a host process differs from a pod: loopback listeners on free ports, and paths in
//! the test's own directory. Nothing is written to /etc/kubernetes.
//!
//! Addresses (docs/e2e.md): the node VM runs under QEMU user networking, where the guest reaches
//! the host's loopback at 10.0.2.2. The apiserver listens on 127.0.0.1:PORT and advertises
//! 10.0.2.2:PORT, which is also the `controlPlaneEndpoint` and a certificate SAN: the guest's
//! kubelet, `kubeadm join` discovery and the `kubernetes` Service all use 10.0.2.2:PORT, which QEMU
//! turns into 127.0.0.1:PORT on the host; host-side clients use 127.0.0.1:PORT (also a SAN). So no
//! address outside loopback and QEMU's user network is ever used, and no network namespace is
//! needed (kubeadm's refusal of a loopback advertise address does not arise: 10.0.2.2 is not one).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the guest calls the host's loopback under QEMU user networking.
pub const GUEST_HOST: &str = "10.0.2.2";
pub const KUBE_VERSION: &str = "v1.34.1";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The pod network: kubeadm's `networking.podSubnet`, kube-controller-manager's `--cluster-cidr`
/// and flannel's `Network` (tests/kube/addons/kube-flannel.yml).
pub const POD_CIDR: &str = "10.244.0.0/16";

pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    /// The apiserver's port: 127.0.0.1:PORT on the host, 10.0.2.2:PORT in the guest.
    pub port: u16,
    /// Host-side cluster-admin kubeconfig (kubeadm's super-admin.conf, pointed at 127.0.0.1).
    pub admin: PathBuf,
    pub kubectl: PathBuf,
    kubeadm: PathBuf,
    config: PathBuf,
    /// Started processes, in start order; stopped in reverse (the apiserver before etcd).
    procs: Vec<(&'static str, Child)>,
}

pub use test_support::free_port;

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ControlPlane {
    /// `bin` holds kube-apiserver, kube-controller-manager, kube-scheduler, kubeadm, kubectl and
    /// etcd (tests/kube/build.sh --node). `node_monitor_grace` is kube-controller-manager's
    /// `--node-monitor-grace-period`: short, so that a Node whose VM is gone turns NotReady (and
    /// the cloud controller may delete it) within the test.
    pub fn start(bin: &Path, node_monitor_grace: Duration) -> Result<ControlPlane, String> {
        let dir = tempfile::Builder::new()
            .prefix("cs-kubeadm-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path().to_path_buf();
        let port = free_port();
        let mut cp = ControlPlane {
            port,
            admin: d.join("super-admin.conf"),
            kubectl: bin.join("kubectl"),
            kubeadm: bin.join("kubeadm"),
            config: d.join("kubeadm.yaml"),
            procs: Vec::new(),
            dir,
        };
        std::fs::write(&cp.config, kubeadm_config(&d, port))
            .map_err(|e| format!("writing kubeadm config: {e}"))?;

        // PKI and kubeconfigs, as `kubeadm init` lays them out.
        cp.kubeadm_phase(&["certs", "all"])?;
        cp.kubeadm_phase(&[
            "kubeconfig",
            "all",
            "--kubeconfig-dir",
            &d.display().to_string(),
        ])?;
        // The kubeconfigs name the advertised endpoint (10.0.2.2), which is the guest's view; on
        // the host the same apiserver is at 127.0.0.1.
        for conf in [
            "super-admin.conf",
            "admin.conf",
            "controller-manager.conf",
            "scheduler.conf",
        ] {
            let p = d.join(conf);
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{conf}: {e}"))?;
            let text = text.replace(
                &format!("https://{GUEST_HOST}:{port}"),
                &format!("https://127.0.0.1:{port}"),
            );
            std::fs::write(&p, text).map_err(|e| format!("{conf}: {e}"))?;
        }

        let pki = d.join("pki");
        let pk = |f: &str| pki.join(f).display().to_string();
        let (etcd_port, etcd_peer) = (free_port(), free_port());
        let etcd_url = format!("https://127.0.0.1:{etcd_port}");
        let peer_url = format!("https://127.0.0.1:{etcd_peer}");
        cp.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name=cp".to_string(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=cp={peer_url}"),
                "--client-cert-auth=true".into(),
                format!("--cert-file={}", pk("etcd/server.crt")),
                format!("--key-file={}", pk("etcd/server.key")),
                format!("--trusted-ca-file={}", pk("etcd/ca.crt")),
                "--peer-client-cert-auth=true".into(),
                format!("--peer-cert-file={}", pk("etcd/peer.crt")),
                format!("--peer-key-file={}", pk("etcd/peer.key")),
                format!("--peer-trusted-ca-file={}", pk("etcd/ca.crt")),
                "--snapshot-count=10000".into(),
                // throwaway test data: no fsync per write (the disk is not what is tested)
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ]),
        )?;
        cp.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                format!("--advertise-address={GUEST_HOST}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--allow-privileged=true".into(),
                "--authorization-mode=Node,RBAC".into(),
                format!("--client-ca-file={}", pk("ca.crt")),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--enable-bootstrap-token-auth=true".into(),
                format!("--etcd-cafile={}", pk("etcd/ca.crt")),
                format!("--etcd-certfile={}", pk("apiserver-etcd-client.crt")),
                format!("--etcd-keyfile={}", pk("apiserver-etcd-client.key")),
                format!("--etcd-servers={etcd_url}"),
                format!(
                    "--kubelet-client-certificate={}",
                    pk("apiserver-kubelet-client.crt")
                ),
                format!(
                    "--kubelet-client-key={}",
                    pk("apiserver-kubelet-client.key")
                ),
                // Test deviation (docs/e2e.md): kubeadm's default order starts with InternalIP. A
                // VLAN node's InternalIP is on a segment this host-process apiserver cannot reach;
                // its ExternalIP (the NAT address) forwards 10250, so `kubectl logs`/`exec` go
                // there. In production the control plane sits on the VLAN or uses konnectivity.
                "--kubelet-preferred-address-types=ExternalIP,InternalIP,Hostname".into(),
                format!("--proxy-client-cert-file={}", pk("front-proxy-client.crt")),
                format!("--proxy-client-key-file={}", pk("front-proxy-client.key")),
                "--requestheader-allowed-names=front-proxy-client".into(),
                format!(
                    "--requestheader-client-ca-file={}",
                    pk("front-proxy-ca.crt")
                ),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", pk("sa.pub")),
                format!("--service-account-signing-key-file={}", pk("sa.key")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--tls-cert-file={}", pk("apiserver.crt")),
                format!("--tls-private-key-file={}", pk("apiserver.key")),
            ]),
        )?;
        cp.wait_ready(Duration::from_secs(120))?;

        let cm = d.join("controller-manager.conf").display().to_string();
        cp.spawn(
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager")).args([
                format!("--authentication-kubeconfig={cm}"),
                format!("--authorization-kubeconfig={cm}"),
                format!("--kubeconfig={cm}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                format!("--client-ca-file={}", pk("ca.crt")),
                "--cluster-name=kubernetes".into(),
                format!("--cluster-signing-cert-file={}", pk("ca.crt")),
                format!("--cluster-signing-key-file={}", pk("ca.key")),
                // bootstrapsigner signs kube-public/cluster-info (join discovery);
                // tokencleaner expires bootstrap tokens
                "--controllers=*,bootstrapsigner,tokencleaner".into(),
                "--leader-elect=false".into(),
                format!(
                    "--requestheader-client-ca-file={}",
                    pk("front-proxy-ca.crt")
                ),
                format!("--root-ca-file={}", pk("ca.crt")),
                format!("--service-account-private-key-file={}", pk("sa.key")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--use-service-account-credentials=true".into(),
                // kubeadm adds these when networking.podSubnet is set (manifests.go,
                // getControllerManagerCommand): node podCIDRs, which flannel's kube subnet
                // manager reads.
                "--allocate-node-cidrs=true".into(),
                format!("--cluster-cidr={POD_CIDR}"),
                format!(
                    "--node-monitor-grace-period={}s",
                    node_monitor_grace.as_secs().max(1)
                ),
                "--node-monitor-period=2s".into(),
            ]),
        )?;
        let sc = d.join("scheduler.conf").display().to_string();
        cp.spawn(
            "kube-scheduler",
            Command::new(bin.join("kube-scheduler")).args([
                format!("--authentication-kubeconfig={sc}"),
                format!("--authorization-kubeconfig={sc}"),
                format!("--kubeconfig={sc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                "--leader-elect=false".into(),
            ]),
        )?;

        // What `kubeadm init` does after the control plane is up and a worker's join needs: the
        // kubeadm-config and kubelet-config ConfigMaps, and the bootstrap-token RBAC, the CSR
        // auto-approval and the kube-public/cluster-info ConfigMap.
        let admin = cp.admin.display().to_string();
        // What kubeadm init's EnsureAdminClusterRoleBinding creates (it runs outside the phases):
        // the group of admin.conf and of the apiserver's kubelet client certificate, without
        // which `kubectl logs`/`exec` (apiserver -> kubelet) are forbidden.
        cp.kubectl(&[
            "create",
            "clusterrolebinding",
            "kubeadm:cluster-admins",
            "--clusterrole=cluster-admin",
            "--group=kubeadm:cluster-admins",
        ])?;
        cp.kubeadm_phase(&["upload-config", "all", "--kubeconfig", &admin])?;
        cp.kubeadm_phase(&["bootstrap-token", "--kubeconfig", &admin])?;
        // kubeadm copies the server of the kubeconfig it was given (our host-side 127.0.0.1) into
        // kube-public/cluster-info, and a joining node bootstraps against the server it finds
        // there: it must be the guest's view, 10.0.2.2. The bootstrap signer re-signs the change.
        let info = cp.cluster_info()?;
        let fixed = info.replace(
            &format!("https://127.0.0.1:{port}"),
            &format!("https://{GUEST_HOST}:{port}"),
        );
        if fixed == info {
            return Err(format!(
                "cluster-info does not name https://127.0.0.1:{port}:\n{info}"
            ));
        }
        cp.kubectl_stdin(&["replace", "-f", "-"], &fixed)?;
        Ok(cp)
    }

    fn kubeadm_phase(&self, args: &[&str]) -> Result<String, String> {
        run(
            Command::new(&self.kubeadm)
                .args(["init", "phase"])
                .args(args)
                .arg("--config")
                .arg(&self.config),
            &format!("kubeadm init phase {}", args.join(" ")),
        )
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map_err(|e| format!("{name} log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("{name} log: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        self.procs.push((name, child));
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if matches!(&out, Ok(s) if s.trim() == "ok") {
                return Ok(());
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "kube-apiserver not ready after {timeout:?}: {out:?}\n{}",
                    self.log_tail("kube-apiserver", 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `kubeadm init phase addon kube-proxy` and `coredns`, as `kubeadm init` ends: kube-proxy's
    /// DaemonSet and ConfigMap (its kubeconfig's server is the controlPlaneEndpoint, the guests'
    /// 10.0.2.2:PORT) and CoreDNS's Deployment and Service at the cluster DNS address. The images
    /// are the ones kubeadm names, imported into the node image (tests/kube/addons.sh).
    pub fn addons(&self) -> Result<(), String> {
        let admin = self.admin.display().to_string();
        for addon in ["kube-proxy", "coredns"] {
            self.kubeadm_phase(&["addon", addon, "--kubeconfig", &admin])?;
        }
        Ok(())
    }

    /// kube-public/cluster-info as JSON: what a joining node's discovery reads.
    pub fn cluster_info(&self) -> Result<String, String> {
        self.kubectl(&[
            "-n",
            "kube-public",
            "get",
            "configmap",
            "cluster-info",
            "-o",
            "json",
        ])
    }

    /// kubectl as cluster admin; stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        run(
            Command::new(&self.kubectl)
                .arg("--kubeconfig")
                .arg(&self.admin)
                .args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// kubectl with stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("kubectl: {e}"))?;
        if let Some(mut sin) = child.stdin.take() {
            sin.write_all(input.as_bytes())
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A fresh bootstrap token and the CA pin, from `kubeadm token create --print-join-command`
    /// (what an operator or Cluster API's bootstrap provider hands a worker).
    pub fn join_credentials(&self) -> Result<JoinCredentials, String> {
        let out = run(
            Command::new(&self.kubeadm)
                .args(["token", "create", "--print-join-command", "--ttl", "1h"])
                .arg("--kubeconfig")
                .arg(&self.admin),
            "kubeadm token create --print-join-command",
        )?;
        let words: Vec<&str> = out.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
                .ok_or_else(|| format!("no {flag} in the join command: {out}"))
        };
        // The command names the server of the kubeconfig it ran with (the host's 127.0.0.1); a
        // worker dials the controlPlaneEndpoint, the guest's view of the same apiserver.
        if words.get(2) != Some(&format!("127.0.0.1:{}", self.port).as_str()) {
            return Err(format!("unexpected endpoint in the join command: {out}"));
        }
        Ok(JoinCredentials {
            endpoint: format!("{GUEST_HOST}:{}", self.port),
            token: after("--token")?,
            ca_cert_hash: after("--discovery-token-ca-cert-hash")?,
        })
    }

    /// The PEM of the cluster CA (for kubeconfigs that verify the apiserver).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pki/ca.crt")).unwrap_or_default()
    }

    /// Writes a kubeconfig for a bearer token (a ServiceAccount's), verifying the apiserver
    /// against the cluster CA.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> Result<PathBuf, String> {
        let p = self.dir.path().join(format!("{name}.kubeconfig"));
        let ca = self.ca_pem();
        test_support::write_kubeconfig(
            &p,
            &format!("https://127.0.0.1:{}", self.port),
            test_support::Trust::Ca(&ca),
            name,
            token,
        )?;
        Ok(p)
    }

    /// The last `n` lines of a component's log.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!("--- {name} (last {n} lines)\n{}", lines[from..].join("\n"))
    }

    /// Stops every process (apiserver and the controllers before etcd) and waits for them.
    pub fn stop(&mut self) {
        while let Some((_, mut child)) = self.procs.pop() {
            // SIGTERM first: the apiserver and etcd shut down cleanly within a few seconds.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pids of the processes still running (for the "nothing left behind" check).
    pub fn running(&mut self) -> Vec<&'static str> {
        self.procs
            .iter_mut()
            .filter_map(|(n, c)| matches!(c.try_wait(), Ok(None)).then_some(*n))
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a worker's JoinConfiguration needs.
#[derive(Debug, Clone)]
pub struct JoinCredentials {
    /// `10.0.2.2:PORT`: the guest's view of the apiserver.
    pub endpoint: String,
    pub token: String,
    /// `sha256:…` of the cluster CA's public key.
    pub ca_cert_hash: String,
}

fn kubeadm_config(dir: &Path, port: u16) -> String {
    format!(
        r#"apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {GUEST_HOST}
  bindPort: {port}
nodeRegistration:
  # no kubelet runs on the host; the name only keeps kubeadm from looking up the hostname
  name: control-plane
  criSocket: unix:///var/run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {KUBE_VERSION}
clusterName: kubernetes
certificatesDir: {pki}
controlPlaneEndpoint: {GUEST_HOST}:{port}
apiServer:
  certSANs: [{GUEST_HOST}, 127.0.0.1, localhost]
etcd:
  local:
    dataDir: {etcd}
networking:
  serviceSubnet: {SERVICE_CIDR}
  podSubnet: {POD_CIDR}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
# kubeadm derives this from certificatesDir, which here is the host's temp dir; on a node the
# CA is where `kubeadm join` puts it (JoinConfiguration.caCertPath's default).
authentication:
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
"#,
        pki = dir.join("pki").display(),
        etcd = dir.join("etcd").display(),
    )
}
