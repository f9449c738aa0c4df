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
//! A dead connection is noticed on both protocols. A watch whose peer vanished (a NAT or load
//! balancer that dropped the flow, a half-dead path) otherwise hangs: nothing arrives and nothing
//! fails, while the Lease keeps renewing on the other connection, so the controller looks healthy
//! and initializes no new Node. kube-runtime's watcher gives up on a silent watch only after the
//! watch's `timeoutSeconds` plus 5 s (295 s by default), and over HTTP/1.1 (`DISABLE_HTTP2`, or a
//! proxy without h2) there are no PINGs at all. So, on both connections and both protocols:
//! - a response's headers must arrive within [`Liveness::idle`] (a request sent on a dead pooled
//!   connection), and
//! - a response body may not be silent longer than [`Liveness::idle`] between two frames
//!   (tower-http's `TimeoutBody`). The watch asks for BOOKMARKs (`allowWatchBookmarks=true`, which
//!   kube-runtime's watcher sets) and the apiserver sends one about every minute
//!   (`k8s.io/apiserver/pkg/storage/cacher`: `defaultBookmarkFrequency`, `nextBookmarkTime`) and
//!   2 s before the watch's `timeoutSeconds`: a healthy watch is never silent that long. The
//!   watcher then resumes from its last resourceVersion (a relist only if that is gone, 410).
//! - HTTP/2 also keeps client-go's PINGs, which close the dead connection itself, so the resumed
//!   watch does not queue on it.
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
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(30);
/// Drop the connection when a PING is not answered within this (client-go `PingTimeout`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// The apiserver's BOOKMARK period on an idle watch (`cacher.go`, `defaultBookmarkFrequency`).
pub const APISERVER_BOOKMARK_PERIOD: Duration = Duration::from_secs(60);
/// Default of [`Liveness::idle`]: one and a half bookmark periods, so a bookmark sent late by a
/// busy apiserver does not end a healthy watch; a false alarm would only resume it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(90);

/// How long a dead apiserver connection can go unnoticed (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// HTTP/2: PING after this long without a frame.
    pub ping_after_idle: Duration,
    /// HTTP/2: drop the connection when a PING is not answered within this.
    pub ping_timeout: Duration,
    /// Both protocols: the longest wait for a response's headers, and the longest silence
    /// between two frames of a response body (a watch's events and bookmarks).
    pub idle: Duration,
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness {
            ping_after_idle: PING_AFTER_IDLE,
            ping_timeout: PING_TIMEOUT,
            idle: DEFAULT_IDLE,
        }
    }
}

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
        Connections::with_liveness(config, Liveness::default())
    }

    pub fn with_liveness(config: kube::Config, live: Liveness) -> anyhow::Result<Connections> {
        let http2 = !http2_disabled();
        Ok(Connections {
            requests: client_with_liveness(config.clone(), http2, live)?,
            watch: client_with_liveness(config, http2, live)?,
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
    client_with_liveness(config, http2, Liveness::default())
}

/// [`client_with`] with these dead-connection bounds.
pub fn client_with_liveness(
    config: kube::Config,
    http2: bool,
    live: Liveness,
) -> anyhow::Result<kube::Client> {
    if config.proxy_url.is_some() {
        // kube-client's own stack: its socket read timeout (`read_timeout`, 295 s) is the bound.
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
        .http2_keep_alive_interval(live.ping_after_idle)
        .http2_keep_alive_timeout(live.ping_timeout)
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
        .layer(tower::timeout::TimeoutLayer::new(live.idle))
        .layer(tower_http::timeout::ResponseBodyTimeoutLayer::new(
            live.idle,
        ))
        .service(hyper);
    Ok(ClientBuilder::new(service, config.default_namespace.clone()).build())
}
