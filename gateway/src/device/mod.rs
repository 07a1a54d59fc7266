//! Device authentication (`docs/PROTOCOL.md` §15): a server with `device_auth = "required"`
//! also wants every approval request signed by a *device key*, an ECDSA P-256 key that the
//! client keeps in a TPM 2.0 (`crate::client::tpm`), and approves only devices an operator
//! approved (`xdpgate devices approve`).
//!
//! This module is pure: the key format and its strict checks, the fingerprint and PIN, the
//! verification of a device signature, and a software key (for test vectors and tests). The
//! registry of devices lives in the store (`crate::store::devices`), the flow in
//! `crate::decisions`.

use std::fmt;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde::Deserialize;

pub use xdpgate_protocol::device_key::{
    DEVICE_PUBLIC_KEY_LEN, DEVICE_SIGNATURE_LEN, DeviceKeyError,
};
/// At most this many devices of one client wait for approval; a further one removes the
/// oldest pending one.
pub const MAX_PENDING_PER_CLIENT: usize = 3;
/// Label of the TPM template's `unique` field, so the TPM regenerates the same primary key
/// from its owner seed (`docs/PROTOCOL.md` §15.2).
pub const TPM_TEMPLATE_UNIQUE: &[u8] = b"xdpgate-device-v1";

/// A server's device authentication setting (`device_auth` in `[[server]]`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAuth {
    /// No device key is asked for; a request's device fields are ignored.
    #[default]
    Off,
    /// Every approval needs a valid signature by a device the operator approved.
    Required,
}

/// A checked device public key: an uncompressed SEC1 point on P-256.
#[derive(Clone, PartialEq, Eq)]
pub struct DevicePublicKey {
    sec1: [u8; DEVICE_PUBLIC_KEY_LEN],
    key: p256::ecdsa::VerifyingKey,
}

impl fmt::Debug for DevicePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DevicePublicKey({})", self.fingerprint())
    }
}

