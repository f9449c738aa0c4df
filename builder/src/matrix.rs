//! A build matrix in one command (issue 23): `--matrix VAR=V1,V2` (repeatable) builds the
//! cartesian product of the values, `location` selecting the API endpoint rather than a recipe
//! variable. Each combination is an ordinary build ([`Builder::build`]): its own cloud client,
//! transport, cleanup and fingerprint, so one that fails deletes what it created and the others
//! go on. At most `jobs` run at once. The result is one [`MatrixManifest`].

use crate::build::{BuildError, Builder, Manifest};
use crate::recipe::Recipe;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// The matrix axis that selects the CloudSigma location (the API endpoint), not a recipe var.
pub const LOCATION: &str = "location";

/// Exit code when some combinations failed and each one's cleanup was complete (documented in
/// docs/imgbuild.md and docs/ci.md "Exit codes"). Leftovers still decide first: 3.
pub const EXIT_SOME_FAILED: u8 = 4;

/// One `--matrix NAME=V1,V2,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    pub name: String,
    pub values: Vec<String>,
}

/// Parse every `--matrix` argument. Names must be distinct, values non-empty and distinct.
pub fn parse(specs: &[String]) -> Result<Vec<Axis>, String> {
    let mut axes: Vec<Axis> = Vec::new();
    for s in specs {
        let (name, vals) = s.split_once('=').ok_or_else(|| {
            format!(
                "--matrix {s:?}: expected NAME=V1,V2,... (e.g. kubernetes_version=1.33.5,1.34.1)"
            )
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("--matrix {s:?}: the variable name is empty"));
        }
        if axes.iter().any(|a| a.name == name) {
            return Err(format!(
                "--matrix {name}: given twice; list all its values in one --matrix {name}=V1,V2"
            ));
        }
        let mut values: Vec<String> = Vec::new();
        for v in vals.split(',').map(str::trim) {
            if v.is_empty() {
                return Err(format!("--matrix {s:?}: an empty value (check the commas)"));
            }
            if values.iter().any(|x| x == v) {
                return Err(format!("--matrix {name}: value {v:?} given twice"));
            }
            values.push(v.to_string());
        }
        axes.push(Axis {
            name: name.to_string(),
            values,
        });
    }
    Ok(axes)
}

/// One combination of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combo {
    /// Position in [`combinations`] (the manifest's order).
    pub index: usize,
    /// (axis, value) in the order of the `--matrix` arguments, `location` included.
    pub values: Vec<(String, String)>,
}

impl Combo {
    /// The recipe variables this combination sets (all axes but `location`).
    pub fn vars(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .filter(|(k, _)| k != LOCATION)
            .cloned()
            .collect()
    }
    pub fn location(&self) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == LOCATION)
            .map(|(_, v)| v.as_str())
    }
    /// `[kubernetes_version=1.34.1 location=zrh]`: the prefix of this combination's progress lines.
    pub fn label(&self) -> String {
        let parts: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("[{}]", parts.join(" "))
    }
}

/// The cartesian product, the first axis varying slowest.
pub fn combinations(axes: &[Axis]) -> Vec<Combo> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for a in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                a.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((a.name.clone(), v.clone()));
                    p
                })
            })
            .collect();
    }
    out.into_iter()
        .enumerate()
        .map(|(index, values)| Combo { index, values })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Built by this run.
    Built,
    /// An image with the same fingerprint existed (`cached` of a single build).
    Reused,
    /// Failed; `error` says why, `left` what its cleanup could not delete (normally nothing).
    Failed,
    /// Cancelled by a signal, after its cleanup.
    Interrupted,
}

impl Status {
    /// As in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Built => "built",
            Status::Reused => "reused",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
}

/// One combination's line of the [`MatrixManifest`].
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub label: String,
    /// The recipe variables the matrix set for it (`location` is its own field).
    pub vars: BTreeMap<String, String>,
    pub location: Option<String>,
    pub status: Status,
    /// Known once the base drive was resolved (also for most failures).
    pub fingerprint: Option<String>,
    /// The image drive (built or reused).
    pub drive_uuid: Option<String>,
    pub image_name: Option<String>,
    pub phase: Option<String>,
    pub error: Option<String>,
    /// What a failed combination's cleanup could not delete, or `--keep-on-failure` kept.
    pub left: Vec<String>,
    pub wall_ms: u64,
    /// The full single-build manifest of a built or reused combination.
    pub manifest: Option<Manifest>,
}

