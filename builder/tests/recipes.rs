//! Recipe validation (every error with file and line) and shellcheck of the shipped scripts.

use imgbuild::recipe::{Diag, Recipe};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const GOOD: &str = r#"name: t
base:
  distribution: Ubuntu
  version: "24.04"
disk_size: 10GiB
server:
  cpu: 2000
  mem: 2GiB
vars:
  k8s: "1.34.1"
steps:
  - script: a.sh
  - upload: f.bin
    dest: /usr/local/bin/f
    mode: "0755"
  - reboot: true
output:
  name: "t-{{ k8s }}-{{ build_time }}"
"#;

fn setup(recipe: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.sh"), "#!/bin/sh\necho a\n").unwrap();
    std::fs::write(d.path().join("f.bin"), "payload").unwrap();
    let p = d.path().join("recipe.yaml");
    std::fs::write(&p, recipe).unwrap();
    (d, p)
}

fn errors(recipe: &str, vars: &[(&str, &str)]) -> Vec<Diag> {
    let (_d, p) = setup(recipe);
    let v: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Recipe::load(&p, &v) {
        Ok(_) => Vec::new(),
        Err(e) => {
            for d in &e.0 {
                assert_eq!(d.file, p, "diagnostics name the recipe file");
            }
            e.0
        }
    }
}

fn assert_err(recipe: &str, vars: &[(&str, &str)], line: usize, needle: &str) {
    let errs = errors(recipe, vars);
    assert!(
        errs.iter()
            .any(|d| d.line == Some(line) && d.message.contains(needle)),
        "expected an error at line {line} containing {needle:?}, got {errs:#?}"
    );
}

#[test]
fn good_recipe_validates() {
    assert!(errors(GOOD, &[]).is_empty());
    assert!(errors(GOOD, &[("k8s", "1.35.0")]).is_empty());
}

#[test]
fn yaml_and_schema_errors_carry_lines() {
    // unknown key (typo) inside server:
    assert_err(
        &GOOD.replace("  mem: 2GiB", "  mem: 2GiB\n  memory: 3"),
        &[],
        9,
        "memory",
    );
    // broken YAML
    assert_err(
        &GOOD.replace("  - reboot: true", "  - reboot: [true"),
        &[],
        16,
        "",
    );
    // bad size unit
    assert_err(&GOOD.replace("10GiB", "10 parsecs"), &[], 5, "size");
}

#[test]
fn step_errors_carry_the_step_line() {
    // two kinds in one step
    assert_err(
        &GOOD.replace("  - script: a.sh", "  - script: a.sh\n    reboot: true"),
        &[],
        12,
        "exactly one of",
    );
    // missing script file
    assert_err(
        &GOOD.replace("script: a.sh", "script: ../common/missing.sh"),
        &[],
        12,
        "cannot be read",
    );
    // upload without dest
    assert_err(
        &GOOD.replace("    dest: /usr/local/bin/f\n", ""),
        &[],
        13,
        "needs `dest`",
    );
    // bad mode
    assert_err(&GOOD.replace("\"0755\"", "\"0955\""), &[], 15, "octal");
    // sha256 mismatch of an upload
    assert_err(&GOOD.replace("    mode: \"0755\"", "    mode: \"0755\"\n    sha256: 0000000000000000000000000000000000000000000000000000000000000000"), &[], 16, "sha256");
}

#[test]
fn variable_errors() {
    // unknown variable in a template
    assert_err(
        &GOOD.replace("{{ k8s }}", "{{ k8s_version }}"),
        &[],
        18,
        "k8s_version",
    );
    // unknown --var
    assert_err(GOOD, &[("nope", "1")], 9, "unknown variable");
    // every error is reported, not only the first
    let many = GOOD
        .replace("script: a.sh", "script: missing.sh")
        .replace("{{ k8s }}", "{{ zzz }}");
    assert!(errors(&many, &[("nope", "1")]).len() >= 3);
}

#[test]
fn matching_sha256_passes() {
    let (d, _) = setup(GOOD);
    let sha = imgbuild::recipe::sha256_file(&d.path().join("f.bin")).unwrap();
    let r = GOOD.replace(
        "    mode: \"0755\"",
        &format!("    mode: \"0755\"\n    sha256: {sha}"),
    );
    assert!(errors(&r, &[]).is_empty());
}

