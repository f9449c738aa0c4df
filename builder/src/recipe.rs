//! Recipe format: parsing, validation (with file:line diagnostics) and variable resolution.
//!
//! A recipe is `image-recipes/<name>/recipe.yaml`. Every path in it is relative to the recipe's
//! directory, so steps can share scripts (`script: ../common/10-kernel.sh`). See docs/imgbuild.md.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Names every template may use besides the recipe's own `vars`.
pub const BUILTIN_VARS: &[&str] = &[
    "build_id",
    "build_time",
    "build_date",
    "recipe",
    "fingerprint",
    "base_uuid",
    "upload_sha256",
];

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

/// A size given as bytes (`21474836480`) or with a binary unit (`20GiB`, `512MiB`). Parsed in
/// [`Recipe::load`] (not in serde) so a bad value is reported with its line.
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

/// A step as written. Exactly one of `script`, `upload`, `reboot` must be set.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub script: Option<String>,
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
    fn text(&self) -> String {
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
    /// `ssh_user`, `timeouts`, `output` and the values of `vars`, never the steps. Inherited paths
    /// stay relative to the parent's directory.
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
}

/// A resolved step, paths absolute and templates rendered.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Script {
        path: PathBuf,
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
    /// Every local file the build reads (scripts, uploads): path → sha256, for the fingerprint.
    pub files: BTreeMap<PathBuf, String>,
    /// `disk_size` in bytes.
    pub disk_size: u64,
    /// `server.mem` in bytes.
    pub mem: u64,
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

/// 1-based line of the first line containing `needle`, or None.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// 1-based line of a top-level key such as `output:`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    text.lines()
        .position(|l| l.trim_start().starts_with(&pat))
        .map(|i| i + 1)
}

/// Line of `key:` inside the step starting at `step_line` (before the next step), else the step line.
fn key_in_step(
    text: &str,
    step_line: Option<usize>,
    next: Option<usize>,
    key: &str,
) -> Option<usize> {
    let start = step_line?;
    let pat = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(start - 1)
        .take_while(|(i, _)| next.map(|n| i + 1 < n).unwrap_or(true))
        .find(|(_, l)| l.trim_start().trim_start_matches("- ").starts_with(&pat))
        .map(|(i, _)| i + 1)
        .or(step_line)
}

/// Lines of the items of the top-level `steps:` list (a plain scan: recipes are block YAML).
fn step_lines(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("steps:")) else {
        return Vec::new();
    };
    let mut indent: Option<usize> = None;
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = l.len() - t.len();
        if ind == 0 && !t.starts_with('-') {
            break;
        }
        if t.starts_with("- ") || t == "-" {
            match indent {
                None => {
                    indent = Some(ind);
                    out.push(i + 1);
                }
                Some(x) if x == ind => out.push(i + 1),
                _ => {}
            }
        }
    }
    out
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

/// Environment variable name a recipe variable is passed to scripts as (`kubernetes_version` →
/// `KUBERNETES_VERSION`).
pub fn env_name(var: &str) -> String {
    var.to_ascii_uppercase()
}

fn valid_var_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_lowercase() || ch == '_')
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
}

/// Parse `k=v` overrides.
pub fn parse_overrides(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| format!("--var {it:?}: expected NAME=VALUE"))?;
        m.insert(k.trim().to_string(), v.to_string());
    }
    Ok(m)
}

fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Render a template with `ctx`. Errors name the template.
pub fn render(tpl: &str, ctx: &minijinja::Value) -> Result<String, String> {
    let env = template_env();
    env.render_str(tpl, ctx)
        .map_err(|e| format!("template {tpl:?}: {e}"))
}

/// Variables a template refers to that are neither recipe vars nor built-ins.
fn unknown_template_vars(tpl: &str, known: &BTreeSet<String>) -> Result<Vec<String>, String> {
    let env = template_env();
    let t = env
        .template_from_str(tpl)
        .map_err(|e| format!("template {tpl:?} does not parse: {e}"))?;
    let mut bad: Vec<String> = t
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !known.contains(v) && !BUILTIN_VARS.contains(&v.as_str()))
        .collect();
    bad.sort();
    Ok(bad)
}

