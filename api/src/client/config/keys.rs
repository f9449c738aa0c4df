//! The configuration keys, written once: the config-file parser, the environment lookup, the
//! resolution's messages and docs/api.md's table (checked by a test) all read [`KEYS`].

use std::fmt::Write as _;

/// What a key holds, and so how its value is read and checked — from the config file and from
/// the environment alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (an URL, a region, a user name).
    Text,
    /// A password or token: never shown in any message or `Debug` output.
    Secret,
    /// A file path; in the config file relative to the file's directory.
    Path,
    /// A number of seconds (integer or decimal), more than zero unless `zero_ok`, at most `max`.
    Seconds { zero_ok: bool, max: u32 },
    /// A whole number in `min..=max`.
    Count { min: u32, max: u32 },
    /// `true` or `false` (in the environment also `1`/`0`, `yes`/`no`).
    Bool,
}

impl Kind {
    /// What a value must be, for messages: "`timeout_secs` must be …".
    pub fn expected(&self) -> String {
        match *self {
            Kind::Text | Kind::Secret | Kind::Path => "a string in quotes".into(),
            Kind::Seconds { zero_ok: true, max } => {
                format!("a number of seconds from 0 to {max}")
            }
            Kind::Seconds {
                zero_ok: false,
                max,
            } => {
                format!("a number of seconds more than 0 and at most {max}")
            }
            Kind::Count { min, max } => format!("a whole number between {min} and {max}"),
            Kind::Bool => "true or false".into(),
        }
    }
}

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Its name in the config file.
    pub name: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// A field of [`super::ConfigOverrides`], which the binaries (imgbuild, the controller) fill
    /// from a flag `--<name with dashes>`. Secrets are not flags: a flag shows in `ps` and in
    /// shell history, so they come from the environment or a file (the `password`/`token`
    /// fields of `ConfigOverrides` carry what a binary read from such a file).
    pub flag: bool,
    pub kind: Kind,
    /// Default, for the docs (`-` when unset by default).
    pub default: &'static str,
    /// What it does, for the docs.
    pub doc: &'static str,
}

impl Key {
    /// `--api-url` for `api_url`.
    pub fn flag_name(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

pub const API_URL: Key = Key {
    name: "api_url",
    env: "CLOUDSIGMA_API_URL",
    flag: true,
    kind: Kind::Text,
    default: "-",
    doc: "any base URL, e.g. `http://127.0.0.1:8080/api/2.0/` (a missing trailing `/` is added)",
};
pub const REGION: Key = Key {
    name: "region",
    env: "CLOUDSIGMA_REGION",
    flag: true,
    kind: Kind::Text,
    default: "-",
    doc: "a location such as `zrh`, `fra`: base URL `https://{region}.cloudsigma.com/api/2.0/`",
};
pub const USERNAME: Key = Key {
    name: "username",
    env: "CLOUDSIGMA_USERNAME",
    flag: true,
    kind: Kind::Text,
    default: "-",
    doc: "account e-mail (HTTP Basic)",
};
pub const PASSWORD: Key = Key {
    name: "password",
    env: "CLOUDSIGMA_PASSWORD",
    flag: false,
    kind: Kind::Secret,
    default: "-",
    doc: "account password (HTTP Basic); keep the config file chmod 600",
};
pub const TOKEN: Key = Key {
    name: "token",
    env: "CLOUDSIGMA_TOKEN",
    flag: false,
    kind: Kind::Secret,
    default: "-",
    doc: "bearer token (`Authorization: Bearer …`), instead of username/password",
};
pub const TIMEOUT_SECS: Key = Key {
    name: "timeout_secs",
    env: "CLOUDSIGMA_TIMEOUT_SECS",
    flag: false,
    kind: Kind::Seconds {
        zero_ok: false,
        max: 3600,
    },
    default: "30",
    doc: "per-request timeout (each attempt gets all of it)",
};
pub const MAX_ATTEMPTS: Key = Key {
    name: "max_attempts",
    env: "CLOUDSIGMA_MAX_ATTEMPTS",
    flag: false,
    kind: Kind::Count { min: 1, max: 100 },
    default: "5",
    doc: "attempts of an idempotent request, 1 = no retries",
};
pub const MAX_RETRY_AFTER_SECS: Key = Key {
    name: "max_retry_after_secs",
    env: "CLOUDSIGMA_MAX_RETRY_AFTER_SECS",
    flag: false,
    kind: Kind::Seconds {
        zero_ok: true,
        max: 3600,
    },
    default: "60",
    doc: "cap of a `Retry-After` (see [Retries](#retries))",
};
pub const CA_FILE: Key = Key {
    name: "ca_file",
    env: "CLOUDSIGMA_CA_FILE",
    // imgbuild's `--ca-file` sets it on the resolved `Config` (`with_ca_file`) instead: adding a
    // field to `ConfigOverrides` would break its users' struct literals.
    flag: false,
    kind: Kind::Path,
    default: "-",
    doc: "PEM file of extra CA certificates to trust; in the file relative to its directory",
};
pub const ALLOW_INSECURE_HTTP: Key = Key {
    name: "allow_insecure_http",
    env: "CLOUDSIGMA_ALLOW_INSECURE_HTTP",
    flag: false,
    kind: Kind::Bool,
    default: "false",
    doc: "allow a plain `http://` endpoint that is not loopback (a test emulator on a trusted network)",
};

/// Every key, in the order of the docs.
pub const KEYS: &[Key] = &[
    API_URL,
    REGION,
    USERNAME,
    PASSWORD,
    TOKEN,
    TIMEOUT_SECS,
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER_SECS,
    CA_FILE,
    ALLOW_INSECURE_HTTP,
];

/// The key named `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// `api_url, region, …` for messages.
pub fn names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// The Markdown table of docs/api.md (a test keeps the two equal).
pub fn markdown_table() -> String {
    let mut t = String::from(
        "| Config file key | Environment | Flag (`ConfigOverrides`) | Value | Default | Meaning |\n|---|---|---|---|---|---|\n",
    );
    for k in KEYS {
        let flag = if k.flag {
            format!("`{}`", k.flag_name())
        } else {
            "-".into()
        };
        let _ = writeln!(
            t,
            "| `{}` | `{}` | {flag} | {} | {} | {} |",
            k.name,
            k.env,
            match k.kind {
                Kind::Text => "text".into(),
                Kind::Secret => "text, secret".into(),
                Kind::Path => "a file path".into(),
                other => other.expected(),
            },
            k.default,
            k.doc
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_variables_are_unique_and_well_formed() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                KEYS[i + 1..]
                    .iter()
                    .all(|o| o.name != k.name && o.env != k.env),
                "{} repeated",
                k.name
            );
            assert_eq!(
                k.env,
                format!("CLOUDSIGMA_{}", k.name.to_uppercase()),
                "{}",
                k.name
            );
            assert!(
                !(k.flag && k.kind == Kind::Secret),
                "{}: a secret flag",
                k.name
            );
        }
    }

    /// docs/api.md shows the table as rendered here; on a change, paste the new table there.
    #[test]
    fn the_docs_show_this_table() {
        let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md"));
        let table = markdown_table();
        assert!(
            docs.contains(&table),
            "docs/api.md does not show the key table; put this there:\n{table}"
        );
    }
}
