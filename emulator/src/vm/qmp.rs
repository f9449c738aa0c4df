//! A minimal QMP client: one connection per request, the greeting, `qmp_capabilities`, then the
//! given commands in order, each waited for; asynchronous events in between are skipped, except
//! that a session may wait for `DEVICE_DELETED` of a device before going on.
//!
//! Drive hot-plug follows QEMU's documented sequences (qemu `docs/system/…` and the QAPI schema,
//! `qapi/block-core.json` `blockdev-add`/`blockdev-del`, `qapi/qdev.json`
//! `device_add`/`device_del`/`DEVICE_DELETED`):
//! attach = `blockdev-add` (a qcow2 node over the image file) + `device_add` (virtio-blk-pci on
//! that node); detach = `device_del`, wait for the guest to release it (`DEVICE_DELETED`), then
//! `blockdev-del` of the node — QEMU refuses to delete a node a device still uses. A drive given
//! on the command line (`-drive if=none`) is removed together with its device, so only the
//! hot-plugged ones need `blockdev-del`.

use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// One step of a QMP session.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `{"execute": ..., "arguments": ...}`; an `error` answer fails the session.
    Execute(Value),
    /// Wait for `DEVICE_DELETED` with this device id (sent after the guest released it).
    DeviceDeleted(String),
}

fn execute(cmd: &str, arguments: Value) -> Step {
    Step::Execute(json!({"execute": cmd, "arguments": arguments}))
}

/// Steps that hot-plug the qcow2 image `path` as a virtio disk: block node `node`, device `dev`.
pub fn attach_steps(path: &Path, node: &str, dev: &str) -> Vec<Step> {
    vec![
        execute(
            "blockdev-add",
            json!({
                "driver": "qcow2",
                "node-name": node,
                "discard": "unmap",
                "file": {"driver": "file", "filename": path.to_string_lossy()},
            }),
        ),
        execute(
            "device_add",
            json!({"driver": "virtio-blk-pci", "id": dev, "drive": node}),
        ),
    ]
}

/// Steps that unplug device `dev`, and then delete its block node when it was hot-plugged
/// (`node`); a command-line drive goes away with its device.
pub fn detach_steps(dev: &str, node: Option<&str>) -> Vec<Step> {
    let mut s = vec![
        execute("device_del", json!({"id": dev})),
        Step::DeviceDeleted(dev.to_string()),
    ];
    if let Some(n) = node {
        s.push(execute("blockdev-del", json!({"node-name": n})));
    }
    s
}

/// A plain command without arguments (e.g. `system_powerdown`).
pub fn command(cmd: &str) -> Vec<Step> {
    vec![Step::Execute(json!({"execute": cmd}))]
}

/// What went wrong on a QMP connection: QEMU's refusal of a command is told apart from the
/// connection failing.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// QEMU answered `command` with `{"error": …}` (`error`: that object).
    #[error("QMP {command} failed: {error}")]
    Refused { command: String, error: Value },
    #[error("QMP connect {}: {source}", .sock.display())]
    Connect {
        sock: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("QMP {what}: {source}")]
    Io {
        /// `read` or `write <command>`
        what: String,
        source: std::io::Error,
    },
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP sent something that is not JSON ({error}): {line}")]
    NotJson {
        error: serde_json::Error,
        line: String,
    },
    #[error("not a QMP greeting: {0}")]
    NotGreeting(Value),
    #[error("QMP on {} did not finish within {timeout:?}", .sock.display())]
    Timeout {
        sock: std::path::PathBuf,
        timeout: std::time::Duration,
    },
}

/// Runs `steps` on a QMP connection (greeting and `qmp_capabilities` first) and answers the
/// last command's `return` value. Errors name the command and QEMU's answer.
pub async fn session<R, W>(r: R, mut w: W, steps: &[Step]) -> Result<Value, QmpError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = r.lines();
    let greeting = next(&mut lines).await?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::NotGreeting(greeting));
    }
    let caps = Step::Execute(json!({"execute": "qmp_capabilities"}));
    // DEVICE_DELETED may arrive while another command's answer is awaited
    let mut deleted: Vec<String> = Vec::new();
    let mut last = Value::Null;
    for step in std::iter::once(&caps).chain(steps) {
        match step {
            Step::Execute(cmd) => {
                let name = cmd["execute"].as_str().unwrap_or("?").to_string();
                w.write_all(format!("{cmd}\n").as_bytes())
                    .await
                    .map_err(|source| QmpError::Io {
                        what: format!("write {name}"),
                        source,
                    })?;
                loop {
                    let msg = next(&mut lines).await?;
                    if let Some(r) = msg.get("return") {
                        last = r.clone();
                        break;
                    }
                    if let Some(e) = msg.get("error") {
                        return Err(QmpError::Refused {
                            command: name,
                            error: e.clone(),
                        });
                    }
                    note_deleted(&msg, &mut deleted);
                }
            }
            Step::DeviceDeleted(dev) => {
                while !deleted.contains(dev) {
                    let msg = next(&mut lines).await?;
                    note_deleted(&msg, &mut deleted);
                }
            }
        }
    }
    Ok(last)
}

