//! Behaviour tests of the whole protocol, and the helpers they share.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::OnceLock;

use crypto_box::aead::Aead as _;
use serde_json::{Value, json};

use super::client::build_request_with;
use super::response::{ResponsePlaintextJson, seal_response_with_nonce};
use super::testkit::*;
use super::*;

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn run_at(
    body: &[u8],
    state: &MemoryState,
    now: u64,
) -> Result<ApprovedRequest, Rejection> {
    let request = parse_request(body)?;
    validate(
        &request,
        state,
        &server_keys(),
        remote(),
        now,
        &ValidationConfig::default(),
    )
}

pub(super) fn body(r: &ApprovalRequest) -> Vec<u8> {
    r.to_json().unwrap()
}

pub(super) fn connect() -> ConnectTarget {
    ConnectTarget {
        host_ipv4: Some("192.0.2.10".parse().unwrap()),
        host_ipv6: Some("2001:db8::10".parse().unwrap()),
        port: 1194,
        protocol: TransportProtocol::Udp,
    }
}

pub(super) fn forged(seed: u8, edit: impl FnOnce(&mut Forge)) -> Vec<u8> {
    let mut f = Forge::new(seed);
    edit(&mut f);
    body(&f.build())
}

pub(super) fn payload_with(
    server: &str,
    v4: Option<&str>,
    v6: Option<&str>,
    ts: u64,
    seed: u8,
) -> Vec<u8> {
    payload_json(server, v4, v6, ts, entropy(seed).payload_nonce)
}

mod bad_requests;
mod formats;
mod pipeline;
mod round_trip;
mod rule_vectors;