impl Recipe {
    /// Load, parse and validate a recipe, applying `--var` overrides. Returns every problem found.
    pub fn load(file: &Path, overrides: &BTreeMap<String, String>) -> Result<Recipe, Diags> {
        let fd = |line: Option<usize>, message: String| Diag {
            file: file.to_path_buf(),
            line,
            message,
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| Diags(vec![fd(None, format!("cannot read recipe: {e}"))]))?;
        let own_dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        // A thin recipe lacks required fields until merged with its parent: look for `extends`
        // first, and parse a standalone recipe straight from its text (for line numbers).
        let extends = serde_yaml::from_str::<serde_yaml::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("extends")
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
            });
        let (spec, parent) = match &extends {
            None => {
                let spec: RecipeFile = serde_yaml::from_str(&text).map_err(|e| {
                    let line = e.location().map(|l| l.line());
                    Diags(vec![fd(line, format!("{e}"))])
                })?;
                (spec, None)
            }
            Some(rel) => {
                let parent = Parent::load(&own_dir, rel).map_err(|(f, l, m)| {
                    Diags(vec![Diag {
                        file: f,
                        line: l,
                        message: m,
                    }])
                })?;
                let spec = parent
                    .merge(&text)
                    .map_err(|m| Diags(vec![fd(key_line(&text, "extends"), m)]))?;
                (spec, Some(parent))
            }
        };
        // Steps (and their paths and lines) come from the parent for a thin recipe.
        let (dir, steps_file, steps_text) = match &parent {
            Some(p) => (p.dir.clone(), p.file.clone(), p.text.clone()),
            None => (own_dir.clone(), file.to_path_buf(), text.clone()),
        };
        let sfd = |line: Option<usize>, message: String| Diag {
            file: steps_file.clone(),
            line,
            message,
        };
        let mut diags = Vec::new();

        if spec.name.trim().is_empty() {
            diags.push(fd(key_line(&text, "name"), "name must not be empty".into()));
        }
        let disk_size = spec.disk_size.bytes().unwrap_or_else(|e| {
            diags.push(fd(key_line(&text, "disk_size"), format!("disk_size: {e}")));
            1 << 30
        });
        if disk_size < (1 << 30) {
            diags.push(fd(
                key_line(&text, "disk_size"),
                format!("disk_size {disk_size} is below 1 GiB"),
            ));
        }
        let mem = spec.server.mem.bytes().unwrap_or_else(|e| {
            diags.push(fd(key_line(&text, "mem"), format!("server.mem: {e}")));
            256 << 20
        });
        if !(250..=96_000).contains(&spec.server.cpu) {
            diags.push(fd(
                key_line(&text, "cpu"),
                format!("server.cpu {} MHz is outside 250–96000", spec.server.cpu),
            ));
        }
        if mem < (256 << 20) {
            diags.push(fd(
                key_line(&text, "mem"),
                "server.mem must be at least 256MiB".into(),
            ));
        }
        if let Some(s) = spec.server.smp {
            if !(1..=32).contains(&s) {
                diags.push(fd(
                    key_line(&text, "smp"),
                    format!("server.smp {s} is outside 1–32"),
                ));
            }
        }

        let mut seen = BTreeSet::new();
        for n in &spec.secrets {
            if !valid_var_name(n) || !seen.insert(n) {
                diags.push(fd(
                    key_line(&text, "secrets"),
                    format!("secret name {n:?} is not lower_snake_case or is declared twice"),
                ));
            }
        }

        // variables: declared names, overrides only for declared ones
        let mut vars = BTreeMap::new();
        for (k, v) in &spec.vars {
            if !valid_var_name(k) {
                diags.push(fd(line_of(&text, &format!("{k}:")), format!("variable name {k:?} must be lower_snake_case (it is passed to scripts as {})", env_name(k))));
            }
            if BUILTIN_VARS.contains(&k.as_str()) {
                diags.push(fd(
                    line_of(&text, &format!("{k}:")),
                    format!("variable {k:?} shadows a built-in variable"),
                ));
            }
            match expand_env(&v.text(), |n| std::env::var(n).ok()) {
                Ok(value) => {
                    vars.insert(k.clone(), value);
                }
                Err(e) => {
                    diags.push(fd(
                        line_of(&text, &format!("{k}:")),
                        format!("vars.{k}: {e}"),
                    ));
                    vars.insert(k.clone(), v.text());
                }
            }
        }
        for (k, v) in overrides {
            if !vars.contains_key(k) {
                diags.push(fd(
                    key_line(&text, "vars"),
                    format!(
                        "--var {k}: unknown variable; the recipe declares: {}",
                        spec.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            } else {
                vars.insert(k.clone(), v.clone());
            }
        }
        let known: BTreeSet<String> = vars.keys().cloned().collect();
        let ctx = minijinja::Value::from_serialize(&vars);

        // templates must only use known names
        let check_tpl = |tpl: &str, what: &str, line: Option<usize>, diags: &mut Vec<Diag>| {
            match unknown_template_vars(tpl, &known) {
                Ok(bad) if bad.is_empty() => {}
                Ok(bad) => diags.push(fd(
                    line.or_else(|| line_of(&text, tpl)),
                    format!(
                        "{what}: unknown variable(s) {} (declare them under vars:)",
                        bad.join(", ")
                    ),
                )),
                Err(e) => diags.push(fd(
                    line.or_else(|| line_of(&text, tpl)),
                    format!("{what}: {e}"),
                )),
            }
        };
        check_tpl(
            &spec.output.name,
            "output.name",
            key_line(&text, "output").and_then(|_| line_of(&text, &spec.output.name)),
            &mut diags,
        );
        for t in &spec.output.tags {
            check_tpl(t, "output.tags", None, &mut diags);
        }
        for (k, v) in &spec.output.meta {
            check_tpl(v, &format!("output.meta.{k}"), None, &mut diags);
        }

        // steps
        let lines = step_lines(&steps_text);
        let mut steps = Vec::new();
        let mut files = BTreeMap::new();
        let mut dests = BTreeSet::new();
        if spec.steps.is_empty() {
            diags.push(sfd(
                key_line(&steps_text, "steps"),
                "steps must not be empty".into(),
            ));
        }
        for (i, s) in spec.steps.iter().enumerate() {
            let line = lines.get(i).copied();
            let next = lines.get(i + 1).copied();
            let at = |key: &str| key_in_step(&steps_text, line, next, key);
            let n = i + 1;
            if let Some(when) = &s.when {
                match eval_when(when, &known, &ctx) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        diags.push(sfd(at("when"), format!("step {n}: when: {e}")));
                        continue;
                    }
                }
            }
            let kinds = [s.script.is_some(), s.upload.is_some(), s.reboot.is_some()]
                .iter()
                .filter(|x| **x)
                .count();
            if kinds != 1 {
                diags.push(sfd(line, format!("step {n}: exactly one of `script`, `upload`, `reboot` must be set (found {kinds})")));
                continue;
            }
            if s.reboot.is_none()
                && s.upload.is_none()
                && (s.dest.is_some() || s.mode.is_some() || s.sha256.is_some())
            {
                diags.push(sfd(
                    line,
                    format!("step {n}: `dest`, `mode` and `sha256` belong to upload steps"),
                ));
            }
            let timeout = s.timeout.unwrap_or(spec.timeouts.step);
            let kind = if let Some(script) = &s.script {
                check_tpl(script, &format!("step {n} script"), line, &mut diags);
                let rel = render(script, &ctx).unwrap_or_else(|_| script.clone());
                let path = path_base(script, overrides, &dir).join(&rel);
                match sha256_file(&path) {
                    Ok(h) => {
                        files.insert(path.clone(), h);
                    }
                    Err(e) => diags.push(sfd(
                        at("script"),
                        format!("step {n}: script {} cannot be read: {e}", path.display()),
                    )),
                }
                StepKind::Script { path }
            } else if let Some(up) = &s.upload {
                check_tpl(up, &format!("step {n} upload"), line, &mut diags);
                let rel = render(up, &ctx).unwrap_or_else(|_| up.clone());
                if rel.trim().is_empty() {
                    diags.push(sfd(
                        at("upload"),
                        format!(
                            "step {n}: upload source {up:?} is empty: set it with --var NAME=PATH"
                        ),
                    ));
                    continue;
                }
                let src = path_base(up, overrides, &dir).join(&rel);
                let Some(dest) = &s.dest else {
                    diags.push(sfd(
                        line,
                        format!("step {n}: upload needs `dest` (an absolute path in the guest)"),
                    ));
                    continue;
                };
                check_tpl(dest, &format!("step {n} dest"), line, &mut diags);
                let dest = render(dest, &ctx).unwrap_or_else(|_| dest.clone());
                if !dest.starts_with('/') || dest.contains(['\'', '\n', '\0']) {
                    diags.push(sfd(at("dest"), format!("step {n}: dest {dest:?} must be an absolute path without quotes or newlines")));
                }
                if !dests.insert(dest.clone()) {
                    diags.push(sfd(
                        at("dest"),
                        format!("step {n}: dest {dest} is uploaded twice"),
                    ));
                }
                let mode = s.mode.clone().unwrap_or_else(|| "0644".into());
                if !(3..=4).contains(&mode.len()) || !mode.chars().all(|c| ('0'..='7').contains(&c))
                {
                    diags.push(sfd(
                        at("mode"),
                        format!("step {n}: mode {mode:?} must be octal like \"0755\""),
                    ));
                }
                if src.is_dir() {
                    // A directory uploads every regular file beneath it, each checked like a
                    // single upload; without `mode`, each keeps its own permission bits.
                    if s.sha256.is_some() {
                        diags.push(sfd(at("sha256"), format!("step {n}: `sha256` applies to a file upload, and {} is a directory", src.display())));
                    }
                    let name = s.name.clone().unwrap_or_else(|| format!("upload {dest}"));
                    match files_under(&src) {
                        Ok(list) if list.is_empty() => diags.push(sfd(
                            at("upload"),
                            format!("step {n}: upload directory {} is empty", src.display()),
                        )),
                        Ok(list) => {
                            for (rel, path, own_mode) in list {
                                let d = format!("{}/{rel}", dest.trim_end_matches('/'));
                                if d.contains(['\'', '\n', '\0']) || !dests.insert(d.clone()) {
                                    diags.push(sfd(at("upload"), format!("step {n}: {} would be uploaded to {d:?}, which is taken or has quotes or newlines", path.display())));
                                    continue;
                                }
                                let sha256 = match sha256_file(&path) {
                                    Ok(h) => h,
                                    Err(e) => {
                                        diags.push(sfd(
                                            at("upload"),
                                            format!(
                                                "step {n}: {} cannot be read: {e}",
                                                path.display()
                                            ),
                                        ));
                                        continue;
                                    }
                                };
                                files.insert(path.clone(), sha256.clone());
                                let mode = s
                                    .mode
                                    .clone()
                                    .unwrap_or_else(|| format!("{:04o}", own_mode & 0o777));
                                steps.push(Step {
                                    name: format!("{name}: {rel}"),
                                    kind: StepKind::Upload {
                                        src: path,
                                        dest: d,
                                        mode,
                                        sha256,
                                    },
                                    timeout,
                                    line,
                                });
                            }
                        }
                        Err(e) => diags.push(sfd(
                            at("upload"),
                            format!(
                                "step {n}: upload directory {} cannot be read: {e}",
                                src.display()
                            ),
                        )),
                    }
                    continue;
                }
                let sha = match sha256_file(&src) {
                    Ok(h) => {
                        files.insert(src.clone(), h.clone());
                        h
                    }
                    Err(e) => {
                        let why = missing_source_help(up, &vars, overrides, &[&steps_text, &text]);
                        diags.push(sfd(
                            at("upload"),
                            format!(
                                "step {n}: upload source {} cannot be read: {e}{why}",
                                src.display()
                            ),
                        ));
                        String::new()
                    }
                };
                if let (Some(want), false) = (&s.sha256, sha.is_empty()) {
                    if !want.eq_ignore_ascii_case(&sha) {
                        diags.push(sfd(
                            at("sha256"),
                            format!(
                                "step {n}: {} has sha256 {sha}, the recipe expects {want}",
                                src.display()
                            ),
                        ));
                    }
                }
                StepKind::Upload {
                    src,
                    dest,
                    mode,
                    sha256: sha,
                }
            } else {
                if s.reboot != Some(true) {
                    diags.push(sfd(
                        line,
                        format!("step {n}: `reboot` must be true (omit the step otherwise)"),
                    ));
                }
                StepKind::Reboot
            };
            let name = s.name.clone().unwrap_or_else(|| match &kind {
                StepKind::Script { path } => path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                StepKind::Upload { dest, .. } => format!("upload {dest}"),
                StepKind::Reboot => "reboot".into(),
            });
            steps.push(Step {
                name,
                kind,
                timeout,
                line,
            });
        }
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
        })
    }

    /// Environment passed to scripts: every variable upper-cased, plus a few build facts.
    pub fn script_env(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (env_name(k), v.clone()))
            .collect()
    }

    /// sha256 of each upload, keyed by guest path (the `upload_sha256` template variable).
    pub fn upload_sha256(&self) -> BTreeMap<String, String> {
        self.steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Upload { dest, sha256, .. } => Some((dest.clone(), sha256.clone())),
                _ => None,
            })
            .collect()
    }

    /// The recipe fingerprint: sha256 over the recipe text, every file it reads (by path relative
    /// to the recipe directory, so a checkout elsewhere gives the same value), the resolved
    /// variables and the base drive uuid. Same inputs → same image → no rebuild.
    pub fn fingerprint(&self, base_uuid: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"imgbuild-fingerprint-v1\n");
        h.update((self.text.len() as u64).to_le_bytes());
        h.update(self.text.as_bytes());
        if let Some(parent) = &self.parent_text {
            h.update(b"parent\0");
            h.update((parent.len() as u64).to_le_bytes());
            h.update(parent.as_bytes());
        }
        for (p, sha) in &self.files {
            let rel = pathdiff(p, &self.dir);
            h.update(b"file\0");
            h.update(rel.as_bytes());
            h.update(b"\0");
            h.update(sha.as_bytes());
        }
        for (k, v) in &self.vars {
            h.update(b"var\0");
            h.update(k.as_bytes());
            h.update(b"\0");
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        h.update(b"base\0");
        h.update(base_uuid.as_bytes());
        hex::encode(h.finalize())
    }
}

