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

/// What the controller reads but must never pass on: the servers' meta (cloud-init user-data
/// with a kubeadm join token) comes with every listing, and the account password sits in its
/// environment. The real binary at its most verbose (`RUST_LOG=debug`, success Events on)
/// initializes a Node whose server carries such user-data; neither secret may appear in its log,
/// the Events, the Node or /metrics. And it only reads from the CloudSigma API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_and_credentials_never_leave_the_controller() {
    use cloudsigma_api::models::{Nic, ServerCreate, ServerStatus};
    use cloudsigma_controller::testkit;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, PostParams};
    use std::time::{Duration, Instant};

    let Some(cluster) = testkit::cluster_or_skip("user_data_and_credentials_never_leave") else {
        return;
    };
    // A password that no log line contains by chance (the default is "secret").
    let emu = Emulator::start(EmulatorConfig {
        timings: Timings::instant(),
        password: "emu-pass-9d2c71e0b5".into(),
        ..Default::default()
    })
    .await
    .expect("emulator");
    let cs = testkit::cloudsigma_client(&emu.api_url(), emu.username(), emu.password(), |_| {});
    const JOIN_TOKEN: &str = "abcdef.0123456789abcdef";
    let user_data = format!(
        "#cloud-config\nruncmd:\n  - kubeadm join 10.0.0.1:6443 --token {JOIN_TOKEN} --discovery-token-ca-cert-hash sha256:{}\n",
        "0".repeat(64)
    );
    let s = cs
        .create_server(&ServerCreate {
            name: "worker-ud".into(),
            cpu: 2000,
            mem: 2 << 30,
            smp: Some(2),
            vnc_password: SECRET.into(),
            nics: vec![Nic::public_dhcp()],
            meta: [
                ("cloudinit-user-data".to_string(), user_data.clone()),
                ("kubeadm-token".to_string(), JOIN_TOKEN.to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .await
        .expect("create");
    cs.start_server(&s.uuid).await.expect("start");
    cs.wait_server_status(&s.uuid, ServerStatus::Running, Duration::from_secs(10))
        .await
        .expect("running");
    let nodes: Api<Node> = Api::all(cluster.client().await);
    nodes
        .create(
            &PostParams::default(),
            &testkit::tainted_node("worker-ud", None, None),
        )
        .await
        .expect("node");

    let after_reset = emu.counters().1;
    let port = testkit::free_port();
    let log_path = cluster.dir.path().join("controller-secrets.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudsigma-controller"))
        .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg(format!("--api-url={}", emu.api_url()))
        .args([
            "--region=zrh",
            "--sync-period=1s",
            "--leader-elect=false",
            "--record-success-events=true",
            &format!("--metrics-bind=127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "debug")
        .env("CLOUDSIGMA_USERNAME", emu.username())
        .env("CLOUDSIGMA_PASSWORD", emu.password())
        .env_remove("CLOUDSIGMA_TOKEN")
        .env_remove("CLOUDSIGMA_PASSWORD_FILE")
        .env_remove("CLOUDSIGMA_TOKEN_FILE")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn controller");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = nodes.get("worker-ud").await.expect("node");
        if !cloudsigma_controller::node::has_taint(
            &n,
            cloudsigma_controller::node::TAINT_UNINITIALIZED,
        ) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not initialized: {:?}",
            std::fs::read_to_string(&log_path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few sync periods of re-syncs (listings with the meta) at debug level.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .await
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(metrics.contains("cloudsigma_controller_"), "{metrics}");
    let _ = child.start_kill();
    let _ = child.wait().await;
    // The account's servers: the controller only reads (listings, single GETs); this test's own
    // creation and start came before the reset.
    let (_, calls) = emu.counters();
    let writes: Vec<_> = calls
        .keys()
        .filter(|k| !k.starts_with("GET "))
        .filter(|k| after_reset.get(*k) != calls.get(*k))
        .collect();
    assert!(
        writes.is_empty(),
        "the controller wrote to the CloudSigma API: {writes:?}"
    );

    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("node initialized"), "{log}");
    let events = cluster
        .kubectl(&["get", "events.events.k8s.io", "-A", "-o", "yaml"])
        .expect("events");
    assert!(events.contains("Initialized"), "{events}");
    let node = cluster
        .kubectl(&["get", "node", "worker-ud", "-o", "yaml"])
        .expect("node");
    for (what, text) in [
        ("log", &log),
        ("Events", &events),
        ("Node", &node),
        ("/metrics", &metrics),
    ] {
        for secret in [JOIN_TOKEN, emu.password(), SECRET] {
            let leaks: Vec<String> = text
                .lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .map(|l| l.replace(secret, "<SECRET>").chars().take(800).collect())
                .collect();
            assert!(
                leaks.is_empty(),
                "the controller's {what} contains a secret, e.g. (masked):\n{}",
                leaks.join("\n")
            );
        }
    }
    eprintln!(
        "checked {} bytes of debug log, {} of Events, {} of Node, {} of metrics",
        log.len(),
        events.len(),
        node.len(),
        metrics.len()
    );
    emu.shutdown().await;
}
