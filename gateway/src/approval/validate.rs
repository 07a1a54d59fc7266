//! The validation pipeline, cheapest check first: shape → timestamp → client → HMAC → request
//! nonce → client enabled → server → RSA signature → box → payload → payload timestamp → payload nonce →
//! client allowed → device signature → addresses.
//!
//! Nothing past the HMAC runs for a request whose HMAC is wrong: no nonce is recorded and no
//! RSA or X25519 work is done, so unauthenticated traffic costs one HMAC and cannot fill the
//! nonce store.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crypto_box::aead::Aead as _;
use zeroize::Zeroizing;

use super::address::{
    AddressProblem, AddressSource, CheckedReported, Reported, check_reported, select_addresses,
};
use super::canonical::{
    request_device_signature_input, request_mac_input, request_signature_input,
};
use super::error::{Reason, Rejection, Stage};
use super::keys::{BoxKeySet, BoxPublicKey, HmacSecret, ServerBoxKeys};
use super::response::{
    BoxKeyUpdate, ResponseBinding, ResponsePayload, SealError, seal_response_in_box,
};
use super::state::{
    ApprovalState, ClientRecord, NonceCheck, NonceScope, ServerLookup, ServerPolicy,
};
use super::wire::{ApprovalRequest, ApprovalResponse, NONCE_LEN, RequestPayload};
use crate::device::{DeviceAuth, DevicePublicKey};

/// Default accepted clock skew, each way.
pub const DEFAULT_TIMESTAMP_WINDOW_SECS: u64 = 300;

/// Tunables of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationConfig {
    /// A timestamp is accepted when `|timestamp − now| ≤ window`. Nonces are kept for twice
    /// the window, which outlives every timestamp that could still be accepted.
    pub timestamp_window_secs: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            timestamp_window_secs: DEFAULT_TIMESTAMP_WINDOW_SECS,
        }
    }
}

impl ValidationConfig {
    /// The keep-until time of a nonce recorded at `now_unix`: `now + 2 × window`.
    pub fn nonce_keep_until(&self, now_unix: u64) -> u64 {
        now_unix.saturating_add(self.timestamp_window_secs.saturating_mul(2))
    }
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct ApprovedRequest {
    /// The client id.
    pub client_id: String,
    /// The server name.
    pub server: String,
    /// The server's policy, as the state returned it.
    pub server_policy: ServerPolicy,
    /// The addresses to open, non-empty, IPv4 first.
    pub open_addresses: Vec<IpAddr>,
    /// The remote address as supplied (canonicalised).
    pub remote: IpAddr,
    /// The IPv4 address the client reported, if any.
    pub reported_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address the client reported, if any.
    pub reported_ipv6: Option<Ipv6Addr>,
    /// The client's software version.
    pub client_version: String,
    /// The client's device name.
    pub device_name: String,
    /// The passcode inside the box, if any (checked by the controller for servers with a
    /// second factor, `docs/PROTOCOL.md` §7.4).
    pub passcode: Option<crate::passcode::Passcode>,
    /// The device key whose signature verified, for a server with `device_auth =
    /// "required"` (the controller then checks that the device is approved).
    pub device: Option<DevicePublicKey>,
    /// What [`super::seal_response`] needs to answer this request.
    pub binding: ResponseBinding,
    client_hmac_secret: HmacSecret,
    /// The box key shared with the request's one-time key, computed once when the box was
    /// opened and used again to seal the answer.
    response_box: SharedBox,
}

impl ApprovedRequest {
    /// The client's HMAC secret, to seal the response with.
    pub fn client_hmac_secret(&self) -> &HmacSecret {
        &self.client_hmac_secret
    }