/// The one manifest of a matrix run (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct MatrixManifest {
    pub recipe: String,
    pub jobs: usize,
    pub built: usize,
    pub reused: usize,
    pub failed: usize,
    /// The images this run published or found (built or reused; under `--verify` only verified
    /// ones are built), by uuid: a failed combination — a candidate that failed `--verify` too —
    /// is never among them.
    pub published: Vec<String>,
    pub combinations: Vec<Entry>,
}

impl MatrixManifest {
    /// 0 all built or reused; 3 something is left behind (named in `left`); the signal's code
    /// (`signal`, 130 when unknown) when interrupted with a complete cleanup; otherwise
    /// [`EXIT_SOME_FAILED`] when some failed.
    pub fn exit_code(&self, signal: i32) -> u8 {
        let c = &self.combinations;
        if c.iter().any(|e| !e.left.is_empty()) {
            3
        } else if c.iter().any(|e| e.status == Status::Interrupted) {
            if matches!(signal, 129 | 143) {
                signal as u8
            } else {
                130
            }
        } else if c.iter().any(|e| e.status == Status::Failed) {
            EXIT_SOME_FAILED
        } else {
            0
        }
    }
}

/// One combination ready to build: its builder (own cloud client, transport and prefixed
/// reporter) and its recipe (loaded with the combination's variables).
pub struct Job {
    pub combo: Combo,
    pub builder: Builder,
    pub recipe: Recipe,
}

/// The order in which to start combinations (indices into `keys`), given each one's base layer
/// key (its location and the values of the variables its base steps read): first one
/// combination of each key, then a second of each, and so on, each round in the given order.
/// Combinations that share a base layer at a location capture it once: the first holds its lock
/// from base-lookup until it is captured, and the others wait for it. Started next to each
/// other, the second would hold a job slot waiting while a combination with another key could
/// be building (`--matrix location=a,b --matrix kubernetes_version=…` lists a location's
/// combinations together).
pub fn start_order<K: Ord>(keys: &[K]) -> Vec<usize> {
    let mut seen: BTreeMap<&K, usize> = BTreeMap::new();
    let mut ranked: Vec<(usize, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let r = seen.entry(k).or_insert(0);
            *r += 1;
            (*r, i)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// A job's base layer key for [`start_order`].
fn base_key(job: &Job) -> (Option<String>, Vec<(String, String)>) {
    let r = &job.recipe;
    let vars = r
        .base_vars()
        .into_iter()
        .map(|k| {
            let v = r.vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect();
    (job.combo.location().map(str::to_string), vars)
}

/// Build every job, at most `jobs` at once (at least 1), started in [`start_order`]; a failure
/// does not stop the others. Returns the manifest in the jobs' order.
pub async fn run(recipe_name: &str, work: Vec<Job>, jobs: usize) -> MatrixManifest {
    let jobs = jobs.max(1);
    let keys: Vec<_> = work.iter().map(base_key).collect();
    let order = start_order(&keys);
    let mut slots: Vec<Option<Job>> = work.into_iter().map(Some).collect();
    let work: Vec<Job> = order.iter().filter_map(|&i| slots[i].take()).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut set = tokio::task::JoinSet::new();
    let n = work.len();
    let mut labels = vec![None; n];
    // one per location (see Builder::tags_lock)
    let mut tag_locks: BTreeMap<Option<String>, Arc<tokio::sync::Mutex<()>>> = BTreeMap::new();
    // and one set of base layer locks per location (see Builder::base_locks)
    let mut base_locks: BTreeMap<Option<String>, Arc<crate::build::BaseLocks>> = BTreeMap::new();
    for mut job in work {
        if job.builder.tags_lock.is_none() {
            let l = tag_locks.entry(job.combo.location().map(str::to_string));
            job.builder.tags_lock = Some(l.or_default().clone());
        }
        if job.builder.base_locks.is_none() {
            let l = base_locks.entry(job.combo.location().map(str::to_string));
            job.builder.base_locks = Some(l.or_default().clone());
        }
        labels[job.combo.index] = Some((job.combo.label(), job.combo.clone()));
        // acquired here, in order, so the combinations start in start_order
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        set.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let r = job.builder.build(&job.recipe).await;
            let fp = job.builder.fingerprint();
            (job.combo.index, entry(&job.combo, r, fp, started))
        });
    }
    let mut entries: Vec<Option<Entry>> = vec![None; n];
    while let Some(r) = set.join_next().await {
        match r {
            Ok((i, e)) => entries[i] = Some(e),
            // a panic in one build: reported as its failure (its index is unknown here; the
            // missing entries are filled below)
            Err(e) => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "imgbuild: a matrix build task ended abnormally: {e}"
                );
            }
        }
    }
    let combinations: Vec<Entry> = entries
        .into_iter()
        .zip(labels)
        .filter_map(|(e, l)| Some((e, l?)))
        .map(|(e, (label, combo))| {
            e.unwrap_or_else(|| Entry {
                label,
                vars: combo.vars(),
                location: combo.location().map(str::to_string),
                status: Status::Failed,
                fingerprint: None,
                drive_uuid: None,
                image_name: None,
                phase: None,
                error: Some("the build task ended abnormally (see the log)".into()),
                left: vec!["unknown: run `imgbuild clean` to check".into()],
                wall_ms: 0,
                manifest: None,
            })
        })
        .collect();
    let count = |s| combinations.iter().filter(|e| e.status == s).count();
    let published = combinations
        .iter()
        .filter(|e| matches!(e.status, Status::Built | Status::Reused))
        .filter_map(|e| e.drive_uuid.clone())
        .collect();
    MatrixManifest {
        recipe: recipe_name.to_string(),
        jobs,
        built: count(Status::Built),
        reused: count(Status::Reused),
        failed: count(Status::Failed) + count(Status::Interrupted),
        published,
        combinations,
    }
}

