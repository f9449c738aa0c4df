//! Servers: create, update, delete (with `recurse`), clone; which drives each one holds.

use cloudsigma_api::{DriveStatus, IpConfMode, Ref, Server, ServerDrive, ServerStatus};
use serde_json::{json, Value};
use std::time::Instant;

use super::parse::{action_body, body_objects};
use super::{get_str, guest_state, new_uuid, parse_meta, parse_refs, ClonedDrive, State};
use crate::error::ApiError;

impl State {
    pub(super) fn attach_drives(&mut self, server: &str, drives: &[ServerDrive]) {
        for d in drives {
            let list = self.attach.entry(d.drive.uuid().to_string()).or_default();
            if !list.iter().any(|s| s == server) {
                list.push(server.to_string());
            }
        }
    }

    pub(super) fn detach_drives(&mut self, server: &str) {
        let drives: Vec<String> = self
            .servers
            .get(server)
            .map(|s| {
                s.drives
                    .iter()
                    .map(|d| d.drive.uuid().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for d in drives {
            if let Some(list) = self.attach.get_mut(&d) {
                list.retain(|s| s != server);
                if list.is_empty() {
                    self.attach.remove(&d);
                }
            }
        }
    }

    pub fn create_servers(&mut self, items: &[Value]) -> Result<Vec<Server>, ApiError> {
        // validate all first so a bad item creates nothing (not even a reserved MAC)
        let mut built = Vec::new();
        let macs = self.macs.clone();
        for o in body_objects(items)? {
            match self.server_from_body(o, None) {
                Ok(b) => built.push(b),
                Err(e) => {
                    self.macs = macs;
                    return Err(e);
                }
            }
        }
        let mut out = Vec::new();
        for (s, tags) in built {
            let uuid = s.uuid.clone();
            self.attach_drives(&uuid, &s.drives);
            self.servers.insert(uuid.clone(), s);
            self.set_resource_tags(&uuid, &tags);
            out.push(self.render_server(&self.servers[&uuid]));
        }
        self.touch();
        Ok(out)
    }

    pub fn get_server(&self, uuid: &str) -> Result<&Server, ApiError> {
        self.servers
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("server", uuid))
    }

    /// A server as `GET /servers/{uuid}/` (and its `runtime/`) sees it: a live one, or one being
    /// deleted (status `deleting`, see [`State::delete_server`]).
    pub fn view_server(&self, uuid: &str) -> Result<&Server, ApiError> {
        self.get_server(uuid).or_else(|e| {
            self.deleting
                .get(uuid)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, s)| s)
                .ok_or(e)
        })
    }

    /// The servers being deleted, as lists show them after the live ones.
    pub fn deleting_servers(&self) -> impl Iterator<Item = &Server> {
        let now = Instant::now();
        self.deleting
            .values()
            .filter(move |(until, _)| *until > now)
            .map(|(_, s)| s)
    }

