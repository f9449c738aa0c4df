//! `POST /{servers|drives|libdrives}/{uuid}/action/?do=...`: the state machine step, then the
//! backend hook outside the lock (a refused hook rolls the step back).

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::json;
use std::sync::Arc;

use super::{avoid, parse_body, q, Query, Reply};
use crate::app::App;
use crate::error::ApiError;

fn action_reply(action: &str, uuid: &str) -> Result<Reply, ApiError> {
    // [V SDK/docs] 202 {"action", "result": "success", "uuid"}
    Reply::json(
        StatusCode::ACCEPTED,
        &json!({"action": action, "result": "success", "uuid": uuid}),
    )
}

pub(super) async fn action(
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
                st.begin_start(uuid, &avoid(query), &|i| backend.runtime_ip(&u, i), ctx)?
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
            let (server, cloned) = app.lock().clone_server(uuid, &v, &avoid(query))?;
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
            let (d, is_lib) = app.lock().clone_drive(uuid, &v, &avoid(query))?;
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
