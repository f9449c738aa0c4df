//! One object: GET, create (POST on the list), PUT, DELETE and bulk DELETE, with the backend hooks
//! a change needs (a refused hook undoes the state change).

use axum::body::Bytes;
use axum::http::StatusCode;
use std::sync::Arc;

use super::{create_items, parse_body, q, Query, Reply};
use crate::app::App;
use crate::error::ApiError;

pub(super) fn get_one(app: &Arc<App>, res: &str, uuid: &str) -> Result<Reply, ApiError> {
    let st = app.lock();
    match res {
        "servers" => Reply::json(StatusCode::OK, &st.render_server(st.view_server(uuid)?)),
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

/// `avoid`: the `?avoid=` list (drives only, see state/placement.rs).
pub(super) async fn create(
    app: &Arc<App>,
    res: &str,
    avoid: &[String],
    body: &Bytes,
) -> Result<Reply, ApiError> {
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
            let created = app.lock().create_drives(&items, avoid)?;
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

pub(super) async fn update(
    app: &Arc<App>,
    res: &str,
    uuid: &str,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let v = parse_body(body)?;
    match res {
        "servers" => {
            let before = app.lock().get_server(uuid).ok().map(|s| s.drives.clone());
            let s = app.lock().update_server(uuid, &v)?;
            if let Some(before) = before {
                let (attached, detached) = app.lock().hotplug_diff(uuid, &before);
                if !attached.is_empty() || !detached.is_empty() {
                    if let Err(e) = app
                        .backend
                        .server_drives_changed(uuid, &attached, &detached)
                        .await
                    {
                        app.lock().restore_server_drives(uuid, before);
                        return Err(ApiError::backend(format!(
                            "Backend could not hot-plug drives of server {uuid}: {e}"
                        )));
                    }
                }
            }
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

pub(super) async fn delete(
    app: &Arc<App>,
    res: &str,
    uuid: &str,
    query: &Query,
) -> Result<Reply, ApiError> {
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

pub(super) async fn bulk_delete(
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
