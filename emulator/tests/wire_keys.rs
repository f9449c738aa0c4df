//! Every key the real API sends, including the ones that are `null` or empty, on every object
//! the emulator renders — created, listed and fetched. A strict client (one that indexes
//! `nic["runtime"]`) must find each key. Key lists come from cloudsigma-docs `dumps/` (named at
//! each list); `[D]` marks keys the emulator adds beyond them.
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `want`: (key, must be null). Every key present; the null ones null.
fn check(what: &str, v: &Value, want: &[(&str, bool)]) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for (k, null) in want {
        let got = o
            .get(*k)
            .unwrap_or_else(|| panic!("{what}: missing key {k} in {v}"));
        if *null {
            assert!(got.is_null(), "{what}: {k} must be null, got {got}");
        }
    }
}

/// [V dumps/response_server_create_minimal, response_pubkeys_server] a stopped server.
const SERVER: &[(&str, bool)] = &[
    ("context", false),
    ("cpu", false),
    ("cpu_model", true),
    ("cpu_type", false),
    ("cpus_instead_of_cores", false),
    ("drives", false),
    ("enable_numa", false),
    ("grantees", false),
    ("hv_relaxed", false),
    ("hv_tsc", false),
    ("hypervisor", false),
    ("jobs", false),
    ("mem", false),
    ("meta", false),
    ("name", false),
    ("nics", false),
    ("owner", false),
    ("permissions", false),
    ("pubkeys", false),
    ("requirements", false),
    ("resource_uri", false),
    ("runtime", true),
    ("smp", false),
    ("status", false),
    ("tags", false),
    ("uuid", false),
    ("vnc_password", false),
];
/// [V dumps/response_server_get_two_nics, response_pubkeys_server] a NIC of a stopped server.
const NIC_STOPPED: &[(&str, bool)] = &[
    ("boot_order", true),
    ("ip_v4_conf", false),
    ("ip_v6_conf", true),
    ("mac", false),
    ("model", false),
    ("runtime", true),
    ("vlan", true),
];
/// [V dumps/response_server_attach_drive] a server's drive while stopped.
const SERVER_DRIVE_STOPPED: &[(&str, bool)] = &[
    ("boot_order", false),
    ("dev_channel", false),
    ("device", false),
    ("drive", false),
    ("runtime", true),
];
/// [V dumps/response_drive_get_unmounted]
const DRIVE: &[(&str, bool)] = &[
    ("affinities", false),
    ("allow_multimount", false),
    ("grantees", false),
    ("jobs", false),
    ("licenses", false),
    ("media", false),
    ("meta", false),
    ("mounted_on", false),
    ("name", false),
    ("owner", false),
    ("permissions", false),
    ("resource_uri", false),
    ("runtime", false),
    ("size", false),
    ("snapshots", false),
    ("status", false),
    ("storage_type", false),
    ("tags", false),
    ("uuid", false),
];

#[tokio::test]
async fn server_and_drive_keys_on_create_list_and_get() {
    let t = instant().await;
    let d = t.ready_drive("d", 1 << 30).await;
    let created = t.create_server("s", Some(&d)).await;
    let u = created["uuid"].as_str().unwrap().to_string();
    let (_, listed) = t.get("servers/detail/").await;
    let (s, got) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::OK);
    for (what, v) in [
        ("create", &created),
        ("detail list", &listed["objects"][0]),
        ("get", &got),
    ] {
        check(what, v, SERVER);
        check(what, &v["nics"][0], NIC_STOPPED);
        check(what, &v["drives"][0], SERVER_DRIVE_STOPPED);
        // the reference `ip_v4_conf` of a DHCP NIC: {"conf": "dhcp", "ip": null}
        check(
            what,
            &v["nics"][0]["ip_v4_conf"],
            &[("conf", false), ("ip", true)],
        );
    }
    // [V dumps/response_server_list] the short list
    let (_, short) = t.get("servers/").await;
    check(
        "short",
        &short["objects"][0],
        &[
            ("name", false),
            ("owner", false),
            ("resource_uri", false),
            ("runtime", true),
            ("status", false),
            ("uuid", false),
        ],
    );

    // running: NIC runtime and drive runtime are objects [V dumps/response_server_get_running]
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, run) = t.get(&format!("servers/{u}/")).await;
    check(
        "running nic runtime",
        &run["nics"][0]["runtime"],
        &[
            ("interface_type", false),
            ("io", false),
            ("ip_v4", false),
            ("ip_v6", true),
        ],
    );
    assert_eq!(run["drives"][0]["runtime"]["io"]["bytes_read"], 0);
    check(
        "runtime",
        &run["runtime"],
        &[("active_since", false), ("nics", false)],
    );

    let (_, dcreated) = t
        .post(
            "drives/",
            json!({"objects": [{"name": "e", "size": 1 << 30, "media": "disk"}]}),
        )
        .await;
    let (_, dlisted) = t.get("drives/detail/").await;
    let (_, dgot) = t.get(&format!("drives/{d}/")).await;
    for (what, v) in [
        ("drive create", &dcreated["objects"][0]),
        ("drive list", &dlisted["objects"][0]),
        ("drive get", &dgot),
    ] {
        check(what, v, DRIVE);
        check(
            what,
            &v["runtime"],
            &[
                ("is_snapshotable", false),
                ("snapshots_allocated_size", false),
                ("storage_type", false),
            ],
        );
    }
    // [V dumps/response_drive_list] the short list
    let (_, dshort) = t.get("drives/").await;
    check(
        "drive short",
        &dshort["objects"][0],
        &[
            ("owner", false),
            ("resource_uri", false),
            ("status", false),
            ("uuid", false),
        ],
    );
}

