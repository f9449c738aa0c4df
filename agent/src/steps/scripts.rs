//! `bootcmd`, `runcmd` and a `#!` user-data script: cloud-init's shellify rules, and running the
//! result as one /bin/sh script whose output stays out of the journal.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_yaml::Value;

use super::Cx;
use crate::error::{Error, IoContext, IoOp, Result};
use crate::fsutil::{self, atomic_write, Owner, WriteMode};
use crate::paths::{OUTPUT_FILE, STATE_DIR};
use crate::yaml::{scalar_string, type_name, ConfigError};

/// One runcmd/bootcmd item, with cloud-init's shellify rules. Debug shows sizes only: the text
/// may carry the join token (`kubeadm join --token …`).
#[derive(Clone, PartialEq)]
pub enum Cmd {
    /// A string: written verbatim as one line.
    Line(String),
    /// A list: each word single-quoted.
    Words(Vec<String>),
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Line(l) => write!(f, "Line(<{} bytes>)", l.len()),
            Cmd::Words(w) => write!(f, "Words(<{} words>)", w.len()),
        }
    }
}

/// cloud-init's shellify input: a list whose items are strings, lists of words, or null.
pub fn parse_cmds(key: &str, v: &Value) -> Result<Vec<Cmd>, ConfigError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        // cloud-init's shellify raises TypeError for anything but a list (a bare string included).
        Value::Sequence(s) => s,
        other => {
            return Err(ConfigError::Key {
                key: key.into(),
                msg: format!("expected a list, got {}", type_name(other)),
            })
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::Null => {}
            Value::String(s) => out.push(Cmd::Line(s.clone())),
            Value::Sequence(words) => {
                let mut w = Vec::new();
                for word in words {
                    // cloud-init stringifies each word of a list item.
                    match word {
                        // Python's str() of the word, as cloud-init does.
                        Value::Null => w.push("None".to_string()),
                        Value::Bool(b) => w.push(if *b { "True" } else { "False" }.to_string()),
                        other => w.push(scalar_string(other).ok_or_else(|| ConfigError::Key {
                            key: format!("{key}[{i}]"),
                            msg: format!(
                                "list item words must be scalars, got {}",
                                type_name(other)
                            ),
                        })?),
                    }
                }
                out.push(Cmd::Words(w));
            }
            other => {
                return Err(ConfigError::Key {
                    key: format!("{key}[{i}]"),
                    msg: format!(
                        "unable to shellify {} (expected a string or a list)",
                        type_name(other)
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// Build the /bin/sh script cloud-init's `util.shellify` would build.
pub fn shellify(cmds: &[Cmd]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for c in cmds {
        match c {
            Cmd::Line(l) => s.push_str(l),
            Cmd::Words(w) => {
                let quoted: Vec<String> = w
                    .iter()
                    .map(|x| format!("'{}'", x.replace('\'', "'\\''")))
                    .collect();
                s.push_str(&quoted.join(" "));
            }
        }
        s.push('\n');
    }
    s
}

/// Log what runcmd holds, never its text. cloud-init logs no runcmd contents, and no redaction
/// could be proven complete (a tab after `--token`, `curl -u user:pw`, a quoted password's second
/// word, every line of a key in a heredoc…): the text goes only to the 0700 script file. `run`
/// logs the script's path, size, exit status and duration.
pub fn log_runcmd(cx: &mut Cx, cmds: &[Cmd]) {
    let lines: usize = cmds
        .iter()
        .map(|c| match c {
            Cmd::Line(l) => l.lines().count().max(1),
            Cmd::Words(_) => 1,
        })
        .sum();
    cx.info(&format!(
        "runcmd: {} command(s), {lines} line(s); their text is not logged",
        cmds.len()
    ));
}

/// Write `body` as a 0700 script under the state dir and run it with /bin/sh. Output goes to
/// the 0600 output log (it may contain secrets), never to the agent's log.
pub fn run(cx: &mut Cx, name: &str, body: &str, instance_id: &str) -> Result<()> {
    let mut body = body.to_string();
    if !cx.real_root {
        // Test roots: the data's absolute marker path is mapped under --root so that a test
        // never touches the host's /run (documented in docs/agent.md).
        let mapped = cx.path("/run/cluster-api").display().to_string();
        body = body.replace("/run/cluster-api", &mapped);
    }
    let path = cx.path(STATE_DIR).join("scripts").join(name);
    atomic_write(
        &path,
        body.as_bytes(),
        0o700,
        Owner::default(),
        WriteMode::Replace,
    )
    .at(IoOp::Write, &path)?;
    let out_path = cx.path(OUTPUT_FILE);
    let out = fsutil::open_private_append(&out_path).at(IoOp::Open, &out_path)?;
    let mut out2 = out.try_clone().at(IoOp::Open, &out_path)?;
    let _ = writeln!(out2, "===== {} {name} =====", fsutil::now_rfc3339());
    cx.info(&format!(
        "running {} with /bin/sh ({} bytes, output in {})",
        path.display(),
        body.len(),
        out_path.display()
    ));
    let t = Instant::now();
    let cwd = if cx.real_root {
        PathBuf::from("/")
    } else {
        cx.root.to_path_buf()
    };
    let status = Command::new("/bin/sh")
        .arg(&path)
        .current_dir(cwd)
        .env("INSTANCE_ID", instance_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(out2))
        .status()
        .map_err(|e| Error::Spawn {
            tool: format!("/bin/sh {}", path.display()),
            source: e,
        })?;
    cx.info(&format!(
        "{name} exited with {status} after {} ms",
        t.elapsed().as_millis()
    ));
    if status.success() {
        Ok(())
    } else {
        Err(Error::Script {
            name: name.into(),
            status,
            output: out_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::cloudconfig::parse;

    use super::*;

    #[test]
    fn shellify_like_cloud_init() {
        let cfg = parse(
            "runcmd:\n  - echo hi && true\n  - [ls, -l, \"it's\"]\n  - null\n  - [echo, 1]\n",
        )
        .unwrap();
        assert_eq!(
            shellify(&cfg.runcmd),
            "#!/bin/sh\necho hi && true\n'ls' '-l' 'it'\\''s'\n'echo' '1'\n"
        );
    }
}
