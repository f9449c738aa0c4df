//! The `/api/2.0/` HTTP surface: auth, fault injection, counters, routing, wire shapes.
//!
//! Routing is hand-written (one fallback handler) so every answer — including unknown paths and
//! wrong methods — carries CloudSigma's JSON error body and an `X-REQUEST-ID`, and so counters
//! and fault rules see one normalized path pattern per endpoint.
//!
//! [D] Trailing slash: the SDKs always send it; the real API redirects paths without it. We
//! accept both forms and answer directly (no redirect), which no client can mistake.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use cloudsigma_api::ListMeta;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::error::ApiError;
use crate::faults::{normalize, Verdict};
use crate::state::Kind;

/// [D reference] default page size when `limit` is absent.
pub const DEFAULT_LIMIT: u64 = 20;
const MAX_BODY: usize = 16 << 20;

type Query = Vec<(String, String)>;

fn q<'a>(query: &'a Query, k: &str) -> Option<&'a str> {
    query.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
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

fn check_auth(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = || {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "permission",
            "Authentication failed: wrong username/password or token. Use HTTP Basic auth with the account e-mail and password, or Authorization: Bearer <token>.",
            None,
        );
        e.headers
            .push(("www-authenticate", "Basic realm=\"api\"".into()));
        e
    };
    let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized());
    };
    if let Some(b64) = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| unauthorized())?;
        let s = String::from_utf8(decoded).map_err(|_| unauthorized())?;
        let (u, p) = s.split_once(':').ok_or_else(unauthorized)?;
        if constant_eq(u, &app.username) & constant_eq(p, &app.password) {
            return Ok(());
        }
    } else if let Some(t) = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
    {
        if let Some(tok) = &app.token {
            if constant_eq(t.trim(), tok) {
                return Ok(());
            }
        }
    }
    Err(unauthorized())
}

fn constant_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The fallback handler for everything under `/api/2.0/`.
pub async fn handle(AxState(app): AxState<Arc<App>>, req: Request) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let pattern = normalize(&path);
    if let Ok(mut c) = app.counters.lock() {
        c.hit(format!("{method} {pattern}"));
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

    if let Err(e) = check_auth(&app, req.headers()) {
        return err(e, &rid);
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

struct Page {
    limit: u64,
    offset: u64,
    fields: Option<Vec<String>>,
}

fn page_params(query: &Query) -> Result<Page, ApiError> {
    let limit = match q(query, "limit") {
        Some(l) => l.parse::<u64>().map_err(|_| {
            ApiError::validation(
                format!("limit must be a non-negative integer, got {l:?}"),
                Some("limit"),
            )
        })?,
        None => DEFAULT_LIMIT,
    };
    let offset = match q(query, "offset") {
        Some(o) => o.parse::<u64>().map_err(|_| {
            ApiError::validation(
                format!("offset must be a non-negative integer, got {o:?}"),
                Some("offset"),
            )
        })?,
        None => 0,
    };
    let fields = q(query, "fields").map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    Ok(Page {
        limit,
        offset,
        fields,
    })
}

/// Paginate already-filtered items and encode `{"meta", "objects"}`. `limit=0` means all.
fn paginate<T, F, R>(items: &[T], p: &Page, render: F) -> Result<Reply, ApiError>
where
    F: Fn(&T) -> R,
    R: Serialize + Send + 'static,
{
    let total = items.len() as u64;
    let start = p.offset.min(total) as usize;
    let end = if p.limit == 0 {
        total as usize
    } else {
        (p.offset.saturating_add(p.limit)).min(total) as usize
    };
    let meta = ListMeta {
        limit: p.limit,
        offset: p.offset,
        total_count: total,
    };
    match &p.fields {
        None => {
            #[derive(Serialize)]
            struct L<R> {
                meta: ListMeta,
                objects: Vec<R>,
            }
            let objects: Vec<R> = items[start..end].iter().map(render).collect();
            Ok(Reply::Lazy(Box::new(move || {
                serde_json::to_vec(&L { meta, objects })
            })))
        }
        Some(fields) => {
            let objects: Vec<Value> = items[start..end]
                .iter()
                .map(|i| {
                    let v = serde_json::to_value(render(i)).unwrap_or(Value::Null);
                    trim_fields(v, fields)
                })
                .collect();
            Reply::json(StatusCode::OK, &json!({"meta": meta, "objects": objects}))
        }
    }
}

fn trim_fields(v: Value, fields: &[String]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| fields.iter().any(|f| f == k))
                .collect(),
        ),
        other => other,
    }
}

