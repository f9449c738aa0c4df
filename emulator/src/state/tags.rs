//! Tags: the `/tags/` resource and the tag set each server, drive, IP and VLAN carries (kept
//! in one index, `tags_of`, so both directions stay consistent).

use cloudsigma_api::{Meta, Ref, Tag};
use serde_json::Value;
use std::collections::BTreeSet;

use super::{get_str, new_uuid, parse_meta, parse_refs, Kind, State};
use crate::error::ApiError;

impl State {
    pub(super) fn tag_refs(&self, res: &str) -> Vec<Ref> {
        self.tags_of
            .get(res)
            .map(|set| set.iter().map(|t| Ref::to_resource("tags", t)).collect())
            .unwrap_or_default()
    }

    /// Replace the set of tags a resource carries, keeping each tag's `resources` consistent.
    pub(super) fn set_resource_tags(&mut self, res: &str, tags: &[String]) {
        let old = self.tags_of.remove(res).unwrap_or_default();
        for t in &old {
            if let Some(tag) = self.tags.get_mut(t) {
                tag.resources.retain(|r| r.uuid() != res);
            }
        }
        let mut new = BTreeSet::new();
        for t in tags {
            if let Some(tag) = self.tags.get_mut(t) {
                if !tag.resources.iter().any(|r| r.uuid() == res) {
                    tag.resources.push(Ref::Uuid(res.to_string()));
                }
                new.insert(t.clone());
            }
        }
        if !new.is_empty() {
            self.tags_of.insert(res.to_string(), new);
        }
    }

    /// Set the tags of any resource after checking they exist.
    pub fn set_tags_public(&mut self, res: &str, tags: &[String]) -> Result<(), ApiError> {
        self.validate_refs_tags(tags)?;
        self.set_resource_tags(res, tags);
        Ok(())
    }

    pub(super) fn forget_resource(&mut self, res: &str) {
        self.set_resource_tags(res, &[]);
        self.gens.remove(res);
    }

    pub(super) fn validate_refs_tags(&self, tags: &[String]) -> Result<(), ApiError> {
        for t in tags {
            if !self.tags.contains_key(t) {
                return Err(ApiError::validation(
                    format!("Tag {t} does not exist"),
                    Some("tags"),
                ));
            }
        }
        Ok(())
    }

    pub fn create_tags(&mut self, items: &[Value]) -> Result<Vec<Value>, ApiError> {
        let mut built = Vec::new();
        for o in super::parse::body_objects(items)? {
            let name = get_str(o, "name")?
                .ok_or_else(|| ApiError::validation("This field is required", Some("name")))?;
            let resources = match o.get("resources") {
                Some(v) if !v.is_null() => parse_refs(v, "resources")?,
                _ => Vec::new(),
            };
            for r in &resources {
                if self.kind_of(r).is_none() {
                    return Err(ApiError::validation(
                        format!("Resource {r} does not exist"),
                        Some("resources"),
                    ));
                }
            }
            let meta = match o.get("meta") {
                Some(v) if !v.is_null() => parse_meta(v)?,
                _ => Meta::new(),
            };
            built.push((name, resources, meta));
        }
        let mut out = Vec::new();
        for (name, resources, meta) in built {
            let uuid = new_uuid();
            self.tags.insert(
                uuid.clone(),
                Tag {
                    uuid: uuid.clone(),
                    name,
                    resources: Vec::new(),
                    meta,
                    resource_uri: None,
                    extra: Default::default(),
                },
            );
            self.set_tag_resources(&uuid, &resources);
            out.push(self.render_tag(&self.tags[&uuid]));
        }
        self.touch();
        Ok(out)
    }

    fn set_tag_resources(&mut self, tag: &str, resources: &[String]) {
        if let Some(t) = self.tags.get(tag) {
            let old: Vec<String> = t.resources.iter().map(|r| r.uuid().to_string()).collect();
            for r in old {
                if let Some(set) = self.tags_of.get_mut(&r) {
                    set.remove(tag);
                    if set.is_empty() {
                        self.tags_of.remove(&r);
                    }
                }
            }
        }
        let mut uniq = Vec::new();
        for r in resources {
            if !uniq.contains(r) {
                uniq.push(r.clone());
                self.tags_of
                    .entry(r.clone())
                    .or_default()
                    .insert(tag.to_string());
            }
        }
        if let Some(t) = self.tags.get_mut(tag) {
            t.resources = uniq.into_iter().map(Ref::Uuid).collect();
        }
    }

    pub fn get_tag(&self, uuid: &str) -> Result<&Tag, ApiError> {
        self.tags
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("tag", uuid))
    }

    pub fn update_tag(&mut self, uuid: &str, body: &Value) -> Result<Value, ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        self.get_tag(uuid)?;
        let name = get_str(o, "name")?;
        if let Some(n) = &name {
            if n.trim().is_empty() {
                return Err(ApiError::validation("name must not be empty", Some("name")));
            }
        }
        let resources = match o.get("resources") {
            Some(v) if !v.is_null() => {
                let r = parse_refs(v, "resources")?;
                for x in &r {
                    if self.kind_of(x).is_none() {
                        return Err(ApiError::validation(
                            format!("Resource {x} does not exist"),
                            Some("resources"),
                        ));
                    }
                }
                Some(r)
            }
            _ => None,
        };
        let meta = match o.get("meta") {
            Some(v) if !v.is_null() => Some(parse_meta(v)?),
            _ => None,
        };
        if let Some(r) = resources {
            self.set_tag_resources(uuid, &r);
        }
        if let Some(t) = self.tags.get_mut(uuid) {
            if let Some(n) = name {
                t.name = n;
            }
            if let Some(m) = meta {
                t.meta = m;
            }
        }
        self.touch();
        Ok(self.render_tag(&self.tags[uuid]))
    }

    pub fn delete_tag(&mut self, uuid: &str) -> Result<(), ApiError> {
        self.get_tag(uuid)?;
        self.set_tag_resources(uuid, &[]);
        self.tags.shift_remove(uuid);
        self.touch();
        Ok(())
    }

    /// Resources of one kind carrying a tag.
    pub fn tagged(&self, tag: &str, kind: Kind) -> Result<Vec<String>, ApiError> {
        let t = self.get_tag(tag)?;
        Ok(t.resources
            .iter()
            .map(|r| r.uuid().to_string())
            .filter(|u| self.kind_of(u) == Some(kind))
            .collect())
    }
}
