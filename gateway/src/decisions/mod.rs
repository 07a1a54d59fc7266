//! The controller's side of approvals: decide requests the web front forwards (validate, open
//! the gate, seal the answer), redeem enrollments, manage clients, and audit all of it.
pub mod audit;
pub mod box_key;
pub mod devices;
pub mod metrics;
mod rate;
pub mod state;

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use tracing::{Instrument as _, error, info, info_span, warn};

pub use audit::AuditLog;
use state::StoreState;

use crate::{
    approval::{
        self, ApprovalResponse, ApprovalState as _, ApprovedRequest, BoxKeyRing, BoxKeySet as _,
        BoxPublicKey, ClientRsaPublicKey, ConnectTarget, HmacSecret, NonceScope, PublicCode,
        Reason, Rejection, ResponsePayload, TransportProtocol, ValidationConfig,
    },
    clock::{unix_ms, unix_secs},
    config::{Config, Protocol, SecondFactor, ServerConfig},
    enrollment::{
        self, EnrollResponse, EnrollmentError, EnrollmentLink, OpenSealedRequest as _,
        SealedEnrollRequest,
    },
    openings::{GrantCheck, Openings, OpeningsError},
    store::{
        AuditEvent, AuditKind, AuditPage, AuditTable, Enrollment, EnrollmentToken, Journal,
        NoticeRecord, Store, StoreError, StoredAnswer, StoredClient,
    },
    vpn::{VpnTokens, derive_token},
};

/// What the front API answers: an HTTP status and a JSON body, produced here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontAnswer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
}

impl FrontAnswer {
    fn error(code: &str, status: u16) -> Self {
        Self {
            status,
            body: format!("{{\"error\":\"{code}\"}}").into_bytes(),
        }
    }

    fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self { status: 200, body },
            Err(err) => {
                error!(error = %err, "encoding an answer failed");
                Self::unavailable()
            }
        }
    }

    /// `503 {"error":"shutdown","message":…}`: a self-shutdown notice holds.
    pub fn shutdown(message: &str) -> Self {
        let body =
            serde_json::json!({ "error": PublicCode::Shutdown.as_str(), "message": message });
        Self {
            status: 503,
            body: body.to_string().into_bytes(),
        }
    }

    /// The retryable "try again later" answer.
    pub fn unavailable() -> Self {
        Self::error("unavailable", 503)
    }
}

