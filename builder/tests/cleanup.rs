//! Cleanup after a failed build (issue #10 item 9): an object whose create answer was lost is
//! looked up by name with retries and, if that keeps failing, reported by name (the build then
//! exits 3) instead of being forgotten; tags this build created are not deleted while another
//! build may be using them.

#[path = "support/fixture.rs"]
mod fixture;

use cloudsigma_api::client::RetryPolicy;
use cloudsigma_api::DriveCreate;
use cloudsim::OnceRule;
use fixture::{fixture, Fixture};
use imgbuild::build::{BuildError, Builder, CleanupReport, Created, Options, Phase};
use imgbuild::cloud::{Auth, Cloud, Config};
use imgbuild::progress::{Mode, Reporter};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A builder whose client tries each idempotent call twice (the default five, with backoff,
/// would only make these tests slow: cleanup's own retries come on top).
fn quick_builder(f: &Fixture) -> Builder {
    let auth = Auth::Basic {
        username: f.emu.username().into(),
        password: f.emu.password().into(),
    };
    let cfg = Config::for_url(&f.emu.api_url(), auth)
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .with_retry(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        });
    Builder::new(
        Cloud::new(cfg).unwrap(),
        Arc::new(f.transport()),
        Reporter::new(Mode::Quiet),
        CancellationToken::new(),
        Options::default(),
    )
}

/// A drive a clone created although its answer never reached the build, and that build's
/// cleanup while the next `failures` drive lists fail: (report, cleanup log, name, uuid).
async fn clean_up_lost_drive(
    f: &Fixture,
    failures: u32,
) -> (CleanupReport, String, String, String) {
    let name = "imgbuild-0badc0de-build".to_string();
    let d = f
        .cloud()
        .create_drive(&DriveCreate {
            name: name.clone(),
            size: 1 << 30,
            media: "disk".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    f.emu.add_once_rule(OnceRule {
        method: Some("GET".into()),
        path: "/api/2.0/drives/".into(),
        status: 500,
        count: failures,
    });
    let b = quick_builder(f);
    let lost = Created {
        maybe_drive: Some(name.clone()),
        ..Default::default()
    };
    let rep = b.cleanup(&lost).await;
    (rep, b.reporter.captured().join("\n"), name, d.uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_is_found_although_the_first_lookups_fail() {
    let f = fixture().await;
    // more failures than one lookup's client retries: only cleanup's own retry finds it
    let (rep, _, _, uuid) = clean_up_lost_drive(&f, 3).await;
    assert!(rep.left.is_empty(), "{rep:?}");
    assert_eq!(rep.deleted, vec![format!("drive {uuid}")]);
    assert_eq!(f.counts().1, 0, "the billed drive must be deleted");
    f.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_create_that_cannot_be_looked_up_is_named_as_left() {
    let f = fixture().await;
    let (rep, log, name, _) = clean_up_lost_drive(&f, 1000).await;
    assert!(
        rep.left
            .iter()
            .any(|l| l.contains(&name) && l.contains("may exist")),
        "the orphan must be named: {rep:?}"
    );
    assert!(
        log.contains(&format!("COULD NOT delete drive named {name}")),
        "{log}"
    );
    f.emu.shutdown().await;
}

/// Options whose hook, when the build enters `phase`, says so on `tell` and then holds the
/// build (blocking a worker thread) until `until` receives, or `wait` passes.
fn hold_at(
    phase: Phase,
    tell: mpsc::Sender<()>,
    until: mpsc::Receiver<()>,
    wait: Duration,
) -> Options {
    let (tell, until) = (Mutex::new(tell), Mutex::new(until));
    Options {
        on_phase: Some(Arc::new(move |p: Phase| {
            if p == phase {
                let _ = tell.lock().unwrap().send(());
                let _ = until.lock().unwrap().recv_timeout(wait);
            }
        })),
        ..Default::default()
    }
}

/// Build A creates the tags and fails; build B, started meanwhile, found A's tags and is about
/// to attach them (its drive exists, its resize has not run). A's cleanup must keep the tags,
/// and B must finish with an image carrying them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_keeps_tags_another_build_has_started_to_use() {
    let f = Arc::new(fixture().await);
    // A's create-server fails (B is held before it, so the one-shot rule is A's)
    f.emu.add_once_rule(OnceRule {
        method: Some("POST".into()),
        path: "/api/2.0/servers/".into(),
        status: 500,
        count: 1,
    });
    let (a_tagged_tx, a_tagged_rx) = mpsc::channel::<()>();
    let (b_at_resize_tx, b_at_resize_rx) = mpsc::channel::<()>();
    let (a_done_tx, a_done_rx) = mpsc::channel::<()>();
    let wait = Duration::from_secs(60);

    let a_opts = hold_at(Phase::Clone, a_tagged_tx, b_at_resize_rx, wait);
    let b_opts = hold_at(Phase::Resize, b_at_resize_tx, a_done_rx, wait);

    let fa = f.clone();
    let a = tokio::spawn(async move {
        let b = fa.builder(fa.transport(), CancellationToken::new(), a_opts);
        b.build(&fa.recipe(&[])).await
    });
    tokio::task::spawn_blocking(move || a_tagged_rx.recv_timeout(wait))
        .await
        .unwrap()
        .expect("build A created its tags");
    let fb = f.clone();
    let b = tokio::spawn(async move {
        let b = fb.builder(fb.transport(), CancellationToken::new(), b_opts);
        b.build(&fb.recipe(&[])).await
    });

    let ra = a.await.unwrap();
    let _ = a_done_tx.send(());
    match &ra {
        Err(BuildError::Failed { phase, cleanup, .. }) => {
            assert_eq!(*phase, Phase::CreateServer);
            assert!(cleanup.left.is_empty(), "{cleanup:?}");
            assert_eq!(cleanup.kept.len(), 3, "{cleanup:?}");
            assert!(
                !cleanup.deleted.iter().any(|d| d.starts_with("tag ")),
                "{cleanup:?}"
            );
        }
        other => panic!("build A should fail at create-server: {other:?}"),
    }
    let m = b
        .await
        .unwrap()
        .expect("build B finishes with the kept tags");
    assert_eq!(
        f.counts(),
        (0, 3, 3),
        "B's image, its two layers and the three shared tags"
    );
    for t in ["imgbuild", "k8s-node", "kubernetes-v1.34.1"] {
        assert!(m.tags.iter().any(|x| x == t), "{t}: {:?}", m.tags);
    }
    let snap = f.emu.snapshot();
    let img = snap.drives.iter().find(|d| d.uuid == m.image_uuid).unwrap();
    assert_eq!(img.tags.len(), 3, "B's image carries the tags");
}

/// Without another build, a failed build still deletes the tags it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_failed_build_deletes_its_tags() {
    let f = fixture().await;
    f.emu.add_once_rule(OnceRule {
        method: Some("POST".into()),
        path: "/api/2.0/servers/".into(),
        status: 500,
        count: 1,
    });
    let r = f.build(&[], Options::default()).await;
    match r {
        Err(BuildError::Failed { cleanup, .. }) => {
            assert!(cleanup.kept.is_empty(), "{cleanup:?}");
            assert_eq!(
                cleanup
                    .deleted
                    .iter()
                    .filter(|d| d.starts_with("tag "))
                    .count(),
                3
            );
        }
        other => panic!("expected a failure: {other:?}"),
    }
    assert_eq!(f.counts(), (0, 0, 0));
    f.emu.shutdown().await;
}
