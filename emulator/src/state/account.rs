//! The account's own objects: `/profile/`, `/capabilities/`, `/keypairs/` and its read-only
//! view `/pubkeys/`.
//!
//! Sources: [V dumps/response_profile, response_profile_update] (profile fields and values),
//! [V dumps/response_capabilities] (capabilities), [V dumps/response_keypair_get,
//! response_pub_key_only_keypair_create, response_pubkeys_list] and [V docs keypairs.rst]
//! (keypairs and pubkeys); the Go SDK's `Profile`, `Capabilities` and `Keypair` structs
//! (cloudsigma-sdk-go `cloudsigma/{profile,capabilities,keypairs}.go`) name the same fields.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::parse::{body_objects, get_str, parse_meta, ServerLimits, SERVER_LIMITS};
use super::render::OWNER_UUID;
use super::{new_uuid, State};
use crate::error::ApiError;

/// [V dumps/response_profile] every key, with the values of a fresh account. `email` is filled
/// in with the configured user when rendered.
pub(super) fn default_profile() -> Value {
    json!({
        "address": "",
        "api_https_only": false,
        "autotopup_amount": "0E-16",
        "autotopup_threshold": "0E-16",
        "bank_reference": "",
        // [V docs clone_naming.rst] the documented default profile
        "clone_naming": "NONE",
        "company": "",
        "country": "",
        "currency": "EUR",
        "email": "",
        "first_name": "",
        "has_autotopup": false,
        "has_tx_autotopup": false,
        "invoicing": true,
        "key_auth": false,
        "language": "EN",
        "last_name": "",
        "mailing_list": false,
        "meta": {},
        "my_notes": "",
        "network_restrictions": null,
        "nickname": "",
        "phone": "",
        "postcode": "",
        "reseller": "",
        // [D] a fixed date in the dump's format
        "signup_time": "2026-01-01T00:00:00.000000+00:00",
        "state": "REGULAR",
        "tax_name": null,
        "tax_rate": null,
        "title": "",
        "town": "",
        "tx_autotopup_amount": "0E-16",
        "tx_autotopup_threshold": "0E-16",
        "uuid": OWNER_UUID,
        "vat": ""
    })
}

/// [D] profile keys a PUT cannot change (identity, account state, billing set-up).
const PROFILE_READ_ONLY: &[&str] = &["uuid", "email", "signup_time", "state", "reseller"];

/// [V dumps/response_capabilities] the whole answer; the server limits are the ones
/// `parse.rs` enforces (one source). [D] `drives.zadara.min_size` is `1073741824.0` in the
/// dump; we send the integer so clients decoding ints (the Go SDK's `int` fields) parse it.
pub fn capabilities() -> Value {
    let ServerLimits { cpu, mem, smp } = SERVER_LIMITS;
    let host = json!({
        "cpu": {"max": cpu.1, "min": cpu.0},
        "cpu_per_smp": {"max": 3000, "min": 1000},
        "mem": {"max": mem.1, "min": mem.0},
        "smp": {"max": smp.1, "min": smp.0},
    });
    let storage = |iops_base: u64, iops_max: u64, min: u64, max: u64| {
        json!({
            "iops": {"base": iops_base, "max": iops_max, "min": 1},
            "max_size": max, "min_size": min,
            "size": {"max": max, "min": min},
        })
    };
    let mut servers = host.clone();
    if let Some(o) = servers.as_object_mut() {
        o.insert("default_start_method".into(), json!("regular"));
        o.insert("start_methods".into(), json!(["eager", "lazy", "regular"]));
    }
    json!({
        "backfilling": false,
        "card_backend": "StripeBackend",
        "currencies": [{"id": "CHF", "name": "chf"}, {"id": "USD", "name": "usd"},
                       {"id": "EUR", "name": "eur"}, {"id": "GBP", "name": "gbp"}],
        "default_inactive_period": 45,
        "default_storage_type": "dssd",
        "drives": {
            "dssd": storage(30000, 60000, 536_870_912, 15_492_389_427_364),
            "nvme": storage(30000, 60000, 536_870_912, 12_074_020_121_525),
            "zadara": storage(4000, 8000, 1_073_741_824, 14_180_205_493_621),
        },
        "hosts": {"amd": host.clone(), "intel": host},
        "hypervisors": {"kvm": ["intel", "amd"]},
        "inactive_period_range": {"max": 250, "min": 0},
        "remote_snapshots": {"current": 0, "max": 600, "remote_locations": []},
        "servers": servers,
        "snapshots": {"current": 0, "max": 700, "max_per_drive": 90},
    })
}

