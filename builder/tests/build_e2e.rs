//! End-to-end builds of the shipped ubuntu-k8s recipe against the in-process emulator, with the
//! recording transport standing in for the VM (no VM runs here; the real SSH path is exercised
//! by tests/e2e with the QEMU backend).

#[path = "support/fixture.rs"]
mod fixture;

use cloudsim::{FaultConfig, OnceRule};
use fixture::{cloud_for, fixture, recipe_file};
use imgbuild::build::{self, BuildError, Builder, Options, Phase};
use imgbuild::progress::{Mode, Reporter};
use imgbuild::recipe::{self, Recipe};
use imgbuild::transport::{LocalTransport, Recorded};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_build_leaves_exactly_one_tagged_annotated_drive_and_no_server() {
    let f = fixture().await;
    let t = f.transport();
    let b = f.builder(t.clone(), CancellationToken::new(), Options::default());
    let r = f.recipe(&[]);
    let m = b.build(&r).await.expect("build succeeds");
    // the pipeline enters every phase of the one list, in its order; the manifest times each
    // (all but verify: that needs --verify, see verify.rs); provision-base and base-capture once
    // per layer (ubuntu-k8s has two)
    let entered: Vec<Phase> = m.stats.phases.iter().map(|p| p.phase).collect();
    let want: Vec<Phase> = Phase::ALL
        .into_iter()
        .filter(|p| *p != Phase::Verify)
        .flat_map(|p| match p {
            Phase::BaseCapture => vec![p, Phase::ProvisionBase, p],
            _ => vec![p],
        })
        .collect();
    assert_eq!(entered, want);

    let snap = f.emu.snapshot();
    assert!(
        snap.servers.is_empty(),
        "no server may remain: {:?}",
        snap.servers
    );
    // the image and the recipe's two layers, nothing else
    assert_eq!(
        snap.drives.len(),
        3,
        "image + base layer + Kubernetes layer: {:?}",
        snap.drives
    );
    let layer = m
        .base_layer
        .as_ref()
        .expect("the base layer is in the manifest");
    assert!(!layer.reused);
    // ubuntu-k8s's base: the three first-boot steps, containerd, the initramfs and the reboot
    assert_eq!(layer.steps, 6);
    let base = snap.drives.iter().find(|d| d.uuid == layer.uuid).unwrap();
    assert_eq!(
        base.name,
        format!("imgbuild-base-{}", &layer.fingerprint[..16])
    );
    assert_eq!(
        base.meta.get("imgbuild.state").map(String::as_str),
        Some("base")
    );
    assert_eq!(
        base.meta.get("imgbuild.base-fingerprint"),
        Some(&layer.fingerprint)
    );
    assert!(base.meta.contains_key("imgbuild.base-created"));
    let d = snap.drives.iter().find(|d| d.uuid == m.image_uuid).unwrap();
    assert_eq!(d.meta.get("imgbuild.base-layer"), Some(&layer.uuid));
    assert!(
        d.name.starts_with("ubuntu-2404-kube-v1.34.1-"),
        "name {}",
        d.name
    );
    assert_eq!(d.size, 20 << 30);
    assert_eq!(
        d.meta.get("imgbuild.state").map(String::as_str),
        Some("image")
    );
    assert_eq!(d.meta.get("imgbuild.fingerprint"), Some(&m.fingerprint));
    assert_eq!(
        d.meta.get("kubernetes_version").map(String::as_str),
        Some("1.34.1")
    );
    assert_eq!(
        d.meta.get("containerd_version").map(String::as_str),
        Some("1.7.28")
    );
    assert_eq!(
        d.meta.get("agent_sha256"),
        Some(&recipe::sha256_file(&f.agent).unwrap())
    );
    assert!(d.meta.contains_key("imgbuild.built-at"));
    assert!(!d.meta.contains_key("imgbuild.started"));
    let tag_names: Vec<String> = d
        .tags
        .iter()
        .filter_map(|r| {
            snap.tags
                .iter()
                .find(|t| t.uuid == r.uuid())
                .map(|t| t.name.clone())
        })
        .collect();
    for want in ["imgbuild", "k8s-node", "kubernetes-v1.34.1"] {
        assert!(
            tag_names.iter().any(|n| n == want),
            "tag {want} missing: {tag_names:?}"
        );
    }
    // provisioning: every step in order, uploads verified by sha256, login key removed at the end
    let rec = t.recorded();
    let scripts = rec
        .iter()
        .filter(|r| matches!(r, Recorded::Script { .. }))
        .count();
    assert_eq!(scripts, 10);
    assert!(rec.contains(&Recorded::Sha256 {
        path: "/usr/local/bin/cloudsigma-agent".into()
    }));
    // the base layer's mark is the reboot step: the capture's power cycle is that reboot
    assert!(!rec.contains(&Recorded::Reboot), "one boot there, not two");
    assert_eq!(rec.last(), Some(&Recorded::Clean));
    // base-capture right after the mark (step 6, the reboot after containerd and the initramfs):
    // a sync right after the initramfs script, then after the power cycle a new login
    let sync = rec
        .iter()
        .position(|r| matches!(r, Recorded::Check { cmd, .. } if cmd == "sync"))
        .expect("a sync before the capture");
    assert!(
        matches!(&rec[sync - 1], Recorded::Script { path, .. } if path.ends_with("80-initramfs.sh")),
        "{:?}",
        rec[sync - 1]
    );
    assert!(matches!(&rec[sync + 1], Recorded::WaitReady { .. }));
    // and the Kubernetes layer's capture right after 40-kubernetes.sh
    let syncs: Vec<usize> = rec
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Recorded::Check { cmd, .. } if cmd == "sync"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(syncs.len(), 2, "two layers captured");
    assert!(
        matches!(&rec[syncs[1] - 1], Recorded::Script { path, .. } if path.ends_with("40-kubernetes.sh")),
        "{:?}",
        rec[syncs[1] - 1]
    );
    // every script that sources lib/image.sh gets it uploaded and verified right before it runs
    // (`uses:`), not from an earlier step
    let lib = "/tmp/imgbuild/lib/image.sh";
    for script in [
        "80-initramfs.sh",
        "60-validate-node.sh",
        "70-validate-k8s.sh",
        "90-sysprep.sh",
    ] {
        let at = rec
            .iter()
            .position(|r| matches!(r, Recorded::Script { path, .. } if path.ends_with(script)))
            .unwrap_or_else(|| panic!("{script} not run: {rec:#?}"));
        assert!(
            matches!(&rec[at - 2], Recorded::Upload { dest, .. } if dest == lib)
                && rec[at - 1] == Recorded::Sha256 { path: lib.into() },
            "{script}: {:#?}",
            &rec[at - 2..at]
        );
    }
    match &rec[0] {
        Recorded::WaitReady { user, host, .. } => {
            assert_eq!(user, "cloudsigma", "SSH user comes from the library drive");
            assert!(
                host.parse::<std::net::Ipv4Addr>().is_ok(),
                "SSH goes to the runtime NAT IP, got {host:?}"
            );
        }
        other => panic!("first operation should wait for SSH: {other:?}"),
    }
    if let Some(Recorded::Script { env, .. }) =
        rec.iter().find(|r| matches!(r, Recorded::Script { .. }))
    {
        assert!(env.contains(&("KUBERNETES_VERSION".into(), "1.34.1".into())));
    }
    assert!(
        m.stats.api_calls <= 55,
        "API calls per build: {}",
        m.stats.api_calls
    );
    let log = b.reporter.captured().join("\n");
    assert!(
        log.contains("step 13/13 done in"),
        "progress reports each step's duration:\n{log}"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_server_gets_ephemeral_key_dhcp_nic_and_boot_drive() {
    let f = fixture().await;
    let emu = Arc::new(f.emu);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let (e2, s2) = (emu.clone(), seen.clone());
    let opts = Options {
        on_phase: Some(Arc::new(move |p: Phase| {
            if p == Phase::WaitSsh {
                *s2.lock().unwrap() = e2.snapshot().servers.first().cloned();
            }
        })),
        ..Default::default()
    };
    let cloud = cloud_for(&emu);
    let t = LocalTransport::new(f.dir.path().join("sb"));
    let mut vars = BTreeMap::new();
    vars.insert("agent_binary".to_string(), f.agent.display().to_string());
    vars.insert("bootstrap_unit".to_string(), f.unit.display().to_string());
    let r = Recipe::load(&recipe_file(), &vars).unwrap();
    let b = Builder::new(
        cloud,
        Arc::new(t.clone()),
        Reporter::new(Mode::Quiet),
        CancellationToken::new(),
        opts,
    );
    let reporter = b.reporter.clone();
    let m = b.build(&r).await.expect("build");
    let s = seen
        .lock()
        .unwrap()
        .clone()
        .expect("server existed during wait-ssh");
    use imgbuild::transport::Transport;
    assert_eq!(s.meta.get("ssh_public_key"), Some(&t.public_key()));
    // the host key the build made for its server: in the user-data cloud-init's cc_ssh reads,
    // and the one key SSH then accepts (issue 21 item 4)
    let ud = s
        .meta
        .get("cloudinit-user-data")
        .expect("the server's user-data carries its host key");
    assert!(ud.starts_with("#cloud-config\n"), "{ud:.40}");
    let cfg: serde_yaml::Value = serde_yaml::from_str(ud).unwrap();
    let public = cfg["ssh_keys"]["ed25519_public"].as_str().unwrap();
    let private = cfg["ssh_keys"]["ed25519_private"].as_str().unwrap();
    assert!(public.starts_with("ssh-ed25519 ") && private.contains("OPENSSH PRIVATE KEY"));
    match &t.recorded()[0] {
        Recorded::WaitReady { host_key, .. } => assert_eq!(host_key, public),
        other => panic!("first operation should wait for SSH: {other:?}"),
    }
    // the private half is never printed, nor in the manifest
    let blob = private.lines().nth(1).unwrap();
    let said = reporter.captured().join("\n");
    assert!(!said.contains(blob), "the private host key was printed");
    assert!(!serde_json::to_string(&m).unwrap().contains(blob));
    assert!(s.meta.contains_key("imgbuild.build-id"));
    assert_eq!(s.cpu, 4000);
    assert_eq!(s.mem, 4 << 30);
    assert_eq!(s.drives.len(), 1);
    assert_eq!(s.drives[0].dev_channel, "0:0");
    assert_eq!(s.drives[0].boot_order, Some(1));
    assert_eq!(s.nics.len(), 1);
    assert!(s.nics[0].vlan.is_none());
    assert!(s
        .vnc_password
        .as_deref()
        .map(|p| p.len() >= 16)
        .unwrap_or(true));
    assert!(!s.tags.is_empty(), "the build server is tagged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_identical_build_creates_nothing_and_any_input_change_rebuilds() {
    let f = fixture().await;
    let first = f.build(&[], Options::default()).await.expect("first build");
    f.emu.reset_counters();
    let again = f
        .build(&[], Options::default())
        .await
        .expect("cached build");
    assert!(again.cached);
    let entered: Vec<Phase> = again.stats.phases.iter().map(|p| p.phase).collect();
    assert_eq!(entered, [Phase::ResolveBase, Phase::CacheLookup]);
    assert_eq!(again.image_uuid, first.image_uuid);
    assert_eq!(again.fingerprint, first.fingerprint);
    assert!(
        again.tags.contains(&"k8s-node".to_string()),
        "{:?}",
        again.tags
    );
    assert_eq!(
        f.posts(),
        0,
        "a cached build must not POST: {:?}",
        f.emu.counters().1
    );
    assert_eq!(f.counts(), (0, 3, 3), "the image and its two layers");

    // a variable changes → new fingerprint → new image (from the base layer: the base steps
    // do not read kubernetes_version)
    let v = f
        .build(&[("kubernetes_version", "1.34.2")], Options::default())
        .await
        .expect("rebuild");
    assert!(!v.cached);
    assert_ne!(v.fingerprint, first.fingerprint);
    assert!(v.base_layer.as_ref().is_some_and(|l| l.reused));
    assert_eq!(f.counts().1, 5, "and this version's Kubernetes layer");

    // a file's content changes (same path) → rebuild
    std::fs::write(&f.agent, b"#!/bin/sh\necho agent v2\n").unwrap();
    let a = f
        .build(&[], Options::default())
        .await
        .expect("rebuild after file change");
    assert!(!a.cached);
    // (from the Kubernetes layer: nothing new to capture)
    assert_eq!(f.counts().1, 6);

    // --force rebuilds an unchanged recipe
    let forced = f
        .build(
            &[],
            Options {
                force: true,
                ..Default::default()
            },
        )
        .await
        .expect("forced");
    assert!(!forced.cached);
    assert_eq!(f.counts().1, 7);
    f.emu.shutdown().await;
}

#[test]
fn fingerprint_covers_recipe_text_vars_files_and_base() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
    write("a.sh", "echo a\n");
    let recipe = "name: t\nbase: {distribution: Ubuntu, version: \"24.04\"}\ndisk_size: 10GiB\nserver: {cpu: 2000, mem: 2GiB}\nvars: {x: \"1\"}\nsteps:\n  - script: a.sh\noutput: {name: \"t-{{ x }}\"}\n";
    write("recipe.yaml", recipe);
    let load = |o: &[(&str, &str)]| {
        let m: BTreeMap<String, String> = o
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Recipe::load(&dir.path().join("recipe.yaml"), &m).unwrap()
    };
    let base = load(&[]).fingerprint("u1");
    assert_eq!(base, load(&[]).fingerprint("u1"), "deterministic");
    assert_ne!(base, load(&[]).fingerprint("u2"), "base drive");
    assert_ne!(base, load(&[("x", "2")]).fingerprint("u1"), "vars");
    write("a.sh", "echo b\n");
    assert_ne!(base, load(&[]).fingerprint("u1"), "file content");
    write("a.sh", "echo a\n");
    write("recipe.yaml", &format!("{recipe}# comment\n"));
    assert_ne!(base, load(&[]).fingerprint("u1"), "recipe text");
}

/// Each API call of the pipeline fails once. POSTs are not retried, so the build fails and must
/// leave nothing; idempotent calls are retried and the build succeeds with exactly one image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_failure_at_each_api_step_leaves_nothing_behind() {
    let cases: &[(&str, &str, bool)] = &[
        ("GET", "/api/2.0/libdrives/", true),
        ("GET", "/api/2.0/tags/detail/", true),
        ("POST", "/api/2.0/tags/", false),
        ("POST", "/api/2.0/libdrives/{uuid}/action/", false),
        ("GET", "/api/2.0/drives/{uuid}/", true),
        ("POST", "/api/2.0/drives/{uuid}/action/", false),
        ("POST", "/api/2.0/servers/", false),
        ("POST", "/api/2.0/servers/{uuid}/action/?do=start", false),
        ("GET", "/api/2.0/servers/{uuid}/", true),
        ("POST", "/api/2.0/servers/{uuid}/action/?do=shutdown", false),
        ("DELETE", "/api/2.0/servers/{uuid}/", true),
        ("PUT", "/api/2.0/drives/{uuid}/", true),
    ];
    for (method, path, survives) in cases {
        let f = fixture().await;
        f.emu.add_once_rule(OnceRule {
            method: Some(method.to_string()),
            path: path.to_string(),
            status: 500,
            count: 1,
        });
        let r = f.build(&[], Options::default()).await;
        let (servers, drives, tags) = f.counts();
        match r {
            Ok(m) => {
                assert!(
                    survives,
                    "{method} {path}: a POST failure must fail the build, got {m:?}"
                );
                assert_eq!(
                    (servers, drives),
                    (0, 3),
                    "{method} {path}: image + the two layers"
                );
            }
            Err(e) => {
                assert!(
                    !survives,
                    "{method} {path}: an idempotent call must be retried, got {e}"
                );
                assert!(
                    e.cleanup().left.is_empty(),
                    "{method} {path}: {:?}",
                    e.cleanup()
                );
                assert_eq!(
                    (servers, drives, tags),
                    (0, 0, 0),
                    "{method} {path}: leftovers after {e}"
                );
            }
        }
        f.emu.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_each_phase_leaves_nothing_behind() {
    for phase in Phase::ALL {
        let f = fixture().await;
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        // --verify (with a good image's answers) so that every phase is entered
        let opts = Options {
            verify: true,
            on_phase: Some(Arc::new(move |now: Phase| {
                if now == phase {
                    c2.cancel();
                }
            })),
            ..Default::default()
        };
        let t = f.transport();
        fixture::answer_good_image(&t);
        let r = f.builder(t, cancel, opts).build(&f.recipe(&[])).await;
        match r {
            Err(BuildError::Interrupted {
                phase: at, cleanup, ..
            }) => {
                assert_eq!(at, phase);
                assert!(cleanup.left.is_empty(), "{phase}: {cleanup:?}");
            }
            other => panic!("{phase}: expected an interruption, got {other:?}"),
        }
        assert_eq!(f.counts(), (0, 0, 0), "{phase}: leftovers");
        f.emu.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_script_cleans_up_and_keep_on_failure_keeps_for_clean() {
    let f = fixture().await;
    let mut t = f.transport();
    t.fail_script = Some("40-kubernetes.sh".into());
    let (phase, error, cleanup, _) = f.failed_build(t.clone(), Options::default()).await;
    // 40-kubernetes.sh is the Kubernetes layer's last step: provision-base
    assert_eq!(phase, Phase::ProvisionBase);
    assert!(error.contains("40-kubernetes.sh"), "{error}");
    assert!(cleanup.deleted.iter().any(|d| d.starts_with("server ")));
    assert!(cleanup.deleted.iter().any(|d| d.starts_with("drive ")));
    assert_eq!(f.counts(), (0, 0, 0));

    // a good image exists, then a failed build with --keep-on-failure leaves its server + drive
    // (a step after the last layer fails: the forced build starts from the Kubernetes layer)
    f.build(&[], Options::default()).await.expect("good build");
    t.fail_script = Some("70-validate-k8s.sh".into());
    let r = f
        .builder(
            t,
            CancellationToken::new(),
            Options {
                keep_on_failure: true,
                force: true,
                ..Default::default()
            },
        )
        .build(&f.recipe(&[]))
        .await;
    assert!(matches!(r, Err(BuildError::Failed { kept: true, .. })));
    assert_eq!(f.counts().0, 1);
    assert_eq!(f.counts().1, 4, "image, two layers, kept build drive");
    // `clean` with an age limit leaves the fresh leftovers, `--all` removes them, never the image
    let cloud = f.cloud();
    let rep = build::clean(&cloud, Duration::from_secs(3600), false, false, &|_| {})
        .await
        .unwrap();
    assert!(rep.servers.is_empty() && rep.drives.is_empty());
    let rep = build::clean(&cloud, Duration::from_secs(3600), true, false, &|_| {})
        .await
        .unwrap();
    assert_eq!((rep.servers.len(), rep.drives.len()), (1, 1));
    let snap = f.emu.snapshot();
    assert!(snap.servers.is_empty());
    let mut states: Vec<&str> = snap
        .drives
        .iter()
        .filter_map(|d| d.meta.get("imgbuild.state").map(String::as_str))
        .collect();
    states.sort();
    assert_eq!(
        states,
        ["base", "base", "image"],
        "clean never removes images or (without --bases) base layers"
    );
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_503_and_429_are_ridden_out() {
    let f = fixture().await;
    // 503 bursts on the polled GETs and the final PUT
    for p in ["/api/2.0/drives/{uuid}/", "/api/2.0/servers/{uuid}/"] {
        f.emu.add_once_rule(OnceRule {
            method: Some("GET".into()),
            path: p.into(),
            status: 503,
            count: 3,
        });
    }
    f.emu.add_once_rule(OnceRule {
        method: Some("PUT".into()),
        path: "/api/2.0/drives/{uuid}/".into(),
        status: 502,
        count: 2,
    });
    f.build(&[], Options::default())
        .await
        .expect("503 bursts are retried");
    assert_eq!(f.counts().0, 0);

    // rate limiting: 429 + Retry-After, even on POSTs (refused before running, so safe to repeat)
    f.emu.set_faults(FaultConfig {
        rate_limit_per_sec: 8,
        ..Default::default()
    });
    let m = f
        .build(&[("kubernetes_version", "1.34.0")], Options::default())
        .await
        .expect("429s are retried");
    assert!(!m.cached);
    assert_eq!(f.counts().0, 0);
    assert_eq!(
        f.counts().1,
        5,
        "two images, the base layer, each version's Kubernetes layer"
    );
    f.emu.shutdown().await;
}

#[test]
fn dry_run_plan_names_every_phase_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("a");
    std::fs::write(&agent, b"x").unwrap();
    let mut v = BTreeMap::new();
    v.insert("agent_binary".to_string(), agent.display().to_string());
    v.insert("bootstrap_unit".to_string(), agent.display().to_string());
    let r = Recipe::load(&recipe_file(), &v).unwrap();
    let p = imgbuild::plan::plan(&r, &Options::default(), None);
    for ph in Phase::ALL {
        assert!(p.contains(ph.name()), "plan lacks phase {ph}:\n{p}");
    }
    for s in &r.steps {
        assert!(p.contains(&s.name), "plan lacks step {}", s.name);
    }
    assert!(p.contains("POST servers/") && p.contains("DELETE servers/<uuid>/"));
}

/// The real binary, a real SIGINT in the middle of provisioning: it cleans up, says what it
/// deleted and exits 130; the emulator holds nothing afterwards. Also the JSON manifest path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binary_sigint_cleans_up_and_json_manifest_on_success() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let f = fixture().await;
    let sandbox = f.dir.path().join("sb");
    let cmd = |delay_ms: &str| {
        let mut c = f.imgbuild();
        c.arg("--transport")
            .arg(format!("local:{}", sandbox.display()))
            .env("IMGBUILD_TEST_STEP_DELAY_MS", delay_ms)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        c
    };
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut child = cmd("1500").spawn().expect("spawn imgbuild");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        // wait until provisioning runs (the server exists, the drive exists)
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                log.push(l.clone());
                if l.contains("step 1/") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(found, "provisioning never started: {log:#?}");
        assert_eq!(
            f.counts().0,
            1,
            "the builder server exists while provisioning"
        );
        // SAFETY: sending a signal to our own child process by pid.
        let pid = child.id().expect("running") as i32;
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        while let Ok(Some(l)) = lines.next_line().await {
            log.push(l);
        }
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(code), "{log:#?}");
        let text = log.join("\n");
        assert!(
            text.contains("cleanup: deleted server") && text.contains("cleanup: deleted drive"),
            "{text}"
        );
        assert_eq!(
            f.counts(),
            (0, 0, 0),
            "leftovers after signal {sig}:\n{text}"
        );
    }

    // a normal run prints a JSON manifest on stdout (progress stays on stderr)
    let out = cmd("0").arg("--output").arg("json").output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the JSON manifest");
    let snap = f.emu.snapshot();
    assert_eq!(snap.drives.len(), 3, "the image and its two layers");
    assert!(snap
        .drives
        .iter()
        .any(|d| m["image_uuid"] == d.uuid.as_str()));
    assert_eq!(m["base_layer"]["reused"], false);
    assert_eq!(m["cached"], false);
    assert_eq!(m["vars"]["kubernetes_version"], "1.34.1");
    assert!(m["stats"]["api_calls"].as_u64().unwrap() > 0);
    // secrets never appear in any output
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(f.emu.password()));
    f.emu.shutdown().await;
}

/// `imgbuild clean` through the CLI: a build kept with --keep-on-failure (exit 3) is removed by
/// `clean --all`; `--dry-run` only lists; the finished image of another build survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_cli_removes_kept_leftovers_but_not_images() {
    let f = fixture().await;
    f.build(&[], Options::default())
        .await
        .expect("an image exists");
    let mut t = f.transport();
    t.fail_script = Some("10-kernel.sh".into());
    // a base step: it runs only without the base layer
    let r = f
        .builder(
            t,
            CancellationToken::new(),
            Options {
                keep_on_failure: true,
                force: true,
                no_base_cache: true,
                ..Default::default()
            },
        )
        .build(&f.recipe(&[]))
        .await;
    assert!(matches!(r, Err(BuildError::Failed { kept: true, .. })));
    assert_eq!((f.counts().0, f.counts().1), (1, 4));
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("clean")
            .arg("--api-url")
            .arg(f.emu.api_url())
            .args(extra)
            .env("CLOUDSIGMA_USERNAME", f.emu.username())
            .env("CLOUDSIGMA_PASSWORD", f.emu.password())
            .env("CLOUDSIGMA_CONFIG", "")
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| run(&["--all", "--dry-run"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would remove 1 server(s), 1 drive(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (f.counts().0, f.counts().1),
        (1, 4),
        "dry run removes nothing"
    );
    let out = tokio::task::block_in_place(|| run(&["--all"]));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = f.emu.snapshot();
    assert!(snap.servers.is_empty());
    assert_eq!(snap.drives.len(), 3, "the image and the two layers stay");
    // the base layer: listed with its age, removed only with --bases
    let out = tokio::task::block_in_place(|| run(&["--bases", "--older-than-minutes", "60"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keeping base layer")
            && err.contains("steps 1..6, 0h00m old")
            && err.contains("steps 1..7, 0h00m old"),
        "{err}"
    );
    assert_eq!(f.counts().1, 3, "fresh layers are younger than 60 minutes");
    let out = tokio::task::block_in_place(|| run(&["--bases", "--older-than-minutes", "0"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deleting base layer"), "{err}");
    let snap = f.emu.snapshot();
    assert_eq!(snap.drives.len(), 1);
    assert_eq!(
        snap.drives[0]
            .meta
            .get("imgbuild.state")
            .map(String::as_str),
        Some("image")
    );
    f.emu.shutdown().await;
}

/// The pipeline's typed errors reach the user as before: no matching base, a disk smaller than
/// the base; both fail in resolve-base, before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_base_refuses_a_missing_base_and_a_too_small_disk() {
    let f = fixture().await;
    let mut r = f.recipe(&[]);
    r.spec.base.version = "99.04".into();
    let mut small = f.recipe(&[]);
    small.disk_size = 1 << 20;
    for (recipe, want) in [
        (
            &r,
            "no library drive matches distribution=Ubuntu version=99.04",
        ),
        (&small, "disk_size 1048576 is smaller than the base drive"),
    ] {
        match f
            .builder(f.transport(), CancellationToken::new(), Options::default())
            .build(recipe)
            .await
        {
            Err(BuildError::Failed { phase, error, .. }) => {
                assert_eq!(phase, Phase::ResolveBase);
                assert!(error.contains(want), "{error}");
            }
            other => panic!("expected a failure in resolve-base, got {other:?}"),
        }
    }
    assert_eq!(f.counts(), (0, 0, 0));
    f.emu.shutdown().await;
}
