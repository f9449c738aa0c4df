//! imgbuild's image automation in real VMs (issue 23): a Kubernetes version matrix over two
//! emulated locations in one command, the cached base layer shared per location, and `--verify`.
//! The `image_matrix` loop and the `image_bench` measurement stand on this.
//!
//! Two locations are two emulators (each its own account state, drives and QEMU VMs) with the
//! same credentials, as one CloudSigma account's locations are reached with one login; imgbuild
//! is pointed at them with `--location-url a=URL --location-url b=URL`.

use crate::builds::Binaries;
use crate::cloud::VmCloud;
use crate::harness::{self, say};
use crate::image_cache;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The recipe: the real-node image (ubuntu-k8s's scripts, the local artifacts).
pub const RECIPE: &str = "image-recipes/debian-k8s";
/// The Kubernetes versions of the matrix: the second one built from Go modules by
/// `tests/kube/build.sh --node --kube-version v1.33.13`, and the suite's own.
pub const VERSIONS: [&str; 2] = ["1.33.13", "1.34.1"];
/// The emulated locations.
pub const LOCATIONS: [&str; 2] = ["a", "b"];

/// What the builds need: the artifacts of both versions, the library image, the binaries.
pub struct Prepared {
    pub artifacts: PathBuf,
    pub img_dir: PathBuf,
    pub bins: Binaries,
}

/// The real-node loops' preparation (`kube_node::prepare`: Go-built Kubernetes, images, library
/// image, agent and imgbuild), then the second Kubernetes version (cached after the first run;
/// cold, kubelet + kubeadm + kubectl from Go modules, about 8 min on 2 cores).
pub fn prepare(t0: Instant, repo: &Path, phases: &mut test_support::Phases) -> Prepared {
    let k = crate::kube_node::prepare(t0, repo, false, phases);
    let p = Instant::now();
    let v = format!("v{}", VERSIONS[0]);
    say(
        t0,
        &format!(
            "artifacts: tests/kube/build.sh --node --kube-version {v} (cached after the first run)"
        ),
    );
    harness::run(
        Command::new(repo.join("tests/kube/build.sh"))
            .args(["--node", "--kube-version", &v])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit()),
        "tests/kube/build.sh --node --kube-version",
    );
    // kube-proxy is per version (what kubeadm of that version deploys): into
    // node-artifacts/kubernetes/<v>/images/, which the recipe uploads for that version only
    harness::run(
        Command::new(repo.join("tests/kube/addons.sh"))
            .args(["--kube-version", &v])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit()),
        "tests/kube/addons.sh --kube-version",
    );
    phases.done("second kubernetes version", p);
    for v in VERSIONS {
        for f in ["kubelet", "images/kube-proxy.tar"] {
            let f = k.artifacts.join(format!("kubernetes/v{v}/{f}"));
            assert!(f.exists(), "{}: not built", f.display());
        }
    }
    Prepared {
        artifacts: k.artifacts,
        img_dir: k.img_dir,
        bins: k.bins,
    }
}

/// The emulated locations: one emulator each, one password for all.
pub struct Locations {
    pub clouds: Vec<(String, VmCloud)>,
}

impl Locations {
    pub async fn start(t0: Instant, img_dir: &Path) -> Locations {
        let password = format!("e2e-pw-loc-{}", std::process::id());
        let mut clouds = Vec::new();
        for l in LOCATIONS {
            say(t0, &format!("location {l}: an emulator of its own"));
            let c = VmCloud::start_with_password(t0, img_dir, password.clone()).await;
            clouds.push((l.to_string(), c));
        }
        Locations { clouds }
    }

    pub fn cloud(&self, loc: &str) -> &VmCloud {
        &self
            .clouds
            .iter()
            .find(|(l, _)| l == loc)
            .unwrap_or_else(|| panic!("no location {loc}"))
            .1
    }

