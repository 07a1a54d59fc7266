//! Stages of [`super::validate`] that the fuzz targets (`fuzz/`) drive directly: a request
//! that reaches them must carry a fresh RSA-4096 signature, far too slow to make per input.
//! Built only with `--cfg fuzzing` (set by `cargo fuzz`).
use super::address::{Reported, check_reported};
use super::error::Reason;
use super::wire::{NONCE_LEN, RequestPayload};

/// What the payload and address stages made of an opened box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPayload {
    /// The server named inside the box.
    pub server: String,
    /// The payload's timestamp.
    pub timestamp: u64,
    /// The payload's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The reported IPv4 address, checked.
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// The reported IPv6 address, checked.
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// Parses an opened box's plaintext and checks its reported addresses, as `validate` does
/// after the signature and box stages.
pub fn payload_stage(plaintext: &[u8]) -> Result<CheckedPayload, Reason> {
    let payload = RequestPayload::parse(plaintext)?;
    let reported = check_reported(Reported {
        ipv4: payload.public_ipv4.as_deref(),
        ipv6: payload.public_ipv6.as_deref(),
    })?;
    Ok(CheckedPayload {
        server: payload.server,
        timestamp: payload.timestamp,
        nonce: payload.nonce,
        ipv4: reported.ipv4,
        ipv6: reported.ipv6,
    })
}