impl DevicePublicKey {
    /// Checks `bytes` strictly: exactly 65 bytes, `0x04` first, a point on P-256.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, DeviceKeyError> {
        let sec1: [u8; DEVICE_PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| DeviceKeyError::Length(bytes.len()))?;
        if sec1[0] != 0x04 {
            return Err(DeviceKeyError::Encoding(sec1[0]));
        }
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
            .map_err(|_| DeviceKeyError::NotOnCurve)?;
        Ok(Self { sec1, key })
    }

    /// From the affine coordinates, each at most 32 bytes big-endian (a TPM may drop leading
    /// zero bytes; they are put back).
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Result<Self, DeviceKeyError> {
        if x.len() > 32 || y.len() > 32 {
            return Err(DeviceKeyError::Length(1 + x.len() + y.len()));
        }
        let mut sec1 = [0u8; DEVICE_PUBLIC_KEY_LEN];
        sec1[0] = 0x04;
        sec1[33 - x.len()..33].copy_from_slice(x);
        sec1[65 - y.len()..].copy_from_slice(y);
        Self::from_sec1(&sec1)
    }

    /// The 65-byte wire form.
    pub fn as_bytes(&self) -> &[u8; DEVICE_PUBLIC_KEY_LEN] {
        &self.sec1
    }

    /// SHA-256 of the 65-byte wire form.
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.sec1);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Whether `signature` (`r ‖ s`) is a valid ECDSA P-256 signature over SHA-256 of
    /// `message`. Both low and high `s` are accepted (a TPM produces either).
    pub fn verify(&self, message: &[u8], signature: &[u8; DEVICE_SIGNATURE_LEN]) -> bool {
        match p256::ecdsa::Signature::from_slice(signature) {
            Ok(sig) => self.key.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

/// The fingerprint of a device key: SHA-256 of its 65-byte SEC1 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        crate::tls::to_hex(&self.0)
    }

    /// The 4-digit PIN the client shows its user and the operator types to approve:
    /// `u32be(fingerprint[0..4]) mod 10000`, zero-padded to 4 digits.
    pub fn pin(&self) -> String {
        pin_of(&self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// The PIN of a fingerprint (see [`Fingerprint::pin`]).
pub fn pin_of(fingerprint: &[u8; 32]) -> String {
    let n = u32::from_be_bytes([
        fingerprint[0],
        fingerprint[1],
        fingerprint[2],
        fingerprint[3],
    ]);
    format!("{:04}", n % 10_000)
}

/// Whether `given` is the PIN of `fingerprint` (constant time; surrounding spaces ignored).
pub fn pin_matches(fingerprint: &Fingerprint, given: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let want = fingerprint.pin();
    let given = given.trim();
    given.len() == want.len() && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
}

/// A signing failure of a device key.
#[derive(Debug, thiserror::Error)]
pub enum DeviceSignError {
    /// The TPM (or its library) failed.
    #[error("TPM: {0}")]
    Tpm(String),
    /// The key produced something that is not a P-256 signature or key.
    #[error("the device key produced an unusable value: {0}")]
    Unusable(String),
}

/// What signs approval requests with a device key: a TPM key
/// (`crate::client::tpm::TpmDeviceKey`) or, in tests and vectors, [`SoftwareDeviceKey`].
pub trait DeviceSigner {
    /// The device public key (goes inside the request box).
    fn public_key(&self) -> &DevicePublicKey;

    /// ECDSA P-256 over SHA-256 of `message`: `r ‖ s`, 32 bytes each, big-endian.
    fn sign(&mut self, message: &[u8]) -> Result<[u8; DEVICE_SIGNATURE_LEN], DeviceSignError>;
}

/// A device key held in memory: for test vectors, tests and benchmarks only. It proves
/// nothing about the device it runs on (see `docs/PROTOCOL.md` §15.6).
pub struct SoftwareDeviceKey {
    signing: p256::ecdsa::SigningKey,
    public: DevicePublicKey,
}

impl fmt::Debug for SoftwareDeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareDeviceKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SoftwareDeviceKey {
    /// The key with this 32-byte big-endian scalar (must be in 1..n).
    pub fn from_scalar(scalar: &[u8; 32]) -> Result<Self, DeviceSignError> {
        let signing = p256::ecdsa::SigningKey::from_slice(scalar)
            .map_err(|e| DeviceSignError::Unusable(e.to_string()))?;
        let point = signing.verifying_key().to_encoded_point(false);
        let public = DevicePublicKey::from_sec1(point.as_bytes())
            .map_err(|e| DeviceSignError::Unusable(e.to_string()))?;
        Ok(Self { signing, public })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, DeviceSignError> {
        loop {
            let mut scalar = zeroize::Zeroizing::new([0u8; 32]);
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut *scalar)
                .map_err(|_| {
                    DeviceSignError::Unusable("the system random generator failed".into())
                })?;
            if let Ok(key) = Self::from_scalar(&scalar) {
                return Ok(key);
            }
        }
    }
}

impl DeviceSigner for SoftwareDeviceKey {
    fn public_key(&self) -> &DevicePublicKey {
        &self.public
    }

    /// Deterministic (RFC 6979), so the vectors can be recomputed byte for byte.
    fn sign(&mut self, message: &[u8]) -> Result<[u8; DEVICE_SIGNATURE_LEN], DeviceSignError> {
        let sig: p256::ecdsa::Signature = self.signing.sign(message);
        let bytes = sig.to_bytes();
        let mut out = [0u8; DEVICE_SIGNATURE_LEN];
        out.copy_from_slice(&bytes);
        Ok(out)
    }
}

/// A signature from a TPM's two big-endian integers, each left-padded to 32 bytes.
pub fn signature_from_parts(
    r: &[u8],
    s: &[u8],
) -> Result<[u8; DEVICE_SIGNATURE_LEN], DeviceSignError> {
    let strip = |v: &[u8]| -> Vec<u8> {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
        v[start..].to_vec()
    };
    let (r, s) = (strip(r), strip(s));
    if r.len() > 32 || s.len() > 32 {
        return Err(DeviceSignError::Unusable(
            "a signature part longer than 32 bytes".into(),
        ));
    }
    let mut out = [0u8; DEVICE_SIGNATURE_LEN];
    out[32 - r.len()..32].copy_from_slice(&r);
    out[64 - s.len()..].copy_from_slice(&s);
    Ok(out)
}

#[cfg(test)]
mod tests;
