//! HTTPS: a generated CA (written out for clients) or given PEM files; plain HTTP stays the
//! default. These tests are about the server, so the round trips use plain reqwest with rustls
//! (as the API client does) trusting the written CA; the API client's own CA option (`ca_file`,
//! `$CLOUDSIGMA_CA_FILE`, imgbuild's `--ca-file`) is tested against this server in api/tests/tls.rs.
use cloudsim::{Emulator, EmulatorConfig, TlsConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("CA PEM"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_round_trip_with_the_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let emu = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::SelfSigned {
            ca_out: Some(ca_file.clone()),
            extra_names: vec![],
        }),
        admin_listen: cloudsim::AdminListen::loopback(),
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    let base = emu.api_url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    assert!(
        emu.admin_url().unwrap().starts_with("https://"),
        "{:?}",
        emu.admin_url()
    );
    let pem = std::fs::read(&ca_file).expect("CA written");
    assert_eq!(Some(std::str::from_utf8(&pem).unwrap()), emu.ca_pem());
    assert!(!String::from_utf8_lossy(&pem).contains("PRIVATE KEY"));

    let http = client_trusting(&pem);
    let auth = |r: reqwest::RequestBuilder| r.basic_auth(emu.username(), Some(emu.password()));
    let r = auth(http.post(format!("{base}drives/")))
        .json(&json!({"objects": [{"name": "d", "size": 1073741824u64, "media": "disk"}]}))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(r.status(), StatusCode::CREATED);
    let uuid = r.json::<Value>().await.unwrap()["objects"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = auth(http.get(format!("{base}drives/{uuid}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "d");
    // the host name `localhost` is in the certificate as well
    let r = auth(http.get(format!(
        "https://localhost:{}/api/2.0/drives/",
        emu.addr().port()
    )))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // the admin listener speaks TLS too
    let r = http
        .get(format!("{}counters", emu.admin_url().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // the certificate is really checked: a client without the CA refuses the server
    let e = reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .unwrap()
        .get(format!("{base}drives/"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
    // and there is no plain-HTTP fallback on the TLS port
    let plain = reqwest::Client::new()
        .get(format!("http://{}/api/2.0/drives/", emu.addr()))
        .basic_auth(emu.username(), Some(emu.password()))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != StatusCode::OK).unwrap_or(true),
        "plain HTTP must not be answered on the TLS port"
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn https_with_given_pem_files() {
    // a CA and a server certificate made here, as an operator's would be
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let emu = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::Files {
            cert: cert_file.clone(),
            key: key_file.clone(),
        }),
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    assert_eq!(emu.ca_pem(), None, "no generated CA");
    let r = client_trusting(ca_cert.pem().as_bytes())
        .get(format!("{}servers/", emu.api_url()))
        .basic_auth(emu.username(), Some(emu.password()))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(r.status(), StatusCode::OK);
    emu.shutdown().await;

    // a key that does not belong to the certificate, or a missing file: a clear start error
    std::fs::write(
        &key_file,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let e = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::Files {
            cert: cert_file.clone(),
            key: key_file.clone(),
        }),
        ..EmulatorConfig::for_tests()
    })
    .await
    .err()
    .expect("mismatched key refused");
    assert!(
        format!("{e:#}").contains("do not form a usable pair"),
        "{e:#}"
    );
    let e = Emulator::start(EmulatorConfig {
        tls: Some(TlsConfig::Files {
            cert: dir.path().join("missing.pem"),
            key: key_file,
        }),
        ..EmulatorConfig::for_tests()
    })
    .await
    .err()
    .expect("missing file refused");
    assert!(format!("{e:#}").contains("missing.pem"), "{e:#}");
}

#[tokio::test]
async fn plain_http_stays_the_default() {
    let emu = Emulator::start(EmulatorConfig::for_tests()).await.unwrap();
    assert!(emu.api_url().starts_with("http://"));
    assert_eq!(emu.ca_pem(), None);
    let r = reqwest::Client::new()
        .get(format!("{}servers/", emu.api_url()))
        .basic_auth(emu.username(), Some(emu.password()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    emu.shutdown().await;
}
