//! Serde models of the CloudSigma API 2.0 objects this project uses.
//!
//! Field names and types follow `shared/reference/cloudsigma.md` (the Python SDK, the docs' captured
//! exchanges). Unknown fields are kept in `extra` maps where the real API returns more than we model,
//! so a round trip through our types never drops data (the emulator and PUTs depend on that).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Server/drive/etc. `meta`: a flat string→string map.
pub type Meta = BTreeMap<String, String>;

/// The `{"objects": [...]}` envelope used by create requests/answers and lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Objects<T> {
    pub objects: Vec<T>,
}

/// Pagination block of list answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ListMeta {
    pub limit: u64,
    pub offset: u64,
    pub total_count: u64,
}

/// A list answer: `{"meta": {...}, "objects": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListResponse<T> {
    pub meta: ListMeta,
    pub objects: Vec<T>,
}

/// One entry of the API's error body (which is a JSON array of these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiErrorEntry {
    pub error_type: String,
    pub error_message: String,
    pub error_point: Option<String>,
}

/// A reference to another object. Requests may send a bare uuid or `{"uuid": ...}`;
/// responses always carry `{"resource_uri", "uuid"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Ref {
    Uuid(String),
    Object {
        uuid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource_uri: Option<String>,
    },
}

impl Ref {
    pub fn uuid(&self) -> &str {
        match self {
            Ref::Uuid(u) => u,
            Ref::Object { uuid, .. } => uuid,
        }
    }
    /// The canonical response form, `{"resource_uri": "/api/2.0/<res>/<uuid>/", "uuid": ...}`.
    pub fn to_resource(resource: &str, uuid: &str) -> Ref {
        Ref::Object {
            uuid: uuid.to_string(),
            resource_uri: Some(format!("/api/2.0/{resource}/{uuid}/")),
        }
    }
}

impl From<&str> for Ref {
    fn from(s: &str) -> Self {
        Ref::Uuid(s.to_string())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ServerStatus {
    Stopped,
    Starting,
    Running,
    Stopping,
    Paused,
    Unavailable,
}

impl std::fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerStatus::Stopped => "stopped",
            ServerStatus::Starting => "starting",
            ServerStatus::Running => "running",
            ServerStatus::Stopping => "stopping",
            ServerStatus::Paused => "paused",
            ServerStatus::Unavailable => "unavailable",
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DriveStatus {
    Creating,
    Unmounted,
    Mounted,
    CloningSrc,
    CloningDst,
    Resizing,
    Uploading,
    Unavailable,
}

impl std::fmt::Display for DriveStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriveStatus::Creating => "creating",
            DriveStatus::Unmounted => "unmounted",
            DriveStatus::Mounted => "mounted",
            DriveStatus::CloningSrc => "cloning_src",
            DriveStatus::CloningDst => "cloning_dst",
            DriveStatus::Resizing => "resizing",
            DriveStatus::Uploading => "uploading",
            DriveStatus::Unavailable => "unavailable",
        })
    }
}

/// A drive attached to a server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerDrive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// e.g. "0:0"
    pub dev_channel: String,
    /// "virtio" | "ide"
    pub device: String,
    pub drive: Ref,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IpConfMode {
    Dhcp,
    Static,
    Manual,
}

/// `ip_v4_conf` of a NIC. In the server context `ip` is expanded to a full [`Ip`] object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IpV4Conf {
    pub conf: IpConfMode,
    #[serde(default)]
    pub ip: Option<IpRef>,
}

/// The `ip` of an `ip_v4_conf`: a reference in the REST API, an expanded object in the context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum IpRef {
    Full(Box<Ip>),
    Ref(Ref),
}

impl IpRef {
    pub fn address(&self) -> &str {
        match self {
            IpRef::Full(ip) => &ip.uuid,
            IpRef::Ref(r) => r.uuid(),
        }
    }
}

/// The `runtime` block of a NIC on a running server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NicRuntime {
    /// "public" | "private"
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_type: Option<String>,
    #[serde(default)]
    pub ip_v4: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_v6: Option<Ref>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Nic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_v4_conf: Option<IpV4Conf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default)]
    pub vlan: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<NicRuntime>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Nic {
    /// A public NAT NIC: DHCP and no VLAN (there is no explicit NAT flag in the API).
    pub fn public_dhcp() -> Nic {
        Nic {
            ip_v4_conf: Some(IpV4Conf {
                conf: IpConfMode::Dhcp,
                ip: None,
            }),
            model: Some("virtio".into()),
            ..Default::default()
        }
    }
    pub fn is_private(&self) -> bool {
        self.vlan.is_some()
    }
    /// The NAT/public address while the server runs.
    pub fn runtime_ipv4(&self) -> Option<&str> {
        self.runtime.as_ref()?.ip_v4.as_ref().map(|r| r.uuid())
    }
}

