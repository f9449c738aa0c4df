//! `kubectl kustomize controller/config` renders, and the objects are what the docs promise.

fn render() -> Option<Vec<serde_yaml::Value>> {
    render_dir("config")
}

/// `kubectl kustomize controller/<dir>` as YAML documents.
fn render_dir(dir: &str) -> Option<Vec<serde_yaml::Value>> {
    let dir = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
    let out = match cloudsigma_controller::testkit::kubectl()
        .args(["kustomize", &dir])
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIP: kubectl not runnable ({e}) and CLOUDSIGMA_K8S_ALLOW_SKIP=1");
            return None;
        }
        Err(e) => panic!("kubectl not runnable ({e}); tests/kube/build.sh builds it"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml doc"))
            .collect(),
    )
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn strs(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kustomize_renders_least_privilege_install() {
    let Some(docs) = render() else { return };
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "ConfigMap",
    ] {
        assert!(kinds.contains(&k), "missing {k} in {kinds:?}");
    }
    assert!(
        !kinds.contains(&"Secret"),
        "no Secret with placeholder credentials may be applied"
    );

    // ClusterRole: exactly nodes, nodes/status and events; never secrets or wildcards.
    let cr = find(&docs, "ClusterRole")[0];
    let mut resources = vec![];
    for rule in cr["rules"].as_sequence().expect("rules") {
        let res = strs(&rule["resources"]);
        let verbs = strs(&rule["verbs"]);
        assert!(
            !verbs.contains(&"*".to_string()) && !res.contains(&"*".to_string()),
            "wildcard in {rule:?}"
        );
        // Only the verbs the code uses (nodes are never patched, their status never updated).
        if res.contains(&"nodes".to_string()) {
            assert_eq!(verbs, ["get", "list", "watch", "update", "delete"]);
        }
        if res.contains(&"nodes/status".to_string()) {
            assert_eq!(verbs, ["patch"]);
        }
        if res.contains(&"events".to_string()) {
            assert_eq!(verbs, ["create", "patch"]);
        }
        resources.extend(res);
    }
    resources.sort();
    assert_eq!(resources, ["events", "nodes", "nodes/status"]);
    let role = find(&docs, "Role")[0];
    assert_eq!(
        role["metadata"]["namespace"].as_str(),
        Some("cloudsigma-system")
    );
    assert_eq!(strs(&role["rules"][0]["resources"]), ["leases"]);

    let dep = find(&docs, "Deployment")[0];
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-cluster-critical")
    );
    assert_eq!(
        pod["serviceAccountName"].as_str(),
        Some("cloudsigma-controller")
    );
    let tol: Vec<&str> = pod["tolerations"]
        .as_sequence()
        .expect("tolerations")
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    for k in [
        "node.cloudprovider.kubernetes.io/uninitialized",
        "node-role.kubernetes.io/control-plane",
        "node.kubernetes.io/not-ready",
        "CriticalAddonsOnly",
    ] {
        assert!(tol.contains(&k), "toleration {k} missing: {tol:?}");
    }
    let c = &pod["containers"][0];
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    // hostNetwork: /metrics must not listen on the node's public address. Nothing overrides the
    // loopback default, and the probes dial loopback.
    let mut settings = strs(&c["args"]);
    settings.extend(strs(&c["command"]));
    for e in c["env"].as_sequence().into_iter().flatten() {
        if e["name"].as_str() == Some("METRICS_BIND_ADDRESS") {
            settings.push(format!(
                "--metrics-bind={}",
                e["value"].as_str().unwrap_or("")
            ));
        }
    }
    for (k, v) in find(&docs, "ConfigMap")[0]["data"]
        .as_mapping()
        .into_iter()
        .flatten()
    {
        if k.as_str() == Some("METRICS_BIND_ADDRESS") {
            settings.push(format!("--metrics-bind={}", v.as_str().unwrap_or("")));
        }
    }
    for a in settings.iter().filter(|a| a.starts_with("--metrics-bind")) {
        let addr = a.split_once('=').map(|(_, v)| v).unwrap_or("");
        assert!(
            addr.starts_with("127.") || addr.starts_with("[::1]"),
            "metrics bound beyond loopback under hostNetwork: {a}"
        );
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["host"].as_str(),
            Some("127.0.0.1"),
            "{probe} must dial the loopback the server listens on"
        );
    }
    // The configMapGenerator's hashed name must be wired into envFrom.
    let cm = find(&docs, "ConfigMap")[0]["metadata"]["name"]
        .as_str()
        .expect("cm name")
        .to_string();
    assert_eq!(
        c["envFrom"][0]["configMapRef"]["name"].as_str(),
        Some(cm.as_str())
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"].as_str(),
        Some("cloudsigma-credentials")
    );
}

