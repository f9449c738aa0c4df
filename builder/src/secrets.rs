//! Build secrets (issue #10 item 3): values a recipe's steps need but that must never be
//! printed — a registry token, a proxy password.
//!
//! Modelled on BuildKit's `docker build --secret id=…,env=…|src=…` (mounted at
//! `/run/secrets/<id>`): the recipe declares the names (`secrets: [registry_token]`), the CLI
//! says where each value comes from (`--secret registry_token=env:REGISTRY_TOKEN` or
//! `=file:PATH`), and the guest gets each as a root-only 0600 file under [`GUEST_DIR`] (tmpfs:
//! never on the image's disk), written through ssh's stdin — never on a command line. Values are
//! kept out of the manifest, `--dry-run`, progress, errors and the fingerprint.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// Where the guest finds the secrets: one file per name. Under /run (a tmpfs on every systemd
/// distribution), so a value never reaches the drive that becomes the image, and it is gone
/// after a reboot (the build writes the files again before each script step).
pub const GUEST_DIR: &str = "/run/imgbuild/secrets";
/// The variable that tells scripts [`GUEST_DIR`] (set only when the recipe declares secrets).
pub const ENV_DIR: &str = "IMGBUILD_SECRETS";

/// A secret's value. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret: {} bytes>", self.0.len())
    }
}

/// Where a value comes from (what `--dry-run` may show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(v) => write!(f, "env:{v}"),
            Source::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// The `--secret` arguments, parsed but not read yet: `--dry-run` names the sources without
/// touching them, a build reads them with [`SecretArgs::read`].
#[derive(Debug, Clone, Default)]
pub struct SecretArgs(pub BTreeMap<String, Source>);

/// The values a build delivers, by name.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub BTreeMap<String, SecretValue>);

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_lowercase() || ch == '_')
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
}

impl SecretArgs {
    /// Parse `NAME=env:VAR` / `NAME=file:PATH` (a relative PATH is relative to the current
    /// directory). No value is ever given on the command line: argv is visible in `ps`.
    pub fn parse(items: &[String]) -> Result<SecretArgs, String> {
        let mut m = BTreeMap::new();
        for it in items {
            let usage = "expected NAME=env:VARIABLE or NAME=file:PATH (the value itself never goes on the command line)";
            let (name, src) = it
                .split_once('=')
                .ok_or_else(|| format!("--secret {}: {usage}", shown(it)))?;
            let name = name.trim();
            if !valid_name(name) {
                return Err(format!(
                    "--secret {}: the name must be lower_snake_case like the recipe's `secrets:`",
                    shown(it)
                ));
            }
            let src = match src.split_once(':') {
                Some(("env", v)) if !v.is_empty() => Source::Env(v.to_string()),
                Some(("file", p)) if !p.is_empty() => Source::File(PathBuf::from(p)),
                _ => return Err(format!("--secret {name}=…: {usage}")),
            };
            if m.insert(name.to_string(), src).is_some() {
                return Err(format!("--secret {name} is given twice"));
            }
        }
        Ok(SecretArgs(m))
    }

    /// Every declared secret has a source and every source a declaration.
    pub fn check(&self, declared: &[String]) -> Result<(), String> {
        let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
        let unknown: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|n| !declared.contains(n))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "--secret {}: the recipe declares no such secret (its `secrets:` are: {})",
                unknown.join(", "),
                list(&declared)
            ));
        }
        let missing: Vec<&str> = declared
            .iter()
            .copied()
            .filter(|n| !self.0.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the recipe needs secret(s) {}: pass --secret NAME=env:VARIABLE or --secret NAME=file:PATH for each",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    /// Read every value. Errors name the secret and its source, never a value.
    pub fn read(&self) -> Result<Secrets, String> {
        let mut out = BTreeMap::new();
        for (name, src) in &self.0 {
            let v = match src {
                Source::Env(var) => std::env::var_os(var)
                    .map(|v| v.into_encoded_bytes())
                    .ok_or_else(|| {
                        format!("secret {name}: environment variable {var} is not set")
                    })?,
                Source::File(p) => std::fs::read(p)
                    .map_err(|e| format!("secret {name}: cannot read {}: {e}", p.display()))?,
            };
            if v.is_empty() {
                // an unset CI secret often arrives as an empty variable: fail now, not in a step
                return Err(format!("secret {name}: {src} is empty"));
            }
            out.insert(name.clone(), SecretValue(v));
        }
        Ok(Secrets(out))
    }
}

fn list(names: &BTreeSet<&str>) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// An argument that failed to parse, shown only up to its `=`: what follows may be the value
/// someone pasted by mistake.
fn shown(arg: &str) -> String {
    match arg.split_once('=') {
        Some((n, _)) => format!("{n}=…"),
        None if arg.len() <= 40 && valid_name(arg) => arg.to_string(),
        None => "(not shown)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sources_and_refuse_values() {
        let a =
            SecretArgs::parse(&["tok=env:REG_TOKEN".into(), "pw=file:./pw.txt".into()]).unwrap();
        assert_eq!(a.0["tok"], Source::Env("REG_TOKEN".into()));
        assert_eq!(a.0["pw"], Source::File("./pw.txt".into()));
        // a value pasted instead of a source is refused without being echoed
        let e = SecretArgs::parse(&["tok=hunter2".into()]).unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("env:"), "{e}");
        let e = SecretArgs::parse(&["hunter2-plain-value".into()]).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(SecretArgs::parse(&["Bad=env:X".into()]).is_err());
        assert!(SecretArgs::parse(&["a=env:X".into(), "a=env:Y".into()]).is_err());
    }

    #[test]
    fn check_names_undeclared_and_missing() {
        let a = SecretArgs::parse(&["tok=env:X".into()]).unwrap();
        assert!(a.check(&["tok".into()]).is_ok());
        let e = a.check(&[]).unwrap_err();
        assert!(e.contains("tok") && e.contains("none"), "{e}");
        let e = SecretArgs::default().check(&["tok".into()]).unwrap_err();
        assert!(e.contains("needs secret(s) tok"), "{e}");
    }

    #[test]
    fn read_from_file_and_debug_hides_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "s3cr3t-value").unwrap();
        let a = SecretArgs(BTreeMap::from([("tok".into(), Source::File(p.clone()))]));
        let s = a.read().unwrap();
        assert_eq!(s.0["tok"].bytes(), b"s3cr3t-value");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        std::fs::write(&p, "").unwrap();
        let e = a.read().unwrap_err();
        assert!(e.contains("tok") && e.contains("empty"), "{e}");
        let a = SecretArgs(BTreeMap::from([(
            "tok".into(),
            Source::Env("IMGBUILD_TEST_SURELY_UNSET_VAR".into()),
        )]));
        assert!(a.read().unwrap_err().contains("not set"));
    }
}
