//! Why a request was rejected: the stable public code a client may see, and the precise reason
//! that only goes to the operator's audit log.
//!
//! Every failure that concerns identity or credentials maps to the one public code
//! [`PublicCode::Denied`], so a client learns nothing about which check failed.

use std::fmt;

use crate::address_kind::{AddressProblem, AddressSource};
use crate::binding::ResponseBinding;

/// The pipeline stage at which a request was rejected, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Outside the pipeline: the caller refused the request before validating it.
    Admission,
    /// Body size, JSON shape, field sizes and encodings.
    Shape,
    /// Envelope timestamp inside the window.
    Timestamp,
    /// The client exists.
    Client,
    /// HMAC-SHA512 over the canonical envelope.
    Hmac,
    /// The envelope request nonce was not seen before.
    RequestNonce,
    /// The client is enabled (stage 5a: after its nonce is recorded).
    ClientEnabled,
    /// The server exists and is served by this gateway.
    Server,
    /// RSA-PSS-SHA512 signature with the client's enrolled key.
    Signature,
    /// Opening the NaCl box with the server's long-term key.
    BoxOpen,
    /// Parsing the boxed payload and matching it to the envelope.
    Payload,
    /// Payload timestamp inside the window.
    PayloadTimestamp,
    /// The payload nonce was not seen before.
    PayloadNonce,
    /// The client may use the server.
    ClientAllowed,
    /// The device signature, for a server with `device_auth = "required"` (§15).
    Device,
    /// The addresses to open.
    Addresses,
    /// After validation, in the controller: revocation in flight, per-client rate and cap, map
    /// capacity (`docs/PROTOCOL.md` §7.3).
    Grant,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 17] = [
        Stage::Admission,
        Stage::Shape,
        Stage::Timestamp,
        Stage::Client,
        Stage::Hmac,
        Stage::RequestNonce,
        Stage::ClientEnabled,
        Stage::Server,
        Stage::Signature,
        Stage::BoxOpen,
        Stage::Payload,
        Stage::PayloadTimestamp,
        Stage::PayloadNonce,
        Stage::ClientAllowed,
        Stage::Device,
        Stage::Addresses,
        Stage::Grant,
    ];

    /// A stable snake_case name, for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Admission => "admission",
            Stage::Shape => "shape",
            Stage::Timestamp => "timestamp",
            Stage::Client => "client",
            Stage::Hmac => "hmac",
            Stage::RequestNonce => "request_nonce",
            Stage::ClientEnabled => "client_enabled",
            Stage::Server => "server",
            Stage::Signature => "signature",
            Stage::BoxOpen => "box_open",
            Stage::Payload => "payload",
            Stage::PayloadTimestamp => "payload_timestamp",
            Stage::PayloadNonce => "payload_nonce",
            Stage::ClientAllowed => "client_allowed",
            Stage::Device => "device",
            Stage::Addresses => "addresses",
            Stage::Grant => "grant",
        }
    }

    /// True for the stages that do public-key work (RSA or X25519).
    pub const fn is_expensive(self) -> bool {
        matches!(self, Stage::Signature | Stage::BoxOpen)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The code a client sees. Stable: clients and dashboards match on [`PublicCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicCode {
    /// The request is not a well-formed approval request.
    Malformed,
    /// The request body is over [`crate::MAX_REQUEST_BODY_BYTES`].
    PayloadTooLarge,
    /// A timestamp is outside the accepted window.
    ClockSkew,
    /// A nonce was already used.
    Replay,
    /// No server has that name.
    UnknownServer,
    /// The server exists but another gateway serves it.
    ServerNotHere,
    /// The caller throttled the request.
    RateLimited,
    /// A reported or remote address cannot be opened.
    InvalidAddress,
    /// Identity or credentials failed; the precise reason is only in the audit log.
    Denied,
    /// The controller cannot be reached or the deadline passed; retry later.
    Unavailable,
    /// No such path.
    NotFound,
    /// The path exists but not for this method.
    MethodNotAllowed,
    /// A `POST` body whose `Content-Type` is not `application/json`.
    UnsupportedMediaType,
    /// A signed self-shutdown notice holds: the service is down on purpose (§14).
    Shutdown,
    /// The server needs a passcode and the request carried none (§7.4).
    PasscodeRequired,
    /// The passcode is wrong, or its step was used already (§7.4).
    PasscodeInvalid,
    /// Too many wrong passcodes: the client is locked out for a while (§7.4).
    PasscodeLocked,
    /// The server needs a device signature and the request carried none (§15).
    DeviceRequired,
    /// The device is not approved yet: it waits for an operator (§15).
    DevicePending,
}

impl PublicCode {
    /// Every public code.
    pub const ALL: [PublicCode; 19] = [
        PublicCode::Malformed,
        PublicCode::PayloadTooLarge,
        PublicCode::ClockSkew,
        PublicCode::Replay,
        PublicCode::UnknownServer,
        PublicCode::ServerNotHere,
        PublicCode::RateLimited,
        PublicCode::InvalidAddress,
        PublicCode::Denied,
        PublicCode::Unavailable,
        PublicCode::NotFound,
        PublicCode::MethodNotAllowed,
        PublicCode::UnsupportedMediaType,
        PublicCode::Shutdown,
        PublicCode::PasscodeRequired,
        PublicCode::PasscodeInvalid,
        PublicCode::PasscodeLocked,
        PublicCode::DeviceRequired,
        PublicCode::DevicePending,
    ];

    /// The stable snake_case string sent to the client.
    pub const fn as_str(self) -> &'static str {
        match self {
            PublicCode::Malformed => "malformed",
            PublicCode::PayloadTooLarge => "payload_too_large",
            PublicCode::ClockSkew => "clock_skew",
            PublicCode::Replay => "replay",
            PublicCode::UnknownServer => "unknown_server",
            PublicCode::ServerNotHere => "server_not_here",
            PublicCode::RateLimited => "rate_limited",
            PublicCode::InvalidAddress => "invalid_address",
            PublicCode::Denied => "denied",
            PublicCode::Unavailable => "unavailable",
            PublicCode::NotFound => "not_found",
            PublicCode::MethodNotAllowed => "method_not_allowed",
            PublicCode::UnsupportedMediaType => "unsupported_media_type",
            PublicCode::Shutdown => "shutdown",
            PublicCode::PasscodeRequired => "passcode_required",
            PublicCode::PasscodeInvalid => "passcode_invalid",
            PublicCode::PasscodeLocked => "passcode_locked",
            PublicCode::DeviceRequired => "device_required",
            PublicCode::DevicePending => "device_pending",
        }
    }

    /// The HTTP status that goes with the code.
    pub const fn http_status(self) -> u16 {
        match self {
            PublicCode::Malformed | PublicCode::ClockSkew => 400,
            PublicCode::Denied | PublicCode::DevicePending => 403,
            PublicCode::UnknownServer => 404,
            PublicCode::Replay => 409,
            PublicCode::PayloadTooLarge => 413,
            PublicCode::ServerNotHere => 421,
            PublicCode::InvalidAddress => 422,
            PublicCode::RateLimited | PublicCode::PasscodeLocked => 429,
            PublicCode::PasscodeRequired
            | PublicCode::PasscodeInvalid
            | PublicCode::DeviceRequired => 401,
            PublicCode::NotFound => 404,
            PublicCode::MethodNotAllowed => 405,
            PublicCode::UnsupportedMediaType => 415,
            PublicCode::Unavailable => 503,
            PublicCode::Shutdown => 503,
        }
    }

    /// Parses a code received from a server.
    pub fn from_str_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for PublicCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precise reason for a rejection, for the operator's audit log only.
///
/// Strings inside come from the request after its shape check (identifiers are restricted to
/// `[A-Za-z0-9._-]`) or are escaped, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The body is over the size limit.
    #[error("body is {len} bytes, over the {max}-byte limit")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not JSON of the expected shape (syntax, unknown field, wrong type).
    #[error("body is not a valid approval message: {0}")]
    MalformedJson(String),
    /// The `version` field names a protocol version this code does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// A field is too short or too long (after base64 decoding for binary fields).
    #[error("field `{field}` is {len} bytes, allowed {min}..={max}")]
    FieldLength {
        /// Field name.
        field: &'static str,
        /// Actual length.
        len: usize,
        /// Minimum length.
        min: usize,
        /// Maximum length.
        max: usize,
    },
    /// A binary field is not strict padded standard base64.
    #[error("field `{field}` is not strict standard base64")]
    FieldEncoding {
        /// Field name.
        field: &'static str,
    },
    /// A text field holds a character outside its allowed set.
    #[error("field `{field}` holds a character outside its allowed set")]
    FieldCharset {
        /// Field name.
        field: &'static str,
    },
    /// The envelope timestamp is outside the window.
    #[error("envelope timestamp {timestamp} is outside now {now} ± {window} s")]
    ClockSkew {
        /// Timestamp in the request.
        timestamp: u64,
        /// Server time.
        now: u64,
        /// Accepted skew.
        window: u64,
    },
    /// No client has that id.
    #[error("unknown client `{client_id}`")]
    UnknownClient {
        /// The claimed client id.
        client_id: String,
    },
    /// The client is disabled.
    #[error("client `{client_id}` is disabled")]
    ClientDisabled {
        /// The client id.
        client_id: String,
    },
    /// The HMAC does not match the client's secret.
    #[error("HMAC does not verify with the secret of client `{client_id}`")]
    HmacMismatch {
        /// The claimed client id.
        client_id: String,
    },
    /// The envelope request nonce was seen before.
    #[error("request nonce replayed")]
    RequestNonceReplayed,
    /// No server has that name.
    #[error("unknown server `{server}`")]
    UnknownServer {
        /// The requested server name.
        server: String,
    },
    /// Another gateway serves that server.
    #[error("server `{server}` is not served by this gateway")]
    ServerNotHere {
        /// The requested server name.
        server: String,
    },
    /// The RSA-PSS signature does not verify with the client's enrolled key (a wrong or
    /// tampered signature, or a signature made with another client's key).
    #[error("RSA-PSS signature does not verify with the enrolled key of client `{client_id}`")]
    SignatureInvalid {
        /// The client id.
        client_id: String,
    },
    /// The box does not open with the server's key and the request's one-time key.
    #[error("box does not open (wrong server key, or tampered ciphertext)")]
    BoxOpenFailed,
    /// The one-time box key is of small order or not canonically encoded (its shared secret
    /// would be a constant).
    #[error("one-time box key is of small order or not canonical")]
    WeakBoxKey,
    /// The boxed payload is not a valid payload.
    #[error("boxed payload is malformed: {0}")]
    PayloadMalformed(String),
    /// The boxed payload names another server than the envelope.
    #[error("payload names server `{payload}` but the envelope names `{envelope}`")]
    PayloadServerMismatch {
        /// Server in the envelope.
        envelope: String,
        /// Server in the payload.
        payload: String,
    },
    /// The payload timestamp is outside the window.
    #[error("payload timestamp {timestamp} is outside now {now} ± {window} s")]
    PayloadClockSkew {
        /// Timestamp in the payload.
        timestamp: u64,
        /// Server time.
        now: u64,
        /// Accepted skew.
        window: u64,
    },
    /// The payload nonce was seen before.
    #[error("payload nonce replayed")]
    PayloadNonceReplayed,
    /// The client may not use that server.
    #[error("client `{client_id}` is not allowed on server `{server}`")]
    ClientNotAllowed {
        /// The client id.
        client_id: String,
        /// The server name.
        server: String,
    },
    /// An address cannot be opened.
    #[error("{origin} address {address} is invalid: {problem}")]
    InvalidAddress {
        /// Where the address came from.
        origin: AddressSource,
        /// The address as received, escaped.
        address: String,
        /// What is wrong with it.
        problem: AddressProblem,
    },
    /// The server requires reported addresses to match the remote one, and they do not.
    #[error("reported address {reported} does not match remote address {remote}")]
    AddressMismatch {
        /// The reported address of the remote's family, or `none`.
        reported: String,
        /// The remote address.
        remote: String,
    },
    /// No address is left to open.
    #[error("no openable address: remote {remote} is not openable and none was reported")]
    NoOpenableAddress {
        /// The remote address.
        remote: String,
    },
    /// The caller throttled the request.
    #[error("rate limited")]
    RateLimited,
    /// The client asked for more approvals than its per-minute budget (checked after the
    /// request was validated, so only the client itself can spend its budget).
    #[error("client `{client_id}` is over its {per_minute} approvals per minute")]
    ClientRateExceeded {
        /// The client id.
        client_id: String,
        /// The configured budget.
        per_minute: u32,
    },
    /// The client already holds the server's maximum number of open addresses.
    #[error("client `{client_id}` already holds {limit} open address(es) on this server")]
    ClientCapReached {
        /// The client id.
        client_id: String,
        /// The server's `max_addresses_per_client`.
        limit: usize,
    },
    /// The server needs a passcode; the request has none.
    #[error("server needs a passcode and the request of `{client_id}` has none")]
    PasscodeMissing {
        /// The client id.
        client_id: String,
    },
    /// The client never received a TOTP secret (enrolled before one existed).
    #[error("client `{client_id}` has no TOTP secret: enroll it again")]
    PasscodeNotEnrolled {
        /// The client id.
        client_id: String,
    },
    /// The passcode matches none of the accepted steps.
    #[error("wrong passcode from `{client_id}` ({failures_left} left before a lockout)")]
    PasscodeWrong {
        /// The client id.
        client_id: String,
        /// Wrong passcodes still allowed before the lockout.
        failures_left: u32,
    },
    /// The passcode's step was used by this client already.
    #[error("passcode of step {step} was used by `{client_id}` already")]
    PasscodeReused {
        /// The client id.
        client_id: String,
        /// The TOTP step.
        step: u64,
    },
    /// The client is locked out after too many wrong passcodes.
    #[error("client `{client_id}` is locked out for {seconds_left} s after wrong passcodes")]
    PasscodeLockedOut {
        /// The client id.
        client_id: String,
        /// Seconds until the lockout ends.
        seconds_left: u64,
    },
    /// The server needs a device signature; the request lacks the device key or the
    /// signature (or both).
    #[error("server needs a device signature and the request of `{client_id}` lacks {missing}")]
    DeviceMissing {
        /// The client id.
        client_id: String,
        /// What is missing.
        missing: &'static str,
    },
    /// The device public key is not an uncompressed point on P-256.
    #[error("device key of `{client_id}` refused: {problem}")]
    DeviceKeyInvalid {
        /// The client id.
        client_id: String,
        /// What is wrong with it.
        problem: crate::device_key::DeviceKeyError,
    },
    /// The device signature does not verify with the device key in the box.
    #[error("device signature of `{client_id}` does not verify with device key {fingerprint}")]
    DeviceSignatureInvalid {
        /// The client id.
        client_id: String,
        /// The device key's fingerprint.
        fingerprint: String,
    },
    /// The device is not approved (it is now pending, or still is).
    #[error("device {device:?} ({fingerprint}) of `{client_id}` is pending approval{detail}")]
    DevicePending {
        /// The client id.
        client_id: String,
        /// The device name.
        device: String,
        /// The device key's fingerprint.
        fingerprint: String,
        /// What happened (new, seen again, an older pending device evicted).
        detail: String,
    },
    /// The operator removed this device.
    #[error("device {device:?} ({fingerprint}) of `{client_id}` was removed by the operator")]
    DeviceRemoved {
        /// The client id.
        client_id: String,
        /// The device name.
        device: String,
        /// The device key's fingerprint.
        fingerprint: String,
    },
}

impl Reason {
    /// The public code for this reason. The one place where reasons meet codes.
    pub fn public_code(&self) -> PublicCode {
        match self {
            Reason::BodyTooLarge { .. } => PublicCode::PayloadTooLarge,
            Reason::MalformedJson(_)
            | Reason::UnsupportedVersion(_)
            | Reason::FieldLength { .. }
            | Reason::FieldEncoding { .. }
            | Reason::FieldCharset { .. }
            | Reason::PayloadMalformed(_)
            | Reason::PayloadServerMismatch { .. }
            | Reason::DeviceKeyInvalid { .. } => PublicCode::Malformed,
            Reason::ClockSkew { .. } | Reason::PayloadClockSkew { .. } => PublicCode::ClockSkew,
            Reason::RequestNonceReplayed | Reason::PayloadNonceReplayed => PublicCode::Replay,
            Reason::UnknownServer { .. } => PublicCode::UnknownServer,
            Reason::ServerNotHere { .. } => PublicCode::ServerNotHere,
            Reason::RateLimited
            | Reason::ClientRateExceeded { .. }
            | Reason::ClientCapReached { .. } => PublicCode::RateLimited,
            Reason::InvalidAddress { .. }
            | Reason::AddressMismatch { .. }
            | Reason::NoOpenableAddress { .. } => PublicCode::InvalidAddress,
            Reason::UnknownClient { .. }
            | Reason::ClientDisabled { .. }
            | Reason::HmacMismatch { .. }
            | Reason::SignatureInvalid { .. }
            | Reason::BoxOpenFailed
            | Reason::WeakBoxKey
            | Reason::ClientNotAllowed { .. }
            | Reason::DeviceSignatureInvalid { .. }
            | Reason::DeviceRemoved { .. } => PublicCode::Denied,
            Reason::DeviceMissing { .. } => PublicCode::DeviceRequired,
            Reason::DevicePending { .. } => PublicCode::DevicePending,
            Reason::PasscodeMissing { .. } | Reason::PasscodeNotEnrolled { .. } => {
                PublicCode::PasscodeRequired
            }
            Reason::PasscodeWrong { .. } | Reason::PasscodeReused { .. } => {
                PublicCode::PasscodeInvalid
            }
            Reason::PasscodeLockedOut { .. } => PublicCode::PasscodeLocked,
        }
    }

    /// A stable snake_case name of the variant, for audit records and metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            Reason::BodyTooLarge { .. } => "body_too_large",
            Reason::MalformedJson(_) => "malformed_json",
            Reason::UnsupportedVersion(_) => "unsupported_version",
            Reason::FieldLength { .. } => "field_length",
            Reason::FieldEncoding { .. } => "field_encoding",
            Reason::FieldCharset { .. } => "field_charset",
            Reason::ClockSkew { .. } => "clock_skew",
            Reason::UnknownClient { .. } => "unknown_client",
            Reason::ClientDisabled { .. } => "client_disabled",
            Reason::HmacMismatch { .. } => "hmac_mismatch",
            Reason::RequestNonceReplayed => "request_nonce_replayed",
            Reason::UnknownServer { .. } => "unknown_server",
            Reason::ServerNotHere { .. } => "server_not_here",
            Reason::SignatureInvalid { .. } => "signature_invalid",
            Reason::BoxOpenFailed => "box_open_failed",
            Reason::WeakBoxKey => "weak_box_key",
            Reason::PayloadMalformed(_) => "payload_malformed",
            Reason::PayloadServerMismatch { .. } => "payload_server_mismatch",
            Reason::PayloadClockSkew { .. } => "payload_clock_skew",
            Reason::PayloadNonceReplayed => "payload_nonce_replayed",
            Reason::ClientNotAllowed { .. } => "client_not_allowed",
            Reason::InvalidAddress { .. } => "invalid_address",
            Reason::AddressMismatch { .. } => "address_mismatch",
            Reason::NoOpenableAddress { .. } => "no_openable_address",
            Reason::RateLimited => "rate_limited",
            Reason::ClientRateExceeded { .. } => "client_rate_exceeded",
            Reason::ClientCapReached { .. } => "client_cap_reached",
            Reason::PasscodeMissing { .. } => "passcode_missing",
            Reason::PasscodeNotEnrolled { .. } => "passcode_not_enrolled",
            Reason::PasscodeWrong { .. } => "passcode_wrong",
            Reason::PasscodeReused { .. } => "passcode_reused",
            Reason::PasscodeLockedOut { .. } => "passcode_locked_out",
            Reason::DeviceMissing { .. } => "device_missing",
            Reason::DeviceKeyInvalid { .. } => "device_key_invalid",
            Reason::DeviceSignatureInvalid { .. } => "device_signature_invalid",
            Reason::DevicePending { .. } => "device_pending",
            Reason::DeviceRemoved { .. } => "device_removed",
        }
    }
}

/// A rejected request: where it failed, the precise reason, and, when the request's HMAC had
/// verified, what is needed to seal a signed denial back to the client.
///
/// Show [`Rejection::public_code`] to the client; log [`Rejection::reason`] (or the whole
/// value through `Display`) for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval rejected at stage {}: {}", .0.stage, .0.reason)]
pub struct Rejection(Box<RejectionInner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct RejectionInner {
    stage: Stage,
    reason: Reason,
    binding: Option<ResponseBinding>,
}

impl Rejection {
    /// A rejection at `stage` for `reason`, without a response binding.
    pub fn new(stage: Stage, reason: Reason) -> Self {
        Self(Box::new(RejectionInner {
            stage,
            reason,
            binding: None,
        }))
    }

    /// Attaches what is needed to seal a response (only once the HMAC verified).
    pub fn with_binding(mut self, binding: ResponseBinding) -> Self {
        self.0.binding = Some(binding);
        self
    }

    /// A rejection for a request the caller throttled before validating it.
    pub fn rate_limited() -> Self {
        Self::new(Stage::Admission, Reason::RateLimited)
    }

    /// The code to show the client.
    pub fn public_code(&self) -> PublicCode {
        self.0.reason.public_code()
    }

    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        self.public_code().http_status()
    }

    /// The precise reason, for the audit log only.
    pub fn reason(&self) -> &Reason {
        &self.0.reason
    }

    /// The stage at which the request was rejected.
    pub fn stage(&self) -> Stage {
        self.0.stage
    }

    /// Present when the request's HMAC verified: lets the caller seal a signed denial with
    /// [`crate::seal_response`] and [`crate::ResponsePayload::deny`].
    pub fn binding(&self) -> Option<&ResponseBinding> {
        self.0.binding.as_ref()
    }

    /// The JSON body for an unsealed error answer: `{"error":"<public code>"}`.
    pub fn public_body(&self) -> crate::ErrorBody {
        crate::ErrorBody {
            error: self.public_code().as_str().to_owned(),
            message: None,
        }
    }
}

/// Truncates and escapes untrusted text so it is safe in an audit line.
pub fn escape_for_log(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max_chars)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in PublicCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert_eq!(PublicCode::from_str_code(s), Some(code));
            let server_side = matches!(code, PublicCode::Unavailable | PublicCode::Shutdown);
            let range = if server_side { 500..600 } else { 400..500 };
            assert!(range.contains(&code.http_status()), "{s}");
        }
    }

    #[test]
    fn identity_failures_share_one_public_code() {
        let id = String::from("c1");
        for reason in [
            Reason::UnknownClient {
                client_id: id.clone(),
            },
            Reason::ClientDisabled {
                client_id: id.clone(),
            },
            Reason::HmacMismatch {
                client_id: id.clone(),
            },
            Reason::SignatureInvalid {
                client_id: id.clone(),
            },
            Reason::BoxOpenFailed,
            Reason::WeakBoxKey,
            Reason::ClientNotAllowed {
                client_id: id.clone(),
                server: "s".into(),
            },
        ] {
            assert_eq!(reason.public_code(), PublicCode::Denied, "{reason}");
            assert_eq!(reason.public_code().http_status(), 403);
        }
    }

    #[test]
    fn escape_for_log_escapes_and_truncates() {
        assert_eq!(escape_for_log("a\nb", 10), "a\\nb");
        assert_eq!(escape_for_log("abcdef", 3), "abc…");
    }
}
