//! Seed data: a small library, two subscribed IPs and two VLANs.

use cloudsigma_api::{Ip, LibDrive, Meta, Vlan};
use std::collections::BTreeMap;

use crate::state::{State, NAMESERVERS};

const GIB: u64 = 1 << 30;

#[allow(clippy::too_many_arguments)] // a table of seed rows reads best as positional columns
fn lib(
    uuid: &str,
    name: &str,
    os: &str,
    dist: &str,
    version: &str,
    image_type: &str,
    media: &str,
    size: u64,
    default_user: Option<&str>,
    description: &str,
) -> LibDrive {
    // [V dumps/response_libdrive_get] the fields a library drive carries besides the modelled ones
    let mut extra = BTreeMap::new();
    extra.insert("affinities".into(), serde_json::json!([]));
    extra.insert("allow_multimount".into(), serde_json::json!(false));
    extra.insert("category".into(), serde_json::json!(["general"]));
    extra.insert("favourite".into(), serde_json::json!(false));
    extra.insert("install_notes".into(), serde_json::json!(""));
    extra.insert("jobs".into(), serde_json::json!([]));
    extra.insert("licenses".into(), serde_json::json!([]));
    extra.insert("meta".into(), serde_json::json!({}));
    extra.insert("mounted_on".into(), serde_json::json!([]));
    extra.insert("owner".into(), serde_json::Value::Null);
    extra.insert("paid".into(), serde_json::json!(false));
    extra.insert("storage_type".into(), serde_json::json!("dssd"));
    extra.insert("tags".into(), serde_json::json!([]));
    extra.insert("url".into(), serde_json::json!(""));
    LibDrive {
        uuid: uuid.into(),
        name: name.into(),
        os: Some(os.into()),
        distribution: Some(dist.into()),
        version: Some(version.into()),
        arch: Some("64".into()),
        image_type: Some(image_type.into()),
        media: media.into(),
        size,
        description: Some(description.into()),
        default_user: default_user.map(str::to_string),
        cloud_init_service: Some(image_type == "preinst"),
        deprecated: Some(false),
        status: None,
        resource_uri: None,
        extra,
    }
}

/// The default library. Fixed uuids so tests and docs can name them.
/// [D reference] "Ubuntu 24.04 LTS", preinst, default user `cloudsigma`, 10 GiB.
pub fn default_library() -> Vec<LibDrive> {
    vec![
        lib(
            "6d1b2a8e-0c6e-4f43-9a44-240400000001",
            "Ubuntu 24.04 LTS",
            "linux",
            "Ubuntu",
            "24.04",
            "preinst",
            "disk",
            10 * GIB,
            Some("cloudsigma"),
            "Ubuntu 24.04 LTS (Noble Numbat) server, cloud-init enabled",
        ),
        lib(
            "6d1b2a8e-0c6e-4f43-9a44-220400000001",
            "Ubuntu 22.04 LTS",
            "linux",
            "Ubuntu",
            "22.04",
            "preinst",
            "disk",
            10 * GIB,
            Some("cloudsigma"),
            "Ubuntu 22.04 LTS (Jammy Jellyfish) server, cloud-init enabled",
        ),
        lib(
            "6d1b2a8e-0c6e-4f43-9a44-deb120000001",
            "Debian 12",
            "linux",
            "Debian",
            "12",
            "preinst",
            "disk",
            10 * GIB,
            Some("cloudsigma"),
            "Debian 12 (bookworm), cloud-init enabled",
        ),
        lib(
            "6d1b2a8e-0c6e-4f43-9a44-240400000150",
            "Ubuntu 24.04 LTS Install CD",
            "linux",
            "Ubuntu",
            "24.04",
            "install",
            "cdrom",
            3 * GIB,
            None,
            "Ubuntu 24.04 LTS live server installer ISO",
        ),
    ]
}

pub fn seed_network(st: &mut State) {
    // [V dumps/response_ip_get, response_vlan_get] grantees, permissions, subscription
    let sub = |id: u32| {
        let mut extra = BTreeMap::new();
        extra.insert("grantees".into(), serde_json::json!([]));
        extra.insert("permissions".into(), serde_json::json!([]));
        extra.insert(
            "subscription".into(),
            serde_json::json!({"id": id, "resource_uri": format!("/api/2.0/subscriptions/{id}/")}),
        );
        extra
    };
    for (i, addr) in ["203.0.113.200", "203.0.113.201"].into_iter().enumerate() {
        st.ips.insert(
            addr.into(),
            Ip {
                uuid: addr.into(),
                netmask: Some(24),
                gateway: Some("203.0.113.1".into()),
                nameservers: NAMESERVERS.iter().map(|s| s.to_string()).collect(),
                server: None,
                meta: Meta::new(),
                tags: Vec::new(),
                resource_uri: None,
                extra: sub(7000 + i as u32),
            },
        );
    }
    for (i, (uuid, name)) in [
        ("5e0a1a7e-3b7d-4c1e-8f00-0000000c0001", "private-a"),
        ("5e0a1a7e-3b7d-4c1e-8f00-0000000c0002", "private-b"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut meta = Meta::new();
        meta.insert("name".into(), name.into());
        st.vlans.insert(
            uuid.into(),
            Vlan {
                uuid: uuid.into(),
                servers: Vec::new(),
                meta,
                tags: Vec::new(),
                resource_uri: None,
                extra: sub(7100 + i as u32),
            },
        );
    }
}
