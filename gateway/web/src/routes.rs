//! The HTTP surface: three routes, each body parsed into its typed struct and re-serialized
//! before it is forwarded; every answer is JSON. Admission (client address, rate limit,
//! request id, the tracing span) runs first, for every request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use tracing::{Instrument as _, field};

use super::client_addr::{ConnInfo, client_ip};
use super::front::{FrontCall, FrontHandle};
use crate::config::IpNet;
use xdpgate_protocol::enrollment;
use xdpgate_protocol::{self as approval, PublicCode};

/// How much of an oversized body is read and dropped before answering 413, so the client
/// sees the answer instead of a connection reset.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(500);
/// How long `/healthz` waits for the controller's socket.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The controller's front API.
    pub front: FrontHandle,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Arc<[IpNet]>,
    /// Deadline of one request, body read and controller call included.
    pub request_timeout: Duration,
    /// The `www` self-shutdown: `Some(message)` while every request gets 503.
    pub www_shutdown: tokio::sync::watch::Receiver<Option<String>>,
}

/// Set by admission, read by the handlers.
#[derive(Clone, Debug)]
struct RequestCtx {
    request_id: String,
    client_ip: IpAddr,
}

/// The router: `POST /v1/approvals`, `POST /v1/enroll`, `GET /v1/address`, `GET /healthz`;
/// anything else 404.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(approval::REQUEST_PATH, post(approvals))
        .route(approval::ADDRESS_PATH, get(address))
        .route(enrollment::ENROLL_PATH, post(enroll))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .with_state(state)
}

/// A JSON answer.
fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `{"error":"<code>"}` with `status`.
fn error(status: StatusCode, code: &str) -> Response {
    let body = serde_json::to_vec(&approval::ErrorBody {
        error: code.to_owned(),
        message: None,
    })
    .unwrap_or_default();
    json(status, body)
}

fn public_error(code: PublicCode) -> Response {
    Refusal::public(code).into_response()
}

fn unavailable() -> Response {
    Refusal::UNAVAILABLE.into_response()
}

/// An answer made here rather than by the controller: a status and its public code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
}

impl Refusal {
    /// The controller cannot be reached, or the deadline passed.
    const UNAVAILABLE: Self = Self {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "unavailable",
    };
    /// A `POST` body that is not declared `application/json`.
    const NOT_JSON: Self = Self {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
    };

    fn public(code: PublicCode) -> Self {
        Self {
            status: StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
            code: code.as_str(),
        }
    }

    fn into_response(self) -> Response {
        error(self.status, self.code)
    }
}

fn route_name(path: &str) -> &'static str {
    match path {
        approval::REQUEST_PATH => "approvals",
        enrollment::ENROLL_PATH => "enroll",
        "/healthz" => "healthz",
        _ => "other",
    }
}

/// A 128-bit request id, hex: a random prefix drawn once per process and a counter, so ids
/// are unique across restarts and nodes without a system call per request (the id only
/// correlates log lines of the front and the controller; it is not a secret).
fn new_request_id() -> String {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Should the OS generator ever fail, a zero prefix still gives ids unique per run.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        u64::from_ne_bytes(bytes)
    });
    format!(
        "{prefix:016x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Admission for every request: client address, request id and span (the rate limit is
/// checked before the router, in `web::Admission`).
async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = new_request_id();
    let route = route_name(request.uri().path());
    let span = tracing::info_span!("request", request_id = %request_id, client_ip = field::Empty, route, status = field::Empty);
    async move {
        let www_message = state.www_shutdown.borrow().clone();
        if let Some(message) = www_message {
            let response = shut_down(route, &message);
            tracing::Span::current().record("status", response.status().as_u16());
            tracing::info!("answered (www shut down by notice)");
            return response;
        }
        let Some(conn) = request.extensions().get::<ConnInfo>().copied() else {
            tracing::error!("request without connection info");
            return unavailable();
        };
        let response =
            match client_ip(&conn, request.headers().get_all("x-forwarded-for").iter(), &state.trusted_proxies) {
                Err(err) => {
                    tracing::warn!(peer = %conn.peer, "refusing a trusted proxy's forwarding header: {err}");
                    public_error(PublicCode::Malformed)
                }
                Ok(ip) => {
                    tracing::Span::current().record("client_ip", field::display(ip));
                    request.extensions_mut().insert(RequestCtx { request_id: request_id.clone(), client_ip: ip });
                    next.run(request).await
                }
            };
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        // No line per answered request at the default level: under a flood it would cost
        // the front a formatted write per request and fill the disk. The metrics and the
        // controller's audit log count them; `--log xdpgate=debug` shows each.
        if status.is_server_error() {
            tracing::info!("answered");
        } else {
            tracing::debug!("answered");
        }
        response
    }
    .instrument(span)
    .await
}

