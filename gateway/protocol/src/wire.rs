//! The JSON messages on the wire, their size limits, and the parsers that turn bytes into typed
//! values: [`parse_request`] (server side) and [`parse_response`] (client side).
//!
//! Binary fields travel as strict padded standard base64 and are decoded here, so everything
//! past this module handles raw bytes of checked lengths.

use serde::{Deserialize, Serialize};

use crate::b64;
use crate::device_key::{DEVICE_PUBLIC_KEY_LEN, DEVICE_SIGNATURE_LEN};
use crate::error::{Reason, Rejection, Stage, escape_for_log};
use crate::limits::{PROTOCOL_VERSION, RSA_MAX_BITS, RSA_MIN_BITS};

pub use crate::limits::BOX_TAG_LEN;
pub use crate::limits::{
    BOX_NONCE_LEN, BOX_PUBLIC_KEY_LEN, HMAC_LEN, MAX_REQUEST_BODY_BYTES, MAX_RESPONSE_BODY_BYTES,
    NONCE_LEN,
};

/// Longest client id.
pub const CLIENT_ID_MAX: usize = 128;
/// Longest server name.
pub const SERVER_NAME_MAX: usize = 64;
/// Longest request box ciphertext (tag included).
pub const REQUEST_CIPHERTEXT_MAX: usize = 2048;
/// Longest response box ciphertext (tag included).
pub const RESPONSE_CIPHERTEXT_MAX: usize = 4096;
/// Shortest box ciphertext: the tag and `{}`.
pub const CIPHERTEXT_MIN: usize = BOX_TAG_LEN + 2;
/// Signature lengths follow the accepted RSA modulus sizes.
pub const SIGNATURE_MIN: usize = RSA_MIN_BITS / 8;
/// See [`SIGNATURE_MIN`].
pub const SIGNATURE_MAX: usize = RSA_MAX_BITS / 8;
/// Longest client version string.
pub const CLIENT_VERSION_MAX: usize = 64;
/// Longest device name.
pub const DEVICE_NAME_MAX: usize = 128;
/// Longest reported address text.
pub const ADDRESS_TEXT_MAX: usize = 64;

/// An approval request (`POST /v1/approvals`), with binary fields decoded.
///
/// Obtain one from [`parse_request`] or [`crate::build_request`]; serialise it with serde
/// (it writes the wire JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// The client id.
    pub client_id: String,
    /// Client time, Unix seconds.
    pub timestamp: u64,
    /// The server the client wants to reach (its name); repeated inside the box.
    pub server: String,
    /// Random request nonce, unique per request.
    pub nonce: [u8; NONCE_LEN],
    /// The client's one-time X25519 public key.
    pub box_public_key: [u8; BOX_PUBLIC_KEY_LEN],
    /// The box nonce.
    pub box_nonce: [u8; BOX_NONCE_LEN],
    /// The boxed payload (Poly1305 tag ‖ XSalsa20 ciphertext).
    pub box_ciphertext: Vec<u8>,
    /// RSASSA-PSS-SHA512 signature over [`crate::request_signature_input`].
    pub signature: Vec<u8>,
    /// ECDSA P-256 signature by the device key over
    /// [`crate::request_device_signature_input`] (`docs/PROTOCOL.md` §15); optional.
    pub device_signature: Option<[u8; DEVICE_SIGNATURE_LEN]>,
    /// HMAC-SHA512 over [`crate::request_mac_input`].
    pub hmac: [u8; HMAC_LEN],
}

/// The JSON form of [`ApprovalRequest`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    version: u16,
    client_id: String,
    timestamp: u64,
    server: String,
    nonce: String,
    box_public_key: String,
    box_nonce: String,
    box_ciphertext: String,
    signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_signature: Option<String>,
    hmac: String,
}

impl Serialize for ApprovalRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RequestJson {
            version: PROTOCOL_VERSION,
            client_id: self.client_id.clone(),
            timestamp: self.timestamp,
            server: self.server.clone(),
            nonce: b64::encode(&self.nonce),
            box_public_key: b64::encode(&self.box_public_key),
            box_nonce: b64::encode(&self.box_nonce),
            box_ciphertext: b64::encode(&self.box_ciphertext),
            signature: b64::encode(&self.signature),
            device_signature: self.device_signature.map(|s| b64::encode(&s)),
            hmac: b64::encode(&self.hmac),
        }
        .serialize(s)
    }
}

impl ApprovalRequest {
    /// Checks the lengths and character sets of the variable-size fields. [`parse_request`]
    /// runs it; [`crate::validate`] runs it again so a hand-built value is held to the same
    /// limits.
    pub fn check_shape(&self) -> Result<(), Reason> {
        check_identifier("client_id", &self.client_id, CLIENT_ID_MAX)?;
        check_identifier("server", &self.server, SERVER_NAME_MAX)?;
        check_len(
            "box_ciphertext",
            self.box_ciphertext.len(),
            CIPHERTEXT_MIN,
            REQUEST_CIPHERTEXT_MAX,
        )?;
        check_len(
            "signature",
            self.signature.len(),
            SIGNATURE_MIN,
            SIGNATURE_MAX,
        )
    }

