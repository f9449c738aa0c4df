//! Field names and JSON types against the reference's captured exchanges
//! (cloudsigma-docs dumps: response_server_get_running, response_drive_get_unmounted,
//! response_server_list, response_drive_clone).
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn has_all(v: &Value, want: &[&str]) {
    let k = keys(v);
    for w in want {
        assert!(k.iter().any(|x| x == w), "missing {w} in {k:?}");
    }
}

fn is_resource_ref(v: &Value, res: &str) {
    let uuid = v["uuid"].as_str().expect("uuid string");
    assert_eq!(
        v["resource_uri"].as_str().unwrap(),
        format!("/api/2.0/{res}/{uuid}/")
    );
}

#[tokio::test]
async fn running_server_matches_reference_dump() {
    let t = instant().await;
    let d = t.ready_drive("d", 1 << 30).await;
    let created = t.create_server("testServerAcc", Some(&d)).await;
    let u = created["uuid"].as_str().unwrap().to_string();
    // stopped: runtime null, nic has a MAC already
    assert!(created["runtime"].is_null());
    let mac = created["nics"][0]["mac"].as_str().unwrap();
    assert!(mac.len() == 17 && mac.split(':').count() == 6, "{mac}");
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (s, v) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::OK);
    has_all(
        &v,
        &[
            "context",
            "cpu",
            "cpu_model",
            "cpus_instead_of_cores",
            "drives",
            "enable_numa",
            "grantees",
            "hv_relaxed",
            "hv_tsc",
            "jobs",
            "mem",
            "meta",
            "name",
            "nics",
            "owner",
            "permissions",
            "requirements",
            "resource_uri",
            "runtime",
            "smp",
            "status",
            "tags",
            "uuid",
            "vnc_password",
        ],
    );
    assert!(v["cpu"].is_u64() && v["mem"].is_u64() && v["smp"].is_u64());
    assert!(v["meta"].is_object() && v["tags"].is_array());
    is_resource_ref(&v["owner"], "user");
    assert_eq!(v["resource_uri"], format!("/api/2.0/servers/{u}/"));
    let drv = &v["drives"][0];
    assert_eq!(drv["boot_order"], 1);
    assert_eq!(drv["dev_channel"], "0:0");
    assert_eq!(drv["device"], "virtio");
    is_resource_ref(&drv["drive"], "drives");
    let nic = &v["nics"][0];
    assert_eq!(nic["ip_v4_conf"]["conf"], "dhcp");
    assert!(nic["ip_v4_conf"]["ip"].is_null());
    assert!(nic["vlan"].is_null());
    assert_eq!(nic["model"], "virtio");
    assert_eq!(nic["runtime"]["interface_type"], "public");
    assert!(nic["runtime"]["ip_v6"].is_null() && nic["runtime"].get("ip_v6").is_some());
    assert_eq!(nic["runtime"]["io"]["bytes_recv"], 0);
    let ip = nic["runtime"]["ip_v4"]["uuid"].as_str().unwrap();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    is_resource_ref(&nic["runtime"]["ip_v4"], "ips");
    let rt = &v["runtime"];
    assert!(rt["active_since"].as_str().unwrap().ends_with("+00:00"));
    assert_eq!(rt["nics"][0]["mac"], nic["mac"]);
    assert_eq!(rt["nics"][0]["ip_v4"]["uuid"], ip);
    assert_eq!(v["status"], "running");
    // GET runtime/ answers the runtime block
    let (_, r) = t.get(&format!("servers/{u}/runtime/")).await;
    assert_eq!(r["nics"][0]["ip_v4"]["uuid"], ip);
    // the models crate parses it
    let _: cloudsigma_api::Server =
        serde_json::from_value(v).expect("server parses into the api model");
}

