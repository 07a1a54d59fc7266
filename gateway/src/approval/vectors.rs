//! Checks the published test vectors (`docs/approval-test-vectors.json`, and the values quoted
//! in `docs/PROTOCOL.md`) against this implementation, and cross-checks the RSA-PSS signature
//! with a second implementation (the `rsa` crate).
//!
//! To regenerate the file after a deliberate protocol change:
//! `APPROVAL_VECTORS_OUT=/path/to/docs/approval-test-vectors.json cargo test regenerate -- --ignored`
//! (the RSA-PSS signature is randomised, so a regenerated file has a new signature, MAC and
//! body; everything else is stable).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::IpAddr;

use crypto_box::aead::Aead as _;
use serde_json::{Value, json};

use super::client::{RequestEntropy, build_request_with, payload_plaintext};
use super::response::{ResponsePlaintextJson, seal_response_with_nonce};
use super::testkit::{CLIENT_A_PEM, hex, unhex};
use super::*;

const VECTORS_JSON: &str = include_str!("../../../docs/approval-test-vectors.json");
const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

/// Bytes `start, start+1, …` of length `N`.
pub(super) fn counting<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

/// The fixed inputs of the vectors.
pub(super) struct Inputs {
    pub(super) client_id: &'static str,
    pub(super) hmac_secret: [u8; 64],
    pub(super) server_box_secret: [u8; 32],
    pub(super) one_time_secret: [u8; 32],
    pub(super) request_nonce: [u8; 32],
    pub(super) payload_nonce: [u8; 32],
    pub(super) request_box_nonce: [u8; 24],
    pub(super) response_box_nonce: [u8; 24],
    pub(super) timestamp: u64,
    pub(super) now: u64,
    pub(super) remote: &'static str,
    pub(super) params: RequestParams,
    pub(super) connect: ConnectTarget,
    pub(super) expires: u64,
}

pub(super) fn inputs() -> Inputs {
    Inputs {
        client_id: "client-0001",
        hmac_secret: counting(0x00),
        server_box_secret: counting(0x40),
        one_time_secret: counting(0x60),
        request_nonce: counting(0x80),
        payload_nonce: counting(0xa0),
        request_box_nonce: counting(0xc0),
        response_box_nonce: counting(0xe0),
        timestamp: 1_700_000_000,
        now: 1_700_000_010,
        remote: "203.0.113.7",
        params: RequestParams {
            server: "vpn-eu-1".into(),
            public_ipv4: Some("203.0.113.7".parse().unwrap()),
            public_ipv6: Some("2001:db8::7".parse().unwrap()),
            client_version: "1.0.0".into(),
            device_name: "vector-laptop".into(),
            passcode: None,
        },
        connect: ConnectTarget {
            host_ipv4: Some("198.51.100.1".parse().unwrap()),
            host_ipv6: Some("2001:db8:1::1".parse().unwrap()),
            port: 1194,
            protocol: TransportProtocol::Udp,
        },
        expires: 1_700_003_600,
    }
}

impl Inputs {
    pub(super) fn entropy(&self) -> RequestEntropy {
        RequestEntropy {
            request_nonce: self.request_nonce,
            payload_nonce: self.payload_nonce,
            one_time_secret: zeroize::Zeroizing::new(self.one_time_secret),
            box_nonce: self.request_box_nonce,
        }
    }

    pub(super) fn secret(&self) -> HmacSecret {
        HmacSecret::from_bytes(&self.hmac_secret).unwrap()
    }

    pub(super) fn server_keys(&self) -> ServerBoxKeys {
        ServerBoxKeys::from_secret_bytes(self.server_box_secret)
    }

    pub(super) fn creds(&self) -> ClientCredentials {
        ClientCredentials::new(
            self.client_id.into(),
            self.secret(),
            ClientRsaKey::from_pkcs8_pem(CLIENT_A_PEM).unwrap(),
            self.server_keys().public_key(),
        )
        .unwrap()
    }

    pub(super) fn state(&self) -> MemoryState {
        let mut s = MemoryState::new();
        s.add_client(ClientRecord {
            client_id: self.client_id.into(),
            enabled: true,
            hmac_secret: self.secret(),
            rsa_public_key: self.creds().rsa_public_key(),
        });
        s.add_server_here(
            &self.params.server,
            ServerPolicy {
                address_policy: AddressPolicy::OpenAll,
            },
        );
        s.allow(self.client_id, &self.params.server);
        s
    }
}

