//! Device keys on the wire (`docs/PROTOCOL.md` §15): their lengths and why one is refused.

/// Length of a device public key on the wire: an uncompressed SEC1 P-256 point,
/// `0x04 ‖ X (32 bytes) ‖ Y (32 bytes)`.
pub const DEVICE_PUBLIC_KEY_LEN: usize = 65;
/// Length of a device signature on the wire: `r ‖ s`, each 32 bytes big-endian.
pub const DEVICE_SIGNATURE_LEN: usize = 64;
/// Why a device public key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeyError {
    /// Not 65 bytes.
    #[error("device key is {0} bytes, not 65 (an uncompressed P-256 point)")]
    Length(usize),
    /// The first byte is not 0x04 (compressed, hybrid or another encoding).
    #[error("device key is not an uncompressed SEC1 point (first byte {0:#04x})")]
    Encoding(u8),
    /// The point is not on the P-256 curve (or is the identity).
    #[error("device key is not a point on P-256")]
    NotOnCurve,
}
