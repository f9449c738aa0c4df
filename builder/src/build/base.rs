//! The cached base layer (recipe `base_until`; docs/imgbuild.md, "Cached base layer"):
//! base-lookup finds a layer of this build's base fingerprint, base-capture makes one.
//!
//! Capture syncs the guest, then powers the builder server off (ACPI shutdown, as the shutdown
//! phase; a hard stop after `timeouts.shutdown`, the sync having flushed the base steps' writes) so that the
//! drive is copied with every write on disk and the file systems clean — a `sync` and a copy of
//! the running drive would be a crash-consistent image whose journal replays at the next boot,
//! and whatever a service held in memory would be lost — then clones the drive as
//! `imgbuild-base-<fingerprint>`, starts the server again and logs in (same host key: cloud-init
//! sees the same instance and changes nothing). A build from the layer boots a clone of it on a
//! new server, where cloud-init runs as on a first boot (new instance id): new host key, new
//! login key.

use super::{Builder, Job, StepError, Tags};
use crate::cleanup::Created;
use crate::naming;
use crate::phase::Phase;
use crate::transport::Target;
use cloudsigma_api::{Drive, DriveClone, DriveStatus, Ref, Server};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

/// One lock per base fingerprint (see `Builder::base_locks`).
#[derive(Default)]
pub struct BaseLocks(Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl BaseLocks {
    fn of(&self, fp: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(fp.to_string()).or_default().clone()
    }
}

/// The base layer of this build: found (build from it) or to be captured.
pub(crate) struct Layer {
    pub fp: String,
    /// How many steps (from the first) it holds.
    pub steps: usize,
    /// The layer drive this build starts from; None: the build captures one.
    pub from: Option<Drive>,
    /// The layer this build captured: (uuid, name).
    pub captured: Option<(String, String)>,
    /// Held until the capture is done (see `Builder::base_locks`).
    pub lock: Option<OwnedMutexGuard<()>>,
}

impl Layer {
    pub fn info(&self) -> Option<BaseLayerInfo> {
        let (uuid, name, reused) = match (&self.from, &self.captured) {
            (Some(d), _) => (d.uuid.clone(), d.name.clone(), true),
            (None, Some((u, n))) => (u.clone(), n.clone(), false),
            (None, None) => return None,
        };
        Some(BaseLayerInfo {
            fingerprint: self.fp.clone(),
            uuid,
            name,
            steps: self.steps,
            reused,
        })
    }
}

/// The manifest's `base_layer`.
#[derive(Debug, Clone, Serialize)]
pub struct BaseLayerInfo {
    pub fingerprint: String,
    pub uuid: String,
    pub name: String,
    /// Steps 1..=steps are in the layer.
    pub steps: usize,
    /// true: this build started from the layer; false: it captured it.
    pub reused: bool,
}

/// What base-lookup would find, by GETs only (`--dry-run`): None when the recipe has no usable
/// base layer.
pub async fn look_base_layer(
    cloud: &crate::cloud::Cloud,
    recipe: &crate::recipe::Recipe,
) -> Result<Option<crate::plan::LayerLook>, String> {
    let b = &recipe.spec.base;
    let q = [
        ("distribution", b.distribution.as_str()),
        ("version", b.version.as_str()),
    ];
    let libs = cloud.list_libdrives(&q).await.map_err(|e| e.to_string())?;
    let lib = super::pick_base(&libs, recipe)?;
    let Some(fp) = recipe.base_fingerprint(&lib.uuid) else {
        return Ok(None);
    };
    let tags = cloud.list_tags().await.map_err(|e| e.to_string())?;
    let mut found = None;
    if let Some(t) = tags.iter().find(|t| t.name == naming::TAG) {
        let q = [("tag", t.uuid.as_str())];
        let drives = cloud
            .list_drives_filtered(&q)
            .await
            .map_err(|e| e.to_string())?;
        found = drives
            .into_iter()
            .filter(|d| naming::is_base_of(d, &fp) && d.size <= recipe.disk_size)
            .max_by_key(|d| naming::base_created(&d.meta).unwrap_or(0))
            .map(|d| (d.name, d.uuid));
    }
    Ok(Some(crate::plan::LayerLook {
        fingerprint: fp,
        found,
    }))
}

impl Builder {
    /// Whether this build starts from a cached base layer, captures one, or has none. Entered
    /// only when the recipe names `base_until`. A layer of another base fingerprint is never
    /// used, nor one larger than `disk_size`.
    pub(super) async fn base_lookup(
        &self,
        job: &Job<'_>,
        tags: &Tags,
    ) -> Result<Option<Layer>, StepError> {
        let Some(steps) = job.recipe.base_steps else {
            return Ok(None);
        };
        self.enter(Phase::BaseLookup);
        if self.cancel.is_cancelled() {
            return Err(StepError::Interrupted);
        }
        if self.opts.no_base_cache {
            self.reporter
                .line("base layer off (--no-base-cache): full build");
            return Ok(None);
        }
        if let Some(why) = &job.recipe.base_off {
            self.reporter
                .line(&format!("base layer off: {why}; full build"));
            return Ok(None);
        }
        let Some(fp) = job.recipe.base_fingerprint(&job.base.uuid) else {
            return Ok(None);
        };
        let short = &fp[..16];
        // another build of this run capturing the same layer: wait for it, then use its layer
        let lock = match &self.base_locks {
            Some(l) => {
                let m = l.of(&fp);
                Some(
                    self.cancellable(async { Ok::<_, StepError>(m.lock_owned().await) })
                        .await?,
                )
            }
            None => None,
        };
        // every layer is tagged `imgbuild`
        let tag = tags.build_tag()?;
        let q = [("tag", tag.uuid())];
        let drives = self
            .cancellable(self.cloud.list_drives_filtered(&q))
            .await?;
        let layers: Vec<Drive> = drives.into_iter().filter(naming::is_base).collect();
        let (mut ours, others): (Vec<Drive>, Vec<Drive>) =
            layers.into_iter().partition(|d| naming::is_base_of(d, &fp));
        if !others.is_empty() {
            self.reporter.line(&format!(
                "{} base layer(s) of other base fingerprints ignored",
                others.len()
            ));
        }
        ours.retain(|d| {
            d.size <= job.recipe.disk_size
                && matches!(d.status, DriveStatus::Unmounted | DriveStatus::CloningSrc)
        });
        ours.sort_by_key(|d| naming::base_created(&d.meta).unwrap_or(0));
        let from = ours.pop();
        let total = job.recipe.steps.len();
        match &from {
            Some(d) => self.reporter.line(&format!(
                "base {short} found: {} ({}): steps {}..{total} only",
                d.name,
                d.uuid,
                steps + 1
            )),
            None => self.reporter.line(&format!(
                "no base {short}: full build, base kept at step {steps}"
            )),
        }
        Ok(Some(Layer {
            // a build that starts from a layer makes none: others need not wait for it
            lock: if from.is_some() { None } else { lock },
            fp,
            steps,
            from,
            captured: None,
        }))
    }

    /// After the base steps: power off, clone the drive into the layer, power on, log in again.
    /// The layer stays among what a failure deletes until the build succeeds.
    pub(super) async fn base_capture(
        &self,
        job: &Job<'_>,
        layer: &mut Layer,
        server: &Server,
        drive: &Drive,
        target: Target,
        created: &mut Created,
    ) -> Result<Target, StepError> {
        self.enter(Phase::BaseCapture);
        // flushed first: should the guest not power off in time, the hard stop that follows
        // still leaves every write of the base steps on disk
        let sync = self
            .transport
            .run_check(&target, "sync", Duration::from_secs(300));
        match self.on_guest(sync).await? {
            (0, _) => {}
            (code, out) => {
                let m = format!("`sync` before the base capture exited {code}: {out}");
                return Err(StepError::Transport(
                    crate::transport::TransportError::Failed(m),
                ));
            }
        }
        self.transport.close().await;
        self.power_off(job, server).await?;
        let name = naming::base_drive_name(&layer.fp);
        created.add_extra("drive", &name);
        let req = DriveClone {
            name: Some(name.clone()),
            media: Some("disk".into()),
            ..Default::default()
        };
        let d = self
            .cancellable(self.cloud.clone_drive(&drive.uuid, &req))
            .await?;
        created.extra_created(&name, &d.uuid);
        let wait = Duration::from_secs(job.recipe.spec.timeouts.clone);
        let mut d = self
            .cancellable(
                self.cloud
                    .wait_drive_status(&d.uuid, DriveStatus::Unmounted, wait),
            )
            .await?;
        // the clone carries the build drive's meta (build id, started): a build killed from here
        // to the update leaves a `building` drive, which `imgbuild clean` removes
        d.meta.remove(naming::META_STARTED);
        d.meta.extend(naming::base_meta(
            &layer.fp,
            layer.steps,
            naming::now_unix(),
        ));
        d.tags = drive
            .tags
            .iter()
            .map(|r| Ref::Uuid(r.uuid().into()))
            .collect();
        let d = self.cancellable(self.cloud.update_drive(&d)).await?;
        self.reporter.line(&format!(
            "base layer {} ({}) captured after step {}",
            d.name, d.uuid, layer.steps
        ));
        layer.captured = Some((d.uuid.clone(), d.name.clone()));
        layer.lock = None;
        let ip = self.power_on(job, server).await?;
        let target = self.target(job, ip, target.host_key);
        let wait = Duration::from_secs(job.recipe.spec.timeouts.ssh);
        self.on_guest(self.transport.wait_ready(&target, wait, &self.cancel))
            .await?;
        Ok(target)
    }

    /// Delete the build drive a failed clone of a base layer left (best effort: what is not
    /// deleted stays in `created` for the cleanup guard).
    pub(super) async fn forget_build_drive(&self, created: &mut Created) {
        // no uuid (the clone got no answer): the fallback clone has the same name, and the
        // cleanup guard finds a leftover by that name
        let Some(u) = created.drive.clone() else {
            return;
        };
        if crate::cleanup::delete_drive_when_idle(&self.cloud, &u)
            .await
            .is_ok()
        {
            created.drive = None;
            created.maybe_drive = None;
        }
    }
}
