//! Client → validate → seal → open round trips, and what the client refuses.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

#[test]
fn round_trip_client_validate_seal_open() {
    let state = state();
    let creds = creds_a();
    let (request, pending) = build_request(&creds, &params(), NOW).unwrap();
    let wire = body(&request);
    assert_eq!(
        parse_request(&wire).unwrap(),
        request,
        "wire JSON round trip"
    );

    let approved = run_at(&wire, &state, NOW + 5).unwrap();
    assert_eq!(approved.client_id, CLIENT_A);
    assert_eq!(approved.server, SERVER);
    assert_eq!(approved.open_addresses, vec![ip("10.0.0.2"), ip("fd00::2")]);
    assert_eq!(approved.reported_ipv4, Some("10.0.0.2".parse().unwrap()));
    assert_eq!(approved.reported_ipv6, Some("fd00::2".parse().unwrap()));
    assert_eq!(approved.client_version, "1.4.2");
    assert_eq!(approved.device_name, "test laptop");
    assert_eq!(approved.binding.request_nonce(), &request.nonce);
    assert_eq!(
        state.nonce_count(),
        2,
        "request and payload nonces recorded"
    );
    assert_eq!(
        state.nonce_keep_until(NonceScope::Request, &request.nonce),
        Some(NOW + 5 + 600)
    );

    let payload = ResponsePayload::allow(connect(), approved.open_addresses.clone(), NOW + 3600);
    let response = seal_response(
        &approved.binding,
        &server_keys(),
        approved.client_hmac_secret(),
        &payload,
    )
    .unwrap();
    let opened = open_response(&creds, &pending, &response.to_json().unwrap()).unwrap();
    assert_eq!(opened, payload);

    // Sealing with the box key kept from opening the request is the same to the client.
    let reused = approved.seal(&payload).unwrap();
    assert_ne!(
        reused.box_nonce, response.box_nonce,
        "a fresh box nonce per answer"
    );
    let opened = open_response(&creds, &pending, &reused.to_json().unwrap()).unwrap();
    assert_eq!(opened, payload);
}

#[test]
fn signed_denial_round_trip_after_hmac() {
    let state = state();
    let creds = creds_a();
    let mut p = params();
    p.server = SERVER_FORBIDDEN.to_owned();
    let (request, pending) = build_request(&creds, &p, NOW).unwrap();
    let rejection = run_at(&body(&request), &state, NOW).unwrap_err();
    assert_eq!(rejection.public_code(), PublicCode::Denied);
    assert_eq!(rejection.reason().kind(), "client_not_allowed");
    let binding = rejection
        .binding()
        .expect("HMAC verified, so a signed denial is possible");
    let secret = state.client(CLIENT_A).unwrap().hmac_secret;
    let deny = ResponsePayload::deny(rejection.public_code());
    let response = seal_response(binding, &server_keys(), &secret, &deny).unwrap();
    let opened = open_response(&creds, &pending, &response.to_json().unwrap()).unwrap();
    assert_eq!(opened.verdict, Verdict::Deny);
    assert_eq!(opened.reason, "denied");
    assert!(opened.opened.is_empty() && opened.connect.is_none());
}