/// Computes every vector value; `signature` is reused when given (PSS is randomised).
fn compute(signature: Option<Vec<u8>>) -> Value {
    let i = inputs();
    let creds = i.creds();
    let (mut request, _) =
        build_request_with(&creds, &i.params, i.timestamp, &i.entropy(), None).unwrap();
    if let Some(sig) = signature {
        request.signature = sig;
        request.hmac = i.secret().sign(&request_mac_input(&request));
    }
    let plaintext = payload_plaintext(&i.params, i.timestamp, i.payload_nonce, None).unwrap();
    let remote: IpAddr = i.remote.parse().unwrap();
    let approved = validate(
        &request,
        &i.state(),
        &i.server_keys(),
        remote,
        i.now,
        &ValidationConfig::default(),
    )
    .unwrap();
    let payload = ResponsePayload::allow(i.connect, approved.open_addresses.clone(), i.expires);
    let response_plaintext =
        serde_json::to_vec(&ResponsePlaintextJson::new(&approved.binding, &payload)).unwrap();
    let response = seal_response_with_nonce(
        &approved.binding,
        &i.server_keys(),
        &i.secret(),
        &payload,
        i.response_box_nonce,
    )
    .unwrap();
    let response_mac_input = response_mac_input(&request.nonce, &request.box_public_key, &response);

    json!({
        "description": "xdpgate approval protocol v1 test vectors; see docs/PROTOCOL.md. Hex is lowercase; text fields are UTF-8.",
        "protocol_version": PROTOCOL_VERSION,
        "inputs": {
            "client_id": i.client_id,
            "hmac_secret_hex": hex(&i.hmac_secret),
            "rsa_public_key_pem": creds.rsa_public_key().to_pem().unwrap(),
            "server_box_secret_key_hex": hex(&i.server_box_secret),
            "server_box_public_key_hex": hex(&i.server_keys().public_key().to_bytes()),
            "one_time_box_secret_key_hex": hex(&i.one_time_secret),
            "one_time_box_public_key_hex": hex(&request.box_public_key),
            "request_nonce_hex": hex(&i.request_nonce),
            "payload_nonce_hex": hex(&i.payload_nonce),
            "request_box_nonce_hex": hex(&i.request_box_nonce),
            "response_box_nonce_hex": hex(&i.response_box_nonce),
            "timestamp": i.timestamp,
            "server": i.params.server,
            "public_ipv4": "203.0.113.7",
            "public_ipv6": "2001:db8::7",
            "client_version": i.params.client_version,
            "device_name": i.params.device_name,
            "remote_address": i.remote,
            "validation_time": i.now,
            "response_connect": i.connect,
            "response_expires": i.expires,
        },
        "request": {
            "payload_plaintext": String::from_utf8(plaintext.to_vec()).unwrap(),
            "box_ciphertext_hex": hex(&request.box_ciphertext),
            "signature_input_hex": hex(&request_signature_input(&request)),
            "signature_hex": hex(&request.signature),
            "mac_input_hex": hex(&request_mac_input(&request)),
            "hmac_hex": hex(&request.hmac),
            "body": String::from_utf8(request.to_json().unwrap()).unwrap(),
        },
        "response": {
            "plaintext": String::from_utf8(response_plaintext).unwrap(),
            "box_ciphertext_hex": hex(&response.box_ciphertext),
            "mac_input_hex": hex(&response_mac_input),
            "hmac_hex": hex(&response.hmac),
            "body": String::from_utf8(response.to_json().unwrap()).unwrap(),
        },
    })
}

fn published() -> Value {
    serde_json::from_str(VECTORS_JSON).expect("docs/approval-test-vectors.json is JSON")
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_else(|| panic!("vector field {path:?} missing"))
}

#[test]
fn published_vectors_match_the_implementation() {
    let file = published();
    let signature = unhex(field(&file, &["request", "signature_hex"]));
    let recomputed = compute(Some(signature));
    assert_eq!(
        recomputed, file,
        "recomputed vectors differ from docs/approval-test-vectors.json"
    );
}