    /// The wire JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Parses a request body: size limit, strict JSON (no unknown fields), protocol version,
/// strict base64 and every field's length and character set. The first step of validation.
pub fn parse_request(body: &[u8]) -> Result<ApprovalRequest, Rejection> {
    parse_request_reason(body).map_err(|r| Rejection::new(Stage::Shape, r))
}

fn parse_request_reason(body: &[u8]) -> Result<ApprovalRequest, Reason> {
    check_body_size(body, MAX_REQUEST_BODY_BYTES)?;
    let j: RequestJson = parse_json(body)?;
    check_version(j.version)?;
    let request = ApprovalRequest {
        client_id: j.client_id,
        timestamp: j.timestamp,
        server: j.server,
        nonce: decode_array("nonce", &j.nonce)?,
        box_public_key: decode_array("box_public_key", &j.box_public_key)?,
        box_nonce: decode_array("box_nonce", &j.box_nonce)?,
        box_ciphertext: decode_vec(
            "box_ciphertext",
            &j.box_ciphertext,
            CIPHERTEXT_MIN,
            REQUEST_CIPHERTEXT_MAX,
        )?,
        signature: decode_vec("signature", &j.signature, SIGNATURE_MIN, SIGNATURE_MAX)?,
        device_signature: j
            .device_signature
            .as_deref()
            .map(|text| decode_array("device_signature", text))
            .transpose()?,
        hmac: decode_array("hmac", &j.hmac)?,
    };
    request.check_shape()?;
    Ok(request)
}

/// An approval response, with binary fields decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalResponse {
    /// The box nonce.
    pub box_nonce: [u8; BOX_NONCE_LEN],
    /// The boxed response payload, from the server's long-term key to the request's one-time
    /// key.
    pub box_ciphertext: Vec<u8>,
    /// HMAC-SHA512 over [`crate::response_mac_input`] with the client's secret.
    pub hmac: [u8; HMAC_LEN],
}

/// The JSON form of [`ApprovalResponse`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseJson {
    version: u16,
    box_nonce: String,
    box_ciphertext: String,
    hmac: String,
}

impl Serialize for ApprovalResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResponseJson {
            version: PROTOCOL_VERSION,
            box_nonce: b64::encode(&self.box_nonce),
            box_ciphertext: b64::encode(&self.box_ciphertext),
            hmac: b64::encode(&self.hmac),
        }
        .serialize(s)
    }
}

impl ApprovalResponse {
    /// The wire JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// Parses a response body (client side), with the same strictness as [`parse_request`].
pub fn parse_response(body: &[u8]) -> Result<ApprovalResponse, Reason> {
    check_body_size(body, MAX_RESPONSE_BODY_BYTES)?;
    let j: ResponseJson = parse_json(body)?;
    check_version(j.version)?;
    Ok(ApprovalResponse {
        box_nonce: decode_array("box_nonce", &j.box_nonce)?,
        box_ciphertext: decode_vec(
            "box_ciphertext",
            &j.box_ciphertext,
            CIPHERTEXT_MIN,
            RESPONSE_CIPHERTEXT_MAX,
        )?,
        hmac: decode_array("hmac", &j.hmac)?,
    })
}

/// The body of an unsealed error answer: `{"error":"<public code>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// A [`crate::PublicCode`] string.
    pub error: String,
    /// With `shutdown`: the self-shutdown notice's message (§14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The plaintext inside the request box, as JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadJson {
    pub server: String,
    pub public_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub client_version: String,
    pub device_name: String,
    pub timestamp: u64,
    pub nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passcode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_public_key: Option<String>,
}

/// The plaintext inside the request box, checked. Reported addresses stay text until the
/// address stage, which owns their errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPayload {
    pub server: String,
    pub public_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub client_version: String,
    pub device_name: String,
    pub timestamp: u64,
    pub nonce: [u8; NONCE_LEN],
    /// The second factor's passcode, checked by the controller at the grant stage.
    pub passcode: Option<String>,
    /// The device public key (65 bytes; checked as a P-256 point at the device stage).
    pub device_public_key: Option<[u8; DEVICE_PUBLIC_KEY_LEN]>,
}

impl RequestPayload {
    /// Parses and checks the opened box plaintext.
    pub fn parse(plaintext: &[u8]) -> Result<Self, Reason> {
        let j: PayloadJson = serde_json::from_slice(plaintext)
            .map_err(|e| Reason::PayloadMalformed(escape_for_log(&e.to_string(), 160)))?;
        let payload = Self {
            nonce: decode_array("payload.nonce", &j.nonce)?,
            server: j.server,
            public_ipv4: j.public_ipv4,
            public_ipv6: j.public_ipv6,
            client_version: j.client_version,
            device_name: j.device_name,
            timestamp: j.timestamp,
            passcode: j.passcode,
            device_public_key: j
                .device_public_key
                .as_deref()
                .map(|text| decode_array("payload.device_public_key", text))
                .transpose()?,
        };
        payload.check_fields()?;
        Ok(payload)
    }