    /// Seals `payload` as the answer to this request: [`super::seal_response`] without a
    /// second X25519 (the shared key of the request's box is reused).
    pub fn seal(&self, payload: &ResponsePayload) -> Result<ApprovalResponse, SealError> {
        seal_response_in_box(
            &self.binding,
            &self.response_box.0,
            &self.client_hmac_secret,
            payload,
        )
    }
}

/// A precomputed box key (secret: never printed).
#[derive(Clone)]
struct SharedBox(Arc<crypto_box::SalsaBox>);

impl std::fmt::Debug for SharedBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedBox(<redacted>)")
    }
}

/// The stages of [`validate`] that cost at most one HMAC and change nothing: shape,
/// timestamp, client, HMAC. A request that fails here fails [`validate`] with the same
/// rejection; the controller runs this inline and hands only requests that pass to a
/// blocking thread for the RSA and X25519 stages, so a garbage flood costs no thread hop.
pub fn precheck<S: ApprovalState + ?Sized>(
    request: &ApprovalRequest,
    state: &S,
    now_unix: u64,
    config: &ValidationConfig,
) -> Result<(), Rejection> {
    let run = Run {
        state,
        request,
        now_unix,
        config,
        binding: None,
        opened: None,
    };
    run.authenticate_cheaply().map(|_| ())
}

/// Validates a parsed request from `remote` at `now_unix`.
///
/// Returns the approval, or a [`Rejection`] whose public code goes to the client and whose
/// reason goes to the audit log. Every call that reaches the nonce stage records the request
/// nonce, whatever happens later.
pub fn validate<S: ApprovalState + ?Sized, K: BoxKeySet + ?Sized>(
    request: &ApprovalRequest,
    state: &S,
    server_keys: &K,
    remote: IpAddr,
    now_unix: u64,
    config: &ValidationConfig,
) -> Result<ApprovedRequest, Rejection> {
    let mut run = Run {
        state,
        request,
        now_unix,
        config,
        binding: None,
        opened: None,
    };
    let client = run.authenticate(server_keys)?;
    let (policy, payload, response_box) = run.open(&client)?;
    let (reported, open, device) = run.authorize(&client, policy, &payload, remote)?;
    let binding = run.binding.take().unwrap_or_else(|| run.new_binding());
    let ClientRecord {
        client_id,
        hmac_secret,
        ..
    } = client;
    Ok(ApprovedRequest {
        client_id,
        server: request.server.clone(),
        server_policy: policy,
        open_addresses: open,
        remote: remote.to_canonical(),
        reported_ipv4: reported.ipv4,
        reported_ipv6: reported.ipv6,
        client_version: payload.client_version,
        device_name: payload.device_name,
        passcode: payload.passcode.map(crate::passcode::Passcode::new),
        device,
        binding,
        client_hmac_secret: hmac_secret,
        response_box: SharedBox(Arc::new(response_box)),
    })
}

/// One validation: the request, its context, and the response binding once the HMAC has
/// verified.
struct Run<'a, S: ?Sized> {
    state: &'a S,
    request: &'a ApprovalRequest,
    now_unix: u64,
    config: &'a ValidationConfig,
    binding: Option<ResponseBinding>,
    /// The request's box, opened right after the HMAC (to know which server key it was
    /// boxed to, §16); its failure is reported at the box stage.
    opened: Option<Result<OpenedBox, Reason>>,
}

/// A request box's plaintext and the box key shared with its one-time key.
type OpenedBox = (Zeroizing<Vec<u8>>, crypto_box::SalsaBox);

