//! The CI example (docs/ci.md, examples/ci/): the very script both workflows run,
//! `examples/ci/build-image.sh`, against the in-process emulator with the recording transport in
//! place of the VM. Its promises: credentials only from the environment and never printed, the
//! JSON manifest, an unchanged pipeline builds nothing, a cancelled job (SIGTERM to the script)
//! leaves nothing behind and exits 143, missing secrets are exit 2 with nothing created.

#[path = "support/fixture.rs"]
mod fixture;

use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Ci {
    emu: EmulatorHandle,
    dir: tempfile::TempDir,
}

impl Ci {
    async fn new() -> Ci {
        let emu = Emulator::start(EmulatorConfig::for_tests())
            .await
            .expect("emulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("cloudsigma-agent"),
            b"#!/bin/sh\necho agent\n",
        )
        .unwrap();
        Ci { emu, dir }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("image.json")
    }

    /// The job's environment as the workflows set it: secrets in env, the agent this pipeline
    /// built, the endpoint. `IMGBUILD_ARGS` adds the test-only recording transport.
    fn script(&self, extra_args: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(repo().join("examples/ci/build-image.sh"));
        c.arg("ubuntu-k8s")
            .current_dir(repo())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("IMGBUILD", env!("CARGO_BIN_EXE_imgbuild"))
            .env("AGENT_BINARY", self.dir.path().join("cloudsigma-agent"))
            .env("CLOUDSIGMA_API_URL", self.emu.api_url())
            .env("CLOUDSIGMA_USERNAME", self.emu.username())
            .env("CLOUDSIGMA_PASSWORD", self.emu.password())
            .env("CLOUDSIGMA_CONFIG", "")
            .env("CI", "true")
            .env("IMAGE_MANIFEST", self.manifest_path())
            .env(
                "IMGBUILD_ARGS",
                format!(
                    "--transport local:{} {extra_args}",
                    self.dir.path().join("sandbox").display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn counts(&self) -> (usize, usize) {
        let s = self.emu.snapshot();
        (s.servers.len(), s.drives.len())
    }

    fn posts(&self) -> u64 {
        fixture::posts(&self.emu)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_script_builds_then_caches_and_a_cancelled_job_leaves_nothing() {
    let ci = Ci::new().await;

    // First pipeline: builds; stdout is the uuid, the manifest file the JSON.
    let out = ci.script("").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let uuid = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ci.manifest_path()).unwrap()).unwrap();
    assert_eq!(m["image_uuid"], uuid.as_str());
    assert_eq!(m["cached"], false);
    assert_eq!(
        ci.counts(),
        (0, 3),
        "one image drive, its two layers, no server"
    );
    assert!(
        stderr.contains(&format!("imgbuild {}", env!("CARGO_PKG_VERSION"))),
        "the log starts with imgbuild --version: {stderr}"
    );
    assert!(
        !stderr.contains(ci.emu.password()) && !uuid.contains(ci.emu.password()),
        "the password secret is never printed"
    );

    // Same inputs again: nothing is created, the same image is reported as cached.
    let posts = ci.posts();
    let out = ci.script("").output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), uuid);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ci.manifest_path()).unwrap()).unwrap();
    assert_eq!(m["cached"], true);
    assert_eq!(ci.posts(), posts, "an unchanged pipeline POSTs nothing");
    assert_eq!(ci.counts(), (0, 3));

    // A cancelled job: the runner signals the script mid-provisioning (GitLab: SIGTERM; GitHub:
    // SIGINT, then SIGTERM a little later). imgbuild gets one SIGTERM, cleans up completely, the
    // script waits for that and exits 143; only the earlier image remains.
    for signals in [&[libc::SIGTERM][..], &[libc::SIGINT, libc::SIGTERM][..]] {
        let mut c = ci.script("--force");
        c.env("IMGBUILD_TEST_STEP_DELAY_MS", "1500");
        let mut child = c.spawn().expect("spawn build-image.sh");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                log.push(l.clone());
                // (--force rebuilds from the deepest layer, the Kubernetes version's of 7
                // steps: its first step is the 8th)
                if l.contains("step 8/") {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(started, "provisioning never started: {log:#?}");
        assert_eq!(
            ci.counts(),
            (1, 4),
            "builder server and build drive exist (and the image and its two layers)"
        );
        let pid = child.id().expect("running") as i32;
        for (i, sig) in signals.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // SAFETY: signalling our own child by pid.
            assert_eq!(unsafe { libc::kill(pid, *sig) }, 0);
        }
        while let Ok(Some(l)) = lines.next_line().await {
            log.push(l);
        }
        let status = child.wait().await.unwrap();
        let text = log.join("\n");
        assert_eq!(status.code(), Some(143), "signals {signals:?}: {text}");
        assert!(
            text.contains("cleanup: deleted server") && text.contains("cleanup: deleted drive"),
            "signals {signals:?}: {text}"
        );
        assert_eq!(
            ci.counts(),
            (0, 3),
            "leftovers after signals {signals:?}:\n{text}"
        );
        assert!(
            ci.emu.snapshot().drives.iter().any(|d| d.uuid == uuid),
            "the finished image survives"
        );
    }
    ci.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_script_without_the_secret_exits_2_and_creates_nothing() {
    let ci = Ci::new().await;
    let mut c = ci.script("");
    c.env_remove("CLOUDSIGMA_PASSWORD");
    let out = c.output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ci.posts(), 0);
    assert_eq!(ci.counts(), (0, 0));
    ci.emu.shutdown().await;
}

