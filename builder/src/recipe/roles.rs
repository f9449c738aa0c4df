//! Roles: shared step files a recipe includes (`- include: ../common/roles/agent.yaml`), in the
//! spirit of kubernetes-sigs/image-builder's Ansible roles (`roles/<name>/tasks` + `defaults`):
//! a role file has `steps:` and default `vars:`, and its step list takes the include's place.
//! Recipes thus share steps instead of copying them, and a role's defaults are written once.
//!
//! - Paths in a role (scripts, uploads, `uses:`, and relative variable values its steps use) are
//!   relative to the role file, as a thin recipe's inherited steps stay relative to the parent.
//! - A role's `vars` are defaults: the recipe's own `vars` and `--var` override them; two roles
//!   giving one variable different defaults is an error (the recipe must choose).
//! - One level: a role does not include another (as `extends`).
//! - The role's text is part of the fingerprint (it is among the files the build reads).

use super::lines::step_lines;
use super::spec::{RoleFile, StepFile, VarValue};
use super::Diag;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A loaded role file.
pub(super) struct Role {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub text: String,
    pub spec: RoleFile,
}

/// Where an `include:` points: relative to the directory of the file the step is in.
pub(super) fn role_path(dir: &Path, include: &str) -> PathBuf {
    dir.join(include)
}

/// Every role the steps include, by path (loaded once each). Problems go to `diags`, at the
/// include's line in `steps_file`; a role that cannot be loaded is left out.
pub(super) fn load(
    steps: &[StepFile],
    dir: &Path,
    steps_file: &Path,
    steps_text: &str,
    diags: &mut Vec<Diag>,
) -> BTreeMap<PathBuf, Role> {
    let lines = step_lines(steps_text);
    let mut roles = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        let Some(inc) = &s.include else { continue };
        let file = role_path(dir, inc);
        if roles.contains_key(&file) {
            continue;
        }
        let line = lines.get(i).copied();
        let n = i + 1;
        match read(&file) {
            Ok(role) => {
                for (k, rs) in role.spec.steps.iter().enumerate() {
                    if rs.include.is_some() {
                        let at = step_lines(&role.text).get(k).copied();
                        diags.push(Diag::new(&file, at, format!("step {}: a role may not include another (one level of roles, as of `extends`); list the steps, or include both roles from the recipe", k + 1)));
                    }
                }
                roles.insert(file, role);
            }
            Err(e) => diags.push(Diag::new(
                steps_file,
                line,
                format!("step {n}: include {inc:?}: {e}"),
            )),
        }
    }
    roles
}

fn read(file: &Path) -> Result<Role, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the role file {}: {e}", file.display()))?;
    let spec: RoleFile = serde_yaml::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}", l.line()))
            .unwrap_or_default();
        format!("{}{at}: {e}", file.display())
    })?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Role {
        file: file.to_path_buf(),
        dir,
        text,
        spec,
    })
}

/// Adds the roles' default variables under the recipe's `vars` (the recipe's value wins).
pub(super) fn default_vars(
    roles: &BTreeMap<PathBuf, Role>,
    vars: &mut BTreeMap<String, VarValue>,
    diags: &mut Vec<Diag>,
) {
    let own: Vec<String> = vars.keys().cloned().collect();
    let mut from: BTreeMap<String, &Path> = BTreeMap::new();
    for role in roles.values() {
        for (k, v) in &role.spec.vars {
            if own.contains(k) {
                continue;
            }
            match (vars.get(k), from.get(k)) {
                (Some(prev), Some(other)) if prev != v => diags.push(Diag::new(
                    &role.file,
                    super::lines::line_of(&role.text, &format!("{k}:")),
                    format!(
                        "variable {k}: this role's default differs from the one in {}; set {k} in the recipe's vars",
                        other.display()
                    ),
                )),
                (Some(_), _) => {}
                (None, _) => {
                    vars.insert(k.clone(), v.clone());
                    from.insert(k.clone(), &role.file);
                }
            }
        }
    }
}
