//! What a build leaves behind, and removing it: the cleanup guard of a failed or interrupted
//! build (the server, the drive, the tags it created — including an object whose create answer
//! was lost — reporting anything it cannot delete), and `imgbuild clean` for builds killed hard.

use crate::cloud::{Cloud, CloudError};
use crate::naming::{
    base_created, is_base, is_build_in_progress, is_builder_server, now_unix, started_at,
};
use crate::progress::Reporter;
use cloudsigma_api::client::{Error as ApiError, RetryPolicy};
use cloudsigma_api::DriveStatus;
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a build run created, for the cleanup guard.
#[derive(Debug, Default, Clone)]
pub struct Created {
    pub drive: Option<String>,
    pub server: Option<String>,
    pub tags: Vec<(String, String)>,
    /// Names of objects whose create call was sent but whose answer never came (so the uuid is
    /// unknown): cleanup looks them up by name.
    pub maybe_drive: Option<String>,
    pub maybe_server: Option<String>,
    /// What the build made besides the build drive and the builder server: the base layer
    /// while it is captured (and until the build succeeds), `--verify`'s clone and server.
    pub extra: Vec<Extra>,
}

/// One more server or drive of a build, by name until its create call answered.
#[derive(Debug, Clone)]
pub struct Extra {
    /// "server" or "drive".
    pub kind: &'static str,
    pub uuid: Option<String>,
    pub name: String,
}

impl Created {
    /// Note an extra object about to be created (`kind` "server" or "drive").
    pub fn add_extra(&mut self, kind: &'static str, name: &str) {
        self.extra.push(Extra {
            kind,
            uuid: None,
            name: name.into(),
        });
    }
    /// The extra object named `name` now has its uuid.
    pub fn extra_created(&mut self, name: &str, uuid: &str) {
        if let Some(e) = self.extra.iter_mut().find(|e| e.name == name) {
            e.uuid = Some(uuid.into());
        }
    }
    /// The extra object named `name` is gone (deleted) or is a product (kept).
    pub fn forget_extra(&mut self, name: &str) {
        self.extra.retain(|e| e.name != name);
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub deleted: Vec<String>,
    pub left: Vec<String>,
    /// Tags this build created but did not delete because another build may use them.
    pub kept: Vec<String>,
}

/// The cleanup guard of one build: its client, its progress display and the token that abandons
/// the cleanup (a third signal).
pub struct Cleanup<'a> {
    pub cloud: &'a Cloud,
    pub reporter: &'a Reporter,
    pub abandon: &'a CancellationToken,
}

