//! The real imgbuild binary, the real OpenSSH transport (its ephemeral key in a private temp
//! dir), the in-process emulator, and signals (issue #10 item 3): SIGHUP is handled like SIGTERM,
//! a second SIGINT does not cut the cleanup short, a third abandons it and names what it leaves;
//! on every path the temp dir with the private key is gone when imgbuild exits.
//!
//! The build waits for SSH to the emulator's NAT address, which never answers: that is where
//! the signals land, with the builder server and drive existing.

#[path = "support/fixture.rs"]
mod fixture;

use cloudsim::FaultConfig;
use fixture::{fixture, Fixture};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

struct Run {
    child: Child,
    lines: Option<Lines<BufReader<ChildStderr>>>,
    log: Vec<String>,
    /// The binary's TMPDIR: where its private SSH dir goes.
    tmp: tempfile::TempDir,
}

/// The private dirs imgbuild made under `tmp` (normally one, holding the key).
fn key_dirs(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("imgbuild-ssh-"))
        .map(|e| e.path())
        .collect()
}

impl Run {
    async fn start(f: &Fixture) -> Run {
        let tmp = tempfile::tempdir_in(f.dir.path()).unwrap();
        let mut child = f
            .imgbuild()
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn imgbuild");
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut run = Run {
            child,
            lines: Some(lines),
            log: Vec::new(),
            tmp,
        };
        assert!(
            run.read_until("waiting for SSH").await,
            "the build never reached wait-ssh: {:#?}",
            run.log
        );
        assert_eq!(f.counts().0, 1, "the builder server exists");
        let dirs = key_dirs(run.tmp.path());
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        assert!(
            dirs[0].join("id_ed25519").exists(),
            "the private key exists"
        );
        run
    }

    /// Read stderr until a line contains `what` (true) or it ends (false).
    async fn read_until(&mut self, what: &str) -> bool {
        let lines = self.lines.as_mut().expect("stderr still open");
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                let hit = l.contains(what);
                self.log.push(l);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        found.unwrap_or(false)
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("still running") as i32;
        // SAFETY: sending a signal to our own child process by pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Wait for the exit (the rest of stderr into the log); the exit code, None if killed.
    async fn exit(&mut self) -> Option<i32> {
        if self.lines.is_some() {
            self.read_until("\u{0}never\u{0}").await;
        }
        let st = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("imgbuild exits")
            .unwrap();
        st.code()
    }

    fn text(&self) -> String {
        self.log.join("\n")
    }

    /// The last signal: wait for the exit; (exit code, the whole stderr).
    async fn last_signal(&mut self, sig: i32) -> (Option<i32>, String) {
        self.signal(sig);
        let code = self.exit().await;
        (code, self.text())
    }

    /// The first signal: the build stops and its cleanup starts.
    async fn interrupt(&mut self, sig: i32) {
        self.signal(sig);
        let said = self.read_until("interrupted; cleaning up").await;
        assert!(said, "{:#?}", self.log);
    }

    fn assert_key_dir_gone(&self) {
        let left = key_dirs(self.tmp.path());
        assert!(left.is_empty(), "key dir left: {left:?}\n{}", self.text());
    }
}

/// `text` contains every one of `parts`.
fn assert_says(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{p:?} missing from:\n{text}");
    }
}

/// Nothing of the build is left in the emulator.
fn assert_cloud_empty(f: &Fixture, log: &str) {
    slow_api(f, 0);
    assert_eq!(f.counts(), (0, 0, 0), "leftovers in the cloud:\n{log}");
}

fn slow_api(f: &Fixture, ms: u64) {
    f.emu.set_faults(FaultConfig {
        latency_ms: ms,
        ..Default::default()
    });
}

/// The terminal goes away: stderr is closed (every write fails) and SIGHUP arrives. imgbuild
/// cleans up as for SIGTERM — neither killed by the signal nor by a panic on the failed write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_the_terminal_gone_cleans_up_and_removes_the_key() {
    let f = fixture().await;
    let mut run = Run::start(&f).await;
    slow_api(&f, 50);
    run.lines = None; // the reading end of stderr closes: writes now fail with EPIPE
    run.signal(libc::SIGHUP);
    let code = run.exit().await;
    assert_eq!(code, Some(129), "SIGHUP exits 129 after cleanup");
    run.assert_key_dir_gone();
    assert_cloud_empty(&f, "(stderr closed)");
    f.emu.shutdown().await;
}

/// Two Ctrl-Cs: the second does not cut the cleanup short (no `process::exit`), the key goes
/// as soon as the build stops (before the cleanup's API calls), the dir when imgbuild exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sigints_finish_the_cleanup_and_remove_the_key() {
    let f = fixture().await;
    let mut run = Run::start(&f).await;
    let key = key_dirs(run.tmp.path())[0].join("id_ed25519");
    // every API answer takes 200 ms: the cleanup's dozen calls take seconds
    slow_api(&f, 200);
    run.interrupt(libc::SIGINT).await;
    let t = Instant::now();
    while key.exists() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!key.exists(), "the key is destroyed when the build stops");
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "cleanup still runs"
    );
    let (code, text) = run.last_signal(libc::SIGINT).await;
    assert_eq!(code, Some(130), "{text}");
    assert_says(
        &text,
        &[
            "still cleaning up",
            "cleanup: deleted server",
            "cleanup: deleted drive",
        ],
    );
    run.assert_key_dir_gone();
    assert_cloud_empty(&f, &text);
    f.emu.shutdown().await;
}

/// A third signal abandons a slow cleanup (its calls take 3 s each) at once; imgbuild names what
/// it leaves, exits 3 (leftovers) rather than the signal's code, and still removes the key dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_signal_abandons_the_cleanup_names_the_leftovers_and_removes_the_key() {
    let f = fixture().await;
    let mut run = Run::start(&f).await;
    slow_api(&f, 3000);
    run.interrupt(libc::SIGINT).await;
    run.signal(libc::SIGTERM);
    assert!(run.read_until("still cleaning up").await, "{:#?}", run.log);
    let t = Instant::now();
    let (code, text) = run.last_signal(libc::SIGINT).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "abandoning took {:?}",
        t.elapsed()
    );
    assert_eq!(
        code,
        Some(3),
        "leftovers exit 3, like a failed build's:\n{text}"
    );
    // the leftovers are named
    assert_says(
        &text,
        &[
            "abandoning the cleanup",
            "COULD NOT delete server",
            "cleanup abandoned",
        ],
    );
    run.assert_key_dir_gone();
    f.emu.shutdown().await;
}
