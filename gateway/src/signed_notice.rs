//! Signed self-shutdown notices (docs/PROTOCOL.md §14): the wire format, strict decoding and
//! Ed25519 verification against the pinned key. Pure: no I/O, no clock, no storage.
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest notice answer accepted, in bytes; a longer answer is refused unread.
pub const MAX_NOTICE_BYTES: usize = 16 * 1024;
/// Longest message of one part.
pub const MAX_MESSAGE_CHARS: usize = 512;
/// Domain separation: the signature covers these bytes, then the payload bytes.
pub const SIGNING_CONTEXT: &[u8] = b"xdpgate-notice-v1\0";
/// The only payload format version.
pub const FORMAT_VERSION: u32 = 1;

/// Why a notice answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    /// Longer than [`MAX_NOTICE_BYTES`].
    #[error("notice is over {MAX_NOTICE_BYTES} bytes")]
    Oversized,
    /// Not the envelope, not base64, or a payload that does not decode.
    #[error("malformed notice: {0}")]
    Malformed(String),
    /// The signature is absent or not 64 bytes.
    #[error("notice is not signed")]
    Unsigned,
    /// The signature does not verify with the pinned key.
    #[error("notice signature does not verify with the pinned key")]
    BadSignature,
}

impl NoticeError {
    /// A short stable name for counters and logs.
    pub const fn kind(&self) -> &'static str {
        match self {
            NoticeError::Oversized => "oversized",
            NoticeError::Malformed(_) => "malformed",
            NoticeError::Unsigned => "unsigned",
            NoticeError::BadSignature => "bad_signature",
        }
    }
}

/// The signed envelope the notice server answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Standard base64 of the payload's exact bytes.
    pub payload: String,
    /// Standard base64 of the 64-byte Ed25519 signature over `SIGNING_CONTEXT || payload`.
    #[serde(default)]
    pub signature: String,
}

/// The state of one part (`www`, `web` or `vpn`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartState {
    /// Whether the part is shut down.
    pub shutdown: bool,
    /// Why (shown to web clients and the operator).
    #[serde(default)]
    pub message: String,
}

/// The affected version range, both ends included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affected {
    /// Lowest affected version (`MAJOR.MINOR.PATCH`).
    pub from: String,
    /// Highest affected version.
    pub to: String,
}

/// A verified notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// Payload format, [`FORMAT_VERSION`].
    pub format: u32,
    /// Strictly increasing per notice key.
    pub sequence: u64,
    /// When it was issued (seconds since the epoch; informative).
    pub issued_unix: u64,
    /// The versions it applies to.
    pub affected: Affected,
    /// The web front's answers.
    pub www: PartState,
    /// The web front process and the front API.
    pub web: PartState,
    /// Approvals, openings and VPN sessions.
    pub vpn: PartState,
}

/// A `MAJOR.MINOR.PATCH` version (no pre-release part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `MAJOR.MINOR.PATCH`, digits only.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let mut next = || {
            parts
                .next()
                .filter(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))?
                .parse()
                .ok()
        };
        let version = Version(next()?, next()?, next()?);
        parts.next().is_none().then_some(version)
    }
}

impl Notice {
    /// Whether `version` is inside the affected range.
    pub fn covers(&self, version: Version) -> bool {
        match (
            Version::parse(&self.affected.from),
            Version::parse(&self.affected.to),
        ) {
            (Some(from), Some(to)) => from <= version && version <= to,
            _ => false,
        }
    }

    fn check(&self) -> Result<(), NoticeError> {
        let bad = |why: &str| Err(NoticeError::Malformed(why.to_owned()));
        if self.format != FORMAT_VERSION {
            return bad("unknown format");
        }
        let (Some(from), Some(to)) = (
            Version::parse(&self.affected.from),
            Version::parse(&self.affected.to),
        ) else {
            return bad("affected versions must be MAJOR.MINOR.PATCH");
        };
        if from > to {
            return bad("affected range is empty");
        }
        for part in [&self.www, &self.web, &self.vpn] {
            if part.message.chars().count() > MAX_MESSAGE_CHARS
                || part.message.chars().any(char::is_control)
            {
                return bad("message too long or has control characters");
            }
        }
        Ok(())
    }
}

/// The bytes a signature covers.
pub fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
    bytes.extend_from_slice(SIGNING_CONTEXT);
    bytes.extend_from_slice(payload);
    bytes
}

/// Decodes and verifies a notice answer against the pinned 32-byte Ed25519 public key:
/// size first, then the envelope, then the signature, and only then the payload.
pub fn verify(body: &[u8], public_key: &[u8; 32]) -> Result<Notice, NoticeError> {
    if body.len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::Oversized);
    }
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|err| NoticeError::Malformed(format!("envelope: {err}")))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(&envelope.payload)
        .map_err(|_| NoticeError::Malformed("payload is not base64".into()))?;
    let signature = b64
        .decode(&envelope.signature)
        .map_err(|_| NoticeError::Unsigned)?;
    if signature.len() != 64 {
        return Err(NoticeError::Unsigned);
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&signed_bytes(&payload), &signature)
        .map_err(|_| NoticeError::BadSignature)?;
    let notice: Notice = serde_json::from_slice(&payload)
        .map_err(|err| NoticeError::Malformed(format!("payload: {err}")))?;
    notice.check()?;
    Ok(notice)
}

