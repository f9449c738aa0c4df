//! Reading cloud-config values the way cloud-init (PyYAML, YAML 1.1) reads them, and the error
//! every step's parser returns. Steps depend on this module; it depends on none of them.

use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cloud-config is not valid YAML: {0}")]
    Yaml(String),
    /// The document expands (through YAML aliases) beyond what any bootstrap data needs.
    #[error("cloud-config expands to more than {MAX_NODES} values or {} MiB of text (YAML anchors and aliases repeat their node each time): refused", MAX_SCALAR_BYTES >> 20)]
    TooLarge,
    #[error("cloud-config must be a mapping at the top level, got {0}")]
    NotMapping(&'static str),
    #[error("cloud-config key {key}: {msg}")]
    Key { key: String, msg: String },
}

/// The most values (scalars, lists, mappings) a cloud-config may expand to. Cluster API bootstrap
/// data has a few hundred; serde_yaml's own alias bound (100 alias jumps per event of the
/// document) stops the nested "billion laughs" but not a wide anchor referenced many times, whose
/// copies grow with the square of the document's size.
pub const MAX_NODES: usize = 1_000_000;
/// The most scalar text a cloud-config may expand to.
pub const MAX_SCALAR_BYTES: usize = 64 << 20;

/// Parse YAML into a value after checking, without building anything, that its expansion stays
/// within [`MAX_NODES`] and [`MAX_SCALAR_BYTES`]. serde_yaml materializes every alias as a copy,
/// so the check walks the same events first with a counting visitor: memory stays flat and the
/// walk stops at the first value over the budget.
pub fn from_str_bounded(text: &str) -> Result<Value, ConfigError> {
    use serde::de::DeserializeSeed;
    let budget = Budget {
        nodes: std::cell::Cell::new(MAX_NODES),
        bytes: std::cell::Cell::new(MAX_SCALAR_BYTES),
        exceeded: std::cell::Cell::new(false),
    };
    // serde_yaml's messages carry positions (line/column), not document content.
    if let Err(e) = (&budget).deserialize(serde_yaml::Deserializer::from_str(text)) {
        return Err(if budget.exceeded.get() {
            ConfigError::TooLarge
        } else {
            ConfigError::Yaml(e.to_string())
        });
    }
    serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))
}

/// What is left of the expansion budget while [`from_str_bounded`] walks a document.
struct Budget {
    nodes: std::cell::Cell<usize>,
    bytes: std::cell::Cell<usize>,
    exceeded: std::cell::Cell<bool>,
}

impl Budget {
    fn take<E: serde::de::Error>(&self, bytes: usize) -> Result<(), E> {
        match (
            self.nodes.get().checked_sub(1),
            self.bytes.get().checked_sub(bytes),
        ) {
            (Some(n), Some(b)) => {
                self.nodes.set(n);
                self.bytes.set(b);
                Ok(())
            }
            _ => {
                self.exceeded.set(true);
                Err(E::custom("expansion budget exceeded"))
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &Budget {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &Budget {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.take(0)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.take(0)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.take(0)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.take(0)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.take(v.len())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.take(0)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.take(0)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        self.take(0)?;
        while a.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        self.take(0)?;
        while a.next_key_seed(self)?.is_some() {
            a.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, a: A) -> Result<(), A::Error> {
        // A tagged value (`!tag node`): the tag, then its node.
        use serde::de::VariantAccess;
        let ((), v) = a.variant_seed(self)?;
        v.newtype_variant_seed(self)
    }
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
