//! The cached layers (recipe `layers`, `base_until` for one; issue 23 item 2) against the
//! in-process emulator with the recording transport: capture, reuse of the deepest matching
//! layer, refusal of another fingerprint, fallback, `--no-base-cache`, `--dry-run`, `clean`, the
//! capture at a reboot step, and the fingerprints' inputs. The shipped ubuntu-k8s has two
//! layers: the base (steps 1..6, up to the reboot) and the Kubernetes version's (steps 1..7).

#[path = "support/fixture.rs"]
mod fixture;

use cloudsim::OnceRule;
use fixture::fixture;
use imgbuild::build::{BuildError, Manifest, Options, Phase};
use imgbuild::recipe::Recipe;
use imgbuild::transport::Recorded;
use tokio_util::sync::CancellationToken;

/// A build of the recipe with `vars` whose first drive action (the clone of the layer it starts
/// from) answers 500, once: its manifest, progress lines and the scripts it ran.
async fn build_after_a_failed_clone(
    f: &fixture::Fixture,
    vars: &[(&str, &str)],
) -> (Manifest, String, Vec<String>) {
    f.emu.add_once_rule(OnceRule {
        method: Some("POST".into()),
        path: "/api/2.0/drives/{uuid}/action/".into(),
        status: 500,
        count: 1,
    });
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let m = b
        .build(&f.recipe(vars))
        .await
        .expect("falls back and builds");
    (m, b.reporter.captured().join("\n"), scripts(&t.recorded()))
}