/// Errors of the operator's client management.
#[derive(Debug, thiserror::Error)]
pub enum ClientAdminError {
    /// Bad input from the operator.
    #[error("{0}")]
    Invalid(String),
    /// The store failed (or the client does not exist).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Closing the client's openings failed.
    #[error(transparent)]
    Openings(#[from] crate::openings::OpeningsError),
    /// A blocking task failed.
    #[error("task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Why redeeming an enrollment token did not enroll anyone.
#[derive(Debug, thiserror::Error)]
enum RedeemError {
    /// Unknown, used or expired token (the client sees `denied`).
    #[error("unknown, used or expired enrollment token")]
    NotRedeemed,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Closing the openings of the replaced keys failed.
    #[error(transparent)]
    Openings(#[from] crate::openings::OpeningsError),
}

/// Who a request came from, for the audit trail.
struct Origin<'a> {
    remote: IpAddr,
    request_id: &'a str,
}

/// The approval service.
pub struct Approvals {
    store: Arc<Store>,
    /// What a configuration reload replaces ([`Approvals::reconfigure`]).
    settings: std::sync::RwLock<Arc<Settings>>,
    /// The box keys (current, and previous during a rotation overlap), replaced as a whole
    /// by [`Approvals::rotate_box_key`].
    box_keys: std::sync::RwLock<Arc<BoxKeyRing>>,
    /// The state folder holding the key files.
    state_dir: PathBuf,
    openings: Arc<Openings>,
    /// This controller's cluster node name, written into enrollment links.
    node_name: Option<String>,
    audit: AuditLog,
    metrics: metrics::Metrics,
    vpn_tokens: Arc<VpnTokens>,
    /// Approvals per client per minute (after validation: only the client itself can use
    /// up its budget).
    client_rate: rate::ClientRate,
    /// Wrong passcodes per client.
    passcode_failures: crate::passcode::Failures,
    /// Wrong device PINs per client (`devices approve`).
    device_pins: devices::PinGuesses,
    notices: tokio::sync::watch::Receiver<NoticeRecord>,
}

/// The parts of the configuration approvals read, replaced as a whole on reload: a request
/// sees either the old settings or the new ones, never a mix.
struct Settings {
    state: Arc<StoreState>,
    servers: Vec<ServerConfig>,
    validation: ValidationConfig,
    enrollment_ttl: Duration,
    public_url: Option<String>,
    web_cert: Option<PathBuf>,
    /// How passcodes are checked.
    passcode_rules: crate::passcode::PasscodeRules,
    audit_max_age: Duration,
}

impl Settings {
    fn of(config: &Config, store: &Arc<Store>) -> Self {
        let approvals = &config.approvals;
        Self {
            state: Arc::new(StoreState::new(store.clone(), &config.servers)),
            servers: config.servers.clone(),
            validation: ValidationConfig {
                timestamp_window_secs: approvals.timestamp_window_secs,
            },
            enrollment_ttl: approvals.enrollment_ttl,
            public_url: approvals.public_url.clone(),
            web_cert: approvals.web_cert.clone(),
            passcode_rules: approvals.passcode,
            audit_max_age: approvals.audit_max_age,
        }
    }
}

impl Approvals {
    /// The service for `config`, using its state folder's box key.
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        openings: Arc<Openings>,
        box_keys: BoxKeyRing,
        notices: tokio::sync::watch::Receiver<NoticeRecord>,
    ) -> Self {
        let approvals = &config.approvals;
        Self {
            settings: std::sync::RwLock::new(Arc::new(Settings::of(config, &store))),
            audit: AuditLog::start(store.clone(), approvals.audit_retention),
            store,
            box_keys: std::sync::RwLock::new(Arc::new(box_keys)),
            state_dir: config.state_dir.clone(),
            openings,
            node_name: config.cluster.as_ref().map(|c| c.node.clone()),
            metrics: metrics::Metrics::default(),
            vpn_tokens: Arc::new(VpnTokens::new()),
            client_rate: rate::ClientRate::new(approvals.client_approvals_per_minute),
            passcode_failures: crate::passcode::Failures::default(),
            device_pins: devices::PinGuesses::default(),
            notices,
        }
    }

    /// The settings in force now.
    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Applies a reloaded configuration to new requests: servers, their address policies,
    /// limits and second factors, the timestamp window, enrollment settings and the client
    /// budget. Requests already being decided finish under the settings they started with.
    pub fn reconfigure(&self, config: &Config) {
        let settings = Arc::new(Settings::of(config, &self.store));
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
        self.client_rate
            .set_per_minute(config.approvals.client_approvals_per_minute);
    }

    /// The servers approvals are decided for now.
    pub fn servers(&self) -> Vec<ServerConfig> {
        self.settings().servers.clone()
    }

    /// One-time OpenVPN tokens of approvals on servers with `[server.openvpn]`.
    pub fn vpn_tokens(&self) -> Arc<VpnTokens> {
        self.vpn_tokens.clone()
    }

    /// The server's current box public key (goes into client profiles).
    pub fn box_public_key(&self) -> String {
        self.box_keys().current().public_key().to_base64()
    }

    /// The box keys in force now.
    fn box_keys(&self) -> Arc<BoxKeyRing> {
        self.box_keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `xdpgate keys rotate`: a new current box key; the old one keeps opening requests (and
    /// answers them with the new key, §16) for `overlap`. Blocking (writes two files).
    pub fn rotate_box_key(
        &self,
        overlap: Duration,
    ) -> Result<(BoxPublicKey, u64), box_key::BoxKeyError> {
        let mut guard = self
            .box_keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = unix_secs();
        let rotated = box_key::rotate(&self.state_dir, &guard, overlap, now)?;
        let public = rotated.current().public_key();
        let until = rotated.previous().map_or(now, |(_, until)| until);
        *guard = Arc::new(rotated);
        info!(
            public_key = %public.to_base64(),
            previous_until = until,
            "box key rotated"
        );
        Ok((public, until))
    }

    /// The audit writer.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Outcome counters (`approval.<code>`, `enrollment.<outcome>`) since start.
    pub fn metrics(&self) -> Vec<(String, u64)> {
        self.metrics.snapshot()
    }

    /// The self-shutdown state (signed notices).
    pub fn notice_state(&self) -> NoticeRecord {
        self.notices.borrow().clone()
    }

    /// The refusal while a self-shutdown holds: `www` or `web` refuse everything from the
    /// web front, `vpn` refuses approvals (`approval` says which call this is).
    fn shut_down(&self, approval: bool, remote: IpAddr, request_id: &str) -> Option<FrontAnswer> {
        let state = self.notices.borrow();
        let part = [&state.www, &state.web]
            .into_iter()
            .chain(approval.then_some(&state.vpn))
            .find(|p| p.shutdown)?;
        let message = part.message.clone();
        drop(state);
        let (kind, what) = if approval {
            (AuditKind::Approval, "approval")
        } else {
            (AuditKind::Enrollment, "enrollment")
        };
        self.metrics.count(&format!("{what}.shutdown"));
        self.audit.record(AuditEvent {
            unix_ms: unix_ms(),
            kind,
            client_id: String::new(),
            remote: remote.to_string(),
            server: String::new(),
            verdict: "rejected".into(),
            code: PublicCode::Shutdown.as_str().to_owned(),
            reason: format!("[{request_id}] self-shutdown by notice: {message}"),
        });
        Some(FrontAnswer::shutdown(&message))
    }

    /// Decides a `POST /v1/approvals` body: cheapest checks first, the gate opened only for
    /// a request that passed every check.
    ///
    /// A failure before the HMAC verified is counted and sampled, never written one by one.
    /// Past the HMAC every answer is sealed with the client's secret and made durable first:
    /// an approval's record and answer commit with its opening, a refusal's record with its
    /// nonce. Resending the exact bytes of an approved request returns that approval.
    pub async fn submit(&self, body: Vec<u8>, remote: IpAddr, request_id: &str) -> FrontAnswer {
        let started = std::time::Instant::now();
        let answer = self.submit_timed(body, remote, request_id).await;
        crate::metrics::observe_since(&crate::metrics::latencies().approval, started);
        answer
    }

    async fn submit_timed(&self, body: Vec<u8>, remote: IpAddr, request_id: &str) -> FrontAnswer {
        if let Some(refusal) = self.shut_down(true, remote, request_id) {
            return refusal;
        }
        let origin = Origin { remote, request_id };
        let request = match approval::parse_request(&body) {
            Ok(request) => request,
            Err(rejection) => return self.unauthenticated(&origin, "", "", &rejection),
        };
        // Read before validation: a revocation after this point refuses the grant
        // (see `Openings::revoke_origin_with`).
        let generation = self.openings.generation(&request.client_id);
        let now = unix_secs();
        // The stages up to the HMAC run here (one HMAC, no side effect): a request failing
        // them, i.e. every garbage request, costs no hop to a blocking thread.
        let settings = self.settings();
        if let Err(rejection) =
            approval::precheck(&request, &*settings.state, now, &settings.validation)
        {
            return self.unauthenticated(&origin, &request.client_id, &request.server, &rejection);
        }
        // A span from here on only: creating one (its fields formatted) for every garbage
        // request cost more than rejecting it.
        let span =
            info_span!("approval", request_id, client_ip = %remote, client_id = %request.client_id);
        self.decide_authenticated(&origin, request, body, generation, now, &settings)
            .instrument(span)
            .await
    }

    /// The stages past the HMAC check, on a blocking thread, and the durable answer.
    async fn decide_authenticated(
        &self,
        origin: &Origin<'_>,
        request: approval::ApprovalRequest,
        body: Vec<u8>,
        generation: u64,
        now: u64,
        settings: &Settings,
    ) -> FrontAnswer {
        let remote = origin.remote;
        let state = settings.state.clone();
        let keys = self.box_keys();
        let validation = settings.validation;
        let decided = tokio::task::spawn_blocking(move || {
            let decided = approval::validate(&request, &*state, &*keys, remote, now, &validation);
            (request, decided)
        })
        .await;
        let (request, decided) = match decided {
            Ok(done) => done,
            Err(err) => {
                error!(error = %err, "validation task failed");
                return FrontAnswer::unavailable();
            }
        };
        match decided {
            Ok(approved) => {
                self.approve(origin, approved, body_digest(&body), generation)
                    .await
            }
            Err(rejection) => match rejection.binding() {
                None => {
                    self.unauthenticated(origin, &request.client_id, &request.server, &rejection)
                }
                Some(_) if matches!(rejection.reason(), Reason::RequestNonceReplayed) => {
                    self.replayed(origin, &request.client_id, &rejection, body_digest(&body))
                        .await
                }
                Some(_) => {
                    self.refused(origin, &request.client_id, &request.server, &rejection)
                        .await
                }
            },
        }
    }

    /// A failure before the HMAC verified: counted by reason and source prefix, sampled into
    /// the audit log at a bounded rate, answered with the unsealed public code.
    fn unauthenticated(
        &self,
        origin: &Origin<'_>,
        client_id: &str,
        server: &str,
        rejection: &Rejection,
    ) -> FrontAnswer {
        let code = rejection.public_code();
        self.metrics.count_code(code);
        self.audit.failure(
            rejection.reason().kind(),
            origin.remote,
            std::time::Instant::now(),
            || rejection_event(origin, client_id, server, rejection),
        );
        FrontAnswer::error(code.as_str(), rejection.http_status())
    }

    /// A refusal of a request whose HMAC verified: its nonce and its audit record are
    /// committed, then the denial is sealed with the client's secret.
    async fn refused(
        &self,
        origin: &Origin<'_>,
        client_id: &str,
        server: &str,
        rejection: &Rejection,
    ) -> FrontAnswer {
        let code = rejection.public_code();
        let event = rejection_event(origin, client_id, server, rejection);
        let journal = Journal {
            audit: vec![event.clone()],
            answers: Vec::new(),
        };
        let store = self.store.clone();
        let committed = tokio::task::spawn_blocking(move || store.commit_journal(&journal)).await;
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                error!(error = %err, "recording a refusal failed; not answering it");
                return FrontAnswer::unavailable();
            }
            Err(err) => {
                error!(error = %err, "refusal task failed");
                return FrontAnswer::unavailable();
            }
        }
        self.metrics.count_code(code);
        audit::log(&event);
        self.sealed_denial(client_id, rejection, code).await
    }

    /// Seals a denial of `code` for the request `rejection` refused (its HMAC verified).
    async fn sealed_denial(
        &self,
        client_id: &str,
        rejection: &Rejection,
        code: PublicCode,
    ) -> FrontAnswer {
        let Some(binding) = rejection.binding().cloned() else {
            return FrontAnswer::error(code.as_str(), code.http_status());
        };
        let state = self.settings().state.clone();
        let keys = self.box_keys();
        let client_id = client_id.to_owned();
        let sealed = tokio::task::spawn_blocking(move || {
            let client = state.client(&client_id).ok_or("the client is gone")?;
            approval::seal_denial(&binding, &*keys, &client.hmac_secret, code)
                .map_err(|_| "sealing failed")
        })
        .await;
        match sealed {
            Ok(Ok(body)) => FrontAnswer {
                status: code.http_status(),
                body,
            },
            Ok(Err(why)) => {
                warn!(why, "cannot seal a denial; answering it unsealed");
                FrontAnswer::error(code.as_str(), code.http_status())
            }
            Err(err) => {
                error!(error = %err, "sealing task failed");
                FrontAnswer::unavailable()
            }
        }
    }

    /// A request whose nonce was used before: when an approval of these exact bytes was
    /// committed, that approval again (sealed anew); otherwise a sealed `replay` denial. The
    /// nonce is on disk already, so nothing is written.
    async fn replayed(
        &self,
        origin: &Origin<'_>,
        client_id: &str,
        rejection: &Rejection,
        digest: String,
    ) -> FrontAnswer {
        let Some(binding) = rejection.binding().cloned() else {
            return FrontAnswer::error(
                PublicCode::Replay.as_str(),
                PublicCode::Replay.http_status(),
            );
        };
        let key = state::nonce_key(NonceScope::Request, binding.request_nonce());
        let store = self.store.clone();
        let state = self.settings().state.clone();
        let keys = self.box_keys();
        let wanted = client_id.to_owned();
        let sealing = binding.clone();
        let retried =
            tokio::task::spawn_blocking(move || -> Result<Option<ApprovalResponse>, String> {
                let Some(answer) = store.answer(&key).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                // The digest of a request body is not secret: a plain comparison is fine.
                let same = answer.client_id == wanted && answer.body_sha256 == digest;
                let Some(client) = state.client(&wanted).filter(|c| same && c.enabled) else {
                    return Ok(None);
                };
                let payload =
                    ResponsePayload::allow(answer.connect, answer.opened, answer.expires_unix);
                approval::seal_response(&sealing, &*keys, &client.hmac_secret, &payload)
                    .map(Some)
                    .map_err(|e| e.to_string())
            })
            .await;
        match retried {
            Ok(Ok(Some(response))) => {
                self.metrics.count("approval.retried");
                info!(client_id, client_ip = %origin.remote, request_id = origin.request_id, "idempotent retry of an approved request");
                FrontAnswer::json(&response)
            }
            Ok(Ok(None)) => {
                let code = rejection.public_code();
                self.metrics.count_code(code);
                self.audit.failure(
                    rejection.reason().kind(),
                    origin.remote,
                    std::time::Instant::now(),
                    || rejection_event(origin, client_id, binding.server(), rejection),
                );
                self.sealed_denial(client_id, rejection, code).await
            }
            Ok(Err(err)) => {
                error!(error = %err, "looking up a committed answer failed");
                FrontAnswer::unavailable()
            }
            Err(err) => {
                error!(error = %err, "retry task failed");
                FrontAnswer::unavailable()
            }
        }
    }

    async fn approve(
        &self,
        origin: &Origin<'_>,
        approved: ApprovedRequest,
        digest: String,
        generation: u64,
    ) -> FrontAnswer {
        let settings = self.settings();
        let Some(server) = settings.servers.iter().find(|s| s.name == approved.server) else {
            return FrontAnswer::error(PublicCode::UnknownServer.as_str(), 404);
        };
        let Some(target) = connect_target(server) else {
            error!(server = %server.name, "server has no public_ipv4/public_ipv6; cannot tell clients where to connect");
            return FrontAnswer::unavailable();
        };
        let (client_id, server_name) = (approved.client_id.as_str(), server.name.as_str());
        // Device authentication first (docs/PROTOCOL.md §15): a pending device spends no
        // approval budget and no passcode step.
        let device = match self.check_device(origin, &approved, server).await {
            Ok(device) => device,
            Err(Some(reason)) => {
                return self
                    .refuse_grant(origin, &approved, server_name, reason)
                    .await;
            }
            Err(None) => return FrontAnswer::unavailable(),
        };
        if !self.client_rate.admit(client_id) {
            let reason = approval::Reason::ClientRateExceeded {
                client_id: client_id.to_owned(),
                per_minute: self.client_rate.per_minute(),
            };
            return self
                .refuse_grant(origin, &approved, server_name, reason)
                .await;
        }
        if server.second_factor == SecondFactor::Totp {
            match self.check_passcode(&approved).await {
                Ok(()) => {}
                Err(Some(reason)) => {
                    return self
                        .refuse_grant(origin, &approved, server_name, reason)
                        .await;
                }
                Err(None) => return FrontAnswer::unavailable(),
            }
        }
        let opened: Vec<IpAddr> = approved
            .open_addresses
            .iter()
            .copied()
            .filter(|a| crate::openings::is_openable(*a))
            .collect();
        if opened.len() != approved.open_addresses.len() {
            warn!(addresses = ?approved.open_addresses, "approved addresses that cannot be opened were left out");
        }
        if opened.is_empty() {
            return FrontAnswer::unavailable();
        }
        let expires = unix_secs() + server.connect_window.as_secs();
        let event = AuditEvent {
            unix_ms: unix_ms(),
            kind: AuditKind::Approval,
            client_id: approved.client_id.clone(),
            remote: origin.remote.to_string(),
            server: server.name.clone(),
            verdict: "approved".into(),
            code: approval::APPROVED_REASON.to_owned(),
            reason: format!(
                "[{}] opened {:?} until {expires} ({}s); device {:?}{}, client {:?}",
                origin.request_id,
                opened,
                server.connect_window.as_secs(),
                approved.device_name,
                device
                    .as_deref()
                    .map(|fp| format!(" fingerprint {fp}"))
                    .unwrap_or_default(),
                approved.client_version
            ),
        };
        let answer = StoredAnswer {
            body_sha256: digest,
            client_id: approved.client_id.clone(),
            connect: target,
            opened: opened.clone(),
            expires_unix: expires,
            keep_until_unix: self.settings().validation.nonce_keep_until(unix_secs()),
        };
        let key = state::nonce_key(NonceScope::Request, approved.binding.request_nonce()).to_vec();
        let journal = Journal {
            audit: vec![event.clone()],
            answers: vec![(key, answer)],
        };
        let check = GrantCheck {
            generation,
            max_addresses_per_client: server.max_addresses_per_client,
        };
        let granted = self
            .openings
            .grant_all_for_device(
                server,
                &opened,
                client_id,
                device.as_deref(),
                server.connect_window,
                Some(check),
                journal,
            )
            .await;
        match granted {
            Ok(_) => {}
            Err(OpeningsError::Revoked(_)) => {
                let reason = approval::Reason::ClientDisabled {
                    client_id: client_id.to_owned(),
                };
                return self
                    .refuse_grant(origin, &approved, server_name, reason)
                    .await;
            }
            Err(OpeningsError::ClientCap { limit, .. }) => {
                let reason = approval::Reason::ClientCapReached {
                    client_id: client_id.to_owned(),
                    limit,
                };
                return self
                    .refuse_grant(origin, &approved, server_name, reason)
                    .await;
            }
            Err(err @ OpeningsError::NearCapacity { .. }) => {
                self.metrics.count("approval.unavailable.map_capacity");
                warn!(client_id, error = %err, "approval refused: openings map nearly full");
                return FrontAnswer::unavailable();
            }
            Err(err) => {
                warn!(client_id, error = %err, "could not open the approved addresses");
                return FrontAnswer::unavailable();
            }
        }
        audit::log(&event);
        if server.openvpn.is_some() {
            let token = derive_token(
                approved.client_hmac_secret(),
                &server.name,
                approved.binding.request_nonce(),
            );
            self.vpn_tokens.record(
                client_id,
                server.id,
                token,
                opened.clone(),
                server.connect_window,
            );
        }
        // A revocation that ran after our grants removed them; its token revocation may have
        // run before our token was recorded, so take it back here and answer `denied`.
        if self.openings.generation(client_id) != generation {
            self.vpn_tokens.revoke_client(client_id);
            let reason = approval::Reason::ClientDisabled {
                client_id: client_id.to_owned(),
            };
            return self
                .refuse_grant(origin, &approved, server_name, reason)
                .await;
        }
        self.metrics.count("approval.approved");
        let payload = ResponsePayload::allow(target, opened, expires);
        match approved.seal(&payload) {
            Ok(response) => FrontAnswer::json(&response),
            Err(err) => {
                error!(error = %err, "sealing an approval failed");
                FrontAnswer::unavailable()
            }
        }
    }

    /// The second factor (`docs/PROTOCOL.md` §7.4): not locked out, a passcode present, one
    /// of the accepted steps, and that step not used by this client before (recorded
    /// durably, like a nonce). `Err(None)`: the store failed (answer `unavailable`).
    async fn check_passcode(
        &self,
        approved: &ApprovedRequest,
    ) -> Result<(), Option<approval::Reason>> {
        let client_id = approved.client_id.clone();
        let rules = self.settings().passcode_rules;
        let started = std::time::Instant::now();
        if let Some(left) = self.passcode_failures.locked(&client_id, started) {
            return Err(Some(approval::Reason::PasscodeLockedOut {
                client_id,
                seconds_left: left.as_secs().max(1),
            }));
        }
        let Some(passcode) = approved.passcode.clone() else {
            return Err(Some(approval::Reason::PasscodeMissing { client_id }));
        };
        let store = self.store.clone();
        let id = client_id.clone();
        let now = unix_secs();
        let checked = tokio::task::spawn_blocking(
            move || -> Result<Option<Result<u64, bool>>, StoreError> {
                // Ok(None): no secret; Ok(Some(Ok(step))): matched and recorded; Some(Err(reused)).
                let secret = store
                    .client(&id)?
                    .and_then(|c| c.enrollment)
                    .and_then(|e| e.totp_secret_b32)
                    .and_then(|b32| crate::passcode::TotpSecret::from_base32(&b32).ok());
                let Some(secret) = secret else {
                    return Ok(None);
                };
                let Some(step) = secret.verify(&rules, passcode.as_str(), now) else {
                    return Ok(Some(Err(false)));
                };
                let mut key = vec![b'c'];
                key.extend_from_slice(&crate::passcode::used_step_key(&id, step));
                // Kept until the step can no longer be accepted (drift included), plus a margin.
                let keep_until =
                    (step + crate::passcode::DRIFT_STEPS + 2).saturating_mul(rules.step_secs);
                if store.record_nonce(&key, now, keep_until)? {
                    Ok(Some(Ok(step)))
                } else {
                    Ok(Some(Err(true)))
                }
            },
        )
        .await;
        match checked {
            Ok(Ok(None)) => Err(Some(approval::Reason::PasscodeNotEnrolled { client_id })),
            Ok(Ok(Some(Ok(_step)))) => {
                self.passcode_failures.succeeded(&client_id);
                Ok(())
            }
            Ok(Ok(Some(Err(reused)))) => {
                let failures_left = self.passcode_failures.failed(&client_id, &rules, started);
                let locked = failures_left == 0;
                self.metrics.count(if reused {
                    "approval.passcode_reused"
                } else {
                    "approval.passcode_wrong"
                });
                if locked {
                    self.metrics.count("approval.passcode_lockout");
                    warn!(client_id, "client locked out after wrong passcodes");
                }
                if reused {
                    Err(Some(approval::Reason::PasscodeReused {
                        client_id,
                        step: now / rules.step_secs.max(1),
                    }))
                } else {
                    Err(Some(approval::Reason::PasscodeWrong {
                        client_id,
                        failures_left,
                    }))
                }
            }
            Ok(Err(err)) => {
                error!(error = %err, "checking a passcode failed");
                Err(None)
            }
            Err(err) => {
                error!(error = %err, "passcode task failed");
                Err(None)
            }
        }
    }

    /// Refuses an approved request at the grant stage (rate, cap, revocation): recorded and
    /// answered with a sealed denial like any refusal after the HMAC.
    async fn refuse_grant(
        &self,
        origin: &Origin<'_>,
        approved: &ApprovedRequest,
        server: &str,
        reason: approval::Reason,
    ) -> FrontAnswer {
        let rejection =
            Rejection::new(approval::Stage::Grant, reason).with_binding(approved.binding.clone());
        self.refused(origin, &approved.client_id, server, &rejection)
            .await
    }

    /// Redeems a sealed `POST /v1/enroll` body: opens the box with the controller's key,
    /// registers the client's public key and answers its HMAC secret boxed to the request's
    /// one-time key. A box that does not open, or a bad, used or expired token, is `denied`.
    pub async fn enroll(&self, body: Vec<u8>, remote: IpAddr, request_id: &str) -> FrontAnswer {
        if let Some(refusal) = self.shut_down(false, remote, request_id) {
            return refusal;
        }
        let audit = |client_id: &str, verdict: &str, code: &str, reason: String| {
            let outcome = if code.is_empty() { verdict } else { code };
            self.metrics.count(&format!("enrollment.{outcome}"));
            let event = || AuditEvent {
                unix_ms: unix_ms(),
                kind: AuditKind::Enrollment,
                client_id: client_id.to_owned(),
                remote: remote.to_string(),
                server: String::new(),
                verdict: verdict.to_owned(),
                code: code.to_owned(),
                reason: format!("[{request_id}] {reason}"),
            };
            // A refused enrollment is unauthenticated: counted and sampled, not recorded.
            match code {
                "malformed" => self.audit.failure(
                    "enrollment_malformed",
                    remote,
                    std::time::Instant::now(),
                    event,
                ),
                "denied" => self.audit.failure(
                    "enrollment_denied",
                    remote,
                    std::time::Instant::now(),
                    event,
                ),
                _ => self.audit.record(event()),
            }
        };
        let keys = self.box_keys();
        // A link issued before a rotation carries the previous key; it opens until the
        // overlap ends.
        let opened = SealedEnrollRequest::parse(&body).and_then(|sealed| {
            match (sealed.open(keys.current()), keys.previous_at(unix_secs())) {
                (Err(EnrollmentError::BoxOpen), Some((previous, _))) => sealed.open(previous),
                (result, _) => result,
            }
        });
        let (request, opened) = match opened {
            Ok(opened) => opened,
            Err(err @ EnrollmentError::BoxOpen) => {
                audit(
                    "",
                    "rejected",
                    "denied",
                    format!("{err} (a link of another controller, or altered)"),
                );
                return FrontAnswer::error(PublicCode::Denied.as_str(), 403);
            }
            Err(err) => {
                audit("", "rejected", "malformed", err.to_string());
                return FrontAnswer::error("malformed", 400);
            }
        };
        let public_key = match ClientRsaPublicKey::from_pem(&request.rsa_public_key_pem)
            .and_then(|k| k.to_pem())
        {
            Ok(pem) => pem,
            Err(err) => {
                audit(
                    "",
                    "rejected",
                    "malformed",
                    format!("public key refused: {err}"),
                );
                return FrontAnswer::error("malformed", 400);
            }
        };
        let secret = match HmacSecret::generate() {
            Ok(secret) => secret,
            Err(err) => {
                error!(error = %err, "generating an HMAC secret failed");
                return FrontAnswer::unavailable();
            }
        };
        // Every client gets a TOTP secret; the answer carries it when a server of the client
        // needs a passcode (a server switched to TOTP later needs a new enrollment).
        let totp = match crate::passcode::TotpSecret::generate() {
            Ok(totp) => totp,
            Err(err) => {
                error!(error = %err, "generating a TOTP secret failed");
                return FrontAnswer::unavailable();
            }
        };
        let enrollment = Enrollment {
            hmac_secret_b64: secret.to_base64().to_string(),
            rsa_public_key_pem: public_key,
            device_name: request.device_name.clone(),
            enrolled_unix: unix_secs(),
            totp_secret_b32: Some(totp.to_base32().to_string()),
        };
        let digest = token_digest(&request.token);
        let redeemed = self.redeem(digest, unix_secs(), enrollment).await;
        match redeemed {
            Ok(Some((client, replaced))) => {
                let settings = self.settings();
                let totp_servers: Vec<String> = client
                    .servers
                    .iter()
                    .filter(|name| {
                        settings
                            .servers
                            .iter()
                            .any(|s| &s.name == *name && s.second_factor == SecondFactor::Totp)
                    })
                    .cloned()
                    .collect();
                let rules = settings.passcode_rules;
                let answer = EnrollResponse {
                    request_sha256: opened.request_sha256().to_owned(),
                    client_id: client.client_id.clone(),
                    hmac_secret: secret.to_base64().to_string(),
                    servers: client.servers,
                    totp: (!totp_servers.is_empty()).then(|| crate::enrollment::TotpGrant {
                        secret: totp.to_base32().to_string(),
                        algorithm: "SHA1".into(),
                        digits: rules.digits,
                        period: rules.step_secs,
                        servers: totp_servers,
                    }),
                };
                match opened.seal(&answer).and_then(|sealed| sealed.to_json()) {
                    Ok(body) => {
                        let reason = match replaced {
                            Some(closed) => format!(
                                "device {:?} re-enrolled: the previous keys are replaced, {closed} opening(s) made with them closed",
                                request.device_name
                            ),
                            None => format!("device {:?}", request.device_name),
                        };
                        audit(&client.client_id, "enrolled", "", reason);
                        FrontAnswer { status: 200, body }
                    }
                    Err(err) => {
                        error!(client_id = %client.client_id, error = %err, "sealing an enrollment answer failed");
                        FrontAnswer::unavailable()
                    }
                }
            }
            Ok(None) => {
                audit(
                    "",
                    "rejected",
                    "denied",
                    "unknown, used or expired enrollment token".into(),
                );
                FrontAnswer::error(PublicCode::Denied.as_str(), 403)
            }
            Err(err) => {
                error!(error = %err, "redeeming an enrollment token failed");
                FrontAnswer::unavailable()
            }
        }
    }

    /// Consumes the token `digest` and stores `enrollment` for its client. When the client
    /// was enrolled already (a re-enrollment link), the store write runs under the openings
    /// lock with the client's generation bumped, so the old keys stop at once: approvals in
    /// flight under them are refused and their openings close. Returns the client and, for a
    /// re-enrollment, how many openings closed.
    async fn redeem(
        &self,
        digest: String,
        now: u64,
        enrollment: Enrollment,
    ) -> Result<Option<(StoredClient, Option<usize>)>, RedeemError> {
        let join = |e| RedeemError::Openings(crate::openings::OpeningsError::Join(e));
        let store = self.store.clone();
        let peek = digest.clone();
        let enrolled =
            tokio::task::spawn_blocking(move || -> Result<Option<String>, StoreError> {
                let Some(token) = store.enrollment_token(&peek)? else {
                    return Ok(None);
                };
                Ok(store
                    .client(&token.client_id)?
                    .filter(|client| client.enrollment.is_some())
                    .map(|client| client.client_id))
            })
            .await
            .map_err(join)??;
        let store = self.store.clone();
        let Some(client_id) = enrolled else {
            let client = tokio::task::spawn_blocking(move || {
                store.redeem_enrollment_token(&digest, now, enrollment)
            })
            .await
            .map_err(join)??;
            return Ok(client.map(|client| (client, None)));
        };
        let slot = Arc::new(std::sync::Mutex::new(None));
        let filled = slot.clone();
        let closed = self
            .openings
            .revoke_origin_with(&client_id, move || {
                let client = store
                    .redeem_enrollment_token(&digest, now, enrollment)?
                    .ok_or(RedeemError::NotRedeemed)?;
                if let Ok(mut slot) = filled.lock() {
                    *slot = Some(client);
                }
                Ok(())
            })
            .await;
        match closed {
            Ok(closed) => {
                self.vpn_tokens.revoke_client(&client_id);
                let client = slot.lock().ok().and_then(|mut slot| slot.take());
                Ok(client.map(|client| (client, Some(closed))))
            }
            Err(RedeemError::NotRedeemed) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Issues a new single-use enrollment link for the existing client `name` and voids its
    /// older links. Redeeming it replaces the client's keys (see [`Approvals::enroll`]).
    pub async fn reenroll_client(
        &self,
        name: &str,
    ) -> Result<(EnrollmentLink, u64), ClientAdminError> {
        let (link, expires_unix) = self.new_link()?;
        let pending = EnrollmentToken {
            client_id: name.to_owned(),
            expires_unix,
        };
        let digest = token_digest(&link.token);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.reissue_enrollment_token(&digest, &pending))
            .await??;
        self.operator_audit(
            name,
            "reenroll_issued",
            format!(
                "re-enrollment link expires at {expires_unix}; older links voided; the keys stay valid until it is redeemed"
            ),
        );
        Ok((link, expires_unix))
    }

    /// Creates a client allowed on `servers` and returns its single-use enrollment link.
    pub async fn add_client(
        &self,
        name: &str,
        servers: &[String],
    ) -> Result<(EnrollmentLink, u64), ClientAdminError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            return Err(ClientAdminError::Invalid(
                "client name must be 1-64 characters of A-Z a-z 0-9 . - _".into(),
            ));
        }
        if servers.is_empty() {
            return Err(ClientAdminError::Invalid(
                "name at least one --server".into(),
            ));
        }
        if let Some(unknown) = servers
            .iter()
            .find(|s| !self.settings().servers.iter().any(|c| &c.name == *s))
        {
            return Err(ClientAdminError::Invalid(format!(
                "no server named {unknown:?}"
            )));
        }
        let (link, expires_unix) = self.new_link()?;
        let client = StoredClient {
            client_id: name.to_owned(),
            servers: servers.to_vec(),
            enabled: true,
            created_unix: unix_secs(),
            enrollment: None,
        };
        let pending = EnrollmentToken {
            client_id: name.to_owned(),
            expires_unix,
        };
        let digest = token_digest(&link.token);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.create_client(&client)?;
            store.put_enrollment_token(&digest, &pending)
        })
        .await??;
        self.operator_audit(
            name,
            "added",
            format!("servers {servers:?}; enrollment link expires at {expires_unix}"),
        );
        Ok((link, expires_unix))
    }

    /// A fresh single-use enrollment link of this controller and when it expires; the
    /// caller stores the token's digest.
    fn new_link(&self) -> Result<(EnrollmentLink, u64), ClientAdminError> {
        let settings = self.settings();
        let base_url = settings.public_url.clone().ok_or_else(|| {
            ClientAdminError::Invalid(
                "set approvals.public_url (the HTTPS address clients use) first".into(),
            )
        })?;
        let link = EnrollmentLink {
            base_url,
            token: random_token().map_err(ClientAdminError::Invalid)?,
            cert_sha256: self.web_cert_pin()?,
            controller_box_key: self.box_keys().current().public_key(),
            controller: self.node_name.clone(),
        };
        Ok((link, unix_secs() + settings.enrollment_ttl.as_secs()))
    }

    fn web_cert_pin(&self) -> Result<String, ClientAdminError> {
        let settings = self.settings();
        let path = settings
            .web_cert
            .as_ref()
            .ok_or_else(|| ClientAdminError::Invalid("set approvals.web_cert".into()))?;
        crate::tls::cert_sha256_hex(path).map_err(|err| {
            ClientAdminError::Invalid(format!(
                "cannot read the web front's certificate {} ({err}); start the web front once or set approvals.web_cert",
                path.display()
            ))
        })
    }

    /// Every client.
    pub async fn list_clients(&self) -> Result<Vec<StoredClient>, ClientAdminError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || store.clients()).await??)
    }

    /// Enables or disables a client; disabling closes its openings and cuts its live OpenVPN
    /// tunnels at once. Returns how many openings were closed.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<usize, ClientAdminError> {
        let store = self.store.clone();
        let id = name.to_owned();
        let closed = if enabled {
            tokio::task::spawn_blocking(move || store.update_client(&id, |c| c.enabled = true))
                .await??;
            0
        } else {
            // Atomic with approvals in flight: the store write, the generation bump and the
            // closing happen under the lock grants are written under.
            let closed = self
                .openings
                .revoke_origin_with(name, move || {
                    store
                        .update_client(&id, |c| c.enabled = false)
                        .map(|_| ())
                        .map_err(ClientAdminError::from)
                })
                .await?;
            self.vpn_tokens.revoke_client(name);
            closed
        };
        let verdict = if enabled { "enabled" } else { "disabled" };
        self.operator_audit(name, verdict, format!("{closed} opening(s) closed"));
        Ok(closed)
    }

    /// Removes a client, closes its openings and cuts its live OpenVPN tunnels. Returns how
    /// many openings were closed.
    pub async fn remove_client(&self, name: &str) -> Result<usize, ClientAdminError> {
        let store = self.store.clone();
        let id = name.to_owned();
        let closed = self
            .openings
            .revoke_origin_with(name, move || {
                store.remove_client(&id)?;
                // Its devices go too: a client added again under this name starts afresh.
                store
                    .remove_devices(&id)
                    .map(|_| ())
                    .map_err(ClientAdminError::from)
            })
            .await?;
        self.vpn_tokens.revoke_client(name);
        self.operator_audit(name, "removed", format!("{closed} opening(s) closed"));
        Ok(closed)
    }

    /// Forgets nonces past their keep-until time; returns how many.
    pub async fn purge_nonces(&self) -> Result<usize, ClientAdminError> {
        let store = self.store.clone();
        let now = unix_secs();
        let cutoff_ms = unix_ms().saturating_sub(
            u64::try_from(self.settings().audit_max_age.as_millis()).unwrap_or(u64::MAX),
        );
        Ok(
            tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
                let purged = store.purge_nonces(now)?;
                store.purge_answers(now)?;
                let aged = store.purge_audit(cutoff_ms)?;
                if aged > 0 {
                    info!(aged, "audit events past audit_max_age_days removed");
                }
                Ok(purged)
            })
            .await??,
        )
    }

    /// A page of audit events of `table`, newest first, older than sequence number `before`.
    pub async fn audit_page(
        &self,
        table: AuditTable,
        before: Option<u64>,
        count: usize,
    ) -> Result<AuditPage, ClientAdminError> {
        let store = self.store.clone();
        Ok(
            tokio::task::spawn_blocking(move || store.audit_page(table, before, count.max(1)))
                .await??,
        )
    }

    fn operator_audit(&self, client_id: &str, verdict: &str, reason: String) {
        self.audit.record(AuditEvent {
            unix_ms: unix_ms(),
            kind: AuditKind::Client,
            client_id: client_id.to_owned(),
            remote: String::new(),
            server: String::new(),
            verdict: verdict.to_owned(),
            code: String::new(),
            reason,
        });
    }
}