    /// The recipe's kept layers (issue 25: the loops share their image builds) as drives of
    /// every location's account: the chain the Kubernetes loops keep (the base and v1.34.1's
    /// Kubernetes layer) and what this loop kept itself (the other version's Kubernetes layer).
    /// So a warm run builds each combination from its Kubernetes layer (steps 26–31, the agent
    /// and the checks) and a cold one, or one with `E2E_FRESH_IMAGE=1`, builds everything; which
    /// layers are current is imgbuild's decision (their fingerprints), not this function's.
    pub async fn restore_kept(&self, t0: Instant) -> Kept {
        let mut kept = Kept::default();
        if std::env::var_os("E2E_FRESH_IMAGE").is_some() {
            say(
                t0,
                "E2E_FRESH_IMAGE: no kept layer restored, every layer is built",
            );
            return kept;
        }
        for (l, c) in &self.clouds {
            let main = image_cache::restore_layers(c, &image_cache::layers_dir(RECIPE)).await;
            let own = image_cache::restore_layers(c, &matrix_layers_dir()).await;
            say(
                t0,
                &format!(
                    "location {l}: {} kept layer(s) of the Kubernetes loops and {} of this loop restored",
                    main.len(),
                    own.len()
                ),
            );
            kept.main.insert(l.clone(), main.into_iter().collect());
            kept.own.insert(l.clone(), own.into_iter().collect());
        }
        kept
    }

