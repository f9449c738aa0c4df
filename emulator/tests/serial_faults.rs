//! The early-boot "not ready" serial reply as an injected fault: N requests get it, then the
//! context; the project's own context reader retries through it.
mod common;
use cloudsim::{ContextNotReady, EmulatorConfig, NOT_READY_REPLY};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One request; the answer line (without `\n` EOT), or `None` if nothing came within `wait`.
async fn ask(s: &mut UnixStream, key: &str, wait: Duration) -> Option<String> {
    s.write_all(format!("<\n{key}\n>").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = async {
        let mut b = [0u8; 1];
        loop {
            assert!(s.read(&mut b).await.unwrap() > 0, "peer closed");
            out.push(b[0]);
            if b[0] == 0x04 {
                break;
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    assert!(out.ends_with(b"\n\x04"), "framed like any answer: {out:?}");
    Some(String::from_utf8(out[..out.len() - 2].to_vec()).unwrap())
}

async fn server(t: &T, name: &str) -> String {
    t.create_server(name, None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn not_ready_for_n_requests_then_the_context() {
    let t = start(EmulatorConfig {
        context_not_ready: vec![ContextNotReady::every_server(3)],
        ..EmulatorConfig::for_tests()
    })
    .await;
    let a = server(&t, "a").await;
    let b = server(&t, "b").await;
    let mut s = UnixStream::connect(t.emu.context_socket(&a)).await.unwrap();
    for key in ["", "/name", ""] {
        assert_eq!(ask(&mut s, key, WAIT).await.unwrap(), NOT_READY_REPLY);
    }
    let ctx: Value = serde_json::from_str(&ask(&mut s, "", WAIT).await.unwrap()).unwrap();
    assert_eq!(ctx["uuid"], a.as_str());
    assert_eq!(ask(&mut s, "/name", WAIT).await.unwrap(), "a");
    // each server is counted on its own (a new connection, too)
    let mut s = UnixStream::connect(t.emu.context_socket(&b)).await.unwrap();
    for _ in 0..3 {
        assert_eq!(ask(&mut s, "", WAIT).await.unwrap(), NOT_READY_REPLY);
    }
    assert_eq!(ask(&mut s, "/name", WAIT).await.unwrap(), "b");
}

#[tokio::test]
async fn the_project_reader_retries_through_not_ready() {
    let t = instant().await;
    let u = server(&t, "worker-0").await;
    t.emu
        .add_context_not_ready(ContextNotReady {
            server: Some(u.clone()),
            requests: 2,
            reply: None,
            silent: false,
        })
        .unwrap();
    let path = t.emu.context_socket(&u);
    let opts = cloudsigma_api::context::ReadOptions {
        deadline: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let ctx = tokio::task::spawn_blocking(move || {
        cloudsigma_api::context::read_context_with(&path, opts)
    })
    .await
    .unwrap()
    .expect("the reader gets the context after the not-ready replies");
    assert_eq!(ctx.uuid, u);
    // the rule for one server is gone once used up
    let (s, v) = t.admin(Method::GET, "faults/context", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!([]));
}

#[tokio::test]
async fn admin_sets_reply_text_silence_and_refuses_bad_replies() {
    let t = instant().await;
    let u = server(&t, "n").await;
    let (s, v) = t
        .admin(
            Method::POST,
            "faults/context",
            Some(json!([
                {"server": u, "requests": 1, "reply": "booting"},
                {"server": u, "requests": 1, "silent": true}
            ])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let mut s = UnixStream::connect(t.emu.context_socket(&u)).await.unwrap();
    assert_eq!(ask(&mut s, "", WAIT).await.unwrap(), "booting");
    assert_eq!(
        ask(&mut s, "", Duration::from_millis(300)).await,
        None,
        "silent: no answer at all"
    );
    assert_eq!(ask(&mut s, "/name", WAIT).await.unwrap(), "n");

    for bad in [
        json!({"requests": 1, "reply": "two\nlines"}),
        json!({"requests": 1, "reply": "caf\u{e9}"}),
        json!({"requests": "x"}),
        json!({"requests": 1, "bogus": true}),
    ] {
        let (s, v) = t
            .admin(Method::POST, "faults/context", Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    t.admin(Method::POST, "faults/context", Some(json!({"requests": 5})))
        .await;
    let (s, v) = t.admin(Method::DELETE, "faults/context", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    assert_eq!(
        ask(&mut s_conn(&t, &u).await, "/name", WAIT).await.unwrap(),
        "n"
    );
}

async fn s_conn(t: &T, u: &str) -> UnixStream {
    UnixStream::connect(t.emu.context_socket(u)).await.unwrap()
}
