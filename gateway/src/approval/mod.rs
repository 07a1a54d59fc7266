//! The connection approval protocol: a client asks the controller to open the VPN port for its
//! addresses with a triple-signed request (HMAC-SHA512, RSA-PSS-SHA512 and a NaCl box), and the
//! controller answers with a boxed, HMAC-signed response.
//!
//! This module is pure: it does no I/O, keeps no clock and stores nothing. The caller supplies
//! the current time, the remote address and the state (clients, servers, seen nonces) through
//! [`ApprovalState`]. The byte-for-byte specification, with test vectors, is
//! `docs/PROTOCOL.md`.
//!
//! Server side: [`parse_request`] → [`validate`] → [`seal_response`].
//! Client side: [`build_request`] → (HTTP) → [`open_response`].

mod address;
// The wire half of the protocol lives in the key-free `xdpgate-protocol` crate; these names
// keep `super::wire` and the like working for the modules here.
use xdpgate_protocol::{address_kind, b64, binding, canonical, error, limits, wire};
mod client;
#[cfg(fuzzing)]
pub mod fuzzing;
mod keys;
mod profile;
mod response;
mod rng;
mod state;
mod validate;

#[cfg(test)]
mod denial_vectors;
#[cfg(test)]
mod device_vectors;
#[cfg(test)]
mod rotation_vectors;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use address::{AddressPolicy, AddressProblem, AddressSource, check_openable, select_addresses};
pub use canonical::{
    ADDRESS_PATH, PROTOCOL_VERSION, REQUEST_DEVICE_SIGNATURE_TAG, REQUEST_MAC_TAG, REQUEST_METHOD,
    REQUEST_PATH, REQUEST_SIGNATURE_TAG, RESPONSE_MAC_TAG, request_device_signature_input,
    request_mac_input, request_signature_input, response_mac_input,
};
pub use client::{
    ClientCredentials, ClientError, PendingApproval, RequestParams, build_request,
    build_request_with_device, open_denial, open_response,
};
pub use error::{PublicCode, Reason, Rejection, Stage};
pub use keys::{
    BoxKeyRing, BoxKeySet, BoxPublicKey, ClientRsaKey, ClientRsaPublicKey, HmacSecret, KeyError,
    RSA_GENERATED_BITS, RSA_MAX_BITS, RSA_MIN_BITS, ServerBoxKeys,
};
pub use profile::{ClientProfile, PROFILE_VERSION, ProfileError};
pub use response::{
    APPROVED_REASON, BoxKeyUpdate, ConnectTarget, ResponseBinding, ResponsePayload, SealError,
    TransportProtocol, Verdict, seal_denial, seal_response,
};
pub use rng::RngError;
pub use state::{
    ApprovalState, ClientRecord, MemoryState, NonceCheck, NonceScope, ServerLookup, ServerPolicy,
};
pub use validate::{
    ApprovedRequest, DEFAULT_TIMESTAMP_WINDOW_SECS, ValidationConfig, precheck, validate,
};
pub use wire::{
    ApprovalRequest, ApprovalResponse, BOX_NONCE_LEN, BOX_PUBLIC_KEY_LEN, ErrorBody, HMAC_LEN,
    MAX_REQUEST_BODY_BYTES, MAX_RESPONSE_BODY_BYTES, NONCE_LEN, parse_request, parse_response,
};
