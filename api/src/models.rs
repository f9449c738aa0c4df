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

/// A server's `status`. The list is the documented one plus `deleting` ([V kube-dc
/// cluster-api-provider-cloudsigma `controllers/cloudsigmamachine_controller.go` matches the API's
/// `in state 'deleting'`); any other value decodes as [`ServerStatus::Unknown`], so a status the
/// real cloud adds later never fails a whole listing. The unknown string itself is not kept: the
/// type stays `Copy` (it is passed by value all over the workspace) and `status` is read-only
/// in a PUT, so nothing is lost that the API would take back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ServerStatus {
    Stopped,
    Starting,
    Running,
    Stopping,
    Paused,
    Unavailable,
    Deleting,
    /// A status this crate does not know (serialized as `"unknown"`).
    #[serde(other)]
    Unknown,
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
            ServerStatus::Deleting => "deleting",
            ServerStatus::Unknown => "unknown",
        })
    }
}

/// A drive's `status`: the documented values; any other decodes as [`DriveStatus::Unknown`]
/// (as for [`ServerStatus`]; no source shows a drive `deleting` state, so none is modelled).
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
    /// A status this crate does not know (serialized as `"unknown"`).
    #[serde(other)]
    Unknown,
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
            DriveStatus::Unknown => "unknown",
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

impl ServerDrive {
    /// The server's boot disk: `drive` at `0:0` on virtio, `boot_order` 1 — what a CloudSigma
    /// server booting from one cloned image needs (the guest sees it as `/dev/vda`).
    pub fn boot_disk(drive_uuid: &str) -> ServerDrive {
        ServerDrive {
            boot_order: Some(1),
            dev_channel: "0:0".into(),
            device: "virtio".into(),
            drive: Ref::Uuid(drive_uuid.to_string()),
            extra: BTreeMap::new(),
        }
    }
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TagCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Ref>,
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
}

/// The power actions of `POST /servers/{uuid}/action/?do=NAME` (typed, so a caller cannot send
/// a misspelt action and only the client knows the wire names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerAction {
    Start,
    /// Hard power-off.
    Stop,
    /// ACPI shutdown request (the guest may ignore it).
    Shutdown,
    /// Reset of the VM.
    Restart,
}

impl ServerAction {
    pub const ALL: [ServerAction; 4] = [
        ServerAction::Start,
        ServerAction::Stop,
        ServerAction::Shutdown,
        ServerAction::Restart,
    ];

    /// The `do=` value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerAction::Start => "start",
            ServerAction::Stop => "stop",
            ServerAction::Shutdown => "shutdown",
            ServerAction::Restart => "restart",
        }
    }
}

impl std::fmt::Display for ServerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServerAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServerAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!("unknown server action {s:?} (expected start, stop, shutdown or restart)")
            })
    }
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
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
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

/// Meta key of the user data (cloud-init's CloudSigma datasource name; Cluster API puts the
/// bootstrap data here).
pub const META_USER_DATA: &str = "cloudinit-user-data";
/// Meta key listing (comma-separated) the meta keys whose values are base64.
pub const META_BASE64_FIELDS: &str = "base64_fields";
/// Meta key of cloud-init's datasource mode (`local`, `net`, `pass`, `disabled`).
pub const META_DSMODE: &str = "cloudinit-dsmode";

/// The user data value as stored in the server meta, not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData<'a> {
    /// The meta value exactly as stored.
    pub value: &'a str,
    /// `meta.base64_fields` names the user-data key: `value` is base64 (possibly with line
    /// breaks) and must be decoded by the reader.
    pub base64: bool,
}

/// `meta.cloudinit-dsmode`. Unknown values are kept (`Other`) rather than refused: the guest must
/// not fail on a mode the cloud adds later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsMode {
    Local,
    Net,
    Pass,
    /// The datasource is off: the user data must not be acted on.
    Disabled,
    Other(String),
}

impl DsMode {
    /// Surrounding whitespace is ignored (meta values are often typed by hand).
    pub fn parse(s: &str) -> DsMode {
        match s.trim() {
            "local" => DsMode::Local,
            "net" => DsMode::Net,
            "pass" => DsMode::Pass,
            "disabled" => DsMode::Disabled,
            other => DsMode::Other(other.to_string()),
        }
    }

