//! The recipe's `secrets:` declaration: names only. The values come from `--secret` and are
//! handled by crate::secrets, never by the recipe.

use super::lines::key_line;
use super::vars::valid_var_name;
use super::{Diag, RecipeFile};
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
