//! Test fixtures: fixed keys (RSA from `testdata/`, parsed once), a populated
//! [`MemoryState`], and a low-level request builder that can forge any field.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::OnceLock;

use crypto_box::aead::Aead as _;

use super::AddressPolicy;
use super::canonical::{request_mac_input, request_signature_input};
use super::client::{ClientCredentials, RequestEntropy, RequestParams};
use super::keys::{ClientRsaKey, HmacSecret, ServerBoxKeys};
use super::state::{ClientRecord, MemoryState, ServerPolicy};
use super::wire::ApprovalRequest;

pub(crate) const CLIENT_A_PEM: &str = include_str!("testdata/client_a_rsa4096.pem");
pub(crate) const CLIENT_B_PEM: &str = include_str!("testdata/client_b_rsa4096.pem");
pub(crate) const RSA2048_PEM: &str = include_str!("testdata/rsa2048_too_small.pem");

/// Client ids and server names of the fixture.
pub(crate) const CLIENT_A: &str = "client-a";
pub(crate) const CLIENT_B: &str = "client-b";
pub(crate) const CLIENT_OFF: &str = "client-disabled";
pub(crate) const SERVER: &str = "vpn-1";
pub(crate) const SERVER_FORBIDDEN: &str = "vpn-2";
pub(crate) const SERVER_MATCH: &str = "vpn-match";
pub(crate) const SERVER_ELSEWHERE: &str = "vpn-far";
pub(crate) const NOW: u64 = 1_700_000_000;

/// Client A's RSA key, parsed once.
pub(crate) fn rsa_a() -> &'static ClientRsaKey {
    static KEY: OnceLock<ClientRsaKey> = OnceLock::new();
    KEY.get_or_init(|| ClientRsaKey::from_pkcs8_pem(CLIENT_A_PEM).expect("client A test key"))
}

/// Client B's RSA key, parsed once.
pub(crate) fn rsa_b() -> &'static ClientRsaKey {
    static KEY: OnceLock<ClientRsaKey> = OnceLock::new();
    KEY.get_or_init(|| ClientRsaKey::from_pkcs8_pem(CLIENT_B_PEM).expect("client B test key"))
}

pub(crate) fn secret_a() -> HmacSecret {
    HmacSecret::from_bytes(&[0xa1; 64]).expect("secret A")
}

pub(crate) fn secret_b() -> HmacSecret {
    HmacSecret::from_bytes(&[0xb2; 48]).expect("secret B")
}

pub(crate) fn server_keys() -> ServerBoxKeys {
    ServerBoxKeys::from_secret_bytes([0x5e; 32])
}

/// Credentials for `client_id` with the given secret and RSA key (a fresh parse of the PEM, so
/// credentials can be owned).
pub(crate) fn creds(client_id: &str, secret: HmacSecret, pem: &str) -> ClientCredentials {
    ClientCredentials::new(
        client_id.to_owned(),
        secret,
        ClientRsaKey::from_pkcs8_pem(pem).expect("test key"),
        server_keys().public_key(),
    )
    .expect("credentials")
}

/// Client A's credentials.
pub(crate) fn creds_a() -> ClientCredentials {
    creds(CLIENT_A, secret_a(), CLIENT_A_PEM)
}

/// A state with clients A, B (enabled) and a disabled one; servers `vpn-1` (open all),
/// `vpn-match` (require match), `vpn-2` (A not allowed) and `vpn-far` (elsewhere).
pub(crate) fn state() -> MemoryState {
    let mut s = MemoryState::new();
    for (id, secret, key, enabled) in [
        (CLIENT_A, secret_a(), rsa_a(), true),
        (CLIENT_B, secret_b(), rsa_b(), true),
        (CLIENT_OFF, secret_a(), rsa_a(), false),
    ] {
        s.add_client(ClientRecord {
            client_id: id.to_owned(),
            enabled,
            hmac_secret: secret,
            rsa_public_key: key.public_key(),
        });
    }
    s.add_server_here(
        SERVER,
        ServerPolicy {
            address_policy: AddressPolicy::OpenAll,
        },
    );
    s.add_server_here(
        SERVER_MATCH,
        ServerPolicy {
            address_policy: AddressPolicy::RequireMatch,
        },
    );
    s.add_server_here(SERVER_FORBIDDEN, ServerPolicy::default());
    s.add_server_elsewhere(SERVER_ELSEWHERE);
    for server in [SERVER, SERVER_MATCH] {
        s.allow(CLIENT_A, server);
        s.allow(CLIENT_OFF, server);
    }
    s
}

