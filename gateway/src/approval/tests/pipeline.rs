//! Pipeline order and costs: no public-key work before the HMAC, windows, nonce retention,
//! address policies.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

#[test]
fn wrong_hmac_costs_no_public_key_work() {
    let state = state();
    // Garbage signature and a box that would not open, then a wrong HMAC on top: the
    // rejection must be the HMAC's, and no later stage may run.
    let mut r = Forge::new(40).build();
    r.signature = vec![0; 512];
    r.box_ciphertext[0] ^= 0xff;
    r.hmac[0] ^= 1;
    let err = validate(
        &r,
        &state,
        &server_keys(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason().kind(), "hmac_mismatch");
    assert_eq!(
        state.take_trace(),
        [Stage::Shape, Stage::Timestamp, Stage::Client, Stage::Hmac]
    );
    assert_eq!(
        state.record_nonce_calls(),
        0,
        "the nonce store was not even asked"
    );

    // Unknown client: same, one stage earlier.
    let mut r = Forge::new(41).build();
    r.client_id = "ghost".into();
    let err = validate(
        &r,
        &state,
        &server_keys(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason().kind(), "unknown_client");
    assert_eq!(
        state.take_trace(),
        [Stage::Shape, Stage::Timestamp, Stage::Client]
    );
    assert_eq!(state.record_nonce_calls(), 0);

    // Control: with a valid HMAC the same garbage does reach the signature stage.
    let mut r = Forge::new(42).build();
    r.signature = vec![0; 512];
    remac(&mut r, &secret_a());
    let err = validate(
        &r,
        &state,
        &server_keys(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason().kind(), "signature_invalid");
    let trace = state.take_trace();
    assert!(
        trace.contains(&Stage::Signature) && !trace.contains(&Stage::BoxOpen),
        "{trace:?}"
    );
    assert_eq!(state.record_nonce_calls(), 1);
}

#[test]
fn accepted_stages_run_in_the_documented_order() {
    let state = state();
    let r = Forge::new(43).build();
    validate(
        &r,
        &state,
        &server_keys(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap();
    let trace = state.take_trace();
    assert_eq!(
        trace,
        Stage::ALL[1..Stage::ALL.len() - 1].to_vec(),
        "every stage but admission and grant (the controller's, after validation), in order"
    );
}

#[test]
fn timestamp_window_edges_and_nonce_retention() {
    let state = state();
    let config = ValidationConfig {
        timestamp_window_secs: 60,
    };
    let check =
        |f: &Forge, now| validate(&f.build(), &state, &server_keys(), remote(), now, &config);
    let mut f = Forge::new(50);
    f.timestamp = NOW - 60;
    f.plaintext = payload_with(SERVER, None, None, NOW + 60, 50);
    let ok = check(&f, NOW).unwrap();
    assert_eq!(ok.open_addresses, vec![remote()]);
    assert_eq!(
        state.nonce_keep_until(NonceScope::Payload, &entropy(50).payload_nonce),
        Some(NOW + 120)
    );

    let mut f = Forge::new(51);
    f.timestamp = NOW + 61;
    assert_eq!(check(&f, NOW).unwrap_err().reason().kind(), "clock_skew");
    assert_eq!(ValidationConfig::default().nonce_keep_until(NOW), NOW + 600);
}

#[test]
fn require_match_and_ignore_reported_policies() {
    let mut state = state();
    let mut f = Forge::new(60);
    f.server = SERVER_MATCH.into();
    f.plaintext = payload_with(SERVER_MATCH, Some("10.0.0.2"), Some("fd00::2"), NOW, 60);
    let ok = validate(
        &f.build(),
        &state,
        &server_keys(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap();
    assert_eq!(
        ok.open_addresses,
        vec![remote()],
        "only the remote is opened"
    );

    state.add_server_here(
        "vpn-ignore",
        ServerPolicy {
            address_policy: AddressPolicy::IgnoreReported,
        },
    );
    state.allow(CLIENT_A, "vpn-ignore");
    let mut f = Forge::new(61);
    f.server = "vpn-ignore".into();
    f.plaintext = payload_with("vpn-ignore", Some("10.9.9.9"), None, NOW, 61);
    let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
    let ok = validate(
        &f.build(),
        &state,
        &server_keys(),
        mapped,
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap();
    assert_eq!(
        ok.open_addresses,
        vec![remote()],
        "remote canonicalised, report ignored"
    );
    assert_eq!(ok.remote, remote());
}

#[test]
fn rate_limited_rejection() {
    let r = Rejection::rate_limited();
    assert_eq!(r.public_code(), PublicCode::RateLimited);
    assert_eq!(r.http_status(), 429);
    assert_eq!(r.stage(), Stage::Admission);
    assert!(r.binding().is_none());
}

#[test]
fn audit_text_is_precise_but_public_body_is_uniform() {
    let state = state();
    let mut r = Forge::new(70).build();
    r.hmac[0] ^= 1;
    let err = validate(
        &r,
        &state,
        &server_keys(),
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap_err();
    let audit = err.to_string();
    assert!(
        audit.contains("HMAC") && audit.contains(CLIENT_A),
        "{audit}"
    );
    let public = serde_json::to_string(&err.public_body()).unwrap();
    assert_eq!(public, r#"{"error":"denied"}"#);
}

/// A request from client A whose one-time key is `key`, its box sealed under the shared
/// secret X25519 gives for that key (all zero for a small-order key: anyone can compute it).
fn with_one_time_key(seed: u8, key: [u8; 32]) -> ApprovalRequest {
    use crypto_box::aead::Aead as _;
    let f = Forge::new(seed);
    let attacker = crypto_box::SecretKey::from_bytes([0x42; 32]);
    let constant = crypto_box::SalsaBox::new(&crypto_box::PublicKey::from_bytes(key), &attacker);
    let mut r = f.build();
    r.box_public_key = key;
    r.box_ciphertext = constant
        .encrypt(&r.box_nonce.into(), f.plaintext.as_slice())
        .unwrap();
    resign(&mut r, f.rsa, &f.secret);
    r
}

#[test]
fn small_order_and_non_canonical_one_time_keys_are_denied() {
    use crypto_box::aead::Aead as _;
    let p_le = {
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    };
    for (i, key) in [[0u8; 32], p_le].into_iter().enumerate() {
        let r = with_one_time_key(90 + i as u8 * 4, key);
        // The finding: without the check, such a box opens with the server's key, because
        // the shared secret is the constant the attacker sealed under.
        let server_side = crypto_box::SalsaBox::new(
            &crypto_box::PublicKey::from_bytes(key),
            server_keys().secret(),
        );
        assert!(
            server_side
                .decrypt(&r.box_nonce.into(), r.box_ciphertext.as_slice())
                .is_ok(),
            "key {i}: the box is sealed under the constant"
        );
        let state = state();
        let err = validate(
            &r,
            &state,
            &server_keys(),
            remote(),
            NOW,
            &ValidationConfig::default(),
        )
        .unwrap_err();
        assert_eq!(err.public_code(), PublicCode::Denied, "key {i}: {err}");
        assert_eq!(err.reason().kind(), "weak_box_key", "key {i}: {err}");
        assert_eq!(err.stage(), Stage::BoxOpen, "key {i}");
    }
}
