//! Build secrets (issue #10 item 3) and HTTPS (issue #13), through the real imgbuild binary with
//! the recording transport against an in-process cloudsim serving TLS with a generated CA.
//!
//! A secret declared by the recipe and given with `--secret NAME=env:VAR` reaches the guest as a
//! 0600 file (the recording transport writes the guest's files into its sandbox) and appears
//! nowhere else: not on stdout (the JSON manifest), stderr (progress), `--dry-run`, the image's
//! meta, nor the fingerprint (a new value finds the same image).

use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, TlsConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

const VALUE: &str = "s3cr3t-registry-token-4711";

const RECIPE: &str = r#"
name: secret-test
base: {distribution: Ubuntu, version: "24.04"}
disk_size: 10GiB
server: {cpu: 2000, mem: 2GiB, smp: 1}
vars:
  greeting: hello
secrets: [registry_token]
steps:
  - script: 10-login.sh
  - reboot: true
  - script: 20-again.sh
output:
  name: "secret-test-{{ build_time }}"
  meta:
    greeting: "{{ greeting }}"
"#;

struct Setup {
    emu: EmulatorHandle,
    dir: tempfile::TempDir,
    ca: PathBuf,
    recipe: PathBuf,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let emu = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::SelfSigned {
            ca_out: Some(ca.clone()),
            extra_names: vec![],
        }),
        ..EmulatorConfig::for_tests()
    })
    .await
    .expect("emulator starts");
    assert!(emu.api_url().starts_with("https://"));
    let rdir = dir.path().join("recipe");
    std::fs::create_dir(&rdir).unwrap();
    std::fs::write(rdir.join("recipe.yaml"), RECIPE).unwrap();
    for s in ["10-login.sh", "20-again.sh"] {
        std::fs::write(
            rdir.join(s),
            "#!/bin/bash\ntoken=$(cat \"$IMGBUILD_SECRETS/registry_token\")\ntest -n \"$token\"\n",
        )
        .unwrap();
    }
    Setup {
        emu,
        recipe: rdir.join("recipe.yaml"),
        dir,
        ca,
    }
}

impl Setup {
    fn sandbox(&self) -> PathBuf {
        self.dir.path().join("sandbox")
    }
    /// imgbuild against the HTTPS emulator, the token in `$CI_REGISTRY_TOKEN`.
    async fn run(&self, args: &[&str], token: &str) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg(&self.recipe)
            .arg("--api-url")
            .arg(self.emu.api_url())
            .arg("--plain")
            .arg("--transport")
            .arg(format!("local:{}", self.sandbox().display()))
            .args(args)
            .env("CLOUDSIGMA_USERNAME", self.emu.username())
            .env("CLOUDSIGMA_PASSWORD", self.emu.password())
            .env("CLOUDSIGMA_CONFIG", "")
            .env_remove("CLOUDSIGMA_CA_FILE")
            .env("CI_REGISTRY_TOKEN", token)
            .output()
            .await
            .expect("run imgbuild")
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_value(what: &str, s: &str, value: &str) {
    assert!(!s.contains(value), "the secret leaked into {what}:\n{s}");
}

fn ca_arg(s: &Setup) -> String {
    s.ca.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_guest_as_a_0600_file_and_nowhere_else_over_https() {
    let s = setup().await;
    let ca = ca_arg(&s);
    let secret = ["--secret", "registry_token=env:CI_REGISTRY_TOKEN"];
    let mut args = vec!["--ca-file", ca.as_str(), "--output", "json"];
    args.extend(secret);

    let out = s.run(&args, VALUE).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    // the guest's file, as the step reads it
    let f = s.sandbox().join("run/imgbuild/secrets/registry_token");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), VALUE);
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_no_value("stdout/stderr", &all, VALUE);
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON manifest");
    assert_no_value("the manifest", &manifest.to_string(), VALUE);
    let cloud = serde_json::to_string(&s.emu.snapshot()).unwrap();
    assert_no_value("the cloud's state (image meta)", &cloud, VALUE);
    // scripts are told where the secrets are, not what they are
    assert!(all.contains("step 3/3"), "{all}");

    // --dry-run names the secret, never reads it
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = s.run(&dry, VALUE).await;
    let plan = text(&out);
    assert_eq!(out.status.code(), Some(0), "{plan}");
    assert!(
        plan.contains("secrets") && plan.contains("registry_token"),
        "{plan}"
    );
    assert_no_value("--dry-run", &plan, VALUE);

