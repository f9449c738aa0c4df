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
//! Layout: `$CLOUDSIGMA_K8S_CACHE/node-images/<recipe>/{image.qcow2,drive.json}`; one image per
//! recipe (the latest), written atomically (temp name, then rename).

use crate::cloud::{Api, VmCloud};
use crate::harness;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let restored = if !fresh && std::env::var_os("E2E_FRESH_IMAGE").is_none() {
        restore(cloud, &kept).await
    } else {
        None
    };
    let manifest = tokio::task::block_in_place(|| {
        crate::builds::imgbuild_manifest(bin, repo, &cloud.api, recipe, vars)
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
    (image, manifest)
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
    let def: Value = serde_json::from_slice(&std::fs::read(kept.join("drive.json")).ok()?).ok()?;
    let qcow2 = kept.join("image.qcow2");
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
        .arg(&qcow2)
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
    let api = &cloud.api;
    let d = api.get(&format!("drives/{image}/")).await;
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
    let file = cloud.drive_file(image);
    let boot = std::fs::read_to_string(file.with_extension("boot")).ok();
    let def = json!({"name": d["name"], "size": d["size"], "meta": d["meta"], "tags": tag_names, "boot": boot});
    if let Err(e) = std::fs::create_dir_all(kept) {
        eprintln!(
            "image_cache: cannot create {}: {e}; the image is not kept",
            kept.display()
        );
        return;
    }
    // Names of this process's own: two loops (two clones' suites) may keep an image at once; the
    // renames are atomic, so the last one wins whole.
    let tmp = kept.join(format!(".image.qcow2.{}.tmp", std::process::id()));
    let flattened = tokio::task::block_in_place(|| {
        Command::new("qemu-img")
            .args(["convert", "-U", "-O", "qcow2"])
            .arg(&file)
            .arg(&tmp)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    let def_tmp = kept.join(format!(".drive.json.{}.tmp", std::process::id()));
    let written = flattened
        && std::fs::write(&def_tmp, def.to_string()).is_ok()
        && std::fs::rename(&tmp, kept.join("image.qcow2")).is_ok()
        && std::fs::rename(&def_tmp, kept.join("drive.json")).is_ok();
    if !written {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&def_tmp);
        eprintln!(
            "image_cache: could not keep the image in {}",
            kept.display()
        );
    }
}
