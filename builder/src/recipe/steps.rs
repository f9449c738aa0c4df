//! Steps: `when:` selection, scripts (and the helper files they `uses:`), uploads (files and
//! directories, checked against their sha256), reboots and `include:`d roles, resolved into
//! [`Step`]s with absolute paths.

use super::lines::{key_in_step, key_line, step_lines};
use super::roles::{role_path, Role};
use super::spec::{Helper, StepFile, HELPER_DIR};
use super::vars::{missing_source_help, path_base, render, template_env, Templates};
use super::{pathdiff, sha256_file, Diag, RecipeFile, Step, StepKind};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What resolving the steps needs. `file`/`text`/`dir` are where the steps are written: the
/// recipe's own, or for a thin recipe (`extends`) the parent's.
pub(super) struct StepInputs<'a> {
    pub spec: &'a RecipeFile,
    pub overrides: &'a BTreeMap<String, String>,
    pub vars: &'a BTreeMap<String, String>,
    pub ctx: &'a minijinja::Value,
    pub templates: &'a Templates<'a>,
    pub dir: &'a Path,
    pub file: &'a Path,
    pub text: &'a str,
    /// The recipe's own text (a thin recipe's comments about its variables, for help).
    pub recipe_text: &'a str,
    /// The roles the steps include, by path.
    pub roles: &'a BTreeMap<PathBuf, Role>,
}

/// The build's steps and every local file they read (path → sha256).
pub(super) fn resolve(
    inp: &StepInputs<'_>,
    diags: &mut Vec<Diag>,
) -> (Vec<Step>, BTreeMap<PathBuf, String>) {
    if inp.spec.steps.is_empty() {
        diags.push(Diag::new(
            inp.file,
            key_line(inp.text, "steps"),
            "steps must not be empty".into(),
        ));
    }
    let mut r = Resolver {
        inp,
        diags,
        steps: Vec::new(),
        files: BTreeMap::new(),
        dests: BTreeSet::new(),
    };
    let src = Src {
        file: inp.file,
        dir: inp.dir,
        text: inp.text,
    };
    r.steps_of(&inp.spec.steps, &src);
    (r.steps, r.files)
}

/// The file a list of steps is written in: the recipe (or its parent), or a role. The steps'
/// paths are relative to its directory, and problems are reported in it.
struct Src<'a> {
    file: &'a Path,
    dir: &'a Path,
    text: &'a str,
}

/// Where a step is written: its file, its number there, its line and the next step's (to find
/// its keys).
struct At<'a> {
    src: &'a Src<'a>,
    n: usize,
    line: Option<usize>,
    next: Option<usize>,
}

impl At<'_> {
    /// The line of `key` within this step.
    fn key(&self, key: &str) -> Option<usize> {
        key_in_step(self.src.text, self.line, self.next, key)
    }
}

/// Resolves steps one by one, collecting the steps, the files they read, the upload
/// destinations taken so far and every problem found.
struct Resolver<'a, 'd> {
    inp: &'a StepInputs<'a>,
    diags: &'d mut Vec<Diag>,
    steps: Vec<Step>,
    files: BTreeMap<PathBuf, String>,
    dests: BTreeSet<String>,
}

impl Resolver<'_, '_> {
    fn steps_of(&mut self, steps: &[StepFile], src: &Src<'_>) {
        let lines = step_lines(src.text);
        for (i, s) in steps.iter().enumerate() {
            let at = At {
                src,
                n: i + 1,
                line: lines.get(i).copied(),
                next: lines.get(i + 1).copied(),
            };
            self.step(s, &at);
        }
    }

    fn diag(&mut self, at: &At<'_>, line: Option<usize>, message: String) {
        self.diags.push(Diag::new(at.src.file, line, message));
    }

    fn template(&mut self, tpl: &str, what: &str, at: &At<'_>) -> String {
        let n = at.n;
        let what = format!("step {n} {what}");
        if at.src.file == self.inp.file {
            self.inp.templates.check(tpl, &what, at.line, self.diags);
        } else {
            // a role's step: reported in the role file
            let t = Templates {
                known: self.inp.templates.known,
                file: at.src.file,
                text: at.src.text,
            };
            t.check(tpl, &what, at.line, self.diags);
        }
        render(tpl, self.inp.ctx).unwrap_or_else(|_| tpl.to_string())
    }

    /// The file's sha256, noted as a file the build reads; None (and a diag) if unreadable.
    fn read(
        &mut self,
        path: &Path,
        at: &At<'_>,
        line: Option<usize>,
        what: impl Fn(&std::io::Error) -> String,
    ) -> Option<String> {
        match sha256_file(path) {
            Ok(h) => {
                let n = super::normalize(path);
                if !self.files.keys().any(|k| super::normalize(k) == n) {
                    self.files.insert(path.to_path_buf(), h.clone());
                }
                Some(h)
            }
            Err(e) => {
                self.diag(at, line, what(&e));
                None
            }
        }
    }

