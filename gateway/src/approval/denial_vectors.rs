//! The published sealed-denial vectors (`docs/denial-test-vectors.json`, PROTOCOL.md §8.3):
//! recomputed from their fixed inputs, opened by the reference client, and shown to fail when
//! any byte or the clear code changes. `cargo test regenerate_denial -- --ignored` prints them
//! (or writes them to `$DENIAL_VECTORS_OUT`).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use serde_json::{Value, json};

use super::client::build_request_with;
use super::response::{denial_body, seal_response_with_nonce};
use super::testkit::*;
use super::*;

const VECTORS_JSON: &str = include_str!("../../../docs/denial-test-vectors.json");
const BOX_NONCE: [u8; BOX_NONCE_LEN] = [0x77; BOX_NONCE_LEN];
const SEED: u8 = 0x41;

/// The request of the vectors (client A to `vpn-2`, which A may not use) and its pending
/// state, built from fixed entropy.
fn request() -> (ApprovalRequest, PendingApproval) {
    let mut params = params();
    params.server = SERVER_FORBIDDEN.to_owned();
    build_request_with(&creds_a(), &params, NOW, &entropy(SEED), None).unwrap()
}

/// The vectors for `request` (the published request, or a fresh one when regenerating: its
/// RSA-PSS signature is salted at random, everything else is fixed by the entropy).
fn compute(request: &ApprovalRequest) -> Value {
    let rejection = validate(
        request,
        &state(),
        &server_keys(),
        "198.51.100.7".parse().unwrap(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap_err();
    assert_eq!(rejection.public_code(), PublicCode::Denied, "{rejection}");
    let binding = rejection
        .binding()
        .expect("the HMAC verified, so the denial can be sealed");
    let sealed = seal_response_with_nonce(
        binding,
        &server_keys(),
        &secret_a(),
        &ResponsePayload::deny(PublicCode::Denied),
        BOX_NONCE,
    )
    .unwrap();
    let body = denial_body(PublicCode::Denied, &sealed).unwrap();
    json!({
        "description": "A sealed denial (PROTOCOL.md §8.3) of the request below, refused at stage 12 (client_not_allowed -> denied). The inputs are those of docs/approval-test-vectors.json's kind: client secret 0xa1 x 64, server box secret 0x5e x 32, request entropy seed 0x41 (request nonce 0x41 x 32, one-time secret 0x43 x 32), now 1700000000; the response box nonce is fixed at 0x77 x 24.",
        "request_body": String::from_utf8(request.to_json().unwrap()).unwrap(),
        "response_box_nonce_hex": crate::tls::to_hex(&BOX_NONCE),
        "code": "denied",
        "http_status": 403,
        "denial_body": String::from_utf8(body).unwrap(),
    })
}

fn published() -> Value {
    serde_json::from_str(VECTORS_JSON).unwrap()
}

#[test]
fn published_denial_matches_the_implementation() {
    let published = published();
    let request = parse_request(published["request_body"].as_str().unwrap().as_bytes()).unwrap();
    // Every field but the salted signature (and the HMAC over it) is what the fixed entropy
    // builds; `compute` checks that both verify.
    let (mut fresh, _) = self::request();
    fresh.signature.clone_from(&request.signature);
    fresh.hmac = request.hmac;
    assert_eq!(
        fresh, request,
        "the published request is the one the inputs describe"
    );
    assert_eq!(compute(&request), published);
}

#[test]
fn published_denial_opens_for_its_request_only_and_only_unchanged() {
    let (_, pending) = request();
    let body = published()["denial_body"].as_str().unwrap().to_owned();
    assert_eq!(
        open_denial(&creds_a(), &pending, body.as_bytes()).unwrap(),
        PublicCode::Denied
    );
    // Another request's pending state: not bound to it.
    let (_, other) =
        build_request_with(&creds_a(), &params(), NOW, &entropy(SEED + 9), None).unwrap();
    assert!(open_denial(&creds_a(), &other, body.as_bytes()).is_err());
    // A forged clear code.
    let relabelled = body.replacen("\"error\":\"denied\"", "\"error\":\"replay\"", 1);
    assert_ne!(relabelled, body);
    assert!(open_denial(&creds_a(), &pending, relabelled.as_bytes()).is_err());
    // Any flipped character of the sealed part.
    let mut value: Value = serde_json::from_str(&body).unwrap();
    let hmac = value["sealed"]["hmac"].as_str().unwrap().to_owned();
    let flipped = if hmac.starts_with('A') {
        hmac.replacen('A', "B", 1)
    } else {
        format!("A{}", &hmac[1..])
    };
    value["sealed"]["hmac"] = flipped.into();
    assert!(open_denial(&creds_a(), &pending, value.to_string().as_bytes()).is_err());
    // The wrong client secret.
    let wrong = creds(CLIENT_A, secret_b(), CLIENT_A_PEM);
    assert!(open_denial(&wrong, &pending, body.as_bytes()).is_err());
}

#[test]
#[ignore = "rewrites the published denial vectors"]
fn regenerate_denial() {
    let text = serde_json::to_string_pretty(&compute(&request().0)).unwrap() + "\n";
    match std::env::var_os("DENIAL_VECTORS_OUT") {
        Some(path) => std::fs::write(path, text).unwrap(),
        None => println!("{text}"),
    }
}
