//! `/admin/`: fault injection, counters, state dump, library registration, DHCP on VLANs. JSON,
//! outside `/api/2.0/` so it never disturbs what clients see.
//!
//! Served on its own listener, never on the API's: the API port may be exposed (or reached by
//! guests) while these endpoints change everything. The listener is loopback by default and needs
//! no credentials there; on another address, or with `admin_auth`, it asks for the API's.

use axum::extract::{Path, Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudsigma_api::LibDrive;
use serde_json::{json, Value};
use std::sync::Arc;

use crate::app::App;
use crate::config::{FaultConfig, Timings};
use crate::faults::{ContextNotReady, OnceRule};

type R = (StatusCode, Json<Value>);

/// A JSON body regardless of `Content-Type` (so `curl -d '{...}'` works without `-H`);
/// an empty body is `null`.
pub struct AnyJson(pub Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for AnyJson {
    type Rejection = R;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| bad(format!("cannot read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(AnyJson(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(AnyJson)
            .map_err(|e| bad(format!("body is not valid JSON: {e}")))
    }
}

fn bad(msg: String) -> R {
    (StatusCode::BAD_REQUEST, Json(json!({"error": msg})))
}

/// The admin listener's service: [`router`], with the API's credentials required when
/// `require_auth`, and a JSON 404 for anything else.
pub fn service(app: Arc<App>, require_auth: bool) -> Router {
    let mut r = router().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such admin endpoint (see docs/emulator.md)"})),
        )
    });
    if require_auth {
        r = r.layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_credentials,
        ));
    }
    r.with_state(app)
}

async fn require_credentials(
    AxState(app): AxState<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    match crate::api::auth::check_auth(&app, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let msg = e
                .entries
                .first()
                .map(|x| x.error_message.clone())
                .unwrap_or_default();
            let mut r = (e.status, Json(json!({ "error": msg }))).into_response();
            for (k, v) in &e.headers {
                if let Ok(v) = HeaderValue::from_str(v) {
                    r.headers_mut().insert(*k, v);
                }
            }
            r
        }
    }
}

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/counters", get(counters))
        .route("/admin/counters/", get(counters))
        .route("/admin/counters/reset", post(counters_reset))
        .route("/admin/counters/reset/", post(counters_reset))
        .route("/admin/faults", get(faults_get).put(faults_put))
        .route("/admin/faults/", get(faults_get).put(faults_put))
        .route(
            "/admin/faults/once",
            get(once_get).post(once_post).delete(once_clear),
        )
        .route(
            "/admin/faults/once/",
            get(once_get).post(once_post).delete(once_clear),
        )
        .route(
            "/admin/faults/context",
            get(context_faults_get)
                .post(context_faults_post)
                .delete(context_faults_clear),
        )
        .route(
            "/admin/faults/context/",
            get(context_faults_get)
                .post(context_faults_post)
                .delete(context_faults_clear),
        )
        .route("/admin/state", get(state))
        .route("/admin/state/", get(state))
        .route("/admin/timings", get(timings_get).put(timings_put))
        .route("/admin/timings/", get(timings_get).put(timings_put))
        .route("/admin/global_context", get(gc_get).put(gc_put))
        .route("/admin/global_context/", get(gc_get).put(gc_put))
        .route("/admin/vendor_data", get(vd_get).put(vd_put))
        .route("/admin/vendor_data/", get(vd_get).put(vd_put))
        .route("/admin/libdrives", post(libdrive_add))
        .route("/admin/libdrives/", post(libdrive_add))
        .route("/admin/servers/{uuid}/console", get(console))
        .route("/admin/servers/{uuid}/console/", get(console))
        .route("/admin/servers/{uuid}/power_off", post(power_off))
        .route("/admin/servers/{uuid}/power_off/", post(power_off))
        .route(
            "/admin/vlans/{uuid}/dhcp",
            get(dhcp_get).post(dhcp_post).delete(dhcp_delete),
        )
        .route(
            "/admin/vlans/{uuid}/dhcp/",
            get(dhcp_get).post(dhcp_post).delete(dhcp_delete),
        )
        .route("/admin/servers/{uuid}/context", get(context))
        .route("/admin/servers/{uuid}/context/", get(context))
}