    /// An `include:` step: the role's steps in its place (its file is among those the build
    /// reads, so it is part of the fingerprint).
    fn include(&mut self, s: &StepFile, inc: &str, at: &At<'_>) {
        let n = at.n;
        let others = s.name.is_some()
            || s.script.is_some()
            || s.upload.is_some()
            || s.reboot.is_some()
            || s.dest.is_some()
            || s.mode.is_some()
            || s.sha256.is_some()
            || s.timeout.is_some()
            || !s.uses.is_empty();
        if others {
            let m = format!("step {n}: an `include` step has only `include` (and `when`); the role's steps carry their own settings");
            return self.diag(at, at.line, m);
        }
        let file = role_path(at.src.dir, inc);
        let roles = self.inp.roles;
        // not loaded: roles::load reported why
        let Some(role) = roles.get(&file) else { return };
        self.files
            .insert(role.file.clone(), super::sha256_hex(role.text.as_bytes()));
        let src = Src {
            file: &role.file,
            dir: &role.dir,
            text: &role.text,
        };
        self.steps_of(&role.spec.steps, &src);
    }

    fn step(&mut self, s: &StepFile, at: &At<'_>) {
        let n = at.n;
        if let Some(when) = &s.when {
            match eval_when(when, self.inp.templates.known, self.inp.ctx) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return self.diag(at, at.key("when"), format!("step {n}: when: {e}")),
            }
        }
        if let Some(inc) = &s.include {
            return self.include(s, inc, at);
        }
        if !s.uses.is_empty() && s.script.is_none() {
            self.diag(
                at,
                at.key("uses"),
                format!("step {n}: `uses` belongs to script steps"),
            );
        }
        let kinds = [s.script.is_some(), s.upload.is_some(), s.reboot.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if kinds != 1 {
            return self.diag(at, at.line, format!("step {n}: exactly one of `script`, `upload`, `reboot` must be set (found {kinds})"));
        }
        if s.reboot.is_none()
            && s.upload.is_none()
            && (s.dest.is_some() || s.mode.is_some() || s.sha256.is_some())
        {
            self.diag(
                at,
                at.line,
                format!("step {n}: `dest`, `mode` and `sha256` belong to upload steps"),
            );
        }
        let timeout = s.timeout.unwrap_or(self.inp.spec.timeouts.step);
        let kind = if let Some(script) = &s.script {
            self.script(s, script, at)
        } else if let Some(up) = &s.upload {
            match self.upload(s, up, at, timeout) {
                Some(k) => k,
                None => return,
            }
        } else {
            if s.reboot != Some(true) {
                self.diag(
                    at,
                    at.line,
                    format!("step {n}: `reboot` must be true (omit the step otherwise)"),
                );
            }
            StepKind::Reboot
        };
        let name = s.name.clone().unwrap_or_else(|| match &kind {
            StepKind::Script { path, .. } => path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            StepKind::Upload { dest, .. } => format!("upload {dest}"),
            StepKind::Reboot => "reboot".into(),
        });
        self.steps.push(Step {
            name,
            kind,
            timeout,
            line: at.line,
        });
    }

    fn script(&mut self, s: &StepFile, script: &str, at: &At<'_>) -> StepKind {
        let rel = self.template(script, "script", at);
        let path = path_base(script, self.inp.overrides, at.src.dir).join(&rel);
        let n = at.n;
        let p = path.display().to_string();
        self.read(&path, at, at.key("script"), |e| {
            format!("step {n}: script {p} cannot be read: {e}")
        });
        let uses = s.uses.iter().filter_map(|u| self.helper(u, at)).collect();
        StepKind::Script { path, uses }
    }

    /// A file a script `uses`: uploaded to `HELPER_DIR/<its file name>` before the script.
    fn helper(&mut self, u: &str, at: &At<'_>) -> Option<Helper> {
        let n = at.n;
        let rel = self.template(u, "uses", at);
        let src = path_base(u, self.inp.overrides, at.src.dir).join(&rel);
        let name = src.file_name().map(|f| f.to_string_lossy().into_owned());
        let Some(name) = name.filter(|f| !f.contains(['\'', '\n', '\0'])) else {
            let m = format!("step {n}: uses {u:?} must name a file (no quotes or newlines)");
            self.diag(at, at.key("uses"), m);
            return None;
        };
        let p = src.display().to_string();
        let sha256 = self.read(&src, at, at.key("uses"), |e| {
            format!("step {n}: uses {p}: cannot be read: {e}")
        })?;
        let dest = format!("{HELPER_DIR}/{name}");
        if self.dests.contains(&dest) {
            let m = format!("step {n}: uses {p}: {dest} is also an upload step's dest");
            self.diag(at, at.key("uses"), m);
        }
        Some(Helper { src, dest, sha256 })
    }

