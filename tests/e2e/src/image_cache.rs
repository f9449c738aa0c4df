//! One node-image build shared by every loop (issue 24: "the loops should not each rebuild the
//! same node image").
//!
//! Each loop starts its own emulator with an empty account, so imgbuild's own cache (an image
//! drive tagged `imgbuild` whose meta `imgbuild.fingerprint` matches the recipe's) never hit
//! across loops. Here a built image is kept outside the clone, flattened to one qcow2 with its
//! drive definition (name, size, meta, tag names), and the next loop's account gets it back as an
//! ordinary drive before imgbuild runs. imgbuild then decides as it does on the real cloud: the
//! fingerprint (recipe text, every uploaded file's sha256, the vars, the base drive) matches and it
//! builds nothing, or it does not and it builds — and that build replaces the kept one. So the
//! product's freshness rule, not the harness, decides what is stale.
//!
//! The recipe's cached layers (imgbuild's `layers`/`base_until`: the drive after the OS and
//! runtime, after the Kubernetes version, ...) are kept the same way, so that a loop whose image
//! is stale (the agent changed) builds from the deepest layer still current, as a second build
//! on the real cloud does, instead of from the library drive (issue 25 item 3: the build inside
//! `scripts/test` as fast as alone). They are deleted from the account after the build: the
//! loops still end with an empty account.
//!
//! Layout: `$CLOUDSIGMA_K8S_CACHE/node-images/<recipe>/{image.qcow2,drive.json}` and
//! `.../<recipe>/layers/<uuid>.{qcow2,json}`; one image per recipe (the latest) and the layers of
//! the latest build that captured any, each written atomically (temp name, then rename).

use crate::cloud::{Api, VmCloud};
use crate::harness;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the layers of `recipe`'s latest build that captured any are kept (one chain).
pub(crate) fn layers_dir(recipe: &str) -> PathBuf {
    dir(recipe).join("layers")
}

fn dir(recipe: &str) -> PathBuf {
    let name = Path::new(recipe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| recipe.to_string());
    harness::cache_dir().join("node-images").join(name)
}

/// `imgbuild build RECIPE` in `cloud`, reusing the image kept by an earlier loop when imgbuild
/// finds its fingerprint current; keeps a newly built image for the next loops. Returns the
/// image's uuid. With `fresh` (the loop that tests imgbuild's build itself) or `E2E_FRESH_IMAGE=1`
/// nothing is restored, so imgbuild builds; the result is still kept.
pub async fn build_shared(
    cloud: &VmCloud,
    bin: &Path,
    repo: &Path,
    recipe: &str,
    vars: &[(&str, String)],
    fresh: bool,
) -> String {
    build_shared_manifest(cloud, bin, repo, recipe, vars, fresh)
        .await
        .0
}

/// [`build_shared`], also returning imgbuild's JSON manifest (its `stats.phases`: the boot bench
/// prints them).
pub async fn build_shared_manifest(
    cloud: &VmCloud,
    bin: &Path,
    repo: &Path,
    recipe: &str,
    vars: &[(&str, String)],
    fresh: bool,
) -> (String, Value) {
    let kept = dir(recipe);
    let use_kept = !fresh && std::env::var_os("E2E_FRESH_IMAGE").is_none();
    let restored = if use_kept {
        restore(cloud, &kept).await
    } else {
        None
    };
    // `fresh` (the loop that tests the build itself) builds from the library drive, and keeps
    // the layers it captures for the others
    let restored_layers = if use_kept {
        restore_layers(cloud, &kept.join("layers")).await
    } else {
        Vec::new()
    };
    let manifest = tokio::task::block_in_place(|| {
        crate::builds::imgbuild_manifest_layers(bin, repo, &cloud.api, recipe, vars, true)
    });
    let image = crate::builds::image_uuid(&manifest);
    match restored {
        Some(r) if r == image => {
            eprintln!("image_cache: imgbuild reused the kept {recipe} image (fingerprint current)");
        }
        other => {
            if let Some(stale) = other {
                // imgbuild built anew: the restored drive is stale; delete it as any leftover
                cloud.api.delete(&format!("drives/{stale}/")).await;
            }
            save(cloud, &image, &kept).await;
        }
    }
    settle_layers(cloud, &restored_layers, &kept.join("layers"), &manifest).await;
    (image, manifest)
}