/// Server runtime block (`null` while stopped).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ServerRuntime {
    /// e.g. `"2014-06-05T09:51:08+00:00"` ([V dumps/response_server_get_running]: a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_since: Option<String>,
    #[serde(default)]
    pub nics: Vec<serde_json::Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A server as returned by `GET /servers/{uuid}/` and `GET /servers/detail/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Server {
    pub uuid: String,
    pub name: String,
    pub cpu: u64,
    pub mem: u64,
    #[serde(default = "one")]
    pub smp: u32,
    pub status: ServerStatus,
    #[serde(default)]
    pub vnc_password: Option<String>,
    #[serde(default)]
    pub drives: Vec<ServerDrive>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub tags: Vec<Ref>,
    #[serde(default)]
    pub runtime: Option<ServerRuntime>,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(default)]
    pub owner: Option<Ref>,
    #[serde(default)]
    pub pubkeys: Vec<Ref>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// Body item of `POST /servers/` (create).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ServerCreate {
    pub name: String,
    pub cpu: u64,
    pub mem: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smp: Option<u32>,
    pub vnc_password: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<ServerDrive>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Ref>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pubkeys: Vec<Ref>,
}

/// A drive (`/drives/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drive {
    pub uuid: String,
    pub name: String,
    pub size: u64,
    /// "disk" | "cdrom"
    pub media: String,
    pub status: DriveStatus,
    #[serde(default)]
    pub storage_type: Option<String>,
    #[serde(default)]
    pub mounted_on: Vec<Ref>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub tags: Vec<Ref>,
    #[serde(default)]
    pub affinities: Vec<String>,
    #[serde(default)]
    pub allow_multimount: bool,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(default)]
    pub owner: Option<Ref>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Body item of `POST /drives/` (create).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DriveCreate {
    pub name: String,
    pub size: u64,
    pub media: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_type: Option<String>,
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Ref>,
}

/// Optional body of the drive `clone` action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DriveClone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinities: Vec<String>,
}

/// A library drive (`/libdrives/`): CloudSigma's public images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LibDrive {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub distribution: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    /// "install" (ISO) | "preinst" (ready disk)
    #[serde(default)]
    pub image_type: Option<String>,
    pub media: String,
    pub size: u64,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub default_user: Option<String>,
    #[serde(default)]
    pub cloud_init_service: Option<bool>,
    #[serde(default)]
    pub deprecated: Option<bool>,
    #[serde(default)]
    pub status: Option<DriveStatus>,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A subscribed static IP (`/ips/`); the uuid is the address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ip {
    pub uuid: String,
    #[serde(default)]
    pub netmask: Option<u8>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub server: Option<Ref>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub tags: Vec<Ref>,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A private network (`/vlans/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vlan {
    pub uuid: String,
    #[serde(default)]
    pub servers: Vec<Ref>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub tags: Vec<Ref>,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A tag (`/tags/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tag {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub resources: Vec<Ref>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Body item of `POST /tags/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TagCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Ref>,
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
}

/// Answer of a server action (`202 {"action", "result", "uuid"}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionResult {
    pub action: String,
    pub result: String,
    pub uuid: String,
}

/// The server context a guest reads over its second serial port: `GET /servers/{uuid}/` minus
/// owner/subscriptions/status/runtime, plus `global_context` (and `vendor_data` when set); drives
/// expanded; each NIC's `ip_v4_conf.ip` expanded to an IP object. Kept loose (unknown keys in
/// `extra`) because the guest must not break when the cloud adds fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ServerContext {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub cpu: Option<u64>,
    #[serde(default)]
    pub mem: Option<u64>,
    #[serde(default)]
    pub smp: Option<u32>,
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default)]
    pub tags: Vec<serde_json::Value>,
    #[serde(default)]
    pub drives: Vec<serde_json::Value>,
    #[serde(default)]
    pub global_context: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_data: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_accepts_bare_uuid_and_object() {
        let a: Ref = serde_json::from_str("\"abc\"").unwrap();
        let b: Ref =
            serde_json::from_str(r#"{"uuid":"abc","resource_uri":"/api/2.0/drives/abc/"}"#)
                .unwrap();
        assert_eq!(a.uuid(), "abc");
        assert_eq!(b.uuid(), "abc");
    }

    #[test]
    fn context_nic_ip_is_expanded_object() {
        let ctx: ServerContext = serde_json::from_str(
            r#"{"uuid":"u","name":"n","nics":[{"ip_v4_conf":{"conf":"dhcp","ip":{"uuid":"31.171.1.2","netmask":24,"gateway":"31.171.1.1","nameservers":["8.8.8.8"],"tags":[],"meta":{}}},"mac":"22:aa","model":"virtio","vlan":null}],"global_context":{},"meta":{}}"#,
        )
        .unwrap();
        let ip = ctx.nics[0]
            .ip_v4_conf
            .as_ref()
            .unwrap()
            .ip
            .as_ref()
            .unwrap();
        assert_eq!(ip.address(), "31.171.1.2");
        assert!(matches!(ip, IpRef::Full(_)));
    }

    #[test]
    fn status_names_match_api() {
        assert_eq!(
            serde_json::to_string(&DriveStatus::CloningDst).unwrap(),
            "\"cloning_dst\""
        );
        assert_eq!(ServerStatus::Stopping.to_string(), "stopping");
    }
}
