//! Approval request decoder and validation pipeline (`approval::parse_request` →
//! `approval::validate`) against an in-memory state with one enrolled client.
//!
//! The first input byte picks a mode:
//! - 0: the rest is a request body, decoded and validated as the controller does;
//! - 1: the rest edits fields of one genuinely signed request, which is then re-MACed with
//!   the client's secret (so it gets past the HMAC to the nonce, server, signature, box and
//!   payload stages), serialised, decoded and validated;
//! - 2: the rest is the plaintext of an opened box, run through the payload and address
//!   stages (`approval::fuzzing::payload_stage`) and `select_addresses` under each policy.
//!
//! The state, keys and genuine request are those of `docs/approval-test-vectors.json`.
//! Checks: no panic; no request validates unless every field equals the genuine one (the
//! JSON may differ); every address chosen to be opened is openable and comes from the remote
//! or a checked reported address; a policy other than OpenAll opens only the remote address.
#![no_main]
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use xdpgate::approval::{
    AddressPolicy, ApprovalRequest, ClientRecord, ClientRsaPublicKey, HmacSecret, MemoryState,
    ServerBoxKeys, ServerPolicy, ValidationConfig, check_openable, fuzzing::payload_stage,
    parse_request, request_mac_input, select_addresses, validate,
};

/// The protocol's published test vectors: the fixture's keys, client, server and request.
const VECTORS: &str = include_str!("../../docs/approval-test-vectors.json");

struct Fixture {
    keys: ServerBoxKeys,
    record: ClientRecord,
    server: String,
    /// The vectors' request, which validates at `now` from `remote`.
    genuine: ApprovalRequest,
    now: u64,
    remote: IpAddr,
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let fail = |what: &str| -> ! {
            panic!("fuzz fixture from docs/approval-test-vectors.json: {what}")
        };
        let v: serde_json::Value = serde_json::from_str(VECTORS).unwrap_or_else(|_| fail("JSON"));
        let input = |key: &str| {
            v["inputs"][key]
                .as_str()
                .unwrap_or_else(|| fail(key))
                .to_owned()
        };
        let secret = unhex(&input("server_box_secret_key_hex"));
        let secret: [u8; 32] = secret
            .try_into()
            .unwrap_or_else(|_| fail("server box secret"));
        let record = ClientRecord {
            client_id: input("client_id"),
            enabled: true,
            hmac_secret: HmacSecret::from_bytes(&unhex(&input("hmac_secret_hex")))
                .unwrap_or_else(|_| fail("secret")),
            rsa_public_key: ClientRsaPublicKey::from_pem(&input("rsa_public_key_pem"))
                .unwrap_or_else(|_| fail("RSA key")),
        };
        let body = v["request"]["body"]
            .as_str()
            .unwrap_or_else(|| fail("request body"));
        let genuine = parse_request(body.as_bytes()).unwrap_or_else(|_| fail("request"));
        let fixture = Fixture {
            keys: ServerBoxKeys::from_secret_bytes(secret),
            record,
            server: input("server"),
            genuine,
            now: v["inputs"]["validation_time"]
                .as_u64()
                .unwrap_or_else(|| fail("validation_time")),
            remote: input("remote_address")
                .parse()
                .unwrap_or_else(|_| fail("remote_address")),
        };
        // The genuine request must validate, or the target checks nothing.
        let config = ValidationConfig::default();
        let checked = validate(
            &fixture.genuine,
            &state(&fixture),
            &fixture.keys,
            fixture.remote,
            fixture.now,
            &config,
        );
        if let Err(rejection) = checked {
            fail(&format!(
                "the vectors' request does not validate: {:?}",
                rejection.reason()
            ));
        }
        fixture
    })
}

fn state(f: &Fixture) -> MemoryState {
    let mut state = MemoryState::new();
    state.add_client(f.record.clone());
    state.add_server_here(
        &f.server,
        ServerPolicy {
            address_policy: AddressPolicy::OpenAll,
        },
    );
    state.add_server_elsewhere("vpn-far");
    state.allow(&f.record.client_id, &f.server);
    state
}

/// Decodes and validates `body`; a request that validates must be the genuine one.
fn decode_and_validate(body: &[u8], remote: IpAddr) {
    let f = fixture();
    let Ok(request) = parse_request(body) else {
        return;
    };
    let json = request
        .to_json()
        .unwrap_or_else(|e| panic!("a decoded request does not serialise: {e}"));
    let again = parse_request(&json)
        .unwrap_or_else(|r| panic!("re-serialised request refused: {:?}", r.reason()));
    assert_eq!(again, request, "decode(encode(request)) differs");
    if let Ok(approved) = validate(
        &request,
        &state(f),
        &f.keys,
        remote,
        f.now,
        &ValidationConfig::default(),
    ) {
        assert_eq!(
            request, f.genuine,
            "a request other than the genuine one validated"
        );
        for address in &approved.open_addresses {
            assert!(
                check_openable(*address).is_ok(),
                "would open unopenable {address}"
            );
        }
    }
}