impl Cleanup<'_> {
    /// Delete what a failed build created: stop and delete the server, then the drive, then
    /// tags it created. Each delete is tried a few times (cleanup must survive a flaky API,
    /// including a fault on a non-retried POST like `stop`). The build's cancellation (the
    /// first signal) does not stop it; `abandon` (the third) does, and whatever it had not dealt
    /// with yet is reported as left.
    pub async fn run(&self, created: &Created) -> CleanupReport {
        let mut rep = CleanupReport::default();
        let abandoned = tokio::select! {
            biased;
            _ = self.abandon.cancelled() => true,
            _ = self.cleanup_into(created, &mut rep) => false,
        };
        if abandoned {
            note_abandoned(created, &mut rep);
        }
        for d in &rep.deleted {
            self.reporter.line(&format!("cleanup: deleted {d}"));
        }
        for k in &rep.kept {
            self.reporter.line(&format!("cleanup: kept {k}"));
        }
        for l in &rep.left {
            self.reporter.line(&format!(
                "cleanup: COULD NOT delete {l}; run `imgbuild clean --all` later"
            ));
        }
        rep
    }

    /// The uuid of a created `kind` ("server" or "drive"), or, when its create call got no
    /// answer (it may exist, and be billed), the uuid of the one named `name`. The lookup is
    /// retried like every cleanup call; if it still fails, the name goes into `left` — the build
    /// then exits 3 naming it — rather than being forgotten.
    async fn known_or_found(
        &self,
        kind: &str,
        uuid: &Option<String>,
        name: &Option<String>,
        rep: &mut CleanupReport,
    ) -> Option<String> {
        let n = match (uuid, name) {
            (Some(u), _) => return Some(u.clone()),
            (None, None) => return None,
            (None, Some(n)) => n,
        };
        let q = [("name", n.as_str())];
        let find = || async {
            let named: Vec<(String, String)> = if kind == "server" {
                let v = self.cloud.list_servers_filtered(&q).await?;
                v.into_iter().map(|s| (s.name, s.uuid)).collect()
            } else {
                let v = self.cloud.list_drives_filtered(&q).await?;
                v.into_iter().map(|d| (d.name, d.uuid)).collect()
            };
            Ok(named.into_iter().find(|(m, _)| m == n).map(|(_, u)| u))
        };
        match CLEANUP_RETRY.run(find, cleanup_retryable).await {
            Ok(found) => found,
            Err(e) => {
                rep.left.push(format!(
                    "{kind} named {n}: its create call got no answer and looking it up failed ({e}); it may exist"
                ));
                None
            }
        }
    }

    async fn cleanup_into(&self, created: &Created, rep: &mut CleanupReport) {
        let cloud = self.cloud;
        let mut servers = Vec::new();
        let mut drives = Vec::new();
        let main = [
            ("server", &created.server, &created.maybe_server),
            ("drive", &created.drive, &created.maybe_drive),
        ];
        let extra = created
            .extra
            .iter()
            .map(|e| (e.kind, e.uuid.clone(), Some(e.name.clone())));
        let all: Vec<_> = main
            .into_iter()
            .map(|(k, u, n)| (k, u.clone(), n.clone()))
            .chain(extra)
            .collect();
        for (kind, uuid, name) in &all {
            if let Some(u) = self.known_or_found(kind, uuid, name, rep).await {
                if *kind == "server" {
                    servers.push(u)
                } else {
                    drives.push(u)
                }
            }
        }
        // servers first: a drive stays attached to its server until the server is deleted
        for s in &servers {
            match delete_server_stopping(cloud, s).await {
                Ok(()) => rep.deleted.push(format!("server {s}")),
                Err(e) => rep.left.push(format!("server {s} ({e})")),
            }
        }
        for d in &drives {
            match delete_drive_when_idle(cloud, d).await {
                Ok(()) => rep.deleted.push(format!("drive {d}")),
                Err(e) => rep.left.push(format!("drive {d} ({e})")),
            }
        }
        if !created.tags.is_empty() {
            let own: Vec<&str> = drives.iter().map(String::as_str).collect();
            self.delete_tags_unless_shared(&created.tags, &own, rep)
                .await;
        }
    }

    /// Delete the tags this build created — unless another build may use them. Tags are shared
    /// by name (`imgbuild`, the recipe's output tags): a build started after ours created them
    /// finds them and attaches them to its drive at its resize and to its image at finalize;
    /// deleting them under it would fail its build or strip its image. So a tag is kept (tags
    /// cost nothing) while it tags anything, and every tag is kept while another build's drive
    /// exists (from its clone on, before it tags anything).
    async fn delete_tags_unless_shared(
        &self,
        tags: &[(String, String)],
        own_drives: &[&str],
        rep: &mut CleanupReport,
    ) {
        let cloud = self.cloud;
        let others = match CLEANUP_RETRY
            .run(|| cloud.list_drives(), cleanup_retryable)
            .await
        {
            Ok(ds) => ds
                .iter()
                .filter(|d| !own_drives.contains(&d.uuid.as_str()) && is_build_in_progress(d))
                .count(),
            Err(e) => {
                for (u, n) in tags {
                    rep.kept.push(format!(
                        "tag {n} ({u}): cannot tell whether another build uses it ({e})"
                    ));
                }
                return;
            }
        };
        for (u, n) in tags {
            if others > 0 {
                rep.kept.push(format!(
                    "tag {n} ({u}): {others} other build(s) in progress may use it"
                ));
                continue;
            }
            match CLEANUP_RETRY
                .run(|| cloud.get_tag(u), cleanup_retryable)
                .await
            {
                Ok(t) if !t.resources.is_empty() => {
                    rep.kept.push(format!(
                        "tag {n} ({u}): it tags {} object(s) of another build",
                        t.resources.len()
                    ));
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => {
                    rep.left.push(format!("tag {n} {u} ({e})"));
                    continue;
                }
            }
            match CLEANUP_RETRY
                .run(|| cloud.delete_tag(u), cleanup_retryable)
                .await
            {
                Ok(()) => rep.deleted.push(format!("tag {n} ({u})")),
                Err(e) if e.is_not_found() => {}
                Err(e) => rep.left.push(format!("tag {n} {u} ({e})")),
            }
        }
    }
}

