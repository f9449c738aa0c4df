//! Reading cloud-config values the way cloud-init (PyYAML, YAML 1.1) reads them, and the error
//! every step's parser returns. Steps depend on this module; it depends on none of them.

use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cloud-config is not valid YAML: {0}")]
    Yaml(String),
    #[error("cloud-config must be a mapping at the top level, got {0}")]
    NotMapping(&'static str),
    #[error("cloud-config key {key}: {msg}")]
    Key { key: String, msg: String },
}

/// A key error: `key` is the path of the offending value (`fs_setup[0].partition`), `msg` never
/// shows the value of a secret.
pub fn key_error(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        msg: msg.into(),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn opt_string(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        other => scalar_string(other)
            .map(Some)
            .ok_or_else(|| format!("expected a string, got {}", type_name(other))),
    }
}

pub fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                scalar_string(i)
                    .ok_or_else(|| format!("expected a list of strings, found {}", type_name(i)))
            })
            .collect(),
        other => Err(format!(
            "expected a list of strings, got {}",
            type_name(other)
        )),
    }
}

pub fn boolish(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        // YAML 1.1 booleans as cloud-init (PyYAML) reads them.
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(true),
            "false" | "no" | "off" | "n" => Ok(false),
            _ => Err(format!("expected a boolean, got {s:?}")),
        },
        other => Err(format!("expected a boolean, got {}", type_name(other))),
    }
}

/// A top-level list key: `null` is an empty list, anything else but a list is an error naming it.
pub fn list_or_empty<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], ConfigError> {
    match v {
        Value::Null => Ok(&[]),
        Value::Sequence(s) => Ok(s),
        other => Err(key_error(
            key,
            format!("expected a list, got {}", type_name(other)),
        )),
    }
}