/// One change to the genuine request.
#[derive(Arbitrary, Debug)]
enum Edit {
    ClientId(String),
    Timestamp(u64),
    Server(String),
    Nonce([u8; 32]),
    BoxPublicKey([u8; 32]),
    BoxNonce([u8; 24]),
    Ciphertext(Vec<u8>),
    FlipCiphertext(u16),
    TruncateCiphertext(u16),
    Signature(Vec<u8>),
    FlipSignature(u16),
    Hmac(Vec<u8>),
}

fn apply(request: &mut ApprovalRequest, edit: Edit) {
    let flip = |bytes: &mut Vec<u8>, at: u16| {
        if !bytes.is_empty() {
            let i = usize::from(at / 8) % bytes.len();
            bytes[i] ^= 1 << (at % 8);
        }
    };
    match edit {
        Edit::ClientId(s) => request.client_id = s,
        Edit::Timestamp(t) => request.timestamp = t,
        Edit::Server(s) => request.server = s,
        Edit::Nonce(n) => request.nonce = n,
        Edit::BoxPublicKey(k) => request.box_public_key = k,
        Edit::BoxNonce(n) => request.box_nonce = n,
        Edit::Ciphertext(c) => request.box_ciphertext = c,
        Edit::FlipCiphertext(at) => flip(&mut request.box_ciphertext, at),
        Edit::TruncateCiphertext(n) => request.box_ciphertext.truncate(usize::from(n)),
        Edit::Signature(s) => request.signature = s,
        Edit::FlipSignature(at) => flip(&mut request.signature, at),
        Edit::Hmac(h) => {
            for (dst, src) in request.hmac.iter_mut().zip(h) {
                *dst = src;
            }
        }
    }
}

fn edited(data: &[u8]) {
    let f = fixture();
    let mut u = Unstructured::new(data);
    let Ok(edits) = Vec::<Edit>::arbitrary(&mut u) else {
        return;
    };
    let remac = !bool::arbitrary(&mut u).unwrap_or(false);
    let mut request = f.genuine.clone();
    let hmac_edited = edits.iter().any(|e| matches!(e, Edit::Hmac(_)));
    for edit in edits {
        apply(&mut request, edit);
    }
    if remac && !hmac_edited {
        request.hmac = f.record.hmac_secret.sign(&request_mac_input(&request));
    }
    let Ok(body) = request.to_json() else { return };
    decode_and_validate(&body, f.remote);
}

fn payload(data: &[u8]) {
    let Some((pick, rest)) = data.split_first() else {
        return;
    };
    let (remote, plaintext) = match pick % 4 {
        0 if rest.len() >= 4 => (
            IpAddr::V4(Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3])),
            &rest[4..],
        ),
        1 if rest.len() >= 16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            (IpAddr::V6(Ipv6Addr::from(octets)), &rest[16..])
        }
        2 => (fixture().remote, rest),
        _ => (
            IpAddr::V6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped()),
            rest,
        ),
    };
    let Ok(checked) = payload_stage(plaintext) else {
        return;
    };
    for address in checked
        .ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(checked.ipv6.map(IpAddr::V6))
    {
        assert!(
            check_openable(address).is_ok(),
            "a checked reported address {address} is not openable"
        );
    }
    for policy in [
        AddressPolicy::OpenAll,
        AddressPolicy::RequireMatch,
        AddressPolicy::IgnoreReported,
    ] {
        let Ok(open) = select_addresses(policy, remote, checked.ipv4, checked.ipv6) else {
            continue;
        };
        assert!(
            !open.is_empty(),
            "{policy:?}: an empty selection was accepted"
        );
        let remote = remote.to_canonical();
        for address in &open {
            assert!(
                check_openable(*address).is_ok(),
                "{policy:?}: would open unopenable {address}"
            );
            let reported = Some(*address) == checked.ipv4.map(IpAddr::V4)
                || Some(*address) == checked.ipv6.map(IpAddr::V6);
            assert!(
                *address == remote || reported,
                "{policy:?}: {address} came from nowhere"
            );
        }
        if !matches!(policy, AddressPolicy::OpenAll) {
            assert_eq!(
                open,
                vec![remote],
                "{policy:?} opens only the remote address"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => decode_and_validate(rest, fixture().remote),
        1 => edited(rest),
        _ => payload(rest),
    }
});
