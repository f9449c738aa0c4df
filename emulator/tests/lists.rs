//! Pagination meta, filters, `fields=`, short vs detail lists.
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn many(t: &T, n: usize) -> Vec<String> {
    let objects: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("node-{i:02}"), "cpu": 1000, "mem": 536870912, "vnc_password": "x"}))
        .collect();
    let (s, v) = t.post("servers/", json!({ "objects": objects })).await;
    assert_eq!(s, StatusCode::CREATED);
    v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["uuid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn pagination_meta_and_pages() {
    let t = instant().await;
    let ids = many(&t, 25).await;
    let (_, v) = t.get("servers/detail/").await;
    assert_eq!(
        v["meta"],
        json!({"limit": 20, "offset": 0, "total_count": 25}),
        "default page is 20"
    );
    assert_eq!(v["objects"].as_array().unwrap().len(), 20);
    let (_, v) = t.get("servers/detail/?limit=20&offset=20").await;
    assert_eq!(
        v["meta"],
        json!({"limit": 20, "offset": 20, "total_count": 25})
    );
    assert_eq!(v["objects"].as_array().unwrap().len(), 5);
    let (_, v) = t.get("servers/detail/?limit=0").await;
    assert_eq!(v["meta"]["limit"], 0);
    let got: Vec<&str> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "limit=0 lists all, in creation order"
    );
    let (_, v) = t.get("servers/?limit=10&offset=100").await;
    assert_eq!(v["objects"].as_array().unwrap().len(), 0);
    assert_eq!(v["meta"]["total_count"], 25);
    let (s, v) = t.get("servers/?limit=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&v, "validation")["error_point"], "limit");
}

#[tokio::test]
async fn server_filters() {
    let t = instant().await;
    let ids = many(&t, 12).await;
    let (_, v) = t.get("servers/detail/?name=node-03,node-07&limit=0").await;
    assert_eq!(v["meta"]["total_count"], 2);
    let (_, v) = t.get("servers/detail/?name__contains=node-1&limit=0").await;
    assert_eq!(v["meta"]["total_count"], 2, "node-10, node-11");
    let (_, v) = t
        .get(&format!(
            "servers/detail/?uuid={},{}&limit=0",
            ids[0], ids[5]
        ))
        .await;
    assert_eq!(v["meta"]["total_count"], 2);
    t.action("servers", &ids[1], "start").await;
    t.wait_status("servers", &ids[1], "running").await;
    let (_, v) = t.get("servers/detail/?status=running&limit=0").await;
    assert_eq!(v["meta"]["total_count"], 1);
    assert_eq!(v["objects"][0]["uuid"], ids[1].as_str());
    let (_, v) = t.get("servers/detail/?status=running&name=node-02").await;
    assert_eq!(v["meta"]["total_count"], 0, "filters AND");
    let (_, v) = t.get("servers/detail/?fields=uuid,status&limit=3").await;
    let o = v["objects"][0].as_object().unwrap();
    assert_eq!(o.len(), 2, "{o:?}");
    assert!(o.contains_key("uuid") && o.contains_key("status"));
}

#[tokio::test]
async fn short_and_detail_shapes() {
    let t = instant().await;
    many(&t, 1).await;
    let (_, v) = t.get("servers/").await;
    let keys: Vec<&String> = v["objects"][0].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["name", "owner", "resource_uri", "runtime", "status", "uuid"]
    );
    t.create_drive("d", 1 << 30).await;
    let (_, v) = t.get("drives/").await;
    let keys: Vec<&String> = v["objects"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["owner", "resource_uri", "status", "uuid"]);
    let (_, v) = t.get("drives/detail/").await;
    assert_eq!(v["objects"][0]["name"], "d");
}

