//! `imgbuild`: build a CloudSigma node image from a recipe. See docs/imgbuild.md.
//!
//! Exit codes: see [`EXIT_CODES`] (also printed by `--help`).

use clap::{Args, Parser, Subcommand};
use imgbuild::build::{self, BuildError, Builder, Manifest, Options};
use imgbuild::cloud::{Cloud, Config, ConfigOverrides};
use imgbuild::progress::{Mode, Reporter};
use imgbuild::recipe::{self, Recipe};
use imgbuild::secrets::SecretArgs;
use imgbuild::transport::{OpenSsh, Transport};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What each exit code means (the `--help` epilogue and docs/imgbuild.md).
const EXIT_CODES: &str = "\
Exit codes:
  0    built (or already built)
  1    build failed; everything it created was deleted
  2    usage, configuration or recipe validation error
  3    failed or interrupted, and the cleanup left something behind (named on stderr; remove
       it with `imgbuild clean`), or --keep-on-failure kept the builder server and drive
  4    --matrix: some combinations failed, each one's cleanup complete; the others were built
       (the manifest's `status` says which)
  130  interrupted by SIGINT, 143 by SIGTERM, 129 by SIGHUP, after a complete cleanup";

#[derive(Parser)]
#[command(
    name = "imgbuild",
    version = env!("CLOUDSIGMA_BUILD_VERSION"),
    about = "Build CloudSigma-native node images from recipes",
    after_help = EXIT_CODES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an image (the default: `imgbuild RECIPE` is `imgbuild build RECIPE`).
    Build(Box<BuildArgs>),
    /// Check a recipe: syntax, step kinds, files, variables, sha256s. Prints every error as file:line.
    Validate {
        recipe: String,
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Remove leftovers of builds that were killed hard (build servers and build drives; never images).
    Clean {
        #[command(flatten)]
        cloud: CloudArgs,
        /// Only leftovers whose build started at least this many minutes ago.
        #[arg(long, default_value_t = 120)]
        older_than_minutes: u64,
        /// Every leftover regardless of age (do not run while a build is in progress).
        #[arg(long)]
        all: bool,
        /// List what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Also remove cached base layers (`imgbuild-base-…`) captured at least
        /// --older-than-minutes ago (every one with --all). Without it they are only listed.
        #[arg(long)]
        bases: bool,
    },
}

#[derive(Args, Clone, Default)]
struct CloudArgs {
    /// CloudSigma location, e.g. zrh (https://zrh.cloudsigma.com/api/2.0/).
    #[arg(long)]
    region: Option<String>,
    /// API base URL (e.g. an emulator: http://127.0.0.1:PORT/api/2.0/).
    #[arg(long)]
    api_url: Option<String>,
    #[arg(long)]
    username: Option<String>,
    /// Name of an environment variable holding the password (never pass secrets as arguments).
    #[arg(long, value_name = "VAR")]
    password_from_env: Option<String>,
    /// Name of an environment variable holding a bearer token.
    #[arg(long, value_name = "VAR")]
    token_from_env: Option<String>,
    /// Config file (default $CLOUDSIGMA_CONFIG or ~/.config/cloudsigma/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for the API (default $CLOUDSIGMA_CA_FILE, or
    /// `ca_file` in the config file), e.g. the file of `cloudsim --tls-self-signed-ca`.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct BuildArgs {
    /// Recipe name (under image-recipes/), directory or recipe.yaml path.
    recipe: Option<String>,
    #[command(flatten)]
    cloud: CloudArgs,
    /// Override a recipe variable (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Build every combination of these values (repeatable: the cartesian product), e.g.
    /// `--matrix kubernetes_version=1.33.5,1.34.1 --matrix location=zrh,fra`. `location`
    /// selects the API endpoint (https://LOC.cloudsigma.com/api/2.0/, or see --location-url);
    /// every other name is a recipe variable.
    #[arg(long = "matrix", value_name = "NAME=V1,V2,...")]
    matrix: Vec<String>,
    /// How many matrix combinations build at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// The API URL of one matrix location instead of https://LOC.cloudsigma.com/api/2.0/
    /// (repeatable; e.g. an emulator per location). `--api-url` with `{location}` in it also
    /// works.
    #[arg(long = "location-url", value_name = "LOC=URL")]
    location_urls: Vec<String>,
    /// A secret the recipe declares under `secrets:`, from an environment variable or a file
    /// (repeatable). Scripts read it from $IMGBUILD_SECRETS/NAME; it is never printed, put on a
    /// command line, in the manifest or in the fingerprint.
    #[arg(long = "secret", value_name = "NAME=env:VAR|NAME=file:PATH")]
    secrets: Vec<String>,
    /// `text` prints the image uuid; `json` prints a manifest.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    /// Print every phase, step and API call without making any.
    #[arg(long)]
    dry_run: bool,
    /// Build even if an image with the same fingerprint exists.
    #[arg(long)]
    force: bool,
    /// On failure keep the server and drive for debugging (they cost money: `imgbuild clean --all`).
    /// With --verify, a candidate that fails keeps its verify server and clone too.
    #[arg(long)]
    keep_on_failure: bool,
    /// Neither use nor capture the recipe's cached base layer (`base_until`). Default: a build
    /// starts from the layer of its base fingerprint when one exists, and captures it otherwise.
    #[arg(long)]
    no_base_cache: bool,
    /// Before the image gets its name and tags, boot a larger clone of it with bootstrap data
    /// that joins nothing and run the checks (built-in and the recipe's `verify:`) over SSH; a
    /// candidate that fails is deleted. Default: off.
    #[arg(long)]
    verify: bool,
    /// vCPUs of the builder and verify servers instead of the recipe's `server.smp`. The image
    /// does not depend on it (not in the fingerprint: cached images and layers stay valid). For
    /// a host that runs the builders itself, e.g. cloudsim on 2 cores with `--jobs 2`: 1 keeps
    /// two emulated builders from overcommitting the cores.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32))]
    builder_smp: Option<u32>,
    /// SSH login user (default: the recipe's ssh_user, else the library drive's default_user).
    #[arg(long)]
    ssh_user: Option<String>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    plain: bool,
    /// Testing only (feature `test-seams`): `local:DIR` provisions through a recording transport
    /// instead of SSH; without the feature every value is refused.
    #[arg(long, hide = true)]
    transport: Option<String>,
    /// Testing only: SSH port instead of 22.
    #[arg(long, hide = true, default_value_t = 22)]
    ssh_port: u16,
    /// One SSH connection per operation instead of one shared connection per build (to measure
    /// the difference, or for a guest whose sshd refuses multiplexed sessions).
    /// (The variable takes 1/true/yes; 0/false/no/empty leave multiplexing on.)
    #[arg(long, hide = true, env = "IMGBUILD_SSH_NO_MULTIPLEX",
          value_parser = clap::builder::FalseyValueParser::new())]
    ssh_no_multiplex: bool,
}

