//! The cached layers of a recipe (`layers: [<step name>, …]`, or `base_until: <step name>` for
//! one): which steps each covers, whether these variables allow them, and their chained
//! fingerprints. The build's side is in build/base.rs; see
//! docs/imgbuild.md, "Cached base layer".

use super::lines::key_line;
use super::spec::{RecipeFile, Step, StepKind};
use super::{env_name, fingerprint_of, normalize, pathdiff, sha256_file, Diag, FpInputs, Recipe};
use std::path::Path;

/// Guest paths that do not survive the capture: the build powers the guest off to copy its disk,
/// and the boot after it empties /tmp (systemd-tmpfiles) and /run (tmpfs).
const LOST_AT_CAPTURE: [&str; 2] = ["/tmp/", "/run/"];

/// The recipe's cached layers: for each mark (`layers:`, or `base_until` as one mark) the number
/// of steps (from the first) its layer holds, in order; and why the layers cannot be used with
/// these variables (None when they can). A name no step has, a mark out of step order and the
/// last step are errors.
pub(super) fn resolve(
    spec: &RecipeFile,
    steps: &[Step],
    file: &Path,
    text: &str,
    diags: &mut Vec<Diag>,
) -> (Vec<usize>, Option<String>) {
    let (key, marks): (&str, Vec<String>) = match (&spec.base_until, &spec.layers) {
        (Some(_), Some(_)) => {
            let m = "give either `layers` or `base_until` (one layer), not both".to_string();
            diags.push(Diag::new(file, key_line(text, "layers"), m));
            return (Vec::new(), None);
        }
        (Some(u), None) => ("base_until", vec![u.clone()]),
        (None, Some(l)) => ("layers", l.clone()),
        (None, None) => return (Vec::new(), None),
    };
    let mut counts: Vec<usize> = Vec::new();
    for until in &marks {
        let Some(at) = steps.iter().position(|s| &s.name == until) else {
            let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
            diags.push(Diag::new(
                file,
                key_line(text, key),
                format!(
                    "{key}: no step is named {until:?} (a `when:` may have left it out); the steps are: {}",
                    names.join(", ")
                ),
            ));
            return (Vec::new(), None);
        };
        let n = at + 1;
        if n == steps.len() {
            let m = format!("{key} {until:?} is the last step: the layer would be the image itself; name an earlier step");
            diags.push(Diag::new(file, key_line(text, key), m));
            return (Vec::new(), None);
        }
        if counts.last().is_some_and(|&prev| n <= prev) {
            let m = format!("{key}: {until:?} is not after the layer before it: list the layers in step order, each once");
            diags.push(Diag::new(file, key_line(text, key), m));
            return (Vec::new(), None);
        }
        counts.push(n);
    }
    // an upload the later steps read from a path a capture's power cycle empties would be gone
    let last = counts.last().copied().unwrap_or(0);
    let lost = steps[..last]
        .iter()
        .enumerate()
        .find_map(|(i, s)| match &s.kind {
            StepKind::Upload { dest, .. }
                if LOST_AT_CAPTURE.iter().any(|p| dest.starts_with(p)) =>
            {
                Some((i, s.name.clone(), dest.clone()))
            }
            _ => None,
        });
    let off = lost.map(|(i, name, dest)| {
        let until = &marks[counts.iter().position(|&n| n > i).unwrap_or(0)];
        format!(
            "step {name:?} uploads {dest} before the layer mark {until:?} ({key}), and that path does not survive a layer capture's power cycle; mark a step before it"
        )
    });
    (counts, off)
}

impl Recipe {
    /// The base layer's fingerprint (the first layer's): the same hasher as the image's
    /// ([`Recipe::fingerprint`]), over only what the base steps depend on — each step's name and
    /// kind, the files they run or upload (scripts, helpers, uploads), the variables whose
    /// environment name (`KUBERNETES_VERSION`) appears in one of their scripts or helpers, and
    /// the library drive. None when the recipe has no usable layer.
    pub fn base_fingerprint(&self, base_uuid: &str) -> Option<String> {
        self.layer_fingerprints(base_uuid)
            .into_iter()
            .next()
            .map(|(fp, _)| fp)
    }

