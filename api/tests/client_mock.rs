//! The REST client against a tiny scripted HTTP/1.1 server on loopback: pagination, retries
//! (and their absence for POST), Retry-After, timeouts, error bodies, waiters.
#![cfg(feature = "client")]

use cloudsigma_api::client::{Auth, CallEvent, Client, Config, Error, RetryPolicy, WaitPolicy};
use cloudsigma_api::{DriveCreate, DriveStatus, ServerAction, ServerStatus};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// path + query
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }
}

struct Resp {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

fn resp(status: u16, body: Value) -> Resp {
    Resp {
        status,
        headers: vec![],
        body: if body.is_null() {
            String::new()
        } else {
            body.to_string()
        },
        delay: Duration::ZERO,
    }
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Resp + Send + Sync>;

struct Mock {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    async fn start(h: impl Fn(&Seen, usize) -> Resp + Send + Sync + 'static) -> Mock {
        let handler: Handler = Arc::new(h);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = l.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    let head_end = loop {
                        let n = match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let mut rl = lines.next().unwrap_or("").split(' ');
                    let method = rl.next().unwrap_or("").to_string();
                    let target = rl.next().unwrap_or("").to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[head_end + 4..].to_vec();
                    while body.len() < len {
                        let n = match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        body.extend_from_slice(&tmp[..n]);
                    }
                    let req = Seen {
                        method,
                        target,
                        headers,
                        body,
                    };
                    let idx = {
                        let mut s = seen.lock().unwrap();
                        s.push(req.clone());
                        s.len() - 1
                    };
                    let r = handler(&req, idx);
                    if !r.delay.is_zero() {
                        tokio::time::sleep(r.delay).await;
                    }
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                        r.status,
                        r.body.len()
                    );
                    for (k, v) in &r.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    out.push_str(&r.body);
                    let _ = sock.write_all(out.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Mock {
            base: format!("http://{addr}/api/2.0/"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn client(&self) -> Client {
        self.client_with(fast_retry(5), Duration::from_secs(5))
    }

    fn client_with(&self, retry: RetryPolicy, timeout: Duration) -> Client {
        let cfg = Config::for_url(
            &self.base,
            Auth::Basic {
                username: "user@example.com".into(),
                password: "pw".into(),
            },
        )
        .unwrap()
        .with_retry(retry)
        .with_timeout(timeout);
        Client::new(cfg).unwrap()
    }
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(5),
    }
}

fn server_json(i: usize, status: &str) -> Value {
    json!({"uuid": format!("s-{i}"), "name": format!("n{i}"), "cpu": 1000, "mem": 536870912,
           "status": status, "vnc_password": "x", "drives": [], "nics": [], "meta": {}, "tags": [],
           "runtime": null, "resource_uri": format!("/api/2.0/servers/s-{i}/")})
}

fn drive_json(uuid: &str, status: &str) -> Value {
    json!({"uuid": uuid, "name": "d", "size": 1073741824u64, "media": "disk", "status": status,
           "mounted_on": [], "meta": {}, "tags": []})
}

/// Serve `total` servers honouring limit/offset, capping pages at `cap`.
fn paged(total: usize, cap: usize) -> impl Fn(&Seen, usize) -> Resp {
    move |req, _| {
        let limit: usize = req
            .query("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(20);
        let offset: usize = req
            .query("offset")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let n = limit.min(cap);
        let objs: Vec<Value> = (offset..(offset + n).min(total))
            .map(|i| server_json(i, "stopped"))
            .collect();
        resp(
            200,
            json!({"meta": {"limit": limit, "offset": offset, "total_count": total}, "objects": objs}),
        )
    }
}

#[tokio::test]
async fn pagination_reads_three_pages() {
    let m = Mock::start(paged(5, 1000)).await;
    let c = m.client().with_page_size(2);
    let servers = c.list_servers().await.unwrap();
    assert_eq!(
        servers.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>(),
        ["s-0", "s-1", "s-2", "s-3", "s-4"]
    );
    let seen = m.seen();
    assert_eq!(seen.len(), 3);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.method, "GET");
        assert!(
            s.target.starts_with("/api/2.0/servers/detail/?"),
            "{}",
            s.target
        );
        assert_eq!(s.query("limit").as_deref(), Some("2"));
        assert_eq!(s.query("offset"), Some((i * 2).to_string()));
    }
    assert_eq!(c.calls(), 3);
}

#[tokio::test]
async fn pagination_survives_server_capped_pages_and_keeps_filters() {
    // The server caps pages at 3 although 100 were asked: short pages are not the end.
    let m = Mock::start(paged(7, 3)).await;
    let c = m.client();
    let servers = c
        .list_servers_filtered(&[("name__contains", "n"), ("limit", "1")])
        .await
        .unwrap();
    assert_eq!(servers.len(), 7);
    let seen = m.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|s| s.query("name__contains").as_deref() == Some("n")));
    // the caller's limit is ignored: the client owns paging
    assert!(seen
        .iter()
        .all(|s| s.query("limit").as_deref() == Some("100")));
}

#[tokio::test]
async fn pagination_stops_on_empty_page_despite_total() {
    // total_count overstates (objects deleted meanwhile): an empty page ends the listing.
    let m = Mock::start(|req: &Seen, _| {
        let offset: usize = req
            .query("offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let objs: Vec<Value> = if offset == 0 {
            vec![server_json(0, "running")]
        } else {
            vec![]
        };
        resp(
            200,
            json!({"meta": {"limit": 100, "offset": offset, "total_count": 50}, "objects": objs}),
        )
    })
    .await;
    let servers = m.client().list_servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(m.seen().len(), 2);
}

#[tokio::test]
async fn get_429_then_success_is_retried() {
    let m = Mock::start(|_, i| {
        if i == 0 {
            let mut r = resp(429, json!([{"error_type": "permission", "error_message": "rate limited", "error_point": null}]));
            r.headers.push(("Retry-After", "0".into()));
            r
        } else {
            resp(200, server_json(1, "running"))
        }
    })
    .await;
    let c = m.client();
    let s = c.get_server("s-1").await.unwrap();
    assert_eq!(s.status, ServerStatus::Running);
    assert_eq!(m.seen().len(), 2);
    assert_eq!(c.calls(), 2);
}

#[tokio::test]
async fn post_500_is_not_retried() {
    let m = Mock::start(|_, _| {
        resp(
            500,
            json!([{"error_type": "backend", "error_message": "boom", "error_point": null}]),
        )
    })
    .await;
    let c = m.client();
    let e = c
        .create_drive(&DriveCreate {
            name: "d".into(),
            size: 1 << 30,
            media: "disk".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert!(
        e.is_retryable(),
        "500 is retryable in principle; POST just is not retried"
    );
    assert_eq!(m.seen().len(), 1, "a POST must be sent exactly once");
    let e = c.start_server("s-1").await.unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert_eq!(m.seen().len(), 2);
    // the create body is the objects envelope
    let body: Value = serde_json::from_slice(&m.seen()[0].body).unwrap();
    assert_eq!(body["objects"][0]["name"], "d");
    // actions send {} and ?do=
    assert_eq!(m.seen()[1].target, "/api/2.0/servers/s-1/action/?do=start");
    assert_eq!(m.seen()[1].body, b"{}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let m = Mock::start(|_, i| {
        if i == 0 {
            let mut r = resp(503, json!([{"error_type": "concurrency", "error_message": "busy", "error_point": null}]));
            r.headers.push(("Retry-After", "1".into()));
            r
        } else {
            resp(200, server_json(2, "stopped"))
        }
    })
    .await;
    let c = m.client(); // backoff alone would be <= 5 ms
    let t = Instant::now();
    c.get_server("s-2").await.unwrap();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(m.seen().len(), 2);
}

#[tokio::test]
async fn retry_after_beyond_limit_returns_the_error() {
    let m = Mock::start(|_, _| {
        let mut r = resp(429, json!([]));
        r.headers.push(("Retry-After", "3600".into()));
        r
    })
    .await;
    let e = m.client().get_server("s").await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    // capped at fast_retry's max_retry_after, not the hour asked
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(m.seen().len(), 1);
}

/// A day asked for, as seconds or as an HTTP-date a day ahead: the call returns at once (no
/// wait inside it) and the error advises at most the cap, so a caller scheduling its own retry
/// from `retry_after()` (the controller's listing) waits the cap, not a day.
#[tokio::test]
async fn retry_after_of_a_day_is_capped_in_both_forms() {
    let logs = capture_logs();
    let ahead = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(86_400));
    for header in ["86400".to_string(), ahead] {
        let h = header.clone();
        let m = Mock::start(move |_, _| {
            let mut r = resp(503, json!([]));
            r.headers.push(("Retry-After", h.clone()));
            r
        })
        .await;
        let cap = Duration::from_secs(5);
        let t = Instant::now();
        let e = m.client().list_servers().await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{header}: waited {:?}",
            t.elapsed()
        );
        assert_eq!(e.status(), Some(503), "{header}");
        assert_eq!(e.retry_after(), Some(cap), "{header}");
        assert_eq!(m.seen().len(), 1, "{header}");
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("Retry-After capped").count(), 2, "{text}");
    assert!(text.contains("cap_secs=5"), "{text}");
}

#[tokio::test]
async fn retries_are_bounded() {
    let m = Mock::start(|_, _| resp(502, Value::String("bad gateway".into()))).await;
    let c = m.client_with(fast_retry(4), Duration::from_secs(5));
    let e = c.list_drives().await.unwrap_err();
    assert_eq!(e.status(), Some(502));
    assert_eq!(m.seen().len(), 4);
    assert_eq!(c.calls(), 4);
}

#[tokio::test]
async fn per_request_timeout() {
    let m = Mock::start(|_, _| {
        let mut r = resp(200, server_json(1, "running"));
        r.delay = Duration::from_secs(3);
        r
    })
    .await;
    let c = m.client_with(RetryPolicy::none(), Duration::from_millis(300));
    let t = Instant::now();
    let e = c.get_server("s-1").await.unwrap_err();
    assert!(matches!(e, Error::RequestTimeout { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(e.to_string().contains("GET /api/2.0/servers/s-1/"), "{e}");
    // with retries, an idempotent GET is attempted again after a timeout
    let c = m.client_with(fast_retry(2), Duration::from_millis(200));
    let _ = c.get_server("s-1").await.unwrap_err();
    assert_eq!(c.calls(), 2);
}

#[tokio::test]
async fn connection_refused_is_transport_error_and_retried_for_get() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = Config::for_url(
        &format!("http://127.0.0.1:{port}/api/2.0/"),
        Auth::Bearer("t".into()),
    )
    .unwrap()
    .with_retry(fast_retry(3));
    let c = Client::new(cfg).unwrap();
    let e = c.list_tags().await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert_eq!(c.calls(), 3);
    let e = c.create_tag(&Default::default()).await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert_eq!(c.calls(), 4, "POST not retried on connection errors either");
}

#[tokio::test]
async fn error_body_status_and_request_id() {
    let m = Mock::start(|_, _| {
        let mut r = resp(404, json!([{"error_point": null, "error_type": "notexist", "error_message": "Object with uuid nope does not exist"}]));
        r.headers.push(("X-REQUEST-ID", "req-42".into()));
        r
    })
    .await;
    let e = m.client().get_drive("nope").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(m.seen().len(), 1, "404 is not retried");
    match &e {
        Error::Api {
            status,
            method,
            path,
            errors,
            request_id,
            ..
        } => {
            assert_eq!(*status, 404);
            assert_eq!(method, "GET");
            assert_eq!(path, "/api/2.0/drives/nope/");
            assert_eq!(errors[0].error_type, "notexist");
            assert_eq!(request_id.as_deref(), Some("req-42"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("req-42"));
}

#[tokio::test]
async fn auth_headers_basic_and_bearer() {
    let m = Mock::start(|_, _| {
        resp(
            200,
            json!({"meta": {"limit": 100, "offset": 0, "total_count": 0}, "objects": []}),
        )
    })
    .await;
    m.client().list_ips().await.unwrap();
    // base64("user@example.com:pw")
    assert_eq!(
        m.seen()[0].header("authorization"),
        Some("Basic dXNlckBleGFtcGxlLmNvbTpwdw==")
    );
    let c = Client::new(Config::for_url(&m.base, Auth::Bearer("tok-1".into())).unwrap()).unwrap();
    c.list_vlans().await.unwrap();
    assert_eq!(m.seen()[1].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(
        m.seen()[1].target,
        "/api/2.0/vlans/detail/?limit=100&offset=0"
    );
}

#[tokio::test]
async fn put_and_delete_are_retried_and_delete_404_after_retry_is_success() {
    let m = Mock::start(|req: &Seen, i| match (req.method.as_str(), i) {
        ("DELETE", 0) => resp(503, json!([])),
        ("DELETE", _) => resp(
            404,
            json!([{"error_type": "notexist", "error_message": "gone", "error_point": null}]),
        ),
        _ => resp(200, Value::Null),
    })
    .await;
    let c = m.client();
    c.delete_drive("d-1").await.unwrap();
    assert_eq!(m.seen().len(), 2);
    // a 404 on the FIRST attempt stays an error
    let e = c
        .delete_server("s-9", Some("all_drives"))
        .await
        .unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        m.seen()[2].target,
        "/api/2.0/servers/s-9/?recurse=all_drives"
    );
    assert!(matches!(
        c.delete_server("s", Some("everything")).await,
        Err(Error::InvalidInput(_))
    ));
}

#[tokio::test]
async fn decode_error_names_the_endpoint() {
    let m = Mock::start(|_, _| resp(200, json!({"unexpected": true}))).await;
    let e = m.client().get_server("s-1").await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("/api/2.0/servers/s-1/"), "{e}");
}

#[tokio::test]
async fn waiter_success() {
    let m = Mock::start(|_, i| {
        resp(
            200,
            drive_json("d-1", if i < 2 { "creating" } else { "unmounted" }),
        )
    })
    .await;
    let c = m.client().with_wait_policy(WaitPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
    });
    let d = c
        .wait_drive_status("d-1", DriveStatus::Unmounted, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(d.status, DriveStatus::Unmounted);
    assert_eq!(m.seen().len(), 3);
}

#[tokio::test]
async fn waiter_timeout_names_object_want_and_last() {
    let m = Mock::start(|_, _| resp(200, server_json(3, "starting"))).await;
    let c = m.client().with_wait_policy(WaitPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    });
    let t = Instant::now();
    let e = c
        .wait_server_status("s-3", ServerStatus::Running, Duration::from_millis(500))
        .await
        .unwrap_err();
    let el = t.elapsed();
    match &e {
        Error::Timeout {
            what, want, last, ..
        } => {
            assert_eq!(
                (what.as_str(), want.as_str(), last.as_str()),
                ("server s-3", "running", "starting")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        el >= Duration::from_millis(500) && el < Duration::from_secs(2),
        "{el:?}"
    );
    // backoff, not a busy loop: 20+40+80+100+100+100... ≈ 7 polls in 500 ms
    let polls = m.seen().len();
    assert!((4..=10).contains(&polls), "{polls} polls");
    assert!(
        e.to_string().contains("server s-3") && e.to_string().contains("last status: starting")
    );
}

#[tokio::test]
async fn waiter_404_is_an_error_not_a_wait() {
    let m = Mock::start(|_, _| {
        resp(
            404,
            json!([{"error_type": "notexist", "error_message": "no", "error_point": null}]),
        )
    })
    .await;
    let c = m.client();
    let t = Instant::now();
    let e = c
        .wait_drive_status("d-x", DriveStatus::Unmounted, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(e.is_not_found());
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(m.seen().len(), 1);
}

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<LogBuf>> = const { std::cell::RefCell::new(None) };
}

/// Writes into the calling thread's capture buffer, if it has one.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buf) = &*c.borrow() {
                buf.0.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The debug log of the calling thread from now on. Tests run on parallel threads: one global
/// subscriber writes each thread's events to that thread's buffer (the current-thread test
/// runtime runs the client and the mock on the test's thread). Thread-local subscribers
/// (`set_default`) would race: tracing caches each log callsite's interest process-wide, and a
/// subscriber set or dropped on one thread recomputes it from that thread's view, so a test
/// capturing logs lost events now and then.
fn capture_logs() -> LogBuf {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| ThreadWriter)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("the only global subscriber");
    });
    let buf = LogBuf::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(buf.clone()));
    buf
}

#[tokio::test]
async fn debug_logs_name_requests_but_never_secrets() {
    let logs = capture_logs();
    let m = Mock::start(|req: &Seen, i| match (req.method.as_str(), i) {
        ("PUT", 1) => resp(503, json!([])), // index 0 is the GET
        ("PUT", _) => resp(
            200,
            Value::String(String::from_utf8_lossy(&req.body).into()),
        ),
        _ => resp(200, server_json(1, "stopped")),
    })
    .await;
    let cfg = Config::for_url(
        &m.base,
        Auth::Basic {
            username: "ops@example.com".into(),
            password: "pw-s3cret-123".into(),
        },
    )
    .unwrap()
    .with_retry(fast_retry(3));
    let c = Client::new(cfg).unwrap();
    let mut s = c.get_server("s-1").await.unwrap();
    s.meta.insert(
        "k8s_join_token".into(),
        "bootstrap-abcdef.0123456789abcdef".into(),
    );
    // the mock answers the PUT with the body as a JSON string: a decode error, after a retry
    let e = c.update_server(&s).await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    assert!(!e.to_string().contains("bootstrap-abcdef"), "{e}");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("/api/2.0/servers/s-1/") && text.contains("GET") && text.contains("PUT"),
        "{text}"
    );
    assert!(text.contains("attempt=2"), "the retry is logged: {text}");
    for secret in [
        "pw-s3cret-123",
        "bootstrap-abcdef",
        "Basic ",
        "b3BzQGV4YW1wbGUuY29tOnB3LXMzY3JldC0xMjM",
    ] {
        assert!(!text.contains(secret), "log leaks {secret:?}: {text}");
    }
}

#[tokio::test]
async fn pagination_drops_duplicates_from_shifted_pages() {
    // Between page 1 and 2 a server was inserted before the offset: page 2 repeats s-1.
    let m = Mock::start(|req: &Seen, _| {
        let offset: usize = req
            .query("offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let (ids, total): (Vec<usize>, usize) = match offset {
            0 => (vec![0, 1], 4),
            2 => (vec![1, 2], 5),
            _ => (vec![3], 5),
        };
        let objs: Vec<Value> = ids.into_iter().map(|i| server_json(i, "stopped")).collect();
        resp(
            200,
            json!({"meta": {"limit": 2, "offset": offset, "total_count": total}, "objects": objs}),
        )
    })
    .await;
    let servers = m.client().with_page_size(2).list_servers().await.unwrap();
    assert_eq!(
        servers.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>(),
        ["s-0", "s-1", "s-2", "s-3"]
    );
    assert_eq!(m.seen().len(), 3);
}

fn rate_limited() -> Resp {
    let mut r = resp(
        429,
        json!([{"error_type": "permission", "error_message": "rate limited", "error_point": null}]),
    );
    r.headers.push(("Retry-After", "0".into()));
    r
}

#[tokio::test]
async fn post_429_is_resent_only_when_opted_in() {
    let create = || DriveCreate {
        name: "d".into(),
        size: 1 << 30,
        media: "disk".into(),
        ..Default::default()
    };
    // not opted in: sent once, the 429 is returned
    let m = Mock::start(|_, i| {
        if i == 0 {
            rate_limited()
        } else {
            resp(201, json!({"objects": [drive_json("d-1", "creating")]}))
        }
    })
    .await;
    let e = m.client().create_drive(&create()).await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert_eq!(m.seen().len(), 1);

    // opted in: two 429s, then created — three identical POSTs
    let m = Mock::start(|_, i| {
        if i < 2 {
            rate_limited()
        } else {
            resp(201, json!({"objects": [drive_json("d-1", "creating")]}))
        }
    })
    .await;
    let c = m.client().with_post_retry_on_429(true);
    let d = c.create_drive(&create()).await.unwrap();
    assert_eq!(d.uuid, "d-1");
    let seen = m.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.method == "POST" && r.body == seen[0].body));

    // opted in, still bounded by max_attempts
    let m = Mock::start(|_, _| rate_limited()).await;
    let c = m
        .client_with(fast_retry(3), Duration::from_secs(5))
        .with_post_retry_on_429(true);
    let e = c.start_server("s-1").await.unwrap_err();
    assert_eq!(e.status(), Some(429));
    assert_eq!(m.seen().len(), 3);
}