/// The recipe a thin recipe `extends`.
struct Parent {
    file: PathBuf,
    dir: PathBuf,
    text: String,
}

impl Parent {
    /// `rel` is a recipe directory or recipe.yaml path relative to the child's directory.
    /// Errors are (file, line, message).
    fn load(child_dir: &Path, rel: &str) -> Result<Parent, (PathBuf, Option<usize>, String)> {
        let p = child_dir.join(rel);
        let file = if p.is_dir() { p.join("recipe.yaml") } else { p };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            (
                file.clone(),
                None,
                format!("extends: cannot read the parent recipe: {e}"),
            )
        })?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Parent { file, dir, text })
    }

    /// The child's settings over the parent's: top-level keys replace the parent's, `vars` are
    /// merged name by name, and the steps are the parent's alone.
    fn merge(&self, child_text: &str) -> Result<RecipeFile, String> {
        use serde_yaml::{Mapping, Value};
        let parse = |t: &str, what: &str| -> Result<Mapping, String> {
            match serde_yaml::from_str::<Value>(t) {
                Ok(Value::Mapping(m)) => Ok(m),
                Ok(_) => Err(format!("{what} is not a mapping")),
                Err(e) => Err(format!("{what}: {e}")),
            }
        };
        let mut merged = parse(
            &self.text,
            &format!("parent recipe {}", self.file.display()),
        )?;
        if merged.contains_key("extends") {
            return Err(format!(
                "the parent recipe {} extends another: one level of `extends` only",
                self.file.display()
            ));
        }
        for (k, v) in parse(child_text, "recipe")? {
            match k.as_str() {
                Some("extends") => {}
                Some("steps") => {
                    return Err("a recipe that `extends` another may not define `steps`: it may change name, description, base, disk_size, server, ssh_user, timeouts, output and vars".into())
                }
                Some("vars") => {
                    let Value::Mapping(child_vars) = v else {
                        return Err("vars must be a mapping".into());
                    };
                    let vars = merged
                        .entry(Value::from("vars"))
                        .or_insert_with(|| Value::Mapping(Mapping::new()));
                    if let Value::Mapping(vars) = vars {
                        vars.extend(child_vars);
                    }
                }
                _ => {
                    merged.insert(k, v);
                }
            }
        }
        serde_yaml::from_value(Value::Mapping(merged))
            .map_err(|e| format!("merged with the parent: {e}"))
    }
}