#[tokio::test]
async fn drive_matches_reference_dump() {
    let t = instant().await;
    let u = t.ready_drive("test_drive_1", 1073741824).await;
    let (_, v) = t.get(&format!("drives/{u}/")).await;
    let want = [
        "affinities",
        "allow_multimount",
        "grantees",
        "jobs",
        "licenses",
        "media",
        "meta",
        "mounted_on",
        "name",
        "owner",
        "permissions",
        "resource_uri",
        "runtime",
        "size",
        "snapshots",
        "status",
        "storage_type",
        "tags",
        "uuid",
    ];
    let mut k = keys(&v);
    k.sort();
    assert_eq!(k, want, "exactly the reference's fields");
    assert_eq!(v["size"], 1073741824u64);
    assert_eq!(v["allow_multimount"], false);
    assert_eq!(v["storage_type"], "dssd");
    assert_eq!(v["status"], "unmounted");
    let _: cloudsigma_api::Drive =
        serde_json::from_value(v).expect("drive parses into the api model");
}

#[tokio::test]
async fn create_answers_201_envelope_and_delete_204_empty() {
    let t = instant().await;
    let (s, v, h) = t
        .req(
            reqwest::Method::POST,
            "drives/",
            Some(serde_json::json!({"objects": [{"name": "a", "size": 1073741824u64, "media": "disk"}, {"name": "b", "size": 1073741824u64, "media": "cdrom"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(h
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(v["objects"].as_array().unwrap().len(), 2);
    let first = v["objects"][0]["uuid"].as_str().unwrap();
    assert_eq!(
        h.get("location").unwrap().to_str().unwrap(),
        format!("/api/2.0/drives/{first}/")
    );
    assert_eq!(v["objects"][1]["media"], "cdrom");
    let u = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    t.wait_status("drives", &u, "unmounted").await;
    let r = t
        .http
        .delete(t.url(&format!("drives/{u}/")))
        .basic_auth(t.emu.username(), Some(t.emu.password()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn paths_without_trailing_slash_are_accepted() {
    let t = instant().await;
    let (s, v) = t.get("servers/detail").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = t.get("libdrives").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn every_detail_listing_parses_into_the_api_models() {
    let t = instant().await;
    let d = t.ready_drive("d", 1 << 30).await;
    let u = t.create_server("s", Some(&d)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.post(
        "tags/",
        serde_json::json!({"objects": [{"name": "x", "resources": [u, d]}]}),
    )
    .await;
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, v) = t.get("servers/detail/?limit=0").await;
    let _: cloudsigma_api::ListResponse<cloudsigma_api::Server> =
        serde_json::from_value(v).expect("servers");
    let (_, v) = t.get("drives/detail/?limit=0").await;
    let _: cloudsigma_api::ListResponse<cloudsigma_api::Drive> =
        serde_json::from_value(v).expect("drives");
    let (_, v) = t.get("libdrives/?limit=0").await;
    let _: cloudsigma_api::ListResponse<cloudsigma_api::LibDrive> =
        serde_json::from_value(v).expect("libdrives");
    let (_, v) = t.get("ips/detail/?limit=0").await;
    let l: cloudsigma_api::ListResponse<cloudsigma_api::Ip> =
        serde_json::from_value(v).expect("ips");
    assert!(l.objects.len() >= 3, "two subscribed + one NAT address");
    let (_, v) = t.get("vlans/detail/?limit=0").await;
    let _: cloudsigma_api::ListResponse<cloudsigma_api::Vlan> =
        serde_json::from_value(v).expect("vlans");
    let (_, v) = t.get("tags/detail/?limit=0").await;
    let tags: cloudsigma_api::ListResponse<cloudsigma_api::Tag> =
        serde_json::from_value(v).expect("tags");
    assert_eq!(tags.objects[0].resources.len(), 2);
    let (_, v) = t
        .post(
            &format!("servers/{u}/action/?do=stop"),
            serde_json::json!({}),
        )
        .await;
    let _: cloudsigma_api::ActionResult = serde_json::from_value(v).expect("action result");
    // the server context parses into the context model
    let ctx = t
        .admin(reqwest::Method::GET, &format!("servers/{u}/context"), None)
        .await
        .1;
    let c: cloudsigma_api::ServerContext = serde_json::from_value(ctx).expect("context");
    assert_eq!(c.uuid, u);
}