/// An OpenSSH public key line: `<algorithm> <base64 blob> [comment]`, the blob starting with the
/// algorithm name ([D] the emulator checks the form; the real API accepts RSA and ed25519
/// [V docs keypairs.rst]).
fn check_public_key(k: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        ApiError::validation(
            format!("public_key is not an OpenSSH public key ({why}); expected \"ssh-ed25519 AAAA... comment\" or \"ssh-rsa AAAA...\""),
            Some("public_key"),
        )
    };
    let mut parts = k.split_whitespace();
    let alg = parts.next().ok_or_else(|| bad("empty"))?;
    if !["ssh-rsa", "ssh-ed25519"].contains(&alg) {
        return Err(bad("algorithm must be ssh-rsa or ssh-ed25519"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next().ok_or_else(|| bad("no key data"))?)
        .map_err(|_| bad("key data is not base64"))?;
    // the blob is `u32 len || alg || ...`
    let named = blob.len() > 4 + alg.len() && &blob[4..4 + alg.len()] == alg.as_bytes();
    if !named {
        return Err(bad("key data does not match the algorithm"));
    }
    Ok(())
}

impl State {
    pub fn render_profile(&self, email: &str) -> Value {
        let mut p = self.profile.clone();
        if p["email"].as_str().is_none_or(str::is_empty) {
            p["email"] = json!(email);
        }
        p
    }

    /// `PUT /profile/` [V docs profile.rst]: the given keys change; [D] unknown and read-only keys
    /// are ignored, a value must keep the type the key has (strings may become null where the
    /// real profile sends null).
    pub fn update_profile(&mut self, body: &Value) -> Result<(), ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        let mut next = self.profile.clone();
        for (k, v) in o {
            if PROFILE_READ_ONLY.contains(&k.as_str()) {
                continue;
            }
            let Some(cur) = next.get(k.as_str()) else {
                continue;
            };
            let ok = match (cur, v) {
                _ if k == "meta" => {
                    next["meta"] = serde_json::to_value(parse_meta(v)?).unwrap_or_default();
                    continue;
                }
                (Value::Bool(_), Value::Bool(_)) => true,
                (Value::String(_) | Value::Null, Value::String(_) | Value::Null) => true,
                _ => false,
            };
            if !ok {
                return Err(ApiError::validation(
                    format!(
                        "{k} must be a {}",
                        if cur.is_boolean() {
                            "boolean"
                        } else {
                            "string"
                        }
                    ),
                    Some(k),
                ));
            }
            next[k.as_str()] = v.clone();
        }
        self.profile = next;
        self.touch();
        Ok(())
    }

    /// `POST /keypairs/` items. [V docs keypairs.rst] a public key alone (private_key null), or
    /// both keys; with neither the API layer has already generated a pair into the item
    /// (`api/account.rs`, `crate::keygen`).
    pub fn create_keypairs(&mut self, items: &[Value]) -> Result<Vec<Value>, ApiError> {
        let mut built = Vec::new();
        for o in body_objects(items)? {
            built.push(keypair_from_body(o, None)?);
        }
        let mut out = Vec::new();
        for k in built {
            let uuid = k["uuid"].as_str().unwrap_or_default().to_string();
            self.keypairs.insert(uuid.clone(), k);
            out.push(self.render_keypair(&uuid, false).unwrap_or_default());
        }
        self.touch();
        Ok(out)
    }

    pub fn update_keypair(&mut self, uuid: &str, body: &Value) -> Result<Value, ApiError> {
        let o = body
            .as_object()
            .ok_or_else(|| ApiError::validation("Request body must be a JSON object", None))?;
        let existing = self
            .keypairs
            .get(uuid)
            .ok_or_else(|| ApiError::notexist("keypair", uuid))?;
        let k = keypair_from_body(o, Some(existing))?;
        self.keypairs.insert(uuid.to_string(), k);
        self.touch();
        self.render_keypair(uuid, false)
            .ok_or_else(|| ApiError::notexist("keypair", uuid))
    }

    pub fn delete_keypair(&mut self, uuid: &str) -> Result<(), ApiError> {
        self.keypairs
            .shift_remove(uuid)
            .ok_or_else(|| ApiError::notexist("keypair", uuid))?;
        self.touch();
        Ok(())
    }

    /// A keypair as `/keypairs/` answers it, or as `/pubkeys/` does (`pub_view`): [V docs
    /// keypairs.rst] "identical ... except that they do not contain the private key, and have a
    /// `has_private_key` attribute instead".
    pub fn render_keypair(&self, uuid: &str, pub_view: bool) -> Option<Value> {
        let mut k = self.keypairs.get(uuid)?.clone();
        let o = k.as_object_mut()?;
        let res = if pub_view {
            let has = o.remove("private_key").is_some_and(|p| !p.is_null());
            o.insert("has_private_key".into(), json!(has));
            "pubkeys"
        } else {
            "keypairs"
        };
        o.insert(
            "resource_uri".into(),
            json!(format!("/api/2.0/{res}/{uuid}/")),
        );
        Some(k)
    }

    pub(super) fn validate_pubkeys(&self, keys: &[String]) -> Result<(), ApiError> {
        match keys.iter().find(|k| !self.keypairs.contains_key(*k)) {
            // [D] a server's pubkeys must exist in /keypairs/
            Some(k) => Err(ApiError::validation(
                format!("Keypair {k} does not exist; create it with POST /keypairs/ first"),
                Some("pubkeys"),
            )),
            None => Ok(()),
        }
    }
}

