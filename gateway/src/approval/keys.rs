//! Key material and its file formats: the client's HMAC secret (base64), the client's RSA key
//! (PKCS#8 PEM private, SPKI PEM public) and the server's long-term X25519 box key (base64).
//!
//! Secret types zeroize on drop and print as `<redacted>`.

use std::fmt;

use ring::signature::{self, RsaKeyPair};
use rsa::pkcs1::{DecodeRsaPublicKey as _, EncodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::b64;
use super::limits::{BOX_PUBLIC_KEY_LEN, HMAC_LEN};
pub use super::limits::{RSA_MAX_BITS, RSA_MIN_BITS};
use super::rng::{self, RngError, RsaRng};

/// Modulus size of generated client keys.
pub const RSA_GENERATED_BITS: usize = 4096;
/// The only accepted RSA public exponent (F4).
pub const RSA_PUBLIC_EXPONENT: u32 = 65537;

/// A key could not be read, generated or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not strict standard base64.
    #[error("{what} is not strict standard base64")]
    Base64 {
        /// Which key.
        what: &'static str,
    },
    /// Wrong decoded length.
    #[error("{what} is {len} bytes, allowed {min}..={max}")]
    Length {
        /// Which key.
        what: &'static str,
        /// Actual length.
        len: usize,
        /// Minimum.
        min: usize,
        /// Maximum.
        max: usize,
    },
    /// Not a PEM document with the expected label.
    #[error("{what} is not a PEM `{label}` document")]
    Pem {
        /// Which key.
        what: &'static str,
        /// Expected PEM label.
        label: &'static str,
    },
    /// The key's structure or numbers were rejected.
    #[error("{what} was rejected: {detail}")]
    Rejected {
        /// Which key.
        what: &'static str,
        /// The library's reason.
        detail: String,
    },
    /// The RSA modulus size is outside the accepted range.
    #[error("RSA modulus is {bits} bits, allowed {RSA_MIN_BITS}..={RSA_MAX_BITS}")]
    RsaSize {
        /// Modulus size in bits (exact: the position of its highest set bit).
        bits: usize,
    },
    /// The RSA public exponent is not 65537.
    #[error("RSA public exponent is not {RSA_PUBLIC_EXPONENT}")]
    RsaExponent,
    /// Signing failed.
    #[error("RSA signing failed")]
    Signing,
    /// The operating system's random generator failed.
    #[error(transparent)]
    Rng(#[from] RngError),
}

/// The client's HMAC-SHA512 secret, shared with the server. Equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HmacSecret(Vec<u8>);

impl PartialEq for HmacSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for HmacSecret {}

impl HmacSecret {
    /// Shortest accepted secret.
    pub const MIN_LEN: usize = 32;
    /// Longest accepted secret (one SHA-512 block).
    pub const MAX_LEN: usize = 128;
    /// Length of generated secrets.
    pub const GENERATED_LEN: usize = 64;

    /// A fresh random secret.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self(rng::random_vec(Self::GENERATED_LEN)?))
    }

    /// A secret from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&bytes.len()) {
            return Err(KeyError::Length {
                what: "HMAC secret",
                len: bytes.len(),
                min: Self::MIN_LEN,
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(bytes.to_vec()))
    }

    /// A secret from its base64 form (the profile and server storage format).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(b64::decode(text).ok_or(KeyError::Base64 {
            what: "HMAC secret",
        })?);
        Self::from_bytes(&bytes)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(b64::encode(&self.0))
    }

    /// The raw secret, for the caller's storage.
    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    /// HMAC-SHA512 of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; HMAC_LEN] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &self.0);
        let tag = ring::hmac::sign(&key, message);
        let mut out = [0u8; HMAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of an HMAC-SHA512 tag.
    pub(crate) fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &self.0);
        ring::hmac::verify(&key, message, tag).is_ok()
    }
}

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HmacSecret(<redacted, {} bytes>)", self.0.len())
    }
}

/// An X25519 public key for NaCl box.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoxPublicKey([u8; BOX_PUBLIC_KEY_LEN]);

impl BoxPublicKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; BOX_PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A key from its base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = b64::decode(text).ok_or(KeyError::Base64 {
            what: "box public key",
        })?;
        let arr: [u8; BOX_PUBLIC_KEY_LEN] =
            bytes.as_slice().try_into().map_err(|_| KeyError::Length {
                what: "box public key",
                len: bytes.len(),
                min: BOX_PUBLIC_KEY_LEN,
                max: BOX_PUBLIC_KEY_LEN,
            })?;
        Ok(Self(arr))
    }

    /// The 32 bytes.
    pub fn to_bytes(&self) -> [u8; BOX_PUBLIC_KEY_LEN] {
        self.0
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        b64::encode(&self.0)
    }

    /// True when the key is a canonical encoding (u < 2^255 − 19, top bit clear) of a point
    /// that is not of small order. A small-order key makes every X25519 shared secret the
    /// all-zero value (libsodium refuses it), so a box "to" it is sealed under a constant
    /// anyone can compute; a non-canonical key (top bit set, or u ≥ p) is another spelling of
    /// a canonical one. See `docs/PROTOCOL.md` §1.
    pub fn is_strong(&self) -> bool {
        !self.is_non_canonical() && !SMALL_ORDER_U.contains(&self.0)
    }

    fn is_non_canonical(&self) -> bool {
        let b = &self.0;
        if b[31] & 0x80 != 0 {
            return true;
        }
        // u ≥ p = 2^255 − 19: bytes 1..=30 all 0xff, byte 31 = 0x7f, byte 0 ≥ 0xed.
        b[31] == 0x7f && b[1..31].iter().all(|&x| x == 0xff) && b[0] >= 0xed
    }

    pub(crate) fn to_crypto_box(self) -> crypto_box::PublicKey {
        crypto_box::PublicKey::from_bytes(self.0)
    }
}