/// The parameters of a normal request to `vpn-1`.
pub(crate) fn params() -> RequestParams {
    RequestParams {
        server: SERVER.to_owned(),
        public_ipv4: Some("10.0.0.2".parse().unwrap()),
        public_ipv6: Some("fd00::2".parse().unwrap()),
        client_version: "1.4.2".to_owned(),
        device_name: "test laptop".to_owned(),
        passcode: None,
    }
}

/// The remote address requests come from.
pub(crate) fn remote() -> IpAddr {
    "10.0.0.2".parse().unwrap()
}

/// Deterministic entropy from one seed byte.
pub(crate) fn entropy(seed: u8) -> RequestEntropy {
    RequestEntropy {
        request_nonce: [seed; 32],
        payload_nonce: [seed.wrapping_add(1); 32],
        one_time_secret: zeroize::Zeroizing::new([seed.wrapping_add(2); 32]),
        box_nonce: [seed.wrapping_add(3); 24],
    }
}

/// Everything a forged request is made of. Defaults give a valid request from client A.
pub(crate) struct Forge {
    pub(crate) client_id: String,
    pub(crate) timestamp: u64,
    pub(crate) server: String,
    pub(crate) entropy: RequestEntropy,
    pub(crate) plaintext: Vec<u8>,
    pub(crate) box_to: ServerBoxKeys,
    pub(crate) rsa: &'static ClientRsaKey,
    pub(crate) secret: HmacSecret,
}

impl Forge {
    /// A valid request's ingredients with a payload built from `params()` at `NOW`.
    pub(crate) fn new(seed: u8) -> Self {
        let entropy = entropy(seed);
        Self {
            plaintext: payload_json(
                SERVER,
                Some("10.0.0.2"),
                Some("fd00::2"),
                NOW,
                entropy.payload_nonce,
            ),
            client_id: CLIENT_A.to_owned(),
            timestamp: NOW,
            server: SERVER.to_owned(),
            entropy,
            box_to: server_keys(),
            rsa: rsa_a(),
            secret: secret_a(),
        }
    }

    /// Boxes, signs and MACs.
    pub(crate) fn build(&self) -> ApprovalRequest {
        let one_time = crypto_box::SecretKey::from_bytes(*self.entropy.one_time_secret);
        let sealed =
            crypto_box::SalsaBox::new(&self.box_to.public_key().to_crypto_box(), &one_time)
                .encrypt(&self.entropy.box_nonce.into(), self.plaintext.as_slice())
                .unwrap();
        let mut r = ApprovalRequest {
            client_id: self.client_id.clone(),
            timestamp: self.timestamp,
            server: self.server.clone(),
            nonce: self.entropy.request_nonce,
            box_public_key: one_time.public_key().to_bytes(),
            box_nonce: self.entropy.box_nonce,
            box_ciphertext: sealed,
            signature: Vec::new(),
            device_signature: None,
            hmac: [0; 64],
        };
        resign(&mut r, self.rsa, &self.secret);
        r
    }
}

/// Recomputes the signature and the HMAC after tampering.
pub(crate) fn resign(r: &mut ApprovalRequest, rsa: &ClientRsaKey, secret: &HmacSecret) {
    r.signature = rsa.sign_pss_sha512(&request_signature_input(r)).unwrap();
    remac(r, secret);
}

/// Recomputes only the HMAC after tampering.
pub(crate) fn remac(r: &mut ApprovalRequest, secret: &HmacSecret) {
    r.hmac = secret.sign(&request_mac_input(r));
}

/// A payload JSON (keys in sorted order, which the server accepts like any other order).
pub(crate) fn payload_json(
    server: &str,
    ipv4: Option<&str>,
    ipv6: Option<&str>,
    timestamp: u64,
    nonce: [u8; 32],
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "server": server,
        "public_ipv4": ipv4,
        "public_ipv6": ipv6,
        "client_version": "1.4.2",
        "device_name": "test laptop",
        "timestamp": timestamp,
        "nonce": super::b64::encode(&nonce),
    }))
    .unwrap()
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex; panics on bad input.
pub(crate) fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}
