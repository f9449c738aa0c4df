//! The connection to kube-apiserver: HTTP/2 over one TLS connection when the server offers it, as
//! client-go does, instead of kube-client's default of HTTP/1.1.
//!
//! Why: with HTTP/1.1 every concurrent request needs its own connection, so the first burst of 64
//! parallel reconciles opens 64 TLS connections at once, each a handshake on both sides. In the
//! 1,000-Node bench this brought the first initialized Node from 0.27 s to 0.22 s after start; the
//! whole run stayed within the noise (docs/controller.md, "Where the time goes").
//! client-go negotiates `h2` by ALPN and multiplexes everything over one connection; its health
//! check (a PING after 30 s without a frame, the connection dropped if no answer in 15 s) is
//! what keeps one connection safe to depend on. Both are read from
//! `k8s.io/apimachinery/pkg/util/net/http.go` (`SetTransportDefaults`, `configureHTTP2Transport`:
//! `ReadIdleTimeout` 30 s, `PingTimeout` 15 s).
//!
//! The tower stack is kube-client's own (`client/builder.rs`, `make_generic_builder`): base URI,
//! authentication (incl. exec/token refresh), extra headers. What it adds, request tracing and
//! the optional retry layer, the controller does not use. A kubeconfig naming a proxy is left to
//! kube-client's default builder, which knows proxies.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::{Body, ClientBuilder, ConfigExt};
use tower::{BoxError, ServiceBuilder};

/// After this long without a frame from the server, send a PING (client-go `ReadIdleTimeout`).
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);
/// Drop the connection when a PING is not answered within this (client-go `PingTimeout`).
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// Receive window of one stream (Go: 4 MiB).
const STREAM_WINDOW: u32 = 4 << 20;
/// Receive window of the connection (Go: 1 GiB).
const CONNECTION_WINDOW: u32 = 1 << 30;

/// `DISABLE_HTTP2` set to anything non-empty turns HTTP/2 off, as in client-go
/// (`SetTransportDefaults`), for the same reason: a proxy in between that mishandles it.
pub fn http2_disabled() -> bool {
    std::env::var_os("DISABLE_HTTP2").is_some_and(|v| !v.is_empty())
}

/// The controller's two connections to the apiserver.
///
/// The Node watch gets a connection of its own. On one shared with the writes, its events queue
/// behind a burst of write responses in the server's HTTP/2 write scheduler; the apiserver then
/// ends it as too slow (`cache_watcher.go`: "Forcing nodes watcher close due to
/// unresponsiveness"), which the 1,000-Node bench showed 12–16 times in one burst.
#[derive(Clone)]
pub struct Connections {
    /// Reads and writes: Lease, Node status patches and updates, Events.
    pub requests: kube::Client,
    /// The Node watch (its LIST and WATCH requests).
    pub watch: kube::Client,
}

impl Connections {
    pub fn new(config: kube::Config) -> anyhow::Result<Connections> {
        Ok(Connections {
            requests: client(config.clone())?,
            watch: client(config)?,
        })
    }
}

/// One client for both (tests that route the controller through one proxy).
impl From<kube::Client> for Connections {
    fn from(c: kube::Client) -> Connections {
        Connections {
            requests: c.clone(),
            watch: c,
        }
    }
}

/// A kube client for `config` that speaks HTTP/2 when the apiserver offers it (ALPN), else
/// HTTP/1.1.
pub fn client(config: kube::Config) -> anyhow::Result<kube::Client> {
    client_with(config, !http2_disabled())
}

/// [`client`] with HTTP/2 offered (`http2`) or not.
pub fn client_with(config: kube::Config, http2: bool) -> anyhow::Result<kube::Client> {
    if config.proxy_url.is_some() {
        return Ok(kube::Client::try_from(config)?);
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("kubeconfig tls-server-name {name:?}: {e}"))?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let connector = if http2 {
        tls.enable_all_versions().wrap_connector(http)
    } else {
        tls.enable_http1().wrap_connector(http)
    };
    let hyper = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_AFTER_IDLE)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        // The watch shares the connection with every write's response: windows as large as Go's
        // HTTP/2 transport's (x/net/http2 `transportDefaultStreamFlow`, `transportDefaultConnFlow`),
        // so a burst of responses never makes the apiserver wait on the watch, which it would end
        // as "unresponsive".
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build::<_, Body>(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(ClientBuilder::new(service, config.default_namespace.clone()).build())
}