impl fmt::Debug for BoxPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoxPublicKey({})", self.to_base64())
    }
}

/// The canonical u-coordinates of every point of small order on Curve25519 and its twist
/// (0, 1, p − 1, and the two points of order 8), little-endian: the list libsodium's
/// `has_small_order` uses, without its non-canonical spellings (refused separately).
const SMALL_ORDER_U: [[u8; BOX_PUBLIC_KEY_LEN]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
];

/// The server's long-term X25519 key pair: requests are boxed to it, responses boxed from it.
/// The public half goes into every client profile.
#[derive(Clone)]
pub struct ServerBoxKeys {
    secret: crypto_box::SecretKey,
    public: BoxPublicKey,
}

impl ServerBoxKeys {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(rng::random_array::<32>()?);
        Ok(Self::from_secret_bytes(*bytes))
    }

    /// The key pair from its 32 secret bytes (the public half is derived).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = crypto_box::SecretKey::from_bytes(bytes);
        let public = BoxPublicKey(secret.public_key().to_bytes());
        Self { secret, public }
    }

    /// The key pair from the base64 of its secret bytes (the server's key file format).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(b64::decode(text).ok_or(KeyError::Base64 {
            what: "server box secret key",
        })?);
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
            what: "server box secret key",
            len: bytes.len(),
            min: 32,
            max: 32,
        })?;
        Ok(Self::from_secret_bytes(arr))
    }

    /// The 32 secret bytes, for the caller's storage.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The base64 of the secret bytes.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(b64::encode(self.secret_bytes().as_ref()))
    }

    /// The public half.
    pub fn public_key(&self) -> BoxPublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &crypto_box::SecretKey {
        &self.secret
    }
}

/// The server's box keys as validation and sealing see them: the current key and, during a
/// rotation overlap (`docs/PROTOCOL.md` §16), the previous one with its end.
pub trait BoxKeySet: Send + Sync {
    /// The key new profiles and links carry.
    fn current(&self) -> &ServerBoxKeys;
    /// The previous key and until when (Unix seconds) it still opens requests.
    fn previous(&self) -> Option<(&ServerBoxKeys, u64)>;

    /// The previous key while it still opens requests at `now_unix` (the overlap rule, §16).
    fn previous_at(&self, now_unix: u64) -> Option<(&ServerBoxKeys, u64)> {
        self.previous().filter(|&(_, until)| now_unix < until)
    }
}

impl BoxKeySet for ServerBoxKeys {
    fn current(&self) -> &ServerBoxKeys {
        self
    }

    fn previous(&self) -> Option<(&ServerBoxKeys, u64)> {
        None
    }
}

/// A current key and, after `xdpgate keys rotate`, the previous one until its overlap ends.
#[derive(Clone, Debug)]
pub struct BoxKeyRing {
    current: ServerBoxKeys,
    previous: Option<(ServerBoxKeys, u64)>,
}

impl BoxKeyRing {
    /// A ring of one key.
    pub fn new(current: ServerBoxKeys) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// A ring whose `previous` key opens requests until `until_unix`.
    pub fn with_previous(current: ServerBoxKeys, previous: ServerBoxKeys, until_unix: u64) -> Self {
        Self {
            current,
            previous: Some((previous, until_unix)),
        }
    }
}

impl BoxKeySet for BoxKeyRing {
    fn current(&self) -> &ServerBoxKeys {
        &self.current
    }

    fn previous(&self) -> Option<(&ServerBoxKeys, u64)> {
        self.previous.as_ref().map(|(keys, until)| (keys, *until))
    }
}

impl fmt::Debug for ServerBoxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBoxKeys")
            .field("public", &self.public)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The client's RSA private key. It never leaves the client.
pub struct ClientRsaKey {
    pair: RsaKeyPair,
    pkcs8_der: Zeroizing<Vec<u8>>,
}

