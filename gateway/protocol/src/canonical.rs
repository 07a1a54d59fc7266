//! The canonical byte strings that are MACed and signed (see `docs/PROTOCOL.md`, "Canonical
//! encoding").
//!
//! A transcript is `field(tag) ‖ u16be(PROTOCOL_VERSION) ‖ items…`, where `field(x)` is
//! `u32be(len(x)) ‖ x`, integers are fixed-width big-endian, and binary items are the raw
//! (decoded) bytes, never their base64 text. Every item has a fixed place, so no two distinct
//! messages share a transcript.

use crate::wire::{ApprovalRequest, ApprovalResponse};

pub use crate::limits::PROTOCOL_VERSION;
/// The HTTP method of an approval request, bound into the request MAC.
pub const REQUEST_METHOD: &str = "POST";
/// The HTTP path of an approval request, bound into the request MAC.
pub const REQUEST_PATH: &str = "/v1/approvals";
/// The unauthenticated echo a client asks its own public address from (`GET`, answered
/// `{"address":"…"}`), to report it inside the box (`docs/PROTOCOL.md` §7).
pub const ADDRESS_PATH: &str = "/v1/address";
/// Domain-separation tag of the request MAC transcript.
pub const REQUEST_MAC_TAG: &str = "xdpgate-approval-request-mac";
/// Domain-separation tag of the request signature transcript.
pub const REQUEST_SIGNATURE_TAG: &str = "xdpgate-approval-request-signature";
/// Domain-separation tag of the device signature transcript (`docs/PROTOCOL.md` §15.3).
pub const REQUEST_DEVICE_SIGNATURE_TAG: &str = "xdpgate-approval-device-signature";
/// Domain-separation tag of the response MAC transcript.
pub const RESPONSE_MAC_TAG: &str = "xdpgate-approval-response-mac";

/// A transcript under construction.
struct Transcript(Vec<u8>);

impl Transcript {
    fn new(tag: &str, capacity: usize) -> Self {
        let mut t = Self(Vec::with_capacity(capacity + tag.len() + 6));
        t.field(tag.as_bytes());
        t.u16(PROTOCOL_VERSION);
        t
    }

    /// Appends `u32be(len) ‖ bytes`. Protocol limits keep every field far below 4 GiB; a
    /// longer one would saturate the prefix and fail verification, never alias.
    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Fields shared, in this order, by the request signature and MAC transcripts.
fn envelope_items(t: &mut Transcript, r: &ApprovalRequest) {
    t.field(r.client_id.as_bytes())
        .u64(r.timestamp)
        .field(r.server.as_bytes())
        .field(&r.nonce)
        .field(&r.box_public_key)
        .field(&r.box_nonce)
        .field(&r.box_ciphertext);
}

/// The message `M` signed with RSASSA-PSS (SHA-512, MGF1-SHA-512, 64-byte salt):
/// `field(REQUEST_SIGNATURE_TAG) ‖ u16be(1) ‖ field(client_id) ‖ u64be(timestamp) ‖
/// field(server) ‖ field(nonce) ‖ field(box_public_key) ‖ field(box_nonce) ‖
/// field(box_ciphertext)`.
pub fn request_signature_input(r: &ApprovalRequest) -> Vec<u8> {
    let mut t = Transcript::new(REQUEST_SIGNATURE_TAG, 256 + r.box_ciphertext.len());
    envelope_items(&mut t, r);
    t.finish()
}

/// The message `D` the device key signs (ECDSA P-256, SHA-256): the items of `M` under its
/// own tag, `field(REQUEST_DEVICE_SIGNATURE_TAG) ‖ u16be(1) ‖ field(client_id) ‖
/// u64be(timestamp) ‖ field(server) ‖ field(nonce) ‖ field(box_public_key) ‖
/// field(box_nonce) ‖ field(box_ciphertext)`. The device public key is inside the box, so
/// `D` (like `M`) covers it.
pub fn request_device_signature_input(r: &ApprovalRequest) -> Vec<u8> {
    let mut t = Transcript::new(REQUEST_DEVICE_SIGNATURE_TAG, 256 + r.box_ciphertext.len());
    envelope_items(&mut t, r);
    t.finish()
}

/// The message HMAC-SHA512'd with the client secret:
/// `field(REQUEST_MAC_TAG) ‖ u16be(1) ‖ field("POST") ‖ field("/v1/approvals") ‖
/// field(client_id) ‖ u64be(timestamp) ‖ field(server) ‖ field(nonce) ‖
/// field(box_public_key) ‖ field(box_nonce) ‖ field(box_ciphertext) ‖ field(signature)`,
/// followed by `field(device_signature)` when the request carries one.
pub fn request_mac_input(r: &ApprovalRequest) -> Vec<u8> {
    let mut t = Transcript::new(
        REQUEST_MAC_TAG,
        300 + r.box_ciphertext.len() + r.signature.len(),
    );
    t.field(REQUEST_METHOD.as_bytes())
        .field(REQUEST_PATH.as_bytes());
    envelope_items(&mut t, r);
    t.field(&r.signature);
    if let Some(device_signature) = &r.device_signature {
        t.field(device_signature);
    }
    t.finish()
}

/// The message HMAC-SHA512'd by the server for a response:
/// `field(RESPONSE_MAC_TAG) ‖ u16be(1) ‖ field(request_nonce) ‖
/// field(request_box_public_key) ‖ field(box_nonce) ‖ field(box_ciphertext)`.
///
/// `request_nonce` and `request_box_public_key` are the request's, so a response MAC only
/// verifies for the request it answers.
pub fn response_mac_input(
    request_nonce: &[u8],
    request_box_public_key: &[u8],
    response: &ApprovalResponse,
) -> Vec<u8> {
    let mut t = Transcript::new(RESPONSE_MAC_TAG, 128 + response.box_ciphertext.len());
    t.field(request_nonce)
        .field(request_box_public_key)
        .field(&response.box_nonce)
        .field(&response.box_ciphertext);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_layout_is_length_prefixed_big_endian() {
        let mut t = Transcript::new("T", 0);
        t.field(b"ab").u64(0x0102_0304_0506_0708);
        assert_eq!(
            t.finish(),
            [
                &[0, 0, 0, 1][..],
                b"T",
                &[0, 1],
                &[0, 0, 0, 2],
                b"ab",
                &[1, 2, 3, 4, 5, 6, 7, 8],
            ]
            .concat()
        );
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_transcript() {
        let mut a = Transcript::new("T", 0);
        a.field(b"ab").field(b"c");
        let mut b = Transcript::new("T", 0);
        b.field(b"a").field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
