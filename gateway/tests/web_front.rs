//! The web front over real HTTPS on loopback, against an in-test controller that serves the
//! front API on a Unix socket: what is forwarded (only re-serialized, valid bodies), what is
//! answered locally, rate limiting, a dead or stuck controller, and the reference client's
//! enroll and connect through it all.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a panic is the failure report

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use xdpgate::approval::{
    self, ClientCredentials, ClientRecord, ClientRsaKey, ClientRsaPublicKey, ConnectTarget,
    HmacSecret, MemoryState, RequestParams, ResponsePayload, ServerBoxKeys, ServerPolicy,
    TransportProtocol, ValidationConfig,
};
use xdpgate::client::https::{self, Endpoint, HttpsReply, HttpsRequest};
use xdpgate::client::{self, ClientCommandError, ConnectOptions, EnrollOptions};
use xdpgate::config::{IpNet, WebConfig};
use xdpgate::enrollment::{
    self, EnrollRequest, EnrollResponse, EnrollmentLink, OpenSealedRequest as _,
    SealedEnrollRequest,
};
use xdpgate::{tls, web};
use xdpgate_proto::front::v1::{FrontReply, FrontRequest, NoticesReply};
use xdpgate_proto::front::wire::{Connection, FrontService, serve_connection};

const CLIENT_A_PEM: &str = include_str!("../src/approval/testdata/client_a_rsa4096.pem");

/// The in-test controller's long-term box secret key (its public half goes into links).
const MINI_BOX_SECRET: [u8; 32] = [0x42; 32];

fn mini_box_key() -> approval::BoxPublicKey {
    ServerBoxKeys::from_secret_bytes(MINI_BOX_SECRET).public_key()
}

/// What the in-test controller received.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Received {
    Approval(FrontRequest),
    Enroll(FrontRequest),
}

/// How the in-test controller answers.
#[derive(Clone)]
enum Behaviour {
    /// Every call gets this status and body.
    Canned(u32, Vec<u8>),
    /// A tiny real controller: enrollment with one token, validation and sealing.
    Real(Arc<MiniController>),
}

#[derive(Clone)]
struct FakeFront {
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Behaviour,
}

impl FakeFront {
    fn answer(&self, received: Received) -> FrontReply {
        let reply = match (&self.behaviour, &received) {
            (Behaviour::Canned(status, body), _) => FrontReply {
                http_status: *status,
                body: body.clone(),
            },
            (Behaviour::Real(mini), Received::Approval(request)) => mini.approve(request),
            (Behaviour::Real(mini), Received::Enroll(request)) => mini.enroll(request),
        };
        self.received.lock().unwrap().push(received);
        reply
    }
}

impl FrontService for FakeFront {
    async fn submit_approval(&self, request: FrontRequest) -> Result<FrontReply, String> {
        Ok(self.answer(Received::Approval(request)))
    }

    async fn enroll(&self, request: FrontRequest) -> Result<FrontReply, String> {
        Ok(self.answer(Received::Enroll(request)))
    }

    fn notices(&self) -> NoticesReply {
        NoticesReply::default()
    }
}

/// Enough of a controller to enroll one client and approve its requests for real.
struct MiniController {
    token: String,
    keys: ServerBoxKeys,
    hmac_secret: HmacSecret,
    state: Mutex<MemoryState>,
    token_used: Mutex<bool>,
}

impl MiniController {
    fn new(token: String) -> Self {
        let mut state = MemoryState::new();
        // The harness's clients connect from loopback, which is never openable: under the
        // default (proven-address) policy nothing could open, so vpn1 opens what the
        // request reports (the reference client's addresses, not a relay's).
        state.add_server_here(
            "vpn1",
            ServerPolicy {
                address_policy: approval::AddressPolicy::OpenAll,
            },
        );
        state.add_server_here("vpn2", ServerPolicy::default());
        state.allow("laptop-1", "vpn1");
        Self {
            token,
            keys: ServerBoxKeys::from_secret_bytes(MINI_BOX_SECRET),
            hmac_secret: HmacSecret::generate().unwrap(),
            state: Mutex::new(state),
            token_used: Mutex::new(false),
        }
    }