/// The account's cached layer drives (imgbuild meta `imgbuild.state: base`) with the number of
/// recipe steps each holds (`imgbuild.base-steps`).
pub(crate) async fn layer_drives(api: &Api) -> Vec<(String, u64)> {
    let drives = api.get("drives/detail/?limit=0").await;
    drives["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["meta"]["imgbuild.state"] == "base")
        .filter_map(|d| {
            let steps = d["meta"]["imgbuild.base-steps"].as_str()?.parse().ok()?;
            Some((d["uuid"].as_str()?.to_string(), steps))
        })
        .collect()
}

/// Every kept layer as a drive of the account; their uuids.
pub(crate) async fn restore_layers(cloud: &VmCloud, dir: &Path) -> Vec<String> {
    let mut uuids = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return uuids;
    };
    let mut defs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    defs.sort();
    for def in defs {
        if let Some(u) = restore_drive(cloud, &def, &def.with_extension("qcow2")).await {
            uuids.push(u);
        }
    }
    if !uuids.is_empty() {
        eprintln!("image_cache: {} kept layer(s) restored", uuids.len());
    }
    uuids
}

/// After the build: when it captured a layer, the kept layers become this build's chain (see
/// [`chain`]), flattened; then every layer drive is deleted from the account.
async fn settle_layers(cloud: &VmCloud, restored: &[String], dir: &Path, manifest: &Value) {
    let api = &cloud.api;
    let now = layer_drives(api).await;
    if let Some(keep) = chain(manifest, restored, &now) {
        keep_drives(cloud, &keep, dir).await;
    }
    for (u, _) in &now {
        api.delete(&format!("drives/{u}/")).await;
    }
}

