//! List endpoints: `limit`/`offset` paging, `fields`, the filters, and `/tags/{uuid}/<kind>/`.

use axum::http::StatusCode;
use cloudsigma_api::ListMeta;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

use super::{q, Query, Reply, DEFAULT_LIMIT};
use crate::app::App;
use crate::error::ApiError;
use crate::state::Kind;

pub(super) struct Page {
    limit: u64,
    offset: u64,
    fields: Option<Vec<String>>,
}

pub(super) fn page_params(query: &Query) -> Result<Page, ApiError> {
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
pub(super) fn paginate<T, F, R>(items: &[T], p: &Page, render: F) -> Result<Reply, ApiError>
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
pub(super) struct Filter {
    name: Option<Vec<String>>,
    name_contains: Option<String>,
    name_icontains: Option<String>,
    uuid: Option<Vec<String>>,
    status: Option<Vec<String>>,
    tag: Option<Vec<String>>,
}

impl Filter {
    pub(super) fn from(query: &Query) -> Filter {
        Filter {
            name: any_of(query, "name"),
            name_contains: q(query, "name__contains").map(str::to_string),
            name_icontains: q(query, "name__icontains").map(|s| s.to_lowercase()),
            uuid: any_of(query, "uuid"),
            status: any_of(query, "status"),
            tag: any_of(query, "tag"),
        }
    }
    pub(super) fn pass(
        &self,
        st: &crate::state::State,
        uuid: &str,
        name: &str,
        status: &str,
    ) -> bool {
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

pub(super) fn list(
    app: &Arc<App>,
    res: &str,
    detail: bool,
    query: &Query,
) -> Result<Reply, ApiError> {
    let p = page_params(query)?;
    let f = Filter::from(query);
    let st = app.lock();
    match res {
        "servers" => {
            let items: Vec<&cloudsigma_api::Server> = st
                .servers
                .values()
                .chain(st.deleting_servers())
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

pub(super) fn tagged(
    app: &Arc<App>,
    tag: &str,
    kind: &str,
    query: &Query,
) -> Result<Reply, ApiError> {
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
