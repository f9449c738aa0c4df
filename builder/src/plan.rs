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

/// What a read-only look at the account found about the recipe's layers (`--dry-run` with an
/// API configured): the base (first) layer's fingerprint, every layer's (fingerprint, steps),
/// and the deepest layer found: (fingerprint, steps, name, uuid).
#[derive(Debug, Clone)]
pub struct LayerLook {
    pub fingerprint: String,
    pub layers: Vec<(String, usize)>,
    pub found: Option<(String, usize, String, String)>,
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
    if let (Some(k), Some(until)) = (recipe.base_steps, recipe.layer_marks().first()) {
        let key = if r.layers.is_some() {
            "layers"
        } else {
            "base_until"
        };
        let _ = writeln!(o, "base layer: steps 1..{k} ({key} {until:?}); base fingerprint: sha256 over those steps, their files, the vars they read ({}) + base drive uuid", recipe.base_vars().join(", "));
        let mut from = k;
        for (n, mark) in recipe.layer_steps.iter().zip(recipe.layer_marks()).skip(1) {
            let _ = writeln!(o, "layer: steps 1..{n} ({mark:?}); fingerprint: sha256 over the layer before, steps {}..{n}, their files, the vars they read ({})", from + 1, recipe.vars_read_in(from..*n).join(", "));
            from = *n;
        }
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
    let keep = |after: usize, layers: &[(String, usize)]| -> String {
        layers
            .iter()
            .filter(|(_, s)| *s > after)
            .map(|(fp, s)| match s == &k {
                true => format!("base kept at step {s}"),
                false => format!("layer {} kept at step {s}", &fp[..16]),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match look {
        Some(LayerLook {
            found: Some((fp, s, name, uuid)),
            layers,
            ..
        }) => {
            let more = keep(*s, layers);
            let more = if more.is_empty() {
                more
            } else {
                format!("; {more}")
            };
            format!(
                "base {} found: {name} ({uuid}): steps {}..{n} only{more}",
                &fp[..16],
                s + 1
            )
        }
        Some(LayerLook {
            fingerprint,
            found: None,
            layers,
        }) => format!(
            "no base {}: full build, {}",
            &fingerprint[..16],
            keep(0, layers)
        ),
        None => {
            let marks: Vec<String> = recipe
                .layer_steps
                .iter()
                .map(|s| format!("1..{s}"))
                .collect();
            format!("GET drives/detail/?tag=<imgbuild tag> → the deepest layer (steps {}, fingerprints known after resolve-base) whose fingerprint matches: only the steps after it, the deeper layers kept; none: full build, base kept at step {k}", marks.join(", "))
        }
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
            Some(k) if !opts.no_base_cache && recipe.base_off.is_none() => format!("steps 1..{k} (the base layer's), only when base-lookup found none; again for each deeper layer base-lookup did not find (steps up to {})", recipe.layer_steps.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
            _ => "(not entered: no base layer)".into(),
        },
        Phase::BaseCapture => match recipe.base_steps {
            Some(k) if !opts.no_base_cache && recipe.base_off.is_none() => format!("after step {k} (and each deeper layer's last step), only for a layer base-lookup did not find: POST servers/<uuid>/action/?do=shutdown, GET until stopped; POST drives/<uuid>/action/?do=clone {{name: imgbuild-base-<layer fingerprint>}}; PUT meta imgbuild.state=base, imgbuild.base-fingerprint, imgbuild.base-created; POST ?do=start; ssh again (a layer whose last step is a `reboot`: this power cycle is that reboot)"),
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