/// The answer to every request while `www` is shut down by a notice; `/healthz` says so.
fn shut_down(route: &str, message: &str) -> Response {
    let body = if route == "healthz" {
        serde_json::json!({ "status": "shutdown", "message": message })
    } else {
        serde_json::json!({ "error": PublicCode::Shutdown.as_str(), "message": message })
    };
    json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

async fn approvals(State(state): State<AppState>, request: Request) -> Response {
    forward(&state, FrontCall::Approval, request).await
}

async fn enroll(State(state): State<AppState>, request: Request) -> Response {
    forward(&state, FrontCall::Enroll, request).await
}

/// The caller's address as the front sees it (after PROXY v2 / `X-Forwarded-For` from trusted
/// peers): what a client behind NAT reports inside its box. Unauthenticated on purpose: a
/// lie here only makes the client's request fail the address check.
async fn address(request: Request) -> Response {
    match request.extensions().get::<RequestCtx>() {
        Some(ctx) => json(
            StatusCode::OK,
            format!("{{\"address\":\"{}\"}}", ctx.client_ip.to_canonical()),
        ),
        None => unavailable(),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state
        .front
        .reachable(HEALTH_TIMEOUT.min(state.request_timeout))
        .await
    {
        json(StatusCode::OK, r#"{"status":"ok"}"#)
    } else {
        unavailable()
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
}

/// Reads, checks and re-serializes the body, forwards it and relays the answer, all within
/// the request deadline.
async fn forward(state: &AppState, call: FrontCall, request: Request) -> Response {
    let Some(ctx) = request.extensions().get::<RequestCtx>().cloned() else {
        return unavailable();
    };
    let limit = match call {
        FrontCall::Approval => approval::MAX_REQUEST_BODY_BYTES,
        FrontCall::Enroll => enrollment::MAX_ENROLL_BODY_BYTES,
    };
    let (parts, body) = request.into_parts();
    let work = async {
        if !declares_json(&parts.headers) {
            drain(body).await;
            return Err(Refusal::NOT_JSON);
        }
        let bytes = read_body(&parts.headers, body, limit).await?;
        let clean = reserialize(call, &bytes)?;
        relay(state, call, clean, &ctx).await
    };
    match tokio::time::timeout(state.request_timeout, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(refusal)) => refusal.into_response(),
        Err(_) => {
            tracing::warn!("request deadline of {:?} passed", state.request_timeout);
            unavailable()
        }
    }
}

/// Whether the request declares `Content-Type: application/json` (parameters such as
/// `charset=utf-8` allowed, media type case-insensitive).
fn declares_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let media_type = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    media_type.is_some_and(|m| m.eq_ignore_ascii_case("application/json"))
}

/// The body, at most `limit` bytes; 413 before reading when the declared length is over.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        drain(body).await;
        return Err(Refusal::public(PublicCode::PayloadTooLarge));
    }
    let mut body = body;
    let mut collected = Vec::new();
    loop {
        match body.frame().await {
            None => return Ok(Bytes::from(collected)),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if collected.len() + data.len() > limit {
                    drain(body).await;
                    return Err(Refusal::public(PublicCode::PayloadTooLarge));
                }
                collected.extend_from_slice(&data);
            }
            Some(Err(err)) => {
                tracing::debug!("reading the body failed: {err}");
                return Err(Refusal::public(PublicCode::Malformed));
            }
        }
    }
}