impl<S: ApprovalState + ?Sized> Run<'_, S> {
    /// Tells the state which stage starts, and turns a reason into a rejection at that stage
    /// (with the response binding once the HMAC has verified).
    fn stage<T>(
        &self,
        stage: Stage,
        f: impl FnOnce() -> Result<T, Reason>,
    ) -> Result<T, Rejection> {
        self.state.entering(stage);
        f().map_err(|reason| {
            let rejection = Rejection::new(stage, reason);
            match &self.binding {
                Some(b) => rejection.with_binding(b.clone()),
                None => rejection,
            }
        })
    }

    fn new_binding(&self) -> ResponseBinding {
        let r = self.request;
        ResponseBinding::new(r.nonce, r.box_public_key, r.server.clone())
    }

    /// Stages shape → timestamp → client → HMAC: at most one HMAC, no side effect (the
    /// binding is set by the caller once they pass).
    fn authenticate_cheaply(&self) -> Result<ClientRecord, Rejection> {
        let r = self.request;
        self.stage(Stage::Shape, || r.check_shape())?;
        self.stage(Stage::Timestamp, || {
            self.check_window(r.timestamp)
                .map_err(|window| Reason::ClockSkew {
                    timestamp: r.timestamp,
                    now: self.now_unix,
                    window,
                })
        })?;
        let client = self.stage(Stage::Client, || find_client(self.state, r))?;
        self.stage(Stage::Hmac, || check_hmac(&client, r))?;
        Ok(client)
    }

    /// Stages shape → timestamp → client → HMAC → request nonce. Nothing here costs more than
    /// one HMAC, and the nonce store is only touched once the HMAC has verified.
    fn authenticate<K: BoxKeySet + ?Sized>(
        &mut self,
        server_keys: &K,
    ) -> Result<ClientRecord, Rejection> {
        let r = self.request;
        let client = self.authenticate_cheaply()?;
        // Which server key the request is boxed to decides which key seals every answer to
        // it, so the box is tried here; a failure still counts at the box stage.
        let (opened, update) = open_box_with_any(r, server_keys, self.now_unix);
        self.opened = Some(opened);
        let binding = self.new_binding();
        self.binding = Some(match update {
            Some(update) => binding.with_key_update(update),
            None => binding,
        });
        self.stage(Stage::RequestNonce, || {
            self.record(NonceScope::Request, &r.nonce, Reason::RequestNonceReplayed)
        })?;
        // A disabled client's authenticated request is consumed (its nonce is recorded) and
        // refused with a sealed denial, like every request past the HMAC.
        self.stage(Stage::ClientEnabled, || {
            if client.enabled {
                Ok(())
            } else {
                Err(Reason::ClientDisabled {
                    client_id: client.client_id.clone(),
                })
            }
        })?;
        Ok(client)
    }

    /// Stages server → signature → box → payload → payload timestamp → payload nonce.
    fn open(
        &mut self,
        client: &ClientRecord,
    ) -> Result<(ServerPolicy, RequestPayload, crypto_box::SalsaBox), Rejection> {
        let r = self.request;
        let policy = self.stage(Stage::Server, || lookup_server(self.state, &r.server))?;
        self.stage(Stage::Signature, || verify_signature(client, r))?;
        let opened = self.opened.take();
        let (plaintext, shared) = self.stage(Stage::BoxOpen, || {
            opened.unwrap_or(Err(Reason::BoxOpenFailed))
        })?;
        let payload = self.stage(Stage::Payload, || parse_payload(&plaintext, r))?;
        self.stage(Stage::PayloadTimestamp, || {
            self.check_window(payload.timestamp)
                .map_err(|window| Reason::PayloadClockSkew {
                    timestamp: payload.timestamp,
                    now: self.now_unix,
                    window,
                })
        })?;
        self.stage(Stage::PayloadNonce, || {
            self.record(
                NonceScope::Payload,
                &payload.nonce,
                Reason::PayloadNonceReplayed,
            )
        })?;
        Ok((policy, payload, shared))
    }

    /// Stages client allowed → device signature → addresses.
    #[allow(clippy::type_complexity)]
    fn authorize(
        &self,
        client: &ClientRecord,
        policy: ServerPolicy,
        payload: &RequestPayload,
        remote: IpAddr,
    ) -> Result<(CheckedReported, Vec<IpAddr>, Option<DevicePublicKey>), Rejection> {
        let server = &self.request.server;
        self.stage(Stage::ClientAllowed, || {
            if self.state.client_allowed(&client.client_id, server) {
                Ok(())
            } else {
                Err(Reason::ClientNotAllowed {
                    client_id: client.client_id.clone(),
                    server: server.clone(),
                })
            }
        })?;
        let device = self.stage(Stage::Device, || match self.state.device_auth(server) {
            DeviceAuth::Off => Ok(None),
            DeviceAuth::Required => {
                check_device(&client.client_id, payload, self.request).map(Some)
            }
        })?;
        self.stage(Stage::Addresses, || {
            let reported = check_reported(Reported {
                ipv4: payload.public_ipv4.as_deref(),
                ipv6: payload.public_ipv6.as_deref(),
            })?;
            let open =
                select_addresses(policy.address_policy, remote, reported.ipv4, reported.ipv6)?;
            refuse_gateway_addresses(self.state, &reported, &open)?;
            Ok((reported, open, device))
        })
    }

    /// `Err(window)` when `timestamp` is more than the window away from now.
    fn check_window(&self, timestamp: u64) -> Result<(), u64> {
        let window = self.config.timestamp_window_secs;
        if timestamp.abs_diff(self.now_unix) > window {
            Err(window)
        } else {
            Ok(())
        }
    }

    fn record(
        &self,
        scope: NonceScope,
        nonce: &[u8; NONCE_LEN],
        replayed: Reason,
    ) -> Result<(), Reason> {
        let keep_until = self.config.nonce_keep_until(self.now_unix);
        match self.state.record_nonce(scope, nonce, keep_until) {
            NonceCheck::Fresh => Ok(()),
            NonceCheck::Replayed => Err(replayed),
        }
    }
}