/// Replaces the kept layers in `dir` with `keep` (uuid, steps), each flattened; all or nothing
/// (a temporary directory renamed over the old one). True when kept.
pub(crate) async fn keep_drives(cloud: &VmCloud, keep: &[(String, u64)], dir: &Path) -> bool {
    let parent = dir.parent().unwrap_or(dir);
    let _ = std::fs::create_dir_all(parent);
    let pid = std::process::id();
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "layers".into());
    let tmp = parent.join(format!(".{base}.{pid}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut ok = std::fs::create_dir_all(&tmp).is_ok();
    for (u, _) in keep {
        ok = ok
            && save_drive(
                cloud,
                u,
                &tmp.join(format!("{u}.qcow2")),
                &tmp.join(format!("{u}.json")),
            )
            .await;
    }
    let old = parent.join(format!(".{base}.{pid}.old"));
    let replaced = ok
        && (!dir.exists() || std::fs::rename(dir, &old).is_ok())
        && std::fs::rename(&tmp, dir).is_ok();
    let _ = std::fs::remove_dir_all(&old);
    if replaced {
        eprintln!(
            "image_cache: kept {} layer(s) in {} for the next loops (steps {})",
            keep.len(),
            dir.display(),
            keep.iter()
                .map(|(_, n)| format!("1-{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
        eprintln!(
            "image_cache: could not keep the layers in {}",
            dir.display()
        );
    }
    replaced
}

/// The layers to keep after a build, as (uuid, steps) from the shallowest, when the build
/// captured any (None: the kept ones stay as they are). imgbuild's manifest lists the layer the
/// build started from (`reused`) and each one it captured (`layers`; older builds:
/// `base_layer`). The layers under the one it started from are not listed: they are the kept
/// ones restored with fewer steps (the kept set is one chain, and fingerprints are chained, so a
/// reused layer's ancestors are current too). A layer restored but of another chain is dropped.
fn chain(
    manifest: &Value,
    restored: &[String],
    now: &[(String, u64)],
) -> Option<Vec<(String, u64)>> {
    let listed: Vec<&Value> = match manifest["layers"].as_array() {
        Some(a) => a.iter().collect(),
        None => manifest
            .get("base_layer")
            .filter(|b| !b.is_null())
            .into_iter()
            .collect(),
    };
    let steps_of = |u: &str| now.iter().find(|(n, _)| n == u).map(|(_, s)| *s);
    // (uuid, steps in the account, reused)
    let listed: Vec<(String, u64, bool)> = listed
        .into_iter()
        .filter_map(|l| {
            let u = l["uuid"].as_str()?;
            Some((u.to_string(), steps_of(u)?, l["reused"].as_bool()?))
        })
        .collect();
    if !listed.iter().any(|l| !l.2) {
        return None;
    }
    let mut keep: Vec<(String, u64)> = listed.iter().map(|l| (l.0.clone(), l.1)).collect();
    if let Some(from) = listed.iter().filter(|l| l.2).map(|l| l.1).min() {
        for (u, n) in now {
            if restored.contains(u) && *n < from && !keep.iter().any(|k| &k.0 == u) {
                keep.push((u.clone(), *n));
            }
        }
    }
    keep.sort_by_key(|k| k.1);
    Some(keep)
}

/// `debian-test-node` (the stub loops' image) through [`build_shared`], with the agent `bins`
/// built; `fresh` for the loop that tests imgbuild's build itself.
pub async fn test_node_image(
    cloud: &VmCloud,
    bins: &crate::builds::Binaries,
    repo: &Path,
    fresh: bool,
) -> String {
    test_node_image_manifest(cloud, bins, repo, fresh).await.0
}

/// [`test_node_image`], also returning imgbuild's JSON manifest.
pub async fn test_node_image_manifest(
    cloud: &VmCloud,
    bins: &crate::builds::Binaries,
    repo: &Path,
    fresh: bool,
) -> (String, Value) {
    build_shared_manifest(
        cloud,
        &bins.imgbuild,
        repo,
        "image-recipes/debian-test-node",
        &[
            ("agent_binary", bins.agent.display().to_string()),
            // the emulator boots the library kernel + initrd directly (docs/imgbuild.md)
            ("initramfs_update", "no".into()),
        ],
        fresh,
    )
    .await
}

/// The kept image as a drive of `cloud`'s account (its tags recreated), or None.
async fn restore(cloud: &VmCloud, kept: &Path) -> Option<String> {
    restore_drive(cloud, &kept.join("drive.json"), &kept.join("image.qcow2")).await
}

/// A kept drive (its definition, its flattened file) as a drive of `cloud`'s account, or None.
async fn restore_drive(cloud: &VmCloud, def: &Path, qcow2: &Path) -> Option<String> {
    let def: Value = serde_json::from_slice(&std::fs::read(def).ok()?).ok()?;
    if !qcow2.exists() {
        return None;
    }
    let api = &cloud.api;
    let created = api
        .post(
            "drives/",
            json!({"objects": [{"name": def["name"], "size": def["size"], "media": "disk", "meta": def["meta"]}]}),
        )
        .await;
    let uuid = created["objects"][0]["uuid"].as_str()?.to_string();
    // The emulator made an empty qcow2 for it; an overlay backed by the kept image replaces it
    // (instant; the kept file is only read).
    let file = cloud.drive_file(&uuid);
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(qcow2)
        .arg(&file)
        .arg(def["size"].as_u64().unwrap_or(0).to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if let (true, Some(boot)) = (ok, def["boot"].as_str()) {
        let _ = std::fs::write(file.with_extension("boot"), boot);
    }
    if !ok {
        api.delete(&format!("drives/{uuid}/")).await;
        return None;
    }
    for name in def["tags"].as_array().cloned().unwrap_or_default() {
        tag(api, name.as_str().unwrap_or_default(), &uuid).await;
    }
    Some(uuid)
}

/// Adds `drive` to the tag `name`, creating the tag if needed.
async fn tag(api: &Api, name: &str, drive: &str) {
    let tags = api.get("tags/").await;
    let found = tags["objects"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == name).cloned());
    match found {
        Some(t) => {
            let uuid = t["uuid"].as_str().unwrap_or_default();
            let mut res: Vec<Value> = t["resources"].as_array().cloned().unwrap_or_default();
            res.push(json!(drive));
            api.call(
                reqwest::Method::PUT,
                &format!("tags/{uuid}/"),
                Some(json!({"name": name, "resources": res})),
            )
            .await;
        }
        None => {
            api.post(
                "tags/",
                json!({"objects": [{"name": name, "resources": [drive]}]}),
            )
            .await;
        }
    }
}

/// Keeps `image` (flattened) and its definition for the next loops.
async fn save(cloud: &VmCloud, image: &str, kept: &Path) {
    if let Err(e) = std::fs::create_dir_all(kept) {
        eprintln!(
            "image_cache: cannot create {}: {e}; the image is not kept",
            kept.display()
        );
        return;
    }
    if !save_drive(
        cloud,
        image,
        &kept.join("image.qcow2"),
        &kept.join("drive.json"),
    )
    .await
    {
        eprintln!(
            "image_cache: could not keep the image in {}",
            kept.display()
        );
    }
}

/// Writes `drive` flattened to `qcow2` and its definition (name, size, meta, tag names, boot
/// sidecar) to `def`, each through a temporary name and a rename; false (nothing written) on a
/// failure.
async fn save_drive(cloud: &VmCloud, drive: &str, qcow2: &Path, def: &Path) -> bool {
    let api = &cloud.api;
    let d = api.get(&format!("drives/{drive}/")).await;
    let tags = api.get("tags/").await;
    let tag_names: Vec<Value> = d["tags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            let u = r["uuid"].as_str().or_else(|| r.as_str())?;
            tags["objects"]
                .as_array()?
                .iter()
                .find(|t| t["uuid"] == u)
                .map(|t| t["name"].clone())
        })
        .collect();
    let file = cloud.drive_file(drive);
    let boot = std::fs::read_to_string(file.with_extension("boot")).ok();
    let text = json!({"name": d["name"], "size": d["size"], "meta": d["meta"], "tags": tag_names, "boot": boot});
    // Names of this process's own: two loops (two clones' suites) may keep an image at once; the
    // renames are atomic, so the last one wins whole.
    let pid = std::process::id();
    let tmp = qcow2.with_extension(format!("qcow2.{pid}.tmp"));
    let flattened = tokio::task::block_in_place(|| {
        Command::new("qemu-img")
            .args(["convert", "-U", "-O", "qcow2"])
            .arg(&file)
            .arg(&tmp)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    let def_tmp = def.with_extension(format!("json.{pid}.tmp"));
    let written = flattened
        && std::fs::write(&def_tmp, text.to_string()).is_ok()
        && std::fs::rename(&tmp, qcow2).is_ok()
        && std::fs::rename(&def_tmp, def).is_ok();
    if !written {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&def_tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::chain;
    use serde_json::json;

    fn now() -> Vec<(String, u64)> {
        vec![("base".into(), 6), ("k8s".into(), 9), ("stale".into(), 6)]
    }

    #[test]
    fn a_build_from_the_deepest_layer_keeps_nothing_new() {
        let m = json!({"layers": [{"uuid": "k8s", "steps": 9, "reused": true}]});
        assert_eq!(chain(&m, &["base".into(), "k8s".into()], &now()), None);
        // an image reused whole: no layer looked at
        assert_eq!(chain(&json!({"layers": []}), &[], &now()), None);
        assert_eq!(chain(&json!({}), &[], &now()), None);
    }

    #[test]
    fn a_captured_layer_joins_the_restored_ones_under_the_layer_the_build_started_from() {
        let m = json!({"layers": [
            {"uuid": "base", "steps": 6, "reused": true},
            {"uuid": "k8s", "steps": 9, "reused": false}
        ]});
        let restored = ["base".to_string(), "stale".to_string()];
        assert_eq!(
            chain(&m, &restored, &now()),
            Some(vec![("base".into(), 6), ("k8s".into(), 9)]),
            "the other chain's layer of 6 steps is not under the one reused (6): dropped"
        );
        let m = json!({"layers": [
            {"uuid": "base", "steps": 6, "reused": false},
            {"uuid": "k8s", "steps": 9, "reused": false}
        ]});
        assert_eq!(
            chain(&m, &restored, &now()),
            Some(vec![("base".into(), 6), ("k8s".into(), 9)]),
            "a full build: its own layers only"
        );
        let m = json!({"base_layer": {"uuid": "base", "steps": 6, "reused": false}});
        assert_eq!(chain(&m, &[], &now()), Some(vec![("base".into(), 6)]));
    }
}
