//! Request bodies → objects: the field rules, limits and validation refusals of create/PUT
//! bodies, and the small JSON readers the API handlers share.

use cloudsigma_api::{Drive, DriveStatus, Meta, Ref, Server, ServerDrive, ServerStatus};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

use super::{new_uuid, State};
use crate::error::ApiError;

impl State {
    /// `meta` and `tags` of a create/PUT body; a PUT that omits them keeps the resource's own.
    fn meta_and_tags(
        &self,
        o: &Map<String, Value>,
        existing: Option<(&str, &Meta)>,
    ) -> Result<(Meta, Vec<String>), ApiError> {
        let meta = match o.get("meta") {
            Some(v) if !v.is_null() => parse_meta(v)?,
            _ => existing.map(|(_, m)| m.clone()).unwrap_or_default(),
        };
        let tags = match o.get("tags") {
            Some(v) if !v.is_null() => parse_refs(v, "tags")?,
            _ => existing
                .and_then(|(uuid, _)| self.tags_of.get(uuid))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        };
        self.validate_refs_tags(&tags)?;
        Ok((meta, tags))
    }

    /// Build a server from a create/PUT body item. `existing` supplies unchanged fields for PUT.
    pub(super) fn server_from_body(
        &mut self,
        o: &Map<String, Value>,
        existing: Option<&Server>,
    ) -> Result<(Server, Vec<String>), ApiError> {
        let name = body_name(o, existing.map(|e| e.name.as_str()))?;
        let lim = SERVER_LIMITS;
        let cpu = limited(o, "cpu", existing.map(|e| e.cpu), lim.cpu, " MHz")?;
        let mem = limited(o, "mem", existing.map(|e| e.mem), lim.mem, " bytes")?;
        let smp = existing.map(|e| e.smp as u64).unwrap_or(1);
        let smp = limited(o, "smp", Some(smp), lim.smp, "")?;
        let vnc_password = match get_str(o, "vnc_password")? {
            Some(v) => Some(v),
            None => match existing {
                Some(e) => e.vnc_password.clone(),
                // [D reference] vnc_password is required on create
                None => {
                    return Err(ApiError::validation(
                        "This field is required",
                        Some("vnc_password"),
                    ))
                }
            },
        };
        let drives = match o.get("drives") {
            Some(v) if !v.is_null() => self.parse_server_drives(v)?,
            _ => existing.map(|e| e.drives.clone()).unwrap_or_default(),
        };
        let nics = match o.get("nics") {
            Some(v) if !v.is_null() => {
                self.parse_nics(v, existing, existing.map(|e| e.uuid.as_str()))?
            }
            _ => existing.map(|e| e.nics.clone()).unwrap_or_default(),
        };
        let (meta, tags) = self.meta_and_tags(o, existing.map(|e| (e.uuid.as_str(), &e.meta)))?;
        let pubkeys = match o.get("pubkeys") {
            Some(v) if !v.is_null() => {
                let keys = parse_refs(v, "pubkeys")?;
                self.validate_pubkeys(&keys)?;
                // [V dumps/response_pubkeys_server] a server's keys point at /pubkeys/
                keys.iter()
                    .map(|k| Ref::to_resource("pubkeys", k))
                    .collect()
            }
            _ => existing.map(|e| e.pubkeys.clone()).unwrap_or_default(),
        };
        let mut extra = match existing {
            Some(e) => e.extra.clone(),
            None => default_server_extra(),
        };
        for (k, v) in o {
            if !SERVER_KNOWN.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
        let server = Server {
            uuid: existing.map(|e| e.uuid.clone()).unwrap_or_else(new_uuid),
            name,
            cpu,
            mem,
            smp: smp as u32,
            status: existing.map(|e| e.status).unwrap_or(ServerStatus::Stopped),
            vnc_password,
            drives,
            nics,
            meta,
            tags: Vec::new(),
            runtime: existing.and_then(|e| e.runtime.clone()),
            resource_uri: None,
            owner: None,
            pubkeys,
            extra,
        };
        Ok((server, tags))
    }

    pub(super) fn parse_server_drives(&self, v: &Value) -> Result<Vec<ServerDrive>, ApiError> {
        let arr = v
            .as_array()
            .ok_or_else(|| ApiError::validation("drives must be a list", Some("drives")))?;
        let mut out = Vec::new();
        let mut channels = HashSet::new();
        for item in arr {
            let o = item.as_object().ok_or_else(|| {
                ApiError::validation("each drive must be an object", Some("drives"))
            })?;
            let drive = o.get("drive").and_then(ref_uuid).ok_or_else(|| {
                ApiError::validation("drive reference (uuid) is required", Some("drives"))
            })?;
            if !self.drives.contains_key(&drive) {
                return Err(ApiError::validation(
                    format!("Drive {drive} does not exist"),
                    Some("drives"),
                ));
            }
            let dev_channel = get_str(o, "dev_channel")?.ok_or_else(|| {
                ApiError::validation("dev_channel is required (e.g. \"0:0\")", Some("drives"))
            })?;
            let ok = dev_channel
                .split_once(':')
                .map(|(a, b)| a.parse::<u8>().is_ok() && b.parse::<u8>().is_ok())
                .unwrap_or(false);
            if !ok {
                return Err(ApiError::validation(
                    format!("dev_channel {dev_channel:?} is not of the form \"N:M\""),
                    Some("drives"),
                ));
            }
            if !channels.insert(dev_channel.clone()) {
                return Err(ApiError::validation(
                    format!("dev_channel {dev_channel} is used twice"),
                    Some("drives"),
                ));
            }
            let device = get_str(o, "device")?.unwrap_or_else(|| "virtio".into());
            if !["virtio", "ide", "sata", "scsi"].contains(&device.as_str()) {
                return Err(ApiError::validation(
                    format!("device {device:?} is not one of virtio, ide, sata, scsi"),
                    Some("drives"),
                ));
            }
            // [V docs servers.rst "Device channel"] ide: 0:0, 0:1, 1:0, 1:1 (2 controllers × 2
            // units); virtio: units 0-5 per controller
            if let Some((c, u)) = dev_channel.split_once(':') {
                let (c, u) = (c.parse::<u32>().unwrap_or(0), u.parse::<u32>().unwrap_or(0));
                let ok = match device.as_str() {
                    "ide" => c <= 1 && u <= 1,
                    "virtio" => u <= 5,
                    _ => true,
                };
                if !ok {
                    return Err(ApiError::validation(
                        format!("dev_channel {dev_channel} is out of range for device {device} (ide: 0:0-1:1, virtio: units 0-5)"),
                        Some("drives"),
                    ));
                }
            }
            let boot_order = get_u64(o, "boot_order")?.map(|b| b as u32);
            out.push(ServerDrive {
                boot_order,
                dev_channel,
                device,
                drive: Ref::to_resource("drives", &drive),
                extra: Default::default(),
            });
        }
        Ok(out)
    }

    pub(super) fn drive_from_body(
        &self,
        o: &Map<String, Value>,
        existing: Option<&Drive>,
    ) -> Result<(Drive, Vec<String>), ApiError> {
        let name = body_name(o, existing.map(|e| e.name.as_str()))?;
        let size = required(get_u64(o, "size")?, existing.map(|e| e.size), "size")?;
        // [D] minimum drive size 1 MiB
        if size < 1 << 20 {
            return Err(ApiError::validation(
                format!("size {size} bytes is below the minimum of 1 MiB"),
                Some("size"),
            ));
        }
        let media = required(
            get_str(o, "media")?,
            existing.map(|e| e.media.clone()),
            "media",
        )?;
        if media != "disk" && media != "cdrom" {
            return Err(ApiError::validation(
                format!("media {media:?} is not one of disk, cdrom"),
                Some("media"),
            ));
        }
        let storage_type = get_str(o, "storage_type")?
            .or_else(|| existing.and_then(|e| e.storage_type.clone()))
            .unwrap_or_else(|| "dssd".into());
        let (meta, tags) = self.meta_and_tags(o, existing.map(|e| (e.uuid.as_str(), &e.meta)))?;
        let affinities = match o.get("affinities") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => existing.map(|e| e.affinities.clone()).unwrap_or_default(),
        };
        let allow_multimount = match o.get("allow_multimount") {
            Some(Value::Bool(b)) => *b,
            _ => existing.map(|e| e.allow_multimount).unwrap_or(false),
        };
        let mut extra = existing
            .map(|e| e.extra.clone())
            .unwrap_or_else(|| default_drive_extra(&storage_type));
        for (k, v) in o {
            if !DRIVE_KNOWN.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            }
        }
        Ok((
            Drive {
                uuid: existing.map(|e| e.uuid.clone()).unwrap_or_else(new_uuid),
                name,
                size,
                media,
                status: existing.map(|e| e.status).unwrap_or(DriveStatus::Creating),
                storage_type: Some(storage_type),
                mounted_on: Vec::new(),
                meta,
                tags: Vec::new(),
                affinities,
                allow_multimount,
                resource_uri: None,
                owner: None,
                extra,
            },
            tags,
        ))
    }
}

