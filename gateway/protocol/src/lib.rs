//! The wire protocol of xdpgate (`docs/PROTOCOL.md`), as far as it needs no key: the approval
//! request and response envelopes, the enrollment envelopes, the transcripts that are MACed
//! and signed, the protocol's numbers, the public error codes, and strict decoding of all of
//! it.
//!
//! This crate does no I/O, keeps no clock and holds no secret, so the untrusted web front can
//! parse and re-serialize requests with it while the cryptography stays with the controller
//! and the client (the `xdpgate` crate's `approval` and `enrollment` modules).

pub mod address_kind;
pub mod b64;
pub mod binding;
pub mod canonical;
pub mod device_key;
pub mod enrollment;
pub mod error;
pub mod limits;
pub mod node_name;
pub mod wire;

pub use address_kind::{AddressProblem, AddressSource};
pub use binding::{BoxKeyUpdate, ResponseBinding};
pub use canonical::{
    ADDRESS_PATH, PROTOCOL_VERSION, REQUEST_DEVICE_SIGNATURE_TAG, REQUEST_MAC_TAG, REQUEST_METHOD,
    REQUEST_PATH, REQUEST_SIGNATURE_TAG, RESPONSE_MAC_TAG, request_device_signature_input,
    request_mac_input, request_signature_input, response_mac_input,
};
pub use error::{PublicCode, Reason, Rejection, Stage};
pub use wire::{
    ApprovalRequest, ApprovalResponse, BOX_NONCE_LEN, BOX_PUBLIC_KEY_LEN, ErrorBody, HMAC_LEN,
    MAX_REQUEST_BODY_BYTES, MAX_RESPONSE_BODY_BYTES, NONCE_LEN, parse_request, parse_response,
};
