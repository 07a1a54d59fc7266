//! Strict standard base64 (RFC 4648 §4 alphabet, `=` padding required, no whitespace, no
//! non-zero trailing bits): the only text encoding of binary fields on the wire.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Encodes bytes as padded standard base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes padded standard base64, rejecting any non-canonical form.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Longest base64 text that can decode to at most `max_bytes` bytes.
pub const fn encoded_len(max_bytes: usize) -> usize {
    max_bytes.div_ceil(3) * 4
}
