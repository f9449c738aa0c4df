//! The cached base layer (recipe `base_until`, issue 23 item 2) against the in-process emulator
//! with the recording transport: capture, reuse, refusal of another fingerprint, fallback,
//! `--no-base-cache`, `--dry-run`, and the base fingerprint's inputs.

#[path = "support/fixture.rs"]
mod fixture;

use cloudsim::OnceRule;
use fixture::fixture;
use imgbuild::build::{BuildError, Options, Phase};
use imgbuild::recipe::Recipe;
use imgbuild::transport::Recorded;
use tokio_util::sync::CancellationToken;

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
    assert!(!entered.contains(&Phase::ProvisionBase) && !entered.contains(&Phase::BaseCapture));
    let log = b.reporter.captured().join("\n");
    let short = &layer.fingerprint[..16];
    assert!(
        log.contains(&format!("base {short} found: ")) && log.contains("steps 7..13 only"),
        "{log}"
    );
    // the steps keep their numbers of the whole recipe
    assert!(log.contains("step 13/13 done in"), "{log}");
    let snap = f.emu.snapshot();
    assert_eq!(snap.drives.len(), 3, "two images, one base layer");
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
    let new = m.base_layer.expect("a new layer is captured");
    assert!(!new.reused, "the layer of another fingerprint was used");
    assert_ne!(new.fingerprint, old.fingerprint);
    assert_ne!(new.uuid, old.uuid);
    let ran = scripts(&t.recorded());
    for s in BASE_SCRIPTS {
        assert!(ran.contains(&s.to_string()), "{s} did not run: {ran:?}");
    }
    let log = b.reporter.captured().join("\n");
    assert!(
        log.contains("1 base layer(s) of other base fingerprints ignored"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "no base {}: full build, base kept at step 6",
            &new.fingerprint[..16]
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
    // the next build's first drive action is the clone of the layer: it fails once
    f.emu.add_once_rule(OnceRule {
        method: Some("POST".into()),
        path: "/api/2.0/drives/{uuid}/action/".into(),
        status: 500,
        count: 1,
    });
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let m = b
        .build(&f.recipe(&[("kubernetes_version", "1.34.2")]))
        .await
        .expect("falls back to a full build");
    let log = b.reporter.captured().join("\n");
    assert!(
        log.contains(&format!("base layer {} (", layer.name))
            && log.contains("could not be cloned")
            && log.contains("falling back to a full build from the library drive"),
        "{log}"
    );
    let ran = scripts(&t.recorded());
    assert!(ran.contains(&"00-wait-boot.sh".to_string()), "{ran:?}");
    assert!(m.base_layer.is_some_and(|l| !l.reused));
    let (servers, drives, _) = f.counts();
    assert_eq!(
        (servers, drives),
        (0, 4),
        "two images and two layers, no half-made clone"
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
        p.contains(&format!("no base {short}: full build, base kept at step 6")),
        "{p}"
    );
    f.build(&[], Options::default()).await.expect("build");
    let look = imgbuild::build::look_base_layer(&f.cloud(), &r)
        .await
        .unwrap()
        .unwrap();
    let (name, _) = look.found.clone().expect("found after the build");
    let p = imgbuild::plan::plan_with(&r, &Options::default(), None, Some(&look));
    assert!(
        p.contains(&format!("base {short} found: {name} (")) && p.contains("steps 7..13 only"),
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
    // a runtime file is in the layer: changing it changes the layer
    std::fs::write(tmp.path().join("art/bin/runc"), "runc 2").unwrap();
    assert_ne!(fp(&dvars).0, base134);
    // debian-k8s marks ubuntu-k8s's base
    let deb = Recipe::load(&dir.join("debian-k8s/recipe.yaml"), &dvars).unwrap();
    assert_eq!((deb.base_steps, deb.base_off.is_none()), (Some(k), true));
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
            "is the last step: the base would be the image itself",
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
        text.contains(
            "base layer: steps 1..6 (base_until \"reboot (modules at boot, new kernel)\")"
        ) && text.contains("containerd_version"),
        "{text}"
    );
    assert_eq!(f.posts(), 0, "a dry run creates nothing");
    assert_eq!(f.counts(), (0, 0, 0));
    f.emu.shutdown().await;
}