/// A cleanup cut short: everything the build created and cleanup had not dealt with yet is left.
fn note_abandoned(created: &Created, rep: &mut CleanupReport) {
    let done = |what: &str| {
        rep.deleted
            .iter()
            .chain(&rep.kept)
            .chain(&rep.left)
            .any(|d| d.starts_with(what))
    };
    let mut left = Vec::new();
    for (kind, uuid, name) in [
        ("server", &created.server, &created.maybe_server),
        ("drive", &created.drive, &created.maybe_drive),
    ] {
        let what = match (uuid, name) {
            (Some(u), _) => format!("{kind} {u}"),
            (None, Some(n)) => format!("{kind} named {n}"),
            (None, None) => continue,
        };
        if !done(&format!("{kind} ")) {
            left.push(format!("{what} (cleanup abandoned)"));
        }
    }
    for e in &created.extra {
        let what = match &e.uuid {
            Some(u) => format!("{} {u}", e.kind),
            None => format!("{} named {}", e.kind, e.name),
        };
        if !done(&what) {
            left.push(format!("{what} (cleanup abandoned)"));
        }
    }
    for (u, n) in &created.tags {
        if !done(&format!("tag {n} ")) {
            left.push(format!("tag {n} {u} (cleanup abandoned)"));
        }
    }
    rep.left.extend(left);
}

/// Cleanup repeats its idempotent calls (GET, DELETE) a few more times on top of the client's
/// own retries, because it must survive a flaky API and a server or drive still settling.
const CLEANUP_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    base_delay: Duration::from_millis(400),
    max_delay: Duration::from_secs(3),
    max_retry_after: Duration::from_secs(60),
};

/// What cleanup tries again: anything transient, and 403/409 — the API refuses to delete a
/// server or drive while it is still changing state. A 404 means done.
fn cleanup_retryable(e: &ApiError) -> bool {
    !e.is_not_found()
        && (e.status().is_none() || e.is_retryable() || matches!(e.status(), Some(403 | 409)))
}

/// Stop (hard) a server if it is not stopped, wait, and delete it (drives kept).
pub async fn delete_server_stopping(cloud: &Cloud, uuid: &str) -> Result<(), CloudError> {
    // `stop` is a POST: the api crate resends it only after looking the server up again
    match cloud
        .ensure_server_stopped(uuid, Duration::from_secs(180))
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    match CLEANUP_RETRY
        .run(|| cloud.delete_server(uuid, None), cleanup_retryable)
        .await
    {
        Err(e) if e.is_not_found() => Ok(()),
        r => Ok(r?),
    }
}

