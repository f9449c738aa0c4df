//! The kubeadm control plane of the real-node loop on its own (seconds, no VM): it comes up, a
//! worker's discovery data is right (cluster-info names the guest's view of the apiserver and is
//! signed for the token), and it stops without leaving a process behind.

use e2e::control_plane::{ControlPlane, GUEST_HOST};
use std::time::{Duration, Instant};

#[test]
fn control_plane_serves_join_discovery() {
    let bin = e2e::harness::cache_dir().join("kube-bin");
    if !bin.join("kubeadm").exists() {
        if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: {} has no kubeadm (tests/kube/build.sh --node)",
                bin.display()
            );
            return;
        }
        panic!(
            "{} has no kubeadm: run tests/kube/build.sh --node",
            bin.display()
        );
    }
    let t = Instant::now();
    let mut cp =
        ControlPlane::start(&bin, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane ready in {:.1}s", t.elapsed().as_secs_f64());
    let join = cp.join_credentials().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(join.endpoint, format!("{GUEST_HOST}:{}", cp.port));
    assert!(
        join.ca_cert_hash.starts_with("sha256:") && join.ca_cert_hash.len() == 71,
        "{join:?}"
    );
    let token_id = join.token.split('.').next().unwrap().to_string();
    // kube-controller-manager's bootstrap signer signs cluster-info for the new token
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = cp.cluster_info().unwrap_or_else(|e| panic!("{e}"));
        if info.contains(&format!("jws-kubeconfig-{token_id}")) {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "cluster-info not signed for {token_id}:\n{info}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        info.contains(&format!("https://{GUEST_HOST}:{}", cp.port)) && !info.contains("127.0.0.1"),
        "cluster-info must name the guest's view of the apiserver:\n{info}"
    );
    // the pieces `kubeadm join` reads
    for (ns, cm) in [
        ("kube-system", "kubeadm-config"),
        ("kube-system", "kubelet-config"),
    ] {
        cp.kubectl(&["-n", ns, "get", "configmap", cm])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // the apiserver's kubelet client may reach kubelets (`kubectl logs`/`exec`)
    let can = cp
        .kubectl(&[
            "auth",
            "can-i",
            "get",
            "nodes/proxy",
            "--as=kube-apiserver-kubelet-client",
            "--as-group=kubeadm:cluster-admins",
        ])
        .unwrap_or_else(|e| e);
    assert_eq!(
        can.trim(),
        "yes",
        "kube-apiserver-kubelet-client on nodes/proxy"
    );
    cp.stop();
    assert!(cp.running().is_empty());
}
