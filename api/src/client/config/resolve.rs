//! Resolution: every setting from overrides (a binary's flags) > environment > config file, per
//! key of the table, into a [`Config`].

use super::file::{ConfigFile, Value};
use super::keys::{
    Key, ALLOW_INSECURE_HTTP, API_URL, CA_FILE, MAX_ATTEMPTS, MAX_RETRY_AFTER_SECS, PASSWORD,
    REGION, TIMEOUT_SECS, TOKEN, USERNAME,
};
use super::{normalize_base_url, Auth, Config, Error, ENV_CONFIG};
use std::fmt;
use std::path::{Path, PathBuf};

/// Command-line style overrides; `None` falls through to the environment, then the config file.
/// `password` and `token` carry what a binary read from a file or a named variable (no binary
/// takes a secret as a flag's value). `Debug` never shows them.
#[derive(Default, Clone)]
pub struct ConfigOverrides {
    pub api_url: Option<String>,
    pub region: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub config_file: Option<PathBuf>,
}

impl fmt::Debug for ConfigOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConfigOverrides")
            .field("api_url", &self.api_url)
            .field("region", &self.region)
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("token", &secret(&self.token))
            .field("config_file", &self.config_file)
            .finish()
    }
}

/// `$XDG_CONFIG_HOME/cloudsigma/config.toml` (usually `~/.config/cloudsigma/config.toml`).
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("cloudsigma").join("config.toml"))
}

/// Validate a region name: it becomes a host name label.
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 63
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !region.starts_with(['-', '.'])
        && !region.ends_with(['-', '.'])
}

/// Where a value came from; lower = higher priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Flag = 0,
    Env = 1,
    File = 2,
}

/// The three places a setting may come from (the overrides are passed per key).
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: ConfigFile,
    file_path: Option<PathBuf>,
}

impl Sources<'_> {
    /// The config file for messages: its path, or where the default one would be.
    fn file_hint(&self) -> String {
        self.file_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.config/cloudsigma/config.toml".into())
    }

    fn describe(&self, key: &Key, s: Source) -> String {
        match s {
            Source::Flag => format!("{} (a command-line flag)", key.flag_name()),
            Source::Env => format!("${}", key.env),
            Source::File => format!("config file {}", self.file_hint()),
        }
    }

    /// The value of `key`: `flag` (its `ConfigOverrides` field, if it has one) > environment >
    /// config file; blank text counts as unset. A value of the wrong kind is an error naming
    /// the variable, never the value.
    fn value(&self, key: &Key, flag: Option<&String>) -> Result<Option<(Value, Source)>, Error> {
        if let Some(v) = flag.and_then(|f| Value::from_text(key.kind, f).ok().flatten()) {
            return Ok(Some((v, Source::Flag)));
        }
        if let Some(text) = (self.env)(key.env) {
            let v = Value::from_text(key.kind, &text)
                .map_err(|e| Error::Config(format!("${} {e}", key.env)))?;
            if let Some(v) = v {
                return Ok(Some((v, Source::Env)));
            }
        }
        Ok(match self.file.get(key) {
            Some(Value::Text(t)) => Value::from_text(key.kind, t)
                .ok()
                .flatten()
                .map(|v| (v, Source::File)),
            Some(v) => Some((v.clone(), Source::File)),
            None => None,
        })
    }

    /// [`Sources::value`] of a text key.
    fn text(&self, key: &Key, flag: Option<&String>) -> Result<Option<(String, Source)>, Error> {
        Ok(self.value(key, flag)?.and_then(|(v, s)| match v {
            Value::Text(t) => Some((t, s)),
            _ => None,
        }))
    }
}

/// [`Config::resolve`] with an injectable environment and default file path (for tests).
pub fn resolve_with(
    ov: &ConfigOverrides,
    env: &dyn Fn(&str) -> Option<String>,
    default_file: Option<PathBuf>,
) -> Result<Config, Error> {
    // Config file: flag > $CLOUDSIGMA_CONFIG (both must exist) > default path (optional).
    let (file_path, required) = match (&ov.config_file, env(ENV_CONFIG).filter(|s| !s.is_empty())) {
        (Some(p), _) => (Some(p.clone()), true),
        (None, Some(p)) => (Some(PathBuf::from(p)), true),
        (None, None) => (default_file, false),
    };
    let file = match &file_path {
        Some(p) => ConfigFile::load(p, required)?.unwrap_or_default(),
        None => ConfigFile::default(),
    };
    let src = Sources {
        env,
        file,
        file_path,
    };
    let (base_url, auth) = endpoint_auth(&src, ov)?;
    let mut cfg = Config::with_defaults(base_url, auth);
    settings(&src, &mut cfg)?;
    Ok(cfg)
}

