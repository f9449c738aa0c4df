//! `--dry-run`: every phase and API call the build would make, with no call made. The phases come
//! from [`Phase::ALL`]; a new phase does not compile until it is described here.

use crate::build::Options;
use crate::naming::TAG;
use crate::phase::Phase;
use crate::recipe::{normalize, Recipe, StepKind};
use std::fmt::Write;
use std::path::Path;

pub fn plan(recipe: &Recipe, opts: &Options, base_url: Option<&str>) -> String {
    plan_with(recipe, opts, base_url, None)
}

/// What a read-only look at the account found about the recipe's base layer (`--dry-run` with
/// an API configured): the base fingerprint, and the layer of that fingerprint if one exists
/// (name, uuid).
#[derive(Debug, Clone)]
pub struct LayerLook {
    pub fingerprint: String,
    pub found: Option<(String, String)>,
}

/// [`plan`], with what base-lookup would find when it is known.
pub fn plan_with(
    recipe: &Recipe,
    opts: &Options,
    base_url: Option<&str>,
    look: Option<&LayerLook>,
) -> String {
    let mut o = header(recipe, base_url);
    let _ = writeln!(o, "phases and API calls:");
    for p in Phase::ALL {
        let what = match p {
            Phase::BaseLookup => base_lookup(recipe, opts, look),
            _ => describe(p, recipe, opts),
        };
        let _ = writeln!(o, "  {:<14} {what}", p.name());
        if p == Phase::Provision {
            steps(&mut o, recipe);
        }
    }
    let _ = writeln!(o, "on failure or SIGINT/SIGTERM/SIGHUP: stop + DELETE the server, DELETE the drive and tags this build created{}", if opts.keep_on_failure { " (disabled by --keep-on-failure)" } else { "" });
    o
}

/// The recipe, its variables, what scripts see, the secrets' names, the fingerprint's inputs.
fn header(recipe: &Recipe, base_url: Option<&str>) -> String {
    let r = &recipe.spec;
    let mut o = String::new();
    let _ = writeln!(o, "plan for recipe {} ({})", r.name, recipe.file.display());
    if let Some(u) = base_url {
        let _ = writeln!(o, "API: {u}");
    }
    let _ = writeln!(o, "variables:");
    for (k, v) in &recipe.vars {
        let _ = writeln!(o, "  {k} = {v}");
    }
    let env: Vec<String> = recipe.script_env().into_iter().map(|(k, _)| k).collect();
    let env = env.join(" ");
    let _ = writeln!(o, "scripts run as root with: {env}");
    if !r.secrets.is_empty() {
        let _ = writeln!(
            o,
            "secrets (values never shown; files under {} for every script): {}",
            crate::secrets::GUEST_DIR,
            r.secrets.join(", ")
        );
    }
    let _ = writeln!(o, "fingerprint: sha256 over recipe + {} files + vars + base drive uuid (known after resolve-base)", recipe.files.len());
    if let (Some(k), Some(until)) = (recipe.base_steps, &r.base_until) {
        let _ = writeln!(o, "base layer: steps 1..{k} (base_until {until:?}); base fingerprint: sha256 over those steps, their files, the vars they read ({}) + base drive uuid", recipe.base_vars().join(", "));
    }
    o
}

/// base-lookup: what the build would do about the base layer.
fn base_lookup(recipe: &Recipe, opts: &Options, look: Option<&LayerLook>) -> String {
    let n = recipe.steps.len();
    let Some(k) = recipe.base_steps else {
        return "(not entered: the recipe has no base_until)".into();
    };
    if opts.no_base_cache {
        return "off (--no-base-cache): full build".into();
    }
    if let Some(why) = &recipe.base_off {
        return format!("off: {why}; full build");
    }
    match look {
        Some(LayerLook { fingerprint, found: Some((name, uuid)) }) => format!("base {} found: {name} ({uuid}): steps {}..{n} only", &fingerprint[..16], k + 1),
        Some(LayerLook { fingerprint, found: None }) => format!("no base {}: full build, base kept at step {k}", &fingerprint[..16]),
        None => format!("GET drives/detail/?tag=<imgbuild tag> → a base layer of this base fingerprint (steps 1..{k}, known after resolve-base): steps {}..{n} only; none: full build, base kept at step {k}", k + 1),
    }
}

/// A template rendered with the recipe's variables only (build_time & co. shown as written).
fn show(recipe: &Recipe, t: &str) -> String {
    let vars = minijinja::Value::from_serialize(&recipe.vars);
    crate::recipe::render(t, &vars).unwrap_or_else(|_| t.to_string())
}