#[test]
fn validate_cli_exit_codes_and_output() {
    let (d, p) = setup(&GOOD.replace("script: a.sh", "script: nope.sh"));
    let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("validate")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:12:", p.display())), "{err}");
    std::fs::write(d.path().join("nope.sh"), "echo\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("validate")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// imgbuild with no environment but PATH, its home and config dir in `home`.
fn imgbuild_in(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home);
    c
}

#[test]
fn build_without_any_cloud_configuration_refuses() {
    let (d, p) = setup(GOOD);
    let out = imgbuild_in(d.path()).arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no CloudSigma endpoint configured"), "{err}");
}

/// A typo in the config file: exit 2, the key and its place named, the value (a password) not.
#[test]
fn a_broken_config_file_is_refused_without_echoing_the_value() {
    let (d, p) = setup(GOOD);
    let cfg = d.path().join("cs.toml");
    std::fs::write(&cfg, "region = \"zrh\"\npasword = \"hunter2-Xq9\"\n").unwrap();
    let out = imgbuild_in(d.path())
        .arg(&p)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    assert!(
        err.contains("line 2, column 1") && err.contains("did you mean `password`"),
        "{err}"
    );
}

#[test]
fn dry_run_needs_no_cloud_and_prints_the_plan() {
    let (_d, p) = setup(GOOD);
    let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg(&p)
        .arg("--dry-run")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("POST libdrives/<base>/action/?do=clone") && s.contains("[3/3] reboot"),
        "{s}"
    );
}

#[test]
fn builder_smp_sizes_the_servers_and_is_checked() {
    let (_d, p) = setup(GOOD);
    let plan = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg(&p)
            .arg("--dry-run")
            .args(extra)
            .output()
            .unwrap()
    };
    let out = plan(&[]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(" smp=1 "), "the recipe's (none: 1): {s}");
    let out = plan(&["--builder-smp", "3"]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(" smp=3 ") && !s.contains(" smp=1 "), "{s}");
    for bad in ["0", "33", "two"] {
        let out = plan(&["--builder-smp", bad]);
        assert_eq!(out.status.code(), Some(2), "--builder-smp {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--builder-smp"), "{err}");
    }
}

fn scripts_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            scripts_under(&p, out);
        } else if p.extension().map(|x| x == "sh").unwrap_or(false) {
            out.push(p);
        }
    }
}

#[test]
fn shipped_recipe_scripts_pass_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes");
    let mut scripts = Vec::new();
    scripts_under(&root, &mut scripts);
    assert!(
        scripts.len() >= 7,
        "expected the shipped scripts, found {scripts:?}"
    );
    let out = match Command::new("shellcheck")
        .arg("--severity=style")
        .args(&scripts)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            if std::env::var("CLOUDSIGMA_K8S_ALLOW_SKIP").as_deref() == Ok("1") {
                eprintln!(
                    "SKIPPED: shellcheck not installed ({e}); install it with scripts/install-deps"
                );
                return;
            }
            panic!("shellcheck is required (scripts/install-deps installs it): {e}");
        }
    };
    assert!(
        out.status.success(),
        "shellcheck findings:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn shipped_recipe_validates_with_its_files() {
    let d = tempfile::tempdir().unwrap();
    let agent = d.path().join("agent");
    std::fs::write(&agent, "x").unwrap();
    let mut v = BTreeMap::new();
    v.insert("agent_binary".to_string(), agent.display().to_string());
    v.insert("bootstrap_unit".to_string(), agent.display().to_string());
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes/ubuntu-k8s/recipe.yaml");
    let r = Recipe::load(&file, &v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.vars["kubernetes_version"], "1.34.1");
    assert_eq!(r.vars["containerd_version"], "1.7.28");
    // unknown override is refused
    v.insert("kubernetes_verison".into(), "1".into());
    assert!(Recipe::load(&file, &v).is_err());
}