/// Signs `payload` bytes with an Ed25519 key from its 32-byte seed and returns the envelope
/// JSON (for notice servers, tests and the vectors).
pub fn sign(payload: &[u8], seed: &[u8; 32]) -> Result<Vec<u8>, NoticeError> {
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| NoticeError::Malformed("bad signing seed".into()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = key.sign(&signed_bytes(payload));
    let envelope = Envelope {
        payload: b64.encode(payload),
        signature: b64.encode(signature.as_ref()),
    };
    serde_json::to_vec(&envelope).map_err(|err| NoticeError::Malformed(err.to_string()))
}

/// The Ed25519 public key of a 32-byte seed.
pub fn public_key_of(seed: &[u8; 32]) -> Result<[u8; 32], NoticeError> {
    use ring::signature::KeyPair as _;
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| NoticeError::Malformed("bad signing seed".into()))?;
    key.public_key()
        .as_ref()
        .try_into()
        .map_err(|_| NoticeError::Malformed("public key length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [7; 32];

    fn payload(sequence: u64, vpn: bool) -> Vec<u8> {
        format!(
            r#"{{"format":1,"sequence":{sequence},"issued_unix":1,"affected":{{"from":"0.1.0","to":"0.1.9"}},"www":{{"shutdown":false,"message":""}},"web":{{"shutdown":false,"message":""}},"vpn":{{"shutdown":{vpn},"message":"CVE-1"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_signed_notice_verifies_and_covers_its_range() {
        let key = public_key_of(&SEED).unwrap();
        let notice = verify(&sign(&payload(3, true), &SEED).unwrap(), &key).unwrap();
        assert_eq!(notice.sequence, 3);
        assert!(notice.vpn.shutdown && !notice.www.shutdown);
        assert!(notice.covers(Version(0, 1, 0)) && notice.covers(Version(0, 1, 9)));
        assert!(!notice.covers(Version(0, 2, 0)) && !notice.covers(Version(0, 0, 9)));
    }

    #[test]
    fn bad_notices_are_refused_with_their_kind() {
        let key = public_key_of(&SEED).unwrap();
        let other = public_key_of(&[8; 32]).unwrap();
        let good = sign(&payload(1, true), &SEED).unwrap();
        assert_eq!(
            verify(&good, &other).unwrap_err(),
            NoticeError::BadSignature
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let unsigned = format!(r#"{{"payload":"{}"}}"#, b64.encode(payload(1, true)));
        assert_eq!(
            verify(unsigned.as_bytes(), &key).unwrap_err(),
            NoticeError::Unsigned
        );
        // The payload swapped under a valid signature.
        let mut envelope: Envelope = serde_json::from_slice(&good).unwrap();
        envelope.payload = b64.encode(payload(9, true));
        assert_eq!(
            verify(&serde_json::to_vec(&envelope).unwrap(), &key).unwrap_err(),
            NoticeError::BadSignature
        );
        assert_eq!(
            verify(&vec![b' '; MAX_NOTICE_BYTES + 1], &key).unwrap_err(),
            NoticeError::Oversized
        );
        assert_eq!(verify(b"not json", &key).unwrap_err().kind(), "malformed");
        let extra = sign(br#"{"format":1,"sequence":1}"#, &SEED).unwrap();
        assert_eq!(verify(&extra, &key).unwrap_err().kind(), "malformed");
        let empty_range = String::from_utf8(payload(1, true))
            .unwrap()
            .replace(r#""from":"0.1.0""#, r#""from":"0.2.0""#);
        assert_eq!(
            verify(&sign(empty_range.as_bytes(), &SEED).unwrap(), &key)
                .unwrap_err()
                .kind(),
            "malformed"
        );
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(Version::parse("1.22.3"), Some(Version(1, 22, 3)));
        for bad in ["1.2", "1.2.3.4", "1.2.x", "", "1..3", "-1.2.3", "1.2.3-rc1"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod vectors {
    //! `docs/notice-test-vectors.json`: every vector is recomputed here.
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn notice_vectors_recompute() {
        let text = include_str!("../../docs/notice-test-vectors.json");
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        let seed: [u8; 32] = unhex(doc["signing_seed_hex"].as_str().unwrap())
            .try_into()
            .unwrap();
        let public = public_key_of(&seed).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            doc["public_key_base64"].as_str().unwrap(),
            b64.encode(public),
            "public key"
        );
        let own = Version::parse(doc["own_version"].as_str().unwrap()).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 6);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let body = case["body"].as_str().unwrap().as_bytes();
            if let Some(payload) = case["payload"].as_str() {
                // Ed25519 is deterministic: signing the payload again gives the same body.
                assert_eq!(
                    sign(payload.as_bytes(), &seed).unwrap(),
                    body,
                    "{name}: envelope"
                );
                let signed = hex(&signed_bytes(payload.as_bytes()));
                assert_eq!(
                    case["signed_bytes_hex"].as_str().unwrap(),
                    signed,
                    "{name}: signed bytes"
                );
            }
            match (verify(body, &public), case["expect"].as_str().unwrap()) {
                (Ok(notice), "valid") => {
                    assert_eq!(
                        notice.sequence,
                        case["sequence"].as_u64().unwrap(),
                        "{name}"
                    );
                    assert_eq!(
                        notice.covers(own),
                        case["covers_own_version"].as_bool().unwrap(),
                        "{name}"
                    );
                    assert_eq!(
                        notice.vpn.shutdown,
                        case["vpn_shutdown"].as_bool().unwrap(),
                        "{name}"
                    );
                }
                (Err(err), kind) => assert_eq!(err.kind(), kind, "{name}"),
                (Ok(_), kind) => panic!("{name}: verified, expected {kind}"),
            }
        }
    }
}
