//! The recipe file as written (serde types) and the checks of its plain settings.

use super::lines::key_line;
use super::Diag;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A size given as bytes (`21474836480`) or with a binary unit (`20GiB`, `512MiB`). Parsed in
/// [`Recipe::load`](super::Recipe::load) (not in serde) so a bad value is reported with its line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => parse_size(s),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let idx = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(idx);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 20GiB, 4096MiB or a byte count"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}: use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Which library drive to start from. Selected by attributes, never by exact name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaseSelector {
    pub distribution: String,
    pub version: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default = "default_image_type")]
    pub image_type: String,
}
fn default_arch() -> String {
    "64".into()
}
fn default_image_type() -> String {
    "preinst".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// CPU in MHz.
    pub cpu: u64,
    pub mem: Size,
    #[serde(default)]
    pub smp: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// minijinja template of the image (drive) name.
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// Timeouts in seconds; defaults fit CloudSigma's usual speeds with a wide margin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub clone: u64,
    pub resize: u64,
    pub start: u64,
    pub ssh: u64,
    pub step: u64,
    pub reboot: u64,
    pub shutdown: u64,
    pub stop: u64,
}
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            clone: 900,
            resize: 600,
            start: 300,
            ssh: 600,
            step: 3600,
            reboot: 600,
            shutdown: 120,
            stop: 120,
        }
    }
}

/// A step as written. Exactly one of `script`, `upload`, `reboot`, `include` must be set.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub script: Option<String>,
    /// Local files a script needs beside it (`../common/lib/image.sh`): each is uploaded to
    /// `/tmp/imgbuild/lib/<file name>` and sha256-verified right before the script runs, so a
    /// step never relies on an earlier step's upload (nor on /tmp surviving a reboot).
    #[serde(default)]
    pub uses: Vec<String>,
    /// A role: a file of shared steps (and default variables) that takes this step's place, as
    /// an Ansible role in image-builder. Only `when` may accompany it. See roles.rs.
    #[serde(default)]
    pub include: Option<String>,
    #[serde(default)]
    pub upload: Option<String>,
    #[serde(default)]
    pub dest: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    /// Expected sha256 of an upload's local file (checked by validate and before the build).
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub reboot: Option<bool>,
    /// Seconds; overrides `timeouts.step`.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// A minijinja expression over the recipe's variables (`kubernetes_source == "local"`): the
    /// step is part of the build only when it is true, as Ansible's `when` in image-builder's
    /// roles. Decided once, when the recipe is loaded.
    #[serde(default)]
    pub when: Option<String>,
}