fn entry(
    combo: &Combo,
    r: Result<Manifest, BuildError>,
    fingerprint: Option<String>,
    started: Instant,
) -> Entry {
    let mut e = Entry {
        label: combo.label(),
        vars: combo.vars(),
        location: combo.location().map(str::to_string),
        status: Status::Failed,
        fingerprint,
        drive_uuid: None,
        image_name: None,
        phase: None,
        error: None,
        left: Vec::new(),
        wall_ms: started.elapsed().as_millis() as u64,
        manifest: None,
    };
    match r {
        Ok(m) => {
            e.status = if m.cached {
                Status::Reused
            } else {
                Status::Built
            };
            e.fingerprint = Some(m.fingerprint.clone());
            e.drive_uuid = Some(m.image_uuid.clone());
            e.image_name = Some(m.image_name.clone());
            e.manifest = Some(m);
        }
        Err(err) => {
            e.error = Some(err.to_string());
            e.left = err.cleanup().left.clone();
            match err {
                BuildError::Failed { phase, kept, .. } => {
                    e.phase = Some(phase.to_string());
                    if kept && e.left.is_empty() {
                        e.left.push("kept by --keep-on-failure".into());
                    }
                }
                BuildError::Interrupted { phase, .. } => {
                    e.status = Status::Interrupted;
                    e.phase = Some(phase.to_string());
                }
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn cartesian_product_in_argument_order() {
        let axes = parse(&s(&[
            "kubernetes_version=1.33.5,1.34.1",
            "location=zrh, fra",
        ]))
        .unwrap();
        let c = combinations(&axes);
        let labels: Vec<String> = c.iter().map(Combo::label).collect();
        assert_eq!(
            labels,
            [
                "[kubernetes_version=1.33.5 location=zrh]",
                "[kubernetes_version=1.33.5 location=fra]",
                "[kubernetes_version=1.34.1 location=zrh]",
                "[kubernetes_version=1.34.1 location=fra]",
            ]
        );
        assert_eq!(c[3].location(), Some("fra"));
        assert_eq!(
            c[3].vars(),
            BTreeMap::from([("kubernetes_version".into(), "1.34.1".into())])
        );
        assert_eq!(c[3].index, 3);
        assert_eq!(combinations(&[]).len(), 1, "no axis: the one build");
    }

    #[test]
    fn combinations_start_one_per_base_layer_first() {
        // the location axis first: a's two versions share a's base layer
        let keys = ["a", "a", "b", "b"];
        assert_eq!(start_order(&keys), [0, 2, 1, 3]);
        // the location axis last: already one per location first, unchanged
        let keys = ["a", "b", "a", "b"];
        assert_eq!(start_order(&keys), [0, 1, 2, 3]);
        // one location, three base keys of two combinations each
        let keys = ["x", "x", "y", "y", "z", "z"];
        assert_eq!(start_order(&keys), [0, 2, 4, 1, 3, 5]);
        assert!(start_order::<u8>(&[]).is_empty());
    }

    #[test]
    fn bad_matrix_arguments_are_refused_with_the_reason() {
        for (arg, want) in [
            (vec!["k8s"], "expected NAME=V1,V2"),
            (vec!["=1,2"], "name is empty"),
            (vec!["k=1,,2"], "empty value"),
            (vec!["k=1,1"], "given twice"),
            (vec!["k=1", "k=2"], "given twice"),
        ] {
            let e = parse(&s(&arg)).unwrap_err();
            assert!(e.contains(want), "{arg:?}: {e}");
        }
    }
}