/// The recording transport of `--transport local:DIR` (feature `test-seams`: tests and benches).
#[cfg(feature = "test-seams")]
fn local_transport(dir: &str, cancel: &CancellationToken) -> Arc<dyn Transport> {
    let mut lt = imgbuild::transport::LocalTransport::new(PathBuf::from(dir));
    // lets tests land a signal inside provisioning
    if let Some(ms) = std::env::var("IMGBUILD_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        lt.delay = Duration::from_millis(ms);
    }
    lt.cancel = Some(cancel.clone());
    Arc::new(lt)
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_LEFTOVERS: u8 = 3;

fn cloud_from(a: &CloudArgs) -> Result<Cloud, String> {
    let from_env = |v: &Option<String>, what: &str| -> Result<Option<String>, String> {
        match v {
            None => Ok(None),
            Some(name) => std::env::var(name).map(Some).map_err(|_| {
                format!("--{what}-from-env {name}: that environment variable is not set")
            }),
        }
    };
    let o = ConfigOverrides {
        api_url: a.api_url.clone(),
        region: a.region.clone(),
        username: a.username.clone(),
        password: from_env(&a.password_from_env, "password")?,
        token: from_env(&a.token_from_env, "token")?,
        config_file: a.config.clone(),
    };
    let mut cfg = Config::resolve(&o).map_err(|e| e.to_string())?;
    if let Some(p) = &a.ca_file {
        cfg = cfg.with_ca_file(p);
    }
    Cloud::new(cfg).map_err(|e| e.to_string())
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// A line on stderr that cannot fail: after SIGHUP the terminal is gone (writes fail with EIO,
/// or EPIPE when stderr was a pipe), and `eprintln!` would panic in the middle of cleanup.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// SIGINT, SIGTERM and SIGHUP (the terminal went away): the first cancels the build, which then
/// deletes what it created; the second only says that cleanup is running, because leaving now
/// would leave the billed server and drive behind; the third abandons the cleanup, which then
/// names what it leaves. No path calls `process::exit`: `main` returns, so the transport is
/// dropped and its private dir with the key removed whatever the signals.
fn install_signals(cancel: CancellationToken, abandon: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            say!("imgbuild: cannot install signal handlers; a signal would skip cleanup");
            return;
        };
        let mut n = 0;
        loop {
            let code = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
                _ = hup.recv() => 129,
            };
            n += 1;
            match n {
                1 => {
                    SIGNAL.store(code, Ordering::SeqCst);
                    say!("imgbuild: interrupted; cleaning up what this build created");
                    cancel.cancel();
                }
                2 => say!("imgbuild: still cleaning up (the builder server and drive are billed while they exist); signal once more to abandon the cleanup"),
                _ => {
                    say!("imgbuild: abandoning the cleanup; run `imgbuild clean --all` to remove leftovers");
                    abandon.cancel();
                }
            }
        }
    });
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Validate { recipe, vars }) => validate(&recipe, &vars),
        Some(Cmd::Clean {
            cloud,
            older_than_minutes,
            all,
            dry_run,
            bases,
        }) => {
            let c = match cloud_from(&cloud) {
                Ok(c) => c,
                Err(e) => {
                    say!("imgbuild: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let rep = build::clean_with_bases(
                &c,
                Duration::from_secs(older_than_minutes * 60),
                all,
                bases,
                dry_run,
                &|l| say!("{l}"),
            )
            .await;
            match rep {
                Ok(r) => {
                    say!(
                        "{} {} server(s), {} drive(s), {} base layer(s); {} base layer(s) kept",
                        if dry_run { "would remove" } else { "removed" },
                        r.servers.len(),
                        r.drives.len(),
                        r.bases.len(),
                        r.bases_kept.len()
                    );
                    for f in &r.failed {
                        say!("could not remove {f}");
                    }
                    if r.failed.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_LEFTOVERS)
                    }
                }
                Err(e) => {
                    say!("imgbuild clean: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Some(Cmd::Build(b)) => run_build(*b).await,
        None => run_build(cli.build).await,
    }
}

fn load(recipe_arg: &str, vars: &[String]) -> Result<Recipe, ExitCode> {
    let file = recipe::locate(recipe_arg).map_err(|e| {
        eprintln!("imgbuild: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let overrides = recipe::parse_overrides(vars).map_err(|e| {
        eprintln!("imgbuild: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    Recipe::load(&file, &overrides).map_err(|d| {
        eprintln!("{d}");
        eprintln!(
            "imgbuild: {} error(s) in recipe {}",
            d.0.len(),
            file.display()
        );
        ExitCode::from(EXIT_USAGE)
    })
}

fn validate(recipe_arg: &str, vars: &[String]) -> ExitCode {
    match load(recipe_arg, vars) {
        Ok(r) => {
            println!(
                "{}: ok ({} steps, {} files, vars: {})",
                r.file.display(),
                r.steps.len(),
                r.files.len(),
                r.vars.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(c) => c,
    }
}

fn build_options(a: &BuildArgs) -> Options {
    Options {
        force: a.force,
        keep_on_failure: a.keep_on_failure,
        ssh_user: a.ssh_user.clone(),
        ssh_port: a.ssh_port,
        no_base_cache: a.no_base_cache,
        verify: a.verify,
        on_phase: None,
    }
}

/// `--dry-run` with `--api-url` or `--region` given and a recipe with a base layer: what
/// base-lookup would find (GETs only). Nothing when no endpoint is given or the look fails.
async fn dry_run_look(a: &BuildArgs, recipe: &Recipe) -> Option<imgbuild::plan::LayerLook> {
    let wanted = recipe.base_steps.is_some() && !a.no_base_cache && recipe.base_off.is_none();
    if !wanted || (a.cloud.api_url.is_none() && a.cloud.region.is_none()) {
        return None;
    }
    let cloud = cloud_from(&a.cloud).ok()?;
    match build::look_base_layer(&cloud, recipe).await {
        Ok(l) => l,
        Err(e) => {
            say!("imgbuild: --dry-run: base layer not looked up ({e})");
            None
        }
    }
}

async fn run_build(a: BuildArgs) -> ExitCode {
    let Some(recipe_arg) = a.recipe.clone() else {
        say!("imgbuild: no recipe given. Usage: imgbuild RECIPE [--region R | --api-url URL] [--var k=v]... (see --help)");
        return ExitCode::from(EXIT_USAGE);
    };
    if !a.matrix.is_empty() {
        return run_matrix(a, &recipe_arg).await;
    }
    if !a.location_urls.is_empty() {
        say!("imgbuild: --location-url applies to --matrix location=...; for one build use --api-url");
        return ExitCode::from(EXIT_USAGE);
    }
    let recipe = match load(&recipe_arg, &a.vars) {
        Ok(r) => with_builder_smp(r, a.builder_smp),
        Err(c) => return c,
    };
    let secret_args = match SecretArgs::parse(&a.secrets)
        .and_then(|s| s.check(&recipe.spec.secrets).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => {
            say!("imgbuild: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let opts = build_options(&a);
    if a.dry_run {
        // no cloud needed: the plan is derived from the recipe alone (plus, with an endpoint
        // given, a read-only look for the recipe's base layer)
        let look = dry_run_look(&a, &recipe).await;
        print!(
            "{}",
            imgbuild::plan::plan_with(&recipe, &opts, a.cloud.api_url.as_deref(), look.as_ref())
        );
        return ExitCode::SUCCESS;
    }
    // read only now: --dry-run names the secrets without reading them
    let secrets = match secret_args.read() {
        Ok(s) => s,
        Err(e) => {
            say!("imgbuild: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cloud = match cloud_from(&a.cloud) {
        Ok(c) => c,
        Err(e) => {
            say!("imgbuild: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cancel = CancellationToken::new();
    let abandon = CancellationToken::new();
    install_signals(cancel.clone(), abandon.clone());
    let transport = match transport(&a, &recipe, &cancel, "").await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mode = if a.plain { Mode::Plain } else { Mode::detect() };
    let reporter = Reporter::new(mode);
    let mut builder = Builder::new(cloud, transport, reporter.clone(), cancel, opts);
    builder.abandon = abandon;
    builder.secrets = secrets;
    let res = builder.build(&recipe).await;
    reporter.finish();
    match res {
        Ok(m) => print_result(&m, &a.output),
        Err(e) => exit_for(&e),
    }
}

/// The cloud of one matrix location: `--location-url LOC=URL`, else `--api-url` with
/// `{location}` replaced, else the region LOC. A plain `--api-url` or `--region` names one
/// endpoint, which cannot serve several locations: refused.
fn cloud_for_location(
    a: &CloudArgs,
    loc: &str,
    urls: &[(String, String)],
) -> Result<Cloud, String> {
    let mut c = a.clone();
    if let Some((_, url)) = urls.iter().find(|(l, _)| l == loc) {
        c.api_url = Some(url.clone());
        c.region = None;
    } else if let Some(u) = a.api_url.as_deref().filter(|u| u.contains("{location}")) {
        c.api_url = Some(u.replace("{location}", loc));
        c.region = None;
    } else if a.api_url.is_some() || a.region.is_some() {
        return Err(format!(
            "--matrix location: --api-url/--region name one endpoint; give --location-url {loc}=URL, put {{location}} in --api-url, or drop them (https://{loc}.cloudsigma.com/api/2.0/)"
        ));
    } else {
        c.region = Some(loc.to_string());
    }
    cloud_from(&c).map_err(|e| format!("location {loc}: {e}"))
}

/// `--location-url LOC=URL` arguments, each LOC a value of `--matrix location`.
fn location_urls(
    given: &[String],
    axes: &[imgbuild::matrix::Axis],
) -> Result<Vec<(String, String)>, String> {
    use imgbuild::matrix;
    let mut urls = Vec::new();
    for u in given {
        match u.split_once('=') {
            Some((l, url)) if !l.is_empty() && !url.is_empty() => {
                urls.push((l.to_string(), url.to_string()))
            }
            _ => return Err(format!("--location-url {u:?}: expected LOC=URL")),
        }
    }
    let locations = axes.iter().find(|x| x.name == matrix::LOCATION);
    for (l, _) in &urls {
        if !locations.is_some_and(|x| x.values.contains(l)) {
            return Err(format!(
                "--location-url {l}: {l} is not a value of --matrix location"
            ));
        }
    }
    Ok(urls)
}

/// `--dry-run` of a matrix: each combination's plan under a `# [label]` line.
fn print_matrix_plan(
    combos: &[imgbuild::matrix::Combo],
    recipes: &[Recipe],
    opts: &Options,
    api_url: Option<&str>,
    urls: &[(String, String)],
) {
    for (c, r) in combos.iter().zip(recipes) {
        let url = match c.location() {
            Some(l) => urls
                .iter()
                .find(|(x, _)| x == l)
                .map(|(_, u)| u.clone())
                .or_else(|| api_url.map(|u| u.replace("{location}", l)))
                .or_else(|| Some(format!("https://{l}.cloudsigma.com/api/2.0/"))),
            None => api_url.map(str::to_string),
        };
        println!("# {}", c.label());
        print!("{}", imgbuild::plan::plan(r, opts, url.as_deref()));
    }
}

/// `--builder-smp`: the servers' vCPUs over the recipe's (after the fingerprint's inputs were
/// read: the recipe text is unchanged, so is the fingerprint).
fn with_builder_smp(mut r: Recipe, smp: Option<u32>) -> Recipe {
    if smp.is_some() {
        r.spec.server.smp = smp;
    }
    r
}

/// Each combination's recipe, with its variables over the `--var` ones.
fn load_matrix(
    recipe_arg: &str,
    vars: &[String],
    combos: &[imgbuild::matrix::Combo],
) -> Result<Vec<Recipe>, ExitCode> {
    let mut recipes = Vec::with_capacity(combos.len());
    for c in combos {
        let mut vars = vars.to_vec();
        vars.extend(c.vars().into_iter().map(|(k, v)| format!("{k}={v}")));
        match load(recipe_arg, &vars) {
            Ok(r) => recipes.push(r),
            Err(code) => {
                say!("imgbuild: in matrix combination {}", c.label());
                return Err(code);
            }
        }
    }
    Ok(recipes)
}

/// `--matrix`: every combination is loaded and configured before the first build starts (a
/// usage error in any is exit 2 with nothing created); then at most `--jobs` build at once.
async fn run_matrix(a: BuildArgs, recipe_arg: &str) -> ExitCode {
    use imgbuild::matrix;
    let usage = |e: String| {
        say!("imgbuild: {e}");
        ExitCode::from(EXIT_USAGE)
    };
    let axes = match matrix::parse(&a.matrix) {
        Ok(x) => x,
        Err(e) => return usage(e),
    };
    let urls = match location_urls(&a.location_urls, &axes) {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    let combos = matrix::combinations(&axes);
    let recipes = match load_matrix(recipe_arg, &a.vars, &combos) {
        Ok(r) => r
            .into_iter()
            .map(|r| with_builder_smp(r, a.builder_smp))
            .collect::<Vec<_>>(),
        Err(code) => return code,
    };
    let secret_args = match SecretArgs::parse(&a.secrets)
        .and_then(|s| s.check(&recipes[0].spec.secrets).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return usage(e.to_string()),
    };
    let opts = build_options(&a);
    if a.dry_run {
        print_matrix_plan(&combos, &recipes, &opts, a.cloud.api_url.as_deref(), &urls);
        return ExitCode::SUCCESS;
    }
    let secrets = match secret_args.read() {
        Ok(s) => s,
        Err(e) => return usage(e.to_string()),
    };
    let mut clouds = Vec::with_capacity(combos.len());
    for c in &combos {
        let cloud = match c.location() {
            Some(l) => cloud_for_location(&a.cloud, l, &urls),
            None => cloud_from(&a.cloud),
        };
        match cloud {
            Ok(x) => clouds.push(x),
            Err(e) => return usage(e),
        }
    }
    let cancel = CancellationToken::new();
    let abandon = CancellationToken::new();
    install_signals(cancel.clone(), abandon.clone());
    // one progress view of plain lines, each prefixed with its combination: a spinner per
    // concurrent build would overwrite the others
    let mode = if a.plain { Mode::Plain } else { Mode::detect() };
    let reporter = Reporter::new(if mode == Mode::Fancy {
        Mode::Plain
    } else {
        mode
    });
    let mut work = Vec::with_capacity(combos.len());
    for ((c, r), cloud) in combos.into_iter().zip(recipes).zip(clouds) {
        let suffix = format!("m{}", c.index);
        let transport = match transport(&a, &r, &cancel, &suffix).await {
            Ok(t) => t,
            Err(code) => return code,
        };
        let mut b = Builder::new(
            cloud,
            transport,
            reporter.prefixed(&c.label()),
            cancel.clone(),
            opts.clone(),
        );
        b.abandon = abandon.clone();
        b.secrets = secrets.clone();
        work.push(matrix::Job {
            combo: c,
            builder: b,
            recipe: r,
        });
    }
    let name = work
        .first()
        .map(|j| j.recipe.spec.name.clone())
        .unwrap_or_default();
    let m = matrix::run(&name, work, usize::from(a.jobs)).await;
    reporter.finish();
    print_matrix(&m, &a.output)
}

/// A summary line per combination on stderr; the matrix manifest (or with `--output text` one
/// line per combination) on stdout; the exit code of [`imgbuild::matrix::MatrixManifest::exit_code`].
fn print_matrix(m: &imgbuild::matrix::MatrixManifest, output: &str) -> ExitCode {
    use imgbuild::matrix;
    for e in &m.combinations {
        match e.status {
            matrix::Status::Built | matrix::Status::Reused => say!(
                "{} {}: {} ({})",
                e.label,
                e.status.as_str(),
                e.image_name.as_deref().unwrap_or(""),
                e.drive_uuid.as_deref().unwrap_or("")
            ),
            _ => say!(
                "{} {}: {}{}",
                e.label,
                e.status.as_str(),
                e.error.as_deref().unwrap_or(""),
                if e.left.is_empty() {
                    String::new()
                } else {
                    format!("; left behind: {}", e.left.join(", "))
                }
            ),
        }
    }
    say!(
        "matrix: {} built, {} reused, {} failed",
        m.built,
        m.reused,
        m.failed
    );
    let out = if output == "json" {
        serde_json::to_string_pretty(m).map_err(|e| e.to_string())
    } else {
        Ok(m.combinations
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e.label,
                    e.status.as_str(),
                    e.drive_uuid.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"))
    };
    use std::io::Write as _;
    if let Err(e) = out.and_then(|o| writeln!(std::io::stdout(), "{o}").map_err(|e| e.to_string()))
    {
        say!("imgbuild: cannot print the matrix manifest: {e}");
        return ExitCode::from(EXIT_FAILED.max(m.exit_code(SIGNAL.load(Ordering::SeqCst))));
    }
    ExitCode::from(m.exit_code(SIGNAL.load(Ordering::SeqCst)))
}

/// The OpenSSH transport with the build's keys, or (tests) the recording one. `suffix` tells
/// the builds of a matrix apart (their own key dir, or sandbox under `local:DIR`).
async fn transport(
    a: &BuildArgs,
    recipe: &Recipe,
    #[allow(unused_variables)] cancel: &CancellationToken,
    suffix: &str,
) -> Result<Arc<dyn Transport>, ExitCode> {
    match a.transport.as_deref() {
        #[cfg(feature = "test-seams")]
        Some(t) if t.starts_with("local:") => {
            let mut dir = PathBuf::from(&t["local:".len()..]);
            if !suffix.is_empty() {
                dir.push(suffix);
            }
            Ok(local_transport(&dir.to_string_lossy(), cancel))
        }
        Some(t) => {
            say!("imgbuild: unknown --transport {t:?}");
            Err(ExitCode::from(EXIT_USAGE))
        }
        None => match OpenSsh::new(&match suffix {
            "" => format!("imgbuild-{}", recipe.spec.name),
            s => format!("imgbuild-{}-{s}", recipe.spec.name),
        })
        .await
        {
            Ok(t) if a.ssh_no_multiplex => Ok(Arc::new(t.without_multiplexing())),
            Ok(t) => Ok(Arc::new(t)),
            Err(e) => {
                say!("imgbuild: {e}");
                Err(ExitCode::from(EXIT_FAILED))
            }
        },
    }
}

/// A summary on stderr; the image uuid (or with `--output json` the manifest) on stdout.
fn print_result(m: &Manifest, output: &str) -> ExitCode {
    say!(
        "image {} ({}){} in {:.1}s, {} API calls",
        m.image_name,
        m.image_uuid,
        if m.cached { " already built" } else { " built" },
        m.stats.wall_ms as f64 / 1000.0,
        m.stats.api_calls
    );
    let out = if output == "json" {
        serde_json::to_string_pretty(m).map_err(|e| e.to_string())
    } else {
        Ok(m.image_uuid.clone())
    };
    use std::io::Write as _;
    match out.and_then(|o| writeln!(std::io::stdout(), "{o}").map_err(|e| e.to_string())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!(
                "imgbuild: cannot print the result (image {}): {e}",
                m.image_uuid
            );
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The exit code of a failed or interrupted build (see [`EXIT_CODES`]).
fn exit_for(e: &BuildError) -> ExitCode {
    say!("imgbuild: {e}");
    let left = !e.cleanup().left.is_empty();
    match e {
        // Leftovers decide first: a CI job must tell "interrupted, nothing billed is
        // left" from "interrupted, run `imgbuild clean`" (issue #10).
        BuildError::Interrupted { .. } if left => ExitCode::from(EXIT_LEFTOVERS),
        BuildError::Interrupted { .. } => {
            let code = SIGNAL.load(Ordering::SeqCst);
            ExitCode::from(if matches!(code, 129 | 143) {
                code as u8
            } else {
                130
            })
        }
        BuildError::Failed { kept, .. } if left || *kept => ExitCode::from(EXIT_LEFTOVERS),
        BuildError::Failed { .. } => ExitCode::from(EXIT_FAILED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_multiplex(args: &[&str]) -> bool {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.cmd {
            Some(Cmd::Build(b)) => b.ssh_no_multiplex,
            _ => cli.build.ssh_no_multiplex,
        }
    }

    #[test]
    fn a_matrix_location_picks_its_endpoint() {
        // an empty config file: nothing from this machine's own configuration
        let cfg = tempfile::NamedTempFile::new().unwrap();
        let base = CloudArgs {
            username: Some("u".into()),
            config: Some(cfg.path().to_path_buf()),
            ..Default::default()
        };
        let url = |a: &CloudArgs, loc: &str, urls: &[(String, String)]| {
            cloud_for_location(a, loc, urls).map(|c| c.base_url().to_string())
        };
        // the password by name, as on the command line (a variable no other test uses)
        std::env::set_var("IMGBUILD_TEST_PW", "pw");
        let a = CloudArgs {
            password_from_env: Some("IMGBUILD_TEST_PW".into()),
            ..base
        };
        assert_eq!(
            url(&a, "fra", &[]).unwrap(),
            "https://fra.cloudsigma.com/api/2.0/"
        );
        let urls = [("zrh".to_string(), "http://127.0.0.1:9/api/2.0/".to_string())];
        assert_eq!(
            url(&a, "zrh", &urls).unwrap(),
            "http://127.0.0.1:9/api/2.0/"
        );
        let tmpl = CloudArgs {
            api_url: Some("https://{location}.example.net/api/2.0/".into()),
            ..a.clone()
        };
        assert_eq!(
            url(&tmpl, "sjc", &[]).unwrap(),
            "https://sjc.example.net/api/2.0/"
        );
        let one = CloudArgs {
            region: Some("zrh".into()),
            ..a.clone()
        };
        assert!(url(&one, "fra", &[])
            .unwrap_err()
            .contains("name one endpoint"));
        assert!(url(&a, "no/such", &[]).is_err(), "an invalid location");
    }

    // One test owns the variable, so setting it races with nothing.
    #[test]
    fn ssh_no_multiplex_from_flag_and_environment() {
        std::env::remove_var("IMGBUILD_SSH_NO_MULTIPLEX");
        assert!(!no_multiplex(&["imgbuild", "r"]));
        assert!(no_multiplex(&["imgbuild", "r", "--ssh-no-multiplex"]));
        assert!(no_multiplex(&[
            "imgbuild",
            "build",
            "r",
            "--ssh-no-multiplex"
        ]));
        for (v, want) in [
            ("1", true),
            ("true", true),
            ("yes", true),
            ("0", false),
            ("false", false),
            ("", false),
        ] {
            std::env::set_var("IMGBUILD_SSH_NO_MULTIPLEX", v);
            assert_eq!(no_multiplex(&["imgbuild", "r"]), want, "{v:?}");
        }
        std::env::remove_var("IMGBUILD_SSH_NO_MULTIPLEX");
    }
}
