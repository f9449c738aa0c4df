//! System tools run by the agent's own steps (systemctl, blkid, sfdisk, mkfs.*, mount...).
//!
//! Always looked up on PATH, also under a test `--root`: the tests put stubs that record their
//! argv first on PATH. Their output is captured, never copied to the journal unfiltered.

use std::io::Write;
use std::process::{Command, Stdio};

pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The tool's last stderr line, shortened: enough to say why it failed in a status message.
    pub fn why(&self) -> String {
        let last = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let mut s: String = last.chars().take(200).collect();
        if s.len() < last.len() {
            s.push('…');
        }
        if s.is_empty() {
            String::new()
        } else {
            format!(": {s}")
        }
    }
}

/// Run `tool args...`, optionally feeding `stdin`. Err only if it could not be started.
pub fn run(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Out, String> {
    let mut c = Command::new(tool);
    c.args(args)
        .env("LANG", "C")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = c.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{tool} not found on PATH")
        } else {
            format!("cannot run {tool}: {e}")
        }
    })?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe: its exit status tells the story, not EPIPE.
        let _ = w.write_all(data);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {tool}: {e}"))?;
    Ok(Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run a tool that must succeed; the error names the command line (callers pass no secrets).
pub fn check(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Out, String> {
    let out = run(tool, args, stdin)?;
    if out.ok() {
        Ok(out)
    } else {
        Err(format!(
            "{tool} {} exited with {}{}",
            args.join(" "),
            out.code
                .map(|c| format!("status {c}"))
                .unwrap_or_else(|| "a signal".into()),
            out.why()
        ))
    }
}
