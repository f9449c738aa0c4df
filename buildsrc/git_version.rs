// Sets `CLOUDSIGMA_BUILD_VERSION` = "<crate version> (git <short commit>)" for `--version`, so a
// binary found on a node or in an image says which commit it was built from.
// agent/, builder/, controller/ and emulator/build.rs are each one `include!` of this file.
//
// `CLOUDSIGMA_GIT_COMMIT` in the environment wins (builds from a source tarball); otherwise
// `git rev-parse --short HEAD`; outside a git checkout, or without git, "unknown". It never
// fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLOUDSIGMA_GIT_COMMIT");
    let commit = match std::env::var("CLOUDSIGMA_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Re-run when HEAD moves: HEAD itself (a checkout), the branch's loose ref (a commit)
            // and packed-refs. Only existing paths: cargo re-runs on every build for a missing one.
            if let Some(head) = git(
                &dir,
                &["rev-parse", "--path-format=absolute", "--git-path", "HEAD"],
            ) {
                let mut watch = vec![PathBuf::from(head)];
                if let Some(common) = git(
                    &dir,
                    &["rev-parse", "--path-format=absolute", "--git-common-dir"],
                ) {
                    let common = PathBuf::from(common);
                    watch.push(common.join("packed-refs"));
                    if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                        watch.push(common.join(r));
                    }
                }
                for p in watch.iter().filter(|p| p.exists()) {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            git(&dir, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=CLOUDSIGMA_BUILD_VERSION={version} (git {commit})");
}
