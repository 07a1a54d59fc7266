//! The published box key rotation vectors (`docs/rotation-test-vectors.json`, PROTOCOL.md §16):
//! a request boxed to the previous key during the overlap is approved, its answer is sealed
//! from the previous key and names the current one; the reference client opens it and learns
//! the key; after the overlap the same request is refused. `cargo test regenerate_rotation --
//! --ignored` prints them (or writes them to `$ROTATION_VECTORS_OUT`).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use serde_json::{Value, json};

use super::client::build_request_with;
use super::response::seal_response_with_nonce;
use super::testkit::*;
use super::*;

const VECTORS_JSON: &str = include_str!("../../../docs/rotation-test-vectors.json");
const BOX_NONCE: [u8; BOX_NONCE_LEN] = [0x78; BOX_NONCE_LEN];
const SEED: u8 = 0x42;
/// End of the overlap.
const UNTIL: u64 = NOW + 3600;

/// The current key after the rotation; the previous one is testkit's `server_keys()`.
fn current_keys() -> ServerBoxKeys {
    ServerBoxKeys::from_secret_bytes([0x6f; 32])
}

fn ring() -> BoxKeyRing {
    BoxKeyRing::with_previous(current_keys(), server_keys(), UNTIL)
}

fn connect() -> ConnectTarget {
    ConnectTarget {
        host_ipv4: Some("198.51.100.1".parse().unwrap()),
        host_ipv6: None,
        port: 1194,
        protocol: TransportProtocol::Udp,
    }
}

/// Client A's request to `vpn-1`, boxed to the previous key (its profile's), from fixed
/// entropy.
fn request() -> (ApprovalRequest, PendingApproval) {
    build_request_with(&creds_a(), &params(), NOW, &entropy(SEED), None).unwrap()
}

fn compute(request: &ApprovalRequest) -> Value {
    let approved = validate(
        request,
        &state(),
        &ring(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap();
    let update = approved
        .binding
        .key_update
        .expect("boxed to the previous key");
    assert_eq!(update.public_key, current_keys().public_key().to_bytes());
    let payload = ResponsePayload::allow(connect(), approved.open_addresses.clone(), NOW + 300);
    let sealed =
        seal_response_with_nonce(&approved.binding, &ring(), &secret_a(), &payload, BOX_NONCE)
            .unwrap();
    json!({
        "description": "Box key rotation (PROTOCOL.md §16). Inputs as in docs/approval-test-vectors.json's kind: client secret 0xa1 x 64; the previous server box secret 0x5e x 32 (the key the client's profile pins), the current one 0x6f x 32, the overlap ends at 1700003600; request entropy seed 0x42, now 1700000000, remote 10.0.0.2; request nonce 0x42 x 32, payload nonce 0x43 x 32, one-time box secret 0x44 x 32, request box nonce 0x45 x 24 (the request is published as sent; its RSA-PSS signature is salted). The request is boxed to the previous key; the answer is boxed from the previous key to the request's one-time key and carries box_key_update with the current public key. The response box nonce is fixed at 0x78 x 24.",
        "previous_server_box_public_key": server_keys().public_key().to_base64(),
        "current_server_box_secret_key": current_keys().to_base64().as_str(),
        "current_server_box_public_key": current_keys().public_key().to_base64(),
        "previous_key_until": UNTIL,
        "request_body": String::from_utf8(request.to_json().unwrap()).unwrap(),
        "response_box_nonce_hex": crate::tls::to_hex(&BOX_NONCE),
        "response_plaintext": String::from_utf8(
            serde_json::to_vec(&super::response::ResponsePlaintextJson::new(&approved.binding, &payload)).unwrap(),
        )
        .unwrap(),
        "response_body": String::from_utf8(sealed.to_json().unwrap()).unwrap(),
    })
}

fn published() -> Value {
    serde_json::from_str(VECTORS_JSON).unwrap()
}

fn published_request() -> ApprovalRequest {
    parse_request(published()["request_body"].as_str().unwrap().as_bytes()).unwrap()
}

#[test]
fn published_rotation_matches_the_implementation() {
    let request = published_request();
    let (mut fresh, _) = self::request();
    fresh.signature.clone_from(&request.signature);
    fresh.hmac = request.hmac;
    assert_eq!(
        fresh, request,
        "the published request is the one the inputs describe"
    );
    assert_eq!(compute(&request), published());
}

#[test]
fn the_client_learns_the_current_key_from_a_verified_answer_only() {
    let (_, pending) = request();
    let body = published()["response_body"].as_str().unwrap().to_owned();
    let payload = open_response(&creds_a(), &pending, body.as_bytes()).unwrap();
    let update = payload
        .box_key_update
        .expect("the answer names the current key");
    assert_eq!(update.public_key, current_keys().public_key().to_bytes());
    assert_eq!(update.previous_key_until, UNTIL);
    // Any change to the sealed answer makes it not verify, so no key is learnt from it.
    let mut value: Value = serde_json::from_str(&body).unwrap();
    let text = value["box_ciphertext"].as_str().unwrap().to_owned();
    let flipped = if text.starts_with('A') {
        text.replacen('A', "B", 1)
    } else {
        format!("A{}", &text[1..])
    };
    value["box_ciphertext"] = flipped.into();
    assert!(open_response(&creds_a(), &pending, value.to_string().as_bytes()).is_err());
}

#[test]
fn the_previous_key_opens_only_during_the_overlap_and_the_current_one_needs_no_update() {
    let request = published_request();
    let config = ValidationConfig::default();
    // The same request once the overlap has ended: the previous key no longer opens it.
    let ended = BoxKeyRing::with_previous(current_keys(), server_keys(), NOW);
    let rejection = validate(&request, &state(), &ended, remote(), NOW, &config).unwrap_err();
    assert_eq!(rejection.public_code(), PublicCode::Denied);
    assert_eq!(rejection.reason(), &Reason::BoxOpenFailed);
    // A request boxed to the current key: approved, and its answer carries no update.
    let updated = ClientCredentials::new(
        CLIENT_A.to_owned(),
        secret_a(),
        ClientRsaKey::from_pkcs8_pem(CLIENT_A_PEM).unwrap(),
        current_keys().public_key(),
    )
    .unwrap();
    let (request, pending) =
        build_request_with(&updated, &params(), NOW, &entropy(SEED + 1), None).unwrap();
    let approved = validate(&request, &state(), &ring(), remote(), NOW, &config).unwrap();
    assert!(approved.binding.key_update.is_none());
    let payload = ResponsePayload::allow(connect(), approved.open_addresses.clone(), NOW + 300);
    let sealed = seal_response(&approved.binding, &ring(), &secret_a(), &payload).unwrap();
    let opened = open_response(&updated, &pending, &sealed.to_json().unwrap()).unwrap();
    assert!(opened.box_key_update.is_none());
}

#[test]
#[ignore = "rewrites the published rotation vectors"]
fn regenerate_rotation() {
    let text = serde_json::to_string_pretty(&compute(&request().0)).unwrap() + "\n";
    match std::env::var_os("ROTATION_VECTORS_OUT") {
        Some(path) => std::fs::write(path, text).unwrap(),
        None => println!("{text}"),
    }
}
