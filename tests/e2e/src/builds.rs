//! The builds the loops run before anything boots: the cached library image, the static agent,
//! imgbuild and the controller (debug, or prebuilt through E2E_*_BIN), the controller's image
//! archive, and `imgbuild build` itself against the emulator.

use crate::cloud::Api;
use crate::harness::{repo, run, say, script_last_line};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The Debian library image the QEMU backend boots (tests/vm-image/build.sh; cached after the
/// first run): the directory holding it.
pub fn library_image(t0: Instant, repo: &Path) -> PathBuf {
    say(
        t0,
        "library image: tests/vm-image/build.sh (cached after the first run)",
    );
    PathBuf::from(script_last_line(repo, "tests/vm-image/build.sh", &[]))
}

/// The binaries the loops run. The debug builds (imgbuild, the host-process controller) go to a
/// target dir of their own, `e2e-build` (the outer `cargo test` holds the lock of the main one's
/// debug profile); the static release builds to the main one (`static_release`).
/// E2E_AGENT_BIN / E2E_IMGBUILD_BIN / E2E_CONTROLLER_BIN use prebuilt ones.
pub struct Binaries {
    pub agent: PathBuf,
    pub imgbuild: PathBuf,
    pub controller: PathBuf,
}

/// `$CARGO_TARGET_DIR`, else the clone's `target/`.
pub fn main_target() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
}

pub fn e2e_target() -> PathBuf {
    main_target().join("e2e-build")
}

/// `cargo build ARGS` into `target`.
fn cargo_build(repo: &Path, target: &Path, env: &[(&str, &str)], args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(&cargo)
            .current_dir(repo)
            .envs(env.iter().copied())
            .arg("build")
            .args(args)
            .env("CARGO_TARGET_DIR", target)
            .stderr(std::process::Stdio::inherit()),
        what,
    );
}

/// The checkout's short commit (empty when git cannot say).
pub fn checkout_commit(repo: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A static release build of `package`'s binary of the same name (as the image and the
/// controller's container ship it; glibc linked in). It goes to the main target dir, where the
/// recipes' default `agent_binary` (`${CARGO_TARGET_DIR:-../../target}/x86_64-unknown-linux-gnu/
/// release/cloudsigma-agent`) finds it after the tests: a build for another `--target` and
/// profile takes other locks than the debug build `cargo test` holds.
fn static_release(repo: &Path, package: &str) -> PathBuf {
    // The commit for `--version`, from this checkout: the build script's own `git rev-parse`
    // output is cached in the target dir, which worktrees may share (it then names whichever
    // checkout last re-ran it).
    let commit = checkout_commit(repo);
    cargo_build(
        repo,
        &main_target(),
        &[
            ("RUSTFLAGS", "-C target-feature=+crt-static"),
            ("CLOUDSIGMA_GIT_COMMIT", &commit),
        ],
        &[
            "--release",
            "-p",
            package,
            "--bin",
            package,
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
        &format!("cargo build {package} (static)"),
    );
    main_target()
        .join("x86_64-unknown-linux-gnu/release")
        .join(package)
}

/// The controller's container image as an OCI archive: `$CONTROLLER_IMAGE_ARCHIVE` (scripts/test
/// builds it with scripts/controller-image), else `scripts/controller-image` here, packaging a
/// static release build.
pub fn controller_image_archive(repo: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CONTROLLER_IMAGE_ARCHIVE") {
        return PathBuf::from(p);
    }
    let binary = static_release(repo, "cloudsigma-controller");
    let out = e2e_target().join("controller.tar");
    run(
        Command::new(repo.join("scripts/controller-image"))
            .arg("--binary")
            .arg(&binary)
            .arg("--out")
            .arg(&out)
            .stderr(std::process::Stdio::inherit()),
        "scripts/controller-image",
    );
    out
}

/// The name an OCI archive's image gets when containerd imports it: its index.json's
/// `io.containerd.image.name` annotation.
pub fn archive_image_ref(archive: &Path) -> String {
    let index = run(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("./index.json"),
        "reading index.json of the image archive",
    );
    let index: Value = serde_json::from_str(&index)
        .unwrap_or_else(|e| panic!("{}: index.json is not JSON: {e}", archive.display()));
    index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{}: no io.containerd.image.name in index.json: {index}",
                archive.display()
            )
        })
        .to_string()
}

pub fn build_binaries(repo: &Path, with_controller: bool) -> Binaries {
    let target = e2e_target();
    let build = |env: &[(&str, &str)], args: &[&str], what: &str| {
        cargo_build(repo, &target, env, args, what)
    };
    let agent = match std::env::var("E2E_AGENT_BIN") {
        Ok(p) => PathBuf::from(p),
        // static, as the image ships it
        Err(_) => static_release(repo, "cloudsigma-agent"),
    };
    let imgbuild = match std::env::var("E2E_IMGBUILD_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            build(
                &[],
                &["-p", "imgbuild", "--bin", "imgbuild"],
                "cargo build imgbuild",
            );
            target.join("debug/imgbuild")
        }
    };
    let controller = match std::env::var("E2E_CONTROLLER_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) if with_controller => {
            build(
                &[],
                &[
                    "-p",
                    "cloudsigma-controller",
                    "--bin",
                    "cloudsigma-controller",
                ],
                "cargo build cloudsigma-controller",
            );
            target.join("debug/cloudsigma-controller")
        }
        Err(_) => PathBuf::new(),
    };
    Binaries {
        agent,
        imgbuild,
        controller,
    }
}