#[tokio::test]
async fn post_opt_in_never_resends_other_failures() {
    // 500, 503 (even with Retry-After) and a lost answer may all have acted: sent once
    for status in [500u16, 503] {
        let m = Mock::start(move |_, _| {
            let mut r = resp(
                status,
                json!([{"error_type": "backend", "error_message": "x", "error_point": null}]),
            );
            r.headers.push(("Retry-After", "0".into()));
            r
        })
        .await;
        let c = m.client().with_post_retry_on_429(true);
        let e = c
            .server_action("s-1", ServerAction::Shutdown)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(status));
        assert_eq!(m.seen().len(), 1, "{status}: a POST must be sent once");
        assert_eq!(
            m.seen()[0].target,
            "/api/2.0/servers/s-1/action/?do=shutdown"
        );
    }
    let m = Mock::start(|_, _| Resp {
        delay: Duration::from_secs(2),
        ..resp(
            200,
            json!({"action": "stop", "result": "success", "uuid": "s-1"}),
        )
    })
    .await;
    let c = m
        .client_with(fast_retry(5), Duration::from_millis(200))
        .with_post_retry_on_429(true);
    let e = c.stop_server("s-1").await.unwrap_err();
    assert!(matches!(e, Error::RequestTimeout { .. }), "{e:?}");
    assert_eq!(m.seen().len(), 1);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn recording_client(m: &Mock) -> (Client, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let r2 = rec.clone();
    let c = m
        .client()
        .with_wait_policy(WaitPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
        })
        .with_observer(Arc::new(move |e: &CallEvent<'_>| {
            let line = match *e {
                CallEvent::Attempt {
                    method,
                    path,
                    status,
                    attempt,
                    ..
                } => format!("attempt {method} {path} {status:?} #{attempt}"),
                CallEvent::RetrySleep { method, path, .. } => {
                    format!("retry-sleep {method} {path}")
                }
                CallEvent::PollSleep { what, slept } => {
                    assert!(slept >= Duration::from_millis(10), "{slept:?}");
                    format!("poll-sleep {what}")
                }
                _ => "other".into(),
            };
            r2.0.lock().unwrap().push(line);
        }));
    (c, rec)
}