    pub fn update_server(&mut self, uuid: &str, body: &Value) -> Result<Server, ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        self.refuse_if_deleting(uuid, "update")?;
        let existing = self.get_server(uuid)?.clone();
        if existing.status != ServerStatus::Stopped {
            // [V reference] while running only name, meta and tags apply; others are ignored.
            // meta is replaced wholesale. `drives` hot-plugs (see hotplug.rs).
            let mut s = existing.clone();
            if let Some(d) = o.get("drives").filter(|v| !v.is_null()) {
                s.drives = self.hotplug_drives(uuid, d)?;
            }
            if let Some(n) = get_str(o, "name")? {
                if n.trim().is_empty() {
                    return Err(ApiError::validation("name must not be empty", Some("name")));
                }
                s.name = n;
            }
            if let Some(m) = o.get("meta").filter(|v| !v.is_null()) {
                s.meta = parse_meta(m)?;
            }
            if let Some(t) = o.get("tags").filter(|v| !v.is_null()) {
                let tags = parse_refs(t, "tags")?;
                self.validate_refs_tags(&tags)?;
                self.set_resource_tags(uuid, &tags);
            }
            self.detach_drives(uuid);
            self.attach_drives(uuid, &s.drives);
            self.servers.insert(uuid.to_string(), s);
        } else {
            let macs = self.macs.clone();
            let (mut s, tags) = match self.server_from_body(o, Some(&existing)) {
                Ok(b) => b,
                Err(e) => {
                    // a refused PUT reserves no MAC
                    self.macs = macs;
                    return Err(e);
                }
            };
            // MACs of NICs that were dropped become free again
            for n in &existing.nics {
                if let Some(m) = &n.mac {
                    if !s.nics.iter().any(|x| x.mac.as_ref() == Some(m)) {
                        self.macs.remove(m);
                    }
                }
            }
            s.status = existing.status;
            self.detach_drives(uuid);
            self.attach_drives(uuid, &s.drives);
            self.servers.insert(uuid.to_string(), s);
            self.set_resource_tags(uuid, &tags);
        }
        self.touch();
        Ok(self.render_server(&self.servers[uuid]))
    }

    /// Validate a delete and return the drives `recurse` will delete.
    pub fn plan_delete_server(
        &self,
        uuid: &str,
        recurse: Option<&str>,
    ) -> Result<Vec<String>, ApiError> {
        self.refuse_if_deleting(uuid, "delete")?;
        let s = self.get_server(uuid)?;
        if s.status != ServerStatus::Stopped {
            // [D reference] deleting a running server is refused. [V kube-dc
            // cluster-api-provider-cloudsigma controllers/cloudsigmamachine_controller.go] the
            // real message contains `in state 'stopping'` (single quotes), which that client
            // matches to treat a delete of a stopping server as done.
            return Err(ApiError::permission(format!(
                "Cannot delete guest in state '{}'. Guest should be in state 'stopped'",
                guest_state(s.status)
            )));
        }
        let media: Option<&[&str]> = match recurse {
            None | Some("") | Some("none") => None,
            Some("all_drives") => Some(&["disk", "cdrom"]),
            Some("disks") => Some(&["disk"]),
            Some("cdroms") => Some(&["cdrom"]),
            Some(other) => {
                return Err(ApiError::validation(
                    format!("recurse {other:?} is not one of all_drives, disks, cdroms"),
                    Some("recurse"),
                ))
            }
        };
        let Some(media) = media else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for d in &s.drives {
            let du = d.drive.uuid();
            if let Some(drive) = self.drives.get(du) {
                // [D] drives also attached to another server are kept
                let others = self
                    .attach
                    .get(du)
                    .map(|v| v.iter().any(|x| x != uuid))
                    .unwrap_or(false);
                if media.contains(&drive.media.as_str()) && !others {
                    out.push(du.to_string());
                }
            }
        }
        Ok(out)
    }

    /// [V kube-dc cluster-api-provider-cloudsigma controllers/cloudsigmamachine_controller.go]
    /// a server being deleted refuses a second DELETE with a message containing
    /// `in state 'deleting'`; that controller GETs the server first and only DELETEs "if it still
    /// exists", so a server being deleted is still visible. [D] For `timings.server_stop` after
    /// a DELETE the server stays in GET and lists with status `deleting` (no runtime), and a
    /// DELETE, PUT or action on its uuid is refused that way; then it is gone (404).
    pub(super) fn refuse_if_deleting(&self, uuid: &str, verb: &str) -> Result<(), ApiError> {
        match self.deleting.get(uuid) {
            Some((until, _)) if *until > Instant::now() => Err(ApiError::permission(format!(
                "Cannot {verb} guest in state 'deleting'. The server is being deleted"
            ))),
            _ => Ok(()),
        }
    }

    pub fn delete_server(&mut self, uuid: &str, drives: &[String]) {
        let now = Instant::now();
        self.deleting.retain(|_, (until, _)| *until > now);
        if let Some(s) = self.servers.get(uuid) {
            let mut ghost = s.clone();
            ghost.status = ServerStatus::Deleting;
            ghost.runtime = None;
            for n in &mut ghost.nics {
                n.runtime = None;
            }
            // [D] the drives a recursive delete removes go with the server at once: the
            // server being deleted must not list drives that GET /drives/ answers 404 for.
            // Drives it keeps (not recursed, or also on another server) still exist and stay
            // listed.
            ghost
                .drives
                .retain(|d| !drives.iter().any(|x| x == d.drive.uuid()));
            self.deleting
                .insert(uuid.to_string(), (now + self.timings.server_stop, ghost));
        }
        self.unplace_server(uuid);
        self.detach_drives(uuid);
        if let Some(s) = self.servers.shift_remove(uuid) {
            for n in &s.nics {
                if let Some(m) = &n.mac {
                    self.macs.remove(m);
                }
            }
        }
        self.used_ips.retain(|_, s| s != uuid);
        self.forget_resource(uuid);
        for d in drives {
            self.remove_drive(d);
        }
        self.touch();
    }

    /// `POST /servers/{uuid}/action/?do=clone` [V docs servers.rst "Cloning"]: disks are cloned
    /// and attached to the new server, cdroms attached as they are, IPs set to DHCP, everything
    /// else equal; optional body `name`, `random_vnc_password`. Answers the new (stopped) server.
    /// [D] the clone gets fresh MACs, no tags, and a clone name defaults to the source name
    /// (clone_naming profile `NONE`, the documented default).
    /// `avoid`: the `?avoid=` list for the cloned disks ([V docs availability_groups.rst]).
    pub fn clone_server(
        &mut self,
        uuid: &str,
        body: &Value,
        avoid: &[String],
    ) -> Result<(Server, Vec<ClonedDrive>), ApiError> {
        let o = action_body(body)?;
        let src = self.get_server(uuid)?.clone();
        let name = match get_str(&o, "name")? {
            Some(n) if n.trim().is_empty() => {
                return Err(ApiError::validation("name must not be empty", Some("name")))
            }
            Some(n) => n,
            None => src.name.clone(),
        };
        let random_vnc = matches!(o.get("random_vnc_password"), Some(Value::Bool(true)));
        // check every disk first so a refusal clones nothing
        for d in &src.drives {
            if let Some(drive) = self.drives.get(d.drive.uuid()) {
                if drive.media == "disk"
                    && !matches!(
                        drive.status,
                        DriveStatus::Unmounted | DriveStatus::CloningSrc
                    )
                {
                    return Err(ApiError::permission(format!(
                        "Cannot clone server {uuid}: drive {} is in state \"{}\"",
                        drive.uuid, drive.status
                    )));
                }
            }
        }
        let mut cloned = Vec::new();
        let mut drives = Vec::new();
        for d in &src.drives {
            let du = d.drive.uuid().to_string();
            let media = self
                .drives
                .get(&du)
                .map(|x| x.media.clone())
                .unwrap_or_default();
            let mut nd = d.clone();
            if media == "disk" {
                let (new_drive, _) = self.clone_drive(&du, &json!({}), avoid)?;
                cloned.push((du, new_drive.uuid.clone(), new_drive.size));
                nd.drive = Ref::to_resource("drives", &new_drive.uuid);
            }
            drives.push(nd);
        }
        let mut nics = Vec::new();
        for n in &src.nics {
            let mut n = n.clone();
            n.mac = Some(self.new_mac());
            n.runtime = None;
            if let Some(c) = n.ip_v4_conf.as_mut() {
                if c.conf == IpConfMode::Static {
                    c.conf = IpConfMode::Dhcp;
                    c.ip = None;
                }
            }
            nics.push(n);
        }
        let new_uuid_ = new_uuid();
        let mut extra = src.extra.clone();
        let job = new_uuid();
        extra.insert(
            "jobs".into(),
            json!([{"resource_uri": format!("/api/2.0/jobs/{job}/"), "uuid": job}]),
        );
        let vnc_password = if random_vnc {
            let b: [u8; 6] = rand::random();
            Some(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        } else {
            src.vnc_password.clone()
        };
        let server = Server {
            uuid: new_uuid_.clone(),
            name,
            status: ServerStatus::Stopped,
            vnc_password,
            drives,
            nics,
            tags: Vec::new(),
            runtime: None,
            resource_uri: None,
            owner: None,
            extra,
            ..src
        };
        self.attach_drives(&new_uuid_, &server.drives);
        self.servers.insert(new_uuid_.clone(), server);
        self.touch();
        Ok((self.render_server(&self.servers[&new_uuid_]), cloned))
    }
}