/// Wait for a drive to leave cloning/resizing, then delete it.
pub async fn delete_drive_when_idle(cloud: &Cloud, uuid: &str) -> Result<(), CloudError> {
    match CLEANUP_RETRY
        .run(|| cloud.get_drive(uuid), cleanup_retryable)
        .await
    {
        Ok(d) if d.status != DriveStatus::Unmounted => {
            cloud
                .wait_drive_status(uuid, DriveStatus::Unmounted, Duration::from_secs(900))
                .await?;
        }
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    match CLEANUP_RETRY
        .run(|| cloud.delete_drive(uuid), cleanup_retryable)
        .await
    {
        Err(e) if e.is_not_found() => Ok(()),
        r => Ok(r?),
    }
}

/// What `imgbuild clean` found / removed.
#[derive(Debug, Default, Serialize)]
pub struct CleanReport {
    pub servers: Vec<String>,
    pub drives: Vec<String>,
    pub failed: Vec<String>,
    /// Base layer drives removed (`--bases`).
    pub bases: Vec<String>,
    /// Base layer drives kept: "uuid (name, age)".
    pub bases_kept: Vec<String>,
}

/// Remove build leftovers as [`clean`] does and, with `bases`, the cached base layers
/// (recipe `base_until`) captured at least `older_than` ago (every one with `all`). Base layers
/// kept are listed with their age either way.
pub async fn clean_with_bases(
    cloud: &Cloud,
    older_than: Duration,
    all: bool,
    bases: bool,
    dry_run: bool,
    report: &dyn Fn(&str),
) -> Result<CleanReport, CloudError> {
    let mut rep = clean(cloud, older_than, all, dry_run, report).await?;
    let now = now_unix();
    for d in cloud.list_drives().await? {
        if !is_base(&d) {
            continue;
        }
        let age = base_created(&d.meta).map(|t| now.saturating_sub(t));
        // every layer of a recipe is one of these (the base and each deeper one); how many steps
        // it holds tells them apart
        let steps = match d.meta.get(crate::naming::META_BASE_STEPS) {
            Some(n) => format!("steps 1..{n}, "),
            None => String::new(),
        };
        let shown = match age {
            Some(a) => format!("{steps}{}h{:02}m old", a / 3600, a % 3600 / 60),
            None => format!("{steps}age unknown"),
        };
        let old = all || age.is_some_and(|a| a >= older_than.as_secs());
        if !(bases && old) {
            report(&format!(
                "keeping base layer {} ({}, {shown}){}",
                d.uuid,
                d.name,
                if bases {
                    ""
                } else {
                    "; --bases removes base layers older than --older-than-minutes"
                }
            ));
            rep.bases_kept
                .push(format!("{} ({}, {shown})", d.uuid, d.name));
            continue;
        }
        let verb = if dry_run { "would delete" } else { "deleting" };
        report(&format!(
            "{verb} base layer {} ({}, {shown})",
            d.uuid, d.name
        ));
        let removed = match dry_run {
            true => Ok(()),
            false => delete_drive_when_idle(cloud, &d.uuid).await,
        };
        match removed {
            Ok(()) => rep.bases.push(d.uuid),
            Err(e) => rep.failed.push(format!("base layer {}: {e}", d.uuid)),
        }
    }
    Ok(rep)
}

/// Remove leftovers of builds killed hard: build servers and in-progress build drives (never
/// finished images). Age comes from meta `imgbuild.started`; objects without it (killed between
/// the clone and the resize call) count as new unless `all`.
pub async fn clean(
    cloud: &Cloud,
    older_than: Duration,
    all: bool,
    dry_run: bool,
    report: &dyn Fn(&str),
) -> Result<CleanReport, CloudError> {
    let now = now_unix();
    let old = |meta: &cloudsigma_api::Meta| -> bool {
        all || started_at(meta)
            .map(|t| now.saturating_sub(t) >= older_than.as_secs())
            .unwrap_or(false)
    };
    // (is a server, uuid, name, status) of each leftover old enough; servers first, since a
    // drive stays attached to its server until the server is deleted
    let mut found: Vec<(bool, String, String, String)> = Vec::new();
    for s in cloud.list_servers().await? {
        if is_builder_server(&s.name, &s.meta) && old(&s.meta) {
            found.push((true, s.uuid, s.name, s.status.to_string()));
        }
    }
    for d in cloud.list_drives().await? {
        if is_build_in_progress(&d) && old(&d.meta) {
            found.push((false, d.uuid, d.name, d.status.to_string()));
        }
    }
    let mut rep = CleanReport::default();
    for (server, uuid, name, status) in found {
        let kind = if server { "server" } else { "drive" };
        let verb = if dry_run { "would delete" } else { "deleting" };
        report(&format!("{verb} {kind} {uuid} ({name}, {status})"));
        let removed = match (dry_run, server) {
            (true, _) => Ok(()),
            (false, true) => delete_server_stopping(cloud, &uuid).await,
            (false, false) => delete_drive_when_idle(cloud, &uuid).await,
        };
        match removed {
            Ok(()) if server => rep.servers.push(uuid),
            Ok(()) => rep.drives.push(uuid),
            Err(e) => rep.failed.push(format!("{kind} {uuid}: {e}")),
        }
    }
    Ok(rep)
}
