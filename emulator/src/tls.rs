//! HTTPS for the emulator's listeners.
//!
//! CloudSigma is only reachable over HTTPS and credentials travel in Basic auth, so client
//! libraries refuse (or should refuse) plain HTTP to it. To let them run unmodified, cloudsim
//! serves TLS with a given certificate and key (PEM files), or with a server certificate signed
//! by a CA generated at start, whose certificate it writes out for the clients to trust. The CA's
//! private key never leaves memory: the written file cannot mint certificates.
//!
//! rustls with the ring provider, like the project's clients (reqwest `rustls-tls`, kube).
//! Handshakes run in their own tasks, so a slow or silent client never holds up the others.

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Where the server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfig {
    /// A PEM certificate chain (server certificate first) and its PEM private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Generate a CA and a server certificate at start. The certificate names `localhost`,
    /// `127.0.0.1`, `::1`, the listen addresses (unless unspecified, e.g. `0.0.0.0`) and
    /// `extra_names` (host names or IP addresses the clients use). The CA certificate (PEM) is
    /// written to `ca_out` when set, and is always available from
    /// [`crate::EmulatorHandle::ca_pem`].
    SelfSigned {
        ca_out: Option<PathBuf>,
        extra_names: Vec<String>,
    },
}

/// A ready acceptor, plus the generated CA's PEM for [`TlsConfig::SelfSigned`].
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub ca_pem: Option<String>,
}

/// Load or generate the certificate and build the acceptor. `listen` are the addresses the
/// certificate must be valid for (self-signed case).
pub fn setup(cfg: &TlsConfig, listen: &[SocketAddr]) -> anyhow::Result<Tls> {
    let (chain, key, ca_pem) = match cfg {
        TlsConfig::Files { cert, key } => {
            let (c, k) = load_files(cert, key)?;
            (c, k, None)
        }
        TlsConfig::SelfSigned {
            ca_out,
            extra_names,
        } => {
            let names = san_names(listen, extra_names);
            let (ca_pem, chain, key) = generate(&names)?;
            if let Some(p) = ca_out {
                // a public certificate: readable by the clients of other users too
                crate::persist::write_atomic(p, ca_pem.as_bytes(), 0o644).with_context(|| {
                    format!("cannot write the CA certificate to {}", p.display())
                })?;
            }
            (chain, key, Some(ca_pem))
        }
    };
    let mut sc = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the TLS certificate and private key do not form a usable pair")?;
    // the HTTP server speaks HTTP/1.1 only (axum feature http1)
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(sc)),
        ca_pem,
    })
}

fn load_files(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the TLS certificate file {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("TLS certificate file {} is not valid PEM", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "TLS certificate file {} holds no CERTIFICATE block (want the PEM chain, server certificate first)",
            cert.display()
        );
    }
    // never print the key's content; the error names the file only
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}: {}",
            key.display(),
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no private key block found".into(),
                other => other.to_string(),
            }
        )
    })?;
    Ok((chain, key))
}

/// The names of the generated certificate: loopback always, the listen IPs, the extra names.
fn san_names(listen: &[SocketAddr], extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec![
        "localhost".into(),
        IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        IpAddr::V6(Ipv6Addr::LOCALHOST).to_string(),
    ];
    for a in listen {
        if !a.ip().is_unspecified() {
            names.push(a.ip().to_string());
        }
    }
    for n in extra {
        let n = n.trim();
        if !n.is_empty() {
            names.push(n.to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

type Generated = (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A CA (kept in memory) and a server certificate for `names` signed by it.
fn generate(names: &[String]) -> anyhow::Result<Generated> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().context("generate the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "cloudsim local CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).context("self-sign the CA")?;

    let key = KeyPair::generate().context("generate the server key")?;
    // IP strings become IP address SANs, the rest DNS names
    let mut p = CertificateParams::new(names.to_vec())
        .with_context(|| format!("server certificate names {names:?}"))?;
    p.distinguished_name.push(DnType::CommonName, "cloudsim");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p
        .signed_by(&key, &ca_cert, &ca_key)
        .context("sign the server certificate")?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca_cert.pem(), vec![cert.der().clone()], key_der))
}

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP listener whose connections come out TLS-terminated, for `axum::serve`.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // e.g. out of file descriptors: wait instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // the accept task is gone (only on abort): serve nothing more
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_loopback_listen_ips_and_extras_once() {
        let n = san_names(
            &[
                "0.0.0.0:1".parse().unwrap(),
                "10.1.2.3:2".parse().unwrap(),
                "127.0.0.1:3".parse().unwrap(),
            ],
            &["api.example.test".into(), " ".into(), "10.1.2.3".into()],
        );
        assert_eq!(
            n,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "10.1.2.3",
                "api.example.test"
            ]
        );
    }

    #[test]
    fn missing_or_empty_files_are_named_in_the_error() {
        let d = tempfile::tempdir().unwrap();
        let cert = d.path().join("cert.pem");
        let key = d.path().join("key.pem");
        let e = load_files(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("cert.pem"), "{e:#}");
        std::fs::write(&cert, "not pem\n").unwrap();
        let e = load_files(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("no CERTIFICATE block"), "{e:#}");
        let (ca, chain, _) = generate(&["localhost".into()]).unwrap();
        std::fs::write(&cert, &ca).unwrap();
        std::fs::write(&key, "-----BEGIN NOTHING-----\n").unwrap();
        let e = load_files(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("key.pem"), "{e:#}");
        assert_eq!(chain.len(), 1);
    }

    /// [issue 21 item 9] the CA certificate's temporary file is created exclusively: a symlink
    /// planted at the name it used to have (the pid) is not written through.
    #[test]
    fn the_ca_file_never_follows_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let ca = d.path().join("ca.pem");
        let planted = d.path().join(format!(".ca.pem.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let cfg = TlsConfig::SelfSigned {
            ca_out: Some(ca.clone()),
            extra_names: vec![],
        };
        let tls = setup(&cfg, &["127.0.0.1:1".parse().unwrap()]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), tls.ca_pem.unwrap());
    }
}
