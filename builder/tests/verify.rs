//! `--verify` (issue 23 item 3) against the in-process emulator, the recording transport
//! answering the checks as the guest would: a good image passes and only then gets its name and
//! tags; a kubelet that is not the tagged version fails the build naming the check, expected and
//! got, and nothing is left; so does a containerd holding another version's kube-proxy image;
//! `--keep-on-failure` keeps the candidate.

#[path = "support/fixture.rs"]
mod fixture;

use fixture::{answer_good_image, fixture};
use imgbuild::build::{BuildError, Options, Phase};
use imgbuild::transport::{LocalTransport, Recorded};

/// `t` answering every check as a good image does (answers added before win).
fn with_good_image(t: LocalTransport) -> LocalTransport {
    answer_good_image(&t);
    t
}
use tokio_util::sync::CancellationToken;

fn verify() -> Options {
    Options {
        verify: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_good_image_which_then_gets_its_name_and_tags() {
    let f = fixture().await;
    let t = f.transport();
    answer_good_image(&t);
    let b = f.builder(t.clone(), CancellationToken::new(), verify());
    let m = b.build(&f.recipe(&[])).await.expect("verified build");
    let entered: Vec<Phase> = m.stats.phases.iter().map(|p| p.phase).collect();
    // provision-base and base-capture once per layer (ubuntu-k8s has two)
    let want: Vec<Phase> = Phase::ALL
        .into_iter()
        .flat_map(|p| match p {
            Phase::BaseCapture => vec![p, Phase::ProvisionBase, p],
            _ => vec![p],
        })
        .collect();
    assert_eq!(entered, want, "with --verify and layers: every phase");
    let v = m.verify.expect("the manifest has the checks");
    assert_eq!(v.candidate, m.image_uuid);
    assert!(v.checks.len() >= 9, "{:?}", v.checks);
    assert!(v.checks.iter().all(|c| c.ok), "{:?}", v.checks);
    let kubelet = v
        .checks
        .iter()
        .find(|c| c.name.contains("kubelet"))
        .unwrap();
    assert_eq!(kubelet.expected, "\"Kubernetes v1.34.1\"");
    // the checks ran on the verify server (one login, its own address), after the build
    let rec = t.recorded();
    let checks: Vec<&str> = rec
        .iter()
        .filter_map(|r| match r {
            // (the base capture's `sync` is not a check)
            Recorded::Check { cmd, .. } if cmd != "sync" => Some(cmd.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(checks.len(), v.checks.len());
    assert!(checks
        .iter()
        .any(|c| c.contains("kubeadm version -o short")));
    let clean = rec.iter().position(|r| *r == Recorded::Clean).unwrap();
    let first_check = rec
        .iter()
        .position(|r| matches!(r, Recorded::Check { cmd, .. } if cmd != "sync"))
        .unwrap();
    assert!(clean < first_check, "verify runs on the finished image");
    assert!(
        matches!(&rec[first_check - 1], Recorded::WaitReady { .. }),
        "{:?}",
        &rec[first_check - 1]
    );
    // nothing of verify is left: the image (final name, state image) and the two layers
    let snap = f.emu.snapshot();
    assert!(snap.servers.is_empty(), "{:?}", snap.servers);
    assert_eq!(snap.drives.len(), 3, "{:?}", snap.drives);
    let img = snap.drives.iter().find(|d| d.uuid == m.image_uuid).unwrap();
    assert!(
        img.name.starts_with("ubuntu-2404-kube-v1.34.1-"),
        "{}",
        img.name
    );
    assert_eq!(
        img.meta.get("imgbuild.state").map(String::as_str),
        Some("image")
    );
    assert_eq!(
        img.size,
        20 << 30,
        "the image keeps its size; the clone was larger"
    );
    let log = b.reporter.captured().join("\n");
    assert!(log.contains("-candidate ("), "{log}");
    assert!(
        log.contains("verify: kubelet is the tagged version … ok"),
        "{log}"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_a_kubelet_that_is_not_the_tagged_version_and_leaves_nothing() {
    let f = fixture().await;
    let t = f.transport();
    t.answer("kubelet --version", 0, "Kubernetes v1.33.0");
    let (phase, error, cleanup, kept) = f.failed_build(with_good_image(t), verify()).await;
    assert_eq!(phase, Phase::Verify);
    assert!(!kept);
    assert!(
        error.contains("check \"kubelet is the tagged version\"")
            && error.contains("expected \"Kubernetes v1.34.1\"")
            && error.contains("got \"Kubernetes v1.33.0\""),
        "{error}"
    );
    assert!(!error.contains("kubeadm"), "only the failed check: {error}");
    assert!(cleanup.left.is_empty(), "{cleanup:?}");
    // the verify server, then the candidate, its clone and the two layers
    let servers = cleanup
        .deleted
        .iter()
        .filter(|d| d.starts_with("server "))
        .count();
    let drives = cleanup
        .deleted
        .iter()
        .filter(|d| d.starts_with("drive "))
        .count();
    assert_eq!((servers, drives), (1, 4), "{cleanup:?}");
    assert_eq!(f.counts(), (0, 0, 0), "nothing left in the emulator");
    f.emu.shutdown().await;
}

/// The kube-proxy check of ubuntu-k8s (what kubeadm of the tagged version deploys, pre-imported).
const KUBE_PROXY_CHECK: &str =
    "containerd holds the tagged version's kube-proxy image, and no other version's";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_the_tagged_versions_kube_proxy_image_in_containerd() {
    let f = fixture().await;
    let t = f.transport();
    answer_good_image(&t);
    let m = f
        .builder(t.clone(), CancellationToken::new(), verify())
        .build(&f.recipe(&[]))
        .await
        .expect("verified build");
    let v = m.verify.expect("the manifest has the checks");
    let k = v
        .checks
        .iter()
        .find(|c| c.name == KUBE_PROXY_CHECK)
        .unwrap_or_else(|| panic!("no kube-proxy check: {:?}", v.checks));
    assert!(k.ok, "{k:?}");
    assert_eq!(k.expected, "\"registry.k8s.io/kube-proxy:v1.34.1\"");
    assert_eq!(k.got, "\"registry.k8s.io/kube-proxy:v1.34.1\"");
    // asked of containerd's CRI namespace, over the verify session like the others
    assert!(t.recorded().iter().any(|r| matches!(
        r,
        Recorded::Check { cmd, .. } if cmd.starts_with("ctr -n k8s.io images ls -q")
    )));
    f.emu.shutdown().await;
}

/// The defect this check is for: an image of 1.34.1 whose containerd holds another version's
/// kube-proxy (an archive of the wrong version imported), alone or beside the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_when_containerd_holds_another_versions_kube_proxy() {
    for (found, what) in [
        (
            "registry.k8s.io/kube-proxy:v1.33.13",
            "only another version",
        ),
        (
            "registry.k8s.io/kube-proxy:v1.33.13 registry.k8s.io/kube-proxy:v1.34.1",
            "another version beside the tagged one",
        ),
    ] {
        let f = fixture().await;
        let t = f.transport();
        t.answer("registry.k8s.io/kube-proxy:", 0, found);
        let (phase, error, cleanup, _) = f.failed_build(with_good_image(t), verify()).await;
        assert_eq!(phase, Phase::Verify, "{what}");
        assert!(
            error.contains(&format!("check {KUBE_PROXY_CHECK:?}"))
                && error.contains("expected \"registry.k8s.io/kube-proxy:v1.34.1\"")
                && error.contains(&format!("got {found:?}")),
            "{what}: {error}"
        );
        assert!(!error.contains("kubelet"), "only the failed check: {error}");
        assert!(cleanup.left.is_empty(), "{what}: {cleanup:?}");
        assert_eq!(
            f.counts(),
            (0, 0, 0),
            "{what}: nothing left in the emulator"
        );
        f.emu.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_on_failure_keeps_the_candidate_under_its_candidate_name() {
    let f = fixture().await;
    let t = f.transport();
    t.answer(
        "containerd --version",
        0,
        "containerd github.com/containerd/containerd v2.1.0 x",
    );
    answer_good_image(&t);
    let opts = Options {
        keep_on_failure: true,
        no_base_cache: true,
        ..verify()
    };
    let r = f
        .builder(t, CancellationToken::new(), opts)
        .build(&f.recipe(&[]))
        .await;
    match &r {
        Err(BuildError::Failed {
            kept: true, error, ..
        }) => {
            assert!(
                error.contains("containerd is the tagged version"),
                "{error}"
            );
            assert!(error.contains("output containing \"1.7.28\""), "{error}");
        }
        other => panic!("expected a kept failure, got {other:?}"),
    }
    let snap = f.emu.snapshot();
    let cand = snap
        .drives
        .iter()
        .find(|d| d.name.ends_with("-candidate"))
        .expect("the candidate is kept");
    assert!(cand.name.starts_with("imgbuild-"), "{}", cand.name);
    assert_eq!(
        cand.meta.get("imgbuild.state").map(String::as_str),
        Some("building")
    );
    assert!(!snap
        .drives
        .iter()
        .any(|d| d.meta.get("imgbuild.state").map(String::as_str) == Some("image")));
    // the verify server and its clone are kept with it, and `clean --all` removes all three
    assert_eq!((snap.servers.len(), snap.drives.len()), (1, 2));
    let rep = imgbuild::build::clean(&f.cloud(), std::time::Duration::ZERO, true, false, &|_| {})
        .await
        .unwrap();
    assert_eq!((rep.servers.len(), rep.drives.len()), (1, 2));
    assert_eq!((f.counts().0, f.counts().1), (0, 0));
    f.emu.shutdown().await;
}

/// A matrix under `--verify`: the version whose candidate fails is `failed`, cleaned up and not
/// in the manifest's `published` list; the other is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_publishes_only_verified_images() {
    use imgbuild::matrix::{self, Job, Status};
    use imgbuild::progress::{Mode, Reporter};
    use imgbuild::transport::LocalTransport;
    use std::sync::Arc;
    let f = fixture().await;
    let rep = Reporter::new(Mode::Quiet);
    let axes = matrix::parse(&["kubernetes_version=1.33.5,1.34.1".to_string()]).unwrap();
    let mut work = Vec::new();
    for c in matrix::combinations(&axes) {
        let v = c.vars()["kubernetes_version"].clone();
        let t = LocalTransport::new(f.dir.path().join(format!("sandbox-{}", c.index)));
        // both guests report kubelet and kubeadm 1.34.1: right for one version only
        answer_good_image(&t);
        let builder = imgbuild::build::Builder::new(
            f.cloud(),
            Arc::new(t),
            rep.prefixed(&c.label()),
            CancellationToken::new(),
            verify(),
        );
        work.push(Job {
            recipe: f.recipe(&[("kubernetes_version", &v)]),
            combo: c,
            builder,
        });
    }
    let m = matrix::run("ubuntu-k8s", work, 2).await;
    let c = &m.combinations;
    assert_eq!(
        (c[0].status, c[1].status),
        (Status::Failed, Status::Built),
        "{c:#?}"
    );
    assert_eq!(c[0].phase.as_deref(), Some("verify"));
    assert!(c[0].left.is_empty(), "{:?}", c[0].left);
    assert_eq!(m.published, vec![c[1].drive_uuid.clone().unwrap()]);
    let snap = f.emu.snapshot();
    assert!(snap.servers.is_empty());
    assert!(
        !snap
            .drives
            .iter()
            .any(|d| d.name.contains("-candidate") || d.name.contains("-verify")),
        "{:?}",
        snap.drives
    );
    f.emu.shutdown().await;
}