    // a rotated secret is not part of the fingerprint: the same image is found
    let out = s.run(&args, "another-value-0815").await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("already built"), "{all}");
    assert_no_value("a cached run", &all, "another-value-0815");
    s.emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_checked_before_anything_is_created() {
    let s = setup().await;
    let ca = ca_arg(&s);
    // declared but not given
    let out = s.run(&["--ca-file", &ca], VALUE).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("needs secret(s) registry_token"),
        "{}",
        text(&out)
    );
    // given but not declared
    let out = s
        .run(
            &[
                "--ca-file",
                &ca,
                "--secret",
                "registry_token=env:CI_REGISTRY_TOKEN",
                "--secret",
                "other=env:CI_REGISTRY_TOKEN",
            ],
            VALUE,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("declares no such secret"),
        "{}",
        text(&out)
    );
    // an empty variable (an unset CI secret) is refused by name
    let out = s
        .run(
            &[
                "--ca-file",
                &ca,
                "--secret",
                "registry_token=env:CI_REGISTRY_TOKEN",
            ],
            "",
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("CI_REGISTRY_TOKEN is empty"),
        "{}",
        text(&out)
    );
    // a value pasted in place of a source is refused and not echoed
    let out = s
        .run(
            &[
                "--ca-file",
                &ca,
                "--secret",
                &format!("registry_token={VALUE}"),
            ],
            VALUE,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_no_value("a usage error", &text(&out), VALUE);
    assert_eq!(s.emu.snapshot().servers.len(), 0);
    assert_eq!(s.emu.snapshot().drives.len(), 0);
    s.emu.shutdown().await;
}

/// Without the CA the build stops at its first API call with a TLS error that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_the_build_fails_with_a_clear_tls_error() {
    let s = setup().await;
    let out = s
        .run(&["--secret", "registry_token=env:CI_REGISTRY_TOKEN"], VALUE)
        .await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("certificate") && all.contains("--ca-file"),
        "{all}"
    );
    // a CA file that is not there is named
    let missing = s.dir.path().join("nope.pem");
    let out = s
        .run(
            &[
                "--ca-file",
                missing.to_str().unwrap(),
                "--secret",
                "registry_token=env:CI_REGISTRY_TOKEN",
            ],
            VALUE,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nope.pem"), "{}", text(&out));
    s.emu.shutdown().await;
}

/// The library path: the secrets are written before every script (again after the reboot, which
/// empties /run), scripts get only the directory, and nothing recorded holds the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_go_before_every_script_and_scripts_get_only_the_dir() {
    use imgbuild::build::{Builder, Options};
    use imgbuild::cloud::{Auth, Cloud, Config};
    use imgbuild::progress::{Mode, Reporter};
    use imgbuild::recipe::Recipe;
    use imgbuild::secrets::{SecretArgs, ENV_DIR, GUEST_DIR};
    use imgbuild::transport::{LocalTransport, Recorded};
    let s = setup().await;
    let cfg = Config::for_url(
        &s.emu.api_url(),
        Auth::Basic {
            username: s.emu.username().into(),
            password: s.emu.password().into(),
        },
    )
    .unwrap()
    .with_ca_file(&s.ca);
    let t = LocalTransport::new(s.sandbox());
    let mut b = Builder::new(
        Cloud::new(cfg).unwrap(),
        std::sync::Arc::new(t.clone()),
        Reporter::new(Mode::Quiet),
        tokio_util::sync::CancellationToken::new(),
        Options::default(),
    );
    let token = s.dir.path().join("token");
    std::fs::write(&token, VALUE).unwrap();
    b.secrets = SecretArgs::parse(&[format!("registry_token=file:{}", token.display())])
        .unwrap()
        .read()
        .unwrap();
    let recipe = Recipe::load(&s.recipe, &Default::default()).expect("test recipe validates");
    assert_eq!(recipe.spec.secrets, ["registry_token"]);
    b.build(&recipe).await.expect("build");
    let rec = t.recorded();
    let kinds: Vec<&str> = rec
        .iter()
        .filter_map(|r| match r {
            Recorded::Secrets { names } => {
                assert_eq!(names, &["registry_token"]);
                Some("secrets")
            }
            Recorded::Script { env, .. } => {
                assert!(env.contains(&(ENV_DIR.to_string(), GUEST_DIR.to_string())));
                Some("script")
            }
            Recorded::Reboot => Some("reboot"),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        ["secrets", "script", "reboot", "secrets", "script"],
        "{rec:?}"
    );
    assert_no_value("the recorded operations", &format!("{rec:?}"), VALUE);
    s.emu.shutdown().await;
}

#[test]
fn secret_names_are_validated_with_the_recipe() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("10-login.sh"), "#!/bin/bash\n").unwrap();
    std::fs::write(d.path().join("20-again.sh"), "#!/bin/bash\n").unwrap();
    let f = d.path().join("recipe.yaml");
    std::fs::write(
        &f,
        RECIPE.replace("[registry_token]", "[Registry-Token, ok_one, ok_one]"),
    )
    .unwrap();
    let e = imgbuild::recipe::Recipe::load(&f, &Default::default())
        .expect_err("bad names refused")
        .to_string();
    assert!(
        e.contains("Registry-Token") && e.contains("ok_one") && e.contains("recipe.yaml:8"),
        "{e}"
    );
}