    pub fn is_disabled(&self) -> bool {
        *self == DsMode::Disabled
    }
}

impl ServerContext {
    /// Whether `meta.base64_fields` (comma-separated, spaces around names allowed) lists `key`.
    pub fn is_base64_field(&self, key: &str) -> bool {
        self.meta
            .get(META_BASE64_FIELDS)
            .map(|f| f.split(',').any(|k| k.trim() == key))
            .unwrap_or(false)
    }

    /// `meta.cloudinit-user-data` and whether it is base64 (per `meta.base64_fields`); `None` when
    /// the server has no user data.
    pub fn user_data(&self) -> Option<UserData<'_>> {
        self.meta.get(META_USER_DATA).map(|v| UserData {
            value: v,
            base64: self.is_base64_field(META_USER_DATA),
        })
    }

    /// `meta.cloudinit-dsmode`, `None` when unset.
    pub fn dsmode(&self) -> Option<DsMode> {
        self.meta.get(META_DSMODE).map(|m| DsMode::parse(m))
    }
}

/// `Debug` of the objects that may carry secrets — `vnc_password`, a library drive's
/// `default_pass`, and `meta` with bootstrap data (cloud-init user data holds kubeadm join
/// tokens): the object as JSON with the value of every key that looks secret replaced by
/// `<redacted>`. Going through serde covers fields added later, and `extra`, with no list to
/// keep. `{:#?}` pretty-prints.
mod redact {
    use serde::Serialize;
    use serde_json::Value;
    use std::fmt;

    /// Parts of key names whose values are secret (compared lowercased).
    const SECRET_KEY_PARTS: &[&str] = &[
        "pass",
        "token",
        "secret",
        "private_key",
        "cloudinit",
        "user-data",
        "userdata",
    ];

    fn secret_key(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        SECRET_KEY_PARTS.iter().any(|p| k.contains(p))
    }

