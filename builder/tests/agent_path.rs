//! Where `imgbuild validate ubuntu-k8s` looks for the agent it embeds (docs/ci.md): a relative
//! `--var` path is taken from the current directory, the recipe's default follows
//! `$CARGO_TARGET_DIR` (else the clone's `target/`), and a missing agent is an error that names
//! the variable, says where its value came from and what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const AGENT_IN_TARGET: &str = "x86_64-unknown-linux-gnu/release/cloudsigma-agent";

fn repo() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap()
}

/// `imgbuild validate ubuntu-k8s [ARGS]` run in `cwd`, with the recipes of this checkout and a
/// controlled CARGO_TARGET_DIR (None: unset).
fn validate(cwd: &Path, target_dir: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.current_dir(cwd)
        .env("IMGBUILD_RECIPES", repo().join("image-recipes"))
        .env_remove("CARGO_TARGET_DIR")
        .args(["validate", "ubuntu-k8s"])
        .args(args);
    if let Some(t) = target_dir {
        c.env("CARGO_TARGET_DIR", t);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn relative_var_path_is_taken_from_the_current_directory() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("dist")).unwrap();
    std::fs::write(d.path().join("dist/cloudsigma-agent"), "agent").unwrap();
    let o = validate(
        d.path(),
        Some(d.path()),
        &["--var", "agent_binary=dist/cloudsigma-agent"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // the same relative path from another directory names another (missing) file
    let elsewhere = tempfile::tempdir().unwrap();
    let o = validate(
        elsewhere.path(),
        Some(d.path()),
        &["--var", "agent_binary=dist/cloudsigma-agent"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let want = elsewhere.path().join("dist/cloudsigma-agent");
    assert!(
        stderr(&o).contains(&want.display().to_string()),
        "{}",
        stderr(&o)
    );
}

#[test]
fn default_agent_follows_cargo_target_dir() {
    let target = tempfile::tempdir().unwrap();
    let agent = target.path().join(AGENT_IN_TARGET);
    std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
    std::fs::write(&agent, "agent").unwrap();
    let o = validate(&repo(), Some(target.path()), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn missing_agent_names_the_variable_and_what_to_do() {
    let target = tempfile::tempdir().unwrap();
    let o = validate(&repo(), Some(target.path()), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    let path = target.path().join(AGENT_IN_TARGET);
    for want in [
        path.display().to_string().as_str(),
        "variable agent_binary",
        "the recipe's default",
        // the recipe's own comment on the variable: how to build it
        "cargo build --release --target x86_64-unknown-linux-gnu -p cloudsigma-agent",
        "--var agent_binary=PATH",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    // given on the command line: said so
    let o = validate(&repo(), None, &["--var", "agent_binary=no/such/agent"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("given with --var, relative to the current directory"),
        "{}",
        stderr(&o)
    );
}
