//! The documented static build command (docs/agent.md) produces a static, stripped binary of at
//! most 5 MB that runs. Uses its own target dir: the outer `cargo test` holds the lock on its own.

use std::process::Command;

#[test]
fn static_release_build() {
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = tmp.parent().expect("target dir").join("static-build-test");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "cloudsigma-agent",
            "--bin",
            "cloudsigma-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(st.success(), "static build failed");
    let bin = target.join("x86_64-unknown-linux-gnu/release/cloudsigma-agent");
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(size <= 5_000_000, "binary is {size} bytes, target <= 5 MB");

    let file = Command::new("file")
        .arg(&bin)
        .output()
        .expect("`file` is installed by scripts/install-deps");
    let desc = String::from_utf8_lossy(&file.stdout);
    assert!(desc.contains("static"), "not static: {desc}");
    assert!(
        desc.contains("stripped") && !desc.contains("not stripped"),
        "not stripped: {desc}"
    );
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let ldd_out = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        ldd_out.contains("statically linked") || ldd_out.contains("not a dynamic executable"),
        "{ldd_out}"
    );

    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("cloudsigma-agent "));
    // No libudev, no Python: nothing dynamic at all, checked above.
}