async fn counters(AxState(app): AxState<Arc<App>>) -> R {
    let c = app.counters.lock().unwrap_or_else(|p| p.into_inner());
    (
        StatusCode::OK,
        Json(serde_json::to_value(&*c).unwrap_or(Value::Null)),
    )
}

async fn counters_reset(AxState(app): AxState<Arc<App>>) -> R {
    let mut c = app.counters.lock().unwrap_or_else(|p| p.into_inner());
    *c = Default::default();
    (
        StatusCode::OK,
        Json(json!({"total": 0, "unauthenticated": 0, "endpoints": {}})),
    )
}

async fn faults_get(AxState(app): AxState<Arc<App>>) -> R {
    let f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
    (
        StatusCode::OK,
        Json(json!({
            "latency_ms": f.cfg.latency_ms,
            "error_rate": f.cfg.error_rate,
            "error_status": f.cfg.error_status,
            "rate_limit_per_sec": f.cfg.rate_limit_per_sec,
            "once": f.once,
        })),
    )
}

/// Partial update: only the fields present change.
async fn faults_put(AxState(app): AxState<Arc<App>>, AnyJson(v): AnyJson) -> R {
    let Some(o) = v.as_object() else {
        return bad("body must be a JSON object".into());
    };
    let mut cfg = app
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .cfg
        .clone();
    let mut merged = serde_json::to_value(&cfg).unwrap_or(json!({}));
    for (k, val) in o {
        if k == "once" {
            continue;
        }
        if merged.get(k).is_none() {
            return bad(format!("unknown fault setting {k:?}; known: latency_ms, error_rate, error_status, rate_limit_per_sec"));
        }
        merged[k] = val.clone();
    }
    match serde_json::from_value::<FaultConfig>(merged) {
        Ok(c) => cfg = c,
        Err(e) => return bad(format!("invalid fault settings: {e}")),
    }
    if !(0.0..=1.0).contains(&cfg.error_rate) {
        return bad(format!(
            "error_rate {} must be within 0.0..=1.0",
            cfg.error_rate
        ));
    }
    if !(400..=599).contains(&cfg.error_status) {
        return bad(format!(
            "error_status {} must be an HTTP error status (e.g. 500, 503, 429)",
            cfg.error_status
        ));
    }
    app.faults.lock().unwrap_or_else(|p| p.into_inner()).cfg = cfg;
    faults_get(AxState(app)).await
}

/// A fault body is one rule or a list of rules.
fn one_or_many<T: serde::de::DeserializeOwned>(v: Value) -> Result<Vec<T>, serde_json::Error> {
    if v.is_array() {
        serde_json::from_value(v)
    } else {
        serde_json::from_value(v).map(|r| vec![r])
    }
}

async fn once_get(AxState(app): AxState<Arc<App>>) -> R {
    let f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
    (StatusCode::OK, Json(json!(f.once)))
}

/// Body: one rule or a list of rules.
async fn once_post(AxState(app): AxState<Arc<App>>, AnyJson(v): AnyJson) -> R {
    let rules: Vec<OnceRule> = match one_or_many(v) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "invalid rule (want {{\"method\",\"path\",\"status\",\"count\"}}): {e}"
            ))
        }
    };
    for r in &rules {
        if !(400..=599).contains(&r.status) {
            return bad(format!("status {} must be an HTTP error status", r.status));
        }
    }
    let mut f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
    f.once.extend(rules);
    (StatusCode::OK, Json(json!(f.once)))
}

async fn once_clear(AxState(app): AxState<Arc<App>>) -> R {
    app.faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .once
        .clear();
    (StatusCode::OK, Json(json!([])))
}

async fn context_faults_get(AxState(app): AxState<Arc<App>>) -> R {
    let f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
    (StatusCode::OK, Json(json!(f.context)))
}