/// Comma-separated values of a filter (`?name=a,b` is OR [V]).
fn any_of(query: &Query, k: &str) -> Option<Vec<String>> {
    q(query, k).map(|v| v.split(',').map(|s| s.to_string()).collect())
}

/// Common filters on servers/drives: name, name__contains, uuid, status, tag. Several
/// parameters AND [V]; unknown parameters are ignored [D].
struct Filter {
    name: Option<Vec<String>>,
    name_contains: Option<String>,
    name_icontains: Option<String>,
    uuid: Option<Vec<String>>,
    status: Option<Vec<String>>,
    tag: Option<Vec<String>>,
}

impl Filter {
    fn from(query: &Query) -> Filter {
        Filter {
            name: any_of(query, "name"),
            name_contains: q(query, "name__contains").map(str::to_string),
            name_icontains: q(query, "name__icontains").map(|s| s.to_lowercase()),
            uuid: any_of(query, "uuid"),
            status: any_of(query, "status"),
            tag: any_of(query, "tag"),
        }
    }
    fn pass(&self, st: &crate::state::State, uuid: &str, name: &str, status: &str) -> bool {
        if let Some(n) = &self.name {
            if !n.iter().any(|x| x == name) {
                return false;
            }
        }
        if let Some(c) = &self.name_contains {
            if !name.contains(c.as_str()) {
                return false;
            }
        }
        if let Some(c) = &self.name_icontains {
            if !name.to_lowercase().contains(c.as_str()) {
                return false;
            }
        }
        if let Some(u) = &self.uuid {
            if !u.iter().any(|x| x == uuid) {
                return false;
            }
        }
        if let Some(s) = &self.status {
            if !s.iter().any(|x| x == status) {
                return false;
            }
        }
        if let Some(t) = &self.tag {
            // [D] a tag filter matches by tag uuid or tag name
            let has = st.tags.values().any(|tag| {
                (t.iter().any(|x| *x == tag.uuid || *x == tag.name))
                    && tag.resources.iter().any(|r| r.uuid() == uuid)
            });
            if !has {
                return false;
            }
        }
        true
    }
}