/// The audit record of a refused request.
fn rejection_event(
    origin: &Origin<'_>,
    client_id: &str,
    server: &str,
    rejection: &Rejection,
) -> AuditEvent {
    AuditEvent {
        unix_ms: unix_ms(),
        kind: AuditKind::Approval,
        client_id: client_id.to_owned(),
        remote: origin.remote.to_string(),
        server: server.to_owned(),
        verdict: "rejected".into(),
        code: rejection.public_code().as_str().to_owned(),
        reason: format!("[{}] {}", origin.request_id, rejection.reason()),
    }
}

/// Hex SHA-256 of a request body, to recognize an exact resend.
fn body_digest(body: &[u8]) -> String {
    crate::tls::to_hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref())
}

/// Where clients of `server` connect: its public addresses and first service (UDP first).
fn connect_target(server: &ServerConfig) -> Option<ConnectTarget> {
    if server.public_ipv4.is_none() && server.public_ipv6.is_none() {
        return None;
    }
    let service = server
        .services
        .iter()
        .find(|s| s.protocol == Protocol::Udp)
        .or_else(|| server.services.first())?;
    Some(ConnectTarget {
        host_ipv4: server.public_ipv4,
        host_ipv6: server.public_ipv6,
        port: service.port,
        protocol: match service.protocol {
            Protocol::Udp => TransportProtocol::Udp,
            Protocol::Tcp => TransportProtocol::Tcp,
        },
    })
}

/// Hex SHA-256 of an enrollment token: only the digest is stored.
fn token_digest(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; enrollment::TOKEN_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random generator failed".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_the_right_length_and_stored_as_digests() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), enrollment::token_text_len());
        let digest = token_digest(&a);
        assert_eq!(digest.len(), 64);
        assert!(!digest.contains(&a));
        assert_eq!(digest, token_digest(&a));
    }
}