const SERVER_KNOWN: &[&str] = &[
    "uuid",
    "name",
    "cpu",
    "mem",
    "smp",
    "status",
    "vnc_password",
    "drives",
    "nics",
    "meta",
    "tags",
    "runtime",
    "resource_uri",
    "owner",
    "pubkeys",
];
const DRIVE_KNOWN: &[&str] = &[
    "uuid",
    "name",
    "size",
    "media",
    "status",
    "storage_type",
    "mounted_on",
    "meta",
    "tags",
    "affinities",
    "allow_multimount",
    "resource_uri",
    "owner",
];

/// Fields the real API returns on every server that we do not model otherwise
/// ([V dumps/response_server_get_running]).
fn default_server_extra() -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("context".into(), json!(true));
    m.insert("cpu_model".into(), Value::Null);
    m.insert("cpus_instead_of_cores".into(), json!(false));
    m.insert("enable_numa".into(), json!(false));
    m.insert("grantees".into(), json!([]));
    m.insert("hv_relaxed".into(), json!(false));
    m.insert("hv_tsc".into(), json!(false));
    m.insert("jobs".into(), json!([]));
    m.insert("permissions".into(), json!([]));
    m.insert("requirements".into(), json!([]));
    // [D] present in the reference's list of context keys (newer API than the 2014 dumps);
    // values are what a Linux KVM guest on CloudSigma reports
    m.insert("hypervisor".into(), json!("kvm"));
    m.insert("cpu_type".into(), json!("amd"));
    m
}