#[test]
fn published_signature_verifies_with_two_implementations() {
    let file = published();
    let message = unhex(field(&file, &["request", "signature_input_hex"]));
    let sig = unhex(field(&file, &["request", "signature_hex"]));
    let pem = field(&file, &["inputs", "rsa_public_key_pem"]);

    let ours = ClientRsaPublicKey::from_pem(pem).unwrap();
    assert!(ours.verify_pss_sha512(&message, &sig), "ring verifier");

    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::signature::Verifier as _;
    let theirs = rsa::pss::VerifyingKey::<rsa::sha2::Sha512>::new(
        rsa::PublicKey::from_public_key_pem(pem).unwrap(),
    );
    let parsed = rsa::pss::Signature::try_from(sig.as_slice()).unwrap();
    assert!(
        theirs.verify(&message, &parsed).is_ok(),
        "rsa crate verifier (salt = 64)"
    );

    let mut bad = message.clone();
    bad[10] ^= 1;
    assert!(!ours.verify_pss_sha512(&bad, &sig));
    assert!(theirs.verify(&bad, &parsed).is_err());
}

#[test]
fn signature_from_the_rsa_crate_verifies_with_ours() {
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
    let i = inputs();
    let (request, _) =
        build_request_with(&i.creds(), &i.params, i.timestamp, &i.entropy(), None).unwrap();
    let message = request_signature_input(&request);
    let key = rsa::PrivateKey::from_pkcs8_pem(CLIENT_A_PEM).unwrap();
    let signer = rsa::pss::SigningKey::<rsa::sha2::Sha512>::new(key);
    let sig = signer
        .try_sign_with_rng(&mut super::rng::RsaRng::new(), &message)
        .unwrap()
        .to_vec();
    assert!(i.creds().rsa_public_key().verify_pss_sha512(&message, &sig));
}

#[test]
fn published_request_body_parses_validates_and_the_response_opens() {
    let file = published();
    let i = inputs();
    let request = parse_request(field(&file, &["request", "body"]).as_bytes()).unwrap();
    let remote: IpAddr = i.remote.parse().unwrap();
    let approved = validate(
        &request,
        &i.state(),
        &i.server_keys(),
        remote,
        i.now,
        &ValidationConfig::default(),
    )
    .unwrap();
    assert_eq!(
        approved.open_addresses,
        vec![
            "203.0.113.7".parse::<IpAddr>().unwrap(),
            "2001:db8::7".parse().unwrap()
        ]
    );

    let (_, pending) =
        build_request_with(&i.creds(), &i.params, i.timestamp, &i.entropy(), None).unwrap();
    let opened = open_response(
        &i.creds(),
        &pending,
        field(&file, &["response", "body"]).as_bytes(),
    )
    .unwrap();
    assert_eq!(
        opened,
        ResponsePayload::allow(i.connect, approved.open_addresses, i.expires)
    );
}

#[test]
fn published_box_opens_with_the_published_keys() {
    let file = published();
    let server_sk = crypto_box::SecretKey::from_slice(&unhex(field(
        &file,
        &["inputs", "server_box_secret_key_hex"],
    )))
    .unwrap();
    let one_time_pk = crypto_box::PublicKey::from_slice(&unhex(field(
        &file,
        &["inputs", "one_time_box_public_key_hex"],
    )))
    .unwrap();
    let nonce: [u8; 24] = unhex(field(&file, &["inputs", "request_box_nonce_hex"]))
        .try_into()
        .unwrap();
    let plaintext = crypto_box::SalsaBox::new(&one_time_pk, &server_sk)
        .decrypt(
            &nonce.into(),
            unhex(field(&file, &["request", "box_ciphertext_hex"])).as_slice(),
        )
        .unwrap();
    assert_eq!(
        plaintext,
        field(&file, &["request", "payload_plaintext"]).as_bytes()
    );
}

#[test]
fn protocol_doc_quotes_the_published_vectors() {
    let file = published();
    for section in ["inputs", "request", "response"] {
        for (name, value) in file[section].as_object().unwrap() {
            if let Some(text) = value.as_str().filter(|_| name.ends_with("_hex")) {
                assert!(
                    PROTOCOL_MD.contains(text),
                    "docs/PROTOCOL.md lacks {section}.{name}"
                );
            }
        }
    }
}

#[test]
#[ignore = "rewrites the published vectors; see the module docs"]
fn regenerate() {
    let text = serde_json::to_string_pretty(&compute(None)).unwrap() + "\n";
    match std::env::var_os("APPROVAL_VECTORS_OUT") {
        Some(path) => std::fs::write(path, text).unwrap(),
        None => println!("{text}"),
    }
}