fn kinds(docs: &[serde_yaml::Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

/// Mode "nodes": the base, on control-plane nodes only.
#[test]
fn nodes_overlay_runs_only_on_control_plane_nodes() {
    let Some(docs) = render_dir("overlays/nodes") else {
        return;
    };
    let base = render().expect("base renders when the overlay does");
    assert_eq!(kinds(&docs), kinds(&base), "same objects as the base");
    let pod = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(
        pod["nodeSelector"]["node-role.kubernetes.io/control-plane"].as_str(),
        Some(""),
        "{pod:?}"
    );
    let tolerated: Vec<&str> = pod["tolerations"]
        .as_sequence()
        .expect("tolerations")
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(
        tolerated.contains(&"node-role.kubernetes.io/control-plane"),
        "{tolerated:?}"
    );
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
}

/// Mode "management", workload side: identity and RBAC, nothing that runs, no credentials.
#[test]
fn workload_overlay_is_rbac_only() {
    let Some(docs) = render_dir("overlays/workload") else {
        return;
    };
    let mut k = kinds(&docs);
    k.sort();
    assert_eq!(
        k,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Namespace",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
    );
    let role = find(&docs, "Role")[0];
    assert_eq!(
        role["metadata"]["namespace"].as_str(),
        Some("cloudsigma-system")
    );
}

/// Mode "management", management side: the Deployment reaches the workload cluster through the
/// kubeconfig Secret, has no API access and no RBAC in the management cluster.
#[test]
fn management_overlay_runs_the_controller_against_a_kubeconfig_secret() {
    let Some(docs) = render_dir("overlays/management") else {
        return;
    };
    let mut k = kinds(&docs);
    k.sort();
    assert_eq!(
        k,
        ["ConfigMap", "Deployment", "Namespace", "ServiceAccount"]
    );
    let pod = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert_ne!(pod["hostNetwork"].as_bool(), Some(true));
    assert!(pod["tolerations"].is_null(), "{:?}", pod["tolerations"]);
    let c = &pod["containers"][0];
    let args = strs(&c["args"]);
    let kubeconfig = args
        .iter()
        .find_map(|a| a.strip_prefix("--kubeconfig="))
        .unwrap_or_else(|| panic!("no --kubeconfig in {args:?}"));
    // The file is in the mount of the Secret cloudsigma-workload-kubeconfig.
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some("cloudsigma-workload-kubeconfig"))
        .and_then(|v| v["name"].as_str())
        .expect("a volume of the Secret cloudsigma-workload-kubeconfig");
    let mount = c["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .and_then(|m| m["mountPath"].as_str())
        .expect("the kubeconfig volume is mounted");
    assert_eq!(kubeconfig, format!("{mount}/kubeconfig"));
    assert!(
        args.contains(&"--lease-namespace=cloudsigma-system".to_string()),
        "the Lease is in the workload cluster's namespace: {args:?}"
    );
    // No hostNetwork: the probes dial the Pod's address, where the metrics listen.
    assert!(
        args.contains(&"--metrics-bind=$(POD_IP):10258".to_string()),
        "{args:?}"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(
            c[probe]["httpGet"]["host"].is_null(),
            "{probe}: {:?}",
            c[probe]
        );
    }
    // The CloudSigma credentials stay in the management cluster's Pod.
    assert!(pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .any(|v| v["secret"]["secretName"].as_str() == Some("cloudsigma-credentials")));
}