    /// After a passing matrix: the layers the first location's builds used or captured that the
    /// Kubernetes loops do not keep become this loop's kept layers (rewritten only when they
    /// changed).
    pub async fn keep_layers(&self, run: &Run, kept: &Kept) {
        let (loc, cloud) = &self.clouds[0];
        let main = kept.main.get(loc).cloned().unwrap_or_default();
        let used: BTreeSet<String> = run.manifest["combinations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["location"] == loc.as_str())
            .flat_map(|c| {
                c["manifest"]["layers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|l| l["uuid"].as_str().map(str::to_string))
            .filter(|u| !main.contains(u))
            .collect();
        if Some(&used) == kept.own.get(loc) {
            return;
        }
        let steps: Vec<(String, u64)> = image_cache::layer_drives(&cloud.api)
            .await
            .into_iter()
            .filter(|(u, _)| used.contains(u))
            .collect();
        image_cache::keep_drives(cloud, &steps, &matrix_layers_dir()).await;
    }

    /// `--matrix location=a,b --location-url a=URL --location-url b=URL`.
    pub fn matrix_args(&self) -> Vec<String> {
        let names: Vec<&str> = self.clouds.iter().map(|(l, _)| l.as_str()).collect();
        let mut a = vec!["--matrix".into(), format!("location={}", names.join(","))];
        for (l, c) in &self.clouds {
            a.push("--location-url".into());
            a.push(format!("{l}={}", c.api.base));
        }
        a
    }

    /// Every drive and tag of every location deleted (the images and base layers imgbuild
    /// kept); asserts no server is left.
    pub async fn wipe(&self) {
        for (l, c) in &self.clouds {
            let servers = c.api.get("servers/").await;
            assert_eq!(
                servers["objects"].as_array().map(Vec::len),
                Some(0),
                "location {l}: servers left: {servers}"
            );
            let drives = c.api.get("drives/").await;
            for d in drives["objects"].as_array().cloned().unwrap_or_default() {
                if let Some(u) = d["uuid"].as_str() {
                    c.api.delete(&format!("drives/{u}/")).await;
                }
            }
            c.api.assert_empty_after_tags().await;
        }
    }

    /// The end: everything wiped, then each emulator checked empty (no drive file, no QEMU) and
    /// shut down.
    pub async fn finish(self) {
        self.wipe().await;
        for (_, c) in self.clouds {
            c.finish_empty().await;
        }
    }
}

/// The layers restored into each location before the matrix (uuids per location): the
/// Kubernetes loops' chain (`main`) and this loop's own (`own`).
#[derive(Default)]
pub struct Kept {
    pub main: BTreeMap<String, BTreeSet<String>>,
    pub own: BTreeMap<String, BTreeSet<String>>,
}

impl Kept {
    /// Every layer restored into `loc`.
    pub fn all(&self, loc: &str) -> BTreeSet<String> {
        let mut all = self.main.get(loc).cloned().unwrap_or_default();
        all.extend(self.own.get(loc).cloned().unwrap_or_default());
        all
    }
}

/// Where this loop keeps the layers it adds to the Kubernetes loops' chain.
fn matrix_layers_dir() -> PathBuf {
    image_cache::layers_dir(RECIPE).with_file_name("matrix-layers")
}

/// One imgbuild run: its manifest (stdout), exit code and wall time.
pub struct Run {
    pub manifest: Value,
    pub code: i32,
    pub wall: Duration,
}

impl Run {
    /// Seconds of a phase in a single build's manifest (0 when it did not run).
    pub fn phase_secs(manifest: &Value, phase: &str) -> f64 {
        manifest["stats"]["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["phase"] == phase)
            .map(|p| p["ms"].as_f64().unwrap_or(0.0) / 1000.0)
            .sum()
    }
}

/// `imgbuild build debian-k8s` with the loops' variables (`agent`, the local artifacts, no
/// initramfs update under direct kernel boot) and `args`, logged in to the emulators' account;
/// progress on stderr.
pub fn imgbuild(p: &Prepared, agent: &Path, cloud: &VmCloud, args: &[String]) -> Run {
    let mut cmd = Command::new(&p.bins.imgbuild);
    cmd.current_dir(harness::repo())
        .env("CLOUDSIGMA_USERNAME", &cloud.api.user)
        .env("CLOUDSIGMA_PASSWORD", &cloud.api.pass)
        .args(["build", RECIPE, "--output", "json", "--plain"])
        .arg("--var")
        .arg(format!("agent_binary={}", agent.display()))
        .arg("--var")
        .arg(format!("artifacts_dir={}", p.artifacts.display()))
        .args(["--var", "initramfs_update=no"])
        .args(args)
        .stderr(Stdio::inherit());
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", p.bins.imgbuild.display()));
    let wall = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let manifest = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "imgbuild {args:?} (exit {:?}) printed no JSON manifest ({e}):\n{stdout}",
            out.status.code()
        )
    });
    Run {
        manifest,
        code: out.status.code().unwrap_or(-1),
        wall,
    }
}

/// `--matrix kubernetes_version=1.33.13,1.34.1` over the locations, `--jobs jobs`, and `extra`.
pub fn matrix(p: &Prepared, locs: &Locations, jobs: usize, extra: &[&str]) -> Run {
    let mut args = vec![
        "--matrix".to_string(),
        format!("kubernetes_version={}", VERSIONS.join(",")),
    ];
    args.extend(locs.matrix_args());
    args.push("--jobs".into());
    args.push(jobs.to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    imgbuild(p, &p.bins.agent, &locs.clouds[0].1, &args)
}

/// The sha256 of a local file (`sha256sum`).
fn sha256(path: &Path) -> String {
    let out = harness::run(Command::new("sha256sum").arg(path), "sha256sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The checks of a 2×2 matrix run against what the clouds hold:
/// - exit 0; four combinations, each `built`, each (version, location) once, all published;
/// - per version one image fingerprint in both locations (same recipe, vars, files and library
///   drive), another per version; the image's meta names its version and fingerprint;
/// - each drive uuid is an image drive of its own location's account and of no other; the
///   kubelet uploaded into it is that version's (the sha256 imgbuild verified in the guest);
/// - the base layer: one fingerprint for all four (the Kubernetes version is after it); per
///   location at most one combination captured it, and then the other started from that very
///   drive; a base layer not captured here is one of the layers `kept` restored there;
/// - the Kubernetes layer (recipe `layers`, the second): one fingerprint per version whatever
///   the location, holding more steps than the base; captured by the combination, or (from
///   `kept`) one restored into its location;
/// - with `verify`: every check passed, kubelet and kubeadm reporting the tagged version;
/// - the location's account holds exactly its two images, the layers restored into it and the
///   layers its builds captured: no builder or verify server, no build, candidate or verify
///   drive.
///
/// With nothing restored (`Kept::default()`: empty accounts) this is the cold matrix: each
/// location's base layer captured by one combination and reused by the other, and every
/// combination capturing its Kubernetes layer.
pub async fn check_matrix(run: &Run, p: &Prepared, locs: &Locations, verify: bool, kept: &Kept) {
    let m = &run.manifest;
    assert_eq!(run.code, 0, "matrix exit code; manifest: {m:#}");
    let combos = m["combinations"].as_array().expect("combinations");
    assert_eq!(combos.len(), 4, "{m:#}");
    assert_eq!(
        (m["built"].as_u64(), m["failed"].as_u64()),
        (Some(4), Some(0))
    );
    let published: BTreeSet<&str> = m["published"]
        .as_array()
        .expect("published")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut seen = BTreeSet::new();
    let mut fp_of_version: BTreeMap<String, String> = BTreeMap::new();
    let mut base_fps = BTreeSet::new();
    let mut layers: BTreeMap<String, Vec<(bool, String)>> = BTreeMap::new();
    let mut images_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut k8s_layers_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut k8s_fp_of_version: BTreeMap<String, String> = BTreeMap::new();
    for c in combos {
        let label = c["label"].as_str().unwrap_or("?");
        assert_eq!(c["status"], "built", "{label}: {c:#}");
        let v = c["vars"]["kubernetes_version"].as_str().expect("version");
        let loc = c["location"].as_str().expect("location");
        assert!(VERSIONS.contains(&v) && LOCATIONS.contains(&loc), "{label}");
        assert!(
            seen.insert((v.to_string(), loc.to_string())),
            "{label} twice"
        );
        let fp = c["fingerprint"].as_str().expect("fingerprint").to_string();
        let uuid = c["drive_uuid"].as_str().expect("drive uuid").to_string();
        assert!(published.contains(uuid.as_str()), "{label}: not published");
        let one = &c["manifest"];
        assert_eq!(one["image_uuid"], uuid.as_str(), "{label}");
        assert_eq!(one["fingerprint"], fp.as_str(), "{label}");
        assert_eq!(one["meta"]["kubernetes_version"], v, "{label}");
        // one fingerprint per version, whatever the location
        let prev = fp_of_version.entry(v.to_string()).or_insert(fp.clone());
        assert_eq!(
            *prev, fp,
            "{label}: another fingerprint than the same version elsewhere"
        );
        // the right kubelet went in
        let want = sha256(&p.artifacts.join(format!("kubernetes/v{v}/kubelet")));
        assert_eq!(
            one["uploads"]["/var/lib/imgbuild/artifacts/kubernetes/kubelet"],
            want.as_str(),
            "{label}: uploaded kubelet"
        );
        // the drive, in its location only
        let d = locs.cloud(loc).api.get(&format!("drives/{uuid}/")).await;
        assert_eq!(d["meta"]["imgbuild.fingerprint"], fp.as_str(), "{label}");
        assert_eq!(d["meta"]["kubernetes_version"], v, "{label}");
        assert_eq!(d["meta"]["imgbuild.state"], "image", "{label}");
        for (other, oc) in &locs.clouds {
            if other != loc {
                let ds = oc.api.get("drives/").await;
                assert!(
                    !ds.to_string().contains(&uuid),
                    "{label}: drive {uuid} also in location {other}"
                );
            }
        }
        images_of.entry(loc.to_string()).or_default().insert(uuid);
        // Its layers: the one it started from (`reused`), then those it captured; the deepest
        // is the Kubernetes layer (recipe `layers`, the second).
        let all = one["layers"].as_array().expect("layers");
        let k8s = all.last().expect("a Kubernetes layer");
        let k8s_uuid = k8s["uuid"].as_str().expect("uuid");
        assert!(
            k8s["reused"] == false || kept.all(loc).contains(k8s_uuid),
            "{label}: its Kubernetes layer reused, but not one restored into {loc}: {all:#?}"
        );
        // The base layer, when the build went through it (not when it started from its
        // Kubernetes layer): the manifest's `base_layer` is then the first of `layers`.
        let layer = &one["base_layer"];
        assert_eq!(layer["uuid"], all[0]["uuid"], "{label}: {one:#}");
        if layer["steps"].as_u64() < k8s["steps"].as_u64() {
            base_fps.insert(
                layer["fingerprint"]
                    .as_str()
                    .expect("base layer")
                    .to_string(),
            );
            layers.entry(loc.to_string()).or_default().push((
                layer["reused"].as_bool().expect("reused"),
                layer["uuid"].as_str().expect("layer uuid").to_string(),
            ));
        } else {
            assert_eq!(
                (all.len(), &k8s["reused"]),
                (1, &Value::Bool(true)),
                "{label}: started from its Kubernetes layer: {all:#?}"
            );
        }
        let kfp = k8s["fingerprint"]
            .as_str()
            .expect("fingerprint")
            .to_string();
        let prev = k8s_fp_of_version
            .entry(v.to_string())
            .or_insert(kfp.clone());
        assert_eq!(
            *prev, kfp,
            "{label}: one Kubernetes layer fingerprint per version"
        );
        k8s_layers_of
            .entry(loc.to_string())
            .or_default()
            .insert(k8s["uuid"].as_str().expect("uuid").to_string());
        if verify {
            let checks = one["verify"]["checks"].as_array().expect("verify checks");
            assert!(
                checks.iter().all(|k| k["ok"] == true),
                "{label}: {checks:#?}"
            );
            for (name, want) in [
                ("kubelet is the tagged version", format!("Kubernetes v{v}")),
                ("kubeadm is the tagged version", format!("v{v}")),
                (
                    "containerd holds the tagged version's kube-proxy image, and no other version's",
                    format!("registry.k8s.io/kube-proxy:v{v}"),
                ),
            ] {
                let k = checks.iter().find(|k| k["name"] == name);
                let got = k.and_then(|k| k["got"].as_str()).unwrap_or_default();
                assert_eq!(got, format!("{want:?}"), "{label}: {name}");
            }
        }
    }
    assert_eq!(fp_of_version.len(), 2, "two versions, two fingerprints");
    let fps: BTreeSet<&String> = fp_of_version.values().collect();
    assert_eq!(fps.len(), 2, "the versions' fingerprints differ");
    assert!(
        base_fps.len() <= 1,
        "one base layer fingerprint: {base_fps:?}"
    );
    for (loc, _) in &locs.clouds {
        let l = layers.get(loc).cloned().unwrap_or_default();
        let restored = kept.all(loc);
        if restored.is_empty() {
            // cold: both built through the base layer, captured by one, reused by the other
            assert_eq!(l.len(), 2, "location {loc}: {l:?}");
        }
        let captured: Vec<&String> = l.iter().filter(|(r, _)| !r).map(|(_, u)| u).collect();
        assert!(
            captured.len() <= 1,
            "location {loc}: the base layer captured twice: {l:?}"
        );
        for (reused, u) in &l {
            assert!(
                !reused || captured.contains(&u) || restored.contains(u),
                "location {loc}: a base layer reused that was neither captured nor restored here: {l:?}"
            );
        }
        if restored.is_empty() {
            assert_eq!(captured.len(), 1, "location {loc}: {l:?}");
        }
        // the account: the two images and the layers, nothing else
        let c = locs.cloud(loc);
        let servers = c.api.get("servers/").await;
        assert_eq!(
            servers["objects"].as_array().map(Vec::len),
            Some(0),
            "{loc}: {servers}"
        );
        let drives = c.api.get("drives/").await;
        let have: BTreeSet<String> = drives["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["uuid"].as_str().map(str::to_string))
            .collect();
        let mut want = images_of[loc].clone();
        want.extend(l.iter().map(|(_, u)| u.clone()));
        want.extend(restored.iter().cloned());
        assert_eq!(
            k8s_layers_of[loc].len(),
            2,
            "{loc}: a Kubernetes layer per version"
        );
        want.extend(k8s_layers_of[loc].iter().cloned());
        assert_eq!(have, want, "location {loc}: drives {drives}");
    }
}