    fn error(status: u32, code: &str) -> FrontReply {
        FrontReply {
            http_status: status,
            body: format!(r#"{{"error":"{code}"}}"#).into_bytes(),
        }
    }

    fn enroll(&self, request: &FrontRequest) -> FrontReply {
        let Ok((enroll, opened)) =
            SealedEnrollRequest::parse(&request.body).and_then(|s| s.open(&self.keys))
        else {
            return Self::error(400, "malformed");
        };
        let mut used = self.token_used.lock().unwrap();
        if enroll.token != self.token || *used {
            return Self::error(403, "denied");
        }
        *used = true;
        let rsa_public_key = ClientRsaPublicKey::from_pem(&enroll.rsa_public_key_pem).unwrap();
        self.state.lock().unwrap().add_client(ClientRecord {
            client_id: "laptop-1".into(),
            enabled: true,
            hmac_secret: self.hmac_secret.clone(),
            rsa_public_key,
        });
        let answer = EnrollResponse {
            request_sha256: opened.request_sha256().to_owned(),
            client_id: "laptop-1".into(),
            hmac_secret: self.hmac_secret.to_base64().to_string(),
            servers: vec!["vpn1".into(), "vpn2".into()],
            totp: None,
        };
        FrontReply {
            http_status: 200,
            body: opened.seal(&answer).unwrap().to_json().unwrap(),
        }
    }

    fn approve(&self, request: &FrontRequest) -> FrontReply {
        let parsed = match approval::parse_request(&request.body) {
            Ok(parsed) => parsed,
            Err(rejection) => {
                return Self::error(
                    u32::from(rejection.http_status()),
                    rejection.public_code().as_str(),
                );
            }
        };
        let remote: IpAddr = request.remote_address.parse().unwrap();
        let now = xdpgate::clock::unix_ms() / 1000;
        let state = self.state.lock().unwrap();
        match approval::validate(
            &parsed,
            &*state,
            &self.keys,
            remote,
            now,
            &ValidationConfig::default(),
        ) {
            Ok(approved) => {
                let connect = ConnectTarget {
                    host_ipv4: Some("192.0.2.1".parse().unwrap()),
                    host_ipv6: None,
                    port: 1194,
                    protocol: TransportProtocol::Udp,
                };
                let payload =
                    ResponsePayload::allow(connect, approved.open_addresses.clone(), now + 180);
                let sealed = approval::seal_response(
                    &approved.binding,
                    &self.keys,
                    approved.client_hmac_secret(),
                    &payload,
                )
                .unwrap();
                FrontReply {
                    http_status: 200,
                    body: sealed.to_json().unwrap(),
                }
            }
            Err(rejection) => match rejection.binding() {
                Some(binding) => {
                    let payload = ResponsePayload::deny(rejection.public_code());
                    let sealed =
                        approval::seal_response(binding, &self.keys, &self.hmac_secret, &payload)
                            .unwrap();
                    FrontReply {
                        http_status: u32::from(rejection.http_status()),
                        body: sealed.to_json().unwrap(),
                    }
                }
                None => Self::error(
                    u32::from(rejection.http_status()),
                    rejection.public_code().as_str(),
                ),
            },
        }
    }
}

/// A running web front (and, unless dead, its controller), stopped on drop.
struct Harness {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    pin: [u8; 32],
    cert: PathBuf,
    received: Arc<Mutex<Vec<Received>>>,
    stop_web: Option<oneshot::Sender<()>>,
    web: Option<tokio::task::JoinHandle<Result<(), web::WebError>>>,
    stop_front: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
enum Controller {
    Serving(Behaviour),
    /// Nothing listens on the socket path.
    Dead,
    /// A socket that accepts connections but never answers.
    Stuck,
}

struct Setup {
    controller: Controller,
    per_minute: u32,
    burst: u32,
    trusted_proxies: Vec<IpNet>,
    request_timeout: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            controller: Controller::Serving(Behaviour::Canned(
                202,
                br#"{"relayed":["verbatim",1]}"#.to_vec(),
            )),
            per_minute: 6000,
            burst: 1000,
            trusted_proxies: Vec::new(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Harness {
    async fn start(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("web/cert.pem");
        let key = dir.path().join("web/key.pem");
        tls::ensure_self_signed(&cert, &key, &["localhost".into()]).unwrap();
        let pin = tls::parse_pin_hex(&tls::cert_sha256_hex(&cert).unwrap()).unwrap();
        let socket = dir.path().join("front.sock");
        let received = Arc::new(Mutex::new(Vec::new()));
        let mut stop_front = None;
        let mut stuck_listener = None;
        match setup.controller {
            Controller::Serving(behaviour) => {
                let listener = UnixListener::bind(&socket).unwrap();
                let service = FakeFront {
                    received: received.clone(),
                    behaviour,
                };
                let (tx, rx) = oneshot::channel::<()>();
                stop_front = Some(tx);
                let service = Arc::new(service);
                tokio::spawn(async move {
                    let stopped = async {
                        let _ = rx.await;
                    };
                    tokio::pin!(stopped);
                    loop {
                        let stream = tokio::select! {
                            () = &mut stopped => break,
                            accepted = listener.accept() => accepted.unwrap().0,
                        };
                        let service = service.clone();
                        tokio::spawn(async move {
                            let _ = serve_connection(
                                Connection::new(stream),
                                &*service,
                                std::future::pending(),
                            )
                            .await;
                        });
                    }
                });
            }
            Controller::Dead => {}
            Controller::Stuck => {
                stuck_listener = Some(std::os::unix::net::UnixListener::bind(&socket).unwrap())
            }
        }
        let config = WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: cert.clone(),
            key,
            front_socket: socket,
            trusted_proxies: setup.trusted_proxies,
            rate_limit_per_minute: setup.per_minute,
            rate_limit_burst: setup.burst,
            request_timeout: setup.request_timeout,
            user: "nobody".into(),
            proxy_protocol_peers: Vec::new(),
            cluster: None,
            connections: xdpgate::config::ConnectionLimits::default(),
            metrics_listen: None,
        };
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let web = tokio::spawn(async move {
            let _stuck = stuck_listener;
            web::serve(config, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Self {
            _dir: dir,
            addr,
            pin,
            cert,
            received,
            stop_web: Some(tx),
            web: Some(web),
            stop_front,
        }
    }

    fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> HttpsReply {
        let endpoint = Endpoint::parse(&self.base_url()).unwrap();
        let config = Arc::new(tls::pinned_client_config(vec![self.pin]).unwrap());
        https::send(
            &endpoint,
            config,
            HttpsRequest {
                method,
                path,
                headers,
                body,
            },
            Duration::from_secs(10),
            1 << 20,
        )
        .await
        .unwrap()
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> HttpsReply {
        self.request(Method::POST, path, Vec::new(), body).await
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop_web.take() {
            let _ = tx.send(());
        }
        if let Some(web) = self.web.take() {
            tokio::time::timeout(Duration::from_secs(10), web)
                .await
                .expect("web front stops")
                .unwrap()
                .unwrap();
        }
        if let Some(tx) = self.stop_front.take() {
            let _ = tx.send(());
        }
    }
}

fn body_json(reply: &HttpsReply) -> serde_json::Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {:?}",
            String::from_utf8_lossy(&reply.body)
        )
    })
}

fn assert_error(reply: &HttpsReply, status: u16, code: &str) {
    assert_eq!(
        reply.status,
        status,
        "body {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(body_json(reply), serde_json::json!({ "error": code }));
}

fn signed_request() -> approval::ApprovalRequest {
    let creds = ClientCredentials::new(
        "client-0001".into(),
        HmacSecret::generate().unwrap(),
        ClientRsaKey::from_pkcs8_pem(CLIENT_A_PEM).unwrap(),
        ServerBoxKeys::generate().unwrap().public_key(),
    )
    .unwrap();
    let params = RequestParams {
        server: "vpn1".into(),
        public_ipv4: Some("203.0.113.7".parse().unwrap()),
        public_ipv6: None,
        client_version: "test".into(),
        device_name: "test".into(),
        passcode: None,
    };
    approval::build_request(&creds, &params, 1_700_000_000)
        .unwrap()
        .0
}

/// The same JSON object with its keys in another order and whitespace added.
fn reordered(json: &[u8]) -> Vec<u8> {
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).unwrap();
    let mut text = String::from("{\n");
    let entries: Vec<String> = value
        .iter()
        .rev()
        .map(|(k, v)| format!("  {:?} : {}", k, v))
        .collect();
    text.push_str(&entries.join(",\n"));
    text.push_str("\n}\n");
    text.into_bytes()
}

#[tokio::test]
async fn valid_approval_is_forwarded_re_serialized_and_the_reply_relayed_verbatim() {
    let harness = Harness::start(Setup::default()).await;
    let request = signed_request();
    let canonical = request.to_json().unwrap();
    let sent = reordered(&canonical);
    assert_ne!(sent, canonical);

    let reply = harness.post(approval::REQUEST_PATH, sent).await;
    assert_eq!(reply.status, 202);
    assert_eq!(
        reply.body.as_ref(),
        br#"{"relayed":["verbatim",1]}"#,
        "body relayed byte for byte"
    );
    assert_eq!(
        reply.server_cert.as_ref().map(|c| tls::cert_sha256(c)),
        Some(harness.pin)
    );

    let received = harness.received();
    let [Received::Approval(forwarded)] = received.as_slice() else {
        panic!("expected one approval, got {received:?}")
    };
    assert_eq!(
        forwarded.body, canonical,
        "the controller gets the re-serialized struct, not the client's bytes"
    );
    assert_eq!(forwarded.remote_address, "127.0.0.1");
    assert_eq!(forwarded.request_id.len(), 32);
    assert!(forwarded.request_id.bytes().all(|b| b.is_ascii_hexdigit()));

    // A second request gets another id.
    harness
        .post(approval::REQUEST_PATH, canonical.clone())
        .await;
    let ids: Vec<String> = harness
        .received()
        .iter()
        .map(|r| match r {
            Received::Approval(f) | Received::Enroll(f) => f.request_id.clone(),
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    harness.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_answered_locally_and_never_forwarded() {
    let harness = Harness::start(Setup::default()).await;
    let canonical = signed_request().to_json().unwrap();

    let mut extra: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
    extra["admin"] = serde_json::json!(true);
    assert_error(
        &harness
            .post(approval::REQUEST_PATH, serde_json::to_vec(&extra).unwrap())
            .await,
        400,
        "malformed",
    );

    assert_error(
        &harness
            .post(approval::REQUEST_PATH, b"{\"version\":1,".to_vec())
            .await,
        400,
        "malformed",
    );
    assert_error(
        &harness.post(approval::REQUEST_PATH, Vec::new()).await,
        400,
        "malformed",
    );

    let mut padded = canonical.clone();
    padded.truncate(padded.len() - 1);
    padded.extend(std::iter::repeat_n(b' ', approval::MAX_REQUEST_BODY_BYTES));
    padded.push(b'}');
    assert!(padded.len() > approval::MAX_REQUEST_BODY_BYTES);
    assert_error(
        &harness.post(approval::REQUEST_PATH, padded).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &harness
            .post(approval::REQUEST_PATH, vec![b'x'; 1 << 20])
            .await,
        413,
        "payload_too_large",
    );

    let enroll_extra = br#"{"token":"x","rsa_public_key_pem":"y","device_name":"z","admin":true}"#;
    assert_error(
        &harness
            .post(enrollment::ENROLL_PATH, enroll_extra.to_vec())
            .await,
        400,
        "malformed",
    );
    assert_error(
        &harness
            .post(
                enrollment::ENROLL_PATH,
                vec![b' '; enrollment::MAX_ENROLL_BODY_BYTES + 1],
            )
            .await,
        413,
        "payload_too_large",
    );

    assert!(
        harness.received().is_empty(),
        "nothing reached the controller: {:?}",
        harness.received()
    );

    // Unknown routes and methods answer JSON too, and forward nothing.
    assert_error(
        &harness
            .request(Method::GET, "/v1/other", Vec::new(), Vec::new())
            .await,
        404,
        "not_found",
    );
    assert_error(
        &harness
            .request(Method::GET, approval::REQUEST_PATH, Vec::new(), Vec::new())
            .await,
        405,
        "method_not_allowed",
    );
    assert!(harness.received().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn enrollment_is_forwarded_re_serialized() {
    let harness = Harness::start(Setup::default()).await;
    let request = EnrollRequest {
        token: "A".repeat(enrollment::token_text_len()),
        rsa_public_key_pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        device_name: "laptop".into(),
    };
    let (sealed, _) =
        enrollment::seal_request(&request, mini_box_key(), Some("ctl-a".into())).unwrap();
    let canonical = sealed.to_json().unwrap();
    let reply = harness
        .post(enrollment::ENROLL_PATH, reordered(&canonical))
        .await;
    assert_eq!(reply.status, 202);
    let received = harness.received();
    let [Received::Enroll(forwarded)] = received.as_slice() else {
        panic!("expected one enrollment, got {received:?}")
    };
    assert_eq!(forwarded.body, canonical);
    harness.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let body = signed_request().to_json().unwrap();
    let xff = vec![("x-forwarded-for", "192.0.2.99, 198.51.100.7".to_owned())];

    let direct = Harness::start(Setup::default()).await;
    direct
        .request(
            Method::POST,
            approval::REQUEST_PATH,
            xff.clone(),
            body.clone(),
        )
        .await;
    let received = direct.received();
    let [Received::Approval(f)] = received.as_slice() else {
        panic!("{received:?}")
    };
    assert_eq!(
        f.remote_address, "127.0.0.1",
        "an untrusted peer's header is ignored"
    );
    direct.stop().await;

    let behind_proxy = Harness::start(Setup {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..Setup::default()
    })
    .await;
    behind_proxy
        .request(Method::POST, approval::REQUEST_PATH, xff, body.clone())
        .await;
    let bad = vec![("x-forwarded-for", "not-an-address".to_owned())];
    assert_error(
        &behind_proxy
            .request(Method::POST, approval::REQUEST_PATH, bad, body)
            .await,
        400,
        "malformed",
    );
    let received = behind_proxy.received();
    let [Received::Approval(f)] = received.as_slice() else {
        panic!("{received:?}")
    };
    assert_eq!(
        f.remote_address, "198.51.100.7",
        "the last untrusted hop from a trusted proxy"
    );
    behind_proxy.stop().await;
}

#[tokio::test]
async fn the_address_echo_answers_the_address_an_approval_would_come_from() {
    let xff = vec![("x-forwarded-for", "192.0.2.99, 198.51.100.7".to_owned())];
    let direct = Harness::start(Setup::default()).await;
    let reply = direct
        .request(Method::GET, approval::ADDRESS_PATH, xff.clone(), Vec::new())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        body_json(&reply),
        serde_json::json!({ "address": "127.0.0.1" }),
        "an untrusted peer's header is ignored"
    );
    assert!(
        direct.received().is_empty(),
        "the echo forwards nothing to the controller"
    );
    direct.stop().await;

    let behind_proxy = Harness::start(Setup {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..Setup::default()
    })
    .await;
    let reply = behind_proxy
        .request(Method::GET, approval::ADDRESS_PATH, xff, Vec::new())
        .await;
    assert_eq!(
        body_json(&reply),
        serde_json::json!({ "address": "198.51.100.7" }),
        "the same address approvals see"
    );
    behind_proxy.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_after_the_burst() {
    let harness = Harness::start(Setup {
        per_minute: 1,
        burst: 3,
        ..Setup::default()
    })
    .await;
    let body = signed_request().to_json().unwrap();
    for _ in 0..3 {
        assert_eq!(
            harness
                .post(approval::REQUEST_PATH, body.clone())
                .await
                .status,
            202
        );
    }
    assert_error(
        &harness.post(approval::REQUEST_PATH, body.clone()).await,
        429,
        "rate_limited",
    );
    assert_error(
        &harness
            .request(Method::GET, "/healthz", Vec::new(), Vec::new())
            .await,
        429,
        "rate_limited",
    );
    assert_eq!(
        harness.received().len(),
        3,
        "limited requests are not forwarded"
    );
    harness.stop().await;
}

impl Harness {
    async fn session(&self) -> https::Session {
        let endpoint = Endpoint::parse(&self.base_url()).unwrap();
        let config = Arc::new(tls::pinned_client_config(vec![self.pin]).unwrap());
        https::Session::open(&endpoint, config).await.unwrap()
    }
}

#[tokio::test]
async fn a_kept_alive_connection_serves_several_requests_and_is_still_rate_limited() {
    let harness = Harness::start(Setup {
        per_minute: 1,
        burst: 3,
        ..Setup::default()
    })
    .await;
    let body = signed_request().to_json().unwrap();
    let mut session = harness.session().await;
    for _ in 0..3 {
        let reply = session
            .send(
                HttpsRequest::post_json(approval::REQUEST_PATH, body.clone()),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 202);
    }
    let limited = session
        .send(
            HttpsRequest::post_json(approval::REQUEST_PATH, body.clone()),
            1 << 20,
        )
        .await
        .unwrap();
    assert_error(&limited, 429, "rate_limited");
    assert_eq!(
        harness.received().len(),
        3,
        "the limit counts requests, not connections"
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_connection_closes_after_its_request_quota() {
    let quota = web::MAX_REQUESTS_PER_CONNECTION;
    let allowance = u32::try_from(quota * 2).unwrap();
    let harness = Harness::start(Setup {
        per_minute: allowance,
        burst: allowance,
        ..Setup::default()
    })
    .await;
    let mut session = harness.session().await;
    for n in 1..=quota {
        let reply = session
            .send(HttpsRequest::new(Method::GET, "/healthz"), 1 << 20)
            .await;
        assert!(
            reply.is_ok_and(|r| r.status == 200),
            "request {n} of {quota} on one connection"
        );
    }
    let after = session
        .send(HttpsRequest::new(Method::GET, "/healthz"), 1 << 20)
        .await;
    assert!(
        after.is_err(),
        "the connection is closed after {quota} answers: {after:?}"
    );
    // A new connection is served.
    assert_eq!(
        harness
            .request(Method::GET, "/healthz", Vec::new(), Vec::new())
            .await
            .status,
        200
    );
    harness.stop().await;
}

#[tokio::test]
async fn health_reflects_the_controller() {
    let up = Harness::start(Setup::default()).await;
    let reply = up
        .request(Method::GET, "/healthz", Vec::new(), Vec::new())
        .await;
    assert_eq!(
        (reply.status, body_json(&reply)),
        (200, serde_json::json!({"status":"ok"}))
    );
    up.stop().await;

    let down = Harness::start(Setup {
        controller: Controller::Dead,
        ..Setup::default()
    })
    .await;
    assert_error(
        &down
            .request(Method::GET, "/healthz", Vec::new(), Vec::new())
            .await,
        503,
        "unavailable",
    );
    down.stop().await;
}

#[tokio::test]
async fn dead_controller_gives_503_quickly() {
    let harness = Harness::start(Setup {
        controller: Controller::Dead,
        request_timeout: Duration::from_secs(30),
        ..Setup::default()
    })
    .await;
    let body = signed_request().to_json().unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        assert_error(
            &harness.post(approval::REQUEST_PATH, body.clone()).await,
            503,
            "unavailable",
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn stuck_controller_gives_503_at_the_request_deadline() {
    let harness = Harness::start(Setup {
        controller: Controller::Stuck,
        request_timeout: Duration::from_millis(800),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    assert_error(
        &harness
            .post(approval::REQUEST_PATH, signed_request().to_json().unwrap())
            .await,
        503,
        "unavailable",
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    harness.stop().await;
}

#[tokio::test]
async fn wrong_pin_is_refused_by_the_client() {
    let harness = Harness::start(Setup::default()).await;
    let endpoint = Endpoint::parse(&harness.base_url()).unwrap();
    let mut wrong = harness.pin;
    wrong[0] ^= 0xff;
    let config = Arc::new(tls::pinned_client_config(vec![wrong]).unwrap());
    let err = https::send(
        &endpoint,
        config,
        HttpsRequest::post_json("/healthz", Vec::new()),
        Duration::from_secs(5),
        1024,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, https::HttpsError::PinMismatch { .. }),
        "{err}"
    );
    assert!(harness.received().is_empty());
    harness.stop().await;
}

fn token() -> String {
    "T0ken-_"
        .chars()
        .cycle()
        .take(enrollment::token_text_len())
        .collect()
}

async fn enroll(
    harness: &Harness,
    profile: &Path,
    force: bool,
) -> Result<String, ClientCommandError> {
    let link = EnrollmentLink {
        base_url: harness.base_url(),
        token: token(),
        cert_sha256: tls::cert_sha256_hex(&harness.cert).unwrap(),
        controller_box_key: mini_box_key(),
        controller: None,
    };
    client::enroll(&EnrollOptions {
        link: &link.to_string(),
        profile,
        device_name: Some("test laptop"),
        force,
    })
    .await
}

fn connect_options(profile: &Path) -> ConnectOptions<'_> {
    ConnectOptions {
        profile,
        server: Some("vpn1"),
        public_ipv4: Some("203.0.113.7".parse().unwrap()),
        public_ipv6: None,
        device_name: None,
        json: false,
        passcode: None,
    }
}

#[tokio::test]
async fn reference_client_enrolls_and_connects_through_the_web_front() {
    let mini = Arc::new(MiniController::new(token()));
    let harness = Harness::start(Setup {
        controller: Controller::Serving(Behaviour::Real(mini)),
        ..Setup::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");

    let output = enroll(&harness, &profile, false).await.unwrap();
    assert!(output.contains("enrolled as laptop-1"), "{output}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&profile).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored =
        approval::ClientProfile::from_json(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    assert_eq!(stored.web_endpoint, harness.base_url());
    assert_eq!(
        tls::pins_from_anchor_pem(&stored.tls_anchor_pem).unwrap(),
        vec![harness.pin],
        "the anchor is the pinned certificate"
    );

    // The link is single-use, and an existing profile is kept without --force.
    assert!(matches!(
        enroll(&harness, &profile, false).await,
        Err(ClientCommandError::ProfileExists(_))
    ));
    let other = dir.path().join("other.json");
    let err = enroll(&harness, &other, false).await.unwrap_err();
    assert!(matches!(err, ClientCommandError::EnrollDenied), "{err}");
    assert!(!other.exists());

    let line = client::connect(&connect_options(&profile)).await.unwrap();
    assert!(
        line.starts_with("approved: connect to 192.0.2.1:1194/udp (opened 203.0.113.7 until "),
        "{line}"
    );

    let json_out = client::connect(&ConnectOptions {
        json: true,
        ..connect_options(&profile)
    })
    .await
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(value["verdict"], "allow");
    assert_eq!(value["connect"]["port"], 1194);
    assert_eq!(value["opened"], serde_json::json!(["203.0.113.7"]));

    // vpn2 is in the profile but the client is not allowed there: a sealed, authenticated denial.
    let err = client::connect(&ConnectOptions {
        server: Some("vpn2"),
        ..connect_options(&profile)
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientCommandError::Denied { code } if code == "denied"),
        "{err}"
    );
    assert_eq!(err.public_code(), Some(approval::PublicCode::Denied));
    // An unknown server fails before the HMAC-verified stages can seal: an unsealed hint.
    let err = client::connect(&ConnectOptions {
        server: Some("nope"),
        ..connect_options(&profile)
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientCommandError::Refused { status: 404, code, .. } | ClientCommandError::Denied { code } if code == "unknown_server"),
        "{err}"
    );
    let enrolled_pin = harness.pin;
    harness.stop().await;

    // A profile whose anchor is another certificate refuses this web front.
    let impostor = Harness::start(Setup::default()).await;
    let mut swapped = stored.clone();
    swapped.web_endpoint = impostor.base_url();
    let other_cert = tls::load_certs(&impostor.cert).unwrap().remove(0);
    assert_ne!(tls::cert_sha256(&other_cert), enrolled_pin);
    let moved = dir.path().join("moved.json");
    std::fs::write(&moved, swapped.to_json().unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(&moved, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = client::connect(&connect_options(&moved)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientCommandError::Https(https::HttpsError::PinMismatch { .. })
        ),
        "{err}"
    );
    assert!(
        impostor.received().is_empty(),
        "nothing was sent to the impostor"
    );
    impostor.stop().await;
}

#[tokio::test]
async fn enroll_with_a_wrong_pin_fails_before_generating_a_key() {
    let harness = Harness::start(Setup::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    let link = EnrollmentLink {
        base_url: harness.base_url(),
        token: token(),
        cert_sha256: "ab".repeat(32),
        controller_box_key: mini_box_key(),
        controller: None,
    };
    let started = Instant::now();
    let err = client::enroll(&EnrollOptions {
        link: &link.to_string(),
        profile: &profile,
        device_name: None,
        force: false,
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ClientCommandError::Https(https::HttpsError::PinMismatch { .. })
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no RSA key was generated: {:?}",
        started.elapsed()
    );
    assert!(!profile.exists());
    assert!(harness.received().is_empty());
    harness.stop().await;
}