/// Evaluates a step's `when` expression; names must be declared variables.
fn eval_when(expr: &str, known: &BTreeSet<String>, ctx: &minijinja::Value) -> Result<bool, String> {
    let env = template_env();
    let e = env
        .compile_expression(expr)
        .map_err(|e| format!("{expr:?} does not parse: {e}"))?;
    let unknown: Vec<String> = e
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !known.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "{expr:?} uses unknown variable(s) {} (declare them under vars:)",
            unknown.join(", ")
        ));
    }
    e.eval(ctx)
        .map(|v| v.is_true())
        .map_err(|e| format!("{expr:?}: {e}"))
}

/// Regular files under `dir`, sorted: (path relative to `dir`, path, permission bits). Symlinks
/// are refused rather than followed: an upload names exactly what goes into the image.
fn files_under(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                todo.push(path);
            } else if meta.is_file() {
                let rel = pathdiff(&path, dir);
                out.push((rel, path, meta.permissions().mode()));
            } else {
                return Err(std::io::Error::other(format!(
                    "{} is neither a regular file nor a directory",
                    path.display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `${NAME}` and `${NAME:-default}` in a variable's value as the recipe writes it: the environment
/// variable NAME, or `default` when NAME is unset or empty (the shell's `:-`). A default can so
/// follow the build's layout: `${CARGO_TARGET_DIR:-../../target}/…`. `--var` values are literal.
fn expand_env(value: &str, get: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{value:?}: `${{` without a closing `}}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{value:?}: `${{{inner}}}` is not an environment reference (`${{NAME}}` or `${{NAME:-default}}`)"
            ));
        }
        match (get(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "{value:?}: environment variable {name} is not set (or give a default: `${{{name}:-…}}`)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The variable a path template starts with (`{{ agent_binary }}` → `agent_binary`).
fn leading_var(tpl: &str) -> Option<&str> {
    let rest = tpl.trim_start().strip_prefix("{{")?;
    let name = rest[..rest.find("}}")?].trim();
    valid_var_name(name).then_some(name)
}

/// What a step's relative path is relative to: the current directory when it starts with a
/// variable given on the command line (`--var agent_binary=dist/cloudsigma-agent` names
/// ./dist/cloudsigma-agent, as any path on a command line), else the recipe's directory.
fn path_base(tpl: &str, overrides: &BTreeMap<String, String>, recipe_dir: &Path) -> PathBuf {
    leading_var(tpl)
        .filter(|v| overrides.contains_key(*v))
        .and_then(|_| std::env::current_dir().ok())
        .unwrap_or_else(|| recipe_dir.to_path_buf())
}

/// For an upload source that cannot be read: which variable it comes from, where its value came
/// from, what the recipe says about it (the comment above its declaration) and what to do.
fn missing_source_help(
    tpl: &str,
    vars: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
    texts: &[&str],
) -> String {
    let Some(var) = leading_var(tpl) else {
        return String::new();
    };
    let value = vars.get(var).cloned().unwrap_or_default();
    let origin = if overrides.contains_key(var) {
        "given with --var, relative to the current directory"
    } else {
        "the recipe's default, relative to the recipe's directory"
    };
    // the comment lines right above `var:` under `vars:`
    let about = texts
        .iter()
        .find_map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with(&format!("{var}:")))?;
            let mut doc: Vec<&str> = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .map(|l| l.trim_start().trim_start_matches('#').trim())
                .collect();
            doc.reverse();
            (!doc.is_empty()).then(|| format!(" (the recipe: {})", doc.join(" ")))
        })
        .unwrap_or_default();
    format!(
        "; it is variable {var} = {value:?} ({origin}){about}: build that file, or pass --var {var}=PATH"
    )
}

/// `p` relative to `base` as text (lexical; both come from joining onto the recipe dir).
fn pathdiff(p: &Path, base: &Path) -> String {
    match p.strip_prefix(base) {
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(_) => p.to_string_lossy().into_owned(),
    }
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

    #[test]
    fn step_lines_found() {
        let t = "name: x\nsteps:\n  - script: a.sh\n    name: a\n  # c\n  - reboot: true\noutput:\n  name: y\n";
        assert_eq!(step_lines(t), vec![3, 6]);
    }

    #[test]
    fn env_references_in_var_defaults() {
        let env = |n: &str| match n {
            "SET" => Some("/t".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand_env("${SET:-x}/a", env).unwrap(), "/t/a");
        assert_eq!(expand_env("${EMPTY:-../t}/a", env).unwrap(), "../t/a");
        assert_eq!(expand_env("${UNSET:-d}${SET}", env).unwrap(), "d/t");
        assert_eq!(
            expand_env("plain $HOME {{ x }}", env).unwrap(),
            "plain $HOME {{ x }}"
        );
        assert!(expand_env("${UNSET}", env)
            .unwrap_err()
            .contains("UNSET is not set"));
        assert!(expand_env("${SET", env).is_err());
        assert!(expand_env("${a b}", env).is_err());
        assert_eq!(leading_var(" {{ agent_binary }}/x"), Some("agent_binary"));
        assert_eq!(leading_var("../{{ a }}"), None);
        assert_eq!(leading_var("{{ a ~ b }}"), None);
    }

    #[test]
    fn var_names() {
        assert!(valid_var_name("kubernetes_version"));
        assert!(!valid_var_name("Kube"));
        assert!(!valid_var_name("1x"));
    }
}
