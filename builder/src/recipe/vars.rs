//! Variables and templates: declared `vars` with `${NAME:-default}` environment defaults,
//! `--var` overrides (and what a path given with one is relative to), minijinja rendering.

use super::lines::{key_line, line_of};
use super::{Diag, RecipeFile};
use std::collections::{BTreeMap, BTreeSet};
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

/// Environment variable name a recipe variable is passed to scripts as (`kubernetes_version` →
/// `KUBERNETES_VERSION`).
pub fn env_name(var: &str) -> String {
    var.to_ascii_uppercase()
}

pub(super) fn valid_var_name(n: &str) -> bool {
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

pub(super) fn template_env() -> minijinja::Environment<'static> {
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

/// The recipe's variables: the declared values (environment references expanded), then the
/// `--var` overrides, which may only name declared variables.
pub(super) fn resolve(
    spec: &RecipeFile,
    overrides: &BTreeMap<String, String>,
    file: &Path,
    text: &str,
    diags: &mut Vec<Diag>,
) -> BTreeMap<String, String> {
    let fd = |line, message| Diag::new(file, line, message);
    // variables: declared names, overrides only for declared ones
    // variables: declared names, overrides only for declared ones
    let mut vars = BTreeMap::new();
    for (k, v) in &spec.vars {
        if !valid_var_name(k) {
            diags.push(fd(
                line_of(text, &format!("{k}:")),
                format!(
                    "variable name {k:?} must be lower_snake_case (it is passed to scripts as {})",
                    env_name(k)
                ),
            ));
        }
        if BUILTIN_VARS.contains(&k.as_str()) {
            diags.push(fd(
                line_of(text, &format!("{k}:")),
                format!("variable {k:?} shadows a built-in variable"),
            ));
        }
        match expand_env(&v.text(), |n| std::env::var(n).ok()) {
            Ok(value) => {
                vars.insert(k.clone(), value);
            }
            Err(e) => {
                diags.push(fd(
                    line_of(text, &format!("{k}:")),
                    format!("vars.{k}: {e}"),
                ));
                vars.insert(k.clone(), v.text());
            }
        }
    }
    for (k, v) in overrides {
        if !vars.contains_key(k) {
            diags.push(fd(
                key_line(text, "vars"),
                format!(
                    "--var {k}: unknown variable; the recipe declares: {}",
                    spec.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        } else {
            vars.insert(k.clone(), v.clone());
        }
    }
    vars
}

/// Checks that templates use only known names; a problem is reported in the recipe file, at
/// `line` or else the first line holding the template.
pub(super) struct Templates<'a> {
    pub known: &'a BTreeSet<String>,
    pub file: &'a Path,
    pub text: &'a str,
}

impl Templates<'_> {
    pub fn check(&self, tpl: &str, what: &str, line: Option<usize>, diags: &mut Vec<Diag>) {
        let fd = |line, message| Diag::new(self.file, line, message);
        let text = self.text;
        match unknown_template_vars(tpl, self.known) {
            Ok(bad) if bad.is_empty() => {}
            Ok(bad) => diags.push(fd(
                line.or_else(|| line_of(text, tpl)),
                format!(
                    "{what}: unknown variable(s) {} (declare them under vars:)",
                    bad.join(", ")
                ),
            )),
            Err(e) => diags.push(fd(
                line.or_else(|| line_of(text, tpl)),
                format!("{what}: {e}"),
            )),
        }
    }
}

/// `${NAME}` and `${NAME:-default}` in a variable's value as the recipe writes it: the environment
/// variable NAME, or `default` when NAME is unset or empty (the shell's `:-`). A default can so
/// follow the build's layout: `${CARGO_TARGET_DIR:-../../target}/…`. `--var` values are literal.
pub(super) fn expand_env(
    value: &str,
    get: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
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
pub(super) fn leading_var(tpl: &str) -> Option<&str> {
    let rest = tpl.trim_start().strip_prefix("{{")?;
    let name = rest[..rest.find("}}")?].trim();
    valid_var_name(name).then_some(name)
}

/// What a step's relative path is relative to: the current directory when it starts with a
/// variable given on the command line (`--var agent_binary=dist/cloudsigma-agent` names
/// ./dist/cloudsigma-agent, as any path on a command line), else the recipe's directory.
pub(super) fn path_base(
    tpl: &str,
    overrides: &BTreeMap<String, String>,
    recipe_dir: &Path,
) -> PathBuf {
    leading_var(tpl)
        .filter(|v| overrides.contains_key(*v))
        .and_then(|_| std::env::current_dir().ok())
        .unwrap_or_else(|| recipe_dir.to_path_buf())
}

/// For an upload source that cannot be read: which variable it comes from, where its value came
/// from, what the recipe says about it (the comment above its declaration) and what to do.
pub(super) fn missing_source_help(
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

#[cfg(test)]
mod tests {
    use super::*;

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