/// The endpoint and the credentials.
fn endpoint_auth(src: &Sources<'_>, ov: &ConfigOverrides) -> Result<(url::Url, Auth), Error> {
    let hint_file = src.file_hint();
    // Endpoint: the higher-priority of api_url / region wins; at the same level api_url wins.
    let api_url = src.text(&API_URL, ov.api_url.as_ref())?;
    let region = src.text(&REGION, ov.region.as_ref())?;
    let base_url = match (api_url, region) {
        (Some((u, us)), Some((_, rs))) if us <= rs => normalize_base_url(&u)?,
        (Some((u, _)), None) => normalize_base_url(&u)?,
        (_, Some((r, rs))) => {
            if !valid_region(&r) {
                return Err(Error::Config(format!(
                    "invalid region {r:?} (from {}): expected a location such as zrh, fra, sjc",
                    src.describe(&REGION, rs)
                )));
            }
            Config::for_region(&r, Auth::Bearer(String::new())).base_url
        }
        (None, None) => {
            return Err(Error::Config(format!(
                "no CloudSigma endpoint configured: set {} (e.g. zrh) or {} \
                 (e.g. http://127.0.0.1:8080/api/2.0/), pass {}/{}, or put {}/{} in {hint_file}",
                REGION.env,
                API_URL.env,
                REGION.flag_name(),
                API_URL.flag_name(),
                REGION.name,
                API_URL.name
            )))
        }
    };

    // Credentials: a token and a complete username/password pair compete by source priority;
    // at the same level the token wins (it is the more specific choice).
    let user = src.text(&USERNAME, ov.username.as_ref())?;
    let pass = src.text(&PASSWORD, ov.password.as_ref())?;
    let token = src.text(&TOKEN, ov.token.as_ref())?;
    let auth = match (user, pass, token) {
        (Some((u, us)), Some((p, ps)), Some((t, ts))) => {
            if us.min(ps) < ts {
                Auth::Basic {
                    username: u,
                    password: p,
                }
            } else {
                Auth::Bearer(t)
            }
        }
        (_, _, Some((t, _))) => Auth::Bearer(t),
        (Some((u, _)), Some((p, _)), None) => Auth::Basic {
            username: u,
            password: p,
        },
        (Some((u, us)), None, None) => {
            return Err(Error::Config(format!(
                "username {u:?} (from {}) has no password: set {} or put {} in {hint_file}",
                src.describe(&USERNAME, us),
                PASSWORD.env,
                PASSWORD.name
            )))
        }
        (None, Some((_, ps)), None) => {
            return Err(Error::Config(format!(
                "a password is set (from {}) but no username: set {} (the account e-mail), \
                 pass {}, or put {} in {hint_file}",
                src.describe(&PASSWORD, ps),
                USERNAME.env,
                USERNAME.flag_name(),
                USERNAME.name
            )))
        }
        (None, None, None) => {
            return Err(Error::Config(format!(
                "no CloudSigma credentials: set {} and {} (or {}), or put {}/{} (or {}) in \
                 {hint_file}",
                USERNAME.env, PASSWORD.env, TOKEN.env, USERNAME.name, PASSWORD.name, TOKEN.name
            )))
        }
    };
    Ok((base_url, auth))
}

