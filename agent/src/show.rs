//! `cloudsigma-agent status`: the last run, read back from the status file (schema 1,
//! docs/agent.md). Read as plain JSON so that a file from another agent version still shows.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::cli::Output;

/// Print the status file at `path`. Returns the exit code: 0 when the last run succeeded or was
/// skipped, 1 when it failed, is still running (or was killed: systemd's timeout), or there is no
/// readable status.
pub fn run(path: &Path, output: Output) -> i32 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "cloudsigma-agent: cannot read status file {}: {e}",
                path.display()
            );
            return 1;
        }
    };
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "cloudsigma-agent: status file {} is not JSON: {e}",
                path.display()
            );
            return 1;
        }
    };
    match output {
        Output::Json => print!(
            "{}",
            if text.ends_with('\n') {
                text
            } else {
                text + "\n"
            }
        ),
        Output::Text => print!("{}", render(&v)),
    }
    match v.get("result").and_then(Value::as_str) {
        Some("success" | "skipped") => 0,
        _ => 1,
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The status as a person reads it: the outcome first, then where the time went.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "last run: {} (agent {}, {} ms)",
        s(v, "result"),
        s(v, "agent_version"),
        n(v, "duration_ms")
    );
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let _ = writeln!(o, "error: step {}: {}", s(e, "step"), s(e, "message"));
    }
    let _ = writeln!(o, "started: {}", s(v, "started_at"));
    let _ = writeln!(o, "finished: {}", s(v, "finished_at"));
    let _ = writeln!(o, "instance: {}", s(v, "instance_id"));
    let _ = writeln!(o, "hostname: {}", s(v, "hostname"));
    let _ = writeln!(o, "user data: {}", s(v, "user_data_kind"));
    match v.get("node_ip_source").and_then(Value::as_str) {
        Some(src) => {
            let _ = writeln!(o, "node ip: {} (from the {src})", s(v, "node_ip"));
        }
        None => {
            let _ = writeln!(o, "node ip: {}", s(v, "node_ip"));
        }
    }
    let present = match v.get("marker_present").and_then(Value::as_bool) {
        Some(true) => "present",
        Some(false) => "absent",
        None => "unknown",
    };
    let _ = writeln!(o, "marker: {} ({present})", s(v, "marker"));
    let phases = list(v, "phases");
    if !phases.is_empty() {
        let width = phases.iter().map(|p| s(p, "name").len()).max().unwrap_or(0);
        let _ = writeln!(o, "phases:");
        for p in phases {
            let _ = write!(
                o,
                "  {:<width$}  {:<7}  {:>6} ms",
                s(p, "name"),
                s(p, "result"),
                n(p, "duration_ms")
            );
            match p.get("detail").and_then(Value::as_str) {
                Some(d) => {
                    let _ = writeln!(o, "  {d}");
                }
                None => o.push('\n'),
            }
        }
    }
    let ifs = list(v, "interfaces");
    if !ifs.is_empty() {
        let _ = writeln!(o, "interfaces:");
        for i in ifs {
            let addrs: Vec<String> = list(i, "addresses")
                .iter()
                .map(|a| match a.get("prefix").and_then(Value::as_u64) {
                    Some(p) => format!("{}/{p}", s(a, "address")),
                    None => s(a, "address").to_string(),
                })
                .collect();
            let _ = writeln!(
                o,
                "  {} {} {} {}",
                s(i, "name"),
                s(i, "mac"),
                s(i, "class"),
                addrs.join(" ")
            );
        }
    }
    let strings =
        |key: &str| -> Vec<&str> { list(v, key).iter().filter_map(Value::as_str).collect() };
    let unsupported = strings("unsupported");
    if !unsupported.is_empty() {
        let _ = writeln!(
            o,
            "unsupported keys (not applied): {}",
            unsupported.join(", ")
        );
    }
    let warnings = strings("warnings");
    if !warnings.is_empty() {
        let _ = writeln!(o, "warnings:");
        for w in warnings {
            let _ = writeln!(o, "  - {w}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_failed_run() {
        let v = serde_json::json!({
            "schema": 1, "agent_version": "0.1.0", "result": "failure",
            "started_at": "2026-11-23T07:34:19Z", "finished_at": "2026-11-23T07:34:19Z",
            "duration_ms": 13, "instance_id": "1b5ea8f2", "hostname": "worker-0",
            "user_data_kind": "cloud-config",
            "phases": [
                {"name": "context", "start_ms": 0, "duration_ms": 0, "result": "ok"},
                {"name": "runcmd", "start_ms": 9, "duration_ms": 4, "result": "failed",
                 "detail": "runcmd script exited with exit status: 1 (see /var/log/x)"}
            ],
            "interfaces": [{"name": "ens4", "mac": "22:aa:bb:cc:dd:02", "class": "private",
                            "addresses": [{"address": "10.10.0.5", "prefix": 24}]}],
            "node_ip": "10.10.0.5", "unsupported": ["packages"], "warnings": ["w1"],
            "marker": "/run/cluster-api/bootstrap-success.complete", "marker_present": false,
            "error": {"step": "runcmd", "message": "runcmd script exited with exit status: 1"}
        });
        let t = render(&v);
        assert!(
            t.starts_with("last run: failure (agent 0.1.0, 13 ms)\n"),
            "{t}"
        );
        assert!(t.contains("error: step runcmd: runcmd script exited with exit status: 1\n"));
        assert!(
            t.contains("  runcmd   failed        4 ms  runcmd script exited"),
            "{t}"
        );
        assert!(
            t.contains("  ens4 22:aa:bb:cc:dd:02 private 10.10.0.5/24\n"),
            "{t}"
        );
        assert!(t.contains("marker: /run/cluster-api/bootstrap-success.complete (absent)"));
        assert!(t.contains("unsupported keys (not applied): packages\n"));
        assert!(t.contains("  - w1\n"));
    }

    #[test]
    fn renders_a_running_status_without_optional_fields() {
        let t = render(&serde_json::json!({"result": "running", "phases": []}));
        assert!(t.starts_with("last run: running"), "{t}");
        assert!(t.contains("instance: -\n"));
    }
}
