//! How a build marks what it creates, and how leftovers are recognised again: the one place for
//! the `imgbuild-<build id>-…` names, the `imgbuild` tag and the `imgbuild.*` meta keys. The
//! build writes them (build.rs); the cleanup guard and `imgbuild clean` read them (cleanup.rs).
//!
//! Every resource a build creates is named `imgbuild-<build id>-…`, tagged `imgbuild` and carries
//! meta `imgbuild.build-id` / `imgbuild.state=building` / `imgbuild.started`, so that a build
//! killed hard (SIGKILL, power loss) can be found by `imgbuild clean` later.

use cloudsigma_api::{Drive, Meta};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The tag on every build drive, builder server and finished image.
pub const TAG: &str = "imgbuild";
pub const META_BUILD_ID: &str = "imgbuild.build-id";
/// [`STATE_BUILDING`] while a build runs, [`STATE_IMAGE`] once the drive is the product.
pub const META_STATE: &str = "imgbuild.state";
/// Unix seconds when the build started: the age `imgbuild clean --older-than-minutes` reads.
pub const META_STARTED: &str = "imgbuild.started";
pub const META_FINGERPRINT: &str = "imgbuild.fingerprint";
pub const META_RECIPE: &str = "imgbuild.recipe";
pub const META_BUILT_AT: &str = "imgbuild.built-at";
pub const META_BASE: &str = "imgbuild.base";
pub const META_VERSION: &str = "imgbuild.version";
pub const STATE_BUILDING: &str = "building";
pub const STATE_IMAGE: &str = "image";
/// A cached base layer (see [`base_drive_name`]): reused by builds, never an image.
pub const STATE_BASE: &str = "base";
/// The base layer's fingerprint (recipe `base_until`; `Recipe::base_fingerprint`).
pub const META_BASE_FINGERPRINT: &str = "imgbuild.base-fingerprint";
/// Unix seconds when the base layer was captured: the age `imgbuild clean` reads for bases.
pub const META_BASE_CREATED: &str = "imgbuild.base-created";
/// How many recipe steps the base layer holds.
pub const META_BASE_STEPS: &str = "imgbuild.base-steps";
/// On an image: the base layer drive it was built from (when it was).
pub const META_BASE_LAYER: &str = "imgbuild.base-layer";

/// Name suffix of the build drive (the image once finalized renames it).
const DRIVE_SUFFIX: &str = "-build";
/// Name suffix of the builder server.
const SERVER_SUFFIX: &str = "-builder";
/// Name suffix of the build drive once it is a candidate under `--verify`.
const CANDIDATE_SUFFIX: &str = "-candidate";
/// Name suffix of the enlarged clone of the candidate that `--verify` boots.
const VERIFY_DRIVE_SUFFIX: &str = "-verify";
/// Name suffix of the server that boots it.
const VERIFY_SERVER_SUFFIX: &str = "-verifier";

/// A new build id: 8 lowercase hex digits.
pub fn new_build_id() -> String {
    use rand::Rng;
    let n: u32 = rand::thread_rng().gen();
    format!("{n:08x}")
}

/// `imgbuild-<id>-build`: the drive cloned from the base, until finalize names it.
pub fn drive_name(build_id: &str) -> String {
    format!("imgbuild-{build_id}{DRIVE_SUFFIX}")
}

/// `imgbuild-<id>-builder`: the server that boots the build drive.
pub fn server_name(build_id: &str) -> String {
    format!("imgbuild-{build_id}{SERVER_SUFFIX}")
}

/// `imgbuild-<id>-candidate`: the finished build drive while `--verify` checks it; only a
/// verified candidate gets the recipe's output name and tags.
pub fn candidate_name(build_id: &str) -> String {
    format!("imgbuild-{build_id}{CANDIDATE_SUFFIX}")
}

/// `imgbuild-<id>-verify`: the enlarged clone of the candidate the verify server boots.
pub fn verify_drive_name(build_id: &str) -> String {
    format!("imgbuild-{build_id}{VERIFY_DRIVE_SUFFIX}")
}

/// `imgbuild-<id>-verifier`: the server `--verify` boots the candidate's clone on.
pub fn verify_server_name(build_id: &str) -> String {
    format!("imgbuild-{build_id}{VERIFY_SERVER_SUFFIX}")
}

/// `imgbuild-base-<first 16 hex digits of the base fingerprint>`: a cached base layer.
pub fn base_drive_name(base_fingerprint: &str) -> String {
    let short = base_fingerprint.get(..16).unwrap_or(base_fingerprint);
    format!("imgbuild-base-{short}")
}

/// The meta a base layer drive carries once captured (its other keys are the build drive's).
pub fn base_meta(
    base_fingerprint: &str,
    steps: usize,
    created_unix: u64,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_STATE.to_string(), STATE_BASE.to_string()),
        (
            META_BASE_FINGERPRINT.to_string(),
            base_fingerprint.to_string(),
        ),
        (META_BASE_STEPS.to_string(), steps.to_string()),
        (META_BASE_CREATED.to_string(), created_unix.to_string()),
    ])
}