    /// An upload step: the file's kind, or None when it is a directory (its files were pushed
    /// as steps of their own) or cannot be resolved.
    fn upload(&mut self, s: &StepFile, up: &str, at: &At<'_>, timeout: u64) -> Option<StepKind> {
        let n = at.n;
        let rel = self.template(up, "upload", at);
        if rel.trim().is_empty() {
            self.diag(
                at,
                at.key("upload"),
                format!("step {n}: upload source {up:?} is empty: set it with --var NAME=PATH"),
            );
            return None;
        }
        let src = path_base(up, self.inp.overrides, at.src.dir).join(&rel);
        let Some(dest) = &s.dest else {
            self.diag(
                at,
                at.line,
                format!("step {n}: upload needs `dest` (an absolute path in the guest)"),
            );
            return None;
        };
        let dest = self.template(dest, "dest", at);
        if !dest.starts_with('/') || dest.contains(['\'', '\n', '\0']) {
            self.diag(
                at,
                at.key("dest"),
                format!(
                    "step {n}: dest {dest:?} must be an absolute path without quotes or newlines"
                ),
            );
        }
        if !self.dests.insert(dest.clone()) {
            self.diag(
                at,
                at.key("dest"),
                format!("step {n}: dest {dest} is uploaded twice"),
            );
        }
        let mode = s.mode.clone().unwrap_or_else(|| "0644".into());
        if !(3..=4).contains(&mode.len()) || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
            self.diag(
                at,
                at.key("mode"),
                format!("step {n}: mode {mode:?} must be octal like \"0755\""),
            );
        }
        if src.is_dir() {
            self.upload_dir(s, &src, &dest, at, timeout);
            return None;
        }
        let i = self.inp;
        let sha = self
            .read(&src, at, at.key("upload"), |e| {
                let why = missing_source_help(
                    up,
                    i.vars,
                    i.overrides,
                    &[at.src.text, i.text, i.recipe_text],
                );
                format!(
                    "step {n}: upload source {} cannot be read: {e}{why}",
                    src.display()
                )
            })
            .unwrap_or_default();
        if let (Some(want), false) = (&s.sha256, sha.is_empty()) {
            if !want.eq_ignore_ascii_case(&sha) {
                self.diag(
                    at,
                    at.key("sha256"),
                    format!(
                        "step {n}: {} has sha256 {sha}, the recipe expects {want}",
                        src.display()
                    ),
                );
            }
        }
        Some(StepKind::Upload {
            src,
            dest,
            mode,
            sha256: sha,
        })
    }

    /// A directory uploads every regular file beneath it, each checked like a single upload;
    /// without `mode`, each keeps its own permission bits.
    fn upload_dir(&mut self, s: &StepFile, src: &Path, dest: &str, at: &At<'_>, timeout: u64) {
        let n = at.n;
        let line = at.key("upload");
        if s.sha256.is_some() {
            self.diag(
                at,
                at.key("sha256"),
                format!(
                    "step {n}: `sha256` applies to a file upload, and {} is a directory",
                    src.display()
                ),
            );
        }
        let name = s.name.clone().unwrap_or_else(|| format!("upload {dest}"));
        let list = match files_under(src) {
            Ok(list) if list.is_empty() => {
                let d = src.display();
                return self.diag(at, line, format!("step {n}: upload directory {d} is empty"));
            }
            Ok(list) => list,
            Err(e) => {
                let d = src.display();
                let m = format!("step {n}: upload directory {d} cannot be read: {e}");
                return self.diag(at, line, m);
            }
        };
        for (rel, path, own_mode) in list {
            let d = format!("{}/{rel}", dest.trim_end_matches('/'));
            if d.contains(['\'', '\n', '\0']) || !self.dests.insert(d.clone()) {
                self.diag(at, line, format!("step {n}: {} would be uploaded to {d:?}, which is taken or has quotes or newlines", path.display()));
                continue;
            }
            let p = path.display().to_string();
            let Some(sha256) = self.read(&path, at, line, |e| {
                format!("step {n}: {p} cannot be read: {e}")
            }) else {
                continue;
            };
            let mode = s
                .mode
                .clone()
                .unwrap_or_else(|| format!("{:04o}", own_mode & 0o777));
            self.steps.push(Step {
                name: format!("{name}: {rel}"),
                kind: StepKind::Upload {
                    src: path,
                    dest: d,
                    mode,
                    sha256,
                },
                timeout,
                line: at.line,
            });
        }
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
