//! Availability groups and `avoid` (cloudsigma-docs availability_groups.rst), drive hot-plug
//! on a running server (kube-dc's CSI driver), and the `stopping`/`deleting` refusals of DELETE
//! (kube-dc's machine controller).
mod common;
use cloudsim::{EmulatorConfig, Timings};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn running(t: &T, name: &str, avoid: &str) -> String {
    let u = t.create_server(name, None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t
        .post(&format!("servers/{u}/action/?do=start{avoid}"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    t.wait_status("servers", &u, "running").await;
    u
}

fn sorted(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn server_availability_groups_and_start_avoid() {
    let t = instant().await;
    let a = running(&t, "a", "").await;
    let b = running(&t, "b", "").await;
    let stopped = t.create_server("off", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    // without avoid they share a host
    let (s, g) = t.get("servers/availability_groups/").await;
    assert_eq!(s, StatusCode::OK);
    let mut ab = vec![a.clone(), b.clone()];
    ab.sort();
    assert_eq!(g.as_array().unwrap().len(), 1, "{g}");
    assert_eq!(sorted(&g[0]), ab);
    let (_, one) = t.get(&format!("servers/availability_groups/{a}/")).await;
    assert_eq!(sorted(&one), ab);
    // a stopped server is on no host
    let (s, none) = t
        .get(&format!("servers/availability_groups/{stopped}/"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(none, json!([]));
    // start with avoid: a host of its own
    let c = running(&t, "c", &format!("&avoid={a}")).await;
    let (_, alone) = t.get(&format!("servers/availability_groups/{c}/")).await;
    assert_eq!(alone, json!([c]));
    // avoid is best effort: avoiding more servers than there are other hosts still starts
    let d = running(&t, "d", &format!("&avoid={a},{c}")).await;
    let e = running(&t, "e", &format!("&avoid={a},{c},{d}")).await;
    let f = running(&t, "f", &format!("&avoid={a},{c},{d},{e}")).await;
    let (_, gf) = t.get(&format!("servers/availability_groups/{f}/")).await;
    // four hosts, all taken: the last of the list (e) is given up first
    assert!(sorted(&gf).contains(&e), "{gf}");
    // stopping leaves the host
    t.action("servers", &c, "stop").await;
    t.wait_status("servers", &c, "stopped").await;
    let (_, gc) = t.get(&format!("servers/availability_groups/{c}/")).await;
    assert_eq!(gc, json!([]));
    let (s, e404) = t.get("servers/availability_groups/nope/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e404, "notexist");
    let (s, _) = t.post("servers/availability_groups/", json!({})).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn drive_availability_groups_and_create_clone_avoid() {
    let t = instant().await;
    let a = t.ready_drive("a", 1 << 30).await;
    let b = t.ready_drive("b", 1 << 30).await;
    let (_, g) = t.get("drives/availability_groups/").await;
    let mut ab = vec![a.clone(), b.clone()];
    ab.sort();
    assert_eq!(sorted(&g[0]), ab);
    // create with avoid
    let (s, v) = t
        .post(
            &format!("drives/?avoid={a}"),
            json!({"objects": [{"name": "c", "size": 1 << 30, "media": "disk"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let c = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, gc) = t.get(&format!("drives/availability_groups/{c}/")).await;
    assert_eq!(gc, json!([c]));
    // clone avoiding a server = avoiding its drives
    let srv = t.create_server("s", Some(&a)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = t
        .post(
            &format!("drives/{b}/action/?do=clone&avoid={srv}"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let cl = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    let (_, gcl) = t.get(&format!("drives/availability_groups/{cl}/")).await;
    assert!(!sorted(&gcl).contains(&a), "{gcl}");
    let (s, _) = t.get("drives/availability_groups/nope/").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn drives_hot_plug_on_a_running_server() {
    let t = instant().await;
    let boot = t.ready_drive("boot", 1 << 30).await;
    let vol = t.ready_drive("vol", 1 << 30).await;
    let u = t.create_server("node", Some(&boot)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, srv) = t.get(&format!("servers/{u}/")).await;

    // attach as kube-dc's CSI driver does: the whole server with the drive appended
    let mut body = srv.clone();
    body["drives"]
        .as_array_mut()
        .unwrap()
        .push(json!({"boot_order": null, "dev_channel": "0:2", "device": "virtio", "drive": {"uuid": vol}}));
    body["cpu"] = json!(2000); // still ignored while running
    let (s, v) = t.put(&format!("servers/{u}/"), body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["drives"].as_array().unwrap().len(), 2);
    assert_eq!(v["cpu"], 1000);
    assert_eq!(v["status"], "running");
    let (_, d) = t.get(&format!("drives/{vol}/")).await;
    assert_eq!(d["status"], "mounted");
    assert_eq!(d["mounted_on"][0]["uuid"], u);

    // a drive that is busy or on another running server is refused, nothing changes
    let other = t.ready_drive("other", 1 << 30).await;
    let o = t.create_server("other", Some(&other)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.action("servers", &o, "start").await;
    t.wait_status("servers", &o, "running").await;
    let mut steal = v.clone();
    steal["drives"]
        .as_array_mut()
        .unwrap()
        .push(json!({"dev_channel": "1:0", "device": "virtio", "drive": other}));
    let (s, e) = t.put(&format!("servers/{u}/"), steal).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_error(&e, "permission");
    // a channel taken by an attached drive is refused
    let spare = t.ready_drive("spare", 1 << 30).await;
    let mut clash = v.clone();
    clash["drives"] = json!([v["drives"][0], v["drives"][1],
        {"dev_channel": "0:2", "device": "virtio", "drive": spare}]);
    clash["drives"][1]["dev_channel"] = json!("1:1");
    let (s, e) = t.put(&format!("servers/{u}/"), clash).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(assert_error(&e, "validation")["error_point"], "drives");
    let (_, still) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(still["drives"].as_array().unwrap().len(), 2);

    // detach: a PUT without it; the drive is unmounted with no mounted_on, and deletable
    let mut det = still.clone();
    det["drives"] = json!([still["drives"][0]]);
    let (s, v) = t.put(&format!("servers/{u}/"), det).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["drives"].as_array().unwrap().len(), 1);
    let (_, d) = t.get(&format!("drives/{vol}/")).await;
    assert_eq!(d["status"], "unmounted");
    assert_eq!(d["mounted_on"], json!([]));
    let (s, _) = t.delete(&format!("drives/{vol}/")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn hot_plug_refuses_a_drive_that_is_not_idle() {
    let t = start(EmulatorConfig {
        timings: Timings::uniform(Duration::from_millis(300)),
        ..EmulatorConfig::for_tests()
    })
    .await;
    let boot = t.ready_drive("boot", 1 << 30).await;
    let u = t.create_server("node", Some(&boot)).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let fresh = t.create_drive("fresh", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(t.status("drives", &fresh).await, "creating");
    let (_, srv) = t.get(&format!("servers/{u}/")).await;
    let mut body = srv.clone();
    body["drives"]
        .as_array_mut()
        .unwrap()
        .push(json!({"dev_channel": "0:2", "device": "virtio", "drive": fresh}));
    let (s, e) = t.put(&format!("servers/{u}/"), body).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(assert_error(&e, "permission")["error_message"]
        .as_str()
        .unwrap()
        .contains("creating"));
}

#[tokio::test]
async fn delete_refusals_in_stopping_and_deleting() {
    let t = start(EmulatorConfig {
        timings: Timings::uniform(Duration::from_millis(400)),
        ..EmulatorConfig::for_tests()
    })
    .await;
    let u = t.create_server("s", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    t.action("servers", &u, "stop").await;
    assert_eq!(t.status("servers", &u).await, "stopping");
    // the message kube-dc's controller matches: `in state 'stopping'`
    let (s, e) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let msg = assert_error(&e, "permission")["error_message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("in state 'stopping'"), "{msg}");
    // a start while stopping is refused too
    let (s, _) = t.action("servers", &u, "start").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    t.wait_status("servers", &u, "stopped").await;

    let (s, _) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // gone from GET and lists at once …
    let (s, _) = t.get(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // … while a second DELETE or an action says `in state 'deleting'`
    for (status, e) in [
        t.delete(&format!("servers/{u}/")).await,
        t.action("servers", &u, "start").await,
    ] {
        assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
        let m = assert_error(&e, "permission")["error_message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(m.contains("in state 'deleting'"), "{m}");
    }
    // and once the deletion is over, the uuid does not exist
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, e) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
}
