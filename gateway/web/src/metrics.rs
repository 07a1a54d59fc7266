//! The `GET /metrics` listener (OpenMetrics text, prometheus-client) and the web front's
//! registry, read from its connection counters when scraped.
use std::{net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

/// The web front's registry, read from its connection counters at scrape time.
pub fn web_registry(stats: &crate::ConnectionStats) -> Registry {
    use std::sync::atomic::Ordering::Relaxed;
    let mut registry = Registry::default();
    let open = Gauge::<i64>::default();
    open.set(i64::try_from(stats.open.load(Relaxed)).unwrap_or(i64::MAX));
    registry.register(
        "xdpgate_web_connections_open",
        "Web front connections open now",
        open,
    );
    let refused = Family::<Vec<(&'static str, String)>, Counter>::default();
    for (reason, value) in [
        ("per_source", stats.refused_per_source.load(Relaxed)),
        ("full", stats.refused_full.load(Relaxed)),
    ] {
        refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc_by(value);
    }
    registry.register(
        "xdpgate_web_connections_refused",
        "Web front connections closed at accept: source over its budget, or cap reached",
        refused,
    );
    let reclaimed = Counter::<u64>::default();
    reclaimed.inc_by(stats.reclaimed.load(Relaxed));
    registry.register(
        "xdpgate_web_connections_reclaimed",
        "Idle web front connections closed to make room near the cap",
        reclaimed,
    );
    let limited = Counter::<u64>::default();
    limited.inc_by(stats.rate_limited.load(Relaxed));
    registry.register(
        "xdpgate_web_rate_limited",
        "Requests answered 429 by the web front's per-source limit",
        limited,
    );
    registry
}

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
#[error("metrics listener on {addr}: {source}")]
pub struct MetricsError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Builds the registry for one scrape.
pub type Scrape =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Registry> + Send>> + Send + Sync>;

/// Wraps an async registry builder as a [`Scrape`].
pub fn scrape<F, Fut>(build: F) -> Scrape
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Registry> + Send + 'static,
{
    Arc::new(
        move || -> std::pin::Pin<Box<dyn Future<Output = Registry> + Send>> { Box::pin(build()) },
    )
}

/// Binds `addr` and serves `GET /metrics` (OpenMetrics text) on it until aborted.
pub async fn serve(
    addr: SocketAddr,
    scrape: Scrape,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    tracing::info!(listen = %addr, "metrics listener serving /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let scrape = scrape.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(request, scrape).await) }
                });
                let connection =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), connection).await;
            });
        }
    }))
}

async fn answer(request: Request<hyper::body::Incoming>, scrape: Scrape) -> Response<Full<Bytes>> {
    let reply = |status: u16, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.method() != http::Method::GET || request.uri().path() != "/metrics" {
        return reply(404, "text/plain", "only GET /metrics\n".to_owned());
    }
    let registry = scrape().await;
    let mut body = String::new();
    match encode(&mut body, &registry) {
        Ok(()) => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(_) => reply(500, "text/plain", "encoding failed\n".to_owned()),
    }
}
