//! Enrollment without moving private keys: the link the operator hands out, and the JSON the
//! client and the controller exchange through the web front.
//!
//! The operator runs `xdpgate clients add NAME --server S` and gets a single-use link that
//! expires. The client generates its RSA key pair itself, sends only the public half with the
//! token, and receives its HMAC secret and the server's box public key over HTTPS whose
//! certificate it pins from the link. Nothing secret is ever emailed or copied.
use serde::{Deserialize, Serialize};

/// Largest enrollment body the web front and controller accept.
pub const MAX_ENROLL_BODY_BYTES: usize = 8 * 1024;
/// Length of an enrollment token in bytes before base64url.
pub const TOKEN_BYTES: usize = 32;
/// Longest device name accepted.
pub const MAX_DEVICE_NAME_LEN: usize = 64;
/// Longest public key PEM accepted (RSA-8192 SPKI PEM is about 1.5 KiB).
pub const MAX_PUBLIC_KEY_PEM_LEN: usize = 4 * 1024;
/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/v1/enroll";

/// Why an enrollment message or link was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollmentError {
    /// The body is not the expected JSON (or has unknown fields, or is too large).
    #[error("malformed enrollment request: {0}")]
    Malformed(String),
    /// The link is not an xdpgate enrollment link.
    #[error("not an enrollment link: {0}")]
    BadLink(String),
}

/// `POST /v1/enroll` body.
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

/// `POST /v1/enroll` answer on success.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The client id to put in every request.
    pub client_id: String,
    /// The shared HMAC-SHA512 secret (base64).
    pub hmac_secret: String,
    /// The server's long-term NaCl box public key (base64).
    pub server_box_public_key: String,
    /// Servers the client may ask for.
    pub servers: Vec<String>,
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("client_id", &self.client_id)
            .field("hmac_secret", &"<redacted>")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Parses an enrollment body strictly: size, unknown fields, field lengths.
pub fn parse_enroll_request(body: &[u8]) -> Result<EnrollRequest, EnrollmentError> {
    if body.len() > MAX_ENROLL_BODY_BYTES {
        return Err(EnrollmentError::Malformed("body too large".into()));
    }
    let request: EnrollRequest =
        serde_json::from_slice(body).map_err(|err| EnrollmentError::Malformed(err.to_string()))?;
    let token_ok = request.token.len() == token_text_len()
        && request.token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !token_ok {
        return Err(EnrollmentError::Malformed("token has the wrong form".into()));
    }
    if request.rsa_public_key_pem.len() > MAX_PUBLIC_KEY_PEM_LEN {
        return Err(EnrollmentError::Malformed("public key too large".into()));
    }
    let name_ok = !request.device_name.is_empty()
        && request.device_name.chars().count() <= MAX_DEVICE_NAME_LEN
        && !request.device_name.chars().any(char::is_control);
    if !name_ok {
        return Err(EnrollmentError::Malformed("device name must be 1-64 printable characters".into()));
    }
    Ok(request)
}

/// Length of a token in base64url without padding.
pub const fn token_text_len() -> usize {
    (TOKEN_BYTES * 4).div_ceil(3)
}

/// What an enrollment link carries: where to enroll, the token, and the pin of the web
/// front's certificate. Written `https://HOST:PORT/v1/enroll#token=T&pin=sha256:HEX`.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentLink {
    /// The web front's base URL, e.g. `https://vpn.example.net:8443`.
    pub base_url: String,
    /// The single-use token.
    pub token: String,
    /// Lower-case hex SHA-256 of the web front's certificate (DER).
    pub cert_sha256: String,
}

impl std::fmt::Debug for EnrollmentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentLink")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .field("cert_sha256", &self.cert_sha256)
            .finish()
    }
}

impl std::fmt::Display for EnrollmentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base = self.base_url.trim_end_matches('/');
        write!(f, "{base}{ENROLL_PATH}#token={}&pin=sha256:{}", self.token, self.cert_sha256)
    }
}

impl std::str::FromStr for EnrollmentLink {
    type Err = EnrollmentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| EnrollmentError::BadLink(why.to_owned());
        let (url, fragment) = text.trim().split_once('#').ok_or_else(|| bad("no #token=…&pin=… part"))?;
        let base_url = url.strip_suffix(ENROLL_PATH).ok_or_else(|| bad("path is not /v1/enroll"))?;
        if !base_url.starts_with("https://") || base_url.len() <= "https://".len() {
            return Err(bad("not an https:// URL"));
        }
        let mut token = None;
        let mut pin = None;
        for pair in fragment.split('&') {
            match pair.split_once('=') {
                Some(("token", value)) => token = Some(value.to_owned()),
                Some(("pin", value)) => pin = value.strip_prefix("sha256:").map(str::to_owned),
                _ => return Err(bad("unexpected part after #")),
            }
        }
        let token = token.ok_or_else(|| bad("no token"))?;
        let cert_sha256 = pin.ok_or_else(|| bad("no sha256 pin"))?;
        let pin_ok = cert_sha256.len() == 64 && cert_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !pin_ok {
            return Err(bad("pin must be 64 lower-case hex digits"));
        }
        if token.len() != token_text_len() {
            return Err(bad("token has the wrong length"));
        }
        Ok(Self { base_url: base_url.to_owned(), token, cert_sha256 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> EnrollmentLink {
        EnrollmentLink {
            base_url: "https://10.0.0.1:8443".into(),
            token: "A".repeat(token_text_len()),
            cert_sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn link_round_trips_and_hides_the_token_in_debug() {
        let text = link().to_string();
        assert!(text.starts_with("https://10.0.0.1:8443/v1/enroll#token="), "{text}");
        assert_eq!(text.parse::<EnrollmentLink>().unwrap(), link());
        assert!(!format!("{:?}", link()).contains("AAAA"));
    }

    #[test]
    fn bad_links_are_refused() {
        let good = link().to_string();
        for bad in [
            good.replace("https://", "http://"),
            good.replace("/v1/enroll", "/v1/other"),
            good.replace("&pin=sha256:", "&pin=md5:"),
            good.replace("#", "?"),
            good.replace("token=A", "token=AA"),
            format!("{good}&extra=1"),
        ] {
            assert!(bad.parse::<EnrollmentLink>().is_err(), "{bad}");
        }
    }

    #[test]
    fn enroll_requests_are_parsed_strictly() {
        let ok = EnrollRequest {
            token: "A".repeat(token_text_len()),
            rsa_public_key_pem: "-----BEGIN PUBLIC KEY-----".into(),
            device_name: "laptop".into(),
        };
        let body = serde_json::to_vec(&ok).unwrap();
        assert_eq!(parse_enroll_request(&body).unwrap(), ok);
        let extra = br#"{"token":"x","rsa_public_key_pem":"y","device_name":"z","admin":true}"#;
        assert!(parse_enroll_request(extra).is_err(), "unknown fields are refused");
        let mut short = ok.clone();
        short.token = "short".into();
        assert!(parse_enroll_request(&serde_json::to_vec(&short).unwrap()).is_err());
        let mut control = ok.clone();
        control.device_name = "a\nb".into();
        assert!(parse_enroll_request(&serde_json::to_vec(&control).unwrap()).is_err());
        assert!(parse_enroll_request(&vec![b' '; MAX_ENROLL_BODY_BYTES + 1]).is_err());
    }
}
