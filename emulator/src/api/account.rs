//! Account-level endpoints: `/profile/`, `/capabilities/`, `/keypairs/`, `/pubkeys/` and the
//! `availability_groups` of servers and drives. The rules live in `state/account.rs` and
//! `state/placement.rs`; this file maps methods and paths onto them.

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use std::sync::Arc;

use super::lists::{page_params, paginate, Filter};
use super::{create_items, method_not_allowed, parse_body, Query, Reply};
use crate::app::App;
use crate::error::ApiError;
use crate::keygen::KeygenError;

/// `GET|PUT /profile/` [V docs profile.rst]: a single object, not a list.
pub(super) fn profile(app: &Arc<App>, method: &Method, body: &Bytes) -> Result<Reply, ApiError> {
    match *method {
        Method::GET => Reply::json(StatusCode::OK, &app.lock().render_profile(&app.username)),
        Method::PUT => {
            let v = parse_body(body)?;
            let mut st = app.lock();
            st.update_profile(&v)?;
            Reply::json(StatusCode::OK, &st.render_profile(&app.username))
        }
        _ => Err(method_not_allowed(method, "GET, PUT")),
    }
}

/// `GET /capabilities/` [V docs capabilities.rst, dumps/response_capabilities].
pub(super) fn capabilities(method: &Method) -> Result<Reply, ApiError> {
    match *method {
        Method::GET => Reply::json(StatusCode::OK, &crate::state::capabilities()),
        _ => Err(method_not_allowed(method, "GET")),
    }
}

/// `/keypairs/` (`pub_view` false) and its read-only twin `/pubkeys/` (true). `id` is the
/// segment after the resource: none, `detail`, or a uuid. [V dumps/response_keypair_list,
/// response_pubkeys_list] both list forms carry full objects.
pub(super) async fn keypairs(
    app: &Arc<App>,
    method: &Method,
    pub_view: bool,
    id: Option<&str>,
    query: &Query,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let what = if pub_view { "pubkey" } else { "keypair" };
    match (id, method.clone()) {
        (None | Some("detail"), Method::GET) => {
            let p = page_params(query)?;
            let f = Filter::from(query);
            let st = app.lock();
            let items: Vec<serde_json::Value> = st
                .keypairs
                .iter()
                .filter(|(u, k)| f.pass(&st, u, k["name"].as_str().unwrap_or(""), ""))
                .filter_map(|(u, _)| st.render_keypair(u, pub_view))
                .collect();
            paginate(&items, &p, |k| k.clone())
        }
        (None, Method::POST) if !pub_view => {
            let mut items = create_items(body)?;
            // outside the state lock: an RSA key takes a moment to make
            generate_missing_pairs(&mut items).await?;
            let created = app.lock().create_keypairs(&items)?;
            let first = created
                .first()
                .and_then(|k| k["uuid"].as_str().map(str::to_string));
            Reply::created("keypairs", first.as_deref(), &created)
        }
        (Some(u), Method::GET) if u != "detail" => {
            let k = app
                .lock()
                .render_keypair(u, pub_view)
                .ok_or_else(|| ApiError::notexist(what, u))?;
            Reply::json(StatusCode::OK, &k)
        }
        (Some(u), Method::PUT) if !pub_view && u != "detail" => {
            let k = app.lock().update_keypair(u, &parse_body(body)?)?;
            Reply::json(StatusCode::OK, &k)
        }
        (Some(u), Method::DELETE) if !pub_view && u != "detail" => {
            app.lock().delete_keypair(u)?;
            Ok(Reply::NoContent)
        }
        // [V docs keypairs.rst] pubkeys is "a read-only version of the keypairs resource"
        _ if pub_view => Err(method_not_allowed(method, "GET")),
        (None, _) => Err(method_not_allowed(method, "GET, POST")),
        (Some("detail"), _) => Err(method_not_allowed(method, "GET")),
        (Some(_), _) => Err(method_not_allowed(method, "GET, PUT, DELETE")),
    }
}

/// `GET /{servers|drives}/availability_groups/[{uuid}/]` [V docs availability_groups.rst]:
/// bare JSON arrays, no list envelope.
pub(super) fn availability_groups(
    app: &Arc<App>,
    method: &Method,
    res: &str,
    uuid: Option<&str>,
) -> Result<Reply, ApiError> {
    if *method != Method::GET {
        return Err(method_not_allowed(method, "GET"));
    }
    let st = app.lock();
    match (res, uuid) {
        ("servers", None) => Reply::json(StatusCode::OK, &st.server_groups()),
        ("servers", Some(u)) => Reply::json(StatusCode::OK, &st.server_group(u)?),
        (_, None) => Reply::json(StatusCode::OK, &st.drive_groups()),
        (_, Some(u)) => Reply::json(StatusCode::OK, &st.drive_group(u)?),
    }
}

/// [V docs keypairs.rst] an item with neither `public_key` nor `private_key` gets a generated
/// pair of its `algorithm_type` (default `rsa`; [V dumps/request_autogen_keypair_create] `rsa` or
/// `ed25519`). Both keys are written into the item, which is then stored like a given pair
/// (`algorithm_type` itself is not a field of the stored keypair, [V dumps/response_keypair_get]).
/// Every item is checked before any key is made, so a bad item costs no key generation.
async fn generate_missing_pairs(items: &mut [serde_json::Value]) -> Result<(), ApiError> {
    let mut wanted = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(o) = item.as_object() else {
            continue; // create_keypairs names the bad item
        };
        let given = |k: &str| o.get(k).is_some_and(|v| !v.is_null());
        let alg = match o.get("algorithm_type") {
            None | Some(serde_json::Value::Null) => "rsa",
            Some(serde_json::Value::String(a)) => a.as_str(),
            Some(_) => {
                return Err(ApiError::validation(
                    "algorithm_type must be a string: \"rsa\" or \"ed25519\"",
                    Some("algorithm_type"),
                ))
            }
        };
        if !crate::keygen::ALGORITHMS.contains(&alg) {
            return Err(ApiError::validation(
                format!(
                    "algorithm_type {alg:?} is not one of {}",
                    crate::keygen::ALGORITHMS.join(", ")
                ),
                Some("algorithm_type"),
            ));
        }
        if !given("public_key") && !given("private_key") {
            wanted.push((i, alg.to_string()));
        }
    }
    for (i, alg) in wanted {
        // off the runtime: an RSA key would stall every other request meanwhile
        let pair = crate::keygen::generate_blocking(&alg)
            .await
            .map_err(|e| match e {
                KeygenError::UnknownAlgorithm(_) => {
                    ApiError::validation(e.to_string(), Some("algorithm_type"))
                }
                KeygenError::Failed { .. } => ApiError::backend(e.to_string()),
            })?;
        if let Some(o) = items[i].as_object_mut() {
            o.insert("public_key".into(), pair.public_key.into());
            o.insert("private_key".into(), pair.private_key.into());
        }
    }
    Ok(())
}