/// ([V dumps/response_drive_get_unmounted])
pub(super) fn default_drive_extra(storage_type: &str) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("grantees".into(), json!([]));
    m.insert("jobs".into(), json!([]));
    m.insert("licenses".into(), json!([]));
    m.insert("permissions".into(), json!([]));
    m.insert("runtime".into(), json!({"is_snapshotable": true, "snapshots_allocated_size": 0, "storage_type": storage_type}));
    m.insert("snapshots".into(), json!([]));
    m
}

/// The limits of a server definition: (min, max) of `cpu` (MHz), `mem` (bytes) and `smp`.
pub struct ServerLimits {
    pub cpu: (u64, u64),
    pub mem: (u64, u64),
    pub smp: (u64, u64),
}

/// [V dumps/response_capabilities] `servers`: cpu 250–96,000 MHz, mem 268,435,456–
/// 558,345,748,480 bytes, smp 1–32. `GET /capabilities/` reports these same values.
pub const SERVER_LIMITS: ServerLimits = ServerLimits {
    cpu: (250, 96_000),
    mem: (268_435_456, 558_345_748_480),
    smp: (1, 32),
};

/// A required integer field of a create/PUT body (else `existing`) within `(min, max)`.
fn limited(
    o: &Map<String, Value>,
    field: &str,
    existing: Option<u64>,
    (min, max): (u64, u64),
    unit: &str,
) -> Result<u64, ApiError> {
    let v = required(get_u64(o, field)?, existing, field)?;
    if (min..=max).contains(&v) {
        return Ok(v);
    }
    Err(ApiError::validation(
        format!("{field} {v}{unit} is out of range {min}..{max} (see GET /capabilities/)"),
        Some(field),
    ))
}

