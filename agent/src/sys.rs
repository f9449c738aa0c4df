//! System tools run by the agent's own steps (systemctl, blkid, sfdisk, mkfs.*, mount...).
//!
//! Always looked up on PATH, also under a test `--root`: the tests put stubs that record their
//! argv first on PATH. Their output is captured, never copied to the journal unfiltered.

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

use crate::error::{Error, Result};

pub struct Out {
    pub status: ExitStatus,
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
pub fn run(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Out> {
    run_env(tool, args, stdin, &[])
}

fn run_env(tool: &str, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Result<Out> {
    let mut child = spawn_env(tool, args, stdin.is_some(), env)?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe: its exit status tells the story, not EPIPE.
        let _ = w.write_all(data);
    }
    wait(tool, child)
}

/// Start `tool args...` (stdin null, output captured) without waiting: [`wait`] collects it.
pub fn spawn(tool: &str, args: &[&str]) -> Result<std::process::Child> {
    spawn_env(tool, args, false, &[])
}

/// Wait for a [`spawn`]ed tool. Err only if waiting failed.
pub fn wait(tool: &str, child: std::process::Child) -> Result<Out> {
    let out = child.wait_with_output().map_err(|e| Error::Wait {
        tool: tool.into(),
        source: e,
    })?;
    Ok(Out {
        status: out.status,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn spawn_env(
    tool: &str,
    args: &[&str],
    stdin: bool,
    env: &[(&str, &str)],
) -> Result<std::process::Child> {
    let mut c = Command::new(tool);
    c.args(args)
        .env("LANG", "C")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    c.spawn().map_err(|e| {
        let tool = tool.to_string();
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { tool }
        } else {
            Error::Spawn { tool, source: e }
        }
    })
}

/// Run a tool that must succeed; the error names the command line (callers pass no secrets).
pub fn check(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Out> {
    let out = run(tool, args, stdin)?;
    if out.ok() {
        Ok(out)
    } else {
        Err(out.failed(tool, args))
    }
}

/// [`check`] with extra environment variables (apt-get's `DEBIAN_FRONTEND`).
pub fn check_env(tool: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Out> {
    let out = run_env(tool, args, None, env)?;
    if out.ok() {
        Ok(out)
    } else {
        Err(out.failed(tool, args))
    }
}

impl Out {
    /// The step error for this run of `tool args...`.
    pub fn failed(&self, tool: &str, args: &[&str]) -> Error {
        Error::Failed {
            command: command_line(tool, args),
            status: self.status,
            detail: self.why(),
        }
    }
}

pub fn command_line(tool: &str, args: &[&str]) -> String {
    let mut s = tool.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Run a system tool with inherited stdout/stderr (useradd, swapoff...: their few lines belong in
/// the journal) and fail the step on a non-zero exit.
pub fn status(tool: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(tool)
        .args(args)
        .status()
        .map_err(|e| Error::Spawn {
            tool: tool.into(),
            source: e,
        })?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            command: command_line(tool, args),
            status: st,
            detail: String::new(),
        })
    }
}
