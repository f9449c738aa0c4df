//! The controller installed as an operator installs it (issue 11; docs/e2e.md): one real node with
//! a single public NIC (its NAT address is its InternalIP and ExternalIP), a bridge CNI file from
//! its join data, and instead of a host process the controller runs in the cluster, put there by
//! `kubectl apply -k` of a site kustomization over `tests/e2e/overlays/in-cluster`:
//!
//! 1. The controller image (scripts/controller-image, an OCI archive) is copied to the node over
//!    SSH and imported into its containerd (`ctr -n k8s.io images import`), as an operator without
//!    a registry would; the overlay never pulls it.
//! 2. The site layer sets the image, the credentials Secret (username and password files), the
//!    emulator's API URL as the guest reaches it (10.0.2.2) and, because there is no kube-proxy,
//!    `KUBERNETES_SERVICE_HOST`/`PORT` to the apiserver's advertised endpoint.
//! 3. The Pod schedules onto the still-uninitialized node (tolerations, `hostNetwork`), runs
//!    under its securityContext (checked in the node's /proc), reads the mounted credentials,
//!    takes the Lease and initializes the very node it runs on: the Node object, the Pod's own
//!    `/metrics` (read inside the node, where the Pod's host network is) and its log say so.
//!
//! `cluster` (the demo) tests the controller as a host process in the production topology; this
//! one tests the shipped image and kustomize install.

use e2e::control_plane::{ControlPlane, GUEST_HOST};
use e2e::harness::{self, say};
use e2e::kube_node::{self as kn, condition, wait_for, NODE};
use serde_json::Value;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

const NS: &str = "cloudsigma-system";
const SELECTOR: &str = "app.kubernetes.io/name=cloudsigma-controller";

/// The site kustomization an operator keeps next to their credentials: the project's overlay as
/// a resource, plus what only this site knows. Written into `dir`, with the credentials as files
/// (never on a command line, never printed).
fn write_site_overlay(
    dir: &Path,
    overlay: &Path,
    image_ref: &str,
    api_url: &str,
    apiserver_port: u16,
    (user, pass): (&str, &str),
) -> PathBuf {
    let site = dir.join("site");
    std::fs::create_dir_all(&site).expect("site dir");
    // kustomize takes only relative resource paths
    let rel = relative_to(&site, overlay);
    let (name, tag) = image_ref
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("image reference without a tag: {image_ref}"));
    let body = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {rel}
images:
  # the base's image, as the name the imported archive carries
  - name: ghcr.io/cloudsigma-k8s/cloudsigma-controller
    newName: {name}
    newTag: "{tag}"
configMapGenerator:
  - name: cloudsigma-controller-config
    namespace: {NS}
    behavior: merge
    literals:
      - CLOUDSIGMA_API_URL={api_url}
      # plain http to the host's emulator, not loopback from the Pod: allowed explicitly
      - CLOUDSIGMA_ALLOW_INSECURE_HTTP=true
      # no kube-proxy: the in-cluster client goes to the apiserver's advertised endpoint
      - KUBERNETES_SERVICE_HOST={GUEST_HOST}
      - KUBERNETES_SERVICE_PORT={apiserver_port}
secretGenerator:
  - name: cloudsigma-credentials
    namespace: {NS}
    files: [username, password]
"#
    );
    std::fs::write(site.join("kustomization.yaml"), body).expect("site kustomization");
    std::fs::write(site.join("username"), user).expect("username file");
    std::fs::write(site.join("password"), pass).expect("password file");
    site
}

/// `target` relative to `from` (both absolute and canonical).
fn relative_to(from: &Path, target: &Path) -> String {
    let from = std::fs::canonicalize(from).expect("canonical site dir");
    let target = std::fs::canonicalize(target).expect("canonical overlay dir");
    let (f, t): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), target.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut rel: Vec<String> = vec!["..".into(); f.len() - common];
    rel.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    rel.join("/")
}

