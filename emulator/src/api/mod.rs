//! The `/api/2.0/` HTTP surface: auth, fault injection, counters, routing, wire shapes.
//!
//! Routing is hand-written (one fallback handler) so every answer — including unknown paths and
//! wrong methods — carries CloudSigma's JSON error body and an `X-REQUEST-ID`, and so counters
//! and fault rules see one normalized path pattern per endpoint.
//!
//! [D] Trailing slash: the SDKs always send it; the real API redirects paths without it. We
//! accept both forms and answer directly (no redirect), which no client can mistake.
//!
//! Files: `mod.rs` the request pipeline (faults, auth, body, routing, answers); `auth.rs` the
//! credentials check; `lists.rs` list endpoints (paging, filters, `fields`); `objects.rs` one
//! object's GET/POST/PUT/DELETE; `actions.rs` `/action/?do=...`. Handlers that change objects
//! call the backend hooks outside the state lock.

mod account;
mod actions;
pub(crate) mod auth;
mod lists;
mod objects;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::error::ApiError;
use crate::faults::{normalize, Verdict};
use actions::action;
use auth::check_auth;
use lists::{list, tagged};
use objects::{bulk_delete, create, delete, get_one, update};

/// The page size when `limit` is absent: [V dumps/response_jobs_list,
/// response_tags_list_resource, response_licenses_list, response_subscription_list] requests
/// without `limit` answer `"meta": {"limit": 20, ...}`.
pub const DEFAULT_LIMIT: u64 = 20;
const MAX_BODY: usize = 16 << 20;

type Query = Vec<(String, String)>;

fn q<'a>(query: &'a Query, k: &str) -> Option<&'a str> {
    query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

/// `?avoid=a,b` ([V docs availability_groups.rst]: one uuid or a comma-separated list, in
/// order of preference).
fn avoid(query: &Query) -> Vec<String> {
    q(query, "avoid")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn json_response(status: StatusCode, body: Vec<u8>, request_id: &str) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

fn err(e: ApiError, rid: &str) -> Response {
    let mut r = json_response(e.status, e.body().into_bytes(), rid);
    for (k, v) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

fn no_content(rid: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(rid) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// The fallback handler for everything under `/api/2.0/`.
pub async fn handle(AxState(app): AxState<Arc<App>>, req: Request) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let pattern = normalize(&path);

    // Auth first: a client without valid credentials gets 401 and never fires a fault rule,
    // spends the rate-limit budget (as a front end that rate-limits per account would) or adds
    // a per-endpoint counter (a flood of made-up paths would grow memory).
    let auth = check_auth(&app, req.headers());
    {
        let mut c = app.counters.lock().unwrap_or_else(|p| p.into_inner());
        match auth {
            Ok(()) => c.hit(method.as_str(), &pattern),
            Err(_) => c.unauthenticated(),
        }
    }
    if let Err(e) = auth {
        return err(e, &rid);
    }

    // fault injection, in the order a real front end would apply them
    let (latency, verdict) = {
        let mut f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
        (
            f.cfg.latency_ms,
            f.check(method.as_str(), &path, &pattern, &raw_query),
        )
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match verdict {
        Verdict::Pass => {}
        Verdict::RateLimited { retry_after_secs } => {
            // [V docs] clients must back off when refused; Retry-After tells them how long
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "backend",
                format!(
                    "Request was throttled. Expected available in {retry_after_secs} second(s)."
                ),
                None,
            );
            e.headers
                .push(("retry-after", retry_after_secs.to_string()));
            return err(e, &rid);
        }
        Verdict::Fail { status, reason } => {
            let st = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut e = ApiError::new(
                st,
                if status == 503 {
                    "concurrency"
                } else {
                    "backend"
                },
                format!("Injected fault ({reason})"),
                None,
            );
            if status == 429 {
                e.headers.push(("retry-after", "1".into()));
            }
            return err(e, &rid);
        }
    }

    let query: Query = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return err(
                ApiError::validation("Request body too large or unreadable", None),
                &rid,
            )
        }
    };
    let segs: Vec<String> = path
        .strip_prefix("/api/2.0")
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect();
    match route(&app, &method, &segs, &query, &body).await {
        Ok(r) => r.into_response(&rid),
        Err(e) => err(e, &rid),
    }
}