    /// Every layer's fingerprint and step count, in order (empty when the recipe has no usable
    /// layer). The first is [`Recipe::base_fingerprint`] (its inputs unchanged since
    /// `base_until`, so existing base layers stay valid); each deeper one hashes the one before
    /// it and only the steps between the two marks, in the same way: chained, a layer's
    /// fingerprint covers every step up to its mark, so a change in an earlier step changes
    /// every later layer.
    pub fn layer_fingerprints(&self, base_uuid: &str) -> Vec<(String, usize)> {
        if self.base_off.is_some() {
            return Vec::new();
        }
        let mut out: Vec<(String, usize)> = Vec::new();
        let mut from = 0;
        for &n in &self.layer_steps {
            let parent = out.last().map(|(fp, _)| fp.clone());
            out.push((
                self.steps_fingerprint(from..n, parent.as_deref(), base_uuid),
                n,
            ));
            from = n;
        }
        out
    }

    /// The fingerprint of steps `range` over the layer before them (`parent`; None for the
    /// first layer, whose domain and inputs are the base layer's of before).
    fn steps_fingerprint(
        &self,
        range: std::ops::Range<usize>,
        parent: Option<&str>,
        base_uuid: &str,
    ) -> String {
        let steps = &self.steps[range];
        let mut listing = String::new();
        let mut files: Vec<(String, String)> = Vec::new();
        let mut texts = Vec::new();
        let add = |p: &Path, sha: Option<&str>, files: &mut Vec<(String, String)>| {
            let sha = sha.map(str::to_string).unwrap_or_else(|| self.file_sha(p));
            files.push((pathdiff(&normalize(p), &normalize(&self.dir)), sha));
        };
        for s in steps {
            let what = match &s.kind {
                StepKind::Script { path, uses } => {
                    add(path, None, &mut files);
                    texts.push(std::fs::read_to_string(path).unwrap_or_default());
                    for h in uses {
                        add(&h.src, Some(&h.sha256), &mut files);
                        texts.push(std::fs::read_to_string(&h.src).unwrap_or_default());
                    }
                    "script".to_string()
                }
                StepKind::Upload {
                    src,
                    dest,
                    mode,
                    sha256,
                } => {
                    add(src, Some(sha256), &mut files);
                    format!("upload {dest} {mode}")
                }
                StepKind::Reboot => "reboot".into(),
            };
            listing.push_str(&format!("{}\t{what}\n", s.name));
        }
        let used = self.vars_read_by(&texts);
        let vars = self
            .vars
            .iter()
            .filter(|(k, _)| used.contains(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut t = Vec::new();
        let domain = match parent {
            None => "imgbuild-base-fingerprint-v1\n",
            Some(p) => {
                t.push(("parent\0", p));
                "imgbuild-layer-fingerprint-v1\n"
            }
        };
        t.push(("steps\0", listing.as_str()));
        fingerprint_of(&FpInputs {
            domain,
            texts: t,
            files: files.iter().map(|(p, s)| (p.clone(), s.as_str())).collect(),
            vars,
            base: base_uuid,
        })
    }

    /// The variables whose environment name appears in one of `texts`.
    fn vars_read_by(&self, texts: &[String]) -> Vec<&String> {
        self.vars
            .keys()
            .filter(|k| {
                let env = env_name(k);
                texts.iter().any(|t| t.contains(&env))
            })
            .collect()
    }

    /// The variables the base layer's fingerprint covers: those whose environment name appears
    /// in a base step's script or helper (`--dry-run` lists them).
    pub fn base_vars(&self) -> Vec<String> {
        let Some(n) = self.base_steps else {
            return Vec::new();
        };
        self.vars_read_in(0..n)
    }

    /// The variables whose environment name appears in a script or helper of steps `range`.
    pub fn vars_read_in(&self, range: std::ops::Range<usize>) -> Vec<String> {
        let mut texts = Vec::new();
        for s in &self.steps[range] {
            if let StepKind::Script { path, uses } = &s.kind {
                texts.push(std::fs::read_to_string(path).unwrap_or_default());
                for h in uses {
                    texts.push(std::fs::read_to_string(&h.src).unwrap_or_default());
                }
            }
        }
        self.vars_read_by(&texts).into_iter().cloned().collect()
    }

    /// The sha256 the recipe noted for a file it reads (read again if it is not among them).
    fn file_sha(&self, p: &Path) -> String {
        let n = normalize(p);
        self.files
            .iter()
            .find(|(k, _)| normalize(k) == n)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| sha256_file(p).unwrap_or_default())
    }

    /// The step numbers (from 1) a build started from the base runs: `k+1..=n`.
    pub fn steps_after_base(&self) -> std::ops::RangeInclusive<usize> {
        (self.base_steps.unwrap_or(0) + 1)..=self.steps.len()
    }

    /// The mark (step name) of each layer, in order.
    pub fn layer_marks(&self) -> Vec<&str> {
        self.layer_steps
            .iter()
            .map(|&n| self.steps[n - 1].name.as_str())
            .collect()
    }
}
