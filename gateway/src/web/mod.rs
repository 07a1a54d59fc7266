//! The unprivileged HTTPS web front (`xdpgate web`): terminates TLS, admits requests per
//! source, parses every body into its typed struct and forwards only the re-serialized
//! struct to the controller's front socket, then relays the controller's answer.
//!
//! It holds no secret but its TLS key and needs no privilege: it reads its certificate and
//! key and connects to the front socket. Following the dual web server design, no request
//! bytes and no headers reach the controller, only values that parsed.

mod client_addr;
mod front;
pub mod privileges;
pub mod proxy_v2;
mod rate_limit;
mod routes;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

pub use client_addr::{ConnInfo, ForwardedError, MAX_FORWARDED_HOPS, client_ip};
pub use front::{FrontCall, FrontHandle};
pub use rate_limit::{DEFAULT_MAX_SOURCES, RateLimiter};
pub use routes::{AppState, router};

use crate::config::{IpNet, WebConfig};
use crate::tls::{self, TlsError};

/// Most connections open at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 4096;
/// Deadline of the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a request's headers, counted from the end of the previous answer on a
/// kept-alive connection (so it is also the idle timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long a kept-alive connection finishes its current request and closes.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The answer to this many-th request on one connection closes it.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1000;
/// Largest header block (and read buffer) of a connection.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long open connections may finish after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The web front could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Accepting connections failed for good.
    #[error("accepting connections failed")]
    Accept(#[source] std::io::Error),
    /// Root could not be given up.
    #[error(transparent)]
    Privileges(#[from] privileges::PrivilegeError),
    /// The cluster routes could not be set up.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// The TLS side, loaded before privileges are dropped.
struct LoadedTls {
    acceptor: TlsAcceptor,
    pin: String,
    /// The cluster routes (their mTLS files are read here, before privileges are dropped).
    routes: Option<Arc<crate::cluster::ClusterRoutes>>,
}

fn load_tls(config: &WebConfig) -> Result<LoadedTls, WebError> {
    Ok(LoadedTls {
        acceptor: TlsAcceptor::from(Arc::new(tls::server_config(&config.cert, &config.key)?)),
        pin: tls::cert_sha256_hex(&config.cert)?,
        routes: config
            .cluster
            .as_ref()
            .map(|cluster| crate::cluster::ClusterRoutes::new(cluster, config.request_timeout))
            .transpose()?,
    })
}

/// `xdpgate web`: creates a self-signed certificate if neither file exists, binds
/// `config.listen`, loads the key, drops to `config.user` when started as root, and serves
/// until SIGINT or SIGTERM.
pub async fn run(config: WebConfig) -> Result<(), WebError> {
    if tls::ensure_self_signed(&config.cert, &config.key, &default_names(config.listen.ip()))? {
        tracing::info!(cert = %config.cert.display(), "generated a self-signed certificate");
    }
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| WebError::Bind { addr: config.listen, source })?;
    let loaded = load_tls(&config)?;
    let uid = privileges::drop_to(&config.user)?;
    tracing::info!(uid = uid.as_raw(), user = %config.user, "web front runs unprivileged");
    serve_loaded(config, listener, loaded, shutdown_signal()).await
}

/// Names for a generated certificate: `localhost` and the listen address if it is specific.
/// Clients pin the certificate, so names are informative only.
fn default_names(listen: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if !listen.is_unspecified() {
        names.push(listen.to_string());
    }
    names
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot watch SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Serves HTTPS on `listener` until `shutdown` completes, then lets open connections finish
/// for up to [`SHUTDOWN_GRACE`]. Tests bind `127.0.0.1:0` and pass the listener in.
pub async fn serve(
    config: WebConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebError> {
    let loaded = load_tls(&config)?;
    serve_loaded(config, listener, loaded, shutdown).await
}

async fn serve_loaded(
    config: WebConfig,
    listener: TcpListener,
    loaded: LoadedTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebError> {
    let LoadedTls { acceptor, pin, routes } = loaded;
    let (front, _refresher) = match (&config.cluster, routes) {
        (Some(cluster), Some(routes)) => {
            let refresher = routes.spawn_refresher(cluster.refresh);
            tracing::info!(controllers = cluster.controllers.len(), "web node forwards over the cluster API");
            (FrontHandle::cluster(routes), Some(AbortOnDrop(refresher)))
        }
        _ => (FrontHandle::new(&config.front_socket, config.request_timeout), None),
    };
    let proxy_peers: Arc<[IpNet]> = config.proxy_protocol_peers.clone().into();
    let state = AppState {
        front,
        limiter: Arc::new(RateLimiter::new(config.rate_limit_per_minute, config.rate_limit_burst, DEFAULT_MAX_SOURCES)),
        trusted_proxies: config.trusted_proxies.clone().into(),
        request_timeout: config.request_timeout,
    };
    let app = router(state);
    // A connection never outlives this: handshake, its lifetime, a last request and slack.
    let connection_deadline =
        HANDSHAKE_TIMEOUT + CONNECTION_LIFETIME + HEADER_TIMEOUT + config.request_timeout + Duration::from_secs(5);
    let local = listener.local_addr().map_err(WebError::Accept)?;
    tracing::info!(listen = %local, cert_sha256 = %pin, front_socket = %config.front_socket.display(), "web front serving");

    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) if is_transient(&err) => {
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(WebError::Accept(err)),
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections; closing");
            continue;
        };
        let conn = Connection {
            tcp,
            acceptor: acceptor.clone(),
            app: app.clone(),
            info: ConnInfo::direct(peer),
            proxy: proxy_peers.iter().any(|net| net.contains(peer.ip().to_canonical())),
            stop: stop_rx.clone(),
        };
        connections.spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(connection_deadline, conn.run()).await.is_err() {
                tracing::debug!(%peer, "connection deadline passed");
            }
        });
    }
    tracing::info!("web front stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
    Ok(())
}

fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    // EMFILE/ENFILE (out of descriptors) are transient too: connections will close.
    matches!(err.kind(), ConnectionAborted | ConnectionReset | Interrupted)
        || matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Completes once shutdown is asked for.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let asked = stop.wait_for(|stop| *stop).await.is_ok();
    if !asked {
        std::future::pending::<()>().await;
    }
}