/// Body: one [`ContextNotReady`] or a list.
async fn context_faults_post(AxState(app): AxState<Arc<App>>, AnyJson(v): AnyJson) -> R {
    let rules: Vec<ContextNotReady> = match one_or_many(v) {
        Ok(r) => r,
        Err(e) => {
            return bad(format!(
                "invalid serial fault (want {{\"server\": uuid or null, \"requests\": N, \"reply\": text, \"silent\": bool}}): {e}"
            ))
        }
    };
    for r in &rules {
        if let Err(e) = r.validate() {
            return bad(e);
        }
    }
    let mut f = app.faults.lock().unwrap_or_else(|p| p.into_inner());
    for r in rules {
        f.add_context_rule(r);
    }
    (StatusCode::OK, Json(json!(f.context)))
}

async fn context_faults_clear(AxState(app): AxState<Arc<App>>) -> R {
    app.faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .context
        .clear();
    (StatusCode::OK, Json(json!([])))
}

async fn state(AxState(app): AxState<Arc<App>>) -> R {
    let snap = app.lock().snapshot();
    let mut v = serde_json::to_value(&snap).unwrap_or(json!({}));
    let sockets: serde_json::Map<String, Value> = snap
        .servers
        .iter()
        .map(|s| (s.uuid.clone(), json!(app.contexts.socket_path(&s.uuid))))
        .collect();
    v["context_sockets"] = Value::Object(sockets);
    v["context_ptys"] = json!(app.contexts.ptys());
    (StatusCode::OK, Json(v))
}

async fn timings_get(AxState(app): AxState<Arc<App>>) -> R {
    (StatusCode::OK, Json(json!(app.lock().timings)))
}

/// Whole `Timings` in milliseconds, e.g. `{"drive_create": 0, ...}`; missing fields keep values.
async fn timings_put(AxState(app): AxState<Arc<App>>, AnyJson(v): AnyJson) -> R {
    let mut st = app.lock();
    let mut merged = json!(st.timings);
    if let Some(o) = v.as_object() {
        for (k, val) in o {
            if merged.get(k).is_none() {
                return bad(format!("unknown timing {k:?}"));
            }
            merged[k] = val.clone();
        }
    }
    match serde_json::from_value::<Timings>(merged) {
        Ok(t) => {
            st.timings = t;
            (StatusCode::OK, Json(json!(t)))
        }
        Err(e) => bad(format!("invalid timings (milliseconds): {e}")),
    }
}

async fn gc_get(AxState(app): AxState<Arc<App>>) -> R {
    (StatusCode::OK, Json(json!(app.lock().global_context)))
}

async fn gc_put(AxState(app): AxState<Arc<App>>, AnyJson(v): AnyJson) -> R {
    match crate::state::parse_meta(&v) {
        Ok(m) => {
            let mut st = app.lock();
            st.global_context = m;
            st.touch();
            (StatusCode::OK, Json(json!(st.global_context)))
        }
        Err(e) => bad(e
            .entries
            .first()
            .map(|x| x.error_message.clone())
            .unwrap_or_default()),
    }
}

async fn vd_get(AxState(app): AxState<Arc<App>>) -> R {
    (
        StatusCode::OK,
        Json(app.lock().vendor_data.clone().unwrap_or(Value::Null)),
    )
}

/// `{"location": "zrh", "cloudinit": "..."}` or null to remove.
async fn vd_put(AxState(app): AxState<Arc<App>>, AnyJson(v): AnyJson) -> R {
    let mut st = app.lock();
    st.vendor_data = if v.is_null() { None } else { Some(v.clone()) };
    st.touch();
    (StatusCode::OK, Json(v))
}