#[tokio::test]
async fn libdrive_filters_and_clone_into_account() {
    let t = instant().await;
    let (_, v) = t
        .get("libdrives/?distribution=Ubuntu&version=24.04&arch=64&image_type=preinst")
        .await;
    assert_eq!(v["meta"]["total_count"], 1, "{v}");
    let lib = &v["objects"][0];
    assert_eq!(lib["name"], "Ubuntu 24.04 LTS");
    assert_eq!(lib["default_user"], "cloudsigma");
    assert_eq!(lib["size"], json!(10u64 << 30));
    // the fields of dumps/response_libdrive_get
    for k in [
        "affinities",
        "allow_multimount",
        "arch",
        "category",
        "description",
        "distribution",
        "favourite",
        "image_type",
        "install_notes",
        "jobs",
        "licenses",
        "media",
        "meta",
        "mounted_on",
        "name",
        "os",
        "owner",
        "paid",
        "resource_uri",
        "size",
        "status",
        "storage_type",
        "tags",
        "url",
        "uuid",
        "version",
    ] {
        assert!(lib.get(k).is_some(), "libdrive lacks {k}");
    }
    assert_eq!(lib["status"], "unmounted");
    assert!(lib["category"].is_array());
    let (_, v) = t.get("libdrives/?name__icontains=debian").await;
    assert_eq!(v["meta"]["total_count"], 1);
    let (_, v) = t.get("libdrives/?image_type=install").await;
    assert_eq!(v["objects"][0]["media"], "cdrom");
    let (_, v) = t.get("libdrives/?category=general&limit=0").await;
    assert!(v["meta"]["total_count"].as_u64().unwrap() >= 3, "{v}");
    let (_, v) = t.get("libdrives/?category=dbserver").await;
    assert_eq!(v["meta"]["total_count"], 0);
    let (_, v) = t.get("libdrives/?os=windows").await;
    assert_eq!(v["meta"]["total_count"], 0);
    // clone through /drives/{lib}/action/ too, with library fields copied into meta
    let uuid = lib["uuid"].as_str().unwrap();
    let (s, v) = t
        .post(
            &format!("drives/{uuid}/action/?do=clone"),
            json!({"name": "mine", "size": 20u64 << 30}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let d = &v["objects"][0];
    assert_eq!(d["name"], "mine");
    assert_eq!(d["size"], json!(20u64 << 30));
    assert_eq!(d["meta"]["distribution"], "Ubuntu");
    assert_eq!(d["meta"]["version"], "24.04");
    assert_eq!(d["meta"]["default_user"], "cloudsigma");
    // the library itself is unchanged and not listed among account drives
    let (_, v) = t.get("drives/detail/?limit=0").await;
    assert_eq!(v["meta"]["total_count"], 1);
}

#[tokio::test]
async fn registered_library_drive_is_listed() {
    let t = instant().await;
    let (s, v) = t
        .admin(
            reqwest::Method::POST,
            "libdrives",
            Some(json!({"name": "Local Debian", "media": "disk", "size": 2147483648u64, "distribution": "Debian", "version": "12-local", "arch": "64", "image_type": "preinst", "image_path": "/tmp/x.qcow2"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = t.get("libdrives/?version=12-local").await;
    assert_eq!(v["meta"]["total_count"], 1);
    let (s, _) = t
        .admin(reqwest::Method::POST, "libdrives", Some(json!([1, 2])))
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a non-object is refused, not a crash"
    );
    let (s, _) = t
        .admin(
            reqwest::Method::POST,
            "libdrives",
            Some(json!({"name": "no size"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn ips_and_vlans_are_seeded() {
    let t = instant().await;
    let (_, v) = t.get("ips/detail/").await;
    assert!(v["meta"]["total_count"].as_u64().unwrap() >= 2);
    let ip = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(v["objects"][0]["netmask"], 24);
    for k in [
        "gateway",
        "grantees",
        "meta",
        "nameservers",
        "netmask",
        "owner",
        "permissions",
        "resource_uri",
        "server",
        "subscription",
        "tags",
        "uuid",
    ] {
        assert!(v["objects"][0].get(k).is_some(), "ip lacks {k}");
    }
    let (_, v) = t.get("vlans/detail/").await;
    let vlan = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    // a server with a static IP and a VLAN NIC shows in both
    let (s, v) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x",
              "nics": [{"ip_v4_conf": {"conf": "static", "ip": {"uuid": ip}}, "model": "virtio"}, {"vlan": vlan}]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let u = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, v) = t.get(&format!("ips/{ip}/")).await;
    assert_eq!(v["server"]["uuid"], u.as_str());
    let (_, v) = t.get(&format!("vlans/{vlan}/")).await;
    assert_eq!(v["servers"][0]["uuid"], u.as_str());
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, v) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(v["nics"][0]["runtime"]["ip_v4"]["uuid"], ip.as_str());
    assert_eq!(v["nics"][1]["runtime"]["interface_type"], "private");
    // [V docs] the IP list also shows dynamically assigned (NAT) addresses
    let dynamic = t.create_server("dyn", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.action("servers", &dynamic, "start").await;
    t.wait_status("servers", &dynamic, "running").await;
    let (_, sv) = t.get(&format!("servers/{dynamic}/")).await;
    let nat = sv["nics"][0]["runtime"]["ip_v4"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = t.get("ips/?limit=0").await;
    let entry = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["uuid"] == nat.as_str())
        .expect("NAT ip listed");
    assert_eq!(entry["server"]["uuid"], dynamic.as_str());
    let (s, v) = t.get(&format!("ips/{nat}/")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["subscription"].is_null());
    assert_eq!(v["netmask"], 24);
    t.action("servers", &dynamic, "stop").await;
    t.wait_status("servers", &dynamic, "stopped").await;
    assert_eq!(
        t.get(&format!("ips/{nat}/")).await.0,
        StatusCode::NOT_FOUND,
        "released on stop"
    );
    assert!(v["nics"][1]["runtime"]["ip_v4"].is_null());
    // the same static IP cannot go to a second server
    let (s, v) = t
        .post("servers/", json!({"objects": [{"name": "s2", "cpu": 1000, "mem": 536870912, "vnc_password": "x", "nics": [{"ip_v4_conf": {"conf": "static", "ip": ip}}]}]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&v, "validation")["error_point"], "nics");
}

#[tokio::test]
async fn ip_and_vlan_meta_and_tags_are_editable() {
    let t = instant().await;
    let (_, v) = t.get("ips/").await;
    let ip = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, v) = t.get("vlans/").await;
    let vlan = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (s, v) = t
        .put(&format!("ips/{ip}/"), json!({"meta": {"role": "ingress"}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["meta"], json!({"role": "ingress"}));
    let (s, v) = t
        .put(
            &format!("ips/{ip}/"),
            json!({"meta": {"role": "changed"}, "tags": ["00000000-0000-4000-8000-000000000000"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, v) = t.get(&format!("ips/{ip}/")).await;
    assert_eq!(
        v["meta"],
        json!({"role": "ingress"}),
        "a refused PUT changes nothing"
    );
    let (_, tag) = t.post("tags/", json!({"objects": [{"name": "net"}]})).await;
    let tag = tag["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (s, v) = t
        .put(
            &format!("vlans/{vlan}/"),
            json!({"meta": {"name": "cluster"}, "tags": [tag]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tags"][0]["uuid"], tag.as_str());
    let (_, v) = t.get(&format!("tags/{tag}/vlans/")).await;
    assert_eq!(v["objects"][0]["uuid"], vlan.as_str());
    assert_eq!(v["objects"][0]["meta"]["name"], "cluster");
    assert_eq!(
        t.put("ips/192.0.2.1/", json!({"meta": {}})).await.0,
        StatusCode::NOT_FOUND
    );
}
