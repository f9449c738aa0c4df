//! Steps: `when:` selection, scripts, uploads (files and directories, checked against their
//! sha256) and reboots, resolved into [`Step`]s with absolute paths.

use super::lines::{key_in_step, key_line, step_lines};
use super::spec::StepFile;
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
    let lines = step_lines(inp.text);
    for (i, s) in inp.spec.steps.iter().enumerate() {
        let at = At {
            n: i + 1,
            line: lines.get(i).copied(),
            next: lines.get(i + 1).copied(),
            text: inp.text,
        };
        r.step(s, &at);
    }
    (r.steps, r.files)
}

/// Where a step is written: its number, its line and the next step's (to find its keys).
struct At<'a> {
    n: usize,
    line: Option<usize>,
    next: Option<usize>,
    text: &'a str,
}

impl At<'_> {
    /// The line of `key` within this step.
    fn key(&self, key: &str) -> Option<usize> {
        key_in_step(self.text, self.line, self.next, key)
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
    fn diag(&mut self, line: Option<usize>, message: String) {
        self.diags.push(Diag::new(self.inp.file, line, message));
    }

    fn template(&mut self, tpl: &str, what: &str, at: &At<'_>) -> String {
        let n = at.n;
        self.inp
            .templates
            .check(tpl, &format!("step {n} {what}"), at.line, self.diags);
        render(tpl, self.inp.ctx).unwrap_or_else(|_| tpl.to_string())
    }

    /// The file's sha256, noted as a file the build reads; None (and a diag) if unreadable.
    fn read(
        &mut self,
        path: &Path,
        line: Option<usize>,
        what: impl Fn(&std::io::Error) -> String,
    ) -> Option<String> {
        match sha256_file(path) {
            Ok(h) => {
                self.files.insert(path.to_path_buf(), h.clone());
                Some(h)
            }
            Err(e) => {
                self.diag(line, what(&e));
                None
            }
        }
    }

    fn step(&mut self, s: &StepFile, at: &At<'_>) {
        let n = at.n;
        if let Some(when) = &s.when {
            match eval_when(when, self.inp.templates.known, self.inp.ctx) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return self.diag(at.key("when"), format!("step {n}: when: {e}")),
            }
        }
        let kinds = [s.script.is_some(), s.upload.is_some(), s.reboot.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if kinds != 1 {
            return self.diag(at.line, format!("step {n}: exactly one of `script`, `upload`, `reboot` must be set (found {kinds})"));
        }
        if s.reboot.is_none()
            && s.upload.is_none()
            && (s.dest.is_some() || s.mode.is_some() || s.sha256.is_some())
        {
            self.diag(
                at.line,
                format!("step {n}: `dest`, `mode` and `sha256` belong to upload steps"),
            );
        }
        let timeout = s.timeout.unwrap_or(self.inp.spec.timeouts.step);
        let kind = if let Some(script) = &s.script {
            self.script(script, at)
        } else if let Some(up) = &s.upload {
            match self.upload(s, up, at, timeout) {
                Some(k) => k,
                None => return,
            }
        } else {
            if s.reboot != Some(true) {
                self.diag(
                    at.line,
                    format!("step {n}: `reboot` must be true (omit the step otherwise)"),
                );
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
        self.steps.push(Step {
            name,
            kind,
            timeout,
            line: at.line,
        });
    }

    fn script(&mut self, script: &str, at: &At<'_>) -> StepKind {
        let rel = self.template(script, "script", at);
        let path = path_base(script, self.inp.overrides, self.inp.dir).join(&rel);
        let n = at.n;
        let p = path.display().to_string();
        self.read(&path, at.key("script"), |e| {
            format!("step {n}: script {p} cannot be read: {e}")
        });
        StepKind::Script { path }
    }

    /// An upload step: the file's kind, or None when it is a directory (its files were pushed
    /// as steps of their own) or cannot be resolved.
    fn upload(&mut self, s: &StepFile, up: &str, at: &At<'_>, timeout: u64) -> Option<StepKind> {
        let n = at.n;
        let rel = self.template(up, "upload", at);
        if rel.trim().is_empty() {
            self.diag(
                at.key("upload"),
                format!("step {n}: upload source {up:?} is empty: set it with --var NAME=PATH"),
            );
            return None;
        }
        let src = path_base(up, self.inp.overrides, self.inp.dir).join(&rel);
        let Some(dest) = &s.dest else {
            self.diag(
                at.line,
                format!("step {n}: upload needs `dest` (an absolute path in the guest)"),
            );
            return None;
        };
        let dest = self.template(dest, "dest", at);
        if !dest.starts_with('/') || dest.contains(['\'', '\n', '\0']) {
            self.diag(
                at.key("dest"),
                format!(
                    "step {n}: dest {dest:?} must be an absolute path without quotes or newlines"
                ),
            );
        }
        if !self.dests.insert(dest.clone()) {
            self.diag(
                at.key("dest"),
                format!("step {n}: dest {dest} is uploaded twice"),
            );
        }
        let mode = s.mode.clone().unwrap_or_else(|| "0644".into());
        if !(3..=4).contains(&mode.len()) || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
            self.diag(
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
            .read(&src, at.key("upload"), |e| {
                let why = missing_source_help(up, i.vars, i.overrides, &[i.text, i.recipe_text]);
                format!(
                    "step {n}: upload source {} cannot be read: {e}{why}",
                    src.display()
                )
            })
            .unwrap_or_default();
        if let (Some(want), false) = (&s.sha256, sha.is_empty()) {
            if !want.eq_ignore_ascii_case(&sha) {
                self.diag(
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
                return self.diag(line, format!("step {n}: upload directory {d} is empty"));
            }
            Ok(list) => list,
            Err(e) => {
                let d = src.display();
                let m = format!("step {n}: upload directory {d} cannot be read: {e}");
                return self.diag(line, m);
            }
        };
        for (rel, path, own_mode) in list {
            let d = format!("{}/{rel}", dest.trim_end_matches('/'));
            if d.contains(['\'', '\n', '\0']) || !self.dests.insert(d.clone()) {
                self.diag(line, format!("step {n}: {} would be uploaded to {d:?}, which is taken or has quotes or newlines", path.display()));
                continue;
            }
            let p = path.display().to_string();
            let Some(sha256) = self.read(&path, line, |e| {
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