/// A field of a create/PUT body: the body's value, else the existing object's (PUT), else the
/// API's "This field is required" refusal.
fn required<T>(got: Option<T>, existing: Option<T>, field: &str) -> Result<T, ApiError> {
    got.or(existing)
        .ok_or_else(|| ApiError::validation("This field is required", Some(field)))
}

/// `name` of a create/PUT body: required on create, never empty.
fn body_name(o: &Map<String, Value>, existing: Option<&str>) -> Result<String, ApiError> {
    match get_str(o, "name")? {
        Some(n) if n.trim().is_empty() => {
            Err(ApiError::validation("name must not be empty", Some("name")))
        }
        got => required(got, existing.map(str::to_string), "name"),
    }
}

/// The one place a NIC's `mac` is read from a request: lower case, and — since it reaches
/// QEMU's `-device` option — refused unless a plain unicast MAC (`crate::mac::parse_mac`).
pub(super) fn nic_mac(o: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    get_str(o, "mac")?
        .map(|m| {
            crate::mac::parse_mac(&m).map_err(|e| ApiError::validation(e.to_string(), Some("nics")))
        })
        .transpose()
}

/// The items of a create body as objects; one that is not an object refuses the whole body.
pub(super) fn body_objects(items: &[Value]) -> Result<Vec<&Map<String, Value>>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_object().ok_or_else(|| {
                ApiError::validation(format!("objects[{i}] must be an object"), Some("objects"))
            })
        })
        .collect()
}

/// The body of an action (`clone`): an object, or nothing (`null`, an empty body).
pub(super) fn action_body(body: &Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(o) => Ok(o.clone()),
        Value::Null => Ok(Map::new()),
        _ => Err(ApiError::validation(
            "Request body must be a JSON object",
            None,
        )),
    }
}

pub fn get_str(o: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(
            format!("{k} must be a string"),
            Some(k),
        )),
    }
}

/// Integers; numeric strings are accepted too [D] (the Python API coerces them).
pub fn get_u64(o: &Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::validation(format!("{k} must be a non-negative integer"), Some(k))
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| {
            ApiError::validation(
                format!("{k} must be a non-negative integer, got {s:?}"),
                Some(k),
            )
        }),
        Some(_) => Err(ApiError::validation(
            format!("{k} must be a non-negative integer"),
            Some(k),
        )),
    }
}

/// `meta`: a flat string→string map. [D] numbers and booleans are stored as strings.
pub fn parse_meta(v: &Value) -> Result<Meta, ApiError> {
    let o = v
        .as_object()
        .ok_or_else(|| ApiError::validation("meta must be an object of strings", Some("meta")))?;
    let mut m = Meta::new();
    for (k, v) in o {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::validation(
                    format!("meta value of {k:?} must be a string"),
                    Some("meta"),
                ))
            }
        };
        m.insert(k.clone(), s);
    }
    Ok(m)
}

/// A reference: a bare uuid string or `{"uuid": ...}`.
pub fn ref_uuid(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("uuid").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

pub fn parse_refs(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let arr = v
        .as_array()
        .ok_or_else(|| ApiError::validation(format!("{field} must be a list"), Some(field)))?;
    arr.iter()
        .map(|x| {
            ref_uuid(x).ok_or_else(|| {
                ApiError::validation(
                    format!("each of {field} must be a uuid or {{\"uuid\": ...}}"),
                    Some(field),
                )
            })
        })
        .collect()
}
