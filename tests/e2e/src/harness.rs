//! What every loop starts with: the repository, prerequisites, progress lines and running a
//! command. The rest of the harness lives in modules named for what they do: `builds`, `ssh`,
//! `cloud`, `bootstrap_data`, `disk`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

pub fn repo() -> PathBuf {
    std::fs::canonicalize(REPO).expect("repo root")
}

pub use test_support::{cache_dir, shell_quote};

pub fn say(t0: Instant, msg: &str) {
    eprintln!("[e2e {:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Returns the reason a VM test cannot run here, if any.
pub fn missing_prereq() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Some("must run as root (debootstrap builds the library image)".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "debootstrap",
        "mke2fs",
        "ssh",
        "ssh-keygen",
    ] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!(
                "{tool} not found (scripts/install-deps installs it)"
            ));
        }
    }
    None
}

/// Panics (or, with CLOUDSIGMA_K8S_ALLOW_SKIP=1, returns false) when the VM tests cannot run.
pub fn prereqs_or_skip(test: &str) -> bool {
    match missing_prereq() {
        None => true,
        Some(why) if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
        Some(why) => {
            panic!("{test} cannot run: {why} (set CLOUDSIGMA_K8S_ALLOW_SKIP=1 to skip)")
        }
    }
}

pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        // The program only: `{cmd:?}` would print the environment, i.e. the emulator password.
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a repo script whose last stdout line is its result (a path), progress on stderr.
pub fn script_last_line(repo: &Path, script: &str, args: &[&str]) -> String {
    let out = run(
        Command::new(repo.join(script))
            .args(args)
            .stderr(std::process::Stdio::inherit()),
        script,
    );
    out.lines().last().unwrap_or_default().trim().to_string()
}
