//! The shared server cache against the emulator: one listing serves many lookups; unknown uuids
//! trigger at most one extra listing per min-interval; failures back off.

use std::sync::Arc;
use std::time::Duration;

use cloudsigma_api::client::Client;
use cloudsigma_api::models::{Nic, ServerCreate};
use cloudsigma_controller::cache::{Lookup, ServerCache};
use cloudsigma_controller::Metrics;
use cloudsim::{Emulator, EmulatorConfig, FaultConfig, Timings};

fn list_calls(emu: &cloudsim::EmulatorHandle) -> u64 {
    let (_, c) = emu.counters();
    c.iter()
        .filter(|(k, _)| k.starts_with("GET") && k.contains("servers/detail"))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listing_serves_concurrent_lookups_and_unknown_uuids_are_rate_limited() {
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = cache_client(&emu);
    let mut uuids = vec![];
    for i in 0..20 {
        let s = cs
            .create_server(&ServerCreate {
                name: format!("s{i}"),
                cpu: 1000,
                mem: 1 << 30,
                vnc_password: "x".into(),
                nics: vec![Nic::public_dhcp()],
                ..Default::default()
            })
            .await
            .expect("create");
        uuids.push(s.uuid);
    }
    emu.reset_counters();
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(ServerCache::new(
        cs,
        metrics.clone(),
        Duration::from_secs(30),
        Duration::from_millis(500),
    ));

    // 20 concurrent lookups → one listing.
    let tasks: Vec<_> = uuids
        .iter()
        .map(|u| {
            let (c, u) = (cache.clone(), u.clone());
            tokio::spawn(async move { matches!(c.by_uuid(&u).await, Ok(Lookup::Found(_))) })
        })
        .collect();
    for t in tasks {
        assert!(t.await.expect("join"), "every server found");
    }
    assert_eq!(list_calls(&emu), 1, "counters: {:?}", emu.counters());
    assert_eq!(metrics.api_calls_total("list_servers"), 1);

    // Unknown uuid right after a listing: no new call (< min-interval), and no verdict either —
    // that listing predates the lookup, so it is "ask again in <= min-interval", never "missing".
    match cache.by_uuid("00000000-0000-4000-8000-00000000dead").await {
        Ok(Lookup::NotYet(d)) => assert!(d <= Duration::from_millis(500), "{d:?}"),
        other => panic!("want NotYet, got {other:?}"),
    }
    assert!(matches!(
        cache.by_name("not-yet-there").await,
        Ok(Lookup::NotYet(_))
    ));
    assert_eq!(list_calls(&emu), 1);
    // Later, the first unknown lookup refreshes and that fresh listing confirms the miss; the next
    // ones within min-interval make no call and get no verdict.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..10 {
        let r = cache
            .by_uuid("00000000-0000-4000-8000-00000000dead")
            .await
            .expect("lookup");
        if i == 0 {
            assert!(matches!(r, Lookup::NotListed), "{r:?}");
        } else {
            assert!(matches!(r, Lookup::NotYet(_)), "{r:?}");
        }
    }
    assert_eq!(
        list_calls(&emu),
        2,
        "one on-demand refresh only: {:?}",
        emu.counters()
    );
    // A lookup pending since before the last listing began (an earlier attempt missed or the
    // listing failed) is answered by that listing: no new listing, no "ask again" (issue 21 item 8:
    // with a new start per retry, Nodes waiting for a confirmation got one per min-interval).
    let began = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        cache
            .by_uuid_since("00000000-0000-4000-8000-00000000beef", began)
            .await,
        Ok(Lookup::NotListed)
    ));
    for _ in 0..5 {
        let r = cache
            .by_uuid_since("00000000-0000-4000-8000-00000000beef", began)
            .await
            .expect("lookup");
        assert!(matches!(r, Lookup::NotListed), "{r:?}");
        let r = cache
            .by_name_since("never-there", began)
            .await
            .expect("lookup");
        assert!(matches!(r, Lookup::NotListed), "{r:?}");
    }
    assert_eq!(
        list_calls(&emu),
        3,
        "one listing answers them all: {:?}",
        emu.counters()
    );
    // The same lookups begun now are not answered by it.
    assert!(matches!(
        cache.by_name("never-there").await,
        Ok(Lookup::NotYet(_))
    ));
    assert_eq!(list_calls(&emu), 3);

    // Name lookups come from the same listing.
    assert!(matches!(
        cache.by_name("s3").await.expect("by name"),
        Lookup::Found(_)
    ));
    assert_eq!(list_calls(&emu), 3);

    // Gone is only confirmed by a 404.
    assert_eq!(
        cache
            .confirm_gone("00000000-0000-4000-8000-00000000dead")
            .await,
        Ok(true)
    );
    assert_eq!(cache.confirm_gone(&uuids[0]).await, Ok(false));
    emu.set_faults(FaultConfig {
        error_rate: 1.0,
        error_status: 500,
        ..Default::default()
    });
    assert!(
        cache
            .confirm_gone("00000000-0000-4000-8000-00000000dead")
            .await
            .is_err(),
        "a 500 is not 'gone'"
    );

    // Failing listings back off: a second refresh right after a failure is not attempted.
    let stale = Arc::new(ServerCache::new(
        cache_client(&emu),
        metrics.clone(),
        Duration::from_millis(1),
        Duration::from_millis(1),
    ));
    assert!(stale.fresh().await.is_err());
    let before = list_calls(&emu);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let e = stale
        .fresh()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("backed off"), "{e}");
    assert_eq!(list_calls(&emu), before, "no request while backing off");
    emu.shutdown().await;
}

fn cache_client(emu: &cloudsim::EmulatorHandle) -> Client {
    cloudsigma_controller::testkit::cloudsigma_client(
        &emu.api_url(),
        emu.username(),
        emu.password(),
        |cfg| {
            cfg.retry.max_attempts = 1;
        },
    )
}
