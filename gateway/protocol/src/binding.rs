//! What ties a response to the request it answers (nonce, one-time box key, server): made by
//! validation, carried by a rejection, used by sealing.
use crate::limits::{BOX_PUBLIC_KEY_LEN, NONCE_LEN};

/// What ties a response to the request it answers. Comes from [`crate::ApprovedRequest`] or,
/// for a request whose HMAC verified, from [`crate::Rejection::binding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseBinding {
    pub request_nonce: [u8; NONCE_LEN],
    pub client_box_public_key: [u8; BOX_PUBLIC_KEY_LEN],
    pub server: String,
}

impl ResponseBinding {
    pub fn new(
        request_nonce: [u8; NONCE_LEN],
        client_box_public_key: [u8; BOX_PUBLIC_KEY_LEN],
        server: String,
    ) -> Self {
        Self {
            request_nonce,
            client_box_public_key,
            server,
        }
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
