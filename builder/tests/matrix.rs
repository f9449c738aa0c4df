//! `--matrix` (issue 23): the cartesian product of variable values and locations, each an
//! ordinary build against the in-process emulator (state only, no VM) with the recording
//! transport. In process through `imgbuild::matrix::run`, and through the binary for the flags,
//! the per-location endpoints, the one JSON manifest and the exit codes.

#[path = "support/fixture.rs"]
mod fixture;

use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle};
use fixture::{fixture, recipe_file, Fixture};
use imgbuild::build::{Builder, Options};
use imgbuild::matrix::{self, Job, Status, EXIT_SOME_FAILED};
use imgbuild::progress::{Mode, Reporter};
use imgbuild::transport::LocalTransport;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The jobs of `--matrix kubernetes_version=1.33.5,1.34.1` against the fixture's emulator,
/// each with its own recording transport (`tune` adjusts it per version).
fn jobs(
    f: &Fixture,
    reporter: &Reporter,
    tune: impl Fn(&str, &mut LocalTransport),
) -> (Vec<Job>, Vec<LocalTransport>) {
    let axes = matrix::parse(&args(&["kubernetes_version=1.33.5,1.34.1"])).unwrap();
    let mut work = Vec::new();
    let mut ts = Vec::new();
    for c in matrix::combinations(&axes) {
        let v = c.vars()["kubernetes_version"].clone();
        let mut t = LocalTransport::new(f.dir.path().join(format!("sandbox-{}", c.index)));
        tune(&v, &mut t);
        ts.push(t.clone());
        let builder = Builder::new(
            f.cloud(),
            Arc::new(t),
            reporter.prefixed(&c.label()),
            CancellationToken::new(),
            Options::default(),
        );
        work.push(Job {
            recipe: f.recipe(&[("kubernetes_version", &v)]),
            combo: c,
            builder,
        });
    }
    (work, ts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failed_combination_cleans_up_and_the_other_is_built() {
    let f = fixture().await;
    let rep = Reporter::new(Mode::Quiet);
    // a recipe step that fails only for one value of the variable
    let (work, _) = jobs(&f, &rep, |v, t| {
        if v == "1.33.5" {
            t.fail_script = Some("40-kubernetes.sh".into());
        }
    });
    let m = matrix::run("ubuntu-k8s", work, 2).await;
    let c = &m.combinations;
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].status, Status::Failed, "{c:#?}");
    assert_eq!(c[1].status, Status::Built, "{c:#?}");
    // 40-kubernetes.sh ends the Kubernetes layer: provision-base
    assert_eq!(c[0].phase.as_deref(), Some("provision-base"));
    assert!(
        c[0].error
            .as_deref()
            .unwrap_or("")
            .contains("40-kubernetes.sh"),
        "{:?}",
        c[0].error
    );
    assert!(
        c[0].left.is_empty(),
        "its cleanup was complete: {:?}",
        c[0].left
    );
    assert!(
        c[0].fingerprint.is_some(),
        "a failure past resolve-base names its fingerprint"
    );
    assert_ne!(c[0].fingerprint, c[1].fingerprint);
    assert_eq!((m.built, m.reused, m.failed), (1, 0, 1));
    assert_eq!(m.exit_code(0), EXIT_SOME_FAILED);
    // nothing of the failed combination is left: no server, no build drive; the other's image,
    // and a base layer only if the other captured its own (the failed one deletes the layer it
    // captured; the other either cloned it first or, finding it gone, fell back to a full build)
    let snap = f.emu.snapshot();
    assert!(snap.servers.is_empty(), "{:?}", snap.servers);
    let state = |d: &cloudsigma_api::Drive| d.meta.get("imgbuild.state").cloned();
    let images: Vec<_> = snap
        .drives
        .iter()
        .filter(|d| state(d).as_deref() == Some("image"))
        .collect();
    assert_eq!(images.len(), 1, "{:?}", snap.drives);
    assert_eq!(Some(&images[0].uuid), c[1].drive_uuid.as_ref());
    let layers = snap
        .drives
        .iter()
        .filter(|d| state(d).as_deref() == Some("base"))
        .count();
    assert_eq!(layers + 1, snap.drives.len(), "{:?}", snap.drives);
    // the built one's Kubernetes layer, and the base layer if the built one captured it (the
    // failed one deletes the layers it captured)
    assert!((1..=2).contains(&layers), "{layers}");
    // (its tag kubernetes-v1.33.5 may stay: the cleanup keeps the tags it created while
    // another build is in progress, which depends on timing here; tags cost nothing)
    // one progress view: every line says which combination it belongs to
    let log = rep.captured();
    assert!(
        log.iter().all(|l| l.starts_with("[kubernetes_version=")),
        "{log:#?}"
    );
    assert!(log
        .iter()
        .any(|l| l.starts_with("[kubernetes_version=1.33.5] error in phase provision")));
    f.emu.shutdown().await;
}