/// The scripts a build ran, by file name.
fn scripts(rec: &[Recorded]) -> Vec<String> {
    rec.iter()
        .filter_map(|r| match r {
            Recorded::Script { path, .. } => Some(path.file_name()?.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

const BASE_SCRIPTS: [&str; 5] = [
    "00-wait-boot.sh",
    "10-kernel.sh",
    "20-swap-off.sh",
    "30-containerd.sh",
    "80-initramfs.sh",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_from_the_base_layer_runs_only_the_steps_after_it() {
    let f = fixture().await;
    let first = f.build(&[], Options::default()).await.expect("first build");
    let layer = first.base_layer.clone().expect("captured");
    // another Kubernetes version: another image, the same base layer (no base step reads it)
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let m = b
        .build(&f.recipe(&[("kubernetes_version", "1.34.2")]))
        .await
        .expect("build from the base layer");
    let used = m.base_layer.clone().expect("base layer in the manifest");
    assert!(used.reused);
    assert_eq!(used.uuid, layer.uuid);
    assert_eq!(used.fingerprint, layer.fingerprint);
    let ran = scripts(&t.recorded());
    for s in BASE_SCRIPTS {
        assert!(!ran.contains(&s.to_string()), "{s} ran again: {ran:?}");
    }
    assert!(ran.contains(&"40-kubernetes.sh".to_string()), "{ran:?}");
    let entered: Vec<Phase> = m.stats.phases.iter().map(|p| p.phase).collect();
    assert!(entered.contains(&Phase::BaseLookup));
    // the first build's Kubernetes layer is of another version: refused; this version's is
    // captured after step 7
    let old_k8s = &first.layers[1];
    assert_eq!((old_k8s.steps, old_k8s.reused), (7, false));
    assert_eq!(m.layers.len(), 2, "{:?}", m.layers);
    let new_k8s = &m.layers[1];
    assert_eq!((new_k8s.steps, new_k8s.reused), (7, false));
    assert_ne!(new_k8s.fingerprint, old_k8s.fingerprint);
    assert_ne!(new_k8s.uuid, old_k8s.uuid);
    assert_eq!(
        entered.iter().filter(|p| **p == Phase::BaseCapture).count(),
        1
    );
    let log = b.reporter.captured().join("\n");
    let short = &layer.fingerprint[..16];
    assert!(
        log.contains(&format!("base {short} found: "))
            && log.contains(&format!(
                "steps 7..13 only; layer {} kept at step 7",
                &new_k8s.fingerprint[..16]
            )),
        "{log}"
    );
    // the steps keep their numbers of the whole recipe
    assert!(log.contains("step 13/13 done in"), "{log}");
    let snap = f.emu.snapshot();
    assert_eq!(
        snap.drives.len(),
        5,
        "two images, one base layer, each version's layer"
    );
    let img = snap.drives.iter().find(|d| d.uuid == m.image_uuid).unwrap();
    assert_eq!(img.meta.get("imgbuild.base-layer"), Some(&layer.uuid));
    assert!(!img.meta.contains_key("imgbuild.base-fingerprint"));
    assert_eq!(
        img.meta.get("imgbuild.state").map(String::as_str),
        Some("image")
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_layer_of_another_fingerprint_is_never_used() {
    let f = fixture().await;
    let first = f.build(&[], Options::default()).await.expect("first build");
    let old = first.base_layer.expect("captured");
    // containerd_version is read by 30-containerd.sh, a base step: another base fingerprint
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let m = b
        .build(&f.recipe(&[("containerd_version", "1.7.27")]))
        .await
        .expect("full build");
    let new = m.base_layer.clone().expect("a new layer is captured");
    assert!(!new.reused, "the layer of another fingerprint was used");
    assert_ne!(new.fingerprint, old.fingerprint);
    assert_ne!(new.uuid, old.uuid);
    let ran = scripts(&t.recorded());
    for s in BASE_SCRIPTS {
        assert!(ran.contains(&s.to_string()), "{s} did not run: {ran:?}");
    }
    let log = b.reporter.captured().join("\n");
    assert!(
        log.contains("2 base layer(s) of other base fingerprints ignored"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "no base {}: full build, base kept at step 6, layer {} kept at step 7",
            &new.fingerprint[..16],
            &m.layers[1].fingerprint[..16]
        )),
        "{log}"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_layer_that_cannot_be_cloned_means_a_full_build() {
    let f = fixture().await;
    let first = f.build(&[], Options::default()).await.expect("first build");
    let layer = first.base_layer.expect("captured");
    let (m, log, ran) = build_after_a_failed_clone(&f, &[("kubernetes_version", "1.34.2")]).await;
    assert!(
        log.contains(&format!("base layer {} (", layer.name))
            && log.contains("could not be cloned")
            && log.contains("falling back to a full build from the library drive"),
        "{log}"
    );
    assert!(ran.contains(&"00-wait-boot.sh".to_string()), "{ran:?}");
    // the base layer exists: not captured again; the new version's Kubernetes layer is
    assert_eq!(
        m.layers
            .iter()
            .map(|l| (l.steps, l.reused))
            .collect::<Vec<_>>(),
        [(7, false)],
        "{:?}",
        m.layers
    );
    let (servers, drives, _) = f.counts();
    assert_eq!(
        (servers, drives),
        (0, 5),
        "two images, the one base layer, two Kubernetes layers; no half-made clone"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deepest_layer_that_cannot_be_cloned_falls_back_to_the_one_under_it() {
    let f = fixture().await;
    let first = f.build(&[], Options::default()).await.expect("first build");
    let (base, k8s) = (&first.layers[0], &first.layers[1]);
    // only the agent changed: the deepest layer (Kubernetes) is the one to start from
    std::fs::write(&f.agent, b"#!/bin/sh\necho agent v2\n").unwrap();
    let (m, log, ran) = build_after_a_failed_clone(&f, &[]).await;
    assert!(
        log.contains(&format!(
            "base layer {} ({}) could not be cloned",
            k8s.name, k8s.uuid
        )) && log.contains(&format!(
            "falling back to the layer {} ({}): steps 7.. only",
            base.name, base.uuid
        )),
        "{log}"
    );
    for s in BASE_SCRIPTS {
        assert!(!ran.contains(&s.to_string()), "{s} ran again: {ran:?}");
    }
    assert!(ran.contains(&"40-kubernetes.sh".to_string()), "{ran:?}");
    // started from the base layer; the Kubernetes layer exists: not captured again
    assert_eq!(
        m.layers
            .iter()
            .map(|l| (l.uuid.as_str(), l.reused))
            .collect::<Vec<_>>(),
        [(base.uuid.as_str(), true)]
    );
    let (servers, drives, _) = f.counts();
    assert_eq!(
        (servers, drives),
        (0, 4),
        "two images and the two layers, none twice; no half-made clone"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_base_cache_neither_captures_nor_uses_a_layer() {
    let f = fixture().await;
    let off = Options {
        no_base_cache: true,
        ..Default::default()
    };
    let b = f.builder(f.transport(), CancellationToken::new(), off.clone());
    let m = b.build(&f.recipe(&[])).await.expect("build");
    assert!(m.base_layer.is_none());
    assert_eq!(f.counts().1, 1, "no layer captured");
    let log = b.reporter.captured().join("\n");
    assert!(log.contains("base layer off (--no-base-cache)"), "{log}");
    // a layer exists, but --no-base-cache builds from the library drive
    f.build(&[("kubernetes_version", "1.34.0")], Options::default())
        .await
        .expect("captures");
    let t = f.transport();
    f.builder(t.clone(), CancellationToken::new(), off)
        .build(&f.recipe(&[("kubernetes_version", "1.34.2")]))
        .await
        .expect("full build");
    assert!(scripts(&t.recorded()).contains(&"00-wait-boot.sh".to_string()));
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_capture_deletes_the_layer_unless_kept() {
    let f = fixture().await;
    let mut t = f.transport();
    t.fail_script = Some("40-kubernetes.sh".into());
    let r = f
        .builder(t.clone(), CancellationToken::new(), Options::default())
        .build(&f.recipe(&[]))
        .await;
    match r {
        Err(BuildError::Failed { cleanup, .. }) => {
            assert_eq!(
                cleanup
                    .deleted
                    .iter()
                    .filter(|d| d.starts_with("drive "))
                    .count(),
                2
            )
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(f.counts(), (0, 0, 0));
    let keep = Options {
        keep_on_failure: true,
        ..Default::default()
    };
    let r = f
        .builder(t, CancellationToken::new(), keep)
        .build(&f.recipe(&[]))
        .await;
    assert!(matches!(r, Err(BuildError::Failed { kept: true, .. })));
    let snap = f.emu.snapshot();
    assert!(
        snap.drives
            .iter()
            .any(|d| d.meta.get("imgbuild.state").map(String::as_str) == Some("base")),
        "the kept layer is complete and reusable"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_says_whether_the_base_layer_exists() {
    let f = fixture().await;
    let r = f.recipe(&[]);
    let look = imgbuild::build::look_base_layer(&f.cloud(), &r)
        .await
        .unwrap()
        .expect("the recipe has a base layer");
    assert!(look.found.is_none());
    let p = imgbuild::plan::plan_with(&r, &Options::default(), None, Some(&look));
    let short = &look.fingerprint[..16];
    assert!(
        p.contains(&format!(
            "no base {short}: full build, base kept at step 6, layer "
        )),
        "{p}"
    );
    f.build(&[], Options::default()).await.expect("build");
    let look = imgbuild::build::look_base_layer(&f.cloud(), &r)
        .await
        .unwrap()
        .unwrap();
    // the deepest layer: the Kubernetes version's
    let (fp, steps, name, _) = look.found.clone().expect("found after the build");
    assert_eq!(steps, 7);
    let p = imgbuild::plan::plan_with(&r, &Options::default(), None, Some(&look));
    assert!(
        p.contains(&format!("base {} found: {name} (", &fp[..16]))
            && p.contains("steps 8..13 only"),
        "{p}"
    );
    // another version: the base layer only
    let other = f.recipe(&[("kubernetes_version", "1.34.2")]);
    let look = imgbuild::build::look_base_layer(&f.cloud(), &other)
        .await
        .unwrap()
        .unwrap();
    let (fp, steps, _, _) = look.found.clone().expect("the base layer");
    assert_eq!((steps, &fp[..16]), (6, short));
    let p = imgbuild::plan::plan_with(&other, &Options::default(), None, Some(&look));
    assert!(
        p.contains("steps 7..13 only; layer ") && p.contains(" kept at step 7"),
        "{p}"
    );
    let off = Options {
        no_base_cache: true,
        ..Default::default()
    };
    assert!(imgbuild::plan::plan(&r, &off, None).contains("off (--no-base-cache): full build"));
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_fingerprint_covers_only_the_base_steps() {
    let f = fixture().await;
    let lib = "6d4a1c3e-0000-4000-8000-000000000001";
    let fp = |extra: &[(&str, &str)]| f.recipe(extra).base_fingerprint(lib).unwrap();
    let base = fp(&[]);
    // read only by steps after the mark
    assert_eq!(base, fp(&[("kubernetes_version", "1.33.5")]));
    // read by 30-containerd.sh
    assert_ne!(base, fp(&[("pause_image", "registry.k8s.io/pause:3.9")]));
    assert_ne!(base, fp(&[("containerd_version", "1.7.27")]));
    assert_ne!(base, fp(&[("runc_version", "1.2.0")]));
    // the library drive
    assert_ne!(
        base,
        f.recipe(&[])
            .base_fingerprint("6d4a1c3e-0000-4000-8000-000000000002")
            .unwrap()
    );
    // the agent (a later step's upload) does not count
    std::fs::write(&f.agent, b"#!/bin/sh\necho agent v2\n").unwrap();
    assert_eq!(base, fp(&[]));
    // and the image fingerprint is another hash
    assert_ne!(base, f.recipe(&[]).fingerprint(lib));
    f.emu.shutdown().await;
}

#[test]
fn base_until_is_checked_and_the_shipped_recipes_mark_their_base() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes");
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("agent");
    std::fs::write(&agent, b"x").unwrap();
    let mut vars = std::collections::BTreeMap::new();
    vars.insert("agent_binary".to_string(), agent.display().to_string());
    vars.insert("bootstrap_unit".to_string(), agent.display().to_string());
    let ubuntu = Recipe::load(&dir.join("ubuntu-k8s/recipe.yaml"), &vars).unwrap();
    assert_eq!(ubuntu.base_steps, Some(6));
    assert_eq!(ubuntu.layer_steps, [6, 7]);
    // the agent comes after the last mark
    let agent_at = ubuntu
        .steps
        .iter()
        .position(|s| s.name == "agent binary")
        .unwrap();
    assert!(agent_at >= 7, "{agent_at}");
    assert!(ubuntu.base_off.is_none());
    // the local source: the runtime's uploads go to a path the capture keeps, before the mark;
    // the version's own files after it, so one layer serves every Kubernetes version
    for (k, v) in [("1.34.1", "k134"), ("1.33.13", "k133")] {
        let d = tmp.path().join(format!("art/kubernetes/v{k}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("kubelet"), v).unwrap();
    }
    for f in [
        "bin/containerd",
        "bin/containerd-shim-runc-v2",
        "bin/ctr",
        "bin/runc",
    ]
    .into_iter()
    .chain(["bin/crictl", "cni/bridge", "images/pause.tar"])
    {
        let p = tmp.path().join("art").join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, f).unwrap();
    }
    let mut local = vars.clone();
    local.insert("kubernetes_source".into(), "local".into());
    local.insert(
        "artifacts_dir".into(),
        tmp.path().join("art").display().to_string(),
    );
    let r = Recipe::load(&dir.join("ubuntu-k8s/recipe.yaml"), &local).unwrap();
    assert!(r.base_off.is_none(), "{:?}", r.base_off);
    let k = r.base_steps.unwrap();
    assert_eq!(r.steps[k - 1].name, "reboot (modules at boot, new kernel)");
    let k2 = r.layer_steps[1];
    assert_eq!(r.steps[k2 - 1].name, "kubelet, kubeadm, kubectl, images");
    assert!(r.steps[k..k2]
        .iter()
        .any(|s| s.name.starts_with("local artifacts: Kubernetes")));
    assert!(r.steps[k2..].iter().any(|s| s.name == "agent binary"));
    assert_eq!(r.steps[k - 3].name, "containerd, runc, CNI plugins");
    assert!(
        r.steps[..k]
            .iter()
            .any(|s| s.name.starts_with("local artifacts: containerd")),
        "{:?}",
        r.steps.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(r.steps[k..]
        .iter()
        .any(|s| s.name.starts_with("local artifacts: Kubernetes")));
    let fp = |vars: &std::collections::BTreeMap<String, String>| {
        let r = Recipe::load(&dir.join("debian-k8s/recipe.yaml"), vars).unwrap();
        (r.base_fingerprint("lib").unwrap(), r.fingerprint("lib"))
    };
    let k8s_fp = |vars: &std::collections::BTreeMap<String, String>| {
        let r = Recipe::load(&dir.join("debian-k8s/recipe.yaml"), vars).unwrap();
        r.layer_fingerprints("lib")[1].0.clone()
    };
    let mut dvars = vars.clone();
    dvars.insert(
        "artifacts_dir".into(),
        tmp.path().join("art").display().to_string(),
    );
    let (base134, img134) = fp(&dvars);
    let mut v133 = dvars.clone();
    v133.insert("kubernetes_version".into(), "1.33.13".into());
    let (base133, img133) = fp(&v133);
    assert_eq!(base134, base133, "one layer for both versions");
    assert_ne!(img134, img133);
    assert_ne!(
        k8s_fp(&dvars),
        k8s_fp(&v133),
        "a Kubernetes layer per version"
    );
    // a runtime file is in the layer: changing it changes the layer
    std::fs::write(tmp.path().join("art/bin/runc"), "runc 2").unwrap();
    assert_ne!(fp(&dvars).0, base134);
    // debian-k8s marks ubuntu-k8s's base
    let deb = Recipe::load(&dir.join("debian-k8s/recipe.yaml"), &dvars).unwrap();
    assert_eq!((deb.base_steps, deb.base_off.is_none()), (Some(k), true));
    assert_eq!(deb.layer_steps, [k, k2]);
    let test_node = Recipe::load(&dir.join("debian-test-node/recipe.yaml"), &vars).unwrap();
    assert_eq!(test_node.base_steps, Some(3));
    // a name no step has, and the last step, are refused with the line
    let text = std::fs::read_to_string(dir.join("debian-test-node/recipe.yaml")).unwrap();
    let copy = tmp.path().join("recipe.yaml");
    for (until, want) in [
        (
            "no such step",
            "base_until: no step is named \"no such step\"",
        ),
        (
            "sysprep, then image hygiene checks",
            "is the last step: the layer would be the image itself",
        ),
    ] {
        let t = text
            .replace("base_until: swap off", &format!("base_until: {until}"))
            .replace(
                "kubeadm-stub.sh",
                &dir.join("debian-test-node/kubeadm-stub.sh")
                    .display()
                    .to_string(),
            )
            .replace(
                "70-validate-test.sh",
                &dir.join("debian-test-node/70-validate-test.sh")
                    .display()
                    .to_string(),
            )
            .replace("../roles/", &format!("{}/roles/", dir.display()));
        std::fs::write(&copy, t).unwrap();
        let e = Recipe::load(&copy, &vars).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("recipe.yaml:"), "{e}");
    }
}

/// The binary's `--dry-run` with an endpoint looks the layer up (GETs only, nothing created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_binary_looks_the_layer_up_with_an_endpoint() {
    let f = fixture().await;
    let out = f.imgbuild().arg("--dry-run").output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("base-lookup    no base "), "{text}");
    assert!(
        text.contains("base layer: steps 1..6 (layers \"reboot (modules at boot, new kernel)\")")
            && text.contains("containerd_version")
            && text.contains("layer: steps 1..7 (\"kubelet, kubeadm, kubectl, images\")"),
        "{text}"
    );
    assert_eq!(f.posts(), 0, "a dry run creates nothing");
    assert_eq!(f.counts(), (0, 0, 0));
    f.emu.shutdown().await;
}

/// Only the agent changed: the build starts from the deepest layer, the Kubernetes version's,
/// and runs only the agent, validation and sysprep steps; it captures nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_agent_changed_starts_from_the_deepest_layer() {
    let f = fixture().await;
    let first = f.build(&[], Options::default()).await.expect("first build");
    assert_eq!(
        first
            .layers
            .iter()
            .map(|l| (l.steps, l.reused))
            .collect::<Vec<_>>(),
        [(6, false), (7, false)],
        "a full build captures both layers"
    );
    std::fs::write(&f.agent, b"#!/bin/sh\necho agent v2\n").unwrap();
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let m = b
        .build(&f.recipe(&[]))
        .await
        .expect("build from the deepest layer");
    assert_ne!(m.fingerprint, first.fingerprint, "a new image");
    let k8s = &first.layers[1];
    assert_eq!(m.layers.len(), 1, "{:?}", m.layers);
    let used = m.base_layer.clone().expect("a layer");
    assert!(used.reused);
    assert_eq!((used.uuid.as_str(), used.steps), (k8s.uuid.as_str(), 7));
    let ran = scripts(&t.recorded());
    for s in BASE_SCRIPTS.iter().chain(&["40-kubernetes.sh"]) {
        assert!(!ran.contains(&s.to_string()), "{s} ran again: {ran:?}");
    }
    assert!(ran.contains(&"50-agent.sh".to_string()), "{ran:?}");
    let entered: Vec<Phase> = m.stats.phases.iter().map(|p| p.phase).collect();
    assert!(!entered.contains(&Phase::ProvisionBase) && !entered.contains(&Phase::BaseCapture));
    let log = b.reporter.captured().join("\n");
    let found = log
        .lines()
        .find(|l| l.starts_with(&format!("base {} found: ", &k8s.fingerprint[..16])));
    assert!(
        found.is_some_and(|l| l.ends_with("steps 8..13 only")),
        "nothing more to capture: {log}"
    );
    let snap = f.emu.snapshot();
    let img = snap.drives.iter().find(|d| d.uuid == m.image_uuid).unwrap();
    assert_eq!(img.meta.get("imgbuild.base-layer"), Some(&k8s.uuid));
    assert_eq!(snap.drives.len(), 4, "two images, the two layers");
    f.emu.shutdown().await;
}

/// Each layer's fingerprint covers every step up to its mark: the Kubernetes layer changes with
/// what its own steps read and with anything the base's steps read (chained), not with later
/// steps; the base layer keeps its inputs (and so its value) of `base_until`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_fingerprints_are_chained() {
    let f = fixture().await;
    let lib = "6d4a1c3e-0000-4000-8000-000000000001";
    let fps = |extra: &[(&str, &str)]| -> Vec<String> {
        let r = f.recipe(extra);
        let all = r.layer_fingerprints(lib);
        assert_eq!(
            all.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [6, 7],
            "ubuntu-k8s's two layers"
        );
        assert_eq!(r.base_fingerprint(lib).as_ref(), Some(&all[0].0));
        all.into_iter().map(|(fp, _)| fp).collect()
    };
    let l = fps(&[]);
    assert_ne!(l[0], l[1]);
    // read by 40-kubernetes.sh only: the Kubernetes layer, not the base
    let v = fps(&[("kubernetes_version", "1.33.5")]);
    assert_eq!(v[0], l[0]);
    assert_ne!(v[1], l[1]);
    // read by 30-containerd.sh only (a base step): both, the second through the chain
    let r = fps(&[("runc_version", "1.2.0")]);
    assert_ne!(r[0], l[0]);
    assert_ne!(r[1], l[1]);
    // the agent (after the last mark): neither
    std::fs::write(&f.agent, b"#!/bin/sh\necho agent v2\n").unwrap();
    assert_eq!(fps(&[]), l);
    // and a layer's is never the image's
    assert!(!l.contains(&f.recipe(&[]).fingerprint(lib)));
    f.emu.shutdown().await;
}

/// A layer whose last step is a `reboot`: the capture's power cycle is that reboot, so the
/// build boots once there; without a capture the reboot step runs as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_captured_at_a_reboot_step_boots_once_there() {
    let f = fixture().await;
    let reboots = |t: &imgbuild::transport::LocalTransport| {
        t.recorded()
            .iter()
            .filter(|r| matches!(r, Recorded::Reboot))
            .count()
    };
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let m = b.build(&f.recipe(&[])).await.expect("captures");
    assert_eq!(m.layers.len(), 2);
    assert_eq!(reboots(&t), 0, "the capture replaced the reboot step");
    let log = b.reporter.captured().join("\n");
    assert!(
        log.contains(
            "step 6/13: reboot (modules at boot, new kernel) (the layer capture's power cycle)"
        ),
        "{log}"
    );
    let off = Options {
        no_base_cache: true,
        ..Default::default()
    };
    let t = f.transport();
    f.builder(t.clone(), CancellationToken::new(), off)
        .build(&f.recipe(&[("kubernetes_version", "1.34.2")]))
        .await
        .expect("no layers");
    assert_eq!(reboots(&t), 1, "no capture: the reboot step reboots");
    f.emu.shutdown().await;
}

/// `imgbuild clean` lists every layer (the base and the deeper one) with its steps and age, and
/// `--bases` removes them all, never an image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_lists_every_layer_with_its_steps_and_age() {
    let f = fixture().await;
    let m = f.build(&[], Options::default()).await.expect("build");
    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let say = |l: &str| lines.lock().unwrap().push(l.to_string());
    let hour = std::time::Duration::from_secs(3600);
    let rep = imgbuild::build::clean_with_bases(&f.cloud(), hour, false, false, false, &say)
        .await
        .expect("clean");
    assert_eq!(rep.bases_kept.len(), 2, "{:?}", rep.bases_kept);
    let text = lines.lock().unwrap().join("\n");
    for l in &m.layers {
        assert!(
            text.contains(&format!(
                "keeping base layer {} ({}, steps 1..{}, 0h00m old)",
                l.uuid, l.name, l.steps
            )),
            "{text}"
        );
    }
    let rep = imgbuild::build::clean_with_bases(&f.cloud(), hour, true, true, false, &say)
        .await
        .expect("clean --bases --all");
    assert_eq!(rep.bases.len(), 2);
    let snap = f.emu.snapshot();
    assert_eq!(snap.drives.len(), 1, "the image stays");
    assert_eq!(snap.drives[0].uuid, m.image_uuid);
    f.emu.shutdown().await;
}

/// `layers:` is checked as `base_until` is: known step names, in step order, not the last
/// step, not both keys.
#[test]
fn layers_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    for s in ["a.sh", "b.sh", "c.sh"] {
        std::fs::write(tmp.path().join(s), "true\n").unwrap();
    }
    let file = tmp.path().join("recipe.yaml");
    let head = "name: t\nbase: {distribution: Ubuntu, version: \"24.04\"}\ndisk_size: 10GiB\nserver: {cpu: 2000, mem: 2GiB}\nsteps:\n  - {name: a, script: a.sh}\n  - {name: b, script: b.sh}\n  - {name: c, script: c.sh}\noutput: {name: t}\n";
    let load = |tail: &str| {
        std::fs::write(&file, format!("{head}{tail}")).unwrap();
        Recipe::load(&file, &Default::default())
    };
    let r = load("layers: [a, b]\n").expect("two layers");
    assert_eq!((r.base_steps, r.layer_steps.clone()), (Some(1), vec![1, 2]));
    assert_eq!(r.layer_fingerprints("lib").len(), 2);
    let r = load("base_until: b\n").expect("one layer");
    assert_eq!(r.layer_steps, [2]);
    for (tail, want) in [
        ("layers: [b, a]\n", "\"a\" is not after the layer before it"),
        ("layers: [a, a]\n", "is not after the layer before it"),
        ("layers: [a, x]\n", "layers: no step is named \"x\""),
        ("layers: [a, c]\n", "is the last step"),
        ("layers: [a]\nbase_until: a\n", "not both"),
    ] {
        let e = load(tail).unwrap_err().to_string();
        assert!(
            e.contains(want) && e.contains("recipe.yaml:"),
            "{tail}: {e}"
        );
    }
}