/// Runs `imgbuild build RECIPE --output json` against the emulator and returns the image uuid.
pub fn imgbuild(
    bin: &Path,
    repo: &Path,
    api: &Api,
    recipe: &str,
    vars: &[(&str, String)],
) -> String {
    image_uuid(&imgbuild_manifest(bin, repo, api, recipe, vars))
}

/// The image uuid in imgbuild's JSON manifest.
pub fn image_uuid(manifest: &Value) -> String {
    manifest["image"]["uuid"]
        .as_str()
        .or_else(|| manifest["image_uuid"].as_str())
        .or_else(|| manifest["uuid"].as_str())
        .unwrap_or_else(|| panic!("no image uuid in manifest: {manifest}"))
        .to_string()
}

/// Runs `imgbuild build RECIPE --output json --no-base-cache` against the emulator and returns
/// its JSON manifest (the image, `stats.phases`, ...). No cached layer is used or left behind.
pub fn imgbuild_manifest(
    bin: &Path,
    repo: &Path,
    api: &Api,
    recipe: &str,
    vars: &[(&str, String)],
) -> Value {
    imgbuild_manifest_layers(bin, repo, api, recipe, vars, false)
}

/// [`imgbuild_manifest`]; with `layers` the recipe's cached layers are used and captured (the
/// caller deletes them before the loop's end: `image_cache` keeps them outside the account).
pub fn imgbuild_manifest_layers(
    bin: &Path,
    repo: &Path,
    api: &Api,
    recipe: &str,
    vars: &[(&str, String)],
    layers: bool,
) -> Value {
    let mut cmd = Command::new(bin);
    cmd.current_dir(repo)
        .env("CLOUDSIGMA_USERNAME", &api.user)
        .env("CLOUDSIGMA_PASSWORD", &api.pass)
        .args([
            "build",
            recipe,
            "--api-url",
            &api.base,
            "--output",
            "json",
            "--plain",
        ])
        .stderr(std::process::Stdio::inherit());
    if !layers {
        // the loops end with an empty account (Cloud::finish): no cached layer drive may stay
        cmd.arg("--no-base-cache");
    }
    for (k, v) in vars {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    let out = run(&mut cmd, &format!("imgbuild {recipe}"));
    serde_json::from_str(out.trim())
        .or_else(|_| serde_json::from_str(out.lines().last().unwrap_or_default()))
        .unwrap_or_else(|e| panic!("imgbuild --output json printed no JSON manifest ({e}):\n{out}"))
}

/// The static agent and its unit file as git revision `rev` had them (the boot bench's
/// same-run baseline): `(binary, unit file, full commit id)`.
///
/// The revision's tree is exported with `git archive` into `$CARGO_TARGET_DIR/
/// boot-bench-baseline/src-<commit>` (outside the clone when the target dir is; no `git
/// worktree`, so an interrupted run leaves no worktree entry in the repository) and built there
/// exactly as [`build_binaries`] builds the current agent (`+crt-static`, release,
/// x86_64-unknown-linux-gnu), into a target dir of its own: the shared one's
/// `x86_64-unknown-linux-gnu/release/cloudsigma-agent` is the current agent and must stay so.
/// `CLOUDSIGMA_GIT_COMMIT` gives the binary's `--version` the revision (the export has no
/// `.git`). The result is kept as `agent-<commit>` and `unit-<commit>`; a later run reuses it.
pub fn static_agent_at(repo: &Path, rev: &str) -> (PathBuf, PathBuf, String) {
    let commit = run(
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{rev}^{{commit}}")),
        &format!("BOOT_BENCH_BASELINE={rev}: not a commit of this repository"),
    )
    .trim()
    .to_string();
    let dir = main_target().join("boot-bench-baseline");
    let (binary, unit) = (
        dir.join(format!("agent-{commit}")),
        dir.join(format!("unit-{commit}")),
    );
    if binary.is_file() && unit.is_file() {
        return (binary, unit, commit);
    }
    let src = dir.join(format!("src-{commit}"));
    if !src.join("Cargo.toml").is_file() {
        std::fs::create_dir_all(&src).expect("baseline source dir");
        let archive = src.with_extension("tar");
        run(
            Command::new("git")
                .arg("-C")
                .arg(repo)
                .args(["archive", "--format=tar", "-o"])
                .arg(&archive)
                .arg(&commit),
            "git archive of the baseline",
        );
        run(
            Command::new("tar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&src),
            "unpacking the baseline",
        );
        std::fs::remove_file(&archive).expect("removing the baseline archive");
    }
    let short = &commit[..7];
    cargo_build(
        &src,
        &dir.join("target"),
        &[
            ("RUSTFLAGS", "-C target-feature=+crt-static"),
            ("CLOUDSIGMA_GIT_COMMIT", short),
        ],
        &[
            "--locked",
            "--release",
            "-p",
            "cloudsigma-agent",
            "--bin",
            "cloudsigma-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
        &format!("cargo build cloudsigma-agent at {short} (static)"),
    );
    let built = dir.join("target/x86_64-unknown-linux-gnu/release/cloudsigma-agent");
    std::fs::copy(&built, &binary).expect("keeping the baseline agent");
    std::fs::copy(src.join("systemd/cloudsigma-bootstrap.service"), &unit)
        .expect("the baseline's systemd/cloudsigma-bootstrap.service");
    (binary, unit, commit)
}
