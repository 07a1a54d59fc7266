//! What ties a response to the request it answers (nonce, one-time box key, server): made by
//! validation, carried by a rejection, used by sealing.
use crate::limits::{BOX_PUBLIC_KEY_LEN, NONCE_LEN};

/// What ties a response to the request it answers. Comes from [`crate::ApprovedRequest`] or,
/// for a request whose HMAC verified, from [`crate::Rejection::binding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseBinding {
    /// The request's nonce.
    pub request_nonce: [u8; NONCE_LEN],
    /// The request's one-time box public key.
    pub client_box_public_key: [u8; BOX_PUBLIC_KEY_LEN],
    /// The server name of the request envelope.
    pub server: String,
    /// Set when the request was boxed to the server's previous key during a rotation overlap
    /// (§16): the answer is sealed from that key and tells the client the current one.
    pub key_update: Option<BoxKeyUpdate>,
}

/// The `box_key_update` of a response plaintext (`docs/PROTOCOL.md` §16): the server's
/// current box public key, sent to a client that still boxes to the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxKeyUpdate {
    /// The current long-term X25519 public key.
    pub public_key: [u8; BOX_PUBLIC_KEY_LEN],
    /// Until when (Unix seconds) the previous key still opens requests.
    pub previous_key_until: u64,
}

impl ResponseBinding {
    /// A binding for a request boxed to the current key.
    pub fn new(
        request_nonce: [u8; NONCE_LEN],
        client_box_public_key: [u8; BOX_PUBLIC_KEY_LEN],
        server: String,
    ) -> Self {
        Self {
            request_nonce,
            client_box_public_key,
            server,
            key_update: None,
        }
    }

    /// The same binding for a request boxed to the previous key.
    #[must_use]
    pub fn with_key_update(mut self, update: BoxKeyUpdate) -> Self {
        self.key_update = Some(update);
        self
    }

    /// The request's nonce, echoed in the response plaintext and bound into its MAC.
    pub fn request_nonce(&self) -> &[u8; NONCE_LEN] {
        &self.request_nonce
    }

    /// The request's one-time box public key, which the response is boxed to.
    pub fn client_box_public_key(&self) -> &[u8; BOX_PUBLIC_KEY_LEN] {
        &self.client_box_public_key
    }

    /// The server name from the request envelope, echoed in the response.
    pub fn server(&self) -> &str {
        &self.server
    }
}