/// `when` keeps or drops a step by the recipe's variables, decided at load time; a name it uses
/// must be declared.
#[test]
fn when_selects_steps_by_variable() {
    let recipe = GOOD
        .replace(
            "vars:\n  k8s: \"1.34.1\"\n",
            "vars:\n  k8s: \"1.34.1\"\n  source: pkgs\n",
        )
        .replace(
            "  - reboot: true\n",
            "  - reboot: true\n    when: source == \"local\"\n",
        );
    let (_d, p) = setup(&recipe);
    let load = |source: &str| {
        let v = BTreeMap::from([("source".to_string(), source.to_string())]);
        Recipe::load(&p, &v).unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(load("pkgs").steps.len(), 2, "the reboot step is dropped");
    assert_eq!(load("local").steps.len(), 3, "the reboot step is kept");
    let bad = recipe.replace("when: source ==", "when: sorce ==");
    assert_err(&bad, &[], 18, "unknown variable(s) sorce");
}

/// An upload of a directory is one checked upload per regular file beneath it, each keeping its
/// permission bits unless the step sets `mode`; an empty source names the variable to set.
#[test]
fn directory_upload_expands_to_files() {
    use std::os::unix::fs::PermissionsExt;
    let (d, p) = setup(
        &GOOD
            .replace("upload: f.bin", "upload: art")
            .replace("    mode: \"0755\"\n", ""),
    );
    std::fs::create_dir_all(d.path().join("art/bin")).unwrap();
    std::fs::write(d.path().join("art/bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        d.path().join("art/bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(d.path().join("art/readme"), "r").unwrap();
    std::fs::set_permissions(
        d.path().join("art/readme"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let r = Recipe::load(&p, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let uploads: Vec<(String, String)> = r
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            imgbuild::recipe::StepKind::Upload { dest, mode, .. } => {
                Some((dest.clone(), mode.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        uploads,
        vec![
            ("/usr/local/bin/f/bin/tool".to_string(), "0755".to_string()),
            ("/usr/local/bin/f/readme".to_string(), "0644".to_string()),
        ]
    );
    // every file is part of the fingerprint
    assert!(r.files.keys().any(|f| f.ends_with("art/bin/tool")));
    let empty = GOOD.replace("upload: f.bin", "upload: \"{{ k8s }}\"");
    assert_err(&empty, &[("k8s", "")], 13, "is empty: set it with --var");
}

/// A thin recipe inherits the parent's steps (resolved in the parent's directory) and changes
/// only settings and variable values; it may not bring steps of its own.
#[test]
fn extends_inherits_steps_and_overrides_settings() {
    let (d, _parent) = setup(GOOD);
    let child_dir = d.path().join("child");
    std::fs::create_dir(&child_dir).unwrap();
    let child = child_dir.join("recipe.yaml");
    std::fs::write(
        &child,
        "extends: ..\nname: thin\nbase:\n  distribution: Debian\n  version: \"12\"\nvars:\n  k8s: \"1.35.0\"\n",
    )
    .unwrap();
    let r = Recipe::load(&child, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.spec.name, "thin");
    assert_eq!(r.spec.base.distribution, "Debian");
    assert_eq!(r.vars["k8s"], "1.35.0");
    assert_eq!(r.steps.len(), 3);
    assert_eq!(
        r.dir.canonicalize().unwrap(),
        d.path().canonicalize().unwrap(),
        "inherited steps resolve in the parent's directory"
    );
    // the parent's text is part of the fingerprint
    let r2 = Recipe::load(&d.path().join("recipe.yaml"), &BTreeMap::new()).unwrap();
    assert_ne!(r.fingerprint("b"), r2.fingerprint("b"));

    std::fs::write(
        &child,
        "extends: ..\nname: thin\nsteps:\n  - reboot: true\n",
    )
    .unwrap();
    let e = Recipe::load(&child, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("may not define `steps`"), "{e}");
}

/// A `local` artifacts dir as tests/kube/build.sh --node lays it out (files of a few bytes).
fn local_artifacts(dir: &Path) {
    for f in [
        "bin/containerd",
        "bin/containerd-shim-runc-v2",
        "bin/ctr",
        "bin/runc",
        "bin/crictl",
        "cni/bridge",
        "kubernetes/v1.34.1/kubelet",
        "images/pause.tar",
    ] {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, f).unwrap();
    }
}

/// The shipped thin recipe is the product recipe with the local source on Debian 12.
#[test]
fn debian_k8s_is_ubuntu_k8s_with_local_source() {
    let d = tempfile::tempdir().unwrap();
    let agent = d.path().join("agent");
    std::fs::write(&agent, "x").unwrap();
    local_artifacts(&d.path().join("art"));
    let v = BTreeMap::from([
        ("agent_binary".to_string(), agent.display().to_string()),
        (
            "artifacts_dir".to_string(),
            d.path().join("art").display().to_string(),
        ),
    ]);
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes");
    let thin =
        Recipe::load(&recipes.join("debian-k8s/recipe.yaml"), &v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(thin.vars["kubernetes_source"], "local");
    assert_eq!(thin.spec.base.distribution, "Debian");
    let names = |r: &Recipe| r.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert!(
        names(&thin)
            .iter()
            .any(|n| n == "local artifacts: Kubernetes: kubelet"),
        "{:?}",
        names(&thin)
    );
    // the product recipe with the same source has the same steps
    let mut v2 = v.clone();
    v2.insert("kubernetes_source".into(), "local".into());
    let product = Recipe::load(&recipes.join("ubuntu-k8s/recipe.yaml"), &v2)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&thin), names(&product));
}

/// The parent's steps read the parent's secrets, so a thin recipe carries them all; like `vars`,
/// it may add names (for a parent step that reads a secret when it is there), never drop one.
#[test]
fn extends_carries_and_adds_secrets() {
    let (d, _parent) = setup(&GOOD.replace("steps:", "secrets: [registry_token]\nsteps:"));
    let child_dir = d.path().join("child");
    std::fs::create_dir(&child_dir).unwrap();
    let child = child_dir.join("recipe.yaml");
    let load = |extra: &str| {
        std::fs::write(&child, format!("extends: ..\nname: thin\n{extra}")).unwrap();
        Recipe::load(&child, &BTreeMap::new())
    };
    let secrets = |extra: &str| load(extra).unwrap_or_else(|e| panic!("{e}")).spec.secrets;
    assert_eq!(secrets(""), ["registry_token"], "inherited");
    assert_eq!(
        secrets("secrets: [mirror_token]\n"),
        ["registry_token", "mirror_token"],
        "added to the parent's, not replacing them"
    );
    assert_eq!(
        secrets("secrets: [mirror_token, registry_token]\n"),
        ["registry_token", "mirror_token"],
        "naming a parent's secret again declares it once"
    );
    let e = load("secrets: [Bad]\n").unwrap_err().to_string();
    assert!(e.contains("secret name \"Bad\""), "{e}");
    let e = load("secrets: registry_token\n").unwrap_err().to_string();
    assert!(e.contains("secrets must be a list"), "{e}");
}

/// Roles (`include:`, issue 20 item 5): a role's steps take the include's place, resolved in the
/// role file's directory; its variables are defaults the recipe and `--var` override; a role's
/// text is part of the fingerprint; problems in a role are reported in the role file.
#[test]
fn roles_are_included_in_place_with_their_defaults() {
    use imgbuild::recipe::{normalize, StepKind};
    let d = tempfile::tempdir().unwrap();
    let roles = d.path().join("roles");
    let common = d.path().join("common");
    let rec = d.path().join("r");
    for dir in [&roles, &common, &rec] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(
        common.join("s.sh"),
        "#!/bin/sh\n. /tmp/imgbuild/lib/lib.sh\n",
    )
    .unwrap();
    std::fs::write(common.join("lib.sh"), "x() { :; }\n").unwrap();
    std::fs::write(common.join("payload"), "p").unwrap();
    let role = roles.join("shared.yaml");
    std::fs::write(
        &role,
        "description: d\nvars:\n  payload: ../common/payload\n  tag: role\nsteps:\n  - name: shared script\n    script: ../common/s.sh\n    uses: [../common/lib.sh]\n  - upload: \"{{ payload }}\"\n    dest: /opt/p\n",
    )
    .unwrap();
    std::fs::write(rec.join("own.sh"), "#!/bin/sh\n").unwrap();
    let recipe = rec.join("recipe.yaml");
    let text = GOOD
        .replace(
            "vars:\n  k8s: \"1.34.1\"\n",
            "vars:\n  k8s: \"1.34.1\"\n  tag: mine\n",
        )
        .replace(
            "steps:\n  - script: a.sh\n  - upload: f.bin\n    dest: /usr/local/bin/f\n    mode: \"0755\"\n  - reboot: true\n",
            "steps:\n  - script: own.sh\n  - include: ../roles/shared.yaml\n  - reboot: true\n",
        );
    std::fs::write(&recipe, &text).unwrap();
    let r = Recipe::load(&recipe, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["own.sh", "shared script", "upload /opt/p", "reboot"]
    );
    // the role's default applies, the recipe's own value wins over the role's
    assert_eq!(r.vars["payload"], "../common/payload");
    assert_eq!(r.vars["tag"], "mine");
    match &r.steps[1].kind {
        StepKind::Script { path, uses } => {
            assert!(path.ends_with("roles/../common/s.sh"), "{path:?}");
            assert_eq!(uses.len(), 1);
            assert_eq!(uses[0].dest, "/tmp/imgbuild/lib/lib.sh");
            assert_eq!(
                uses[0].sha256,
                imgbuild::recipe::sha256_file(&common.join("lib.sh")).unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    match &r.steps[2].kind {
        StepKind::Upload { src, .. } => assert!(src.ends_with("roles/../common/payload")),
        other => panic!("{other:?}"),
    }
    // the helper counts as an upload (manifest `uploads`, `upload_sha256`)
    assert!(r.upload_sha256().contains_key("/tmp/imgbuild/lib/lib.sh"));
    // the role file is an input of the build: changing it changes the fingerprint
    assert!(r.files.keys().any(|f| f.ends_with("roles/shared.yaml")));
    let before = r.fingerprint("b");
    std::fs::write(
        &role,
        std::fs::read_to_string(&role).unwrap() + "# changed\n",
    )
    .unwrap();
    let after = Recipe::load(&recipe, &BTreeMap::new())
        .unwrap()
        .fingerprint("b");
    assert_ne!(before, after);
    // --var overrides a role's default like any variable
    let o = BTreeMap::from([("payload".to_string(), "x".to_string())]);
    let e = Recipe::load(&recipe, &o).unwrap_err();
    assert!(e.to_string().contains("upload source"), "{e}");

    // problems inside a role are reported in the role file, at the step's line
    std::fs::write(
        &role,
        "steps:\n  - script: ../common/s.sh\n  - script: ../common/missing.sh\n",
    )
    .unwrap();
    let e = Recipe::load(&recipe, &BTreeMap::new()).unwrap_err();
    assert!(
        e.0.iter().any(|d| normalize(&d.file) == role
            && d.line == Some(3)
            && d.message.contains("missing.sh")),
        "{e}"
    );
    // one level: a role does not include another; an include carries nothing else
    std::fs::write(&role, "steps:\n  - include: other.yaml\n").unwrap();
    let e = Recipe::load(&recipe, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("may not include another"), "{e}");
    std::fs::write(&role, "steps:\n  - script: ../common/s.sh\n").unwrap();
    std::fs::write(
        &recipe,
        text.replace(
            "  - include: ../roles/shared.yaml\n",
            "  - include: ../roles/shared.yaml\n    timeout: 5\n",
        ),
    )
    .unwrap();
    let e = Recipe::load(&recipe, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("has only `include`"), "{e}");
    // a missing role names itself at the include's line
    std::fs::write(
        &recipe,
        text.replace("../roles/shared.yaml", "../roles/nope.yaml"),
    )
    .unwrap();
    let e = Recipe::load(&recipe, &BTreeMap::new()).unwrap_err();
    assert!(
        e.0.iter()
            .any(|d| d.file == recipe && d.line == Some(14) && d.message.contains("nope.yaml")),
        "{e}"
    );
}

/// The shipped recipes share their common steps through roles: debian-test-node's agent step
/// and ubuntu-k8s's are the same step with the same default (they had drifted apart when copied),
/// and every script that sources lib/image.sh declares it (`uses`) instead of relying on an
/// earlier upload step.
#[test]
fn shipped_recipes_share_roles_and_declare_their_helpers() {
    use imgbuild::recipe::StepKind;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes");
    let art = tempfile::tempdir().unwrap();
    local_artifacts(art.path());
    let load = |name: &str| {
        let mut v = BTreeMap::from([("agent_binary".to_string(), "/etc/hostname".to_string())]);
        if name != "debian-test-node" {
            v.insert("artifacts_dir".into(), art.path().display().to_string());
        }
        Recipe::load(&root.join(name).join("recipe.yaml"), &v).unwrap_or_else(|e| panic!("{e}"))
    };
    let plain = |name: &str| {
        Recipe::load(&root.join(name).join("recipe.yaml"), &BTreeMap::new())
            .map(|r| r.vars["agent_binary"].clone())
            .unwrap_or_else(|e| {
                let m = e.to_string();
                let i = m.find("it is variable agent_binary = ").expect(&m);
                m[i..].split('(').next().unwrap().to_string()
            })
    };
    assert_eq!(plain("ubuntu-k8s"), plain("debian-test-node"));
    for name in ["ubuntu-k8s", "debian-k8s", "debian-test-node"] {
        let r = load(name);
        for s in &r.steps {
            let StepKind::Script { path, uses } = &s.kind else {
                continue;
            };
            let body = std::fs::read_to_string(path).unwrap();
            let sources_lib = body.contains(". /tmp/imgbuild/lib/image.sh");
            let declares = uses.iter().any(|h| h.dest == "/tmp/imgbuild/lib/image.sh");
            assert_eq!(sources_lib, declares, "{name}: step {:?}", s.name);
        }
        assert!(
            !r.steps.iter().any(|s| matches!(&s.kind,
                StepKind::Upload { dest, .. } if dest.starts_with("/tmp/imgbuild/lib/"))),
            "{name}: a helper uploaded by a step of its own"
        );
    }
}