/// The version-matrix job (docs/ci.md "A version matrix"): the same script with
/// `IMGBUILD_ARGS=--matrix kubernetes_version=…`; one manifest, one uuid per combination, then
/// an unchanged pipeline reuses both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_script_builds_a_version_matrix_then_reuses_it() {
    let ci = Ci::new().await;
    let args = "--matrix kubernetes_version=1.33.5,1.34.1 --jobs 2";
    let mut uuids = Vec::new();
    for (round, want) in [(1, "built"), (2, "reused")] {
        let out = ci.script(args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(0), "round {round}: {stderr}");
        let printed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ci.manifest_path()).unwrap()).unwrap();
        let c = m["combinations"].as_array().expect("a matrix manifest");
        assert_eq!(c.len(), 2, "{m:#}");
        for (e, v) in c.iter().zip(["1.33.5", "1.34.1"]) {
            assert_eq!(e["vars"]["kubernetes_version"], v);
            assert_eq!(e["status"], want, "round {round}: {e:#}");
        }
        let in_manifest: Vec<String> = c
            .iter()
            .map(|e| e["drive_uuid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            printed, in_manifest,
            "stdout: one drive uuid per combination"
        );
        if round == 1 {
            uuids = printed;
        } else {
            assert_eq!(printed, uuids, "the second run reuses the same images");
        }
        assert_eq!(
            ci.counts(),
            (0, 5),
            "two images, the one base layer they share and each one's Kubernetes layer, no server"
        );
        if round == 1 {
            // the combinations share the base layer: captured once (Builder::base_locks)
            let layers: Vec<&serde_json::Value> =
                c.iter().map(|e| &e["manifest"]["base_layer"]).collect();
            assert_eq!(layers[0]["uuid"], layers[1]["uuid"], "{layers:#?}");
            assert_eq!(
                layers.iter().filter(|l| l["reused"] == true).count(),
                1,
                "{layers:#?}"
            );
        }
    }
    ci.emu.shutdown().await;
}

/// Every ```yaml block of docs/ci.md parses, and the version-matrix job's `IMGBUILD_ARGS` are
/// flags imgbuild accepts (a dry run of the matrix exits 0 and plans each version).
#[tokio::test]
async fn docs_ci_yaml_examples_parse_and_the_matrix_args_are_accepted() {
    let doc = std::fs::read_to_string(repo().join("docs/ci.md")).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for l in doc.lines() {
        match (&mut cur, l.trim_start()) {
            (None, "```yaml") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    let mut matrix_args = None;
    for b in &blocks {
        let v: serde_yaml::Value =
            serde_yaml::from_str(b).unwrap_or_else(|e| panic!("docs/ci.md yaml: {e}\n{b}"));
        if let Some(a) = v[0]["env"]["IMGBUILD_ARGS"].as_str() {
            matrix_args = Some(a.to_string());
        }
    }
    let args = matrix_args.expect("docs/ci.md has the version-matrix job with IMGBUILD_ARGS");
    assert!(args.contains("--matrix"), "{args}");
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("cloudsigma-agent");
    std::fs::write(&agent, b"agent").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("ubuntu-k8s")
        .current_dir(repo())
        .args(args.split_whitespace())
        .arg("--var")
        .arg(format!("agent_binary={}", agent.display()))
        .args(["--region", "zrh", "--dry-run"])
        .env("CLOUDSIGMA_CONFIG", "")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# [kubernetes_version=1.33.5]"), "{text}");
    assert!(text.contains("# [kubernetes_version=1.34.1]"), "{text}");
}
