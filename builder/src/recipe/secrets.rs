//! The recipe's `secrets:` declaration: names only. The values come from `--secret` and are
//! handled by crate::secrets, never by the recipe.

use super::lines::key_line;
use super::vars::valid_var_name;
use super::{Diag, RecipeFile};
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Each declared name is lower_snake_case and declared once.
pub(super) fn check_declared(spec: &RecipeFile, file: &Path, text: &str, diags: &mut Vec<Diag>) {
    let fd = |line, message| Diag::new(file, line, message);
    let mut seen = BTreeSet::new();
    for n in &spec.secrets {
        if !valid_var_name(n) || !seen.insert(n) {
            diags.push(fd(
                key_line(text, "secrets"),
                format!("secret name {n:?} is not lower_snake_case or is declared twice"),
            ));
        }
    }
}

/// A thin recipe's `secrets:` merged over its parent's. The parent's steps read the parent's
/// secrets, so none may be dropped (a replacing list would leave a step without its file); the
/// child may add names, as it adds `vars`, for a parent step that reads a secret when present.
/// A name the parent already declares is kept once.
pub(super) fn inherit(parent: Option<Value>, child: Value) -> Result<Value, String> {
    let Value::Sequence(child) = child else {
        return Err("secrets must be a list of names".into());
    };
    let mut names = match parent {
        Some(Value::Sequence(p)) => p,
        // the merged recipe fails to parse with serde's own message
        Some(other) => return Ok(other),
        None => Vec::new(),
    };
    let inherited = names.clone();
    names.extend(child.into_iter().filter(|n| !inherited.contains(n)));
    Ok(Value::Sequence(names))
}
