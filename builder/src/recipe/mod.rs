//! Recipe format: parsing, validation (with file:line diagnostics) and variable resolution.
//!
//! A recipe is `image-recipes/<name>/recipe.yaml`. Every path in it is relative to the recipe's
//! directory, so steps can share scripts (`script: ../common/10-kernel.sh`). See docs/imgbuild.md.
//!
//! One module per concern: [`spec`] (the file as written), [`extends`] (thin recipes), [`roles`]
//! (`include:`d step files), [`vars`] (variables and templates), [`steps`] (steps, uploads,
//! `when:`, `uses:`), [`secrets`] (the declared secret names) and [`lines`] (where things are,
//! for diagnostics).

mod base;
mod extends;
mod lines;
mod roles;
mod secrets;
mod spec;
mod steps;
mod vars;

pub use spec::{
    parse_size, BaseSelector, CheckSpec, Helper, OutputSpec, RecipeFile, RoleFile, ServerSpec,
    Size, Step, StepFile, StepKind, Timeouts, VarValue, VerifySpec, HELPER_DIR,
};
pub use vars::{env_name, parse_overrides, render, BUILTIN_VARS};

use lines::{key_line, line_of};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One validation problem, located in a file (and a line when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl Diag {
    pub(crate) fn new(file: &Path, line: Option<usize>, message: String) -> Diag {
        Diag {
            file: file.to_path_buf(),
            line,
            message,
        }
    }
}

/// All diagnostics of a failed validation.
#[derive(Debug, Clone)]
pub struct Diags(pub Vec<Diag>);

impl fmt::Display for Diags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
impl std::error::Error for Diags {}

/// A validated recipe with its variables resolved.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub file: PathBuf,
    /// The directory the steps' paths resolve against: the recipe's own, or for a thin recipe
    /// (`extends`) the parent's.
    pub dir: PathBuf,
    pub text: String,
    /// The parent recipe's text, for a thin recipe (part of the fingerprint).
    pub parent_text: Option<String>,
    pub spec: RecipeFile,
    pub vars: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// Every local file the build reads (scripts, uploads, helpers, role files): path → sha256,
    /// for the fingerprint; a file reached by several paths is listed once.
    pub files: BTreeMap<PathBuf, String>,
    /// `disk_size` in bytes.
    pub disk_size: u64,
    /// `server.mem` in bytes.
    pub mem: u64,
    /// How many steps (from the first) make the first cached layer, the base layer
    /// (`base_until`, or the first of `layers`), if any.
    pub base_steps: Option<usize>,
    /// How many steps each cached layer holds, in order (`layers`; `base_until` is one layer).
    pub layer_steps: Vec<usize>,
    /// Why the recipe's layers cannot be used with these variables (the build then runs
    /// without a layer and says why).
    pub base_off: Option<String>,
}

