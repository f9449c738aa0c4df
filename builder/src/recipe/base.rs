//! The cached base layer of a recipe (`base_until: <step name>`): which steps it covers, whether
//! these variables allow it, and its fingerprint. The build's side is in build/base.rs; see
//! docs/imgbuild.md, "Cached base layer".

use super::lines::key_line;
use super::spec::{RecipeFile, Step, StepKind};
use super::{env_name, fingerprint_of, normalize, pathdiff, sha256_file, Diag, FpInputs, Recipe};
use std::path::Path;

/// Guest paths that do not survive the capture: the build powers the guest off to copy its disk,
/// and the boot after it empties /tmp (systemd-tmpfiles) and /run (tmpfs).
const LOST_AT_CAPTURE: [&str; 2] = ["/tmp/", "/run/"];

/// The number of base steps `base_until` names (None without it), and why the layer cannot be
/// used with these variables (None when it can). A name no step has is an error.
pub(super) fn resolve(
    spec: &RecipeFile,
    steps: &[Step],
    file: &Path,
    text: &str,
    diags: &mut Vec<Diag>,
) -> (Option<usize>, Option<String>) {
    let Some(until) = &spec.base_until else {
        return (None, None);
    };
    let Some(at) = steps.iter().position(|s| &s.name == until) else {
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        diags.push(Diag::new(
            file,
            key_line(text, "base_until"),
            format!(
                "base_until: no step is named {until:?} (a `when:` may have left it out); the steps are: {}",
                names.join(", ")
            ),
        ));
        return (None, None);
    };
    let n = at + 1;
    if n == steps.len() {
        let m = format!("base_until {until:?} is the last step: the base would be the image itself; name an earlier step");
        diags.push(Diag::new(file, key_line(text, "base_until"), m));
        return (None, None);
    }
    // an upload the later steps read from a path the capture's reboot empties would be gone
    let lost = steps[..n].iter().find_map(|s| match &s.kind {
        StepKind::Upload { dest, .. } if LOST_AT_CAPTURE.iter().any(|p| dest.starts_with(p)) => {
            Some((s.name.clone(), dest.clone()))
        }
        _ => None,
    });
    let off = lost.map(|(name, dest)| {
        format!(
            "step {name:?} uploads {dest} before base_until {until:?}, and that path does not survive the base capture's reboot; set base_until to a step before it"
        )
    });
    (Some(n), off)
}

impl Recipe {
    /// The base layer's fingerprint: the same hasher as the image's ([`Recipe::fingerprint`]),
    /// over only what the base steps depend on — each step's name and kind, the files they run
    /// or upload (scripts, helpers, uploads), the variables whose environment name
    /// (`KUBERNETES_VERSION`) appears in one of their scripts or helpers, and the library drive.
    /// None when the recipe has no usable base layer.
    pub fn base_fingerprint(&self, base_uuid: &str) -> Option<String> {
        let n = self.base_steps.filter(|_| self.base_off.is_none())?;
        let steps = &self.steps[..n];
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
        Some(fingerprint_of(&FpInputs {
            domain: "imgbuild-base-fingerprint-v1\n",
            texts: vec![("steps\0", listing.as_str())],
            files: files.iter().map(|(p, s)| (p.clone(), s.as_str())).collect(),
            vars,
            base: base_uuid,
        }))
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
        let mut texts = Vec::new();
        for s in &self.steps[..n] {
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
}
