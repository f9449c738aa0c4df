//! Steps: `when:` selection, scripts, uploads (files and directories, checked against their
//! sha256) and reboots, resolved into [`Step`]s with absolute paths.

use super::lines::{key_in_step, key_line, step_lines};
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
    let StepInputs {
        spec,
        overrides,
        vars,
        ctx,
        templates,
        dir,
        file: steps_file,
        text: steps_text,
        recipe_text: text,
    } = *inp;
    let known = templates.known;
    let sfd = |line, message| Diag::new(steps_file, line, message);
    let lines = step_lines(steps_text);
    let mut steps = Vec::new();
    let mut files = BTreeMap::new();
    let mut dests = BTreeSet::new();
    if spec.steps.is_empty() {
        diags.push(sfd(
            key_line(steps_text, "steps"),
            "steps must not be empty".into(),
        ));
    }
    for (i, s) in spec.steps.iter().enumerate() {
        let line = lines.get(i).copied();
        let next = lines.get(i + 1).copied();
        let at = |key: &str| key_in_step(steps_text, line, next, key);
        let n = i + 1;
        if let Some(when) = &s.when {
            match eval_when(when, known, ctx) {
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
            templates.check(script, &format!("step {n} script"), line, diags);
            let rel = render(script, ctx).unwrap_or_else(|_| script.clone());
            let path = path_base(script, overrides, dir).join(&rel);
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
            templates.check(up, &format!("step {n} upload"), line, diags);
            let rel = render(up, ctx).unwrap_or_else(|_| up.clone());
            if rel.trim().is_empty() {
                diags.push(sfd(
                    at("upload"),
                    format!("step {n}: upload source {up:?} is empty: set it with --var NAME=PATH"),
                ));
                continue;
            }
            let src = path_base(up, overrides, dir).join(&rel);
            let Some(dest) = &s.dest else {
                diags.push(sfd(
                    line,
                    format!("step {n}: upload needs `dest` (an absolute path in the guest)"),
                ));
                continue;
            };
            templates.check(dest, &format!("step {n} dest"), line, diags);
            let dest = render(dest, ctx).unwrap_or_else(|_| dest.clone());
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
            if !(3..=4).contains(&mode.len()) || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
                diags.push(sfd(
                    at("mode"),
                    format!("step {n}: mode {mode:?} must be octal like \"0755\""),
                ));
            }
            if src.is_dir() {
                // A directory uploads every regular file beneath it, each checked like a
                // single upload; without `mode`, each keeps its own permission bits.
                if s.sha256.is_some() {
                    diags.push(sfd(
                        at("sha256"),
                        format!(
                            "step {n}: `sha256` applies to a file upload, and {} is a directory",
                            src.display()
                        ),
                    ));
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
                                        format!("step {n}: {} cannot be read: {e}", path.display()),
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
                    let why = missing_source_help(up, vars, overrides, &[steps_text, text]);
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
    (steps, files)
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
