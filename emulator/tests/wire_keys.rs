//! Every key the real API sends, including the ones that are `null` or empty, on every object
//! the emulator renders — created, listed and fetched. A strict client (one that indexes
//! `nic["runtime"]`) must find each key. Key lists come from cloudsigma-docs `dumps/` (named at
//! each list); `[D]` marks keys the emulator adds beyond them.
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `want`: the keys, space-separated; `key:null` must be null. Every key present.
fn check(what: &str, v: &Value, want: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for w in want.split_whitespace() {
        let (k, null) = match w.strip_suffix(":null") {
            Some(k) => (k, true),
            None => (w, false),
        };
        let got = o
            .get(k)
            .unwrap_or_else(|| panic!("{what}: missing key {k} in {v}"));
        assert!(
            !null || got.is_null(),
            "{what}: {k} must be null, got {got}"
        );
    }
}

/// The first object of `GET {res}/detail/` and the same object fetched alone, both checked.
async fn check_list_and_get(t: &T, res: &str, want: &str) {
    let (_, l) = t.get(&format!("{res}/detail/")).await;
    check(&format!("{res} list"), &l["objects"][0], want);
    let u = uuid_of(&l["objects"][0]);
    let (_, one) = t.get(&format!("{res}/{u}/")).await;
    check(&format!("{res} get"), &one, want);
}

/// [V dumps/response_server_create_minimal, response_pubkeys_server] a stopped server.
const SERVER: &str = "context cpu cpu_model:null cpu_type cpus_instead_of_cores drives enable_numa grantees hv_relaxed hv_tsc hypervisor jobs mem meta name nics owner permissions pubkeys requirements resource_uri runtime:null smp status tags uuid vnc_password";
/// [V dumps/response_server_get_two_nics, response_pubkeys_server] a NIC of a stopped server.
const NIC_STOPPED: &str =
    "boot_order:null ip_v4_conf ip_v6_conf:null mac model runtime:null vlan:null";
/// [V dumps/response_server_attach_drive] a server's drive while stopped.
const SERVER_DRIVE_STOPPED: &str = "boot_order dev_channel device drive runtime:null";
/// [V dumps/response_drive_get_unmounted]
const DRIVE: &str = "affinities allow_multimount grantees jobs licenses media meta mounted_on name owner permissions resource_uri runtime size snapshots status storage_type tags uuid";

#[tokio::test]
async fn server_and_drive_keys_on_create_list_and_get() {
    let t = instant().await;
    let d = t.ready_drive("d", 1 << 30).await;
    let created = t.create_server("s", Some(&d)).await;
    let u = uuid_of(&created);
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
        check(what, &v["nics"][0]["ip_v4_conf"], "conf ip:null");
    }
    // [V dumps/response_server_list] the short list
    let (_, short) = t.get("servers/").await;
    check(
        "short",
        &short["objects"][0],
        "name owner resource_uri runtime:null status uuid",
    );

    // running: NIC runtime and drive runtime are objects [V dumps/response_server_get_running]
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, run) = t.get(&format!("servers/{u}/")).await;
    check(
        "running nic runtime",
        &run["nics"][0]["runtime"],
        "interface_type io ip_v4 ip_v6:null",
    );
    assert_eq!(run["drives"][0]["runtime"]["io"]["bytes_read"], 0);
    check("runtime", &run["runtime"], "active_since nics");

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
            "is_snapshotable snapshots_allocated_size storage_type",
        );
    }
    // [V dumps/response_drive_list] the short list
    let (_, dshort) = t.get("drives/").await;
    check(
        "drive short",
        &dshort["objects"][0],
        "owner resource_uri status uuid",
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
        "affinities allow_multimount arch category description distribution favourite image_type install_notes jobs licenses media meta mounted_on name os owner:null paid resource_uri size status storage_type tags url uuid version",
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
        "category licenses owner:null storage_type:null url",
    );
    // [V dumps/response_ip_get]
    let ip_keys: &str = "gateway grantees meta nameservers netmask owner permissions resource_uri server:null subscription tags uuid";
    check_list_and_get(&t, "ips", ip_keys).await;
    // [V dumps/response_vlan_get]
    let vlan_keys: &str = "bottom_vlan_tag grantees meta owner permissions resource_uri servers subscription tags uuid";
    check_list_and_get(&t, "vlans", vlan_keys).await;
    // [V dumps/response_tags_get]
    let tag_keys: &str = "meta name owner resource_uri resources uuid";
    let (_, tc) = t.post("tags/", json!({"objects": [{"name": "t"}]})).await;
    check("tag create", &tc["objects"][0], tag_keys);
    let (_, tl) = t.get("tags/").await;
    check("tag list", &tl["objects"][0], tag_keys);
    let tu = uuid_of(&tc["objects"][0]);
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