fn action_reply(action: &str, uuid: &str) -> Result<Reply, ApiError> {
    // [V SDK/docs] 202 {"action", "result": "success", "uuid"}
    Reply::json(
        StatusCode::ACCEPTED,
        &json!({"action": action, "result": "success", "uuid": uuid}),
    )
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
        [res @ ("servers" | "drives" | "libdrives" | "ips" | "vlans" | "tags")] => match *method {
            Method::GET => list(app, res, false, query),
            Method::POST if matches!(*res, "servers" | "drives" | "tags") => {
                create(app, res, body).await
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
                let s = st.get_server(uuid)?;
                Reply::json(StatusCode::OK, &s.runtime)
            }
            _ => Err(method_not_allowed(method, "GET")),
        },
        ["tags", uuid, kind @ ("servers" | "drives" | "ips" | "vlans")] => match *method {
            Method::GET => tagged(app, uuid, kind, query),
            _ => Err(method_not_allowed(method, "GET")),
        },
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

fn list(app: &Arc<App>, res: &str, detail: bool, query: &Query) -> Result<Reply, ApiError> {
    let p = page_params(query)?;
    let f = Filter::from(query);
    let st = app.lock();
    match res {
        "servers" => {
            let items: Vec<&cloudsigma_api::Server> = st
                .servers
                .values()
                .filter(|s| f.pass(&st, &s.uuid, &s.name, &s.status.to_string()))
                .collect();
            if detail {
                paginate(&items, &p, |s| st.render_server(s))
            } else {
                paginate(&items, &p, |s| st.render_server_short(s))
            }
        }
        "drives" => {
            let media = any_of(query, "media");
            let items: Vec<&cloudsigma_api::Drive> = st
                .drives
                .values()
                .filter(|d| f.pass(&st, &d.uuid, &d.name, &st.drive_status(d).to_string()))
                .filter(|d| media.as_ref().map(|m| m.contains(&d.media)).unwrap_or(true))
                .collect();
            if detail {
                paginate(&items, &p, |d| st.render_drive(d))
            } else {
                paginate(&items, &p, |d| st.render_drive_short(d))
            }
        }
        "libdrives" => {
            // [V reference] libdrives filter on arch, category, distribution, image_type, name,
            // name__icontains, os, uuid, version. [D] comparisons are case-insensitive.
            let eq = |want: &Option<Vec<String>>, have: &Option<String>| -> bool {
                match want {
                    None => true,
                    Some(w) => have
                        .as_ref()
                        .map(|h| w.iter().any(|x| x.eq_ignore_ascii_case(h)))
                        .unwrap_or(false),
                }
            };
            let (arch, dist, it, os, ver, cat, media) = (
                any_of(query, "arch"),
                any_of(query, "distribution"),
                any_of(query, "image_type"),
                any_of(query, "os"),
                any_of(query, "version"),
                any_of(query, "category"),
                any_of(query, "media"),
            );
            let items: Vec<&cloudsigma_api::LibDrive> = st
                .libdrives
                .values()
                .filter(|l| f.pass(&st, &l.uuid, &l.name, "unmounted"))
                .filter(|l| {
                    eq(&arch, &l.arch)
                        && eq(&dist, &l.distribution)
                        && eq(&it, &l.image_type)
                        && eq(&os, &l.os)
                        && eq(&ver, &l.version)
                        && eq(&media, &Some(l.media.clone()))
                        // [V dumps/response_libdrive_get] category is a list of strings
                        && cat.as_ref().is_none_or(|want| {
                            let have: Vec<&str> = match l.extra.get("category") {
                                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                                Some(Value::String(c)) => vec![c.as_str()],
                                _ => Vec::new(),
                            };
                            want.iter().any(|w| have.iter().any(|h| h.eq_ignore_ascii_case(w)))
                        })
                })
                .collect();
            paginate(&items, &p, |l| st.render_libdrive(l))
        }
        "ips" => {
            let items: Vec<cloudsigma_api::Ip> = st
                .all_ips()
                .into_iter()
                .filter(|i| f.pass(&st, &i.uuid, &i.uuid, ""))
                .collect();
            if detail {
                paginate(&items, &p, |i| i.clone())
            } else {
                // [V dumps/response_ip_list] short form
                paginate(
                    &items,
                    &p,
                    |i| json!({"owner": crate::state::owner_ref(), "resource_uri": format!("/api/2.0/ips/{}/", i.uuid), "server": i.server, "uuid": i.uuid}),
                )
            }
        }
        "vlans" => {
            let items: Vec<&cloudsigma_api::Vlan> = st
                .vlans
                .values()
                .filter(|v| {
                    f.pass(
                        &st,
                        &v.uuid,
                        v.meta.get("name").map(String::as_str).unwrap_or(""),
                        "",
                    )
                })
                .collect();
            if detail {
                paginate(&items, &p, |v| st.render_vlan(v))
            } else {
                paginate(
                    &items,
                    &p,
                    |v| json!({"owner": crate::state::owner_ref(), "resource_uri": format!("/api/2.0/vlans/{}/", v.uuid), "uuid": v.uuid}),
                )
            }
        }
        "tags" => {
            let items: Vec<&cloudsigma_api::Tag> = st
                .tags
                .values()
                .filter(|t| f.pass(&st, &t.uuid, &t.name, ""))
                .collect();
            paginate(&items, &p, |t| st.render_tag(t))
        }
        _ => Err(ApiError::notexist("resource", res)),
    }
}

fn get_one(app: &Arc<App>, res: &str, uuid: &str) -> Result<Reply, ApiError> {
    let st = app.lock();
    match res {
        "servers" => Reply::json(StatusCode::OK, &st.render_server(st.get_server(uuid)?)),
        "drives" => Reply::json(StatusCode::OK, &st.render_drive(st.get_drive(uuid)?)),
        "libdrives" => {
            let l = st
                .libdrives
                .get(uuid)
                .ok_or_else(|| ApiError::notexist("libdrive", uuid))?;
            Reply::json(StatusCode::OK, &st.render_libdrive(l))
        }
        "ips" => {
            let i = st
                .all_ips()
                .into_iter()
                .find(|i| i.uuid == uuid)
                .ok_or_else(|| ApiError::notexist("ip", uuid))?;
            Reply::json(StatusCode::OK, &i)
        }
        "vlans" => {
            let v = st
                .vlans
                .get(uuid)
                .ok_or_else(|| ApiError::notexist("vlan", uuid))?;
            Reply::json(StatusCode::OK, &st.render_vlan(v))
        }
        "tags" => Reply::json(StatusCode::OK, &st.render_tag(st.get_tag(uuid)?)),
        _ => Err(ApiError::notexist("resource", res)),
    }
}

async fn create(app: &Arc<App>, res: &str, body: &Bytes) -> Result<Reply, ApiError> {
    let items = create_items(body)?;
    match res {
        "servers" => {
            let created = app.lock().create_servers(&items)?;
            for s in &created {
                app.contexts.open(app, &s.uuid);
            }
            // [V SDK] 201 with {"objects": [...]}
            Reply::created(
                "servers",
                created.first().map(|s| s.uuid.as_str()),
                &created,
            )
        }
        "drives" => {
            let created = app.lock().create_drives(&items)?;
            for d in &created {
                if let Err(e) = app.backend.drive_created(&d.uuid, d.size, &d.media).await {
                    let mut st = app.lock();
                    for d in &created {
                        st.delete_drive(&d.uuid);
                    }
                    return Err(ApiError::backend(format!(
                        "Backend could not create drive {}: {e}",
                        d.uuid
                    )));
                }
            }
            Reply::created("drives", created.first().map(|d| d.uuid.as_str()), &created)
        }
        "tags" => {
            let created = app.lock().create_tags(&items)?;
            let first = created
                .first()
                .and_then(|t| t["uuid"].as_str().map(str::to_string));
            Reply::created("tags", first.as_deref(), &created)
        }
        _ => Err(ApiError::notexist("resource", res)),
    }
}

async fn update(app: &Arc<App>, res: &str, uuid: &str, body: &Bytes) -> Result<Reply, ApiError> {
    let v = parse_body(body)?;
    match res {
        "servers" => {
            let s = app.lock().update_server(uuid, &v)?;
            Reply::json(StatusCode::OK, &s)
        }
        "drives" => {
            let (d, resized) = app.lock().update_drive(uuid, &v)?;
            if resized {
                app.backend.drive_resized(uuid, d.size).await.map_err(|e| {
                    ApiError::backend(format!("Backend could not resize drive {uuid}: {e}"))
                })?;
            }
            Reply::json(StatusCode::OK, &d)
        }
        "tags" => {
            let t = app.lock().update_tag(uuid, &v)?;
            Reply::json(StatusCode::OK, &t)
        }
        "ips" | "vlans" => {
            // [D] only meta and tags of IPs/VLANs are editable
            let o = v
                .as_object()
                .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
            let mut st = app.lock();
            let meta = match o.get("meta") {
                Some(m) if !m.is_null() => Some(crate::state::parse_meta(m)?),
                _ => None,
            };
            let tags = match o.get("tags") {
                Some(t) if !t.is_null() => Some(crate::state::parse_refs(t, "tags")?),
                _ => None,
            };
            let exists = if res == "ips" {
                st.ips.contains_key(uuid)
            } else {
                st.vlans.contains_key(uuid)
            };
            if !exists {
                return Err(ApiError::notexist(res, uuid));
            }
            // tags first: they are the only part that can be refused, so a refusal changes nothing
            if let Some(t) = tags {
                st.set_tags_public(uuid, &t)?;
            }
            if let Some(m) = meta {
                if let Some(ip) = st.ips.get_mut(uuid) {
                    ip.meta = m;
                } else if let Some(vl) = st.vlans.get_mut(uuid) {
                    vl.meta = m;
                }
            }
            st.touch();
            if res == "ips" {
                Reply::json(StatusCode::OK, &st.render_ip(&st.ips[uuid]))
            } else {
                Reply::json(StatusCode::OK, &st.render_vlan(&st.vlans[uuid]))
            }
        }
        _ => Err(ApiError::notexist("resource", res)),
    }
}

async fn delete(app: &Arc<App>, res: &str, uuid: &str, query: &Query) -> Result<Reply, ApiError> {
    match res {
        "servers" => {
            let drives = app.lock().plan_delete_server(uuid, q(query, "recurse"))?;
            app.backend.server_deleted(uuid).await.map_err(|e| {
                ApiError::backend(format!("Backend could not delete server {uuid}: {e}"))
            })?;
            for d in &drives {
                if let Err(e) = app.backend.drive_deleted(d).await {
                    tracing::warn!(drive = %d, error = %e, "backend failed to delete a drive of a deleted server");
                }
            }
            app.lock().delete_server(uuid, &drives);
            app.contexts.close(uuid);
            Ok(Reply::NoContent)
        }
        "drives" => {
            app.lock().plan_delete_drive(uuid)?;
            app.backend.drive_deleted(uuid).await.map_err(|e| {
                ApiError::backend(format!("Backend could not delete drive {uuid}: {e}"))
            })?;
            app.lock().delete_drive(uuid);
            Ok(Reply::NoContent)
        }
        "tags" => {
            app.lock().delete_tag(uuid)?;
            Ok(Reply::NoContent)
        }
        _ => Err(ApiError::notexist("resource", res)),
    }
}

async fn bulk_delete(
    app: &Arc<App>,
    res: &str,
    query: &Query,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let items = create_items(body)?;
    let mut uuids = Vec::new();
    for it in &items {
        let u = crate::state::ref_uuid(it).ok_or_else(|| {
            ApiError::validation(
                "each object must be a uuid or {\"uuid\": ...}",
                Some("objects"),
            )
        })?;
        uuids.push(u);
    }
    // validate all first so one refusal deletes nothing
    {
        let st = app.lock();
        for u in &uuids {
            if res == "servers" {
                st.plan_delete_server(u, q(query, "recurse"))?;
            } else {
                st.plan_delete_drive(u)?;
            }
        }
    }
    for u in &uuids {
        delete(app, res, u, query).await?;
    }
    Ok(Reply::NoContent)
}

async fn action(
    app: &Arc<App>,
    res: &str,
    uuid: &str,
    query: &Query,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let what = q(query, "do")
        .ok_or_else(|| ApiError::validation("Missing action: add ?do=<action>", Some("do")))?
        .to_string();
    let v = parse_body(body)?;
    match (res, what.as_str()) {
        ("servers", "start") => {
            let ctx = app.contexts.socket_path(uuid);
            let backend = app.backend.clone();
            let plan = {
                let mut st = app.lock();
                let u = uuid.to_string();
                st.begin_start(uuid, &|i| backend.runtime_ip(&u, i), ctx)?
            };
            if let Err(e) = app.backend.server_start(&plan.spec).await {
                app.lock().abort_start(uuid);
                return Err(ApiError::backend(format!("Backend could not start server {uuid}: {e}")));
            }
            action_reply("start", uuid)
        }
        ("servers", "stop") => {
            app.lock().begin_stop(uuid)?;
            app.backend.server_stop(uuid).await.map_err(|e| ApiError::backend(format!("Backend could not stop server {uuid}: {e}")))?;
            action_reply("stop", uuid)
        }
        ("servers", "shutdown") => {
            let gen = app.lock().begin_shutdown(uuid)?;
            match app.backend.server_shutdown(uuid).await {
                Ok(mode) => app.lock().schedule_shutdown(uuid, gen, mode),
                Err(e) => {
                    app.lock().abort_shutdown(uuid, gen);
                    return Err(ApiError::backend(format!("Backend could not shut down server {uuid}: {e}")));
                }
            }
            action_reply("shutdown", uuid)
        }
        ("servers", "restart") => {
            app.lock().begin_restart(uuid)?;
            let spec = app.lock().current_spec(uuid, app.contexts.socket_path(uuid));
            if let Some(spec) = spec {
                let r = async {
                    app.backend.server_stop(uuid).await?;
                    app.backend.server_start(&spec).await
                }
                .await;
                if let Err(e) = r {
                    app.lock().abort_start(uuid);
                    return Err(ApiError::backend(format!("Backend could not restart server {uuid}: {e}")));
                }
            }
            action_reply("restart", uuid)
        }
        ("servers", "clone") => {
            let (server, cloned) = app.lock().clone_server(uuid, &v)?;
            for (src, dst, size) in &cloned {
                if let Err(e) = app.backend.drive_cloned(src, false, dst, *size).await {
                    let mut st = app.lock();
                    for (_, d, _) in &cloned {
                        st.delete_drive(d);
                    }
                    st.delete_server(&server.uuid, &[]);
                    return Err(ApiError::backend(format!("Backend could not clone drive {src} of server {uuid}: {e}")));
                }
            }
            app.contexts.open(app, &server.uuid);
            // [V dumps/response_server_clone] 202 with the new server (no envelope)
            Reply::json(StatusCode::ACCEPTED, &server)
        }
        ("servers", other) => Err(ApiError::validation(
            format!("Action {other:?} is not supported on servers (emulated: start, stop, shutdown, restart, clone)"),
            Some("do"),
        )),
        ("drives" | "libdrives", "clone") => {
            if res == "libdrives" && !app.lock().libdrives.contains_key(uuid) {
                return Err(ApiError::notexist("libdrive", uuid));
            }
            let (d, is_lib) = app.lock().clone_drive(uuid, &v)?;
            if let Err(e) = app.backend.drive_cloned(uuid, is_lib, &d.uuid, d.size).await {
                app.lock().delete_drive(&d.uuid);
                return Err(ApiError::backend(format!("Backend could not clone drive {uuid}: {e}")));
            }
            // [V dumps/response_drive_clone] 202 with {"objects": [new drive]}
            Reply::json(StatusCode::ACCEPTED, &json!({"objects": [d]}))
        }
        ("drives", "resize") => {
            let d = app.lock().resize_drive(uuid, &v)?;
            app.backend.drive_resized(uuid, d.size).await.map_err(|e| ApiError::backend(format!("Backend could not resize drive {uuid}: {e}")))?;
            // [V dumps/response_drive_resize_action] 202 with {"objects": [drive]}
            Reply::json(StatusCode::ACCEPTED, &json!({"objects": [d]}))
        }
        (_, other) => Err(ApiError::validation(format!("Action {other:?} is not supported on {res}"), Some("do"))),
    }
}

fn tagged(app: &Arc<App>, tag: &str, kind: &str, query: &Query) -> Result<Reply, ApiError> {
    let p = page_params(query)?;
    let st = app.lock();
    let k = match kind {
        "servers" => Kind::Servers,
        "drives" => Kind::Drives,
        "ips" => Kind::Ips,
        _ => Kind::Vlans,
    };
    let uuids = st.tagged(tag, k)?;
    match k {
        Kind::Servers => {
            let items: Vec<&cloudsigma_api::Server> =
                uuids.iter().filter_map(|u| st.servers.get(u)).collect();
            paginate(&items, &p, |s| st.render_server(s))
        }
        Kind::Drives => {
            let items: Vec<&cloudsigma_api::Drive> =
                uuids.iter().filter_map(|u| st.drives.get(u)).collect();
            paginate(&items, &p, |d| st.render_drive(d))
        }
        Kind::Ips => {
            let items: Vec<&cloudsigma_api::Ip> =
                uuids.iter().filter_map(|u| st.ips.get(u)).collect();
            paginate(&items, &p, |i| st.render_ip(i))
        }
        Kind::Vlans => {
            let items: Vec<&cloudsigma_api::Vlan> =
                uuids.iter().filter_map(|u| st.vlans.get(u)).collect();
            paginate(&items, &p, |v| st.render_vlan(v))
        }
    }
}
