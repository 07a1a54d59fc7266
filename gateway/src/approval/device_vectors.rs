//! The device authentication vectors (`docs/device-test-vectors.json`, `docs/PROTOCOL.md`
//! §15.7): a fixed software P-256 key, its fingerprint and PIN, and the request of §11 carrying
//! the device key in its box and a device signature in its envelope; plus the device stage's
//! refusals.
//!
//! Regenerate after a deliberate protocol change:
//! `DEVICE_VECTORS_OUT=/path/to/docs/device-test-vectors.json cargo test regenerate_device -- --ignored`
//! (the RSA-PSS signature is randomised: a regenerated file has a new RSA signature, MAC and
//! body; the device signature is deterministic, RFC 6979).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::IpAddr;

use serde_json::{Value, json};

use super::client::{build_request_with, payload_plaintext};
use super::testkit::{CLIENT_A_PEM, hex, unhex};
use super::vectors::{Inputs, counting, inputs};
use super::*;
use crate::device::{DevicePublicKey, DeviceSigner as _, SoftwareDeviceKey};

const VECTORS_JSON: &str = include_str!("../../../docs/device-test-vectors.json");

/// The vector device key's scalar: bytes 0x20, 0x21, …, 0x3f.
fn device_key() -> SoftwareDeviceKey {
    SoftwareDeviceKey::from_scalar(&counting(0x20)).unwrap()
}

fn state(i: &Inputs) -> MemoryState {
    let mut s = i.state();
    s.require_device(&i.params.server);
    s
}

fn signed(i: &Inputs, rsa_signature: Option<Vec<u8>>) -> ApprovalRequest {
    let mut key = device_key();
    let (mut request, _) = build_request_with(
        &i.creds(),
        &i.params,
        i.timestamp,
        &i.entropy(),
        Some(&mut key),
    )
    .unwrap();
    if let Some(sig) = rsa_signature {
        request.signature = sig;
        request.hmac = i.secret().sign(&request_mac_input(&request));
    }
    request
}

fn compute(rsa_signature: Option<Vec<u8>>) -> Value {
    let i = inputs();
    let key = device_key();
    let public = key.public_key().clone();
    let fp = public.fingerprint();
    let request = signed(&i, rsa_signature);
    let plaintext = payload_plaintext(
        &i.params,
        i.timestamp,
        i.payload_nonce,
        Some(*public.as_bytes()),
    )
    .unwrap();
    let approved = validate(
        &request,
        &state(&i),
        &i.server_keys(),
        i.remote.parse::<IpAddr>().unwrap(),
        i.now,
        &ValidationConfig::default(),
    )
    .unwrap();
    assert_eq!(approved.device.as_ref(), Some(&public));
    json!({
        "description": "xdpgate device authentication test vectors (docs/PROTOCOL.md §15). The approval inputs are those of docs/approval-test-vectors.json; the server requires device authentication. Hex is lowercase.",
        "device": {
            "private_scalar_hex": hex(&counting::<32>(0x20)),
            "public_key_sec1_hex": hex(public.as_bytes()),
            "public_key_base64": super::b64::encode(public.as_bytes()),
            "fingerprint_hex": fp.to_hex(),
            "pin": fp.pin(),
        },
        "request": {
            "payload_plaintext": String::from_utf8(plaintext.to_vec()).unwrap(),
            "box_ciphertext_hex": hex(&request.box_ciphertext),
            "signature_input_hex": hex(&request_signature_input(&request)),
            "signature_hex": hex(&request.signature),
            "device_signature_input_hex": hex(&request_device_signature_input(&request)),
            "device_signature_hex": hex(&request.device_signature.unwrap()),
            "mac_input_hex": hex(&request_mac_input(&request)),
            "hmac_hex": hex(&request.hmac),
            "body": String::from_utf8(request.to_json().unwrap()).unwrap(),
        },
    })
}