#[test]
fn open_response_rejects_responses_not_for_this_request() {
    let state = state();
    let creds = creds_a();
    let (req1, pending1) = build_request(&creds, &params(), NOW).unwrap();
    let (_req2, pending2) = build_request(&creds, &params(), NOW).unwrap();
    let approved = run_at(&body(&req1), &state, NOW).unwrap();
    let payload = ResponsePayload::allow(connect(), approved.open_addresses.clone(), NOW + 60);
    let secret = approved.client_hmac_secret();
    let good = seal_response(&approved.binding, &server_keys(), secret, &payload).unwrap();

    // Another request's response.
    let err = open_response(&creds, &pending2, &good.to_json().unwrap()).unwrap_err();
    assert!(matches!(err, ClientError::ResponseMacMismatch), "{err}");

    // Tampered ciphertext.
    let mut bad = good.clone();
    bad.box_ciphertext[20] ^= 1;
    let err = open_response(&creds, &pending1, &bad.to_json().unwrap()).unwrap_err();
    assert!(matches!(err, ClientError::ResponseMacMismatch), "{err}");

    // Right HMAC, but boxed by a key that is not the profile's server key.
    let impostor = ServerBoxKeys::from_secret_bytes([0x77; 32]);
    let forged = seal_response(&approved.binding, &impostor, secret, &payload).unwrap();
    let err = open_response(&creds, &pending1, &forged.to_json().unwrap()).unwrap_err();
    assert!(matches!(err, ClientError::ResponseBoxOpenFailed), "{err}");

    // Right HMAC and box, but the plaintext echoes another request nonce.
    let other = ResponseBinding::new(
        [9; 32],
        *approved.binding.client_box_public_key(),
        SERVER.into(),
    );
    let plaintext = serde_json::to_vec(&ResponsePlaintextJson::new(&other, &payload)).unwrap();
    let client_pk =
        BoxPublicKey::from_bytes(*approved.binding.client_box_public_key()).to_crypto_box();
    let mut echo = ApprovalResponse {
        box_nonce: [4; 24],
        box_ciphertext: crypto_box::SalsaBox::new(&client_pk, server_keys().secret())
            .encrypt(&[4u8; 24].into(), plaintext.as_slice())
            .unwrap(),
        hmac: [0; 64],
    };
    echo.hmac = secret.sign(&response_mac_input(
        approved.binding.request_nonce(),
        approved.binding.client_box_public_key(),
        &echo,
    ));
    let err = open_response(&creds, &pending1, &echo.to_json().unwrap()).unwrap_err();
    assert!(matches!(err, ClientError::ResponseNotBound), "{err}");

    // Not a response at all.
    let err = open_response(&creds, &pending1, b"{\"error\":\"denied\"}").unwrap_err();
    assert!(matches!(err, ClientError::MalformedResponse(_)), "{err}");
}

#[test]
fn seal_refuses_inconsistent_payloads() {
    let binding = ResponseBinding::new([1; 32], [2; 32], SERVER.into());
    let mut p = ResponsePayload::allow(connect(), vec![ip("10.0.0.2")], NOW);
    p.expires_unix = None;
    assert!(matches!(
        seal_response_with_nonce(&binding, &server_keys(), &secret_a(), &p, [0; 24]),
        Err(SealError::Inconsistent(_))
    ));
    let mut d = ResponsePayload::deny(PublicCode::Denied);
    d.reason = "hmac_mismatch".into();
    assert!(matches!(
        seal_response_with_nonce(&binding, &server_keys(), &secret_a(), &d, [0; 24]),
        Err(SealError::Inconsistent(_))
    ));
}

#[test]
fn build_request_is_randomised_but_deterministic_given_entropy() {
    let creds = creds_a();
    let (a, _) = build_request_with(&creds, &params(), NOW, &entropy(1), None).unwrap();
    let (b, _) = build_request_with(&creds, &params(), NOW, &entropy(1), None).unwrap();
    assert_eq!(a.box_ciphertext, b.box_ciphertext);
    assert_ne!(a.signature, b.signature, "PSS salts are random");
    let (c, _) = build_request(&creds, &params(), NOW).unwrap();
    let (d, _) = build_request(&creds, &params(), NOW).unwrap();
    assert_ne!(c.nonce, d.nonce);
    assert_ne!(c.box_public_key, d.box_public_key);
}

#[test]
fn client_refuses_bad_params() {
    let creds = creds_a();
    let mut p = params();
    p.client_version = String::new();
    assert!(matches!(
        build_request(&creds, &p, NOW),
        Err(ClientError::InvalidParams(_))
    ));
    let mut p = params();
    p.device_name = "x".repeat(129);
    assert!(matches!(
        build_request(&creds, &p, NOW),
        Err(ClientError::InvalidParams(_))
    ));
    let mut p = params();
    p.server = "bad name".into();
    assert!(matches!(
        build_request(&creds, &p, NOW),
        Err(ClientError::InvalidParams(_))
    ));
    let bad_id = ClientCredentials::new(
        "a/b".into(),
        secret_a(),
        ClientRsaKey::from_pkcs8_pem(CLIENT_A_PEM).unwrap(),
        server_keys().public_key(),
    );
    assert!(matches!(bad_id, Err(ClientError::InvalidClientId(_))));
}