    fn redact(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if secret_key(k) && !x.is_null() {
                        *x = Value::String("<redacted>".into());
                    } else {
                        redact(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(redact),
            _ => {}
        }
    }

    pub(super) fn fmt<T: Serialize>(name: &str, v: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(mut j) = serde_json::to_value(v) else {
            return write!(f, "{name} {{ .. }}");
        };
        redact(&mut j);
        if f.alternate() {
            write!(f, "{name} {j:#}")
        } else {
            write!(f, "{name} {j}")
        }
    }
}

macro_rules! debug_redacted {
    ($($t:ident),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                redact::fmt(stringify!($t), self, f)
            }
        }
    )*};
}
debug_redacted!(
    Server,
    ServerCreate,
    ServerContext,
    Drive,
    DriveCreate,
    LibDrive,
    Ip,
    Vlan,
    Tag,
    TagCreate
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_passwords_tokens_and_bootstrap_data() {
        let mut meta = Meta::new();
        meta.insert("k8s_join_token".into(), "abcdef.0123456789abcdef".into());
        meta.insert(
            META_USER_DATA.into(),
            "#cloud-config with the join token".into(),
        );
        meta.insert("ssh_public_key".into(), "ssh-ed25519 AAAApublic".into());
        let create = ServerCreate {
            name: "node-1".into(),
            vnc_password: "vnc-s3cret".into(),
            meta: meta.clone(),
            ..Default::default()
        };
        let ctx = ServerContext {
            uuid: "u-1".into(),
            meta,
            extra: [("vnc_password".to_string(), serde_json::json!("vnc-s3cret"))].into(),
            ..Default::default()
        };
        let lib: LibDrive = serde_json::from_value(serde_json::json!({
            "uuid": "l-1", "name": "Ubuntu", "media": "disk", "size": 1,
            "default_user": "cloudsigma", "default_pass": "lib-s3cret"
        }))
        .unwrap();
        for s in [
            format!("{create:?}"),
            format!("{create:#?}"),
            format!("{ctx:?}"),
            format!("{lib:?}"),
        ] {
            for secret in ["vnc-s3cret", "abcdef.0123", "join token", "lib-s3cret"] {
                assert!(!s.contains(secret), "{secret:?} shown: {s}");
            }
            assert!(s.contains("<redacted>"), "{s}");
        }
        // what is not secret stays readable
        let s = format!("{create:?}");
        assert!(
            s.starts_with("ServerCreate {") && s.contains("node-1") && s.contains("AAAApublic"),
            "{s}"
        );
        assert!(format!("{lib:?}").contains("cloudsigma"));
    }

    fn ctx_with(meta: &[(&str, &str)]) -> ServerContext {
        ServerContext {
            uuid: "u".into(),
            name: "n".into(),
            meta: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn user_data_plain_base64_and_absent() {
        assert_eq!(ctx_with(&[]).user_data(), None);
        let c = ctx_with(&[(META_USER_DATA, "#cloud-config\n")]);
        assert_eq!(
            c.user_data(),
            Some(UserData {
                value: "#cloud-config\n",
                base64: false
            })
        );
        // listed among others, with spaces around the names
        let c = ctx_with(&[
            (META_USER_DATA, "I2Nsb3VkLWNvbmZpZwo="),
            (META_BASE64_FIELDS, "foo, cloudinit-user-data ,bar"),
        ]);
        assert_eq!(
            c.user_data(),
            Some(UserData {
                value: "I2Nsb3VkLWNvbmZpZwo=",
                base64: true
            })
        );
        assert!(c.is_base64_field("foo") && c.is_base64_field("bar"));
        // a key that only contains the name is not the name
        let c = ctx_with(&[
            (META_USER_DATA, "x"),
            (META_BASE64_FIELDS, "cloudinit-user-data-v2"),
        ]);
        assert!(!c.user_data().unwrap().base64);
    }

    #[test]
    fn dsmode_values() {
        assert_eq!(ctx_with(&[]).dsmode(), None);
        assert_eq!(
            ctx_with(&[(META_DSMODE, "net")]).dsmode(),
            Some(DsMode::Net)
        );
        assert_eq!(
            ctx_with(&[(META_DSMODE, " disabled\n")]).dsmode(),
            Some(DsMode::Disabled)
        );
        assert!(ctx_with(&[(META_DSMODE, "disabled")])
            .dsmode()
            .unwrap()
            .is_disabled());
        assert_eq!(DsMode::parse("local"), DsMode::Local);
        assert_eq!(DsMode::parse("pass"), DsMode::Pass);
        assert_eq!(DsMode::parse("Disabled"), DsMode::Other("Disabled".into()));
        assert!(!DsMode::parse("net").is_disabled());
    }

    #[test]
    fn server_actions_wire_names_and_parse() {
        let names: Vec<String> = ServerAction::ALL.iter().map(|a| a.to_string()).collect();
        assert_eq!(names, ["start", "stop", "shutdown", "restart"]);
        for a in ServerAction::ALL {
            assert_eq!(a.as_str().parse::<ServerAction>(), Ok(a));
        }
        assert!("reboot"
            .parse::<ServerAction>()
            .unwrap_err()
            .contains("reboot"));
    }

    #[test]
    fn boot_disk_is_virtio_0_0_first() {
        let d = ServerDrive::boot_disk("d-1");
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": "d-1"})
        );
    }

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
        assert_eq!(ServerStatus::Deleting.to_string(), "deleting");
    }

    /// A server being deleted, and one in a status this crate has never heard of, decode; a
    /// listing with them must not fail as a whole.
    #[test]
    fn deleting_and_unknown_statuses_decode() {
        let list = serde_json::json!({
            "meta": {"limit": 0, "offset": 0, "total_count": 2},
            "objects": [
                {"uuid": "a", "name": "a", "cpu": 1000, "mem": 536870912, "status": "deleting"},
                {"uuid": "b", "name": "b", "cpu": 1000, "mem": 536870912, "status": "migrating"},
            ]
        });
        let l: ListResponse<Server> = serde_json::from_value(list).unwrap();
        assert_eq!(l.objects[0].status, ServerStatus::Deleting);
        assert_eq!(l.objects[1].status, ServerStatus::Unknown);
        let d: DriveStatus = serde_json::from_value(serde_json::json!("archiving")).unwrap();
        assert_eq!(d, DriveStatus::Unknown);
        let d: DriveStatus = serde_json::from_value(serde_json::json!("cloning_src")).unwrap();
        assert_eq!(d, DriveStatus::CloningSrc);
    }
}
