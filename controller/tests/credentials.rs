//! Credentials come from the environment or files only (issue 20 item 3), and nothing the
//! controller holds prints a secret (issue 21 item 9). The real binary for the flags, the emulator
//! for which credentials are used.

use std::process::Command;

use clap::Parser;
use cloudsigma_controller::Options;
use cloudsim::{Emulator, EmulatorConfig, Timings};

const SECRET: &str = "hunter2-do-not-print-7f3a";

fn controller() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cloudsigma-controller"));
    // Whatever the machine running the tests has set must not decide these cases.
    for v in [
        "CLOUDSIGMA_USERNAME",
        "CLOUDSIGMA_PASSWORD",
        "CLOUDSIGMA_TOKEN",
        "CLOUDSIGMA_USERNAME_FILE",
        "CLOUDSIGMA_PASSWORD_FILE",
        "CLOUDSIGMA_TOKEN_FILE",
        "CLOUDSIGMA_CONFIG",
    ] {
        c.env_remove(v);
    }
    c
}

#[test]
fn secret_flags_are_refused_with_what_to_use_instead_and_never_echoed() {
    for (args, var) in [
        (
            vec!["--password".to_string(), SECRET.to_string()],
            "CLOUDSIGMA_PASSWORD",
        ),
        (vec![format!("--password={SECRET}")], "CLOUDSIGMA_PASSWORD"),
        (
            vec!["--token".to_string(), SECRET.to_string()],
            "CLOUDSIGMA_TOKEN",
        ),
        (vec!["--password".to_string()], "CLOUDSIGMA_PASSWORD"),
    ] {
        let out = controller()
            .args(["--region=zrh", "--api-url=http://127.0.0.1:9/api/2.0/"])
            .args(&args)
            .output()
            .expect("run cloudsigma-controller");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{var}_FILE")) && stderr.contains("no longer accepted"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains(SECRET) && !stdout.contains(SECRET),
            "{args:?} echoed the secret: {stderr}"
        );
    }
}

#[test]
fn help_names_the_environment_and_files_and_no_secret_flag() {
    let out = controller().arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for want in [
        "CLOUDSIGMA_PASSWORD_FILE",
        "CLOUDSIGMA_TOKEN_FILE",
        "CLOUDSIGMA_PASSWORD ",
        "--password-file",
    ] {
        assert!(help.contains(want), "{want:?} missing from --help:\n{help}");
    }
    assert!(
        !help.contains("--password ") && !help.contains("--token "),
        "--help still offers a secret flag:\n{help}"
    );
}

/// Options (what `--help` parses) and the CloudSigma client built from them: their Debug output,
/// which a `tracing` field or a panic message may show, carries no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_files_are_used_and_debug_output_shows_no_secret() {
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let dir = std::env::temp_dir().join(format!("cs-ctrl-cred-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let user = dir.join("username");
    let pass = dir.join("password");
    std::fs::write(&user, format!("{}\n", emu.username())).expect("write");
    std::fs::write(&pass, format!("{}\n", emu.password())).expect("write");

    let opts = |pass_file: &std::path::Path| {
        Options::parse_from([
            "cloudsigma-controller".to_string(),
            format!("--api-url={}", emu.api_url()),
            format!("--username-file={}", user.display()),
            format!("--password-file={}", pass_file.display()),
        ])
    };
    let o = opts(&pass);
    let client = o.cloudsigma_client().expect("client from the files");
    client
        .list_servers()
        .await
        .expect("the files' credentials are the ones used");
    for (what, debug) in [
        ("Options", format!("{o:?}")),
        ("Client", format!("{client:?}")),
    ] {
        assert!(
            !debug.contains(emu.password()),
            "{what} Debug shows the password: {debug}"
        );
    }

    // Even a refused secret flag leaves no trace in Options (the old field kept the value, and
    // its derived Debug printed it).
    let o = Options::parse_from([
        "cloudsigma-controller",
        "--password",
        SECRET,
        "--token",
        SECRET,
    ]);
    assert!(o.refuse_secret_flags().is_err());
    assert!(!format!("{o:?}").contains(SECRET), "{o:?}");

    // A wrong password in the file is refused by the API: the file, not something else, counts.
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, SECRET).expect("write");
    let o = opts(&wrong);
    let client = o.cloudsigma_client().expect("client");
    let e = client.list_servers().await.expect_err("a wrong password");
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(!format!("{e} {e:?} {client:?} {o:?}").contains(SECRET));

    let _ = std::fs::remove_dir_all(&dir);
    emu.shutdown().await;
}