/// A successful answer, rendered with the request id by [`handle`].
enum Reply {
    Json(StatusCode, Vec<u8>),
    /// Encoded after the state lock is released, so big listings serialize in parallel.
    Lazy(Box<dyn FnOnce() -> serde_json::Result<Vec<u8>> + Send>),
    /// 201 with a `Location` header ([V docs] "201 on create (with Location)").
    Created(Vec<u8>, String),
    NoContent,
}

impl Reply {
    fn into_response(self, rid: &str) -> Response {
        match self {
            Reply::Json(s, b) => json_response(s, b, rid),
            Reply::Lazy(f) => match f() {
                Ok(b) => json_response(StatusCode::OK, b, rid),
                Err(e) => err(ApiError::backend(format!("cannot encode answer: {e}")), rid),
            },
            Reply::Created(b, location) => {
                let mut r = json_response(StatusCode::CREATED, b, rid);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Reply::NoContent => no_content(rid),
        }
    }
    /// `{"objects": [...]}` with 201 and `Location` of the first created object.
    fn created<T: Serialize>(
        res: &str,
        first_uuid: Option<&str>,
        objects: &T,
    ) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(&json!({ "objects": objects }))
            .map_err(|e| ApiError::backend(format!("cannot encode answer: {e}")))?;
        Ok(Reply::Created(
            body,
            format!("/api/2.0/{res}/{}/", first_uuid.unwrap_or("")),
        ))
    }
    fn json<T: Serialize>(status: StatusCode, v: &T) -> Result<Reply, ApiError> {
        serde_json::to_vec(v)
            .map(|b| Reply::Json(status, b))
            .map_err(|e| ApiError::backend(format!("cannot encode answer: {e}")))
    }
}

fn method_not_allowed(method: &Method, allowed: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "validation",
        format!("Method {method} is not allowed here; allowed: {allowed}"),
        None,
    );
    e.headers.push(("allow", allowed.to_string()));
    e
}

/// Parse a JSON body; empty means `{}` (the SDK sends `{}` to actions; some clients send nothing).
fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("Malformed JSON body: {e}"), Some("body")))
}

