//! Drives: create, update (a new size resizes), the resize action, clone (account and library
//! drives), delete.

use cloudsigma_api::{Drive, DriveStatus, LibDrive, Meta};
use serde_json::{json, Map, Value};

use super::parse::{action_body, body_objects, default_drive_extra};
use super::{get_str, get_u64, new_uuid, State, Transition};
use crate::error::ApiError;

impl State {
    /// `POST /drives/` items; `avoid` is the `?avoid=` list ([V docs availability_groups.rst]).
    pub fn create_drives(
        &mut self,
        items: &[Value],
        avoid: &[String],
    ) -> Result<Vec<Drive>, ApiError> {
        let mut built = Vec::new();
        for o in body_objects(items)? {
            built.push(self.drive_from_body(o, None)?);
        }
        let mut out = Vec::new();
        let after = self.timings.drive_create;
        for (d, tags) in built {
            let uuid = d.uuid.clone();
            self.drives.insert(uuid.clone(), d);
            self.set_resource_tags(&uuid, &tags);
            self.place_drive(&uuid, avoid);
            self.drive_ready_after(&uuid, after);
            out.push(self.render_drive(&self.drives[&uuid]));
        }
        self.touch();
        Ok(out)
    }

    pub fn get_drive(&self, uuid: &str) -> Result<&Drive, ApiError> {
        self.drives
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("drive", uuid))
    }

    /// PUT a drive. A changed `size` is a resize (same rules as the action) [D]; returns whether
    /// a resize started.
    pub fn update_drive(&mut self, uuid: &str, body: &Value) -> Result<(Drive, bool), ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        let existing = self.get_drive(uuid)?.clone();
        let (mut d, tags) = self.drive_from_body(o, Some(&existing))?;
        if self.is_mounted(uuid) {
            // [V docs drives.rst "Editing"] on a drive mounted on a running server only name,
            // meta, tags and allow_multimount change; size, media etc. are silently ignored
            // (the resize action is the "update or fail" variant).
            let mut kept = existing.clone();
            kept.name = d.name;
            kept.meta = d.meta;
            kept.allow_multimount = d.allow_multimount;
            self.drives.insert(uuid.to_string(), kept);
            self.set_resource_tags(uuid, &tags);
            self.touch();
            return Ok((self.render_drive(&self.drives[uuid]), false));
        }
        let resizing = d.size != existing.size;
        if resizing {
            // [V docs] "changing drive size might be a slow operation, and the drive cannot be
            // used during the resizing": a PUT with a new size goes through `resizing`
            self.check_resizable(&existing, d.size)?;
            d.status = DriveStatus::Resizing;
            self.drive_ready_after(uuid, self.timings.drive_resize);
        }
        self.drives.insert(uuid.to_string(), d);
        self.set_resource_tags(uuid, &tags);
        self.touch();
        Ok((self.render_drive(&self.drives[uuid]), resizing))
    }

    /// The drive's transitional status ends (→ `unmounted`) after `after`.
    fn drive_ready_after(&mut self, uuid: &str, after: std::time::Duration) {
        let gen = self.bump_gen(uuid);
        self.schedule(
            after,
            Transition::Drive {
                uuid: uuid.into(),
                gen,
                to: DriveStatus::Unmounted,
            },
        );
    }

    fn check_resizable(&self, d: &Drive, new_size: u64) -> Result<(), ApiError> {
        // [V reference] resize is refused while mounted on a running server
        if self.is_mounted(&d.uuid) {
            return Err(ApiError::permission(format!(
                "Cannot resize drive {} in state \"mounted\"; stop the server it is mounted on first",
                d.uuid
            )));
        }
        if d.status != DriveStatus::Unmounted {
            return Err(ApiError::permission(format!(
                "Cannot resize drive {} in state \"{}\"; wait until it is \"unmounted\"",
                d.uuid, d.status
            )));
        }
        // [D] shrinking is refused
        if new_size < d.size {
            return Err(ApiError::validation(
                format!(
                    "New size {new_size} is smaller than the current size {}",
                    d.size
                ),
                Some("size"),
            ));
        }
        Ok(())
    }

    /// [V docs drives.rst "Resizing (Update or Fail)"] a full definition update (name, meta, ...
    /// too) that fails instead of ignoring the size when the drive is mounted on a running server.
    pub fn resize_drive(&mut self, uuid: &str, body: &Value) -> Result<Drive, ApiError> {
        let existing = self.get_drive(uuid)?.clone();
        let o = body.as_object().ok_or_else(|| {
            ApiError::validation("Request body must be the drive definition", None)
        })?;
        if get_u64(o, "size")?.is_none() {
            return Err(ApiError::validation(
                "resize needs the drive definition with the new size",
                Some("size"),
            ));
        }
        let (mut d, tags) = self.drive_from_body(o, Some(&existing))?;
        self.check_resizable(&existing, d.size)?;
        d.status = DriveStatus::Resizing;
        self.drives.insert(uuid.to_string(), d);
        self.set_resource_tags(uuid, &tags);
        self.drive_ready_after(uuid, self.timings.drive_resize);
        self.touch();
        Ok(self.render_drive(&self.drives[uuid]))
    }

    /// Clone a drive or a library drive into a new account drive (`cloning_dst`).
    /// Returns the new drive, whether the source was a library drive, and the size.
    /// `avoid`: the `?avoid=` list ([V docs availability_groups.rst]).
    pub fn clone_drive(
        &mut self,
        src: &str,
        body: &Value,
        avoid: &[String],
    ) -> Result<(Drive, bool), ApiError> {
        let o = action_body(body)?;
        let source = self.clone_source(src)?;
        let d = clone_from_body(&o, source.clone_fields)?;
        let uuid = d.uuid.clone();
        self.drives.insert(uuid.clone(), d);
        self.place_drive(&uuid, avoid);
        let after = self.timings.drive_clone;
        self.drive_ready_after(&uuid, after);
        // [D] cloning a drive mounted on a running server is allowed (a live copy); it keeps
        // showing `mounted` instead of `cloning_src`.
        if !source.is_lib && !self.is_mounted(src) {
            self.mark_cloning_src(src, source.status, after);
        }
        self.touch();
        Ok((self.render_drive(&self.drives[&uuid]), source.is_lib))
    }

    /// What a clone takes from its source (an account drive or a library drive).
    fn clone_source(&self, src: &str) -> Result<CloneSource, ApiError> {
        if let Some(d) = self.drives.get(src) {
            if !matches!(d.status, DriveStatus::Unmounted | DriveStatus::CloningSrc) {
                return Err(ApiError::permission(format!(
                    "Cannot clone drive {src} in state \"{}\"; wait until it is \"unmounted\"",
                    d.status
                )));
            }
            Ok(CloneSource {
                clone_fields: CloneFields {
                    name: d.name.clone(),
                    media: d.media.clone(),
                    size: d.size,
                    storage_type: d.storage_type.clone(),
                    meta: d.meta.clone(),
                },
                is_lib: false,
                status: d.status,
            })
        } else if let Some(l) = self.libdrives.get(src) {
            Ok(CloneSource {
                clone_fields: CloneFields {
                    name: l.name.clone(),
                    media: l.media.clone(),
                    size: l.size,
                    storage_type: None,
                    meta: library_clone_meta(l),
                },
                is_lib: true,
                status: DriveStatus::Unmounted,
            })
        } else {
            Err(ApiError::notexist("drive", src))
        }
    }

    /// An account drive being cloned shows `cloning_src` until its last clone is done, then
    /// goes back to `status` (its status before the first clone).
    fn mark_cloning_src(&mut self, src: &str, status: DriveStatus, after: std::time::Duration) {
        *self.clone_refs.entry(src.to_string()).or_insert(0) += 1;
        let back = if status == DriveStatus::CloningSrc {
            DriveStatus::Unmounted
        } else {
            status
        };
        if let Some(s) = self.drives.get_mut(src) {
            s.status = DriveStatus::CloningSrc;
        }
        self.schedule(
            after,
            Transition::CloneSrcDone {
                uuid: src.to_string(),
                to: back,
            },
        );
    }

    /// Validate a delete: a drive mounted on a running server or busy is refused.
    pub fn plan_delete_drive(&self, uuid: &str) -> Result<(), ApiError> {
        let d = self.get_drive(uuid)?;
        // [V dumps] a drive mounted on a running server cannot be deleted
        if self.is_mounted(uuid) {
            return Err(ApiError::permission(format!(
                "Cannot delete drive {uuid} in state \"mounted\"; stop the server it is mounted on first"
            )));
        }
        // [D] busy drives (creating, cloning, resizing) cannot be deleted either
        if d.status != DriveStatus::Unmounted {
            return Err(ApiError::permission(format!(
                "Cannot delete drive {uuid} in state \"{}\"; wait until it is \"unmounted\"",
                d.status
            )));
        }
        Ok(())
    }

    pub fn delete_drive(&mut self, uuid: &str) {
        self.remove_drive(uuid);
        self.touch();
    }

    pub(super) fn remove_drive(&mut self, uuid: &str) {
        // [D] deleting a drive attached to a stopped server detaches it from that server
        if let Some(servers) = self.attach.remove(uuid) {
            for s in servers {
                if let Some(sv) = self.servers.get_mut(&s) {
                    sv.drives.retain(|d| d.drive.uuid() != uuid);
                }
            }
        }
        self.drives.shift_remove(uuid);
        self.drive_host.remove(uuid);
        self.clone_refs.remove(uuid);
        self.forget_resource(uuid);
    }
}

