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

/// The cached layers of this build's recipe: which one it starts from (found), which it
/// captures (every deeper one).
pub(crate) struct Layers {
    /// (fingerprint, steps held) of each layer of the recipe, in order: chained, each covers
    /// every step up to its mark (`Recipe::layer_fingerprints`).
    pub all: Vec<(String, usize)>,
    /// The deepest layer found: its index in `all` and its drive; None: a full build.
    pub from: Option<(usize, Drive)>,
    /// The other layers found, deepest first: where the build starts instead when `from` cannot
    /// be cloned.
    pub fallbacks: Vec<(usize, Drive)>,
    /// Layers that exist but could not be cloned: not captured again (no duplicate).
    pub skip: Vec<usize>,
    /// The layers this build captured: (index in `all`, uuid, name).
    pub captured: Vec<(usize, String, String)>,
    /// Per layer, the lock held until it is captured (see `Builder::base_locks`).
    pub locks: Vec<Option<OwnedMutexGuard<()>>>,
}

impl Layers {
    /// The steps the build's drive holds when it starts: the found layer's, or none.
    pub fn start_steps(&self) -> usize {
        self.from.as_ref().map(|(i, _)| self.all[*i].1).unwrap_or(0)
    }

    /// The indices of the layers this build captures: all below the one it starts from, but
    /// those that exist already (`skip`).
    pub fn to_capture(&self) -> Vec<usize> {
        let first = self.from.as_ref().map(|(i, _)| i + 1).unwrap_or(0);
        (first..self.all.len())
            .filter(|j| !self.skip.contains(j))
            .collect()
    }

    /// `from` could not be cloned: it is not captured again, and the build starts from the next
    /// layer found, or else from the library drive. The new `from`, if any.
    pub fn fall_back(&mut self) -> Option<&(usize, Drive)> {
        if let Some((i, _)) = self.from.take() {
            self.skip.push(i);
        }
        if !self.fallbacks.is_empty() {
            self.from = Some(self.fallbacks.remove(0));
        }
        self.from.as_ref()
    }

    /// Every layer of this build, in order: the one it started from (`reused`), then those it
    /// captured.
    pub fn infos(&self) -> Vec<BaseLayerInfo> {
        let mut v = Vec::new();
        if let Some((i, d)) = &self.from {
            v.push(BaseLayerInfo {
                fingerprint: self.all[*i].0.clone(),
                uuid: d.uuid.clone(),
                name: d.name.clone(),
                steps: self.all[*i].1,
                reused: true,
            });
        }
        for (i, uuid, name) in &self.captured {
            v.push(BaseLayerInfo {
                fingerprint: self.all[*i].0.clone(),
                uuid: uuid.clone(),
                name: name.clone(),
                steps: self.all[*i].1,
                reused: false,
            });
        }
        v
    }

    /// The manifest's `base_layer`: the layer the build started from, else the first it
    /// captured.
    pub fn info(&self) -> Option<BaseLayerInfo> {
        self.infos().into_iter().next()
    }

