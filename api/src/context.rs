//! Serial-port server-context client (CloudSigma's "cepko" protocol).
//!
//! The hypervisor answers on the guest's second serial port (`/dev/ttyS1`): the guest writes
//! `"<\n" + KEY + "\n>"` and receives one line of JSON (or a bare leaf string), `\n`, then EOT
//! (`0x04`). We follow cloud-init's client: read until `\n`, strip `\x04`/`\n`/`\r` on both
//! ends, require ASCII, parse JSON else keep the bare string.
//!
//! Robustness rules (all learned from the field, see docs/agent.md):
//! - raw mode without echo, otherwise a 16550 tty in cooked mode echoes our request back to the
//!   host and mangles `\r`/`\n`;
//! - flush stale input before each request (a previous, abandoned reply may still be queued);
//! - every read has a deadline (poll), and the whole exchange is retried with backoff until an
//!   overall deadline, because the port may not answer early in boot.
//!
//! No async runtime here: the node agent links this module statically and must stay small.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{
    self, ControlFlags, FlushArg, LocalFlags, SetArg, SpecialCharacterIndices,
};

use crate::models::ServerContext;

/// The default device of the server context.
pub const DEFAULT_PATH: &str = "/dev/ttyS1";

/// Replies are one line; anything longer than this is not a server context (the real one is a few KiB).
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// Errors of the context client. Every variant names the device so the message says where to look.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Nothing at all came back before the deadline (host not answering, wrong port).
    #[error("no answer from the server context on {path} after {waited:?} (is this a CloudSigma VM with the context on that port? try --context-file for debugging)")]
    NoAnswer { path: PathBuf, waited: Duration },
    /// The whole-context request was answered, until the deadline, with a line that is not JSON
    /// at all: what a host sends early in boot before the context is ready (the emulator's
    /// `context not ready` fault; cloud-init's cepko keeps such a line as a string and its
    /// datasource gives up). Retried until `--timeout`; this is the error after that.
    #[error("the server context on {path} was not ready: {attempts} request(s) in {waited:?} were answered with a status line instead of the context (last: {last:?}); is the VM still booting on the host? raise --timeout")]
    NotReady {
        path: PathBuf,
        waited: Duration,
        attempts: u32,
        /// The status line, escaped, at most 32 bytes (it is not the context).
        last: String,
    },
    /// Something came back but it is not a context reply (non-ASCII bytes, wrong JSON shape...).
    #[error("unexpected reply from the server context on {path} for key {key:?}: {reason} (first bytes: {sample:?})")]
    Garbage {
        path: PathBuf,
        key: String,
        reason: String,
        sample: String,
    },
    /// A reply started but did not end (no newline before the deadline, or cut JSON).
    #[error("truncated reply from the server context on {path} for key {key:?}: got {got} bytes without a complete line/JSON document")]
    Truncated {
        path: PathBuf,
        key: String,
        got: usize,
    },
    /// The device could not be opened/configured/read.
    #[error("server context device {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The whole-context JSON is well formed but does not match the expected shape. `field` is
    /// the path of the offending value (`meta.cloudinit-dsmode`, `nics[0].mac`), `problem` what
    /// is wrong with it; neither ever holds the value itself (the context carries the user data,
    /// the VNC password and keys).
    #[error(
        "server context on {path} does not look like a CloudSigma context: {field}: {problem}"
    )]
    Decode {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// How long to try.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Give up (returning the last error) after this long in total.
    pub deadline: Duration,
    /// Upper bound for one request/reply exchange.
    pub attempt_timeout: Duration,
    /// First pause between attempts; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        // cloud-init uses 60 s read timeout; we retry within that budget instead of waiting once.
        ReadOptions {
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl ReadOptions {
    pub fn with_deadline(deadline: Duration) -> Self {
        ReadOptions {
            deadline,
            attempt_timeout: deadline.min(Duration::from_secs(10)),
            ..Default::default()
        }
    }
}

/// Read the whole server context, retrying until `deadline`.
pub fn read_context(
    path: impl AsRef<Path>,
    deadline: Duration,
) -> Result<ServerContext, ContextError> {
    read_context_with(path.as_ref(), ReadOptions::with_deadline(deadline))
}

/// Read the whole context with explicit options.
pub fn read_context_with(path: &Path, opts: ReadOptions) -> Result<ServerContext, ContextError> {
    let value = retry(path, "", opts, |v| {
        if v.is_object() {
            Ok(())
        } else {
            Err(format!(
                "expected a JSON object for the whole context, got {}",
                kind(v)
            ))
        }
    })?;
    parse_context_value(path, value)
}

/// Read one key (e.g. `/meta/cloudinit-user-data`, `name`, `/nics/0/mac`) with the default options.
/// A leaf comes back as a JSON string (the protocol sends leaves unquoted).
pub fn read_key(path: impl AsRef<Path>, key: &str) -> Result<serde_json::Value, ContextError> {
    read_key_with(path.as_ref(), key, ReadOptions::default())
}

pub fn read_key_with(
    path: &Path,
    key: &str,
    opts: ReadOptions,
) -> Result<serde_json::Value, ContextError> {
    retry(path, key, opts, |_| Ok(()))
}

/// Parse a whole-context JSON document (from the serial port or a `--context-file`).
pub fn parse_context(path: &Path, bytes: &[u8]) -> Result<ServerContext, ContextError> {
    let text = strip(bytes);
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
        if e.is_eof() {
            ContextError::Truncated {
                path: path.to_owned(),
                key: String::new(),
                got: text.len(),
            }
        } else {
            ContextError::Decode {
                path: path.to_owned(),
                field: "(document)".into(),
                problem: scrub(&e),
            }
        }
    })?;
    parse_context_value(path, value)
}

