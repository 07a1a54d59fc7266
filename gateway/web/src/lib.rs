//! The unprivileged HTTPS web front (`xdpgate web`): terminates TLS, admits requests per
//! source, parses every body into its typed struct and forwards only the re-serialized
//! struct to the controller's front socket, then relays the controller's answer.
//!
//! It holds no secret but its TLS key and needs no privilege: it reads its certificate and
//! key and connects to the front socket. Following the dual web server design, no request
//! bytes and no headers reach the controller, only values that parsed.

pub mod cluster;
pub mod config;
pub mod metrics;
pub mod service;
pub mod tls;

mod client_addr;
pub mod connections;
mod front;
pub mod privileges;
pub mod proxy_v2;
mod rate_limit;
mod routes;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

pub use client_addr::{ConnInfo, ForwardedError, MAX_FORWARDED_HOPS, client_ip};
pub use connections::ConnectionStats;
pub use front::{FrontCall, FrontError, FrontHandle};
pub use rate_limit::{DEFAULT_MAX_SOURCES, RateLimiter};
pub use routes::{AppState, router};

use crate::config::{IpNet, WebConfig};
use crate::tls::TlsError;

/// Deadline of the TLS handshake (under pressure
/// [`connections::PRESSURE_PENDING_TIMEOUT`] from accept to the first request's headers).
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
/// At most one summary line of refused and reclaimed connections per this long.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// The web front could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
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
    if tls::ensure_self_signed(
        &config.cert,
        &config.key,
        &default_names(config.listen.ip()),
    )? {
        tracing::info!(cert = %config.cert.display(), "generated a self-signed certificate");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: config.listen,
            source,
        })?;
    let loaded = load_tls(&config)?;
    raise_fd_limit(config.connections.max_connections);
    let stats = Arc::<ConnectionStats>::default();
    let _metrics = match config.metrics_listen {
        Some(addr) => {
            let for_scrape = stats.clone();
            let scrape = crate::metrics::scrape(move || {
                let registry = crate::metrics::web_registry(&for_scrape);
                async move { registry }
            });
            Some(AbortOnDrop(crate::metrics::serve(addr, scrape).await?))
        }
        None => None,
    };
    let uid = privileges::drop_to(&config.user)?;
    tracing::info!(uid = uid.as_raw(), user = %config.user, "web front runs unprivileged");
    crate::service::ready("web front serving");
    let watchdog = crate::service::spawn_watchdog(|| async { true });
    let served = serve_loaded(config, listener, loaded, stats, shutdown_signal()).await;
    crate::service::stopping();
    watchdog.iter().for_each(tokio::task::JoinHandle::abort);
    served
}

/// Raises the soft descriptor limit to the hard one (while still root, the hard one too when
/// it is below what `max_connections` needs), so the cap, not `EMFILE`, bounds connections.
fn raise_fd_limit(max_connections: u32) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = libc::rlim_t::from(max_connections) * 2 + 256;
    if limit.rlim_max < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        // SAFETY: `raised` is a valid rlimit; raising the hard limit needs root and may fail.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return;
        }
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit within the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "cannot raise the descriptor limit"
            );
        }
    }
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
    serve_counted(config, listener, Arc::default(), shutdown).await
}