/// One accepted TCP connection.
struct Connection {
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    app: axum::Router,
    info: ConnInfo,
    /// The peer must send a PROXY v2 header first.
    proxy: bool,
    stop: watch::Receiver<bool>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connection {
    /// TLS handshake, then HTTP/1.1 requests (kept alive for at most [`CONNECTION_LIFETIME`]
    /// and [`MAX_REQUESTS_PER_CONNECTION`]).
    async fn run(self) {
        let Connection { mut tcp, acceptor, app, mut info, proxy, mut stop } = self;
        let span = tracing::debug_span!("connection", peer = %info.peer, proxied = tracing::field::Empty);
        async move {
            if proxy {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy_v2::read_header(&mut tcp)).await {
                    Ok(Ok(announced)) => {
                        info.proxied = announced;
                        if let Some(source) = announced {
                            tracing::Span::current().record("proxied", tracing::field::display(source));
                        }
                    }
                    Ok(Err(err)) => return tracing::warn!("closing a proxy connection: {err}"),
                    Err(_) => return tracing::warn!("PROXY header timed out"),
                }
            }
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => return tracing::debug!("TLS handshake failed: {err}"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let served = std::sync::atomic::AtomicUsize::new(0);
            let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(info);
                let last = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= MAX_REQUESTS_PER_CONNECTION;
                let answer = tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new));
                async move {
                    let mut response = answer.await?;
                    if last {
                        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::pin!(lifetime);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!("connection ended: {err}");
                    }
                }
                () = stop_requested(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                () = &mut lifetime => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        }
        .instrument(span)
        .await;
    }
}