/// Refuses the request when an address it reports, or one it would open, is the gateway's
/// own: a client must never be able to open the gateway to itself.
pub(crate) fn refuse_gateway_addresses<S: ApprovalState + ?Sized>(
    state: &S,
    reported: &CheckedReported,
    open: &[IpAddr],
) -> Result<(), Reason> {
    // Reported addresses first: whatever is left in `open` after them is the remote address.
    let candidates = reported
        .ipv4
        .map(|a| (IpAddr::V4(a), AddressSource::ReportedIpv4))
        .into_iter()
        .chain(
            reported
                .ipv6
                .map(|a| (IpAddr::V6(a), AddressSource::ReportedIpv6)),
        )
        .chain(open.iter().map(|&a| (a, AddressSource::Remote)));
    for (addr, origin) in candidates {
        if state.is_gateway_address(addr) {
            return Err(Reason::InvalidAddress {
                origin,
                address: addr.to_string(),
                problem: AddressProblem::GatewayAddress,
            });
        }
    }
    Ok(())
}

/// Looks the client up. An unknown client still costs one HMAC computation, so the answer
/// time does not tell which client ids exist.
fn find_client<S: ApprovalState + ?Sized>(
    state: &S,
    request: &ApprovalRequest,
) -> Result<ClientRecord, Reason> {
    match state.client(&request.client_id) {
        None => {
            let decoy = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &[0u8; 64]);
            let _ = ring::hmac::verify(&decoy, &request_mac_input(request), &request.hmac);
            Err(Reason::UnknownClient {
                client_id: request.client_id.clone(),
            })
        }
        // Enabled or not: a disabled client's HMAC is checked like any other, and its
        // authenticated requests are refused after their nonce is recorded.
        Some(record) => Ok(record),
    }
}

fn check_hmac(client: &ClientRecord, request: &ApprovalRequest) -> Result<(), Reason> {
    if client
        .hmac_secret
        .verify(&request_mac_input(request), &request.hmac)
    {
        Ok(())
    } else {
        Err(Reason::HmacMismatch {
            client_id: client.client_id.clone(),
        })
    }
}