/// A scalar variable value (strings, numbers and booleans are accepted and kept as text).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum VarValue {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}
impl VarValue {
    pub(super) fn text(&self) -> String {
        match self {
            VarValue::S(s) => s.clone(),
            VarValue::I(i) => i.to_string(),
            VarValue::F(f) => f.to_string(),
            VarValue::B(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// A thin recipe names the recipe it builds on (a path relative to this file's directory):
    /// it inherits everything and may change `name`, `description`, `base`, `disk_size`, `server`,
    /// `ssh_user`, `timeouts`, `output` and the values of `vars`, and add `secrets`, never the
    /// steps. Inherited paths stay relative to the parent's directory.
    #[serde(default)]
    pub extends: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub base: BaseSelector,
    pub disk_size: Size,
    pub server: ServerSpec,
    /// SSH login user; default: the library drive's `default_user`.
    #[serde(default)]
    pub ssh_user: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, VarValue>,
    /// Names of the secrets the steps read from `$IMGBUILD_SECRETS/<name>`; the values come
    /// from `--secret` (see crate::secrets), never from the recipe.
    #[serde(default)]
    pub secrets: Vec<String>,
    pub steps: Vec<StepFile>,
    pub output: OutputSpec,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The name of the last step of the cached base layer (see recipe/base.rs and
    /// docs/imgbuild.md, "Cached base layer"): the build keeps the drive as it is after that
    /// step, and a later build whose base fingerprint matches starts from it.
    #[serde(default)]
    pub base_until: Option<String>,
    /// The names of the last steps of the recipe's cached layers, in step order (recipe/base.rs;
    /// docs/imgbuild.md, "Cached layers"): each layer is the drive after its step, keyed by the
    /// fingerprint of every step up to it, and a build starts from the deepest layer whose
    /// fingerprint matches. `base_until: X` is `layers: [X]`; a recipe gives one or the other.
    #[serde(default)]
    pub layers: Option<Vec<String>>,
    /// What `--verify` checks on a server booted from a clone of the candidate image.
    #[serde(default)]
    pub verify: VerifySpec,
}

/// `verify:`: the checks `--verify` runs over SSH on a server booted from the candidate (see
/// build/verify.rs). `expect` / `contains` are templates over the variables and `meta` (the
/// image's meta as finalize would write it: its tagged versions).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Seconds to wait for the verify server's SSH (default: `timeouts.ssh`).
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: String,
    /// A shell command, run as root in the guest; its exit code must be 0.
    pub run: String,
    /// The command's output (trimmed) must equal this.
    #[serde(default)]
    pub expect: Option<String>,
    /// The command's output must contain this.
    #[serde(default)]
    pub contains: Option<String>,
}

/// A role file (`include:`): default variables and the steps it contributes. Paths in it are
/// relative to the role file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    #[serde(default)]
    pub description: String,
    /// Defaults: a recipe's own `vars` (and `--var`) override them.
    #[serde(default)]
    pub vars: BTreeMap<String, VarValue>,
    pub steps: Vec<StepFile>,
}

/// Where a script's helper files (`uses:`) go in the guest.
pub const HELPER_DIR: &str = "/tmp/imgbuild/lib";

/// A file a script needs beside it, uploaded (and verified) right before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Helper {
    pub src: PathBuf,
    /// `HELPER_DIR/<file name>`.
    pub dest: String,
    pub sha256: String,
}

/// A resolved step, paths absolute and templates rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Script {
        path: PathBuf,
        uses: Vec<Helper>,
    },
    Upload {
        src: PathBuf,
        dest: String,
        mode: String,
        sha256: String,
    },
    Reboot,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub kind: StepKind,
    pub timeout: u64,
    /// Line of the step in recipe.yaml, for messages.
    pub line: Option<usize>,
}

/// Checks the settings serde cannot: name, sizes, CPU, memory, SMP. Returns `disk_size` and
/// `server.mem` in bytes (placeholders when invalid, the problem pushed to `diags`).
pub(super) fn check_settings(
    spec: &RecipeFile,
    file: &Path,
    text: &str,
    diags: &mut Vec<Diag>,
) -> (u64, u64) {
    let fd = |line, message| Diag::new(file, line, message);
    if spec.name.trim().is_empty() {
        diags.push(fd(key_line(text, "name"), "name must not be empty".into()));
    }
    let disk_size = spec.disk_size.bytes().unwrap_or_else(|e| {
        diags.push(fd(key_line(text, "disk_size"), format!("disk_size: {e}")));
        1 << 30
    });
    if disk_size < (1 << 30) {
        diags.push(fd(
            key_line(text, "disk_size"),
            format!("disk_size {disk_size} is below 1 GiB"),
        ));
    }
    let mem = spec.server.mem.bytes().unwrap_or_else(|e| {
        diags.push(fd(key_line(text, "mem"), format!("server.mem: {e}")));
        256 << 20
    });
    if !(250..=96_000).contains(&spec.server.cpu) {
        diags.push(fd(
            key_line(text, "cpu"),
            format!("server.cpu {} MHz is outside 250–96000", spec.server.cpu),
        ));
    }
    if mem < (256 << 20) {
        diags.push(fd(
            key_line(text, "mem"),
            "server.mem must be at least 256MiB".into(),
        ));
    }
    if let Some(s) = spec.server.smp {
        if !(1..=32).contains(&s) {
            diags.push(fd(
                key_line(text, "smp"),
                format!("server.smp {s} is outside 1–32"),
            ));
        }
    }
    (disk_size, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("20 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
    }
}