#[tokio::test]
async fn observer_sees_attempts_retry_sleeps_and_poll_sleeps() {
    // GET: 429 then 200 (one retry); then a waiter that polls three times
    let m = Mock::start(|req, i| match i {
        0 => rate_limited(),
        _ if req.target.contains("/servers/") => resp(200, server_json(1, "running")),
        2 | 3 => resp(200, drive_json("d-1", "creating")),
        _ => resp(200, drive_json("d-1", "unmounted")),
    })
    .await;
    let (c, rec) = recording_client(&m);
    c.get_server("s-1").await.unwrap();
    c.wait_drive_status("d-1", DriveStatus::Unmounted, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        rec.events(),
        [
            "attempt GET /api/2.0/servers/s-1/ Some(429) #1",
            "retry-sleep GET /api/2.0/servers/s-1/",
            "attempt GET /api/2.0/servers/s-1/ Some(200) #2",
            "attempt GET /api/2.0/drives/d-1/ Some(200) #1",
            "poll-sleep drive d-1",
            "attempt GET /api/2.0/drives/d-1/ Some(200) #1",
            "poll-sleep drive d-1",
            "attempt GET /api/2.0/drives/d-1/ Some(200) #1",
        ]
    );
    // clones keep the observer
    let c2 = c.clone();
    c2.get_server("s-1").await.unwrap();
    assert_eq!(rec.events().len(), 9);
    // a refused connection is an attempt without a status
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    };
    let rec = Arc::new(Recorder::default());
    let r2 = rec.clone();
    let c = Client::new(
        Config::for_url(&format!("http://{dead}/api/2.0/"), Auth::Bearer("t".into()))
            .unwrap()
            .with_retry(RetryPolicy::none()),
    )
    .unwrap()
    .with_observer(Arc::new(move |e: &CallEvent<'_>| {
        if let CallEvent::Attempt { status, .. } = e {
            r2.0.lock().unwrap().push(format!("{status:?}"));
        }
    }));
    assert!(c.get_server("s-1").await.is_err());
    assert_eq!(rec.events(), ["None"]);
}