    /// `base kept at step 6, layer 3f0c… kept at step 15`: what this build will capture.
    pub(crate) fn keep_note(&self) -> String {
        self.to_capture()
            .into_iter()
            .map(|j| {
                let (fp, n) = &self.all[j];
                match j {
                    0 => format!("base kept at step {n}"),
                    _ => format!("layer {} kept at step {n}", &fp[..16]),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One layer in the manifest (`base_layer`, `layers`).
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
    let all = recipe.layer_fingerprints(&lib.uuid);
    let Some((base_fp, _)) = all.first().cloned() else {
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
        found = deepest(&all, &drives, recipe.disk_size, |_| true)
            .map(|(i, d)| (all[i].0.clone(), all[i].1, d.name.clone(), d.uuid.clone()));
    }
    Ok(Some(crate::plan::LayerLook {
        fingerprint: base_fp,
        layers: all,
        found,
    }))
}

/// The deepest layer of `all` that `drives` hold (see [`newest`]): its index and drive. A layer
/// of another fingerprint never is.
fn deepest<'d>(
    all: &[(String, usize)],
    drives: &'d [Drive],
    disk_size: u64,
    usable: impl Fn(&Drive) -> bool,
) -> Option<(usize, &'d Drive)> {
    all.iter()
        .enumerate()
        .rev()
        .find_map(|(i, (fp, _))| newest(fp, drives, disk_size, &usable).map(|d| (i, d)))
}

/// The newest drive of layer fingerprint `fp` among `drives`, no larger than `disk_size`,
/// `usable`.
fn newest<'d>(
    fp: &str,
    drives: &'d [Drive],
    disk_size: u64,
    usable: &impl Fn(&Drive) -> bool,
) -> Option<&'d Drive> {
    drives
        .iter()
        .filter(|d| naming::is_base_of(d, fp) && d.size <= disk_size && usable(d))
        .max_by_key(|d| naming::base_created(&d.meta).unwrap_or(0))
}

impl Builder {
    /// Whether this build starts from a cached base layer, captures one, or has none. Entered
    /// only when the recipe names `base_until`. A layer of another base fingerprint is never
    /// used, nor one larger than `disk_size`.
    pub(super) async fn base_lookup(
        &self,
        job: &Job<'_>,
        tags: &Tags,
    ) -> Result<Option<Layers>, StepError> {
        if job.recipe.base_steps.is_none() {
            return Ok(None);
        }
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
        let all = job.recipe.layer_fingerprints(&job.base.uuid);
        if all.is_empty() {
            return Ok(None);
        }
        let mut locks = self.lock_layers(&all).await?;
        // every layer is tagged `imgbuild`
        let tag = tags.build_tag()?;
        let q = [("tag", tag.uuid())];
        let drives = self
            .cancellable(self.cloud.list_drives_filtered(&q))
            .await?;
        let layers: Vec<Drive> = drives.into_iter().filter(naming::is_base).collect();
        let others = layers
            .iter()
            .filter(|d| !all.iter().any(|(fp, _)| naming::is_base_of(d, fp)))
            .count();
        if others > 0 {
            self.reporter.line(&format!(
                "{others} base layer(s) of other base fingerprints ignored"
            ));
        }
        // every layer found (usable), deepest first: the build starts from the first
        let usable =
            |d: &Drive| matches!(d.status, DriveStatus::Unmounted | DriveStatus::CloningSrc);
        let mut found: Vec<(usize, Drive)> = all
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(i, (fp, _))| {
                newest(fp, &layers, job.recipe.disk_size, &usable).map(|d| (i, d.clone()))
            })
            .collect();
        let from = (!found.is_empty()).then(|| found.remove(0));
        // a layer this build starts from (or one inside it) it does not capture: others need
        // not wait for it
        if let Some((i, _)) = &from {
            for l in &mut locks[..=*i] {
                *l = None;
            }
        }
        let layers = Layers {
            all,
            from,
            fallbacks: found,
            skip: Vec::new(),
            captured: Vec::new(),
            locks,
        };
        let total = job.recipe.steps.len();
        let keep = layers.keep_note();
        match &layers.from {
            Some((i, d)) => {
                let short = &layers.all[*i].0[..16];
                let more = if keep.is_empty() {
                    String::new()
                } else {
                    format!("; {keep}")
                };
                self.reporter.line(&format!(
                    "base {short} found: {} ({}): steps {}..{total} only{more}",
                    d.name,
                    d.uuid,
                    layers.start_steps() + 1
                ))
            }
            None => {
                let short = &layers.all[0].0[..16];
                self.reporter
                    .line(&format!("no base {short}: full build, {keep}"))
            }
        }
        Ok(Some(layers))
    }

    /// One lock per layer (see `Builder::base_locks`): another build of this run capturing one
    /// of these layers is waited for, and this one then starts from its layer. Taken in layer
    /// order, so two builds never wait for each other.
    async fn lock_layers(
        &self,
        all: &[(String, usize)],
    ) -> Result<Vec<Option<OwnedMutexGuard<()>>>, StepError> {
        let mut locks = Vec::with_capacity(all.len());
        for (fp, _) in all {
            let guard = match &self.base_locks {
                Some(l) => {
                    let m = l.of(fp);
                    Some(
                        self.cancellable(async { Ok::<_, StepError>(m.lock_owned().await) })
                            .await?,
                    )
                }
                None => None,
            };
            locks.push(guard);
        }
        Ok(locks)
    }

    /// After layer `j`'s steps: power off the builder server (`vm`: it and its drive), clone
    /// the drive into the layer, power on, log in again. The layer stays among what a failure
    /// deletes until the build succeeds.
    pub(super) async fn base_capture(
        &self,
        job: &Job<'_>,
        (layers, j): (&mut Layers, usize),
        vm: (&Server, &Drive),
        target: Target,
        created: &mut Created,
    ) -> Result<Target, StepError> {
        let (server, drive) = vm;
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
        let (fp, steps) = layers.all[j].clone();
        let name = naming::base_drive_name(&fp);
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
        d.meta
            .extend(naming::base_meta(&fp, steps, naming::now_unix()));
        d.tags = drive
            .tags
            .iter()
            .map(|r| Ref::Uuid(r.uuid().into()))
            .collect();
        let d = self.cancellable(self.cloud.update_drive(&d)).await?;
        self.reporter.line(&format!(
            "base layer {} ({}) captured after step {steps}",
            d.name, d.uuid
        ));
        layers.captured.push((j, d.uuid.clone(), d.name.clone()));
        layers.locks[j] = None;
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
