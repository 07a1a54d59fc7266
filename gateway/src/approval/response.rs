//! The approval response: its plaintext ([`ResponsePayload`]), how the server seals it
//! ([`seal_response`]: boxed from the server's long-term key to the request's one-time key,
//! then HMAC-signed with the client's secret), and how the client opens it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crypto_box::aead::Aead as _;
use serde::{Deserialize, Serialize};

use super::b64;
pub use super::binding::{BoxKeyUpdate, ResponseBinding};
use super::canonical::response_mac_input;
use super::error::{PublicCode, escape_for_log};
use super::keys::{BoxKeySet, BoxPublicKey, HmacSecret, ServerBoxKeys};
use super::rng::{self, RngError};
use super::wire::{ApprovalResponse, BOX_NONCE_LEN, BOX_TAG_LEN, RESPONSE_CIPHERTEXT_MAX};

/// The reason code of an approval.
pub const APPROVED_REASON: &str = "approved";

/// The body of a sealed denial: `{"error": <public code>, "sealed": <response>}`. `error` is
/// the public code in clear (an unauthenticated hint, as in every error body); `sealed` is a
/// response whose verdict is `deny` with that code. A client trusts the denial only when
/// `sealed` opens for its request and its reason equals `error`.
#[derive(Serialize)]
struct SealedDenialBody<'a> {
    error: &'a str,
    sealed: &'a ApprovalResponse,
}

/// The parsed (not yet opened) form of a sealed denial body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SealedDenialJson {
    pub(crate) error: String,
    pub(crate) sealed: serde_json::Value,
}

/// Seals a denial with `code` for a request whose HMAC verified: the JSON body of a
/// [`SealedDenialBody`].
pub fn seal_denial(
    binding: &ResponseBinding,
    server_keys: &(impl BoxKeySet + ?Sized),
    client_hmac_secret: &HmacSecret,
    code: PublicCode,
) -> Result<Vec<u8>, SealError> {
    let sealed = seal_response(
        binding,
        server_keys,
        client_hmac_secret,
        &ResponsePayload::deny(code),
    )?;
    denial_body(code, &sealed)
}

/// The JSON body of a sealed denial of `code`.
pub(crate) fn denial_body(
    code: PublicCode,
    sealed: &ApprovalResponse,
) -> Result<Vec<u8>, SealError> {
    Ok(serde_json::to_vec(&SealedDenialBody {
        error: code.as_str(),
        sealed,
    })?)
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The port is open for the client's addresses.
    Allow,
    /// The request was refused.
    Deny,
}

/// Transport protocol of the VPN port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportProtocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// Where the client must connect: the host that approved the request (so a client behind a
/// load-balanced web endpoint reaches the right gateway) and the VPN port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectTarget {
    /// The gateway's IPv4 address, if it has one.
    pub host_ipv4: Option<Ipv4Addr>,
    /// The gateway's IPv6 address, if it has one.
    pub host_ipv6: Option<Ipv6Addr>,
    /// The VPN port.
    pub port: u16,
    /// The VPN transport.
    pub protocol: TransportProtocol,
}

/// The response plaintext, as the caller supplies it and the client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePayload {
    /// Allow or deny.
    pub verdict: Verdict,
    /// `approved`, or a [`PublicCode`] string.
    pub reason: String,
    /// Where to connect; present exactly when allowed.
    pub connect: Option<ConnectTarget>,
    /// The addresses opened; non-empty exactly when allowed.
    pub opened: Vec<IpAddr>,
    /// When the opening expires (Unix seconds); present exactly when allowed.
    pub expires_unix: Option<u64>,
    /// On an opened answer: the server's current box key, when the request was boxed to its
    /// previous one (§16). Sealing takes it from the [`ResponseBinding`] instead.
    pub box_key_update: Option<BoxKeyUpdate>,
}