fn parse_context_value(
    path: &Path,
    value: serde_json::Value,
) -> Result<ServerContext, ContextError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ContextError::Decode {
            path: path.to_owned(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            problem: scrub(e.inner()),
        }
    })
}

/// serde's message without the value it quotes: `invalid type: string "hunter2", expected u64`
/// becomes `invalid type: a string, expected u64`. Only the shapes serde itself words are kept
/// (their expected-part comes from our types, never from the data); any other message (a
/// type's own `custom` error) is replaced by a generic one. The position stays: it points at
/// the value without showing it.
pub fn scrub(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let (body, at) = match msg.rfind(" at line ") {
        Some(i) => (&msg[..i], &msg[i..]),
        None => (msg.as_str(), ""),
    };
    let expected = |rest: &str| {
        rest.rfind(", expected ")
            .map(|i| rest[i..].to_string())
            .unwrap_or_default()
    };
    let scrubbed = if let Some(rest) = body.strip_prefix("invalid type: ") {
        // The unexpected kind is the first word(s) before its quoted value.
        let kind: String = rest
            .split([',', '`', '"'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let kind = if kind.is_empty() {
            "value".into()
        } else {
            kind
        };
        format!("invalid type: {kind}{}", expected(rest))
    } else if let Some(rest) = body.strip_prefix("invalid value: ") {
        format!("invalid value{}", expected(rest))
    } else if body.starts_with("invalid length ") {
        body.to_string()
    } else if let Some(rest) = body.strip_prefix("unknown variant ") {
        format!("unknown variant{}", expected(rest))
    } else if body.starts_with("missing field `")
        || body.starts_with("unknown field `")
        || body.starts_with("duplicate field `")
    {
        // A field name is ours (or a key of the data), not a value.
        body.to_string()
    } else if e.is_syntax() {
        // serde_json's syntax messages name the token class, never the text.
        body.to_string()
    } else {
        "does not match the expected shape".to_string()
    };
    format!("{scrubbed}{at}")
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a bare string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn retry(
    path: &Path,
    key: &str,
    opts: ReadOptions,
    check: impl Fn(&serde_json::Value) -> Result<(), String>,
) -> Result<serde_json::Value, ContextError> {
    let start = Instant::now();
    let mut backoff = opts.initial_backoff;
    let mut not_ready = 0u32;
    let mut last_not_ready = String::new();
    loop {
        let remaining = opts.deadline.saturating_sub(start.elapsed());
        let attempt = remaining
            .min(opts.attempt_timeout)
            .max(Duration::from_millis(10));
        let result = query_once(path, key, attempt).and_then(|v| {
            // Early in boot the host answers the whole-context request with a status line
            // (not JSON) until the context is ready: expected, retried, counted.
            if let (true, serde_json::Value::String(line)) = (key.is_empty(), &v) {
                not_ready += 1;
                last_not_ready = sample("", line.as_bytes());
                return Err(ContextError::NotReady {
                    path: path.to_owned(),
                    waited: start.elapsed(),
                    attempts: not_ready,
                    last: last_not_ready.clone(),
                });
            }
            check(&v)
                .map(|()| v.clone())
                .map_err(|reason| ContextError::Garbage {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    reason,
                    sample: sample(key, v.to_string().as_bytes()),
                })
        });
        match result {
            Ok(v) => return Ok(v),
            Err(e) => {
                let elapsed = start.elapsed();
                if elapsed + backoff >= opts.deadline {
                    // Report the total time waited, not the last attempt's.
                    return Err(match e {
                        // The host did answer "not ready" earlier: that is the story, not the
                        // silence of the last (possibly short) attempt.
                        ContextError::NoAnswer { path, .. } if not_ready > 0 => {
                            ContextError::NotReady {
                                path,
                                waited: elapsed,
                                attempts: not_ready,
                                last: last_not_ready.clone(),
                            }
                        }
                        ContextError::NoAnswer { path, .. } => ContextError::NoAnswer {
                            path,
                            waited: elapsed,
                        },
                        ContextError::NotReady {
                            path,
                            attempts,
                            last,
                            ..
                        } => ContextError::NotReady {
                            path,
                            waited: elapsed,
                            attempts,
                            last,
                        },
                        other => other,
                    });
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

/// One request/reply exchange on a freshly opened device.
pub fn query_once(
    path: &Path,
    key: &str,
    timeout: Duration,
) -> Result<serde_json::Value, ContextError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| ContextError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut dev = open_device(path).map_err(io_err("open"))?;
    set_raw(&dev).map_err(io_err("set raw mode"))?;
    flush_stale(&mut dev).map_err(io_err("flush stale input"))?;

    let request = format!("<\n{key}\n>");
    write_all_deadline(&mut dev, request.as_bytes(), deadline).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            ContextError::NoAnswer {
                path: path.to_owned(),
                waited: started.elapsed(),
            }
        } else {
            ContextError::Io {
                path: path.to_owned(),
                op: "write request",
                source: e,
            }
        }
    })?;

    let line = read_reply_line(&mut dev, path, key, started, deadline)?;
    decode_reply(path, key, &line)
}

/// Read the reply up to its newline (the newline and anything after it dropped), skipping
/// stale EOT bytes before it; by `deadline`, else `NoAnswer` (nothing came) or `Truncated`.
fn read_reply_line(
    dev: &mut File,
    path: &Path,
    key: &str,
    started: Instant,
    deadline: Instant,
) -> Result<Vec<u8>, ContextError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| ContextError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // A stale EOT (left over from a previous reply) may precede the answer: drop it.
        while buf.first() == Some(&0x04) {
            buf.remove(0);
        }
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(pos);
            return Ok(buf);
        }
        if buf.len() > MAX_REPLY {
            return Err(ContextError::Garbage {
                path: path.to_owned(),
                key: key.to_owned(),
                reason: format!("reply longer than {MAX_REPLY} bytes without a newline"),
                sample: sample(key, &buf),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(if buf.is_empty() {
                ContextError::NoAnswer {
                    path: path.to_owned(),
                    waited: started.elapsed(),
                }
            } else {
                ContextError::Truncated {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    got: buf.len(),
                }
            });
        }
        if !wait_readable(dev, deadline - now).map_err(io_err("poll"))? {
            continue;
        }
        match dev.read(&mut chunk) {
            Ok(0) => {
                // EOF / hangup (pty peer closed): nothing more will come. Avoid a busy loop.
                std::thread::sleep(
                    Duration::from_millis(20)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            // EIO on a pty master that went away: treat like no data.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                std::thread::sleep(
                    Duration::from_millis(20)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
            Err(e) => return Err(io_err("read reply")(e)),
        }
    }
}

/// Decode one reply line (exposed for fuzzing and tests).
pub fn decode_reply(path: &Path, key: &str, raw: &[u8]) -> Result<serde_json::Value, ContextError> {
    let text = strip(raw);
    if !text.is_ascii() {
        return Err(ContextError::Garbage {
            path: path.to_owned(),
            key: key.to_owned(),
            reason: "reply is not ASCII (the protocol escapes non-ASCII in JSON)".into(),
            sample: sample(key, text),
        });
    }
    if text.iter().any(|&b| b < 0x20 && b != b'\t') {
        return Err(ContextError::Garbage {
            path: path.to_owned(),
            key: key.to_owned(),
            reason: "reply contains control characters (the protocol escapes them)".into(),
            sample: sample(key, text),
        });
    }
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(v) => Ok(v),
        Err(e) => {
            let looks_json = matches!(text.first(), Some(b'{') | Some(b'['));
            if looks_json && e.is_eof() {
                Err(ContextError::Truncated {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    got: text.len(),
                })
            } else if looks_json {
                Err(ContextError::Garbage {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    reason: format!("invalid JSON: {e}"),
                    sample: sample(key, text),
                })
            } else {
                // Leaves come back unquoted: keep the bare string, as cloud-init does. ASCII checked.
                Ok(serde_json::Value::String(
                    String::from_utf8_lossy(text).into_owned(),
                ))
            }
        }
    }
}

fn strip(mut s: &[u8]) -> &[u8] {
    let junk = |b: &u8| matches!(b, 0x04 | b'\n' | b'\r');
    while s.first().is_some_and(junk) {
        s = &s[1..];
    }
    while s.last().is_some_and(junk) {
        s = &s[..s.len() - 1];
    }
    s
}

/// What an error shows of a bad reply: a short escaped prefix (at most 32 bytes) of a status
/// line or line noise answering the whole-context request — never of anything that may be
/// the context or one of its values (JSON, or any reply to a single-key request): those may hold
/// the user data, the VNC password or keys, so only their size is shown.
fn sample(key: &str, bytes: &[u8]) -> String {
    let trimmed = bytes.trim_ascii_start();
    if !key.is_empty() || matches!(trimmed.first(), Some(b'{' | b'[' | b'"')) {
        return format!("<{} bytes, not shown>", bytes.len());
    }
    bytes
        .iter()
        .take(32)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Open the context device. A serial port (the node's /dev/ttyS1, a pty in tests) is opened
/// `O_NOCTTY` (never become our controlling terminal: we may run as a session leader under
/// systemd) and `O_NONBLOCK` (reads are driven by poll with a deadline). A unix socket (the
/// emulator's per-server context socket, which QEMU maps to the guest's ttyS1) is connected, so
/// the agent can be tested against the emulator without a VM.
fn open_device(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
    {
        let s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_nonblocking(true)?;
        return Ok(File::from(std::os::fd::OwnedFd::from(s)));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(path)
}

fn set_raw(dev: &File) -> io::Result<()> {
    let mut t = match termios::tcgetattr(dev.as_fd()) {
        Ok(t) => t,
        // Not a tty (the emulator's unix socket): nothing to configure.
        Err(Errno::ENOTTY) | Err(Errno::EINVAL) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    termios::cfmakeraw(&mut t);
    // cfmakeraw already clears ECHO; be explicit because echo is the failure that matters most.
    t.local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ICANON | LocalFlags::ISIG);
    // CLOCAL: ignore modem lines, so a 16550 port without carrier (DCD) never blocks or hangs
    // up on us; CREAD: enable the receiver.
    t.control_flags
        .insert(ControlFlags::CLOCAL | ControlFlags::CREAD);
    t.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(dev.as_fd(), SetArg::TCSANOW, &t)?;
    Ok(())
}

fn flush_stale(dev: &mut File) -> io::Result<()> {
    match termios::tcflush(dev.as_fd(), FlushArg::TCIOFLUSH) {
        Ok(()) | Err(Errno::ENOTTY) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    // Also drain whatever is readable right now (bytes that raced with the flush).
    let mut junk = [0u8; 4096];
    loop {
        match dev.read(&mut junk) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn wait_readable(dev: &File, timeout: Duration) -> io::Result<bool> {
    wait(dev, PollFlags::POLLIN, timeout)
}

fn wait(dev: &File, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(dev.as_fd(), flags)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn write_all_deadline(dev: &mut File, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        match dev.write(data) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "device accepted no bytes",
                ))
            }
            Ok(n) => data = &data[n..],
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
                }
                wait(dev, PollFlags::POLLOUT, deadline - now)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_name_the_field_never_the_value() {
        let p = Path::new("/dev/x");
        let secret = "hunter2-very-secret";
        let cases = [
            // A meta value that is not a string.
            (
                format!(r#"{{"uuid":"u","name":"n","meta":{{"ssh_public_key":["{secret}"]}}}}"#),
                "meta.ssh_public_key",
            ),
            // A NIC field of the wrong type.
            (
                format!(r#"{{"uuid":"u","name":"n","nics":[{{"mac":{{"x":"{secret}"}}}}]}}"#),
                "nics[0].mac",
            ),
            // The uuid as a string of the wrong kind.
            (format!(r#"{{"uuid":["{secret}"],"name":"n"}}"#), "uuid"),
            (
                format!(r#"{{"uuid":"u","name":"n","cpu":"{secret}"}}"#),
                "cpu",
            ),
        ];
        for (doc, field) in cases {
            let e = parse_context(p, doc.as_bytes()).unwrap_err();
            let msg = e.to_string();
            assert!(!msg.contains(secret), "{msg}");
            match &e {
                ContextError::Decode {
                    field: f, problem, ..
                } => {
                    assert_eq!(f, field, "{msg}");
                    assert!(problem.starts_with("invalid type: "), "{msg}");
                }
                other => panic!("{other:?}"),
            }
        }
        let e = parse_context(p, br#"{"name":"n"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `uuid`"), "{e}");
        // A syntax error keeps serde_json's words and position, and shows no text.
        let e =
            parse_context(p, format!(r#"{{"uuid": "{secret}" "name"}}"#).as_bytes()).unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn bad_replies_never_show_context_values() {
        let p = Path::new("/dev/x");
        let secret = "pw-hunter2";
        // Invalid JSON that is (the start of) a context.
        let e = decode_reply(
            p,
            "",
            format!(r#"{{"vnc_password":"{secret}" x}}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("bytes, not shown"), "{e}");
        // A single key's value with a control character.
        let e = decode_reply(p, "/meta/password", format!("{secret}\x01").as_bytes()).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // Line noise on the whole-context request is shown (escaped, 32 bytes at most).
        let e = decode_reply(p, "", b"\xff\xfegarbage").unwrap_err();
        assert!(e.to_string().contains("xfegarbage"), "{e}");
    }

    #[test]
    fn decode_strips_and_parses() {
        let p = Path::new("/dev/x");
        assert_eq!(
            decode_reply(p, "", b"\x04{\"a\":1}\n\x04").unwrap(),
            serde_json::json!({"a":1})
        );
        assert_eq!(
            decode_reply(p, "name", b"my-node").unwrap(),
            serde_json::json!("my-node")
        );
        assert_eq!(decode_reply(p, "x", b"").unwrap(), serde_json::json!(""));
        assert!(matches!(
            decode_reply(p, "", b"{\"a\":"),
            Err(ContextError::Truncated { .. })
        ));
        assert!(matches!(
            decode_reply(p, "", b"{\"a\" x}"),
            Err(ContextError::Garbage { .. })
        ));
        assert!(matches!(
            decode_reply(p, "", "caf\u{e9}".as_bytes()),
            Err(ContextError::Garbage { .. })
        ));
    }
}