/// Reads and drops up to [`DRAIN_LIMIT`] more bytes for up to [`DRAIN_TIME`].
async fn drain(body: Body) {
    let mut limited = Limited::new(body, DRAIN_LIMIT);
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(_)) = limited.frame().await {}
    })
    .await;
}

/// Parses into the typed struct and serializes that again: only known fields, in canonical
/// form, reach the controller.
fn reserialize(call: FrontCall, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    match call {
        FrontCall::Approval => {
            let request = approval::parse_request(body).map_err(|rejection| {
                tracing::debug!("malformed approval request: {rejection}");
                Refusal::public(rejection.public_code())
            })?;
            request.to_json().map_err(|err| {
                tracing::error!("re-serializing an approval request failed: {err}");
                Refusal::UNAVAILABLE
            })
        }
        FrontCall::Enroll => {
            // Sealed: the front checks the envelope's shape and relays ciphertext it cannot read.
            let request = enrollment::SealedEnrollRequest::parse(body).map_err(|err| {
                tracing::debug!("{err}");
                Refusal::public(PublicCode::Malformed)
            })?;
            request.to_json().map_err(|err| {
                tracing::error!("re-serializing an enrollment request failed: {err}");
                Refusal::UNAVAILABLE
            })
        }
    }
}

async fn relay(
    state: &AppState,
    call: FrontCall,
    body: Vec<u8>,
    ctx: &RequestCtx,
) -> Result<Response, Refusal> {
    let reply = state
        .front
        .call(
            call,
            body,
            ctx.client_ip.to_string(),
            ctx.request_id.clone(),
        )
        .await
        .map_err(|err| {
            tracing::warn!("controller unavailable: {err}");
            Refusal::UNAVAILABLE
        })?;
    let status = u16::try_from(reply.http_status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .filter(|s| s.as_u16() >= 200);
    let Some(status) = status else {
        tracing::error!("controller answered with HTTP status {}", reply.http_status);
        return Err(Refusal::UNAVAILABLE);
    };
    Ok(json(status, reply.body))
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    fn streamed(chunks: usize, chunk_len: usize) -> Body {
        let frames = (0..chunks)
            .map(move |_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![b'x'; chunk_len]))));
        Body::new(StreamBody::new(tokio_stream::iter(frames)))
    }

    #[tokio::test]
    async fn body_limit_holds_without_a_content_length() {
        let headers = HeaderMap::new();
        let ok = read_body(&headers, streamed(8, 1024), 8192).await.unwrap();
        assert_eq!(ok.len(), 8192);
        let over = read_body(&headers, streamed(9, 1024), 8192)
            .await
            .unwrap_err();
        assert_eq!(over, Refusal::public(PublicCode::PayloadTooLarge));
        // An endless stream is cut off, not read to the end.
        let endless = Body::new(StreamBody::new(tokio_stream::iter(std::iter::repeat_with(
            || Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&[b'x'; 1024]))),
        ))));
        let started = std::time::Instant::now();
        let over = read_body(&headers, endless, 8192).await.unwrap_err();
        assert_eq!(over, Refusal::public(PublicCode::PayloadTooLarge));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from_static("1000000000"),
        );
        let over = read_body(&headers, streamed(1, 10), 8192)
            .await
            .unwrap_err();
        assert_eq!(over, Refusal::public(PublicCode::PayloadTooLarge));
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::CONTENT_TYPE, HeaderValue::from_static(value));
            }
            declares_json(&headers)
        };
        assert!(with(&["application/json"]));
        assert!(with(&["Application/JSON; charset=utf-8"]));
        assert!(!with(&[]), "a missing Content-Type is refused");
        assert!(!with(&["text/plain"]));
        assert!(!with(&["application/json-seq"]));
        assert!(!with(&["application/x-www-form-urlencoded"]));
        assert!(
            !with(&["application/json", "application/json"]),
            "two Content-Type headers are refused"
        );
    }

    #[test]
    fn request_ids_are_random_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