fn note_deleted(msg: &Value, deleted: &mut Vec<String>) {
    if msg["event"] == "DEVICE_DELETED" {
        if let Some(d) = msg["data"]["device"].as_str() {
            deleted.push(d.to_string());
        }
    }
}

async fn next<R: AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> Result<Value, QmpError> {
    let l = lines
        .next_line()
        .await
        .map_err(|source| QmpError::Io {
            what: "read".into(),
            source,
        })?
        .ok_or(QmpError::Closed)?;
    serde_json::from_str(&l).map_err(|error| QmpError::NotJson { error, line: l })
}

/// Connects to the QMP socket `sock` and runs `steps` within `timeout`.
pub async fn run(
    sock: &Path,
    steps: &[Step],
    timeout: std::time::Duration,
) -> Result<Value, QmpError> {
    let fut = async {
        let s = tokio::net::UnixStream::connect(sock)
            .await
            .map_err(|source| QmpError::Connect {
                sock: sock.to_path_buf(),
                source,
            })?;
        let (r, w) = s.into_split();
        session(BufReader::new(r), w, steps).await
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| QmpError::Timeout {
            sock: sock.to_path_buf(),
            timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A fake QEMU: answers every command with `return` (or `error` for `fail`), emits
    /// `DEVICE_DELETED` after a `device_del` (preceded by an unrelated event), and returns the
    /// commands it received.
    async fn fake_qemu(sock: tokio::net::UnixStream, fail: Option<&'static str>) -> Vec<Value> {
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&l).unwrap();
            let name = v["execute"].as_str().unwrap().to_string();
            got.push(v.clone());
            if Some(name.as_str()) == fail {
                w.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}}\n")
                    .await
                    .unwrap();
                continue;
            }
            w.write_all(b"{\"event\": \"RTC_CHANGE\", \"data\": {}}\n")
                .await
                .unwrap();
            w.write_all(b"{\"return\": {}}\n").await.unwrap();
            if name == "device_del" {
                let id = v["arguments"]["id"].as_str().unwrap();
                let ev = json!({"event": "DEVICE_DELETED", "data": {"device": id, "path": "/x"}});
                w.write_all(format!("{ev}\n").as_bytes()).await.unwrap();
            }
        }
        got
    }

    async fn run_fake(
        steps: Vec<Step>,
        fail: Option<&'static str>,
    ) -> (Result<Value, QmpError>, Vec<Value>) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(fake_qemu(b, fail));
        let (r, w) = a.into_split();
        let res = session(BufReader::new(r), w, &steps).await;
        (res, server.await.unwrap())
    }

    #[tokio::test]
    async fn attach_is_blockdev_add_then_device_add() {
        let steps = attach_steps(Path::new("/d/x.qcow2"), "hp1", "vhp1");
        let (res, got) = run_fake(steps, None).await;
        res.unwrap();
        let names: Vec<&str> = got.iter().map(|c| c["execute"].as_str().unwrap()).collect();
        assert_eq!(names, ["qmp_capabilities", "blockdev-add", "device_add"]);
        assert_eq!(got[1]["arguments"]["node-name"], "hp1");
        assert_eq!(got[1]["arguments"]["driver"], "qcow2");
        assert_eq!(got[1]["arguments"]["file"]["filename"], "/d/x.qcow2");
        assert_eq!(
            got[2]["arguments"],
            json!({"driver": "virtio-blk-pci", "id": "vhp1", "drive": "hp1"})
        );
    }

    #[tokio::test]
    async fn detach_waits_for_device_deleted_before_blockdev_del() {
        let (res, got) = run_fake(detach_steps("vhp1", Some("hp1")), None).await;
        res.unwrap();
        let names: Vec<&str> = got.iter().map(|c| c["execute"].as_str().unwrap()).collect();
        assert_eq!(names, ["qmp_capabilities", "device_del", "blockdev-del"]);
        assert_eq!(got[2]["arguments"]["node-name"], "hp1");
        // a command-line drive: no blockdev-del
        let (res, got) = run_fake(detach_steps("vd1", None), None).await;
        res.unwrap();
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn an_error_answer_stops_the_session_and_names_the_command() {
        let steps = attach_steps(Path::new("/d/x.qcow2"), "hp1", "vhp1");
        let (res, got) = run_fake(steps, Some("blockdev-add")).await;
        let e = res.unwrap_err();
        assert!(
            matches!(&e, QmpError::Refused { command, error }
                if command == "blockdev-add" && error["class"] == "GenericError"),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("blockdev-add") && e.contains("GenericError"),
            "{e}"
        );
        // device_add was never sent
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn a_guest_that_never_releases_the_device_times_out() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        // answers device_del but never sends DEVICE_DELETED
        let server = tokio::spawn(async move {
            let (r, mut w) = b.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {}}\n").await.unwrap();
            while let Ok(Some(_)) = lines.next_line().await {
                w.write_all(b"{\"return\": {}}\n").await.unwrap();
            }
        });
        let (r, w) = a.into_split();
        let res = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            session(BufReader::new(r), w, &detach_steps("vd0", None)),
        )
        .await;
        assert!(res.is_err(), "the session waits for DEVICE_DELETED");
        server.abort();
    }
}