/// Two builds overlap when each one's first guest operation comes before the other's last.
fn overlap(ts: &[LocalTransport]) -> bool {
    let (a, b) = (ts[0].span().unwrap(), ts[1].span().unwrap());
    a.0 < b.1 && b.0 < a.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_bounds_how_many_combinations_build_at_once() {
    for (jobs_n, want_overlap) in [(1, false), (2, true)] {
        let f = fixture().await;
        let rep = Reporter::new(Mode::Quiet);
        // every guest operation takes a while, so two concurrent builds surely interleave
        let (work, ts) = jobs(&f, &rep, |_, t| t.delay = Duration::from_millis(20));
        let m = matrix::run("ubuntu-k8s", work, jobs_n).await;
        assert_eq!(m.built, 2, "{:#?}", m.combinations);
        assert_eq!(m.exit_code(0), 0);
        assert_eq!(overlap(&ts), want_overlap, "--jobs {jobs_n}");
        // concurrent builds at one location still share one `imgbuild` tag (tags_lock)
        let snap = f.emu.snapshot();
        let n = snap.tags.iter().filter(|t| t.name == "imgbuild").count();
        assert_eq!(n, 1, "--jobs {jobs_n}: {:?}", snap.tags);
        f.emu.shutdown().await;
    }
}

/// A second emulator: another "location" with its own endpoint.
async fn second_location() -> EmulatorHandle {
    Emulator::start(EmulatorConfig::for_tests())
        .await
        .expect("emulator starts")
}

/// `imgbuild build RECIPE --matrix kubernetes_version=... --matrix location=zrh,fra` with each
/// location on its own emulator, `--output json`: (exit code, manifest, stderr).
async fn run_binary(f: &Fixture, fra: &EmulatorHandle, extra: &[&str]) -> (i32, Value, String) {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.arg("build")
        .arg(recipe_file())
        .args(["--plain", "--output", "json"])
        .args(["--matrix", "kubernetes_version=1.33.5,1.34.1"])
        .args(["--matrix", "location=zrh,fra"])
        .arg("--location-url")
        .arg(format!("zrh={}", f.emu.api_url()))
        .arg("--location-url")
        .arg(format!("fra={}", fra.api_url()))
        .arg("--transport")
        .arg(format!("local:{}", f.dir.path().join("sandbox").display()))
        .args(extra);
    for (k, v) in f.vars(&[]) {
        c.arg("--var").arg(format!("{k}={v}"));
    }
    // both emulators take the same test credentials
    assert_eq!(f.emu.username(), fra.username());
    c.env("CLOUDSIGMA_USERNAME", f.emu.username())
        .env("CLOUDSIGMA_PASSWORD", f.emu.password())
        .env("CLOUDSIGMA_CONFIG", "");
    let out = c.output().await.expect("imgbuild runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{err}"));
    (out.status.code().unwrap_or(-1), json, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_by_two_matrix_one_manifest_then_a_second_run_reuses_all() {
    let f = fixture().await;
    let fra = second_location().await;
    let (code, m, err) = run_binary(&f, &fra, &["--jobs", "2"]).await;
    assert_eq!(code, 0, "{err}");
    let c = m["combinations"].as_array().expect("combinations");
    assert_eq!(c.len(), 4, "{m:#}");
    let want = [
        ("1.33.5", "zrh"),
        ("1.33.5", "fra"),
        ("1.34.1", "zrh"),
        ("1.34.1", "fra"),
    ];
    for (e, (v, loc)) in c.iter().zip(want) {
        assert_eq!(e["vars"]["kubernetes_version"], v, "{e:#}");
        assert_eq!(e["location"], loc, "{e:#}");
        assert_eq!(
            e["label"],
            format!("[kubernetes_version={v} location={loc}]")
        );
        assert_eq!(e["status"], "built", "{e:#}");
        assert_eq!(e["fingerprint"].as_str().map(str::len), Some(64), "{e:#}");
        assert!(
            e["error"].is_null() && e["left"] == serde_json::json!([]),
            "{e:#}"
        );
        // the image is where the location's endpoint put it
        let uuid = e["drive_uuid"].as_str().expect("drive_uuid");
        let emu = if loc == "zrh" { &f.emu } else { &fra };
        assert!(
            emu.snapshot().drives.iter().any(|d| d.uuid == uuid),
            "{uuid} not in {loc}"
        );
    }
    assert_eq!(
        (m["built"].as_u64(), m["failed"].as_u64()),
        (Some(4), Some(0))
    );
    assert_eq!(m["jobs"], 2);
    for emu in [&f.emu, &fra] {
        let s = emu.snapshot();
        assert!(s.servers.is_empty(), "{:?}", s.servers);
        // the two versions share one base layer per location (captured once: base_locks),
        // and each has its Kubernetes layer
        assert_eq!(
            s.drives.len(),
            5,
            "two images, one base layer and two Kubernetes layers per location: {:?}",
            s.drives
        );
        let layers = s
            .drives
            .iter()
            .filter(|d| d.meta.get("imgbuild.base-steps").map(String::as_str) == Some("6"))
            .count();
        assert_eq!(layers, 1, "one base layer per location");
    }
    // progress: every build's lines carry its combination
    for (v, loc) in want {
        let p = format!("[kubernetes_version={v} location={loc}] ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&p) && l.contains("== finalize")),
            "{p}\n{err}"
        );
    }
    // a second run finds every fingerprint: nothing built, nothing created; the builder's size
    // is not part of the image (`--builder-smp`: the fingerprints stay)
    let (code, m2, err) = run_binary(&f, &fra, &["--builder-smp", "3"]).await;
    assert_eq!(code, 0, "{err}");
    for (a, b) in c.iter().zip(m2["combinations"].as_array().unwrap()) {
        assert_eq!(b["status"], "reused", "{b:#}");
        assert_eq!(a["drive_uuid"], b["drive_uuid"]);
        assert_eq!(a["fingerprint"], b["fingerprint"]);
    }
    assert_eq!(m2["reused"], 4);
    assert_eq!(f.emu.snapshot().drives.len(), 5);
    // every published image is listed; the manifest's published list is those uuids
    let published: Vec<&str> = m2["published"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(published.len(), 4, "{m2:#}");
    f.emu.shutdown().await;
    fra.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_that_fails_is_exit_4_and_the_others_are_built() {
    let f = fixture().await;
    let fra = second_location().await;
    // fra's endpoint answers nothing: its builds fail at resolve-base, having created nothing
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("http://{a}/api/2.0/")
    };
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.arg(recipe_file())
        .args(["--plain", "--output", "json", "--jobs", "2"])
        .args(["--matrix", "location=zrh,fra"])
        .arg("--location-url")
        .arg(format!("zrh={}", f.emu.api_url()))
        .arg("--location-url")
        .arg(format!("fra={dead}"))
        .arg("--transport")
        .arg(format!("local:{}", f.dir.path().join("sandbox").display()));
    for (k, v) in f.vars(&[]) {
        c.arg("--var").arg(format!("{k}={v}"));
    }
    c.env("CLOUDSIGMA_USERNAME", f.emu.username())
        .env("CLOUDSIGMA_PASSWORD", f.emu.password())
        .env("CLOUDSIGMA_CONFIG", "")
        .env("CLOUDSIGMA_MAX_ATTEMPTS", "1");
    let out = tokio::time::timeout(Duration::from_secs(120), c.output())
        .await
        .expect("imgbuild ends")
        .expect("imgbuild runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_SOME_FAILED)),
        "{err}"
    );
    let m: Value = serde_json::from_slice(&out.stdout).expect("the manifest on stdout");
    let e = &m["combinations"];
    assert_eq!(e[0]["status"], "built", "{m:#}");
    assert_eq!(e[1]["status"], "failed", "{m:#}");
    assert_eq!(e[1]["location"], "fra");
    assert!(
        e[1]["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{m:#}"
    );
    assert_eq!(e[1]["left"], serde_json::json!([]));
    assert_eq!(
        f.emu.snapshot().drives.len(),
        3,
        "the image and its two layers"
    );
    assert!(fra.snapshot().drives.is_empty());
    f.emu.shutdown().await;
    fra.shutdown().await;
}

#[tokio::test]
async fn matrix_usage_errors_are_exit_2_before_anything_is_created() {
    let f = fixture().await;
    for (extra, want) in [
        (vec!["--matrix", "no_such_var=1,2"], "unknown variable"),
        (vec!["--matrix", "kubernetes_version=1,1"], "given twice"),
        // --api-url names one endpoint: which location would it be?
        (vec!["--matrix", "location=zrh,fra"], "name one endpoint"),
        (
            vec![
                "--matrix",
                "location=zrh",
                "--location-url",
                "fra=http://x/",
            ],
            "not a value of --matrix location",
        ),
    ] {
        let out = f.imgbuild().args(&extra).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    assert_eq!(f.counts(), (0, 0, 0));
    f.emu.shutdown().await;
}

/// Two builds at one location start together on a slow API: without the matrix's per-location
/// tag lock both would list the tags before either created `imgbuild`, and both would create
/// it (a second `imgbuild` tag hides its images from later cache lookups).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_at_one_location_create_each_tag_once() {
    let f = fixture().await;
    f.emu.set_faults(cloudsim::FaultConfig {
        latency_ms: 40,
        ..Default::default()
    });
    let rep = Reporter::new(Mode::Quiet);
    let (work, _) = jobs(&f, &rep, |_, _| {});
    let m = matrix::run("ubuntu-k8s", work, 2).await;
    f.emu.set_faults(cloudsim::FaultConfig::default());
    assert_eq!(m.built, 2, "{:#?}", m.combinations);
    let snap = f.emu.snapshot();
    for name in ["imgbuild", "k8s-node"] {
        let n = snap.tags.iter().filter(|t| t.name == name).count();
        assert_eq!(n, 1, "tag {name}: {:?}", snap.tags);
    }
    f.emu.shutdown().await;
}

/// SIGTERM in the middle of a matrix: every running combination cleans up, none is left
/// unfinished in the cloud, the manifest says `interrupted` and the exit code is 143.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_interrupts_every_combination_and_leaves_nothing() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let f = fixture().await;
    let mut c = f.imgbuild();
    // --no-base-cache: both provision at once (with the layer, the second waits for the
    // first's capture)
    c.args(["--output", "json", "--jobs", "2", "--no-base-cache"])
        .args(["--matrix", "kubernetes_version=1.33.5,1.34.1"])
        .arg("--transport")
        .arg(format!("local:{}", f.dir.path().join("sandbox").display()))
        .env("IMGBUILD_TEST_STEP_DELAY_MS", "1000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("spawn imgbuild");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    // both combinations provisioning
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = std::collections::BTreeSet::new();
        while let Ok(Some(l)) = lines.next_line().await {
            log.push(l.clone());
            if l.contains("-- step 1/") {
                seen.insert(l.split(']').next().unwrap_or("").to_string());
                if seen.len() == 2 {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(started, "both builds never provisioned: {log:#?}");
    assert_eq!(f.counts().0, 2, "two builder servers at once");
    let pid = child.id().expect("running") as i32;
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let _ = stdout.read_to_end(&mut out).await;
        while let Ok(Some(l)) = lines.next_line().await {
            log.push(l);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("imgbuild ends");
    let status = child.wait().await.unwrap();
    let text = log.join("\n");
    assert_eq!(status.code(), Some(143), "{text}");
    let m: Value = serde_json::from_slice(&out).expect("the manifest even when interrupted");
    for e in m["combinations"].as_array().unwrap() {
        assert_eq!(e["status"], "interrupted", "{e:#}");
        assert_eq!(e["left"], serde_json::json!([]));
    }
    let (servers, drives, _) = f.counts();
    assert_eq!((servers, drives), (0, 0), "{text}");
    f.emu.shutdown().await;
}

/// `--output text`: one line per combination, `[label] status drive-uuid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_is_one_line_per_combination() {
    let f = fixture().await;
    let out = f
        .imgbuild()
        .args(["--matrix", "kubernetes_version=1.33.5,1.34.1"])
        .arg("--transport")
        .arg(format!("local:{}", f.dir.path().join("sandbox").display()))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let drives = f.emu.snapshot().drives;
    for (l, v) in lines.iter().zip(["1.33.5", "1.34.1"]) {
        let uuid = l
            .strip_prefix(&format!("[kubernetes_version={v}] built "))
            .unwrap_or_else(|| panic!("{l}"));
        assert!(drives.iter().any(|d| d.uuid == uuid), "{l}");
    }
    assert!(err.contains("matrix: 2 built, 0 reused, 0 failed"), "{err}");
    f.emu.shutdown().await;
}
