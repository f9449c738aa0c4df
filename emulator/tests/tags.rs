//! Tags: CRUD, `resources`, `/tags/{uuid}/servers/` etc., consistency with resources' `tags`.
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn tags_crud_and_consistency() {
    let t = instant().await;
    let s1 = t.create_server("a", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let s2 = t.create_server("b", None).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let d = t.create_drive("d", 1 << 30).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();

    let (s, v) = t
        .post(
            "tags/",
            json!({"objects": [{"name": "k8s", "resources": [s1, {"uuid": d}]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let tag = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(v["objects"][0]["resources"][0]["res_type"], "servers");
    assert_eq!(v["objects"][0]["resources"][1]["res_type"], "drives");
    assert_eq!(
        v["objects"][0]["resource_uri"],
        format!("/api/2.0/tags/{tag}/")
    );

    let (_, v) = t.get(&format!("servers/{s1}/")).await;
    assert_eq!(
        v["tags"],
        json!([{"resource_uri": format!("/api/2.0/tags/{tag}/"), "uuid": tag}])
    );
    let (_, v) = t.get(&format!("tags/{tag}/servers/")).await;
    assert_eq!(v["meta"]["total_count"], 1);
    assert_eq!(v["objects"][0]["uuid"], s1.as_str());
    assert_eq!(v["objects"][0]["cpu"], 1000, "full server objects");
    let (_, v) = t.get(&format!("tags/{tag}/drives/")).await;
    assert_eq!(v["objects"][0]["uuid"], d.as_str());
    let (_, v) = t.get(&format!("tags/{tag}/ips/")).await;
    assert_eq!(v["meta"]["total_count"], 0);

    // tagging via the server's PUT shows in the tag
    let (s, _) = t
        .put(&format!("servers/{s2}/"), json!({"tags": [tag]}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.get(&format!("tags/{tag}/servers/")).await;
    assert_eq!(v["meta"]["total_count"], 2);
    let (_, v) = t.get(&format!("servers/detail/?tag={tag}&limit=0")).await;
    assert_eq!(v["meta"]["total_count"], 2);
    let (_, v) = t.get("servers/detail/?tag=k8s&limit=0").await;
    assert_eq!(v["meta"]["total_count"], 2, "tag filter by name");

    // PUT of the tag's resources replaces the membership
    let (s, v) = t
        .put(
            &format!("tags/{tag}/"),
            json!({"name": "k8s-nodes", "resources": [s2]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "k8s-nodes");
    let (_, v) = t.get(&format!("servers/{s1}/")).await;
    assert_eq!(v["tags"], json!([]));
    let (_, v) = t.get(&format!("drives/{d}/")).await;
    assert_eq!(v["tags"], json!([]));

    // unknown resource is refused
    let (s, v) = t.post("tags/", json!({"objects": [{"name": "x", "resources": ["00000000-0000-4000-8000-000000000000"]}]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "validation");

    // deleting a server drops it from the tag; deleting the tag drops it from resources
    t.delete(&format!("servers/{s2}/")).await;
    let (_, v) = t.get(&format!("tags/{tag}/")).await;
    assert_eq!(v["resources"], json!([]));
    t.put(&format!("servers/{s1}/"), json!({"tags": [{"uuid": tag}]}))
        .await;
    let (s, _) = t.delete(&format!("tags/{tag}/")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = t.get(&format!("servers/{s1}/")).await;
    assert_eq!(v["tags"], json!([]));
    let (_, v) = t.get("tags/").await;
    assert_eq!(v["meta"]["total_count"], 0);
}
