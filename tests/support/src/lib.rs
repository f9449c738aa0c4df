//! What the test crates (tests/e2e, the controller's testkit, the builder's tests) each wrote two to
//! seven times, once: where slow builds are cached, a free loopback port, a kubeconfig for a
//! bearer token, a command bounded in time, shell quoting, and the timing of a loop's phases.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `$CLOUDSIGMA_K8S_CACHE`, where slow builds live outside the clone (scripts/cache-env), else
/// `$HOME/.cache/cloudsigma-k8s`. An empty variable counts as unset, as in scripts/cache-env's
/// `${CLOUDSIGMA_K8S_CACHE:-…}`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("CLOUDSIGMA_K8S_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/cloudsigma-k8s"),
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks; a race with another process is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// How a kubeconfig trusts the apiserver.
pub enum Trust<'a> {
    /// The cluster CA's PEM.
    Ca(&'a str),
    /// No verification (tests against a throwaway apiserver's self-signed certificate).
    Insecure,
}

/// The text of a kubeconfig for `server` with a bearer `token` (a ServiceAccount's).
pub fn kubeconfig(server: &str, trust: Trust<'_>, user: &str, token: &str) -> String {
    let trust = match trust {
        Trust::Ca(pem) => format!("certificate-authority-data: {}", base64(pem.as_bytes())),
        Trust::Insecure => "insecure-skip-tls-verify: true".to_string(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    {trust}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n"
    )
}

/// Writes [`kubeconfig`] to `path`, readable by its owner only (it holds a token).
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    trust: Trust<'_>,
    user: &str,
    token: &str,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let body = kubeconfig(server, trust, user, token);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(body.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Runs `cmd` to completion or kills it after `timeout`. The error names the program (never its
/// environment, which may hold a password) and what it printed.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    // Drain both pipes while waiting, so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = se.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let t = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if t.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_t.join().unwrap_or_default();
                return Err(format!(
                    "{program} did not finish within {timeout:?}; it printed: {}",
                    String::from_utf8_lossy(&stderr).trim()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The timing of a loop's phases, printed as one table at the end.
pub struct Phases {
    t0: Instant,
    done: Vec<(String, Duration)>,
}

impl Phases {
    pub fn new() -> Phases {
        Phases {
            t0: Instant::now(),
            done: Vec::new(),
        }
    }

    /// When the loop started.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Records a phase that started at `since`.
    pub fn done(&mut self, name: &str, since: Instant) {
        self.done.push((name.to_string(), since.elapsed()));
    }

    /// Records a phase of known duration.
    pub fn push(&mut self, name: &str, d: Duration) {
        self.done.push((name.to_string(), d));
    }

    pub fn list(&self) -> &[(String, Duration)] {
        &self.done
    }

    /// The table: total, then each phase.
    pub fn table(&self, title: &str) -> String {
        let mut s = format!("== {title}: {:.1}s ==\n", self.t0.elapsed().as_secs_f64());
        for (name, d) in &self.done {
            s += &format!("  {name:<36} {:>7.1}s\n", d.as_secs_f64());
        }
        s
    }

    /// Keeps [`Phases::table`] for the benchmarks that print the demo's phases without running
    /// it again (issue 25 item 6: tests/e2e/tests/boot_bench.rs): `$CLOUDSIGMA_K8S_CACHE/bench/
    /// <name>.txt`, first line `recorded <unix seconds> <label>`, written through a temporary file
    /// and a rename so a reader never sees half a table. A failure only warns: the loop's result
    /// does not depend on it.
    pub fn record(&self, title: &str, name: &str, label: &str) {
        self.record_in(&cache_dir().join("bench"), title, name, label)
    }

    fn record_in(&self, dir: &Path, title: &str, name: &str, label: &str) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = format!("recorded {secs} {label}\n{}", self.table(title));
        let tmp = dir.join(format!(".{name}.txt.{}", std::process::id()));
        let res = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{name}.txt"))));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("phases: could not record {name} in {}: {e}", dir.display());
        }
    }
}

/// The phases [`Phases::record`] kept under `name`: how long ago (seconds), the label and the
/// table; None when no run was recorded (or the file is not one of ours).
pub fn recorded_phases(name: &str) -> Option<(u64, String, String)> {
    recorded_in(&cache_dir().join("bench"), name)
}

fn recorded_in(dir: &Path, name: &str) -> Option<(u64, String, String)> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.txt"))).ok()?;
    let (head, table) = text.split_once('\n')?;
    let mut it = head.strip_prefix("recorded ")?.splitn(2, ' ');
    let at: u64 = it.next()?.parse().ok()?;
    let label = it.next().unwrap_or("").to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some((now.saturating_sub(at), label, table.to_string()))
}

impl Default for Phases {
    fn default() -> Self {
        Phases::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
    }

    #[test]
    fn quoting_survives_a_shell() {
        let nasty = "a'b \"c\" $(d) `e`";
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), nasty);
    }

    #[test]
    fn timeout_kills_and_names_the_program() {
        let t = Instant::now();
        let e = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.starts_with("sleep did not finish"), "{e}");
        let ok = run_with_timeout(Command::new("echo").arg("hi"), Duration::from_secs(10)).unwrap();
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "hi\n");
    }

    #[test]
    fn empty_cache_variable_counts_as_unset() {
        // one test touches the variable: no other test of this crate reads it concurrently
        std::env::set_var("CLOUDSIGMA_K8S_CACHE", "");
        assert!(cache_dir().ends_with(".cache/cloudsigma-k8s"));
        std::env::set_var("CLOUDSIGMA_K8S_CACHE", "/x/y");
        assert_eq!(cache_dir(), PathBuf::from("/x/y"));
        std::env::remove_var("CLOUDSIGMA_K8S_CACHE");
    }

    #[test]
    fn recorded_phases_come_back_whole_and_nothing_is_left_beside_them() {
        let dir = std::env::temp_dir().join(format!("phases-test-{}", std::process::id()));
        assert!(recorded_in(&dir, "loop").is_none(), "nothing recorded yet");
        let mut p = Phases::new();
        p.push("boot", Duration::from_millis(1500));
        p.push("join", Duration::from_millis(250));
        p.record_in(&dir, "loop (two workers)", "loop", "commit abc");
        let (age, label, table) = recorded_in(&dir, "loop").expect("recorded");
        assert!(age < 60, "{age}");
        assert_eq!(label, "commit abc");
        assert!(table.starts_with("== loop (two workers): "), "{table}");
        assert!(
            table.contains("  boot ") && table.contains("1.5s") && table.contains("0.2s"),
            "{table}"
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("loop.txt")],
            "no temporary file left"
        );
        std::fs::write(dir.join("other.txt"), "not a record").unwrap();
        assert!(
            recorded_in(&dir, "other").is_none(),
            "a file that is not a record is refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kubeconfig_carries_server_token_and_trust() {
        let k = kubeconfig("https://127.0.0.1:6443", Trust::Ca("PEM"), "sa", "tok");
        assert!(k.contains("server: https://127.0.0.1:6443"));
        assert!(k.contains("certificate-authority-data: UEVN"));
        assert!(k.contains("token: tok"));
        assert!(
            kubeconfig("u", Trust::Insecure, "sa", "t").contains("insecure-skip-tls-verify: true")
        );
    }
}
