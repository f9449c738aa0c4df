//! The server context over a serial line ("cepko"), served per server on a unix socket (QEMU
//! connects to it as a client and exposes it as the guest's ttyS1) and optionally on a pty.
//!
//! Framing ([V cepko, cloud-init, docs]): request `"<\n" + KEY + "\n>"`; answer one line of JSON,
//! `\n`, then EOT (0x04). KEY empty → the whole context; `/meta/x`, `/global_context/x`, nested
//! paths like `/nics/0/mac`. A leaf string comes back without quotes (JSON-escaped inside), null
//! as an empty line; all non-ASCII is `\uXXXX`-escaped because cloud-init decodes ASCII.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// Where the sockets get a server's current context (the emulator's app). A trait so the
/// serial-line code depends on nothing but this seam (the app owns the [`ContextManager`]; a
/// dependency back on the app would be an import circle).
pub trait ContextSource: Send + Sync + 'static {
    /// The context JSON of a server; `None` once it is gone.
    fn server_context(&self, uuid: &str) -> Option<Value>;
    /// An injected fault answering this request instead of the context (the early-boot "not
    /// ready" reply); counted by the source.
    fn serial_fault(&self, _uuid: &str) -> Option<crate::faults::SerialFault> {
        None
    }
}

/// Find one complete request in `buf`; returns (key, bytes consumed). Garbage before `<` is
/// skipped (guests flush stale input; a stray byte must not wedge the line).
pub fn parse_request(buf: &[u8]) -> Option<(String, usize)> {
    let mut start = 0;
    loop {
        let lt = buf[start..].iter().position(|&b| b == b'<')? + start;
        // [V docs server_context.rst] "The newline can be either CRLF or just LF"
        let after = if buf.get(lt + 1) == Some(&b'\n') {
            lt + 2
        } else if buf.get(lt + 1) == Some(&b'\r') && buf.get(lt + 2) == Some(&b'\n') {
            lt + 3
        } else if lt + 2 >= buf.len() {
            // maybe incomplete ("<" or "<\r" at the end): wait for more bytes
            return None;
        } else {
            start = lt + 1;
            continue;
        };
        let body = buf.get(after..)?;
        // the key ends at "\n>" (a preceding "\r" is trimmed with the key)
        let end = body.windows(2).position(|w| w == b"\n>")?;
        let key = String::from_utf8_lossy(&body[..end]).trim().to_string();
        return Some((key, after + end + 2));
    }
}

/// Select `key` from the context: "" → all; "/a/b/0" → nested (array indices as numbers).
pub fn select<'a>(ctx: &'a Value, key: &str) -> Option<&'a Value> {
    let mut cur = ctx;
    for seg in key.split('/').filter(|s| !s.is_empty()) {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// JSON text with every non-ASCII character escaped as `\uXXXX` (UTF-16).
pub fn ascii_json(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        }
    }
    out
}

/// The answer bytes for `key` (without a context: the server is gone → empty answer).
pub fn answer(ctx: Option<&Value>, key: &str) -> Vec<u8> {
    let line = match ctx.and_then(|c| select(c, key)) {
        None | Some(Value::Null) => String::new(),
        // [V docs] leaf strings without quotes, control characters backslash-escaped
        // [D] i.e. the JSON string encoding minus the surrounding quotes
        Some(v @ Value::String(_)) => {
            let j = ascii_json(v);
            j[1..j.len() - 1].to_string()
        }
        Some(v) => ascii_json(v),
    };
    framed(line)
}

/// One answer on the wire: the line, `\n`, EOT.
fn framed(line: String) -> Vec<u8> {
    let mut out = line.into_bytes();
    out.extend_from_slice(b"\n\x04");
    out
}

/// Serve cepko on one byte stream until EOF.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    source: Weak<dyn ContextSource>,
    uuid: String,
    mut stream: S,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((key, used)) = parse_request(&buf) {
            buf.drain(..used);
            let reply = {
                let Some(a) = source.upgrade() else { return };
                match a.serial_fault(&uuid) {
                    Some(crate::faults::SerialFault::Silent) => continue,
                    Some(crate::faults::SerialFault::Reply(line)) => framed(line),
                    None => answer(a.server_context(&uuid).as_ref(), &key),
                }
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
        }
        // bound memory if a peer sends garbage without ever completing a request
        if buf.len() > 64 * 1024 {
            let keep = buf.len() - 1024;
            buf.drain(..keep);
        }
    }
}

struct Entry {
    task: JoinHandle<()>,
    pty_task: Option<JoinHandle<()>>,
    pty_path: Option<PathBuf>,
}

