//! Enrollment on the wire (`docs/PROTOCOL.md` §13): the sealed request and answer envelopes,
//! the plaintexts inside their boxes, and their strict decoding. Opening and sealing the boxes
//! needs keys and lives with the controller and the client; the web front only parses and
//! re-serializes these envelopes.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::limits::{BOX_NONCE_LEN, BOX_PUBLIC_KEY_LEN, BOX_TAG_LEN};
pub use crate::node_name::valid_node_name as valid_controller_name;

/// Largest enrollment body (request or answer envelope) the web front and controller accept.
pub const MAX_ENROLL_BODY_BYTES: usize = 8 * 1024;
/// Largest request plaintext (inside the box).
pub const MAX_ENROLL_PLAINTEXT_BYTES: usize = 5 * 1024;
/// Length of an enrollment token in bytes before base64url.
pub const TOKEN_BYTES: usize = 32;
/// Longest device name accepted.
pub const MAX_DEVICE_NAME_LEN: usize = 64;
/// Longest public key PEM accepted (RSA-8192 SPKI PEM is about 1.5 KiB).
pub const MAX_PUBLIC_KEY_PEM_LEN: usize = 4 * 1024;
/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// The `version` of both sealed envelopes.
pub const ENROLLMENT_VERSION: u8 = 1;

/// Why an enrollment message or link was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollmentError {
    /// The body is not the expected JSON (or has unknown fields, or is too large).
    #[error("malformed enrollment request: {0}")]
    Malformed(String),
    /// The link is not an xdpgate enrollment link.
    #[error("not an enrollment link: {0}")]
    BadLink(String),
    /// The request box does not open with this controller's key (another controller's link,
    /// or altered on the way).
    #[error("the enrollment box does not open with this controller's key")]
    BoxOpen,
    /// The answer box does not open with the link's controller key and this request's
    /// one-time key: it was not made by the controller the link names.
    #[error(
        "the enrollment answer is not sealed by the controller key in the link: the web front or something between altered or forged it; nothing was saved, ask the operator"
    )]
    AnswerNotSealed,
    /// The answer opened but answers another request.
    #[error("the enrollment answer does not answer this request (request_sha256 differs)")]
    AnswerNotBound,
    /// The answer envelope or its plaintext is not the expected JSON.
    #[error("the enrollment answer is malformed: {0}")]
    AnswerMalformed(String),
    /// The system random generator or the box failed.
    #[error("sealing failed: {0}")]
    Seal(&'static str),
}

/// The request plaintext, boxed inside [`SealedEnrollRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The single-use token from the link (base64url, no padding).
    pub token: String,
    /// The client's RSA public key (PEM, at least 4096 bits).
    pub rsa_public_key_pem: String,
    /// A name for the device, shown to the operator.
    pub device_name: String,
}

/// The answer plaintext, boxed inside [`SealedEnrollAnswer`]. A strict JSON object: unknown
/// fields are refused; later revisions add optional fields (absent means "none").
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// Lower-case hex SHA-256 of the request plaintext this answers.
    pub request_sha256: String,
    /// The client id to put in every request.
    pub client_id: String,
    /// The shared HMAC-SHA512 secret (base64).
    pub hmac_secret: String,
    /// Servers the client may ask for.
    pub servers: Vec<String>,
    /// The client's TOTP secret, when a server of it needs a passcode (§13.3, §7.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpGrant>,
}

/// The `totp` key of an enrollment answer: what an authenticator app needs.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TotpGrant {
    /// The secret, base32 (RFC 4648) without padding.
    pub secret: String,
    /// `SHA1` (the only one defined).
    pub algorithm: String,
    /// Digits of a passcode.
    pub digits: u32,
    /// Seconds per step.
    pub period: u64,
    /// The servers whose approvals need a passcode.
    pub servers: Vec<String>,
}