#[tokio::test]
async fn library_ip_vlan_and_tag_keys() {
    let t = instant().await;
    // [V dumps/response_libdrive_get]
    let (_, libs) = t.get("libdrives/").await;
    let lib = &libs["objects"][0];
    check(
        "libdrive",
        lib,
        &[
            ("affinities", false),
            ("allow_multimount", false),
            ("arch", false),
            ("category", false),
            ("description", false),
            ("distribution", false),
            ("favourite", false),
            ("image_type", false),
            ("install_notes", false),
            ("jobs", false),
            ("licenses", false),
            ("media", false),
            ("meta", false),
            ("mounted_on", false),
            ("name", false),
            ("os", false),
            ("owner", true),
            ("paid", false),
            ("resource_uri", false),
            ("size", false),
            ("status", false),
            ("storage_type", false),
            ("tags", false),
            ("url", false),
            ("uuid", false),
            ("version", false),
        ],
    );
    // a library drive registered with only the required fields gets the same keys
    let (s, _) = t
        .admin(
            reqwest::Method::POST,
            "libdrives",
            Some(json!({"name": "bare", "media": "disk", "size": 1073741824u64})),
        )
        .await;
    assert!(s.is_success(), "{s}");
    let (_, bare) = t.get("libdrives/?name=bare").await;
    check(
        "bare libdrive",
        &bare["objects"][0],
        &[
            ("category", false),
            ("licenses", false),
            ("owner", true),
            ("storage_type", true),
            ("url", false),
        ],
    );
    // [V dumps/response_ip_get]
    let ip_keys: &[(&str, bool)] = &[
        ("gateway", false),
        ("grantees", false),
        ("meta", false),
        ("nameservers", false),
        ("netmask", false),
        ("owner", false),
        ("permissions", false),
        ("resource_uri", false),
        ("server", true),
        ("subscription", false),
        ("tags", false),
        ("uuid", false),
    ];
    let (_, ips) = t.get("ips/detail/").await;
    check("ip list", &ips["objects"][0], ip_keys);
    let addr = ips["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, ip) = t.get(&format!("ips/{addr}/")).await;
    check("ip get", &ip, ip_keys);
    // [V dumps/response_vlan_get]
    let vlan_keys: &[(&str, bool)] = &[
        ("bottom_vlan_tag", false),
        ("grantees", false),
        ("meta", false),
        ("owner", false),
        ("permissions", false),
        ("resource_uri", false),
        ("servers", false),
        ("subscription", false),
        ("tags", false),
        ("uuid", false),
    ];
    let (_, vlans) = t.get("vlans/detail/").await;
    check("vlan list", &vlans["objects"][0], vlan_keys);
    let vu = vlans["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, vlan) = t.get(&format!("vlans/{vu}/")).await;
    check("vlan get", &vlan, vlan_keys);
    // [V dumps/response_tags_get]
    let tag_keys: &[(&str, bool)] = &[
        ("meta", false),
        ("name", false),
        ("owner", false),
        ("resource_uri", false),
        ("resources", false),
        ("uuid", false),
    ];
    let (_, tc) = t.post("tags/", json!({"objects": [{"name": "t"}]})).await;
    check("tag create", &tc["objects"][0], tag_keys);
    let (_, tl) = t.get("tags/").await;
    check("tag list", &tl["objects"][0], tag_keys);
    let tu = tc["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, tg) = t.get(&format!("tags/{tu}/")).await;
    check("tag get", &tg, tag_keys);
}

#[tokio::test]
async fn a_strict_client_reads_nic_runtime_on_its_first_create() {
    // The failure of issue #13 item 10, as a typed client sees it: `nic["runtime"]` is a key
    // error unless the key is there (null for a stopped server).
    let t = instant().await;
    let created = t.create_server("first", None).await;
    let nic = created["nics"][0].as_object().unwrap();
    assert!(nic.contains_key("runtime") && nic["runtime"].is_null());
}
