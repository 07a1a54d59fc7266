//! The protocol's numbers (`docs/PROTOCOL.md`): version, sizes and key lengths. A leaf: every
//! other part of the protocol reads them from here, so none has to import another for them.

/// The protocol version carried on the wire and in every transcript.
pub const PROTOCOL_VERSION: u16 = 1;
/// Smallest accepted RSA modulus. The protocol uses RSA-4096.
pub const RSA_MIN_BITS: usize = 4096;
/// Largest accepted RSA modulus (the verifier's limit).
pub const RSA_MAX_BITS: usize = 8192;
/// Largest accepted request body.
pub const MAX_REQUEST_BODY_BYTES: usize = 8 * 1024;
/// Largest accepted response body.
pub const MAX_RESPONSE_BODY_BYTES: usize = 8 * 1024;
/// Length of request and payload nonces.
pub const NONCE_LEN: usize = 32;
/// Length of an X25519 public key.
pub const BOX_PUBLIC_KEY_LEN: usize = 32;
/// Length of a NaCl box (XSalsa20) nonce.
pub const BOX_NONCE_LEN: usize = 24;
/// Length of an HMAC-SHA512 tag.
pub const HMAC_LEN: usize = 64;
/// Poly1305 tag prepended to every box ciphertext.
pub const BOX_TAG_LEN: usize = 16;
