//! The one-time OpenVPN password of an approval, derived on both sides without changing the
//! approval protocol: `base64url(HMAC-SHA512(client secret, LABEL ‖ 0 ‖ server ‖ 0 ‖ request
//! nonce)[..24])`. Only the client (who chose the nonce and holds the secret) and the
//! controller (which approved that nonce) can compute it.
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::approval::{HmacSecret, NONCE_LEN};

/// Domain separation label of the token derivation.
pub const TOKEN_LABEL: &[u8] = b"xdpgate-openvpn-token-v1";
/// Bytes of the HMAC kept (192 bits).
pub const TOKEN_BYTES: usize = 24;
/// Length of the token text (unpadded base64url of [`TOKEN_BYTES`]).
pub const TOKEN_TEXT_LEN: usize = TOKEN_BYTES / 3 * 4;

/// The token of the approval of request `request_nonce` for `server`.
pub fn derive_token(
    secret: &HmacSecret,
    server: &str,
    request_nonce: &[u8; NONCE_LEN],
) -> Zeroizing<String> {
    let mut message = Vec::with_capacity(TOKEN_LABEL.len() + server.len() + NONCE_LEN + 2);
    message.extend_from_slice(TOKEN_LABEL);
    message.push(0);
    message.extend_from_slice(server.as_bytes());
    message.push(0);
    message.extend_from_slice(request_nonce);
    let tag = Zeroizing::new(secret.sign(&message));
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..TOKEN_BYTES]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_deterministic_short_and_bound_to_every_input() {
        let secret = HmacSecret::from_bytes(&[7u8; 64]).unwrap();
        let other = HmacSecret::from_bytes(&[8u8; 64]).unwrap();
        let nonce = [1u8; NONCE_LEN];
        let token = derive_token(&secret, "vpn1", &nonce);
        assert_eq!(token.len(), TOKEN_TEXT_LEN);
        assert_eq!(*token, *derive_token(&secret, "vpn1", &nonce));
        assert_ne!(*token, *derive_token(&other, "vpn1", &nonce));
        assert_ne!(*token, *derive_token(&secret, "vpn2", &nonce));
        assert_ne!(*token, *derive_token(&secret, "vpn1", &[2u8; NONCE_LEN]));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn token_matches_a_plain_hmac_computation() {
        let secret = HmacSecret::from_bytes(&[0x42; 32]).unwrap();
        let nonce = [0x80u8; NONCE_LEN];
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &[0x42; 32]);
        let mut message = b"xdpgate-openvpn-token-v1\0vpn1\0".to_vec();
        message.extend_from_slice(&nonce);
        let tag = ring::hmac::sign(&key, &message);
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..24]);
        assert_eq!(*derive_token(&secret, "vpn1", &nonce), expected);
    }
}