impl ResponsePayload {
    /// An approval.
    pub fn allow(connect: ConnectTarget, opened: Vec<IpAddr>, expires_unix: u64) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason: APPROVED_REASON.to_owned(),
            connect: Some(connect),
            opened,
            expires_unix: Some(expires_unix),
            box_key_update: None,
        }
    }

    /// A denial with a public code (never an audit reason).
    pub fn deny(code: PublicCode) -> Self {
        Self {
            verdict: Verdict::Deny,
            reason: code.as_str().to_owned(),
            connect: None,
            opened: Vec::new(),
            expires_unix: None,
            box_key_update: None,
        }
    }

    /// Checks that the fields agree with the verdict.
    pub(crate) fn check_consistent(&self) -> Result<(), &'static str> {
        match self.verdict {
            Verdict::Allow => {
                let connect = self.connect.ok_or("allow without connect target")?;
                if connect.host_ipv4.is_none() && connect.host_ipv6.is_none() {
                    return Err("connect target without host address");
                }
                if self.opened.is_empty() || self.expires_unix.is_none() {
                    return Err("allow without opened addresses or expiry");
                }
                if self.reason != APPROVED_REASON {
                    return Err("allow with a reason other than `approved`");
                }
            }
            Verdict::Deny => {
                if self.connect.is_some() || !self.opened.is_empty() || self.expires_unix.is_some()
                {
                    return Err("deny with connect target, opened addresses or expiry");
                }
                if PublicCode::from_str_code(&self.reason).is_none() {
                    return Err("deny with an unknown reason code");
                }
            }
        }
        Ok(())
    }
}

/// The response plaintext as JSON, with the binding echoed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponsePlaintextJson {
    pub(crate) request_nonce: String,
    pub(crate) server: String,
    pub(crate) verdict: Verdict,
    pub(crate) reason: String,
    pub(crate) connect: Option<ConnectTarget>,
    pub(crate) opened: Vec<IpAddr>,
    pub(crate) expires: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) box_key_update: Option<BoxKeyUpdateJson>,
}

/// `box_key_update` in a response plaintext (§16).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BoxKeyUpdateJson {
    pub(crate) public_key: String,
    pub(crate) previous_key_until: u64,
}

impl ResponsePlaintextJson {
    pub(crate) fn new(binding: &ResponseBinding, p: &ResponsePayload) -> Self {
        Self {
            request_nonce: b64::encode(&binding.request_nonce),
            server: binding.server.clone(),
            verdict: p.verdict,
            reason: p.reason.clone(),
            connect: p.connect,
            opened: p.opened.clone(),
            expires: p.expires_unix,
            box_key_update: binding.key_update.map(|u| BoxKeyUpdateJson {
                public_key: b64::encode(&u.public_key),
                previous_key_until: u.previous_key_until,
            }),
        }
    }

    /// Parses an opened response plaintext and checks it answers `binding`.
    pub(crate) fn open(
        plaintext: &[u8],
        binding: &ResponseBinding,
    ) -> Result<ResponsePayload, OpenError> {
        let j: Self = serde_json::from_slice(plaintext)
            .map_err(|e| OpenError::Malformed(escape_for_log(&e.to_string(), 160)))?;
        let nonce_ok = b64::decode(&j.request_nonce).is_some_and(|n| n == binding.request_nonce);
        if !nonce_ok || j.server != binding.server {
            return Err(OpenError::NotBound);
        }
        let box_key_update = match j.box_key_update {
            None => None,
            Some(u) => {
                let public_key = b64::decode(&u.public_key)
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .filter(|k| BoxPublicKey::from_bytes(*k).is_strong())
                    .ok_or_else(|| {
                        OpenError::Malformed("box_key_update.public_key is not a key".into())
                    })?;
                Some(BoxKeyUpdate {
                    public_key,
                    previous_key_until: u.previous_key_until,
                })
            }
        };
        let payload = ResponsePayload {
            verdict: j.verdict,
            reason: j.reason,
            connect: j.connect,
            opened: j.opened,
            expires_unix: j.expires,
            box_key_update,
        };
        payload
            .check_consistent()
            .map_err(|e| OpenError::Malformed(e.to_owned()))?;
        Ok(payload)
    }
}

/// Why an opened response plaintext was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    Malformed(String),
    NotBound,
}