fn controller_pod(cp: &ControlPlane) -> Option<Value> {
    cp.kubectl(&["-n", NS, "get", "pods", "-l", SELECTOR, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|l| l["items"].as_array().and_then(|i| i.first().cloned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster() {
    let t0 = Instant::now();
    let mut phases = test_support::Phases::new();
    if !harness::prereqs_or_skip("in_cluster") {
        return;
    }
    let repo = harness::repo();

    // 1. artifacts, library image, the static agent and imgbuild; the controller's image
    let prepared = kn::prepare(t0, &repo, false, &mut phases);
    let p = Instant::now();
    say(
        t0,
        "controller image: $CONTROLLER_IMAGE_ARCHIVE or scripts/controller-image",
    );
    let archive = tokio::task::block_in_place(|| e2e::builds::controller_image_archive(&repo));
    let image_ref = e2e::builds::archive_image_ref(&archive);
    phases.done("controller image", p);

    // 2. the control plane, 3. the emulator, 4. the node image
    let kn::Stage {
        cp,
        join,
        cloud,
        image,
    } = kn::stage(t0, &repo, &prepared, &mut phases).await;
    let (emu, api) = (&cloud.emu, &cloud.api);

    // 5. the site overlay: the emulator listens on the host's loopback, which the guest (and so
    //    the Pod, on the host network) reaches at 10.0.2.2
    let api_url = emu.api_url().replace("127.0.0.1", GUEST_HOST);
    assert_ne!(
        api_url,
        emu.api_url(),
        "emulator not on 127.0.0.1: {api_url}"
    );
    let site = write_site_overlay(
        cp.dir.path(),
        &repo.join("tests/e2e/overlays/in-cluster"),
        &image_ref,
        &api_url,
        cp.port,
        (emu.username(), emu.password()),
    );
    let rendered = cp
        .kubectl(&["kustomize", &site.display().to_string()])
        .expect("kubectl kustomize of the site overlay");
    assert!(
        rendered.contains(&format!("image: {image_ref}\n")) && rendered.contains("imagePullPolicy: Never"),
        "the overlay does not run the imported image {image_ref} without pulling (has the base's image name changed?)"
    );
    assert!(
        !rendered.contains(emu.password()),
        "the password is in the manifests in plain text"
    );

    // 6. the node boots and joins; the controller image goes into its containerd
    let p = Instant::now();
    let (_keydir, key, pubkey) = e2e::ssh::ssh_keypair();
    let booted = kn::boot(&cloud, &image, &join, &key, &pubkey).await;
    let (server, ip, ssh) = (booted.server.clone(), booted.ip.clone(), booted.ssh.clone());
    say(
        t0,
        &format!("node {server} started, NAT IP {ip}; importing {image_ref} into its containerd"),
    );
    let imported = tokio::task::block_in_place(|| {
        ssh.run_retrying("sudo systemctl is-active containerd", Duration::from_secs(600))
            .and_then(|_| ssh.copy_to(&archive, "/tmp/controller.tar"))
            .and_then(|_| {
                ssh.run("sudo ctr -n k8s.io images import /tmp/controller.tar >&2 && rm /tmp/controller.tar && sudo ctr -n k8s.io images ls -q")
            })
    })
    .unwrap_or_else(|e| panic!("importing the controller image on the node: {e}"));
    assert!(
        imported.lines().any(|l| l.trim() == image_ref),
        "{image_ref} not in the node's containerd after the import: {imported}"
    );
    phases.done("boot -> image imported", p);

    // 7. the install: kubectl apply -k
    say(
        t0,
        "kubectl apply -k (site overlay over tests/e2e/overlays/in-cluster)",
    );
    let applied_at = Instant::now();
    cp.kubectl(&["apply", "-k", &site.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl apply -k: {e}"));
    let cp_ref = &cp;
    let diag = || {
        format!(
            "{}\n{}\n--- controller pods\n{}\n--- controller log\n{}",
            cp_ref.log_tail("kube-controller-manager", 15),
            cp_ref.log_tail("kube-scheduler", 10),
            cp_ref
                .kubectl(&["-n", NS, "describe", "pods", "-l", SELECTOR])
                .unwrap_or_else(|e| e),
            cp_ref
                .kubectl(&["-n", NS, "logs", "-l", SELECTOR, "--tail=30"])
                .unwrap_or_else(|e| e),
        )
    };

    // 8. registered (tainted), then initialized by the controller running on it
    let (node, tainted_at_registration, registered_at, initialized) =
        kn::registered_then_initialized(cp_ref, &diag).await;
    say(t0, &format!("Node {NODE} registered (uninitialized taint at first sight: {tainted_at_registration}), initialized {:.1}s later", initialized.as_secs_f64()));
    phases.push(
        "apply -> Node registered",
        registered_at.duration_since(applied_at),
    );
    phases.push("registered -> initialized", initialized);
    kn::assert_initialized(&node, &server, &ip, &ssh);
    assert!(
        tainted_at_registration,
        "the Node registered without the uninitialized taint: nothing proves the Pod ran before initialization"
    );

    // 9. the Pod: on this node, host network, Running and Ready (its probes answer)
    let pod = wait_for(
        "controller Pod Ready",
        Duration::from_secs(180),
        || controller_pod(cp_ref).filter(|p| condition(p, "Ready") == "True"),
        &diag,
    )
    .await;
    phases.push("apply -> Pod Ready", applied_at.elapsed());
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(pod["spec"]["nodeName"], NODE, "the Pod runs elsewhere");
    assert_eq!(pod["spec"]["hostNetwork"], true, "hostNetwork");
    let restarts = pod["status"]["containerStatuses"][0]["restartCount"].as_u64();
    assert_eq!(restarts, Some(0), "the controller restarted: {pod}");

    // the Lease is the Pod's
    let holder = cp
        .kubectl(&[
            "-n",
            NS,
            "get",
            "lease",
            "cloudsigma-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_else(|e| panic!("the controller's Lease: {e}"));
    // <POD_NAME>_<uuid v4>: unique per process, readable (docs/controller.md, leader election)
    let holder = holder.trim();
    let uuid = holder
        .strip_prefix(&format!("{pod_name}_"))
        .unwrap_or_else(|| panic!("Lease holder {holder:?} is not {pod_name}_<uuid>"));
    assert_eq!(
        uuid.len(),
        36,
        "Lease holder {holder:?}: no uuid after the pod name"
    );

    // its securityContext, as the kernel sees the process: uid/gid 65532, no new privileges,
    // seccomp filter mode, no capabilities
    let status = ssh
        .run("for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = cloudsigma-cont ] && grep -E '^(Uid|Gid|NoNewPrivs|Seccomp|CapEff):' $d/status; done; true")
        .unwrap_or_else(|e| panic!("reading the controller's /proc status on the node: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no controller process on the node, or no {name}: {status}"))
    };
    assert_eq!(field("Uid"), "65532 65532 65532 65532", "uid");
    assert_eq!(field("Gid"), "65532 65532 65532 65532", "gid");
    assert_eq!(field("NoNewPrivs"), "1", "allowPrivilegeEscalation: false");
    assert_eq!(
        field("Seccomp"),
        "2",
        "seccompProfile RuntimeDefault (filter mode)"
    );
    assert_eq!(field("CapEff"), "0000000000000000", "capabilities drop ALL");

    // 10. its own /metrics, from inside the node (the Pod's host network)
    let metrics = ssh
        .run_retrying(
            "curl -sS --max-time 10 http://127.0.0.1:10258/metrics",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("the Pod's /metrics on the node: {e}"));
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{metrics}"))
    };
    assert_eq!(sample("cloudsigma_controller_leader"), 1.0, "leader gauge");
    assert!(
        sample(r#"cloudsigma_controller_node_actions_total{action="initialized"}"#) >= 1.0,
        "no initialization counted"
    );
    let log = cp
        .kubectl(&["-n", NS, "logs", &pod_name])
        .unwrap_or_else(|e| panic!("kubectl logs {pod_name}: {e}"));
    assert!(
        log.contains("node initialized") && log.contains(&server),
        "the Pod's log does not show it initializing {server}:\n{log}"
    );
    assert!(
        !log.contains(emu.password()),
        "the password is in the Pod's log"
    );
    say(
        t0,
        &format!("Pod {pod_name} on {NODE} holds the Lease and initialized its own Node; /metrics: leader 1"),
    );

    // 11. the Node Ready
    wait_for(
        "Node Ready",
        Duration::from_secs(300),
        || kn::node_json(cp_ref).filter(|n| condition(n, "Ready") == "True"),
        &diag,
    )
    .await;
    let wide = cp
        .kubectl(&["get", "nodes,pods", "-A", "-o", "wide"])
        .unwrap_or_default();
    let guest = kn::guest_times(&ssh);

    // 12. cleanup: the server (and the controller with it), the image, the control plane
    let mut booted = booted;
    booted.report.ssh = None;
    api.power_off_and_delete(&server, "stop", Duration::from_secs(120))
        .await;
    cloud.finish(&image).await;
    kn::stop_control_plane(cp);
    drop(booted);

    eprint!("\n{}", phases.table("in-cluster controller"));
    guest.print();
    eprintln!("\n$ kubectl get nodes,pods -A -o wide   (at Ready)\n{wide}");
}

/// The install's manifests without a VM (seconds): what `kubectl apply -k` of the site layer over
/// the overlay over controller/config would create. Catches a base change the overlay no longer
/// fits before the slow loop does.
#[test]
fn site_overlay_renders_the_install() {
    let kubectl = harness::cache_dir().join("kube-bin/kubectl");
    if !kubectl.exists() {
        if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: no {} (tests/kube/build.sh --node)",
                kubectl.display()
            );
            return;
        }
        panic!("no {}: run tests/kube/build.sh --node", kubectl.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let password = "pw-not-in-any-manifest-4711";
    let site = write_site_overlay(
        dir.path(),
        &harness::repo().join("tests/e2e/overlays/in-cluster"),
        "registry.example/cloudsigma-controller:1.2.3",
        "http://10.0.2.2:4242/api/2.0/",
        6443,
        ("user@example.com", password),
    );
    let out = harness::run(
        std::process::Command::new(&kubectl)
            .arg("kustomize")
            .arg(&site),
        "kubectl kustomize",
    );
    let has = |s: &str| out.contains(s);
    for want in [
        "image: registry.example/cloudsigma-controller:1.2.3\n",
        "imagePullPolicy: Never\n",
        "CLOUDSIGMA_API_URL: http://10.0.2.2:4242/api/2.0/\n",
        "KUBERNETES_SERVICE_HOST: 10.0.2.2\n",
        "KUBERNETES_SERVICE_PORT: \"6443\"\n",
        "name: CLOUDSIGMA_USERNAME_FILE\n",
        "name: CLOUDSIGMA_PASSWORD_FILE\n",
        "hostNetwork: true\n",
        "key: node.cloudprovider.kubernetes.io/uninitialized\n",
    ] {
        assert!(
            has(want),
            "{want:?} missing from the rendered install:\n{out}"
        );
    }
    assert!(
        !has("CLOUDSIGMA_TOKEN_FILE"),
        "the base's token file is still set:\n{out}"
    );
    assert!(
        !has(password),
        "the password is in the manifests in plain text"
    );
    // the generated (hashed) names are the ones the Deployment refers to
    let generated = |kind: &str, base: &str| {
        out.split("\n---\n")
            .find(|d| {
                d.contains(&format!("kind: {kind}\n")) && d.contains(&format!("name: {base}-"))
            })
            .and_then(|d| {
                d.lines()
                    .map(str::trim)
                    .find_map(|l| l.strip_prefix("name: ").filter(|n| n.starts_with(base)))
            })
            .unwrap_or_else(|| panic!("no generated {kind} {base}-…:\n{out}"))
            .to_string()
    };
    let secret = generated("Secret", "cloudsigma-credentials");
    let config = generated("ConfigMap", "cloudsigma-controller-config");
    assert!(has(&format!("secretName: {secret}\n")), "{out}");
    assert!(
        has(&format!("configMapRef:\n            name: {config}\n")),
        "{out}"
    );
}
