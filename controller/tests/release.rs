//! What ships: `--version` names the commit (one build script, buildsrc/git_version.rs, for all four crates), the kustomize
//! default image is what `scripts/controller-image` writes, and that archive is a valid OCI image
//! layout (`ctr -n k8s.io images import`, `skopeo copy oci-archive:`): index → manifest → config
//! and layer, every digest and size right, uid 65532, the binary alone.
//!
//! The archive checked is `$CONTROLLER_IMAGE_ARCHIVE` when set (scripts/test builds the real one
//! with scripts/controller-image) and otherwise one written here by the same shell function
//! (scripts/oci-archive) around this test's binary, so `cargo test` alone checks the layout too.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// The kustomization's `images:` entry for cloudsigma-controller: (newName, newTag).
fn kustomize_image() -> (String, String) {
    let text = std::fs::read_to_string(repo().join("controller/config/kustomization.yaml"))
        .expect("kustomization.yaml");
    let k: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let img = k["images"]
        .as_sequence()
        .expect("images:")
        .iter()
        .find(|i| i["name"].as_str() == Some("cloudsigma-controller"))
        .expect("an images: entry for cloudsigma-controller");
    (
        img["newName"].as_str().expect("newName").to_string(),
        img["newTag"].as_str().expect("newTag").to_string(),
    )
}

#[test]
fn build_scripts_are_one_file() {
    for c in ["agent", "builder", "controller", "emulator"] {
        let script = std::fs::read_to_string(repo().join(c).join("build.rs")).expect(c);
        assert!(
            script.contains(r#"include!("../buildsrc/git_version.rs");"#),
            "{c}/build.rs must be the shared buildsrc/git_version.rs:\n{script}"
        );
    }
}

#[test]
fn version_names_the_commit() {
    let v = run(Command::new(env!("CARGO_BIN_EXE_cloudsigma-controller")).arg("--version"));
    let commit = std::env::var("CLOUDSIGMA_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .arg("-C")
                .arg(repo())
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        v.trim(),
        format!(
            "cloudsigma-controller {} (git {commit})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn kustomize_default_tag_is_the_crate_version() {
    let (name, tag) = kustomize_image();
    assert_eq!(name, "ghcr.io/cloudsigma-k8s/cloudsigma-controller");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "scripts/controller-image names the image after the kustomization; its tag must be the release's version"
    );
}

/// The archive to check, and a temp dir that keeps it alive.
fn archive() -> (PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    if let Some(p) = std::env::var_os("CONTROLLER_IMAGE_ARCHIVE") {
        return (PathBuf::from(p), tmp);
    }
    let (name, tag) = kustomize_image();
    let out = tmp.path().join("controller.tar");
    run(Command::new("bash")
        .arg("-euc")
        .arg(r#". "$1/scripts/oci-archive"; oci_archive "$2" "$3" "$4" /cloudsigma-controller 65532:65532 '{"org.opencontainers.image.title":"cloudsigma-controller"}'"#)
        .arg("bash")
        .arg(repo())
        .arg(&out)
        .arg(format!("{name}:{tag}"))
        .arg(env!("CARGO_BIN_EXE_cloudsigma-controller")));
    (out, tmp)
}

/// `sha256:<hex>` of a descriptor → the blob, checked against the descriptor's digest and size.
fn blob(layout: &Path, desc: &Value) -> PathBuf {
    let digest = desc["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    assert!(path.is_file(), "blob {digest} missing");
    assert_eq!(sha256(&path), hex, "blob {digest}: content hash");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        desc["size"].as_u64().expect("size"),
        "blob {digest}: size"
    );
    path
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

#[test]
fn controller_image_is_a_valid_oci_layout() {
    let (archive, tmp) = archive();
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));

    assert_eq!(
        json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    let index = json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "one image");
    let m = &manifests[0];
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["platform"]["os"], "linux");
    assert_eq!(m["platform"]["architecture"], "amd64");
    // ctr import names the image by this annotation: the kustomize default, so a node that
    // imported the archive runs the Deployment without pulling.
    let (name, tag) = kustomize_image();
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        format!("{name}:{tag}")
    );
    assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], tag);

    let manifest = json(&blob(&layout, m));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = json(&blob(&layout, &manifest["config"]));
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let layer = blob(&layout, &layers[0]);

    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/cloudsigma-controller"])
    );
    assert_eq!(config["rootfs"]["type"], "layers");
    // An uncompressed layer: its diff_id is its digest.
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([layers[0]["digest"]])
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.title"],
        "cloudsigma-controller"
    );

    // The layer holds the binary and nothing else: no shell, no libraries.
    let listing = run(Command::new("tar").arg("-tvf").arg(&layer));
    let entries: Vec<(&str, &str)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], *f.last().unwrap())
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("drwxr-xr-x", "./"),
            ("-rwxr-xr-x", "./cloudsigma-controller")
        ],
        "layer contents"
    );

    // Nothing in the archive but the layout and the three blobs.
    let mut files = run(Command::new("tar").arg("-tf").arg(&archive))
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(String::from)
        .collect::<Vec<_>>();
    files.sort();
    let mut want = vec![
        "./index.json".to_string(),
        "./oci-layout".to_string(),
        format!("./blobs/sha256/{}", &m["digest"].as_str().unwrap()[7..]),
        format!(
            "./blobs/sha256/{}",
            &manifest["config"]["digest"].as_str().unwrap()[7..]
        ),
        format!(
            "./blobs/sha256/{}",
            &layers[0]["digest"].as_str().unwrap()[7..]
        ),
    ];
    want.sort();
    assert_eq!(files, want);
}
