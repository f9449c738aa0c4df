//! The client over HTTPS: an in-process cloudsim serving TLS with a CA it generates and writes
//! out; the client trusts it through `ca_file` (issue #13), and refuses the server without it.

#![cfg(feature = "client")]

use cloudsigma_api::client::{resolve_with, Auth, Client, Config, ConfigOverrides, ENV_CA_FILE};
use cloudsim::{Emulator, EmulatorConfig, EmulatorHandle, TlsConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

async fn https_emulator(ca_out: &Path) -> EmulatorHandle {
    Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::SelfSigned {
            ca_out: Some(ca_out.to_path_buf()),
            extra_names: vec![],
        }),
        ..EmulatorConfig::for_tests()
    })
    .await
    .expect("emulator starts")
}

fn config(emu: &EmulatorHandle, ca: Option<PathBuf>) -> Config {
    let auth = Auth::Basic {
        username: emu.username().into(),
        password: emu.password().into(),
    };
    let c = Config::for_url(&emu.api_url(), auth)
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .with_retry(cloudsigma_api::client::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        });
    match ca {
        Some(p) => c.with_ca_file(p),
        None => c,
    }
}

/// The error and its whole source chain, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[tokio::test]
async fn round_trip_trusting_the_written_ca_and_refusal_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let emu = https_emulator(&ca).await;
    assert!(emu.api_url().starts_with("https://"), "{}", emu.api_url());

    let c = Client::new(config(&emu, Some(ca.clone()))).expect("client with the CA");
    let d = c
        .create_drive(
            &serde_json::from_value(serde_json::json!({
                "name": "over-tls", "size": 1073741824u64, "media": "disk"
            }))
            .unwrap(),
        )
        .await
        .expect("POST over HTTPS");
    let back = c.get_drive(&d.uuid).await.expect("GET over HTTPS");
    assert_eq!(back.name, "over-tls");

    // Without the CA the built-in roots do not know the server: a TLS error, not an answer.
    let bare = Client::new(config(&emu, None)).unwrap();
    let e = bare.get_drive(&d.uuid).await.expect_err("untrusted server");
    let text = chain(&e);
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "not a clear TLS error: {text}"
    );
    assert!(
        e.to_string().contains("TLS") || e.to_string().contains("certificate"),
        "the top-level message says it is about TLS: {e}"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn ca_file_from_the_environment_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let emu = https_emulator(&ca).await;
    let ca_s = ca.display().to_string();
    let (url, user, pass) = (
        emu.api_url(),
        emu.username().to_string(),
        emu.password().to_string(),
    );
    let env = move |k: &str| match k {
        "CLOUDSIGMA_API_URL" => Some(url.clone()),
        "CLOUDSIGMA_USERNAME" => Some(user.clone()),
        "CLOUDSIGMA_PASSWORD" => Some(pass.clone()),
        k if k == ENV_CA_FILE => Some(ca_s.clone()),
        _ => None,
    };
    let cfg = resolve_with(&ConfigOverrides::default(), &env, None).unwrap();
    let c = Client::new(cfg).unwrap();
    c.list_drives()
        .await
        .expect("HTTPS with the CA from the env");
    emu.shutdown().await;
}

#[test]
fn a_missing_or_unparsable_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |p: &Path| {
        Config::for_url("https://127.0.0.1:1/api/2.0/", Auth::Bearer("t".into()))
            .unwrap()
            .with_ca_file(p)
    };
    let missing = dir.path().join("nope.pem");
    let e = Client::new(cfg(&missing)).unwrap_err().to_string();
    assert!(e.contains("nope.pem") && e.contains("cannot read"), "{e}");

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let e = Client::new(cfg(&junk)).unwrap_err().to_string();
    assert!(
        e.contains("junk.pem") && e.contains("no certificate"),
        "{e}"
    );

    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = Client::new(cfg(&broken)).unwrap_err().to_string();
    assert!(e.contains("broken.pem"), "{e}");
}