impl std::fmt::Debug for TotpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpGrant")
            .field("secret", &"<redacted>")
            .field("digits", &self.digits)
            .field("period", &self.period)
            .field("servers", &self.servers)
            .finish()
    }
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("client_id", &self.client_id)
            .field("hmac_secret", &"<redacted>")
            .field("servers", &self.servers)
            .field("totp", &self.totp)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/enroll` body: the request plaintext boxed from a one-time key to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEnrollRequest {
    /// The issuing controller's cluster node name, copied from the link (routing only; not
    /// authenticated, the box is).
    pub controller: Option<String>,
    /// The client's one-time X25519 public key.
    pub client_box_public_key: [u8; BOX_PUBLIC_KEY_LEN],
    /// The box nonce.
    pub box_nonce: [u8; BOX_NONCE_LEN],
    /// `crypto_box` of the [`EnrollRequest`] JSON.
    pub ciphertext: Vec<u8>,
}

/// `POST /v1/enroll` answer on success: the [`EnrollResponse`] boxed from the controller's
/// long-term key to the request's one-time key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEnrollAnswer {
    /// The box nonce.
    pub box_nonce: [u8; BOX_NONCE_LEN],
    /// `crypto_box` of the [`EnrollResponse`] JSON.
    pub ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    controller: Option<String>,
    client_box_public_key: String,
    box_nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerJson {
    version: u8,
    box_nonce: String,
    ciphertext: String,
}

fn decode_fixed<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| format!("{what} is not padded standard base64"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{what} must be {N} bytes"))
}

fn decode_ciphertext(text: &str, max_plaintext: usize) -> Result<Vec<u8>, String> {
    if text.len() > (max_plaintext + BOX_TAG_LEN).div_ceil(3) * 4 {
        return Err("ciphertext too long".into());
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| "ciphertext is not padded standard base64".to_owned())?;
    if bytes.len() <= BOX_TAG_LEN || bytes.len() > max_plaintext + BOX_TAG_LEN {
        return Err(format!(
            "ciphertext must be {}-{} bytes",
            BOX_TAG_LEN + 1,
            max_plaintext + BOX_TAG_LEN
        ));
    }
    Ok(bytes)
}

impl SealedEnrollRequest {
    /// Parses a `POST /v1/enroll` body strictly: size, unknown fields, version, encodings.
    pub fn parse(body: &[u8]) -> Result<Self, EnrollmentError> {
        if body.len() > MAX_ENROLL_BODY_BYTES {
            return Err(EnrollmentError::Malformed("body too large".into()));
        }
        let raw: RequestJson = serde_json::from_slice(body)
            .map_err(|err| EnrollmentError::Malformed(err.to_string()))?;
        if raw.version != ENROLLMENT_VERSION {
            return Err(EnrollmentError::Malformed(format!(
                "unsupported version {}",
                raw.version
            )));
        }
        if raw
            .controller
            .as_deref()
            .is_some_and(|c| !valid_controller_name(c))
        {
            return Err(EnrollmentError::Malformed(
                "controller is not a node name".into(),
            ));
        }
        let malformed = EnrollmentError::Malformed;
        Ok(Self {
            controller: raw.controller,
            client_box_public_key: decode_fixed(
                &raw.client_box_public_key,
                "client_box_public_key",
            )
            .map_err(malformed)?,
            box_nonce: decode_fixed(&raw.box_nonce, "box_nonce").map_err(malformed)?,
            ciphertext: decode_ciphertext(&raw.ciphertext, MAX_ENROLL_PLAINTEXT_BYTES)
                .map_err(malformed)?,
        })
    }

    /// The canonical JSON body.
    pub fn to_json(&self) -> Result<Vec<u8>, EnrollmentError> {
        serde_json::to_vec(&RequestJson {
            version: ENROLLMENT_VERSION,
            controller: self.controller.clone(),
            client_box_public_key: STANDARD.encode(self.client_box_public_key),
            box_nonce: STANDARD.encode(self.box_nonce),
            ciphertext: STANDARD.encode(&self.ciphertext),
        })
        .map_err(|_| EnrollmentError::Seal("JSON encoding failed"))
    }
}

impl SealedEnrollAnswer {
    /// Parses an answer body strictly.
    pub fn parse(body: &[u8]) -> Result<Self, EnrollmentError> {
        let malformed = EnrollmentError::AnswerMalformed;
        if body.len() > MAX_ENROLL_BODY_BYTES {
            return Err(malformed("body too large".into()));
        }
        let raw: AnswerJson =
            serde_json::from_slice(body).map_err(|err| malformed(err.to_string()))?;
        if raw.version != ENROLLMENT_VERSION {
            return Err(malformed(format!("unsupported version {}", raw.version)));
        }
        Ok(Self {
            box_nonce: decode_fixed(&raw.box_nonce, "box_nonce").map_err(malformed)?,
            ciphertext: decode_ciphertext(&raw.ciphertext, MAX_ENROLL_BODY_BYTES)
                .map_err(malformed)?,
        })
    }

    /// The canonical JSON body.
    pub fn to_json(&self) -> Result<Vec<u8>, EnrollmentError> {
        serde_json::to_vec(&AnswerJson {
            version: ENROLLMENT_VERSION,
            box_nonce: STANDARD.encode(self.box_nonce),
            ciphertext: STANDARD.encode(&self.ciphertext),
        })
        .map_err(|_| EnrollmentError::Seal("JSON encoding failed"))
    }
}

/// Parses a request plaintext strictly: size, unknown fields, field lengths.
pub fn parse_enroll_request(body: &[u8]) -> Result<EnrollRequest, EnrollmentError> {
    if body.len() > MAX_ENROLL_PLAINTEXT_BYTES {
        return Err(EnrollmentError::Malformed("body too large".into()));
    }
    let request: EnrollRequest =
        serde_json::from_slice(body).map_err(|err| EnrollmentError::Malformed(err.to_string()))?;
    let token_ok = request.token.len() == token_text_len()
        && request
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !token_ok {
        return Err(EnrollmentError::Malformed(
            "token has the wrong form".into(),
        ));
    }
    if request.rsa_public_key_pem.len() > MAX_PUBLIC_KEY_PEM_LEN {
        return Err(EnrollmentError::Malformed("public key too large".into()));
    }
    let name_ok = !request.device_name.is_empty()
        && request.device_name.chars().count() <= MAX_DEVICE_NAME_LEN
        && !request.device_name.chars().any(char::is_control);
    if !name_ok {
        return Err(EnrollmentError::Malformed(
            "device name must be 1-64 printable characters".into(),
        ));
    }
    Ok(request)
}

/// Length of a token in base64url without padding.
pub const fn token_text_len() -> usize {
    (TOKEN_BYTES * 4).div_ceil(3)
}