/// Like [`serve`], counting connections into `stats` (for metrics and tests).
pub async fn serve_counted(
    config: WebConfig,
    listener: TcpListener,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebError> {
    let loaded = load_tls(&config)?;
    serve_loaded(config, listener, loaded, stats, shutdown).await
}

async fn serve_loaded(
    config: WebConfig,
    listener: TcpListener,
    loaded: LoadedTls,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebError> {
    let LoadedTls {
        acceptor,
        pin,
        routes,
    } = loaded;
    let (front, _refresher) = match (&config.cluster, routes) {
        (Some(cluster), Some(routes)) => {
            let refresher = routes.spawn_refresher(cluster.refresh);
            tracing::info!(
                controllers = cluster.controllers.len(),
                "web node forwards over the cluster API"
            );
            (FrontHandle::cluster(routes), Some(AbortOnDrop(refresher)))
        }
        _ => (
            FrontHandle::new(&config.front_socket, config.request_timeout),
            None,
        ),
    };
    let proxy_peers: Arc<[IpNet]> = config.proxy_protocol_peers.clone().into();
    let (www_tx, www_rx) = watch::channel(None);
    let (web_tx, mut web_rx) = watch::channel(None);
    // The state is known before the first request is accepted.
    refresh_notices(&front, &www_tx, &web_tx).await;
    if let Some(message) = web_rx.borrow_and_update().clone() {
        tracing::warn!(message = %message, "web is shut down by a signed notice; not serving");
        return Ok(());
    }
    let _notices = AbortOnDrop(tokio::spawn(follow_notices(front.clone(), www_tx, web_tx)));
    let trusted_proxies: Arc<[IpNet]> = config.trusted_proxies.clone().into();
    let state = AppState {
        www_shutdown: www_rx,
        front,
        trusted_proxies: trusted_proxies.clone(),
        request_timeout: config.request_timeout,
    };
    let admission = Arc::new(Admission {
        limiter: RateLimiter::new(
            config.rate_limit_per_minute,
            config.rate_limit_burst,
            DEFAULT_MAX_SOURCES,
        ),
        trusted_proxies,
        stats: stats.clone(),
        app: router(state),
    });
    let tracker = connections::Tracker::new(config.connections, stats);
    let _summary = AbortOnDrop(tokio::spawn(connections::summarize(
        tracker.clone(),
        SUMMARY_INTERVAL,
    )));
    // A connection never outlives this: handshake, its lifetime, a last request and slack.
    let connection_deadline = HANDSHAKE_TIMEOUT
        + CONNECTION_LIFETIME
        + HEADER_TIMEOUT
        + config.request_timeout
        + Duration::from_secs(5);
    let local = listener.local_addr().map_err(WebError::Accept)?;
    tracing::info!(
        listen = %local,
        cert_sha256 = %pin,
        front_socket = %config.front_socket.display(),
        max_connections = config.connections.max_connections,
        max_per_source = config.connections.max_per_source,
        "web front serving"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            Ok(()) = web_rx.changed() => {
                let message = web_rx.borrow_and_update().clone();
                if message.is_none() {
                    continue;
                }
                tracing::warn!(message = ?message, "web shut down by a signed notice; the web front stops serving");
                break;
            }
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
        let proxy = proxy_peers
            .iter()
            .any(|net| net.contains(peer.ip().to_canonical()));
        // A load balancer speaks for many sources: only the global cap applies to it.
        let Ok((admitted, mut reclaimed)) = tracker.admit(peer.ip(), !proxy, Instant::now()) else {
            // Counted by the tracker and summarized by `connections::summarize`.
            drop(tcp);
            continue;
        };
        let conn = Connection {
            tcp,
            acceptor: acceptor.clone(),
            admission: admission.clone(),
            info: ConnInfo::direct(peer),
            proxy,
            stop: stop_rx.clone(),
            admitted,
        };
        connections.spawn(async move {
            tokio::select! {
                finished = tokio::time::timeout(connection_deadline, conn.run()) => {
                    if finished.is_err() {
                        tracing::debug!(%peer, "connection deadline passed");
                    }
                }
                Ok(()) = &mut reclaimed => tracing::debug!(%peer, "reclaimed before its first request"),
            }
        });
    }
    tracing::info!("web front stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

/// How often the web front asks the controller for the self-shutdown state.
pub const NOTICE_POLL: Duration = Duration::from_secs(1);

/// Asks the controller once; an unreachable controller leaves the state as it was.
async fn refresh_notices(
    front: &FrontHandle,
    www: &watch::Sender<Option<String>>,
    web: &watch::Sender<Option<String>>,
) {
    match front.notices().await {
        Ok(reply) => {
            let www_now = reply.www_shutdown.then_some(reply.www_message);
            www.send_if_modified(|old| {
                let changed = *old != www_now;
                if changed {
                    tracing::warn!(
                        shutdown = www_now.is_some(),
                        "www self-shutdown state changed"
                    );
                }
                old.clone_from(&www_now);
                changed
            });
            let web_now = reply.web_shutdown.then_some(reply.web_message);
            web.send_if_modified(|old| {
                let changed = *old != web_now;
                old.clone_from(&web_now);
                changed
            });
        }
        Err(err) => tracing::debug!("cannot ask the controller for notices: {err}"),
    }
}

async fn follow_notices(
    front: FrontHandle,
    www: watch::Sender<Option<String>>,
    web: watch::Sender<Option<String>>,
) {
    loop {
        tokio::time::sleep(NOTICE_POLL).await;
        refresh_notices(&front, &www, &web).await;
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    // EMFILE/ENFILE (out of descriptors) are transient too: connections will close.
    matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    ) || matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Completes once shutdown is asked for.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let asked = stop.wait_for(|stop| *stop).await.is_ok();
    if !asked {
        std::future::pending::<()>().await;
    }
}

/// What every request passes before the router: the per-source rate limit, answered here
/// so that a 429 costs no more than parsing the request line and headers did.
struct Admission {
    limiter: RateLimiter,
    trusted_proxies: Arc<[IpNet]>,
    stats: Arc<ConnectionStats>,
    app: axum::Router,
}

/// The body of every 429 (checked against [`PublicCode::RateLimited`] by a test).
///
/// [`PublicCode::RateLimited`]: xdpgate_protocol::PublicCode::RateLimited
const RATE_LIMITED_BODY: &str = r#"{"error":"rate_limited"}"#;

impl Admission {
    /// `None` when `request` may go on to the router, else the 429 to send.
    fn limited(
        &self,
        request: &http::Request<hyper::body::Incoming>,
        info: &ConnInfo,
    ) -> Option<http::Response<axum::body::Body>> {
        // A trusted proxy's malformed forwarding header is the router's to answer.
        let ip = client_ip(
            info,
            request.headers().get_all("x-forwarded-for").iter(),
            &self.trusted_proxies,
        )
        .ok()?;
        if self.limiter.check(ip, Instant::now()) {
            return None;
        }
        self.stats
            .rate_limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(rate_limited_response())
    }
}

/// `429 {"error":"rate_limited"}`, shaped as every other refusal of the front.
fn rate_limited_response() -> http::Response<axum::body::Body> {
    let mut response = http::Response::new(axum::body::Body::from(RATE_LIMITED_BODY));
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// One accepted TCP connection.
struct Connection {
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    admission: Arc<Admission>,
    info: ConnInfo,
    /// The peer must send a PROXY v2 header first.
    proxy: bool,
    stop: watch::Receiver<bool>,
    /// Its place in the connection budgets; activated by the first request.
    admitted: connections::Admitted,
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
        let Connection {
            mut tcp,
            acceptor,
            admission,
            mut info,
            proxy,
            mut stop,
            admitted,
        } = self;
        let span =
            tracing::debug_span!("connection", peer = %info.peer, proxied = tracing::field::Empty);
        async move {
            if proxy {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy_v2::read_header(&mut tcp)).await
                {
                    Ok(Ok(announced)) => {
                        info.proxied = announced;
                        if let Some(source) = announced {
                            tracing::Span::current()
                                .record("proxied", tracing::field::display(source));
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
            let service = hyper::service::service_fn(
                move |mut request: http::Request<hyper::body::Incoming>| {
                    let count = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if count == 1 {
                        admitted.activate();
                    }
                    let last = count >= MAX_REQUESTS_PER_CONNECTION;
                    let limited = admission.limited(&request, &info);
                    request.extensions_mut().insert(info);
                    let app = admission.app.clone();
                    async move {
                        let mut response = match limited {
                            Some(response) => response,
                            None => {
                                tower::ServiceExt::oneshot(app, request.map(axum::body::Body::new))
                                    .await?
                            }
                        };
                        if last {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_429_is_the_public_rate_limited_answer() {
        let code = xdpgate_protocol::PublicCode::RateLimited;
        let body: xdpgate_protocol::ErrorBody = serde_json::from_str(RATE_LIMITED_BODY).unwrap();
        assert_eq!(body.error, code.as_str());
        assert_eq!(
            rate_limited_response().status().as_u16(),
            code.http_status()
        );
    }
}