impl ClientRsaKey {
    /// Generates a fresh [`RSA_GENERATED_BITS`]-bit key. Slow (seconds in release builds).
    pub fn generate() -> Result<Self, KeyError> {
        let key = rsa::PrivateKey::new(&mut RsaRng::new(), RSA_GENERATED_BITS)
            .map_err(|e| rejected("generated RSA key", e))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| rejected("generated RSA key", e))?;
        Self::from_pkcs8_der(der.as_bytes())
    }

    /// Reads an unencrypted PKCS#8 `PRIVATE KEY` PEM.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, doc) =
            rsa::pkcs8::SecretDocument::from_pem(pem).map_err(|_| KeyError::Pem {
                what: "RSA private key",
                label: "PRIVATE KEY",
            })?;
        if label != "PRIVATE KEY" {
            return Err(KeyError::Pem {
                what: "RSA private key",
                label: "PRIVATE KEY",
            });
        }
        Self::from_pkcs8_der(doc.as_bytes())
    }

    /// Reads an unencrypted PKCS#8 DER key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| rejected("RSA private key", e))?;
        // The same exact checks as an enrolled public key (size in bits, e = 65537).
        ClientRsaPublicKey::from_pkcs1_der(pair.public().as_ref())?;
        Ok(Self {
            pair,
            pkcs8_der: Zeroizing::new(der.to_vec()),
        })
    }

    /// The PKCS#8 `PRIVATE KEY` PEM, for the client profile.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        let doc = rsa::pkcs8::SecretDocument::try_from(self.pkcs8_der.as_slice())
            .map_err(|e| rejected("RSA private key", e))?;
        doc.to_pem("PRIVATE KEY", LineEnding::LF)
            .map_err(|e| rejected("RSA private key", e))
    }

    /// The public half.
    pub fn public_key(&self) -> ClientRsaPublicKey {
        ClientRsaPublicKey {
            pkcs1_der: self.pair.public().as_ref().to_vec(),
        }
    }

    /// RSASSA-PSS signature with SHA-512, MGF1-SHA-512 and a random 64-byte salt.
    pub fn sign_pss_sha512(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PSS_SHA512,
                &ring::rand::SystemRandom::new(),
                message,
                &mut sig,
            )
            .map_err(|_| KeyError::Signing)?;
        Ok(sig)
    }
}

impl fmt::Debug for ClientRsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientRsaKey(<redacted, {} bits>)",
            self.pair.public().modulus_len() * 8
        )
    }
}

/// The client's RSA public key, enrolled on the server. Held as PKCS#1 `RSAPublicKey` DER.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRsaPublicKey {
    pkcs1_der: Vec<u8>,
}

impl ClientRsaPublicKey {
    /// Reads a `PUBLIC KEY` (SPKI) or `RSA PUBLIC KEY` (PKCS#1) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = rsa::PublicKey::from_public_key_pem(pem)
            .or_else(|_| rsa::PublicKey::from_pkcs1_pem(pem))
            .map_err(|_| KeyError::Pem {
                what: "RSA public key",
                label: "PUBLIC KEY",
            })?;
        Self::from_rsa(&key)
    }

    /// Reads PKCS#1 `RSAPublicKey` DER.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = rsa::PublicKey::from_pkcs1_der(der).map_err(|e| rejected("RSA public key", e))?;
        Self::from_rsa(&key)
    }

    /// The one place every RSA public key passes through (enrollment, loading enrolled keys,
    /// the client's own key): exact modulus size and exponent checks.
    fn from_rsa(key: &rsa::PublicKey) -> Result<Self, KeyError> {
        check_rsa_public(&key.n_bytes(), &key.e_bytes())?;
        let der = key
            .to_pkcs1_der()
            .map_err(|e| rejected("RSA public key", e))?;
        Ok(Self {
            pkcs1_der: der.as_bytes().to_vec(),
        })
    }

    /// The SPKI `PUBLIC KEY` PEM, for enrollment.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        let key = rsa::PublicKey::from_pkcs1_der(&self.pkcs1_der)
            .map_err(|e| rejected("RSA public key", e))?;
        key.to_public_key_pem(LineEnding::LF)
            .map_err(|e| rejected("RSA public key", e))
    }

    /// The PKCS#1 `RSAPublicKey` DER.
    pub fn pkcs1_der(&self) -> &[u8] {
        &self.pkcs1_der
    }

    /// Verifies an RSASSA-PSS-SHA512 (64-byte salt) signature over `message`.
    pub(crate) fn verify_pss_sha512(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA512, &self.pkcs1_der)
            .verify(message, sig)
            .is_ok()
    }
}

impl fmt::Debug for ClientRsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.pkcs1_der);
        f.write_str("ClientRsaPublicKey(sha256:")?;
        for b in &digest.as_ref()[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

/// Checks an RSA public key from its big-endian modulus and exponent: the modulus is
/// exactly [`RSA_MIN_BITS`]..=[`RSA_MAX_BITS`] bits long (counted from its highest set bit, not
/// its byte length) and the exponent is exactly 65537.
pub(crate) fn check_rsa_public(modulus_be: &[u8], exponent_be: &[u8]) -> Result<(), KeyError> {
    let modulus = strip_leading_zeros(modulus_be);
    let bits = match modulus.first() {
        Some(&top) => (modulus.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(KeyError::RsaSize { bits });
    }
    if strip_leading_zeros(exponent_be) != &RSA_PUBLIC_EXPONENT.to_be_bytes()[1..] {
        return Err(KeyError::RsaExponent);
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn rejected(what: &'static str, e: impl fmt::Display) -> KeyError {
    KeyError::Rejected {
        what,
        detail: e.to_string(),
    }
}
