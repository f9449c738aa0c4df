//! Image automation in real VMs (issue 23 item 4): one `imgbuild debian-k8s --matrix
//! kubernetes_version=1.33.13,1.34.1 --matrix location=a,b --jobs 2 --verify` against two
//! emulators (two locations of one account) with the QEMU backend. Kubernetes v1.33.13 is built
//! from Go modules like v1.34.1 (`tests/kube/build.sh --node --kube-version v1.33.13`; only
//! kubelet, kubeadm and kubectl differ). Checked (`e2e::image_matrix::check_matrix`): four images,
//! each in its own location only, one fingerprint per version, the uploaded kubelet that
//! version's; one base layer per location, captured by one build and started from by the other,
//! and a Kubernetes layer per combination (one fingerprint per version) — or, warm, the layers
//! the Kubernetes loops and this loop kept restored into both locations first
//! (`Locations::restore_kept`: each combination then builds from its Kubernetes layer);
//! every `--verify` check passed on a booted clone, kubelet and kubeadm reporting the tagged
//! version; the accounts hold the images and layers only. Then everything is deleted: zero
//! servers, drives, tags, drive files and QEMU processes in both.
//!
//! Needs what the real-node loops need (root, QEMU, debootstrap, Go). Cost on 2 cores under
//! TCG, warm and from nothing: docs/e2e.md, "The image matrix loop". `E2E_FRESH_IMAGE=1`
//! restores no layer (the cold matrix, every layer built and checked as captured).

use e2e::harness::{self, say};
use e2e::image_matrix::{self, Locations};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_matrix() {
    let t0 = Instant::now();
    let mut phases = test_support::Phases::new();
    if !harness::prereqs_or_skip("image_matrix") {
        return;
    }
    let repo = harness::repo();
    let prepared = image_matrix::prepare(t0, &repo, &mut phases);
    let locs = Locations::start(t0, &prepared.img_dir).await;
    let p = Instant::now();
    let kept = locs.restore_kept(t0).await;
    phases.done("kept layers restored", p);

    let p = Instant::now();
    say(
        t0,
        "imgbuild debian-k8s --matrix kubernetes_version=1.33.13,1.34.1 --matrix location=a,b --jobs 2 --verify",
    );
    let run =
        tokio::task::block_in_place(|| image_matrix::matrix(&prepared, &locs, 2, &["--verify"]));
    phases.done("imgbuild matrix (4 images, --verify)", p);
    say(
        t0,
        &format!("matrix done in {:.0} s; checking", run.wall.as_secs_f64()),
    );
    image_matrix::check_matrix(&run, &prepared, &locs, true, &kept).await;
    let p = Instant::now();
    locs.keep_layers(&run, &kept).await;
    phases.done("layers kept", p);

    let p = Instant::now();
    locs.finish().await;
    phases.done("cleanup", p);
    say(t0, "image matrix: PASS");
    eprintln!("{}", phases.table("image_matrix"));
}
