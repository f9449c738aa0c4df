//! The apiserver connection (src/apiserver.rs) against a REAL kube-apiserver: HTTP/2 carries
//! concurrent requests on one TLS connection; without it (DISABLE_HTTP2) each needs its own.

use std::collections::HashSet;

use cloudsigma_controller::apiserver;
use cloudsigma_controller::testkit;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

/// This process's TCP connections to `port` in state ESTABLISHED (from /proc/net/tcp, matched to
/// our socket fds by inode).
fn connections_to(port: u16) -> usize {
    let ours: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f.get(3) == Some(&"01") && ours.contains(f[9])
        })
        .count()
}

async fn concurrent_requests(cluster: &testkit::Cluster, http2: bool) -> usize {
    let kc = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = apiserver::client_with(cfg, http2).expect("client");
    let ns: Api<Namespace> = Api::all(client.clone());
    let port = cluster.addr().port();
    let before = connections_to(port);
    // One request first, as the controller's start makes (the Lease, then the listing): the pool
    // learns the protocol only from the TLS handshake's ALPN, so a burst on a cold client can
    // start several connects before the first says h2 (seen: 5 for 16 on a loaded CI machine;
    // hyper-util's pool coalesces connects only for a version known in advance). Once one h2
    // connection is up, every concurrent request must share it.
    ns.list(&ListParams::default().limit(1))
        .await
        .expect("warm-up listing");
    let results = join_all((0..16).map(|_| {
        let ns = ns.clone();
        async move { ns.list(&ListParams::default()).await }
    }))
    .await;
    for r in results {
        assert!(
            r.expect("list namespaces")
                .items
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some("default")),
            "no default namespace in the listing"
        );
    }
    let opened = connections_to(port) - before;
    drop(ns);
    drop(client);
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_carries_concurrent_requests_on_one_connection() {
    let Some(cluster) = testkit::cluster_or_skip("http2") else {
        return;
    };
    let h2 = concurrent_requests(&cluster, true).await;
    let h1 = concurrent_requests(&cluster, false).await;
    assert_eq!(
        h2, 1,
        "16 concurrent requests over HTTP/2 opened {h2} connections"
    );
    assert!(
        h1 > 1,
        "16 concurrent requests over HTTP/1.1 opened {h1} connection(s)"
    );
}