/// Everything but the endpoint and the credentials, onto `cfg`'s defaults.
fn settings(src: &Sources<'_>, cfg: &mut Config) -> Result<(), Error> {
    if let Some((Value::Seconds(d), _)) = src.value(&TIMEOUT_SECS, None)? {
        cfg.timeout = d;
    }
    if let Some((Value::Count(n), _)) = src.value(&MAX_ATTEMPTS, None)? {
        cfg.retry.max_attempts = n;
    }
    if let Some((Value::Seconds(d), _)) = src.value(&MAX_RETRY_AFTER_SECS, None)? {
        cfg.retry.max_retry_after = d;
    }
    if let Some((Value::Bool(b), _)) = src.value(&ALLOW_INSECURE_HTTP, None)? {
        cfg.allow_insecure_http = b;
    }
    // In the config file relative to the file's directory, so a file and its CA move together.
    // Callers with a flag set it on the result (`with_ca_file`).
    cfg.ca_file = src.text(&CA_FILE, None)?.map(|(p, s)| {
        let p = PathBuf::from(p);
        match src.file_path.as_deref().and_then(Path::parent) {
            Some(dir) if s == Source::File && p.is_relative() => dir.join(p),
            _ => p,
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{
        ENV_API_URL, ENV_CA_FILE, ENV_PASSWORD, ENV_REGION, ENV_TOKEN, ENV_USERNAME,
    };
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn write_file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cs-api-cfg-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let d = tmpdir("prec");
        let f = write_file(
            &d,
            "region = \"fra\"\nusername = \"file@x\"\npassword = \"filepw\"\ntimeout_secs = 5\n",
        );
        let env = env_of(&[
            (ENV_REGION, "zrh"),
            (ENV_USERNAME, "env@x"),
            (ENV_PASSWORD, "envpw"),
        ]);
        // env beats file
        let c = resolve_with(&ConfigOverrides::default(), &env, Some(f.clone())).unwrap();
        assert_eq!(c.base_url.as_str(), "https://zrh.cloudsigma.com/api/2.0/");
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "env@x".into(),
                password: "envpw".into()
            }
        );
        assert_eq!(c.timeout, Duration::from_secs(5));
        // flags beat env
        let ov = ConfigOverrides {
            region: Some("sjc".into()),
            username: Some("flag@x".into()),
            ..Default::default()
        };
        let c = resolve_with(&ov, &env, Some(f.clone())).unwrap();
        assert_eq!(c.base_url.host_str(), Some("sjc.cloudsigma.com"));
        // username from flag, password from env (per-field precedence)
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "flag@x".into(),
                password: "envpw".into()
            }
        );
        // file alone
        let c = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f)).unwrap();
        assert_eq!(c.base_url.host_str(), Some("fra.cloudsigma.com"));
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "file@x".into(),
                password: "filepw".into()
            }
        );
    }

    /// Every key of the table resolves from the environment over the file, through the same
    /// path: the numbers and the switch too.
    #[test]
    fn numbers_and_switches_from_env_beat_file() {
        let d = tmpdir("nums");
        let f = write_file(
            &d,
            "region = \"fra\"\ntoken = \"t\"\ntimeout_secs = 5\nmax_attempts = 2\n\
             max_retry_after_secs = 10\nallow_insecure_http = true\n",
        );
        let c = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f.clone())).unwrap();
        assert_eq!(
            (
                c.timeout,
                c.retry.max_attempts,
                c.retry.max_retry_after,
                c.allow_insecure_http
            ),
            (Duration::from_secs(5), 2, Duration::from_secs(10), true)
        );
        let env = env_of(&[
            (TIMEOUT_SECS.env, "7"),
            (MAX_ATTEMPTS.env, "9"),
            (MAX_RETRY_AFTER_SECS.env, "0.5"),
            (ALLOW_INSECURE_HTTP.env, "false"),
        ]);
        let c = resolve_with(&ConfigOverrides::default(), &env, Some(f.clone())).unwrap();
        assert_eq!(
            (
                c.timeout,
                c.retry.max_attempts,
                c.retry.max_retry_after,
                c.allow_insecure_http
            ),
            (Duration::from_secs(7), 9, Duration::from_millis(500), false)
        );
        // defaults without either
        let c = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zrh"), (ENV_TOKEN, "t")]),
            None,
        )
        .unwrap();
        assert_eq!(c.retry.max_retry_after, Duration::from_secs(60));
        assert!(!c.allow_insecure_http);
        // a bad value in the environment names the variable
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(MAX_ATTEMPTS.env, "lots")]),
            Some(f),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("$CLOUDSIGMA_MAX_ATTEMPTS must be a whole number between 1 and 100"),
            "{e}"
        );
    }

    #[test]
    fn api_url_vs_region_by_priority() {
        let env = env_of(&[
            (ENV_REGION, "zrh"),
            (ENV_API_URL, "http://127.0.0.1:9/api/2.0"),
            (ENV_TOKEN, "t"),
        ]);
        let c = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        // same level: api_url wins; trailing slash added
        assert_eq!(c.base_url.as_str(), "http://127.0.0.1:9/api/2.0/");
        let ov = ConfigOverrides {
            region: Some("fra".into()),
            ..Default::default()
        };
        let c = resolve_with(&ov, &env, None).unwrap();
        assert_eq!(c.base_url.as_str(), "https://fra.cloudsigma.com/api/2.0/");
    }

    #[test]
    fn token_vs_basic_by_priority() {
        let env = env_of(&[
            (ENV_REGION, "zrh"),
            (ENV_USERNAME, "u"),
            (ENV_PASSWORD, "p"),
            (ENV_TOKEN, "tok"),
        ]);
        let c = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        assert_eq!(c.auth, Auth::Bearer("tok".into()));
        let ov = ConfigOverrides {
            username: Some("fu".into()),
            password: Some("fp".into()),
            ..Default::default()
        };
        let c = resolve_with(&ov, &env, None).unwrap();
        assert_eq!(
            c.auth,
            Auth::Basic {
                username: "fu".into(),
                password: "fp".into()
            }
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_TOKEN, "t")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(ENV_REGION) && e.contains(ENV_API_URL), "{e}");
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zrh"), (ENV_USERNAME, "u")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(ENV_PASSWORD) && e.contains("$CLOUDSIGMA_USERNAME"),
            "{e}"
        );
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zrh")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no CloudSigma credentials") && e.contains(ENV_TOKEN),
            "{e}"
        );
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_REGION, "zr h"), (ENV_TOKEN, "t")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid region"), "{e}");
    }

    #[test]
    fn config_file_errors() {
        let d = tmpdir("errs");
        // explicitly named file must exist
        let ov = ConfigOverrides {
            config_file: Some(d.join("nope.toml")),
            ..Default::default()
        };
        let e = resolve_with(&ov, &env_of(&[]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
        // the default file may be absent
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[]),
            Some(d.join("absent")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no CloudSigma endpoint"), "{e}");
        // typos are refused, naming the key
        let f = write_file(&d, "region = \"zrh\"\npasword = \"x\"\n");
        let e = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pasword"), "{e}");
        // $CLOUDSIGMA_CONFIG names a required file
        let e = resolve_with(
            &ConfigOverrides::default(),
            &env_of(&[(ENV_CONFIG, "/nonexistent/cs.toml")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/cs.toml"), "{e}");
    }

    #[test]
    fn ca_file_from_env_or_file_relative_to_it() {
        let d = tmpdir("ca");
        let f = write_file(
            &d,
            "api_url = \"https://127.0.0.1:1/\"\ntoken = \"t\"\nca_file = \"ca.pem\"\n",
        );
        let c = resolve_with(&ConfigOverrides::default(), &env_of(&[]), Some(f.clone())).unwrap();
        assert_eq!(
            c.ca_file,
            Some(d.join("ca.pem")),
            "relative to the config file"
        );
        let env = env_of(&[(ENV_CA_FILE, "/etc/x/ca.pem")]);
        let c = resolve_with(&ConfigOverrides::default(), &env, Some(f)).unwrap();
        assert_eq!(
            c.ca_file,
            Some(PathBuf::from("/etc/x/ca.pem")),
            "env beats file"
        );
        let env = env_of(&[(ENV_API_URL, "https://h/"), (ENV_TOKEN, "t")]);
        let c = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
        assert_eq!(c.ca_file, None);
    }

    #[test]
    fn overrides_debug_redacts_secrets() {
        let ov = ConfigOverrides {
            username: Some("me@x".into()),
            password: Some("hunter2".into()),
            token: Some("sekrit-token".into()),
            ..Default::default()
        };
        let s = format!("{ov:?}");
        assert!(
            !s.contains("hunter2") && !s.contains("sekrit") && s.contains("me@x"),
            "{s}"
        );
        assert!(s.contains("password: Some(\"<redacted>\")"), "{s}");
        // unset stays visibly unset
        assert!(format!("{:?}", ConfigOverrides::default()).contains("password: None"));
    }
}