/// Register a library drive: a `LibDrive` JSON, optionally with `"image_path"` for VM backends.
async fn libdrive_add(AxState(app): AxState<Arc<App>>, AnyJson(mut v): AnyJson) -> R {
    if !v.is_object() {
        return bad("body must be a library drive JSON object (name, media, size, ...)".into());
    }
    let image_path = v
        .as_object_mut()
        .and_then(|o| o.remove("image_path"))
        .and_then(|p| p.as_str().map(str::to_string));
    if v.get("uuid").is_none() {
        v["uuid"] = json!(crate::state::new_uuid());
    }
    let l: LibDrive = match serde_json::from_value(v) {
        Ok(l) => l,
        Err(e) => {
            return bad(format!(
                "invalid library drive (need name, media, size): {e}"
            ))
        }
    };
    if let Some(p) = image_path {
        app.lib_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(l.uuid.clone(), p.into());
    }
    let mut st = app.lock();
    st.libdrives.insert(l.uuid.clone(), l.clone());
    st.touch();
    (StatusCode::CREATED, Json(json!(st.render_libdrive(&l))))
}

async fn console(AxState(app): AxState<Arc<App>>, Path(uuid): Path<String>) -> R {
    if !app.lock().servers.contains_key(&uuid) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no server {uuid}")})),
        );
    }
    let log = app.backend.console_log(&uuid).await;
    (StatusCode::OK, Json(json!({"uuid": uuid, "console": log})))
}

/// Simulate the guest powering off (as a VM backend would report).
async fn power_off(AxState(app): AxState<Arc<App>>, Path(uuid): Path<String>) -> R {
    if !app.lock().servers.contains_key(&uuid) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no server {uuid}")})),
        );
    }
    app.power_off(&uuid);
    (
        StatusCode::OK,
        Json(json!({"uuid": uuid, "status": "stopped"})),
    )
}

/// The server context as JSON (what the serial socket serves for an empty key).
async fn context(AxState(app): AxState<Arc<App>>, Path(uuid): Path<String>) -> R {
    match app.server_context(&uuid) {
        Some(c) => (StatusCode::OK, Json(c)),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no server {uuid}")})),
        ),
    }
}

fn dhcp_error(e: crate::app::VlanDhcpError) -> R {
    let status = match e {
        crate::app::VlanDhcpError::NoVlan(_) => StatusCode::NOT_FOUND,
        crate::app::VlanDhcpError::Invalid(..) => StatusCode::BAD_REQUEST,
        crate::app::VlanDhcpError::Backend(..) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({"error": e.to_string()})))
}

async fn dhcp_reply(app: &App, uuid: &str) -> R {
    match app.vlan_dhcp_status(uuid).await {
        Ok(s) => (StatusCode::OK, Json(json!(s))),
        Err(e) => dhcp_error(e),
    }
}

/// DHCP on a VLAN: its configuration (or null) and the leases handed out.
async fn dhcp_get(AxState(app): AxState<Arc<App>>, Path(uuid): Path<String>) -> R {
    dhcp_reply(&app, &uuid).await
}

/// Run a DHCP server on a VLAN: `{"cidr": "192.168.50.0/24", "range": [first, last],
/// "server": addr, "lease_secs": n}` (only `cidr` required). Replaces an earlier one, keeping
/// the leases that still fit.
async fn dhcp_post(
    AxState(app): AxState<Arc<App>>,
    Path(uuid): Path<String>,
    AnyJson(v): AnyJson,
) -> R {
    let cfg: crate::vlan::DhcpConfig = match serde_json::from_value(v) {
        Ok(c) => c,
        Err(e) => {
            return bad(format!(
                "body must be {{\"cidr\": \"192.168.50.0/24\", \"range\": [first, last], \"server\": addr, \"lease_secs\": n}} (only cidr required): {e}"
            ))
        }
    };
    if let Err(e) = app.set_vlan_dhcp(&uuid, Some(cfg)).await {
        return dhcp_error(e);
    }
    dhcp_reply(&app, &uuid).await
}

/// Stop the DHCP server of a VLAN (addresses already handed out stay in the guests).
async fn dhcp_delete(AxState(app): AxState<Arc<App>>, Path(uuid): Path<String>) -> R {
    if let Err(e) = app.set_vlan_dhcp(&uuid, None).await {
        return dhcp_error(e);
    }
    dhcp_reply(&app, &uuid).await
}