fn published() -> Value {
    serde_json::from_str(VECTORS_JSON).expect("docs/device-test-vectors.json is JSON")
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_else(|| panic!("vector field {path:?} missing"))
}

#[test]
fn published_device_vectors_match_the_implementation() {
    let file = published();
    let rsa = unhex(text(&file, &["request", "signature_hex"]));
    assert_eq!(
        compute(Some(rsa)),
        file,
        "recomputed vectors differ from docs/device-test-vectors.json"
    );
}

#[test]
fn published_device_signature_verifies_with_ring_too() {
    let file = published();
    let key = unhex(text(&file, &["device", "public_key_sec1_hex"]));
    let message = unhex(text(&file, &["request", "device_signature_input_hex"]));
    let sig = unhex(text(&file, &["request", "device_signature_hex"]));
    let ring_key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &key);
    assert!(ring_key.verify(&message, &sig).is_ok(), "ring verifier");
    let ours = DevicePublicKey::from_sec1(&key).unwrap();
    assert!(ours.verify(&message, &sig.clone().try_into().unwrap()));
    let mut bad = message.clone();
    bad[40] ^= 1;
    assert!(ring_key.verify(&bad, &sig).is_err());
    assert!(!ours.verify(&bad, &sig.try_into().unwrap()));
}

#[test]
fn published_body_validates_and_without_device_auth_the_device_is_ignored() {
    let file = published();
    let body = text(&file, &["request", "body"]);
    let request = parse_request(body.as_bytes()).unwrap();
    let i = inputs();
    let remote: IpAddr = i.remote.parse().unwrap();
    let config = ValidationConfig::default();
    let approved = validate(
        &request,
        &state(&i),
        &i.server_keys(),
        remote,
        i.now,
        &config,
    )
    .expect("the vector request validates on a server requiring devices");
    assert_eq!(
        approved.device.unwrap().fingerprint().to_hex(),
        text(&file, &["device", "fingerprint_hex"])
    );
    // A server without device authentication approves the same request and ignores it.
    let plain = validate(
        &request,
        &i.state(),
        &i.server_keys(),
        remote,
        i.now,
        &config,
    )
    .unwrap();
    assert!(plain.device.is_none());
}

/// A request built with `key` (or none), then edited by `edit` and re-MACed.
fn refused_with(
    key: Option<&mut SoftwareDeviceKey>,
    edit: impl FnOnce(&mut ApprovalRequest),
) -> Rejection {
    let i = inputs();
    let (mut request, _) = build_request_with(
        &i.creds(),
        &i.params,
        i.timestamp,
        &i.entropy(),
        key.map(|k| k as &mut dyn crate::device::DeviceSigner),
    )
    .unwrap();
    edit(&mut request);
    request.hmac = i.secret().sign(&request_mac_input(&request));
    validate(
        &request,
        &state(&i),
        &i.server_keys(),
        i.remote.parse().unwrap(),
        i.now,
        &ValidationConfig::default(),
    )
    .expect_err("refused")
}