/// The stored keypair: [V dumps/response_keypair_get] `fingerprint, grantees, meta, name,
/// permissions, private_key, public_key, tags, uuid` (`resource_uri` is added when rendered).
/// `fingerprint` is the MD5 of the public key blob ([V dumps], see `crate::keygen`).
/// [D] `tags` stay `[]` (keypairs are not taggable here).
fn keypair_from_body(o: &Map<String, Value>, existing: Option<&Value>) -> Result<Value, ApiError> {
    let old = |k: &str| existing.and_then(|e| e.get(k)).cloned();
    let name = match get_str(o, "name")? {
        Some(n) if !n.trim().is_empty() => n,
        Some(_) => return Err(ApiError::validation("name must not be empty", Some("name"))),
        None => match old("name") {
            Some(Value::String(n)) => n,
            _ => return Err(ApiError::validation("This field is required", Some("name"))),
        },
    };
    let public_key = match get_str(o, "public_key")? {
        Some(k) => {
            check_public_key(&k)?;
            k
        }
        None => match old("public_key") {
            Some(Value::String(k)) => k,
            _ => {
                // [D] a private key alone: the public half is not derived from it
                return Err(ApiError::validation(
                    "public_key is required when private_key is given; omit both to have a \
                     pair generated ({\"algorithm_type\": \"rsa\"|\"ed25519\"})",
                    Some("public_key"),
                ));
            }
        },
    };
    let private_key = match get_str(o, "private_key")? {
        Some(p) => json!(p),
        None => old("private_key").unwrap_or(Value::Null),
    };
    let meta = match o.get("meta").filter(|m| !m.is_null()) {
        Some(m) => serde_json::to_value(parse_meta(m)?).unwrap_or_default(),
        None => old("meta").unwrap_or_else(|| json!({})),
    };
    let uuid = old("uuid").unwrap_or_else(|| json!(new_uuid()));
    Ok(json!({
        "fingerprint": crate::keygen::fingerprint(&public_key),
        "grantees": [],
        "meta": meta,
        "name": name,
        "permissions": [],
        "private_key": private_key,
        "public_key": public_key,
        "tags": [],
        "uuid": uuid,
    }))
}