/// Find the recipe file for a name or path: a `recipe.yaml` path, a directory holding one, or a
/// name looked up in `$IMGBUILD_RECIPES`, then `image-recipes/` in the current directory and its
/// parents (so it works from anywhere inside the repository).
pub fn locate(arg: &str) -> Result<PathBuf, String> {
    let p = Path::new(arg);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if p.is_dir() && p.join("recipe.yaml").is_file() {
        return Ok(p.join("recipe.yaml"));
    }
    let mut tried = Vec::new();
    if !arg.contains('/') {
        if let Ok(d) = std::env::var("IMGBUILD_RECIPES") {
            let c = Path::new(&d).join(arg).join("recipe.yaml");
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c);
        }
        if let Ok(mut cwd) = std::env::current_dir() {
            loop {
                let c = cwd.join("image-recipes").join(arg).join("recipe.yaml");
                if c.is_file() {
                    return Ok(c);
                }
                tried.push(c);
                if !cwd.pop() {
                    break;
                }
            }
        }
    }
    Err(format!(
        "recipe {arg:?} not found: give a recipe.yaml path, a directory containing one, or a name under image-recipes/ (looked in: {})",
        tried.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

pub fn sha256_file(p: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Recipe {
    /// Load, parse and validate a recipe, applying `--var` overrides. Returns every problem found.
    pub fn load(file: &Path, overrides: &BTreeMap<String, String>) -> Result<Recipe, Diags> {
        let fd = |line, message| Diag::new(file, line, message);
        let text = std::fs::read_to_string(file)
            .map_err(|e| Diags(vec![fd(None, format!("cannot read recipe: {e}"))]))?;
        let own_dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let (mut spec, parent) = extends::resolve(file, &text, &own_dir)?;
        // Steps (and their paths and lines) come from the parent for a thin recipe.
        let (dir, steps_file, steps_text) = match &parent {
            Some(p) => (p.dir.clone(), p.file.clone(), p.text.clone()),
            None => (own_dir.clone(), file.to_path_buf(), text.clone()),
        };
        let mut diags = Vec::new();
        // roles first: their variables are defaults under the recipe's
        let roles = roles::load(&spec.steps, &dir, &steps_file, &steps_text, &mut diags);
        roles::default_vars(&roles, &mut spec.vars, &mut diags);
        let (disk_size, mem) = spec::check_settings(&spec, file, &text, &mut diags);
        secrets::check_declared(&spec, file, &text, &mut diags);

        let vars = vars::resolve(&spec, overrides, file, &text, &mut diags);
        let known: BTreeSet<String> = vars.keys().cloned().collect();
        let ctx = minijinja::Value::from_serialize(&vars);

        let templates = vars::Templates {
            known: &known,
            file,
            text: &text,
        };
        // templates must only use known names
        templates.check(
            &spec.output.name,
            "output.name",
            key_line(&text, "output").and_then(|_| line_of(&text, &spec.output.name)),
            &mut diags,
        );
        for t in &spec.output.tags {
            templates.check(t, "output.tags", None, &mut diags);
        }
        for (k, v) in &spec.output.meta {
            templates.check(v, &format!("output.meta.{k}"), None, &mut diags);
        }

        let (steps, files) = steps::resolve(
            &steps::StepInputs {
                spec: &spec,
                overrides,
                vars: &vars,
                ctx: &ctx,
                templates: &templates,
                dir: &dir,
                file: &steps_file,
                text: &steps_text,
                recipe_text: &text,
                roles: &roles,
            },
            &mut diags,
        );
        let (layer_steps, base_off) = base::resolve(&spec, &steps, file, &text, &mut diags);
        if !diags.is_empty() {
            return Err(Diags(diags));
        }
        Ok(Recipe {
            file: file.to_path_buf(),
            dir,
            text,
            parent_text: parent.map(|p| p.text),
            spec,
            vars,
            steps,
            files,
            disk_size,
            mem,
            base_steps: layer_steps.first().copied(),
            layer_steps,
            base_off,
        })
    }

    /// Environment passed to scripts: every variable upper-cased, plus a few build facts.
    pub fn script_env(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (env_name(k), v.clone()))
            .collect()
    }

    /// sha256 of each upload (scripts' helpers too), keyed by guest path (the `upload_sha256`
    /// template variable).
    pub fn upload_sha256(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for s in &self.steps {
            match &s.kind {
                StepKind::Upload { dest, sha256, .. } => {
                    m.insert(dest.clone(), sha256.clone());
                }
                StepKind::Script { uses, .. } => {
                    for h in uses {
                        m.insert(h.dest.clone(), h.sha256.clone());
                    }
                }
                StepKind::Reboot => {}
            }
        }
        m
    }

    /// The recipe fingerprint: sha256 over the recipe text, every file it reads (by path relative
    /// to the recipe directory, so a checkout elsewhere gives the same value), the resolved
    /// variables and the base drive uuid. Same inputs → same image → no rebuild.
    pub fn fingerprint(&self, base_uuid: &str) -> String {
        let mut texts = vec![("", self.text.as_str())];
        if let Some(parent) = &self.parent_text {
            texts.push(("parent\0", parent.as_str()));
        }
        fingerprint_of(&FpInputs {
            domain: "imgbuild-fingerprint-v1\n",
            texts,
            files: self
                .files
                .iter()
                .map(|(p, sha)| (pathdiff(p, &self.dir), sha.as_str()))
                .collect(),
            vars: self
                .vars
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            base: base_uuid,
        })
    }
}

/// What a fingerprint covers. The one hasher of the image fingerprint ([`Recipe::fingerprint`])
/// and the base layer's ([`Recipe::base_fingerprint`]), which differ only in their inputs.
pub(crate) struct FpInputs<'a> {
    /// Separates the kinds of fingerprint: equal inputs of two kinds never collide.
    pub domain: &'a str,
    /// (tag, text): each text hashed after its tag and length.
    pub texts: Vec<(&'a str, &'a str)>,
    /// (path relative to the recipe directory, sha256).
    pub files: Vec<(String, &'a str)>,
    pub vars: Vec<(&'a str, &'a str)>,
    /// The library drive's uuid.
    pub base: &'a str,
}

pub(crate) fn fingerprint_of(i: &FpInputs<'_>) -> String {
    let mut h = Sha256::new();
    h.update(i.domain.as_bytes());
    for (tag, text) in &i.texts {
        h.update(tag.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    for (rel, sha) in &i.files {
        h.update(b"file\0");
        h.update(rel.as_bytes());
        h.update(b"\0");
        h.update(sha.as_bytes());
    }
    for (k, v) in &i.vars {
        h.update(b"var\0");
        h.update(k.as_bytes());
        h.update(b"\0");
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.update(b"base\0");
    h.update(i.base.as_bytes());
    hex::encode(h.finalize())
}

/// `p` without `.` and `name/..`, lexically: recipes and roles reach one file by several
/// relative paths (`ubuntu-k8s/../common/x.sh`, `roles/../common/x.sh`); this is its one name.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// sha256 of bytes in memory, hex.
fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `p` relative to `base` as text (lexical; both come from joining onto the recipe dir).
pub(crate) fn pathdiff(p: &Path, base: &Path) -> String {
    match p.strip_prefix(base) {
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(_) => p.to_string_lossy().into_owned(),
    }
}
