//! Availability groups and `avoid` (cloudsigma-docs availability_groups.rst), drive hot-plug
//! on a running server (kube-dc's CSI driver), and the `stopping`/`deleting` refusals of DELETE
//! (kube-dc's machine controller).
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// The answer is a refusal with `status` and `error_type` whose message contains `needle`.
fn refused(r: &(StatusCode, Value), status: StatusCode, error_type: &str, needle: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    let e = assert_error(&r.1, error_type);
    let m = e["error_message"].as_str().unwrap_or_default();
    assert!(m.contains(needle), "{m}");
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
    let a = t.running_server("a", None, "").await;
    let b = t.running_server("b", None, "").await;
    let stopped = t.server_uuid("off", None).await;
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
    let c = t.running_server("c", None, &format!("&avoid={a}")).await;
    let (_, alone) = t.get(&format!("servers/availability_groups/{c}/")).await;
    assert_eq!(alone, json!([c]));
    // avoid is best effort: avoiding more servers than there are other hosts still starts
    let d = t
        .running_server("d", None, &format!("&avoid={a},{c}"))
        .await;
    let e = t
        .running_server("e", None, &format!("&avoid={a},{c},{d}"))
        .await;
    let f = t
        .running_server("f", None, &format!("&avoid={a},{c},{d},{e}"))
        .await;
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
    let post = t.post("servers/availability_groups/", json!({})).await;
    assert_eq!(post.0, StatusCode::METHOD_NOT_ALLOWED);
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
    let c = uuid_of(&v["objects"][0]);
    let (_, gc) = t.get(&format!("drives/availability_groups/{c}/")).await;
    assert_eq!(gc, json!([c]));
    // clone avoiding a server = avoiding its drives
    let srv = t.server_uuid("s", Some(&a)).await;
    let clone = format!("drives/{b}/action/?do=clone&avoid={srv}");
    let (s, v) = t.post(&clone, json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let cl = uuid_of(&v["objects"][0]);
    let (_, gcl) = t.get(&format!("drives/availability_groups/{cl}/")).await;
    assert!(!sorted(&gcl).contains(&a), "{gcl}");
    let missing = t.get("drives/availability_groups/nope/").await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn drives_hot_plug_on_a_running_server() {
    let t = instant().await;
    let (boot, vol) = (
        t.ready_drive("b", 1 << 30).await,
        t.ready_drive("v", 1 << 30).await,
    );
    let u = t.running_server("node", Some(&boot), "").await;
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
    t.running_server("other", Some(&other), "").await;
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
    let t = with_timings(300).await;
    let boot = t.ready_drive("boot", 1 << 30).await;
    let u = t.running_server("node", Some(&boot), "").await;
    let fresh = uuid_of(&t.create_drive("fresh", 1 << 30).await);
    assert_eq!(t.status("drives", &fresh).await, "creating");
    let (_, srv) = t.get(&format!("servers/{u}/")).await;
    let mut body = srv.clone();
    body["drives"]
        .as_array_mut()
        .unwrap()
        .push(json!({"dev_channel": "0:2", "device": "virtio", "drive": fresh}));
    let r = t.put(&format!("servers/{u}/"), body).await;
    refused(&r, StatusCode::FORBIDDEN, "permission", "creating");
}

#[tokio::test]
async fn delete_refusals_in_stopping_and_deleting() {
    let t = with_timings(400).await;
    let u = t.running_server("s", None, "").await;
    t.action("servers", &u, "stop").await;
    assert_eq!(t.status("servers", &u).await, "stopping");
    // the message kube-dc's controller matches: `in state 'stopping'`
    let r = t.delete(&format!("servers/{u}/")).await;
    refused(
        &r,
        StatusCode::FORBIDDEN,
        "permission",
        "in state 'stopping'",
    );
    // a start while stopping is refused too
    let r = t.action("servers", &u, "start").await;
    refused(&r, StatusCode::FORBIDDEN, "permission", "stopping");
    t.wait_status("servers", &u, "stopped").await;

    let path = format!("servers/{u}/");
    assert_eq!(t.delete(&path).await.0, StatusCode::NO_CONTENT);
    // still visible while it is being deleted, with status `deleting` and no runtime …
    let (s, v) = t.get(&path).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "deleting");
    assert!(v["runtime"].is_null(), "{v}");
    let (_, l) = t.get("servers/?status=deleting").await;
    assert_eq!(l["meta"]["total_count"], 1, "{l}");
    assert_eq!(l["objects"][0]["status"], "deleting");
    // … and our own client decodes it
    let c = client::client_for(&t.emu, client::retry(1), Duration::from_secs(5));
    let got = c.get_server(&u).await.unwrap();
    assert_eq!(got.status, cloudsigma_api::ServerStatus::Deleting);
    // … while a second DELETE or an action says `in state 'deleting'`
    for r in [
        t.delete(&format!("servers/{u}/")).await,
        t.action("servers", &u, "start").await,
    ] {
        refused(
            &r,
            StatusCode::FORBIDDEN,
            "permission",
            "in state 'deleting'",
        );
    }
    // and once the deletion is over, the uuid does not exist
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.get(&path).await.0, StatusCode::NOT_FOUND);
    let (_, l) = t.get("servers/").await;
    assert_eq!(l["meta"]["total_count"], 0);
    let (s, e) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
}

/// Placements survive the state file: servers and drives started/created with `avoid` are
/// still on hosts of their own after a reload (before, a load put everything on host 0).
#[tokio::test]
async fn placements_survive_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    let cfg = || cloudsim::EmulatorConfig {
        state_file: Some(file.clone()),
        ..cloudsim::EmulatorConfig::for_tests()
    };
    let t = start(cfg()).await;
    let a = t.running_server("a", None, "").await;
    let b = t.running_server("b", None, &format!("&avoid={a}")).await;
    let c = t.running_server("c", None, "").await;
    let d1 = t.ready_drive("d1", 1 << 30).await;
    let (s, v) = t
        .post(
            &format!("drives/?avoid={d1}"),
            json!({"objects": [{"name": "d2", "size": 1 << 30, "media": "disk"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let d2 = uuid_of(&v["objects"][0]);
    let d3 = t.ready_drive("d3", 1 << 30).await;
    let before = all_groups(&t).await;
    // a and c share host 0, b is alone; d1 and d3 share a host, d2 is alone
    let mut ac = vec![a.clone(), c.clone()];
    ac.sort();
    assert_eq!(sorted(&before.0[0]), ac, "{:?}", before);
    let mut d13 = vec![d1.clone(), d3.clone()];
    d13.sort();
    assert_eq!(sorted(&before.1[0]), d13, "{:?}", before);
    t.emu.shutdown().await;

    let t = start(cfg()).await;
    assert_eq!(t.status("servers", &b).await, "running");
    let after = all_groups(&t).await;
    assert_eq!(after, before);
    let (_, gb) = t.get(&format!("servers/availability_groups/{b}/")).await;
    assert_eq!(gb, json!([b]));
    let (_, gd2) = t.get(&format!("drives/availability_groups/{d2}/")).await;
    assert_eq!(gd2, json!([d2]));
}

async fn all_groups(t: &T) -> (Value, Value) {
    let (_, sg) = t.get("servers/availability_groups/").await;
    let (_, dg) = t.get("drives/availability_groups/").await;
    (sg, dg)
}