#[test]
fn missing_or_wrong_device_signatures_are_refused_at_the_device_stage() {
    // No device at all.
    let r = refused_with(None, |_| {});
    assert_eq!(r.stage(), Stage::Device);
    assert_eq!(r.public_code(), PublicCode::DeviceRequired);
    assert!(r.binding().is_some(), "sealed: the HMAC verified");
    // Key in the box, signature stripped.
    let r = refused_with(Some(&mut device_key()), |req| req.device_signature = None);
    assert_eq!(r.reason().kind(), "device_missing");
    assert_eq!(r.public_code(), PublicCode::DeviceRequired);
    // A flipped bit of the signature.
    let r = refused_with(Some(&mut device_key()), |req| {
        if let Some(sig) = req.device_signature.as_mut() {
            sig[5] ^= 1;
        }
    });
    assert_eq!(r.reason().kind(), "device_signature_invalid");
    assert_eq!(r.public_code(), PublicCode::Denied);
    // A signature by another key over the same transcript.
    let r = refused_with(Some(&mut device_key()), |req| {
        let mut other = SoftwareDeviceKey::from_scalar(&counting(0x50)).unwrap();
        req.device_signature = Some(other.sign(&request_device_signature_input(req)).unwrap());
    });
    assert_eq!(r.reason().kind(), "device_signature_invalid");
    // A signature over M (the RSA transcript) instead of D: domain separation.
    let r = refused_with(Some(&mut device_key()), |req| {
        req.device_signature = Some(device_key().sign(&request_signature_input(req)).unwrap());
    });
    assert_eq!(r.reason().kind(), "device_signature_invalid");
    // r or s out of range (all ones) or zero.
    for bad in [[0xffu8; 64], [0u8; 64]] {
        let r = refused_with(Some(&mut device_key()), |req| {
            req.device_signature = Some(bad)
        });
        assert_eq!(r.reason().kind(), "device_signature_invalid");
    }
}

#[test]
fn device_keys_of_the_wrong_type_or_size_are_malformed() {
    let i = inputs();
    let good = *device_key().public_key().as_bytes();
    let mut compressed = good;
    compressed[0] = 0x02;
    let mut off_curve = good;
    off_curve[64] ^= 1;
    for (key, want) in [
        (compressed.to_vec(), "device_key_invalid"),
        (off_curve.to_vec(), "device_key_invalid"),
        (vec![0x04; 65], "device_key_invalid"),
        (good[..33].to_vec(), "field_length"),
        ([good.as_slice(), &[0]].concat(), "field_length"),
    ] {
        // Seal a payload holding `key` by hand (the client refuses to build one).
        let mut payload: Value = serde_json::from_slice(
            &payload_plaintext(&i.params, i.timestamp, i.payload_nonce, Some(good)).unwrap(),
        )
        .unwrap();
        payload["device_public_key"] = Value::String(super::b64::encode(&key));
        let plaintext = serde_json::to_vec(&payload).unwrap();
        let r = refused_with(None, |req| {
            use crypto_box::aead::Aead as _;
            let one_time = crypto_box::SecretKey::from_bytes(i.one_time_secret);
            req.box_ciphertext =
                crypto_box::SalsaBox::new(&i.server_keys().public_key().to_crypto_box(), &one_time)
                    .encrypt(&i.request_box_nonce.into(), plaintext.as_slice())
                    .unwrap();
            req.signature = ClientRsaKey::from_pkcs8_pem(CLIENT_A_PEM)
                .unwrap()
                .sign_pss_sha512(&request_signature_input(req))
                .unwrap();
            req.device_signature = Some([1; 64]);
        });
        assert_eq!(r.reason().kind(), want, "{}", hex(&key));
        assert_eq!(r.public_code(), PublicCode::Malformed);
    }
}

#[test]
fn a_device_signature_changes_the_mac_and_is_covered_by_it() {
    let i = inputs();
    let request = signed(&i, None);
    let mut stripped = request.clone();
    stripped.device_signature = None;
    assert_ne!(request_mac_input(&request), request_mac_input(&stripped));
    // Stripping the device signature without re-MACing fails the HMAC (stage 4).
    let r = validate(
        &stripped,
        &state(&i),
        &i.server_keys(),
        i.remote.parse().unwrap(),
        i.now,
        &ValidationConfig::default(),
    )
    .unwrap_err();
    assert_eq!(r.reason().kind(), "hmac_mismatch");
}

#[test]
#[ignore = "rewrites the published vectors; see the module docs"]
fn regenerate_device() {
    let text = serde_json::to_string_pretty(&compute(None)).unwrap() + "\n";
    match std::env::var_os("DEVICE_VECTORS_OUT") {
        Some(path) => std::fs::write(path, text).unwrap(),
        None => println!("{text}"),
    }
}