/// A base layer drive (of any fingerprint).
pub fn is_base(d: &Drive) -> bool {
    d.meta.get(META_STATE).map(String::as_str) == Some(STATE_BASE)
        && d.meta.contains_key(META_BASE_FINGERPRINT)
}

/// A base layer of exactly this base fingerprint: the only kind a build may start from.
pub fn is_base_of(d: &Drive, base_fingerprint: &str) -> bool {
    is_base(d) && d.meta.get(META_BASE_FINGERPRINT).map(String::as_str) == Some(base_fingerprint)
}

/// When a base layer was captured ([`META_BASE_CREATED`]).
pub fn base_created(meta: &Meta) -> Option<u64> {
    meta.get(META_BASE_CREATED).and_then(|s| s.parse().ok())
}

fn is_build_name(name: &str, suffix: &str) -> bool {
    name.strip_prefix("imgbuild-")
        .and_then(|r| r.strip_suffix(suffix))
        .map(|id| id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or(false)
}

/// The meta a build drive and the builder server carry while the build runs.
pub fn building_meta(build_id: &str, started_unix: u64, recipe: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (META_BUILD_ID.to_string(), build_id.to_string()),
        (META_STATE.to_string(), STATE_BUILDING.to_string()),
        (META_STARTED.to_string(), started_unix.to_string()),
        (META_RECIPE.to_string(), recipe.to_string()),
    ])
}

/// A finished image of this fingerprint.
pub fn is_image_of(d: &Drive, fingerprint: &str) -> bool {
    d.meta.get(META_FINGERPRINT).map(String::as_str) == Some(fingerprint)
        && d.meta.get(META_STATE).map(String::as_str) == Some(STATE_IMAGE)
}

/// A drive of a build still running (or killed): in state `building`, or named like a build
/// drive before its meta is set. A finished image never is.
pub fn is_build_in_progress(d: &Drive) -> bool {
    let state = d.meta.get(META_STATE).map(String::as_str);
    state != Some(STATE_IMAGE)
        && state != Some(STATE_BASE)
        && (state == Some(STATE_BUILDING)
            || [DRIVE_SUFFIX, CANDIDATE_SUFFIX, VERIFY_DRIVE_SUFFIX]
                .iter()
                .any(|s| is_build_name(&d.name, s)))
}

/// A builder server: build meta, or the builder name (killed before its meta was read back).
pub fn is_builder_server(name: &str, meta: &Meta) -> bool {
    meta.contains_key(META_BUILD_ID)
        || is_build_name(name, SERVER_SUFFIX)
        || is_build_name(name, VERIFY_SERVER_SUFFIX)
}

/// When the build that made this object started ([`META_STARTED`]), if it says.
pub fn started_at(meta: &Meta) -> Option<u64> {
    meta.get(META_STARTED).and_then(|s| s.parse().ok())
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_only_with_an_8_hex_id() {
        let id = new_build_id();
        assert!(is_build_name(&drive_name(&id), DRIVE_SUFFIX));
        assert!(is_build_name(&server_name(&id), SERVER_SUFFIX));
        assert!(!is_build_name(&server_name(&id), DRIVE_SUFFIX));
        assert!(!is_build_name("imgbuild-xyz-build", DRIVE_SUFFIX));
        assert!(!is_build_name("imgbuild-0123456789-build", DRIVE_SUFFIX));
    }

    #[test]
    fn candidates_and_verify_clones_are_leftovers_base_layers_never() {
        let id = new_build_id();
        let drive = |name: String, meta: &[(&str, &str)]| {
            let mut d: Drive = serde_json::from_value(serde_json::json!({
                "uuid": "6d4a1c3e-0000-4000-8000-000000000001", "name": name,
                "size": 1, "status": "unmounted", "media": "disk"
            }))
            .unwrap();
            d.meta = meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            d
        };
        assert!(is_build_in_progress(&drive(candidate_name(&id), &[])));
        assert!(is_build_in_progress(&drive(verify_drive_name(&id), &[])));
        assert!(is_builder_server(&verify_server_name(&id), &Meta::new()));
        let fp = "0123456789abcdef0123456789abcdef";
        assert_eq!(base_drive_name(fp), "imgbuild-base-0123456789abcdef");
        let layer = drive(
            base_drive_name(fp),
            &[(META_STATE, STATE_BASE), (META_BASE_FINGERPRINT, fp)],
        );
        assert!(is_base(&layer) && is_base_of(&layer, fp) && !is_base_of(&layer, "other"));
        assert!(!is_build_in_progress(&layer));
        // mid-capture (the clone still carries the build drive's meta): a leftover, not a layer
        let capturing = drive(base_drive_name(fp), &[(META_STATE, STATE_BUILDING)]);
        assert!(is_build_in_progress(&capturing) && !is_base(&capturing));
    }
}
