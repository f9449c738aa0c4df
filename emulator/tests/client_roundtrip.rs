//! Round trips of the cloudsigma-api REST client against cloudsim: every endpoint the builder and
//! controller use, pagination, the API's refusals as typed errors, and the waiters.

mod common;
use cloudsigma_api::client::{Auth, Client, Config, Error};
use cloudsigma_api::*;
use cloudsim::{EmulatorConfig, EmulatorHandle, Timings};
use common::client::{self, admin, WAIT};
use std::time::{Duration, Instant};

/// Clients here try each idempotent call up to 4 times.
async fn start(cfg: EmulatorConfig) -> (EmulatorHandle, Client) {
    client::start(cfg, 4).await
}

async fn instant() -> (EmulatorHandle, Client) {
    start(EmulatorConfig::for_tests()).await
}

fn disk(name: &str, gib: u64) -> DriveCreate {
    DriveCreate {
        name: name.into(),
        size: gib << 30,
        media: "disk".into(),
        ..Default::default()
    }
}

fn server_spec(name: &str, drive: Option<&str>) -> ServerCreate {
    ServerCreate {
        name: name.into(),
        cpu: 2000,
        mem: 1 << 30,
        vnc_password: "vncpw".into(),
        drives: drive
            .map(|d| {
                vec![ServerDrive {
                    boot_order: Some(1),
                    dev_channel: "0:0".into(),
                    device: "virtio".into(),
                    drive: Ref::from(d),
                    extra: Default::default(),
                }]
            })
            .unwrap_or_default(),
        nics: vec![Nic::public_dhcp()],
        meta: [("role".to_string(), "worker".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A 1 GiB disk, `unmounted`.
async fn ready_drive(c: &Client, name: &str) -> Drive {
    client::ready_drive(c, &disk(name, 1)).await
}

#[tokio::test]
async fn servers_crud_actions_runtime_and_recursive_delete() {
    let (_emu, c) = instant().await;
    let d = ready_drive(&c, "boot").await;
    let s = c
        .create_server(&server_spec("node-1", Some(&d.uuid)))
        .await
        .unwrap();
    assert_eq!(s.status, ServerStatus::Stopped);
    assert_eq!(s.name, "node-1");
    assert_eq!(s.meta.get("role").map(String::as_str), Some("worker"));
    assert_eq!(s.drives[0].drive.uuid(), d.uuid);

    let got = c.get_server(&s.uuid).await.unwrap();
    assert_eq!(got.uuid, s.uuid);
    assert!(got.runtime.is_none());
    assert!(
        c.server_runtime(&s.uuid).await.unwrap().is_none(),
        "no runtime while stopped"
    );

    // list + filters
    c.create_server(&server_spec("other", None)).await.unwrap();
    let all = c.list_servers().await.unwrap();
    assert_eq!(all.len(), 2);
    let f = c
        .list_servers_filtered(&[("name", "node-1")])
        .await
        .unwrap();
    assert_eq!(
        f.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>(),
        [s.uuid.as_str()]
    );

    // update (PUT full definition)
    let mut upd = got.clone();
    upd.name = "node-1b".into();
    upd.meta.insert("k".into(), "v".into());
    let upd = c.update_server(&upd).await.unwrap();
    assert_eq!(upd.name, "node-1b");
    assert_eq!(
        c.get_server(&s.uuid)
            .await
            .unwrap()
            .meta
            .get("k")
            .map(String::as_str),
        Some("v")
    );

    // start → running with a NAT runtime IP; drive mounted
    let a = c.start_server(&s.uuid).await.unwrap();
    assert_eq!(
        (a.action.as_str(), a.result.as_str(), a.uuid.as_str()),
        ("start", "success", s.uuid.as_str())
    );
    let running = c
        .wait_server_status(&s.uuid, ServerStatus::Running, WAIT)
        .await
        .unwrap();
    let ip = running.nics[0]
        .runtime_ipv4()
        .expect("runtime IP while running")
        .to_string();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    let rt = c
        .server_runtime(&s.uuid)
        .await
        .unwrap()
        .expect("runtime while running");
    assert!(!rt.nics.is_empty());
    assert_eq!(
        c.get_drive(&d.uuid).await.unwrap().status,
        DriveStatus::Mounted
    );

    // refusals as typed errors
    let e = c.start_server(&s.uuid).await.unwrap_err();
    assert!(matches!(e.status(), Some(400..=499)), "{e}");
    assert!(!e.api_errors().is_empty(), "{e:?}");
    let e = c.delete_drive(&d.uuid).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.api_errors()[0].error_message.contains("mounted"), "{e}");
    assert!(e.request_id().is_some());
    let e = c.delete_server(&s.uuid, None).await.unwrap_err();
    assert!(
        matches!(e.status(), Some(400..=499)),
        "deleting a running server: {e}"
    );

    // stop → stopped; shutdown of a stopped server is refused
    let a = c.stop_server(&s.uuid).await.unwrap();
    assert_eq!(a.action, "stop");
    c.wait_server_status(&s.uuid, ServerStatus::Stopped, WAIT)
        .await
        .unwrap();
    assert!(c.server_runtime(&s.uuid).await.unwrap().is_none());
    assert_eq!(
        c.get_drive(&d.uuid).await.unwrap().status,
        DriveStatus::Unmounted
    );

    // restart keeps it running
    c.start_server(&s.uuid).await.unwrap();
    c.wait_server_status(&s.uuid, ServerStatus::Running, WAIT)
        .await
        .unwrap();
    assert_eq!(c.restart_server(&s.uuid).await.unwrap().action, "restart");
    c.wait_server_status(&s.uuid, ServerStatus::Running, WAIT)
        .await
        .unwrap();
    c.stop_server(&s.uuid).await.unwrap();
    c.wait_server_status(&s.uuid, ServerStatus::Stopped, WAIT)
        .await
        .unwrap();

    // start + ACPI shutdown
    c.start_server(&s.uuid).await.unwrap();
    c.wait_server_status(&s.uuid, ServerStatus::Running, WAIT)
        .await
        .unwrap();
    assert_eq!(c.shutdown_server(&s.uuid).await.unwrap().action, "shutdown");
    c.wait_server_status(&s.uuid, ServerStatus::Stopped, WAIT)
        .await
        .unwrap();

    // delete with recurse takes the drive too
    c.delete_server(&s.uuid, Some("all_drives")).await.unwrap();
    assert!(c.get_server(&s.uuid).await.unwrap_err().is_not_found());
    assert!(c.get_drive(&d.uuid).await.unwrap_err().is_not_found());
    assert_eq!(c.list_servers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn delete_server_recurse_disks_and_plain() {
    let (_emu, c) = instant().await;
    let d1 = ready_drive(&c, "a").await;
    let s1 = c
        .create_server(&server_spec("s1", Some(&d1.uuid)))
        .await
        .unwrap();
    c.delete_server(&s1.uuid, Some("disks")).await.unwrap();
    assert!(c.get_drive(&d1.uuid).await.unwrap_err().is_not_found());
    let d2 = ready_drive(&c, "b").await;
    let s2 = c
        .create_server(&server_spec("s2", Some(&d2.uuid)))
        .await
        .unwrap();
    c.delete_server(&s2.uuid, None).await.unwrap();
    assert_eq!(
        c.get_drive(&d2.uuid).await.unwrap().status,
        DriveStatus::Unmounted,
        "plain delete keeps drives"
    );
}

#[tokio::test]
async fn drives_crud_clone_resize() {
    let (_emu, c) = instant().await;
    let d = c.create_drive(&disk("data", 1)).await.unwrap();
    assert_eq!(d.status, DriveStatus::Creating);
    assert_eq!(d.size, 1 << 30);
    let d = c
        .wait_drive_status(&d.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap();

    let mut upd = d.clone();
    upd.name = "data-renamed".into();
    upd.meta.insert("purpose".into(), "test".into());
    let upd = c.update_drive(&upd).await.unwrap();
    assert_eq!(upd.name, "data-renamed");
    assert_eq!(upd.meta.get("purpose").map(String::as_str), Some("test"));

    let cl = c
        .clone_drive(
            &d.uuid,
            &DriveClone {
                name: Some("data-clone".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(cl.uuid, d.uuid);
    assert_eq!(cl.name, "data-clone");
    assert_eq!(cl.status, DriveStatus::CloningDst);
    let cl = c
        .wait_drive_status(&cl.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap();
    assert_eq!(cl.size, d.size);

    let r = c.resize_drive(&cl, 2 << 30).await.unwrap();
    assert_eq!(r.uuid, cl.uuid);
    assert_eq!(r.status, DriveStatus::Resizing);
    let r = c
        .wait_drive_status(&cl.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap();
    assert_eq!(r.size, 2 << 30);

    let all = c.list_drives().await.unwrap();
    assert_eq!(all.len(), 2);
    let f = c
        .list_drives_filtered(&[("name", "data-clone")])
        .await
        .unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].uuid, cl.uuid);

    c.delete_drive(&cl.uuid).await.unwrap();
    assert!(c.get_drive(&cl.uuid).await.unwrap_err().is_not_found());
    assert_eq!(c.list_drives().await.unwrap().len(), 1);
}

#[tokio::test]
async fn libdrives_list_filter_clone() {
    let (_emu, c) = instant().await;
    let all = c.list_libdrives(&[]).await.unwrap();
    assert!(all.len() >= 3, "{}", all.len());
    let ubuntu = c
        .list_libdrives(&[
            ("distribution", "Ubuntu"),
            ("version", "24.04"),
            ("image_type", "preinst"),
        ])
        .await
        .unwrap();
    assert_eq!(ubuntu.len(), 1, "{ubuntu:?}");
    let u = &ubuntu[0];
    assert_eq!(u.name, "Ubuntu 24.04 LTS");
    assert_eq!(u.default_user.as_deref(), Some("cloudsigma"));
    assert_eq!(u.arch.as_deref(), Some("64"));
    assert_eq!(c.get_libdrive(&u.uuid).await.unwrap().uuid, u.uuid);
    assert!(c
        .list_libdrives(&[("distribution", "Plan9")])
        .await
        .unwrap()
        .is_empty());

    let d = c
        .clone_libdrive(
            &u.uuid,
            &DriveClone {
                name: Some("k8s-base".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(d.name, "k8s-base");
    let d = c
        .wait_drive_status(&d.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap();
    assert_eq!(d.size, u.size);
    assert_eq!(
        d.meta.get("distribution").map(String::as_str),
        Some("Ubuntu"),
        "{:?}",
        d.meta
    );
    // the library itself is unchanged, the clone is in the account
    assert_eq!(c.list_drives().await.unwrap().len(), 1);
}

#[tokio::test]
async fn ips_and_vlans() {
    let (_emu, c) = instant().await;
    let ips = c.list_ips().await.unwrap();
    assert!(!ips.is_empty(), "the emulator seeds subscribed IPs");
    assert!(
        ips.iter()
            .all(|i| i.uuid.parse::<std::net::Ipv4Addr>().is_ok()),
        "{ips:?}"
    );
    assert_eq!(c.get_ip(&ips[0].uuid).await.unwrap().uuid, ips[0].uuid);
    assert!(c.get_ip("198.51.100.77").await.unwrap_err().is_not_found());
    let vlans = c.list_vlans().await.unwrap();
    assert!(!vlans.is_empty(), "the emulator seeds a VLAN");
    assert_eq!(
        c.get_vlan(&vlans[0].uuid).await.unwrap().uuid,
        vlans[0].uuid
    );
    // tags on IPs and VLANs
    let t = c
        .create_tag(&TagCreate {
            name: "net".into(),
            resources: vec![
                Ref::from(ips[0].uuid.as_str()),
                Ref::from(vlans[0].uuid.as_str()),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.tag_ips(&t.uuid).await.unwrap()[0].uuid, ips[0].uuid);
    assert_eq!(c.tag_vlans(&t.uuid).await.unwrap()[0].uuid, vlans[0].uuid);
    // a server on a VLAN shows up in the VLAN's servers
    let mut spec = server_spec("private", None);
    spec.nics = vec![Nic {
        vlan: Some(Ref::from(vlans[0].uuid.as_str())),
        model: Some("virtio".into()),
        ..Default::default()
    }];
    let s = c.create_server(&spec).await.unwrap();
    assert_eq!(
        s.nics[0].vlan.as_ref().map(|v| v.uuid()),
        Some(vlans[0].uuid.as_str())
    );
    let v = c.list_vlans().await.unwrap();
    let v0 = v.iter().find(|v| v.uuid == vlans[0].uuid).unwrap();
    assert!(v0.servers.iter().any(|r| r.uuid() == s.uuid), "{v0:?}");
}

#[tokio::test]
async fn tags_crud_and_tagged_resources() {
    let (_emu, c) = instant().await;
    let d = ready_drive(&c, "tagged-drive").await;
    let s = c
        .create_server(&server_spec("tagged-server", None))
        .await
        .unwrap();
    let _untagged = c
        .create_server(&server_spec("untagged", None))
        .await
        .unwrap();
    let t = c
        .create_tag(&TagCreate {
            name: "k8s-cluster-a".into(),
            resources: vec![Ref::from(s.uuid.as_str()), Ref::from(d.uuid.as_str())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.name, "k8s-cluster-a");
    assert_eq!(t.resources.len(), 2);
    assert_eq!(c.get_tag(&t.uuid).await.unwrap().uuid, t.uuid);
    assert!(c
        .list_tags()
        .await
        .unwrap()
        .iter()
        .any(|x| x.uuid == t.uuid));

    let ts = c.tag_servers(&t.uuid).await.unwrap();
    assert_eq!(
        ts.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>(),
        [s.uuid.as_str()]
    );
    // the detail form (what `cloudsigma-controller --cluster-tag` lists) answers the same
    let tsd = c.tag_servers_detail(&t.uuid).await.unwrap();
    assert_eq!(
        tsd.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>(),
        [s.uuid.as_str()]
    );
    assert_eq!(tsd[0].name, "tagged-server");
    let td = c.tag_drives(&t.uuid).await.unwrap();
    assert_eq!(
        td.iter().map(|d| d.uuid.as_str()).collect::<Vec<_>>(),
        [d.uuid.as_str()]
    );
    // the server lists the tag; filtering servers by tag works
    assert!(c
        .get_server(&s.uuid)
        .await
        .unwrap()
        .tags
        .iter()
        .any(|r| r.uuid() == t.uuid));
    let by_tag = c.list_servers_filtered(&[("tag", &t.uuid)]).await.unwrap();
    assert_eq!(by_tag.len(), 1);

    let mut upd = t.clone();
    upd.name = "k8s-cluster-b".into();
    upd.resources.retain(|r| r.uuid() == s.uuid);
    let upd = c.update_tag(&upd).await.unwrap();
    assert_eq!(upd.name, "k8s-cluster-b");
    assert!(c.tag_drives(&t.uuid).await.unwrap().is_empty());
    assert_eq!(c.tag_servers(&t.uuid).await.unwrap().len(), 1);

    c.delete_tag(&t.uuid).await.unwrap();
    assert!(c.get_tag(&t.uuid).await.unwrap_err().is_not_found());
    assert!(c.tag_servers(&t.uuid).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn pagination_reads_all_pages() {
    let (emu, c) = instant().await;
    for i in 0..23 {
        c.create_drive(&disk(&format!("d{i:02}"), 1)).await.unwrap();
    }
    let c = c.with_page_size(5);
    admin(&emu, reqwest::Method::POST, "counters/reset", None).await;
    let before = c.calls();
    let all = c.list_drives().await.unwrap();
    assert_eq!(all.len(), 23);
    let mut uuids: Vec<&str> = all.iter().map(|d| d.uuid.as_str()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 23, "no duplicates across pages");
    assert_eq!(c.calls() - before, 5, "23 objects in pages of 5");
    let counters = admin(&emu, reqwest::Method::GET, "counters", None).await;
    assert_eq!(
        counters["endpoints"]["GET /api/2.0/drives/detail/"], 5,
        "{counters}"
    );
    // an exact multiple of the page size: 4 full pages, no empty 5th request needed
    let c4 = c.clone().with_page_size(23);
    let before = c4.calls();
    assert_eq!(c4.list_drives().await.unwrap().len(), 23);
    assert_eq!(c4.calls() - before, 1);
}

#[tokio::test]
async fn errors_404_401_400() {
    let (emu, c) = instant().await;
    let e = c
        .get_server("00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.api_errors()[0].error_type, "notexist");
    assert!(e.request_id().is_some(), "the emulator sends X-REQUEST-ID");
    assert!(
        e.to_string()
            .contains("/api/2.0/servers/00000000-0000-4000-8000-000000000000/"),
        "{e}"
    );
    assert!(c.get_drive("nope").await.unwrap_err().is_not_found());
    assert!(c.get_tag("nope").await.unwrap_err().is_not_found());

    // wrong credentials: 401, not retried
    let bad = Client::new(
        Config::for_url(
            &emu.api_url(),
            Auth::Basic {
                username: emu.username().into(),
                password: "wrong".into(),
            },
        )
        .unwrap(),
    )
    .unwrap();
    admin(&emu, reqwest::Method::POST, "counters/reset", None).await;
    let e = bad.list_servers().await.unwrap_err();
    assert!(e.is_unauthorized(), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(bad.calls(), 1);
    let counters = admin(&emu, reqwest::Method::GET, "counters", None).await;
    assert_eq!(counters["total"], 1, "{counters}");
    let bearer =
        Client::new(Config::for_url(&emu.api_url(), Auth::Bearer("not-a-token".into())).unwrap())
            .unwrap();
    assert!(bearer.list_drives().await.unwrap_err().is_unauthorized());

    // a malformed create is refused with a validation error naming the field
    let e = c
        .create_drive(&DriveCreate {
            name: "x".into(),
            size: 1 << 30,
            media: "floppy".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert_eq!(e.api_errors()[0].error_type, "validation");
    assert_eq!(
        e.api_errors()[0].error_point.as_deref(),
        Some("media"),
        "{e:?}"
    );
}

#[tokio::test]
async fn waiters_follow_timed_transitions() {
    let (_emu, c) = start(EmulatorConfig {
        timings: Timings::uniform(Duration::from_millis(400)),
        ..EmulatorConfig::for_tests()
    })
    .await;
    let t = Instant::now();
    let d = c.create_drive(&disk("slow", 1)).await.unwrap();
    assert_eq!(d.status, DriveStatus::Creating);
    let before = c.calls();
    let d = c
        .wait_drive_status(&d.uuid, DriveStatus::Unmounted, WAIT)
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let polls = c.calls() - before;
    // backoff 10,20,40,80,100,100… ms: about 7 polls for 400 ms, never a busy loop
    assert!((2..=15).contains(&polls), "{polls} polls");

    let s = c
        .create_server(&server_spec("w", Some(&d.uuid)))
        .await
        .unwrap();
    // waiting for `running` without starting times out, naming what, wanted and last status
    let e = c
        .wait_server_status(&s.uuid, ServerStatus::Running, Duration::from_millis(300))
        .await
        .unwrap_err();
    match &e {
        Error::Timeout {
            what,
            want,
            last,
            waited,
        } => {
            assert_eq!(what, &format!("server {}", s.uuid));
            assert_eq!(want, "running");
            assert_eq!(last, "stopped");
            assert!(*waited >= Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    c.start_server(&s.uuid).await.unwrap();
    assert_eq!(
        c.get_server(&s.uuid).await.unwrap().status,
        ServerStatus::Starting
    );
    c.wait_server_status(&s.uuid, ServerStatus::Running, WAIT)
        .await
        .unwrap();
    c.stop_server(&s.uuid).await.unwrap();
    c.wait_server_status(&s.uuid, ServerStatus::Stopped, WAIT)
        .await
        .unwrap();

    // an object that disappears is an error at once, not a wait until the deadline
    let t = Instant::now();
    let e = c
        .wait_drive_status(
            "00000000-0000-4000-8000-00000000dead",
            DriveStatus::Unmounted,
            WAIT,
        )
        .await
        .unwrap_err();
    assert!(e.is_not_found());
    assert!(t.elapsed() < Duration::from_secs(2));
}
