//! `extends`: a thin recipe is its parent with some settings and variable values changed.

use super::lines::key_line;
use super::{Diag, Diags, RecipeFile};
use std::path::{Path, PathBuf};

/// The recipe's spec, merged with its parent's when it `extends` one (returned too: its steps,
/// directory and text are the build's).
pub(super) fn resolve(
    file: &Path,
    text: &str,
    own_dir: &Path,
) -> Result<(RecipeFile, Option<Parent>), Diags> {
    let fd = |line, message| Diag::new(file, line, message);
    // A thin recipe lacks required fields until merged with its parent: look for `extends`
    // first, and parse a standalone recipe straight from its text (for line numbers).
    let extends = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("extends")
                .and_then(|e| e.as_str())
                .map(str::to_string)
        });
    match &extends {
        None => {
            let spec: RecipeFile = serde_yaml::from_str(text).map_err(|e| {
                let line = e.location().map(|l| l.line());
                Diags(vec![fd(line, format!("{e}"))])
            })?;
            Ok((spec, None))
        }
        Some(rel) => {
            let parent = Parent::load(own_dir, rel).map_err(|(f, l, m)| {
                Diags(vec![Diag {
                    file: f,
                    line: l,
                    message: m,
                }])
            })?;
            let spec = parent
                .merge(text)
                .map_err(|m| Diags(vec![fd(key_line(text, "extends"), m)]))?;
            Ok((spec, Some(parent)))
        }
    }
}

/// The recipe a thin recipe `extends`.
pub(super) struct Parent {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub text: String,
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
    /// merged name by name, `secrets` added to the parent's, and the steps are the parent's alone.
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
                    return Err("a recipe that `extends` another may not define `steps`: it may change name, description, base, disk_size, server, ssh_user, timeouts, output, base_until, layers, verify and vars, and add secrets".into())
                }
                Some("secrets") => {
                    let parent = merged.remove("secrets");
                    merged.insert(k, super::secrets::inherit(parent, v)?);
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