/// One phase's API calls and actions, after its name.
fn describe(p: Phase, recipe: &Recipe, opts: &Options) -> String {
    let r = &recipe.spec;
    let b = &r.base;
    match p {
        Phase::ResolveBase => format!("GET  libdrives/detail/?distribution={}&version={}  → pick arch={} image_type={}", b.distribution, b.version, b.arch, b.image_type),
        Phase::CacheLookup => "GET  tags/; GET drives/detail/?tag=<imgbuild tag>  → stop here if meta imgbuild.fingerprint matches".into(),
        Phase::EnsureTags => format!("POST tags/ for each missing one of: {TAG}{}", r.output.tags.iter().map(|t| format!(", {}", show(recipe, t))).collect::<String>()),
        Phase::Clone => "POST libdrives/<base>/action/?do=clone {name: imgbuild-<id>-build}; GET drives/<uuid>/ until unmounted".into(),
        Phase::Resize => format!("POST drives/<uuid>/action/?do=resize size={} + meta imgbuild.* + tag {TAG}; GET until unmounted", recipe.disk_size),
        Phase::CreateServer => format!("POST servers/ cpu={} mem={} smp={} drive 0:0 virtio boot_order 1, NIC dhcp (NAT), meta ssh_public_key=<ephemeral ed25519> + cloudinit-user-data (ssh_keys: a host key made for this build)", r.server.cpu, recipe.mem, r.server.smp.unwrap_or(1)),
        Phase::Start => "POST servers/<uuid>/action/?do=start; GET servers/<uuid>/ until running → runtime NAT IP".into(),
        Phase::WaitSsh => format!("ssh {}@<NAT IP>:22 (ephemeral key; known_hosts holds only the build's host key, StrictHostKeyChecking=yes) until it answers", opts.ssh_user.clone().or_else(|| r.ssh_user.clone()).unwrap_or_else(|| "<library default_user>".into())),
        Phase::ProvisionBase => match recipe.base_steps {
            Some(k) if !opts.no_base_cache && recipe.base_off.is_none() => format!("steps 1..{k} (the base layer's), only when base-lookup found none"),
            _ => "(not entered: no base layer)".into(),
        },
        Phase::BaseCapture => match recipe.base_steps {
            Some(k) if !opts.no_base_cache && recipe.base_off.is_none() => format!("after step {k}, only when base-lookup found none: POST servers/<uuid>/action/?do=shutdown, GET until stopped; POST drives/<uuid>/action/?do=clone {{name: imgbuild-base-<base fingerprint>}}; PUT meta imgbuild.state=base, imgbuild.base-fingerprint, imgbuild.base-created; POST ?do=start; ssh again"),
            _ => "(not entered: no base layer)".into(),
        },
        Phase::Provision => format!("{} steps (from a base layer: those after it):", recipe.steps.len()),
        Phase::CleanGuest => "last SSH login: remove /tmp/imgbuild, the login key, the SSH host keys and cloud-init's copies of the user-data, sync".into(),
        Phase::Shutdown => format!("POST servers/<uuid>/action/?do=shutdown; GET until stopped (≤{}s, then POST ?do=stop)", r.timeouts.shutdown),
        Phase::DeleteServer => "DELETE servers/<uuid>/ (no recurse: the drive is kept)".into(),
        Phase::Verify if opts.verify => format!("PUT drives/<uuid>/ name=imgbuild-<id>-candidate; POST drives/<uuid>/action/?do=clone {{name: imgbuild-<id>-verify, size: {} }}; POST servers/ imgbuild-<id>-verifier (meta cloudinit-user-data: a marker + a host key, joins nothing); start; ssh; checks: agent applied the data, root grew{}; DELETE the server and the clone", recipe.disk_size + (1 << 30), recipe.spec.verify.checks.iter().map(|c| format!(", {}", c.name)).collect::<String>()),
        Phase::Verify => "(not entered: no --verify)".into(),
        Phase::BaseLookup => base_lookup(recipe, opts, None),
        Phase::Finalize => format!("GET drives/<uuid>/; PUT drives/<uuid>/ name={:?} tags + meta (fingerprint, versions, build time)", show(recipe, &r.output.name)),
    }
}

/// The provision phase's steps, one line each.
fn steps(o: &mut String, recipe: &Recipe) {
    let n = recipe.steps.len();
    for (i, s) in recipe.steps.iter().enumerate() {
        let what = match &s.kind {
            StepKind::Script { path, uses } => {
                let mut w = format!("run {}", rel(recipe, path));
                for h in uses {
                    let (src, dest, sha) = (rel(recipe, &h.src), &h.dest, &h.sha256);
                    w.push_str(&format!(" (uses {src} → {dest}, verify sha256 {sha})"));
                }
                w
            }
            StepKind::Upload {
                src,
                dest,
                mode,
                sha256,
            } => format!(
                "upload {} → {dest} (mode {mode}), verify sha256 {sha256}",
                crate::recipe::normalize(src).display()
            ),
            StepKind::Reboot => "reboot and wait for SSH (new boot id)".into(),
        };
        let _ = writeln!(o, "    [{}/{n}] {}: {what}", i + 1, s.name);
    }
}

/// Lexical, for display: image-recipes/ubuntu-k8s/../common/x.sh → common/x.sh (relative to
/// the recipes' directory).
fn rel(recipe: &Recipe, p: &Path) -> String {
    let root = normalize(recipe.dir.parent().unwrap_or(&recipe.dir));
    let p = normalize(p);
    p.strip_prefix(&root).unwrap_or(&p).display().to_string()
}