/// A response could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The payload is inconsistent (e.g. allow without expiry).
    #[error("response payload is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// The payload serialises past the response size limit.
    #[error("response payload is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Plaintext length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// JSON serialisation failed.
    #[error("response payload did not serialise: {0}")]
    Json(#[from] serde_json::Error),
    /// Box encryption failed.
    #[error("box encryption failed")]
    Box,
    /// The operating system's random generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// Seals a response to the request behind `binding`: the plaintext (with the request nonce
/// and server echoed) is boxed from the server's long-term key to the request's one-time key
/// under a random nonce, and the result is HMAC-signed with the client's secret.
pub fn seal_response(
    binding: &ResponseBinding,
    server_keys: &(impl BoxKeySet + ?Sized),
    client_hmac_secret: &HmacSecret,
    payload: &ResponsePayload,
) -> Result<ApprovalResponse, SealError> {
    let box_nonce = rng::random_array::<BOX_NONCE_LEN>()?;
    seal_response_with_nonce(binding, server_keys, client_hmac_secret, payload, box_nonce)
}

/// [`seal_response`] with a caller-chosen box nonce (test vectors).
pub(crate) fn seal_response_with_nonce(
    binding: &ResponseBinding,
    server_keys: &(impl BoxKeySet + ?Sized),
    client_hmac_secret: &HmacSecret,
    payload: &ResponsePayload,
    box_nonce: [u8; BOX_NONCE_LEN],
) -> Result<ApprovalResponse, SealError> {
    let plaintext = response_plaintext(binding, payload)?;
    let client_pk = BoxPublicKey::from_bytes(binding.client_box_public_key).to_crypto_box();
    let shared = crypto_box::SalsaBox::new(&client_pk, sealing_key(binding, server_keys).secret());
    seal_in_box(binding, &shared, client_hmac_secret, &plaintext, box_nonce)
}

/// The key an answer is boxed from: the one the request was boxed to (§16).
fn sealing_key<'k>(
    binding: &ResponseBinding,
    keys: &'k (impl BoxKeySet + ?Sized),
) -> &'k ServerBoxKeys {
    match (binding.key_update, keys.previous()) {
        (Some(_), Some((previous, _))) => previous,
        _ => keys.current(),
    }
}

/// [`seal_response`] with the box key shared with the request's one-time key already
/// computed (it was, to open the request).
pub(crate) fn seal_response_in_box(
    binding: &ResponseBinding,
    shared: &crypto_box::SalsaBox,
    client_hmac_secret: &HmacSecret,
    payload: &ResponsePayload,
) -> Result<ApprovalResponse, SealError> {
    let plaintext = response_plaintext(binding, payload)?;
    let box_nonce = rng::random_array::<BOX_NONCE_LEN>()?;
    seal_in_box(binding, shared, client_hmac_secret, &plaintext, box_nonce)
}

/// The checked, size-limited plaintext of a response.
fn response_plaintext(
    binding: &ResponseBinding,
    payload: &ResponsePayload,
) -> Result<Vec<u8>, SealError> {
    payload
        .check_consistent()
        .map_err(SealError::Inconsistent)?;
    let plaintext = serde_json::to_vec(&ResponsePlaintextJson::new(binding, payload))?;
    let max = RESPONSE_CIPHERTEXT_MAX - BOX_TAG_LEN;
    if plaintext.len() > max {
        return Err(SealError::TooLarge {
            len: plaintext.len(),
            max,
        });
    }
    Ok(plaintext)
}

/// Boxes `plaintext` under `box_nonce` and HMAC-signs the result.
fn seal_in_box(
    binding: &ResponseBinding,
    shared: &crypto_box::SalsaBox,
    client_hmac_secret: &HmacSecret,
    plaintext: &[u8],
    box_nonce: [u8; BOX_NONCE_LEN],
) -> Result<ApprovalResponse, SealError> {
    let sealed = shared
        .encrypt(&box_nonce.into(), plaintext)
        .map_err(|_| SealError::Box)?;
    let mut response = ApprovalResponse {
        box_nonce,
        box_ciphertext: sealed,
        hmac: [0; 64],
    };
    response.hmac = client_hmac_secret.sign(&response_mac_input(
        &binding.request_nonce,
        &binding.client_box_public_key,
        &response,
    ));
    Ok(response)
}