/// Items of a create body: `{"objects": [...]}` [V SDK]; [D] a bare object is accepted as one item.
fn create_items(body: &Bytes) -> Result<Vec<Value>, ApiError> {
    let v = parse_body(body)?;
    match v {
        // [V docs drives.rst] "you can omit the {'objects': ...} and provide only the list"
        Value::Array(a) if !a.is_empty() => Ok(a),
        Value::Object(mut o) => match o.remove("objects") {
            Some(Value::Array(a)) => {
                if a.is_empty() {
                    Err(ApiError::validation(
                        "objects must not be empty",
                        Some("objects"),
                    ))
                } else {
                    Ok(a)
                }
            }
            Some(_) => Err(ApiError::validation(
                "objects must be a list",
                Some("objects"),
            )),
            None if !o.is_empty() => Ok(vec![Value::Object(o)]),
            None => Err(ApiError::validation(
                "Body must be {\"objects\": [...]}",
                Some("objects"),
            )),
        },
        _ => Err(ApiError::validation(
            "Body must be a JSON object {\"objects\": [...]}",
            Some("objects"),
        )),
    }
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    segs: &[String],
    query: &Query,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["profile"] => account::profile(app, method, body),
        ["capabilities"] => account::capabilities(method),
        [res @ ("keypairs" | "pubkeys"), rest @ ..] if rest.len() <= 1 => {
            account::keypairs(
                app,
                method,
                *res == "pubkeys",
                rest.first().copied(),
                query,
                body,
            )
            .await
        }
        [res @ ("servers" | "drives"), "availability_groups", rest @ ..] if rest.len() <= 1 => {
            account::availability_groups(app, method, res, rest.first().copied())
        }
        [res @ ("servers" | "drives" | "libdrives" | "ips" | "vlans" | "tags")] => match *method {
            Method::GET => list(app, res, false, query),
            Method::POST if matches!(*res, "servers" | "drives" | "tags") => {
                create(app, res, &avoid(query), body).await
            }
            // [V docs drives.rst "Multiple drives"] DELETE on the list with {"objects": [{"uuid"}]}
            Method::DELETE if matches!(*res, "servers" | "drives") => {
                bulk_delete(app, res, query, body).await
            }
            _ => Err(method_not_allowed(
                method,
                match *res {
                    "servers" | "drives" => "GET, POST, DELETE",
                    "tags" => "GET, POST",
                    _ => "GET",
                },
            )),
        },
        [res @ ("servers" | "drives" | "libdrives" | "ips" | "vlans" | "tags"), "detail"] => {
            match *method {
                Method::GET => list(app, res, true, query),
                _ => Err(method_not_allowed(method, "GET")),
            }
        }
        [res @ ("servers" | "drives" | "libdrives" | "ips" | "vlans" | "tags"), uuid] => {
            match *method {
                Method::GET => get_one(app, res, uuid),
                Method::PUT if *res != "libdrives" => update(app, res, uuid, body).await,
                Method::DELETE if matches!(*res, "servers" | "drives" | "tags") => {
                    delete(app, res, uuid, query).await
                }
                _ => Err(method_not_allowed(
                    method,
                    match *res {
                        "libdrives" => "GET",
                        "ips" | "vlans" => "GET, PUT",
                        _ => "GET, PUT, DELETE",
                    },
                )),
            }
        }
        [res @ ("servers" | "drives" | "libdrives"), uuid, "action"] => match *method {
            Method::POST => action(app, res, uuid, query, body).await,
            _ => Err(method_not_allowed(method, "POST")),
        },
        // [V docs server_context.rst "Global context"] GET / POST /global_context/ with a flat
        // object; the answer is the resulting global context. [D] POST (and PUT) replace it
        // wholesale, like `meta`.
        ["global_context"] => match *method {
            Method::GET => Reply::json(StatusCode::OK, &app.lock().global_context),
            Method::POST | Method::PUT => {
                let m = crate::state::parse_meta(&parse_body(body)?)?;
                let mut st = app.lock();
                st.global_context = m;
                st.touch();
                Reply::json(StatusCode::OK, &st.global_context)
            }
            _ => Err(method_not_allowed(method, "GET, POST, PUT")),
        },
        ["servers", uuid, "runtime"] => match *method {
            Method::GET => {
                let st = app.lock();
                let s = st.view_server(uuid)?;
                Reply::json(StatusCode::OK, &s.runtime)
            }
            _ => Err(method_not_allowed(method, "GET")),
        },
        ["tags", uuid, kind @ ("servers" | "drives" | "ips" | "vlans")] => match *method {
            Method::GET => tagged(app, uuid, kind, query),
            _ => Err(method_not_allowed(method, "GET")),
        },
        // The detail form answers the same full objects (the emulator renders them in full on
        // both), paginated alike.
        ["tags", uuid, kind @ ("servers" | "drives" | "ips" | "vlans"), "detail"] => {
            match *method {
                Method::GET => tagged(app, uuid, kind, query),
                _ => Err(method_not_allowed(method, "GET")),
            }
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "notexist",
            format!(
                "No such endpoint: /api/2.0/{}/ (not emulated)",
                segs.join("/")
            ),
            None,
        )),
    }
}
