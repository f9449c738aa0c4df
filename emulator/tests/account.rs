//! `/profile/`, `/capabilities/`, `/keypairs/` and `/pubkeys/` (cloudsigma-docs profile.rst,
//! capabilities.rst, keypairs.rst and their dumps), and the default page size.
mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

// A syntactically valid ed25519 public key: blob = len(11) "ssh-ed25519" len(32) 32 bytes.
const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f me@host";

/// `want`: space-separated keys that must all be present.
fn keys_present(v: &Value, want: &str) {
    for k in want.split_whitespace() {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
}

#[tokio::test]
async fn profile_get_and_put() {
    let t = instant().await;
    let (s, p) = t.get("profile/").await;
    assert_eq!(s, StatusCode::OK);
    // [V dumps/response_profile] every key; null ones null
    keys_present(&p, "address api_https_only autotopup_amount autotopup_threshold bank_reference clone_naming company country currency email first_name has_autotopup has_tx_autotopup invoicing key_auth language last_name mailing_list meta my_notes network_restrictions nickname phone postcode reseller signup_time state tax_name tax_rate title town tx_autotopup_amount tx_autotopup_threshold uuid vat");
    assert!(p["tax_rate"].is_null() && p["network_restrictions"].is_null());
    assert_eq!(p["email"], t.emu.username());
    // the profile's uuid is the owner every object points at
    let (_, srv) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x"}]}),
        )
        .await;
    assert_eq!(srv["objects"][0]["owner"]["uuid"], p["uuid"]);

    // [V dumps/request_profile_update] PUT changes the given keys
    let (s, p2) = t
        .put(
            "profile/",
            json!({"company": "Newly Set Company Name", "uuid": "x", "meta": {"a": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p2}");
    assert_eq!(p2["company"], "Newly Set Company Name");
    assert_eq!(p2["uuid"], p["uuid"], "uuid is read-only");
    assert_eq!(p2["meta"]["a"], "1");
    let (_, p3) = t.get("profile/").await;
    assert_eq!(p3["company"], "Newly Set Company Name");
    // pycloudsigma's test_profile PUTs the whole GET answer back, read-only keys and all
    let (s, back) = t.put("profile/", p3.clone()).await;
    assert_eq!(s, StatusCode::OK, "{back}");
    assert_eq!(back, p3);
    // a wrong type is refused, naming the field
    let (s, e) = t.put("profile/", json!({"invoicing": "yes"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&e, "validation")["error_point"], "invoicing");
    let (s, _) = t.post("profile/", json!({})).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn capabilities_report_the_limits_the_emulator_enforces() {
    let t = instant().await;
    let (s, c) = t.get("capabilities/").await;
    assert_eq!(s, StatusCode::OK);
    // [V dumps/response_capabilities]
    assert_eq!(c["servers"]["cpu"], json!({"max": 96000, "min": 250}));
    keys_present(&c, "drives hosts hypervisors servers snapshots");
    assert_eq!(c["servers"]["smp"], json!({"max": 32, "min": 1}));
    assert_eq!(c["hosts"]["amd"]["mem"]["min"], 268435456);
    assert_eq!(c["hypervisors"]["kvm"], json!(["intel", "amd"]));
    assert!(c["drives"]["zadara"]["min_size"].is_u64());
    // the reported maximum is accepted, one more is refused
    let max = c["servers"]["cpu"]["max"].as_u64().unwrap();
    let mk = |cpu: u64| json!({"objects": [{"name": "s", "cpu": cpu, "mem": 536870912, "vnc_password": "x"}]});
    let (s, _) = t.post("servers/", mk(max)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, e) = t.post("servers/", mk(max + 1)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&e, "validation")["error_point"], "cpu");
}

#[tokio::test]
async fn keypairs_crud_and_pubkeys_view() {
    let t = instant().await;
    let pub_only = json!({"objects": [{"name": "pub only", "public_key": ED25519}]});
    let (s, v) = t.post("keypairs/", pub_only).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let k = &v["objects"][0];
    // [V dumps/response_pub_key_only_keypair_create]
    keys_present(
        k,
        "fingerprint grantees meta name permissions private_key public_key resource_uri tags uuid",
    );
    assert!(k["private_key"].is_null());
    // [V dumps] the MD5 colon-hex fingerprint of the key blob
    let fp = k["fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 47, "{fp}");
    assert_eq!(Some(fp.to_string()), cloudsim::keygen::fingerprint(ED25519));
    let u = k["uuid"].as_str().unwrap().to_string();
    assert_eq!(k["resource_uri"], format!("/api/2.0/keypairs/{u}/"));
    let (_, full) = t
        .post(
            "keypairs/",
            json!([{"name": "both", "public_key": ED25519, "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n"}]),
        )
        .await;
    let u2 = full["objects"][0]["uuid"].as_str().unwrap().to_string();

    let (s, l) = t.get("keypairs/").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(l["meta"]["total_count"], 2);
    let (_, g) = t.get(&format!("keypairs/{u2}/")).await;
    assert_eq!(g["name"], "both");
    assert!(g["private_key"].is_string());

    // [V dumps/response_pubkeys_list] no private_key, has_private_key instead
    let (_, pl) = t.get("pubkeys/").await;
    let by_name = |n: &str| {
        pl["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("both")["has_private_key"], true);
    assert_eq!(by_name("pub only")["has_private_key"], false);
    assert!(by_name("both").get("private_key").is_none());
    let (_, pg) = t.get(&format!("pubkeys/{u}/")).await;
    assert_eq!(pg["resource_uri"], format!("/api/2.0/pubkeys/{u}/"));
    // pubkeys is read-only [V docs keypairs.rst]
    let (s, _) = t
        .post(
            "pubkeys/",
            json!({"objects": [{"name": "x", "public_key": ED25519}]}),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = t.delete(&format!("pubkeys/{u}/")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // a server's pubkeys point at /pubkeys/ [V dumps/response_pubkeys_server]
    let (s, srv) = t
        .post("servers/", json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x", "pubkeys": [u.clone()]}]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{srv}");
    assert_eq!(
        srv["objects"][0]["pubkeys"][0]["resource_uri"],
        format!("/api/2.0/pubkeys/{u}/")
    );
    // an unknown key is refused, naming the field
    let (s, e) = t
        .post("servers/", json!({"objects": [{"name": "s", "cpu": 1000, "mem": 536870912, "vnc_password": "x", "pubkeys": ["nope"]}]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error(&e, "validation")["error_point"], "pubkeys");

    // PUT renames, DELETE removes
    let (s, r) = t
        .put(&format!("keypairs/{u}/"), json!({"name": "new_name"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["name"], "new_name");
    assert_eq!(r["public_key"], ED25519);
    let (s, _) = t.delete(&format!("keypairs/{u}/")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) = t.get(&format!("keypairs/{u}/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "notexist");
}

/// [V docs keypairs.rst, dumps/response_autogen_keypair_create] no key given → a pair is
/// generated: RSA by default (PKCS#1 PEM), ed25519 on request; the private key is kept in
/// `/keypairs/` and hidden by `/pubkeys/`.
#[tokio::test]
async fn keypairs_are_generated_when_no_key_is_given() {
    let t = instant().await;
    let (s, v) = t
        .post(
            "keypairs/",
            json!({"objects": [{"name": "gen"}, {"name": "gen ed", "algorithm_type": "ed25519"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let rsa = &v["objects"][0];
    keys_present(
        rsa,
        "fingerprint grantees meta name permissions private_key public_key resource_uri tags uuid",
    );
    assert!(rsa.get("algorithm_type").is_none(), "{rsa}");
    let public = rsa["public_key"].as_str().unwrap();
    assert!(public.starts_with("ssh-rsa AAAA"), "{public}");
    assert!(rsa["private_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert_eq!(
        rsa["fingerprint"].as_str(),
        cloudsim::keygen::fingerprint(public).as_deref()
    );
    let ed = &v["objects"][1];
    let ed_public = ed["public_key"].as_str().unwrap();
    assert!(ed_public.starts_with("ssh-ed25519 AAAA"), "{ed_public}");
    assert!(ed["private_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    // kept: GET /keypairs/ answers the same pair again, /pubkeys/ only says there is one
    let u = ed["uuid"].as_str().unwrap();
    let (_, g) = t.get(&format!("keypairs/{u}/")).await;
    assert_eq!(g["private_key"], ed["private_key"]);
    let (_, p) = t.get(&format!("pubkeys/{u}/")).await;
    assert_eq!(p["has_private_key"], true);
    assert!(p.get("private_key").is_none());
    assert_eq!(p["public_key"], ed_public);
}

#[tokio::test]
async fn keypair_refusals() {
    let t = instant().await;
    for (body, point) in [
        // a private key alone (omit both to have a pair generated)
        (
            json!({"name": "k", "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n"}),
            "public_key",
        ),
        (
            json!({"name": "k", "algorithm_type": "dsa"}),
            "algorithm_type",
        ),
        (json!({"name": "k", "algorithm_type": 1}), "algorithm_type"),
        (
            json!({"name": "k", "public_key": "ssh-rsa not-base64!"}),
            "public_key",
        ),
        (
            json!({"name": "k", "public_key": "ssh-dss AAAAB3NzaC1kc3M="}),
            "public_key",
        ),
        // the blob names another algorithm than the line
        (
            json!({"name": "k", "public_key": ED25519.replace("ssh-ed25519 ", "ssh-rsa ")}),
            "public_key",
        ),
        (json!({"public_key": ED25519}), "name"),
    ] {
        let (s, e) = t.post("keypairs/", json!({"objects": [body]})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(assert_error(&e, "validation")["error_point"], point);
    }
    let (_, l) = t.get("keypairs/").await;
    assert_eq!(
        l["meta"]["total_count"], 0,
        "a refused create creates nothing"
    );
}

#[tokio::test]
async fn keypairs_and_profile_survive_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    let cfg = || cloudsim::EmulatorConfig {
        state_file: Some(file.clone()),
        ..cloudsim::EmulatorConfig::for_tests()
    };
    let t = start(cfg()).await;
    t.post(
        "keypairs/",
        json!({"objects": [{"name": "kept", "public_key": ED25519}]}),
    )
    .await;
    t.put("profile/", json!({"town": "Sofia"})).await;
    t.emu.shutdown().await;
    let t = start(cfg()).await;
    let (_, l) = t.get("pubkeys/").await;
    assert_eq!(l["objects"][0]["name"], "kept");
    let (_, p) = t.get("profile/").await;
    assert_eq!(p["town"], "Sofia");
}

#[tokio::test]
async fn lists_default_to_pages_of_20() {
    // [V dumps/response_jobs_list, response_tags_list_resource]: no `limit` → meta.limit 20
    let t = instant().await;
    for i in 0..21 {
        t.post(
            "keypairs/",
            json!({"objects": [{"name": format!("k{i}"), "public_key": ED25519}]}),
        )
        .await;
    }
    for path in ["keypairs/", "pubkeys/"] {
        let (_, l) = t.get(path).await;
        assert_eq!(l["meta"]["limit"], 20);
        assert_eq!(l["meta"]["total_count"], 21);
        assert_eq!(l["objects"].as_array().unwrap().len(), 20);
        let (_, all) = t.get(&format!("{path}?limit=0")).await;
        assert_eq!(all["objects"].as_array().unwrap().len(), 21);
    }
}