    /// Field limits, shared by the client (before sealing) and the server (after opening).
    pub fn check_fields(&self) -> Result<(), Reason> {
        check_identifier("payload.server", &self.server, SERVER_NAME_MAX)?;
        check_len(
            "payload.client_version",
            self.client_version.len(),
            1,
            CLIENT_VERSION_MAX,
        )?;
        if !self.client_version.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Reason::FieldCharset {
                field: "payload.client_version",
            });
        }
        check_len(
            "payload.device_name",
            self.device_name.len(),
            0,
            DEVICE_NAME_MAX,
        )?;
        if self.device_name.chars().any(char::is_control) {
            return Err(Reason::FieldCharset {
                field: "payload.device_name",
            });
        }
        for (field, text) in [
            ("payload.public_ipv4", &self.public_ipv4),
            ("payload.public_ipv6", &self.public_ipv6),
        ] {
            if let Some(t) = text {
                check_len(field, t.len(), 1, ADDRESS_TEXT_MAX)?;
            }
        }
        if let Some(passcode) = &self.passcode {
            check_len("payload.passcode", passcode.len(), 6, 8)?;
            if !passcode.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Reason::FieldCharset {
                    field: "payload.passcode",
                });
            }
        }
        Ok(())
    }

    /// The JSON form, for sealing.
    pub fn to_json(&self) -> PayloadJson {
        PayloadJson {
            server: self.server.clone(),
            public_ipv4: self.public_ipv4.clone(),
            public_ipv6: self.public_ipv6.clone(),
            client_version: self.client_version.clone(),
            device_name: self.device_name.clone(),
            timestamp: self.timestamp,
            nonce: b64::encode(&self.nonce),
            passcode: self.passcode.clone(),
            device_public_key: self.device_public_key.map(|k| b64::encode(&k)),
        }
    }
}

fn check_body_size(body: &[u8], max: usize) -> Result<(), Reason> {
    if body.len() > max {
        return Err(Reason::BodyTooLarge {
            len: body.len(),
            max,
        });
    }
    Ok(())
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reason> {
    serde_json::from_slice(body)
        .map_err(|e| Reason::MalformedJson(escape_for_log(&e.to_string(), 160)))
}

fn check_version(version: u16) -> Result<(), Reason> {
    if version != PROTOCOL_VERSION {
        return Err(Reason::UnsupportedVersion(version));
    }
    Ok(())
}

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), Reason> {
    if len < min || len > max {
        return Err(Reason::FieldLength {
            field,
            len,
            min,
            max,
        });
    }
    Ok(())
}

/// Client ids and server names: 1..=max bytes of `[A-Za-z0-9._-]`.
pub fn check_identifier(field: &'static str, value: &str, max: usize) -> Result<(), Reason> {
    check_len(field, value.len(), 1, max)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Reason::FieldCharset { field });
    }
    Ok(())
}

fn decode_vec(field: &'static str, text: &str, min: usize, max: usize) -> Result<Vec<u8>, Reason> {
    if text.len() > b64::encoded_len(max) {
        // Too long to be valid whatever it decodes to; report the decoded-length bound.
        return Err(Reason::FieldLength {
            field,
            len: text.len() / 4 * 3,
            min,
            max,
        });
    }
    let bytes = b64::decode(text).ok_or(Reason::FieldEncoding { field })?;
    check_len(field, bytes.len(), min, max)?;
    Ok(bytes)
}

fn decode_array<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], Reason> {
    let bytes = decode_vec(field, text, N, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_must_be_strict() {
        assert_eq!(decode_array::<3>("f", "AAEC"), Ok([0, 1, 2]));
        assert_eq!(decode_vec("f", "AA==", 1, 3), Ok(vec![0]));
        assert_eq!(
            decode_array::<3>("f", "AAA="),
            Err(Reason::FieldLength {
                field: "f",
                len: 2,
                min: 3,
                max: 3
            })
        );
        // Whitespace, missing or misplaced padding, the URL-safe alphabet, and non-zero
        // trailing bits ("AB==") are all refused.
        for bad in ["AAA\n", " AAA", "AA==AA==", "AA", "AA=", "A-_A", "AB=="] {
            assert_eq!(
                decode_vec("f", bad, 1, 6),
                Err(Reason::FieldEncoding { field: "f" }),
                "{bad:?}"
            );
        }
        // Text too long for the field is refused before decoding.
        assert!(matches!(
            decode_vec("f", "AAAAAAAA", 1, 3),
            Err(Reason::FieldLength { .. })
        ));
    }

    #[test]
    fn identifiers_have_a_charset() {
        assert!(check_identifier("f", "vpn-eu.1_a", 64).is_ok());
        assert_eq!(
            check_identifier("f", "a b", 64),
            Err(Reason::FieldCharset { field: "f" })
        );
        assert_eq!(
            check_identifier("f", "é", 64),
            Err(Reason::FieldCharset { field: "f" })
        );
        assert!(matches!(
            check_identifier("f", "", 64),
            Err(Reason::FieldLength { .. })
        ));
    }
}