/// The source's fields a clone starts from (the body may override name, media, size,
/// storage_type).
struct CloneFields {
    name: String,
    media: String,
    size: u64,
    storage_type: Option<String>,
    meta: Meta,
}

struct CloneSource {
    clone_fields: CloneFields,
    is_lib: bool,
    /// The source's status (a library drive counts as unmounted).
    status: DriveStatus,
}

/// [V reference] library fields are copied into the clone's meta
fn library_clone_meta(l: &LibDrive) -> Meta {
    let mut meta = Meta::new();
    for (k, v) in [
        ("os", &l.os),
        ("distribution", &l.distribution),
        ("version", &l.version),
        ("arch", &l.arch),
        ("image_type", &l.image_type),
        ("default_user", &l.default_user),
        ("description", &l.description),
    ] {
        if let Some(v) = v {
            meta.insert(k.to_string(), v.clone());
        }
    }
    if let Some(c) = l.cloud_init_service {
        meta.insert("cloud_init_service".into(), c.to_string());
    }
    meta.insert("cloned_from_library".into(), l.uuid.clone());
    meta
}

/// The new drive (`cloning_dst`, a fresh uuid and job) from the clone body and the source.
fn clone_from_body(o: &Map<String, Value>, src: CloneFields) -> Result<Drive, ApiError> {
    let new_name = get_str(o, "name")?.unwrap_or(src.name);
    let new_media = get_str(o, "media")?.unwrap_or(src.media);
    if new_media != "disk" && new_media != "cdrom" {
        return Err(ApiError::validation(
            format!("media {new_media:?} is not one of disk, cdrom"),
            Some("media"),
        ));
    }
    let size = src.size;
    let new_size = match get_u64(o, "size")? {
        // [V reference] size must be ≥ the source's
        Some(s) if s < size => {
            return Err(ApiError::validation(
                format!("size {s} is smaller than the source drive's size {size}"),
                Some("size"),
            ))
        }
        Some(s) => s,
        None => size,
    };
    let storage_type = get_str(o, "storage_type")?
        .or(src.storage_type)
        .unwrap_or_else(|| "dssd".into());
    let affinities = match o.get("affinities") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let mut extra = default_drive_extra(&storage_type);
    let job = new_uuid();
    extra.insert(
        "jobs".into(),
        json!([{"resource_uri": format!("/api/2.0/jobs/{job}/"), "uuid": job}]),
    );
    Ok(Drive {
        uuid: new_uuid(),
        name: new_name,
        size: new_size,
        media: new_media,
        status: DriveStatus::CloningDst,
        storage_type: Some(storage_type),
        mounted_on: Vec::new(),
        meta: src.meta,
        tags: Vec::new(),
        affinities,
        allow_multimount: false,
        resource_uri: None,
        owner: None,
        extra,
    })
}
