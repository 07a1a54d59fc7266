//! The client side: [`build_request`] seals, signs and MACs a request with the profile's
//! credentials; [`open_response`] checks the server's answer and that it answers that request.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crypto_box::aead::Aead as _;
use zeroize::Zeroizing;

use super::canonical::{
    request_device_signature_input, request_mac_input, request_signature_input, response_mac_input,
};
use super::error::{PublicCode, Reason, escape_for_log};
use super::keys::{BoxPublicKey, ClientRsaKey, ClientRsaPublicKey, HmacSecret, KeyError};
use super::response::{OpenError, ResponseBinding, ResponsePayload, ResponsePlaintextJson};
use super::rng::{self, RngError};
use super::wire::{
    ApprovalRequest, BOX_NONCE_LEN, BOX_TAG_LEN, CLIENT_ID_MAX, NONCE_LEN, REQUEST_CIPHERTEXT_MAX,
    RequestPayload, check_identifier, parse_response,
};
use crate::device::{DeviceSignError, DeviceSigner};

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client id does not meet the protocol's limits.
    #[error("invalid client id: {0}")]
    InvalidClientId(Reason),
    /// A request parameter does not meet the protocol's limits.
    #[error("invalid request parameter: {0}")]
    InvalidParams(Reason),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The operating system's random generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// JSON serialisation failed.
    #[error("JSON serialisation failed: {0}")]
    Json(#[from] serde_json::Error),
    /// Box encryption failed.
    #[error("box encryption failed")]
    Box,
    /// The response body is not a well-formed response.
    #[error("malformed response: {0}")]
    MalformedResponse(Reason),
    /// The response HMAC does not verify (wrong secret, tampering, or another request's
    /// response).
    #[error("response HMAC does not verify")]
    ResponseMacMismatch,
    /// The response box does not open with the server's key and this request's one-time key.
    #[error("response box does not open")]
    ResponseBoxOpenFailed,
    /// The response plaintext is malformed or inconsistent.
    #[error("response payload is malformed: {0}")]
    ResponsePayloadMalformed(String),
    /// The response plaintext answers another request or server.
    #[error("response is not bound to this request")]
    ResponseNotBound,
    /// The device key could not sign.
    #[error("device key: {0}")]
    Device(#[from] DeviceSignError),
}

/// What a client signs with: its id, HMAC secret and RSA key, and the server's box public
/// key from its profile.
#[derive(Debug)]
pub struct ClientCredentials {
    client_id: String,
    hmac_secret: HmacSecret,
    rsa_key: ClientRsaKey,
    server_box_public_key: BoxPublicKey,
}

impl ClientCredentials {
    /// Assembles credentials, checking the client id.
    pub fn new(
        client_id: String,
        hmac_secret: HmacSecret,
        rsa_key: ClientRsaKey,
        server_box_public_key: BoxPublicKey,
    ) -> Result<Self, ClientError> {
        check_identifier("client_id", &client_id, CLIENT_ID_MAX)
            .map_err(ClientError::InvalidClientId)?;
        Ok(Self {
            client_id,
            hmac_secret,
            rsa_key,
            server_box_public_key,
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The HMAC secret.
    pub fn hmac_secret(&self) -> &HmacSecret {
        &self.hmac_secret
    }

    /// The RSA public key, for enrollment.
    pub fn rsa_public_key(&self) -> ClientRsaPublicKey {
        self.rsa_key.public_key()
    }

    /// The server's box public key.
    pub fn server_box_public_key(&self) -> BoxPublicKey {
        self.server_box_public_key
    }
}

/// What the client tells the server inside the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestParams {
    /// The server name to connect to.
    pub server: String,
    /// The client's public IPv4 address, as discovered by the client.
    pub public_ipv4: Option<Ipv4Addr>,
    /// The client's public IPv6 address, as discovered by the client.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The client software version (1..=64 printable ASCII characters).
    pub client_version: String,
    /// The device name (0..=128 bytes, no control characters).
    pub device_name: String,
    /// The passcode of the second factor (6 to 8 ASCII digits), for a server that needs one.
    pub passcode: Option<String>,
}

/// A request in flight: what the client needs to open its response. Holds the one-time box
/// secret; drop it once the response is handled.
pub struct PendingApproval {
    binding: ResponseBinding,
    one_time_secret: crypto_box::SecretKey,
}

impl PendingApproval {
    /// The request nonce the response must echo.
    pub fn request_nonce(&self) -> &[u8; NONCE_LEN] {
        self.binding.request_nonce()
    }

    /// The server the request was for.
    pub fn server(&self) -> &str {
        self.binding.server()
    }
}

impl fmt::Debug for PendingApproval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingApproval")
            .field("binding", &self.binding)
            .field("one_time_secret", &"<redacted>")
            .finish()
    }
}

/// The random values of one request. Fixed values are only for test vectors: reusing them
/// defeats replay protection and the one-time key.
#[derive(Clone)]
pub(crate) struct RequestEntropy {
    pub(crate) request_nonce: [u8; NONCE_LEN],
    pub(crate) payload_nonce: [u8; NONCE_LEN],
    pub(crate) one_time_secret: Zeroizing<[u8; 32]>,
    pub(crate) box_nonce: [u8; BOX_NONCE_LEN],
}

impl RequestEntropy {
    fn random() -> Result<Self, RngError> {
        Ok(Self {
            request_nonce: rng::random_array()?,
            payload_nonce: rng::random_array()?,
            one_time_secret: Zeroizing::new(rng::random_array()?),
            box_nonce: rng::random_array()?,
        })
    }
}

/// Builds a request at `now_unix`: boxes the payload from a fresh one-time key to the
/// server's key, signs it with RSA-PSS-SHA512 and MACs the envelope with HMAC-SHA512.
pub fn build_request(
    creds: &ClientCredentials,
    params: &RequestParams,
    now_unix: u64,
) -> Result<(ApprovalRequest, PendingApproval), ClientError> {
    build_request_with(creds, params, now_unix, &RequestEntropy::random()?, None)
}

/// [`build_request`] that also signs with a device key (`docs/PROTOCOL.md` §15): its public
/// key goes inside the box, its signature over the device transcript into the envelope
/// (covered by the HMAC).
pub fn build_request_with_device(
    creds: &ClientCredentials,
    params: &RequestParams,
    now_unix: u64,
    device: Option<&mut dyn DeviceSigner>,
) -> Result<(ApprovalRequest, PendingApproval), ClientError> {
    build_request_with(creds, params, now_unix, &RequestEntropy::random()?, device)
}

/// [`build_request_with_device`] with caller-supplied randomness (the PSS salt stays random).
pub(crate) fn build_request_with(
    creds: &ClientCredentials,
    params: &RequestParams,
    now_unix: u64,
    entropy: &RequestEntropy,
    mut device: Option<&mut dyn DeviceSigner>,
) -> Result<(ApprovalRequest, PendingApproval), ClientError> {
    let device_key = device.as_ref().map(|d| *d.public_key().as_bytes());
    let plaintext = payload_plaintext(params, now_unix, entropy.payload_nonce, device_key)?;
    let one_time_secret = crypto_box::SecretKey::from_bytes(*entropy.one_time_secret);
    let box_ciphertext = crypto_box::SalsaBox::new(
        &creds.server_box_public_key.to_crypto_box(),
        &one_time_secret,
    )
    .encrypt(&entropy.box_nonce.into(), plaintext.as_slice())
    .map_err(|_| ClientError::Box)?;
    let mut request = ApprovalRequest {
        client_id: creds.client_id.clone(),
        timestamp: now_unix,
        server: params.server.clone(),
        nonce: entropy.request_nonce,
        box_public_key: one_time_secret.public_key().to_bytes(),
        box_nonce: entropy.box_nonce,
        box_ciphertext,
        signature: Vec::new(),
        device_signature: None,
        hmac: [0; 64],
    };
    request.signature = creds
        .rsa_key
        .sign_pss_sha512(&request_signature_input(&request))?;
    if let Some(device) = device.as_mut() {
        request.device_signature = Some(device.sign(&request_device_signature_input(&request))?);
    }
    request.hmac = creds.hmac_secret.sign(&request_mac_input(&request));
    let binding = ResponseBinding::new(
        request.nonce,
        request.box_public_key,
        request.server.clone(),
    );
    Ok((
        request,
        PendingApproval {
            binding,
            one_time_secret,
        },
    ))
}

/// The JSON plaintext of the request box.
pub(crate) fn payload_plaintext(
    params: &RequestParams,
    now_unix: u64,
    payload_nonce: [u8; NONCE_LEN],
    device_public_key: Option<[u8; crate::device::DEVICE_PUBLIC_KEY_LEN]>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let payload = RequestPayload {
        server: params.server.clone(),
        public_ipv4: params.public_ipv4.map(|a| a.to_string()),
        public_ipv6: params.public_ipv6.map(|a| a.to_string()),
        client_version: params.client_version.clone(),
        device_name: params.device_name.clone(),
        timestamp: now_unix,
        nonce: payload_nonce,
        passcode: params.passcode.clone(),
        device_public_key,
    };
    payload.check_fields().map_err(ClientError::InvalidParams)?;
    let plaintext = Zeroizing::new(serde_json::to_vec(&payload.to_json())?);
    let max = REQUEST_CIPHERTEXT_MAX - BOX_TAG_LEN;
    if plaintext.len() > max {
        return Err(ClientError::InvalidParams(Reason::FieldLength {
            field: "payload",
            len: plaintext.len(),
            min: 2,
            max,
        }));
    }
    Ok(plaintext)
}

/// Opens the server's answer to `pending`: parses it, verifies the HMAC (bound to this
/// request's nonce and one-time key), opens the box with the server's long-term key, and
/// checks that the plaintext echoes this request's nonce and server.
pub fn open_response(
    creds: &ClientCredentials,
    pending: &PendingApproval,
    body: &[u8],
) -> Result<ResponsePayload, ClientError> {
    let response = parse_response(body).map_err(ClientError::MalformedResponse)?;
    let mac_input = response_mac_input(
        pending.binding.request_nonce(),
        pending.binding.client_box_public_key(),
        &response,
    );
    if !creds.hmac_secret.verify(&mac_input, &response.hmac) {
        return Err(ClientError::ResponseMacMismatch);
    }
    let plaintext = crypto_box::SalsaBox::new(
        &creds.server_box_public_key.to_crypto_box(),
        &pending.one_time_secret,
    )
    .decrypt(
        &response.box_nonce.into(),
        response.box_ciphertext.as_slice(),
    )
    .map(Zeroizing::new)
    .map_err(|_| ClientError::ResponseBoxOpenFailed)?;
    ResponsePlaintextJson::open(&plaintext, &pending.binding).map_err(|e| match e {
        OpenError::Malformed(detail) => ClientError::ResponsePayloadMalformed(detail),
        OpenError::NotBound => ClientError::ResponseNotBound,
    })
}

/// Opens a sealed denial (`{"error": code, "sealed": response}`, see PROTOCOL.md §8) of
/// `pending`: the sealed response must open for this request, say `deny`, and give the same
/// code as the clear `error` field. Returns the authenticated public code.
pub fn open_denial(
    creds: &ClientCredentials,
    pending: &PendingApproval,
    body: &[u8],
) -> Result<PublicCode, ClientError> {
    let denial: super::response::SealedDenialJson = serde_json::from_slice(body).map_err(|e| {
        ClientError::MalformedResponse(Reason::MalformedJson(escape_for_log(&e.to_string(), 160)))
    })?;
    let sealed = serde_json::to_vec(&denial.sealed).map_err(|e| {
        ClientError::MalformedResponse(Reason::MalformedJson(escape_for_log(&e.to_string(), 160)))
    })?;
    let payload = open_response(creds, pending, &sealed)?;
    match (payload.verdict, PublicCode::from_str_code(&payload.reason)) {
        (super::Verdict::Deny, Some(code)) if code.as_str() == denial.error => Ok(code),
        _ => Err(ClientError::ResponsePayloadMalformed(
            "a sealed denial whose code does not match its clear code".into(),
        )),
    }
}