/// Opens the request's box with the current key or, during an overlap, the previous one; with
/// the previous one also returns the update the answer carries (§16).
fn open_box_with_any<K: BoxKeySet + ?Sized>(
    request: &ApprovalRequest,
    keys: &K,
    now_unix: u64,
) -> (Result<OpenedBox, Reason>, Option<BoxKeyUpdate>) {
    let current = open_box(request, keys.current());
    let Err(Reason::BoxOpenFailed) = current else {
        return (current, None);
    };
    let Some((previous, until)) = keys.previous_at(now_unix) else {
        return (current, None);
    };
    match open_box(request, previous) {
        Ok(opened) => (
            Ok(opened),
            Some(BoxKeyUpdate {
                public_key: keys.current().public_key().to_bytes(),
                previous_key_until: until,
            }),
        ),
        Err(_) => (current, None),
    }
}

/// Opens the request's box; also returns the shared box key, to seal the answer with.
fn open_box(
    request: &ApprovalRequest,
    server_keys: &ServerBoxKeys,
) -> Result<(Zeroizing<Vec<u8>>, crypto_box::SalsaBox), Reason> {
    let one_time = BoxPublicKey::from_bytes(request.box_public_key);
    if !one_time.is_strong() {
        return Err(Reason::WeakBoxKey);
    }
    let one_time = one_time.to_crypto_box();
    let shared = crypto_box::SalsaBox::new(&one_time, server_keys.secret());
    let plaintext = shared
        .decrypt(&request.box_nonce.into(), request.box_ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| Reason::BoxOpenFailed)?;
    Ok((plaintext, shared))
}

fn lookup_server<S: ApprovalState + ?Sized>(
    state: &S,
    server: &str,
) -> Result<ServerPolicy, Reason> {
    match state.server(server) {
        ServerLookup::Here(policy) => Ok(policy),
        ServerLookup::NotHere => Err(Reason::ServerNotHere {
            server: server.to_owned(),
        }),
        ServerLookup::Unknown => Err(Reason::UnknownServer {
            server: server.to_owned(),
        }),
    }
}

fn verify_signature(client: &ClientRecord, request: &ApprovalRequest) -> Result<(), Reason> {
    let signed = request_signature_input(request);
    if client
        .rsa_public_key
        .verify_pss_sha512(&signed, &request.signature)
    {
        Ok(())
    } else {
        Err(Reason::SignatureInvalid {
            client_id: client.client_id.clone(),
        })
    }
}

/// The device stage (§15.4): the key in the box and the signature in the envelope are both
/// there, the key is a P-256 point, and the signature verifies over the device transcript.
fn check_device(
    client_id: &str,
    payload: &RequestPayload,
    request: &ApprovalRequest,
) -> Result<DevicePublicKey, Reason> {
    let missing = |missing| Reason::DeviceMissing {
        client_id: client_id.to_owned(),
        missing,
    };
    let (key, signature) = match (&payload.device_public_key, &request.device_signature) {
        (Some(key), Some(signature)) => (key, signature),
        (None, Some(_)) => return Err(missing("a device key")),
        (Some(_), None) => return Err(missing("a device signature")),
        (None, None) => return Err(missing("a device key and signature")),
    };
    let key = DevicePublicKey::from_sec1(key).map_err(|problem| Reason::DeviceKeyInvalid {
        client_id: client_id.to_owned(),
        problem,
    })?;
    if key.verify(&request_device_signature_input(request), signature) {
        Ok(key)
    } else {
        Err(Reason::DeviceSignatureInvalid {
            client_id: client_id.to_owned(),
            fingerprint: key.fingerprint().to_hex(),
        })
    }
}

fn parse_payload(plaintext: &[u8], request: &ApprovalRequest) -> Result<RequestPayload, Reason> {
    let payload = RequestPayload::parse(plaintext)?;
    if payload.server != request.server {
        return Err(Reason::PayloadServerMismatch {
            envelope: request.server.clone(),
            payload: payload.server,
        });
    }
    Ok(payload)
}
