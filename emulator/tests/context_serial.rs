//! The server context over the per-server unix socket (and pty), byte for byte.
mod common;
use cloudsim::EmulatorConfig;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Send one request, read up to and including EOT.
async fn ask(stream: &mut UnixStream, key: &str) -> Vec<u8> {
    stream
        .write_all(format!("<\n{key}\n>").as_bytes())
        .await
        .unwrap();
    read_answer(stream).await
}

async fn read_answer<S: AsyncReadExt + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    let fut = async {
        loop {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "peer closed");
            out.push(b[0]);
            if b[0] == 0x04 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fut)
        .await
        .expect("answer within 5 s");
    out
}

fn line(ans: &[u8]) -> String {
    assert!(
        ans.ends_with(b"\n\x04"),
        "answer must end with \\n EOT: {ans:?}"
    );
    assert!(ans.is_ascii(), "answer must be ASCII");
    String::from_utf8(ans[..ans.len() - 2].to_vec()).unwrap()
}

async fn setup(cfg: EmulatorConfig) -> (T, String) {
    let t = start(cfg).await;
    let d = t.ready_drive("root", 1 << 30).await;
    t.admin(
        reqwest::Method::PUT,
        "global_context",
        Some(json!({"cluster": "prod", "region": "zrh"})),
    )
    .await;
    let (s, v) = t
        .post(
            "servers/",
            json!({"objects": [{"name": "node-\u{e9}1", "drives": [{"boot_order": 1, "dev_channel": "0:0", "device": "virtio", "drive": d}], "cpu": 2000, "mem": 1073741824u64, "vnc_password": "pw",
                "meta": {"ssh_public_key": "ssh-ed25519 AAAA test", "base64_fields": "cloudinit-user-data", "cloudinit-user-data": "I2Nsb3VkLWNvbmZpZwo="},
                "nics": [{"ip_v4_conf": {"conf": "dhcp"}, "model": "virtio"}]}]}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
    let u = v["objects"][0]["uuid"].as_str().unwrap().to_string();
    (t, u)
}

#[tokio::test]
async fn full_context_and_single_keys() {
    let (t, u) = setup(EmulatorConfig::for_tests()).await;
    let path = t.emu.context_socket(&u);
    assert!(path.exists(), "socket created with the server");
    let mut s = UnixStream::connect(&path).await.unwrap();

    // whole context: the 4-byte request "<\n\n>"
    let all = ask(&mut s, "").await;
    let ctx: Value = serde_json::from_str(&line(&all)).unwrap();
    for k in ["owner", "status", "runtime", "subscriptions"] {
        assert!(ctx.get(k).is_none(), "context must not carry {k}");
    }
    assert_eq!(ctx["uuid"], u.as_str());
    assert_eq!(
        ctx["name"], "node-\u{e9}1",
        "non-ASCII arrives JSON-escaped and decodes back"
    );
    assert!(line(&all).contains("node-\\u00e91"));
    assert_eq!(
        ctx["global_context"],
        json!({"cluster": "prod", "region": "zrh"})
    );
    assert_eq!(ctx["cpu"], 2000);
    assert!(
        ctx["nics"][0]["ip_v4_conf"]["ip"].is_null(),
        "stopped: no address yet"
    );
    // top-level keys of dumps/response_context_all (plus pubkeys, hypervisor, cpu_type of the
    // reference's newer key list)
    let mut keys: Vec<&str> = ctx
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cpu",
            "cpu_model",
            "cpu_type",
            "cpus_instead_of_cores",
            "drives",
            "enable_numa",
            "global_context",
            "hv_relaxed",
            "hv_tsc",
            "hypervisor",
            "mem",
            "meta",
            "name",
            "nics",
            "pubkeys",
            "requirements",
            "smp",
            "tags",
            "uuid",
            "vnc_password"
        ]
    );
    let mut nic_keys: Vec<&str> = ctx["nics"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    nic_keys.sort();
    assert_eq!(
        nic_keys,
        [
            "boot_order",
            "ip_v4_conf",
            "ip_v6_conf",
            "mac",
            "model",
            "vlan"
        ]
    );
    let drive = &ctx["drives"][0];
    assert_eq!(drive["dev_channel"], "0:0");
    let mut dkeys: Vec<&str> = drive["drive"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    dkeys.sort();
    assert_eq!(
        dkeys,
        [
            "affinities",
            "allow_multimount",
            "licenses",
            "media",
            "meta",
            "name",
            "size",
            "tags",
            "uuid"
        ]
    );

    assert_eq!(line(&ask(&mut s, "/name").await), "node-\\u00e91");
    assert_eq!(line(&ask(&mut s, "/uuid").await), u);
    assert_eq!(
        line(&ask(&mut s, "/meta/ssh_public_key").await),
        "ssh-ed25519 AAAA test"
    );
    assert_eq!(
        line(&ask(&mut s, "/meta/base64_fields").await),
        "cloudinit-user-data"
    );
    assert_eq!(line(&ask(&mut s, "/global_context/cluster").await), "prod");
    let mac = line(&ask(&mut s, "/nics/0/mac").await);
    assert_eq!(mac.len(), 17);
    assert_eq!(line(&ask(&mut s, "/cpu").await), "2000");
    assert_eq!(
        line(&ask(&mut s, "/cpu_model").await),
        "",
        "null comes back empty"
    );
    let meta: Value = serde_json::from_str(&line(&ask(&mut s, "/meta/").await)).unwrap();
    assert_eq!(meta["cloudinit-user-data"], "I2Nsb3VkLWNvbmZpZwo=");

    // running: the dhcp NIC's ip is expanded to the runtime address object
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, srv) = t.get(&format!("servers/{u}/")).await;
    let addr = srv["nics"][0]["runtime"]["ip_v4"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let ip: Value =
        serde_json::from_str(&line(&ask(&mut s, "/nics/0/ip_v4_conf/ip").await)).unwrap();
    assert_eq!(ip["uuid"], addr.as_str());
    assert_eq!(ip["netmask"], 24);
    assert!(ip["gateway"].is_string());
    assert!(ip["nameservers"]
        .as_array()
        .map(|a| !a.is_empty())
        .unwrap_or(false));
    assert!(ip.get("meta").is_some() && ip.get("tags").is_some());
    let ctx: Value = serde_json::from_str(&line(&ask(&mut s, "").await)).unwrap();
    assert!(
        ctx["nics"][0].get("runtime").is_none(),
        "NICs carry no runtime in the context"
    );
    assert!(ctx.get("vendor_data").is_none());

    // vendor data appears once set
    t.admin(
        reqwest::Method::PUT,
        "vendor_data",
        Some(json!({"location": "zrh", "cloudinit": "#cloud-config\n"})),
    )
    .await;
    assert_eq!(line(&ask(&mut s, "/vendor_data/location").await), "zrh");
    assert_eq!(
        line(&ask(&mut s, "/vendor_data/cloudinit").await),
        "#cloud-config\\n",
        "control characters escaped"
    );
}

#[tokio::test]
async fn garbage_and_split_requests_are_tolerated() {
    let (t, u) = setup(EmulatorConfig::for_tests()).await;
    let mut s = UnixStream::connect(t.emu.context_socket(&u)).await.unwrap();
    // stale junk, then a request split over several writes
    s.write_all(b"junk\x04\n").await.unwrap();
    s.write_all(b"<\n/na").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.write_all(b"me\n>").await.unwrap();
    assert_eq!(line(&read_answer(&mut s).await), "node-\\u00e91");
    // two requests in one write get two answers
    s.write_all(b"<\n/cpu\n><\n/mem\n>").await.unwrap();
    assert_eq!(line(&read_answer(&mut s).await), "2000");
    assert_eq!(line(&read_answer(&mut s).await), "1073741824");
}

#[tokio::test]
async fn socket_removed_with_server() {
    let (t, u) = setup(EmulatorConfig::for_tests()).await;
    let path = t.emu.context_socket(&u);
    assert!(path.exists());
    let (s, _) = t.delete(&format!("servers/{u}/")).await;
    assert_eq!(s, reqwest::StatusCode::NO_CONTENT);
    assert!(!Path::new(&path).exists());
}

#[tokio::test]
async fn pty_answers_too() {
    let (t, u) = setup(EmulatorConfig {
        context_pty: true,
        ..EmulatorConfig::for_tests()
    })
    .await;
    let pty = t.emu.context_pty(&u).expect("pty opened");
    let (_, state) = t.admin(reqwest::Method::GET, "state", None).await;
    assert_eq!(state["context_ptys"][&u], json!(pty));
    let mut f = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty)
        .await
        .unwrap();
    f.write_all(b"<\n/name\n>").await.unwrap();
    let ans = read_answer(&mut f).await;
    assert_eq!(line(&ans), "node-\\u00e91");
}

#[tokio::test]
async fn crlf_requests_and_keys_without_slash() {
    let (t, u) = setup(EmulatorConfig::for_tests()).await;
    let mut s = UnixStream::connect(t.emu.context_socket(&u)).await.unwrap();
    // [V docs] "The newline can be either CRLF or just LF"; "<\nname\n>" works without a slash
    s.write_all(b"<\r\nname\r\n>").await.unwrap();
    assert_eq!(line(&read_answer(&mut s).await), "node-\\u00e91");
    s.write_all(b"<\r\n\r\n>").await.unwrap();
    let all: Value = serde_json::from_str(&line(&read_answer(&mut s).await)).unwrap();
    assert_eq!(all["uuid"], u.as_str());
    assert_eq!(line(&ask(&mut s, "nics/0/model").await), "virtio");
}

#[tokio::test]
async fn global_context_via_api_shows_in_context() {
    let (t, u) = setup(EmulatorConfig::for_tests()).await;
    let (s, v) = t
        .post(
            "global_context/",
            json!({"new_global_key": "new_global_val"}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    assert_eq!(v, json!({"new_global_key": "new_global_val"}));
    let (_, v) = t.get("global_context/").await;
    assert_eq!(v, json!({"new_global_key": "new_global_val"}));
    let mut sock = UnixStream::connect(t.emu.context_socket(&u)).await.unwrap();
    assert_eq!(
        line(&ask(&mut sock, "/global_context/new_global_key").await),
        "new_global_val"
    );
    // meta edits on a running server are visible immediately [V docs release notes]
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    t.put(&format!("servers/{u}/"), json!({"meta": {"fresh": "yes"}}))
        .await;
    assert_eq!(line(&ask(&mut sock, "/meta/fresh").await), "yes");
}

/// The node agent's live read of its VLAN NIC's address assignment (issue 22, docs/agent.md
/// "Address assignment from the server meta"): the key has colons (`k8s-ipv4-<mac>`), is absent
/// (an empty line) until the controller's PUT, and is there at the next request after it.
#[tokio::test]
async fn an_assignment_key_with_colons_is_absent_then_live() {
    let (t, u) = setup(EmulatorConfig::for_tests()).await;
    let mut sock = UnixStream::connect(t.emu.context_socket(&u)).await.unwrap();
    let key = "/meta/k8s-ipv4-22:aa:bb:cc:dd:02";
    assert_eq!(
        line(&ask(&mut sock, key).await),
        "",
        "absent: an empty line"
    );
    t.action("servers", &u, "start").await;
    t.wait_status("servers", &u, "running").await;
    let (_, server) = t.get(&format!("servers/{u}/")).await;
    let mut meta = server["meta"].clone();
    meta["k8s-ipv4-22:aa:bb:cc:dd:02"] = json!("192.168.77.10/24");
    t.put(&format!("servers/{u}/"), json!({"meta": meta})).await;
    assert_eq!(line(&ask(&mut sock, key).await), "192.168.77.10/24");
}