/// The per-server sockets (and ptys) of one emulator.
pub struct ContextManager {
    pub dir: PathBuf,
    pub pty: bool,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ContextManager {
    pub fn new(dir: PathBuf, pty: bool) -> ContextManager {
        ContextManager {
            dir,
            pty,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn socket_path(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.sock"))
    }

    pub fn pty_path(&self, uuid: &str) -> Option<PathBuf> {
        self.entries.lock().ok()?.get(uuid)?.pty_path.clone()
    }

    /// Listen on `<dir>/<uuid>.sock` (replacing a stale file). Must run inside a tokio runtime.
    pub fn open<S: ContextSource>(&self, source: &Arc<S>, uuid: &str) {
        let path = self.socket_path(uuid);
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot listen on the server-context socket");
                return;
            }
        };
        // two steps: downgrade the concrete Arc, then unsize (inference would ask for Arc<dyn ..>)
        let weak: Weak<S> = Arc::downgrade(source);
        let weak: Weak<dyn ContextSource> = weak;
        let u = uuid.to_string();
        let pty_source = weak.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_stream(weak.clone(), u.clone(), stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "context socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let (pty_task, pty_path) = if self.pty {
            match crate::pty::open() {
                Ok((pty, p)) => {
                    let u = uuid.to_string();
                    let t = tokio::spawn(async move {
                        match pty.into_stream() {
                            Ok(stream) => serve_stream(pty_source, u, stream).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot register the pty with tokio")
                            }
                        }
                    });
                    (Some(t), Some(p))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a pty for the server context");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        if let Ok(mut m) = self.entries.lock() {
            if let Some(old) = m.insert(
                uuid.to_string(),
                Entry {
                    task,
                    pty_task,
                    pty_path,
                },
            ) {
                old.task.abort();
                if let Some(t) = old.pty_task {
                    t.abort();
                }
            }
        }
    }

    pub fn close(&self, uuid: &str) {
        if let Ok(mut m) = self.entries.lock() {
            if let Some(e) = m.remove(uuid) {
                e.task.abort();
                if let Some(t) = e.pty_task {
                    t.abort();
                }
            }
        }
        let _ = std::fs::remove_file(self.socket_path(uuid));
    }

    pub fn close_all(&self) {
        let uuids: Vec<String> = self
            .entries
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for u in uuids {
            self.close(&u);
        }
    }

    pub fn ptys(&self) -> HashMap<String, PathBuf> {
        self.entries
            .lock()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, e)| e.pty_path.clone().map(|p| (k.clone(), p)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn default_dir() -> PathBuf {
    let r: u32 = rand::random();
    std::env::temp_dir().join(format!("cloudsim-{}-{r:08x}", std::process::id()))
}

pub fn ensure_dir(p: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(p)
}

/// A fresh owner-only directory (mode 0700), created exclusively: the default context directory
/// holds the context sockets (a server's context has its VNC password and meta) and the admin
/// socket, so other local users must not reach them, and a directory someone planted at the
/// name beforehand is refused rather than used [issue 21 item 9].
pub fn create_private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_requests_and_skips_garbage() {
        assert_eq!(parse_request(b"<\n\n>"), Some((String::new(), 4)));
        assert_eq!(
            parse_request(b"xx<\n/name\n>rest"),
            Some(("/name".into(), 11))
        );
        assert_eq!(parse_request(b"<\n/na"), None);
        assert_eq!(parse_request(b"<x<\n/a\n>"), Some(("/a".into(), 8)));
        assert_eq!(parse_request(b"<\r\n\r\n>"), Some((String::new(), 6)));
        assert_eq!(parse_request(b"<\r\nname\r\n>"), Some(("name".into(), 10)));
        assert_eq!(parse_request(b"<"), None);
        assert_eq!(parse_request(b"<\r"), None);
    }

    #[test]
    fn answers_leafs_without_quotes_and_null_empty() {
        let ctx = json!({"name": "n\u{e9}\"x", "meta": {"a": "b"}, "vnc": null, "nics": [{"mac": "22:aa"}], "cpu": 1000});
        assert_eq!(answer(Some(&ctx), "/name"), b"n\\u00e9\\\"x\n\x04".to_vec());
        assert_eq!(answer(Some(&ctx), "/vnc"), b"\n\x04".to_vec());
        assert_eq!(answer(Some(&ctx), "/nics/0/mac"), b"22:aa\n\x04".to_vec());
        assert_eq!(
            answer(Some(&ctx), "/meta/"),
            b"{\"a\":\"b\"}\n\x04".to_vec()
        );
        assert_eq!(answer(Some(&ctx), "/cpu"), b"1000\n\x04".to_vec());
        assert_eq!(answer(Some(&ctx), "/missing"), b"\n\x04".to_vec());
    }
}