#[tokio::test]
async fn ensure_server_stopped_looks_again_instead_of_resending_blindly() {
    // running; stop → 500 (may or may not have acted); GET shows stopping → no second stop;
    // the waiter then sees stopped
    let state = Arc::new(Mutex::new(0usize)); // GETs answered
    let st = state.clone();
    let m = Mock::start(move |req, _| {
        if req.method == "POST" {
            return resp(
                500,
                json!([{"error_type": "backend", "error_message": "x", "error_point": null}]),
            );
        }
        let mut n = st.lock().unwrap();
        *n += 1;
        match *n {
            1 => resp(200, server_json(1, "running")),
            2 => resp(200, server_json(1, "stopping")),
            _ => resp(200, server_json(1, "stopped")),
        }
    })
    .await;
    let c = m.client().with_wait_policy(WaitPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
    });
    let s = c
        .ensure_server_stopped("s-1", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(s.status, ServerStatus::Stopped);
    let posts: Vec<String> = m
        .seen()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(posts, ["/api/2.0/servers/s-1/action/?do=stop"]);

    // still running after every refused stop: at most max_attempts stops, then the error
    let m = Mock::start(|req, _| {
        if req.method == "POST" {
            resp(403, json!([{"error_type": "permission", "error_message": "starting", "error_point": null}]))
        } else {
            resp(200, server_json(1, "starting"))
        }
    })
    .await;
    let c = m.client_with(fast_retry(3), Duration::from_secs(5));
    let e = c
        .ensure_server_stopped("s-1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(m.seen().iter().filter(|r| r.method == "POST").count(), 3);

    // already stopped: no POST at all; gone: 404
    let m = Mock::start(|req, _| {
        if req.target.contains("s-2") {
            resp(
                404,
                json!([{"error_type": "notexist", "error_message": "gone", "error_point": null}]),
            )
        } else {
            resp(200, server_json(1, "stopped"))
        }
    })
    .await;
    let c = m.client();
    c.ensure_server_stopped("s-1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(c
        .ensure_server_stopped("s-2", Duration::from_secs(5))
        .await
        .unwrap_err()
        .is_not_found());
    assert!(m.seen().iter().all(|r| r.method == "GET"));
}

/// A read-modify-write of a server's meta: the PUT is never resent blindly; after a 503 the
/// server is read again, and the edit runs on what the cloud holds then (a key added in between
/// by someone else is kept, not overwritten by a resend of the first body).
#[tokio::test]
async fn meta_read_modify_write_rereads_before_trying_again() {
    let m = Mock::start(|req, i| match (req.method.as_str(), i) {
        ("GET", 0) => {
            let mut s = server_json(1, "running");
            s["meta"] = json!({"a": "1"});
            resp(200, s)
        }
        ("PUT", 1) => resp(
            503,
            json!([{"error_type": "concurrency", "error_message": "busy", "error_point": null}]),
        ),
        ("GET", _) => {
            let mut s = server_json(1, "running");
            s["meta"] = json!({"a": "1", "b": "2"});
            resp(200, s)
        }
        _ => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            resp(200, body)
        }
    })
    .await;
    let c = m.client();
    let s = c
        .modify_server_meta("s-1", |meta| {
            meta.insert("k".into(), "v".into());
            true
        })
        .await
        .unwrap();
    let methods: Vec<String> = m.seen().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["GET", "PUT", "GET", "PUT"]);
    let first: Value = serde_json::from_slice(&m.seen()[1].body).unwrap();
    assert_eq!(first["meta"], json!({"a": "1", "k": "v"}));
    assert_eq!(
        s.meta.get("b").map(String::as_str),
        Some("2"),
        "{:?}",
        s.meta
    );
    assert_eq!(s.meta.get("k").map(String::as_str), Some("v"));
    // nothing to change: nothing written
    let before = m.seen().len();
    c.modify_server_meta("s-1", |_| false).await.unwrap();
    assert_eq!(m.seen().len(), before + 1, "only the GET");
}
