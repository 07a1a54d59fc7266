//! The table of bad requests: each is rejected with the expected public code, audit reason
//! and stage, and nothing is approved.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

/// A valid request from client A, built once (JSON-level cases fail before any nonce).
fn base_json() -> Value {
    static BASE: OnceLock<Value> = OnceLock::new();
    BASE.get_or_init(|| serde_json::from_slice(&body(&Forge::new(200).build())).unwrap())
        .clone()
}

fn edit_json(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut v = base_json();
    edit(v.as_object_mut().unwrap());
    serde_json::to_vec(&v).unwrap()
}

fn b64_of_len(n: usize) -> Value {
    Value::String(super::b64::encode(&vec![7u8; n]))
}

/// Makes a request body, given the state (so replay cases can submit a first copy).
type MakeBody = Box<dyn Fn(&MemoryState) -> Vec<u8>>;

/// One bad request: how to make its body (given the state, for replays), when it arrives,
/// and the expected public code, audit reason kind and stage.
struct Case {
    name: &'static str,
    make: MakeBody,
    now: u64,
    code: PublicCode,
    kind: &'static str,
    stage: Stage,
}

fn case(
    name: &'static str,
    code: PublicCode,
    kind: &'static str,
    stage: Stage,
    make: impl Fn(&MemoryState) -> Vec<u8> + 'static,
) -> Case {
    Case {
        name,
        make: Box::new(make),
        now: NOW,
        code,
        kind,
        stage,
    }
}

fn bad_request_cases() -> Vec<Case> {
    use PublicCode as C;
    use Stage as S;
    vec![
        // Shape.
        case(
            "truncated JSON",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| b"{\"version\":1,".to_vec(),
        ),
        case(
            "not UTF-8",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| vec![0xff, 0xfe, 0x00],
        ),
        case(
            "JSON array",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| b"[]".to_vec(),
        ),
        case(
            "unknown field",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("admin".into(), json!(true));
                })
            },
        ),
        case(
            "missing field",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.remove("hmac");
                })
            },
        ),
        case(
            "timestamp as string",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("timestamp".into(), json!("1700000000"));
                })
            },
        ),
        case(
            "negative timestamp",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("timestamp".into(), json!(-1));
                })
            },
        ),
        case(
            "nonce as number",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("nonce".into(), json!(5));
                })
            },
        ),
        case(
            "duplicate field",
            C::Malformed,
            "malformed_json",
            S::Shape,
            |_| {
                let mut b = edit_json(|_| {});
                b.pop();
                b.extend_from_slice(br#","version":1}"#);
                b
            },
        ),
        case(
            "unsupported version",
            C::Malformed,
            "unsupported_version",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("version".into(), json!(2));
                })
            },
        ),
        case(
            "oversized body",
            C::PayloadTooLarge,
            "body_too_large",
            S::Shape,
            |_| {
                let mut b = edit_json(|_| {});
                b.extend(std::iter::repeat_n(b' ', MAX_REQUEST_BODY_BYTES));
                b
            },
        ),
        case(
            "oversized client id",
            C::Malformed,
            "field_length",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("client_id".into(), json!("a".repeat(129)));
                })
            },
        ),
        case(
            "empty server",
            C::Malformed,
            "field_length",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("server".into(), json!(""));
                })
            },
        ),
        case(
            "client id charset",
            C::Malformed,
            "field_charset",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("client_id".into(), json!("client a"));
                })
            },
        ),
        case(
            "oversized ciphertext",
            C::Malformed,
            "field_length",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("box_ciphertext".into(), b64_of_len(2049));
                })
            },
        ),
        case(
            "oversized signature",
            C::Malformed,
            "field_length",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("signature".into(), b64_of_len(1025));
                })
            },
        ),
        case(
            "short signature (RSA-2048 size)",
            C::Malformed,
            "field_length",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("signature".into(), b64_of_len(256));
                })
            },
        ),
        case(
            "nonce of 31 bytes",
            C::Malformed,
            "field_length",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert("nonce".into(), b64_of_len(31));
                })
            },
        ),
        case(
            "bad base64 characters",
            C::Malformed,
            "field_encoding",
            S::Shape,
            |_| {
                edit_json(|m| {
                    m.insert(
                        "box_nonce".into(),
                        json!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
                    );
                })
            },
        ),
        case(
            "unpadded base64",
            C::Malformed,
            "field_encoding",
            S::Shape,
            |_| {
                edit_json(|m| {
                    let s = m["nonce"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches('=')
                        .to_owned();
                    m.insert("nonce".into(), json!(s));
                })
            },
        ),
        case(
            "base64 with a newline",
            C::Malformed,
            "field_encoding",
            S::Shape,
            |_| {
                edit_json(|m| {
                    let s = m["hmac"].as_str().unwrap();
                    let s = format!("{}\n{}", &s[..40], &s[41..]);
                    m.insert("hmac".into(), json!(s));
                })
            },
        ),
        // Timestamp.
        case(
            "stale timestamp",
            C::ClockSkew,
            "clock_skew",
            S::Timestamp,
            |_| forged(1, |f| f.timestamp = NOW - 301),
        ),
        case(
            "future timestamp",
            C::ClockSkew,
            "clock_skew",
            S::Timestamp,
            |_| forged(2, |f| f.timestamp = NOW + 301),
        ),
        // Client and HMAC.
        case(
            "unknown client",
            C::Denied,
            "unknown_client",
            S::Client,
            |_| forged(3, |f| f.client_id = "ghost".into()),
        ),
        case(
            "disabled client",
            C::Denied,
            "client_disabled",
            S::ClientEnabled,
            |_| forged(4, |f| f.client_id = CLIENT_OFF.into()),
        ),
        case("wrong HMAC", C::Denied, "hmac_mismatch", S::Hmac, |_| {
            let mut r = Forge::new(5).build();
            r.hmac[7] ^= 0x10;
            body(&r)
        }),
        case(
            "HMAC with another client's secret",
            C::Denied,
            "hmac_mismatch",
            S::Hmac,
            |_| forged(6, |f| f.secret = secret_b()),
        ),
        case(
            "field changed after MAC",
            C::Denied,
            "hmac_mismatch",
            S::Hmac,
            |_| {
                let mut r = Forge::new(7).build();
                r.timestamp += 1;
                body(&r)
            },
        ),
        // Replay of the envelope nonce.
        case(
            "replayed request",
            C::Replay,
            "request_nonce_replayed",
            S::RequestNonce,
            |state| {
                let b = forged(8, |_| {});
                assert!(run_at(&b, state, NOW).is_ok(), "first submission must pass");
                b
            },
        ),
        // Server.
        case(
            "unknown server",
            C::UnknownServer,
            "unknown_server",
            S::Server,
            |_| {
                forged(9, |f| {
                    f.server = "vpn-nope".into();
                    f.plaintext = payload_with("vpn-nope", Some("10.0.0.2"), None, NOW, 9);
                })
            },
        ),
        case(
            "server not here",
            C::ServerNotHere,
            "server_not_here",
            S::Server,
            |_| {
                forged(10, |f| {
                    f.server = SERVER_ELSEWHERE.into();
                    f.plaintext = payload_with(SERVER_ELSEWHERE, Some("10.0.0.2"), None, NOW, 10);
                })
            },
        ),
        // Signature.
        case(
            "wrong RSA signature",
            C::Denied,
            "signature_invalid",
            S::Signature,
            |_| {
                let mut r = Forge::new(11).build();
                r.signature[100] ^= 1;
                remac(&mut r, &secret_a());
                body(&r)
            },
        ),
        case(
            "RSA key of another client",
            C::Denied,
            "signature_invalid",
            S::Signature,
            |_| forged(12, |f| f.rsa = rsa_b()),
        ),
        case(
            "tampered box (signature covers it)",
            C::Denied,
            "signature_invalid",
            S::Signature,
            |_| {
                let mut r = Forge::new(13).build();
                r.box_ciphertext[30] ^= 1;
                remac(&mut r, &secret_a());
                body(&r)
            },
        ),
        case(
            "one-time key swapped",
            C::Denied,
            "signature_invalid",
            S::Signature,
            |_| {
                let mut r = Forge::new(14).build();
                r.box_public_key[0] ^= 1;
                remac(&mut r, &secret_a());
                body(&r)
            },
        ),
        // Box.
        case(
            "box sealed to another server key",
            C::Denied,
            "box_open_failed",
            S::BoxOpen,
            |_| {
                forged(15, |f| {
                    f.box_to = ServerBoxKeys::from_secret_bytes([0x66; 32])
                })
            },
        ),
        // Payload.
        case(
            "payload not JSON",
            C::Malformed,
            "payload_malformed",
            S::Payload,
            |_| forged(16, |f| f.plaintext = b"hello, server".to_vec()),
        ),
        case(
            "payload unknown field",
            C::Malformed,
            "payload_malformed",
            S::Payload,
            |_| {
                forged(17, |f| {
                    let mut v: Value = serde_json::from_slice(&f.plaintext).unwrap();
                    v["role"] = json!("admin");
                    f.plaintext = serde_json::to_vec(&v).unwrap();
                })
            },
        ),
        case(
            "payload names another server",
            C::Malformed,
            "payload_server_mismatch",
            S::Payload,
            |_| {
                forged(18, |f| {
                    f.plaintext = payload_with(SERVER_MATCH, Some("10.0.0.2"), None, NOW, 18)
                })
            },
        ),
        case(
            "payload device name with control chars",
            C::Malformed,
            "field_charset",
            S::Payload,
            |_| {
                forged(19, |f| {
                    let mut v: Value = serde_json::from_slice(&f.plaintext).unwrap();
                    v["device_name"] = json!("evil\nINFO fake log line");
                    f.plaintext = serde_json::to_vec(&v).unwrap();
                })
            },
        ),
        case(
            "stale payload timestamp",
            C::ClockSkew,
            "payload_clock_skew",
            S::PayloadTimestamp,
            |_| {
                forged(20, |f| {
                    f.plaintext = payload_with(SERVER, Some("10.0.0.2"), None, NOW - 301, 20)
                })
            },
        ),
        case(
            "future payload timestamp",
            C::ClockSkew,
            "payload_clock_skew",
            S::PayloadTimestamp,
            |_| {
                forged(21, |f| {
                    f.plaintext = payload_with(SERVER, Some("10.0.0.2"), None, NOW + 301, 21)
                })
            },
        ),
        // Replay of the payload (box) nonce under a fresh request nonce.
        case(
            "replayed payload nonce",
            C::Replay,
            "payload_nonce_replayed",
            S::PayloadNonce,
            |state| {
                let first = forged(22, |_| {});
                assert!(
                    run_at(&first, state, NOW).is_ok(),
                    "first submission must pass"
                );
                forged(23, |f| {
                    f.plaintext = payload_with(SERVER, Some("10.0.0.2"), Some("fd00::2"), NOW, 22)
                })
            },
        ),
        // Permission.
        case(
            "client not allowed on server",
            C::Denied,
            "client_not_allowed",
            S::ClientAllowed,
            |_| {
                forged(24, |f| {
                    f.server = SERVER_FORBIDDEN.into();
                    f.plaintext = payload_with(SERVER_FORBIDDEN, Some("10.0.0.2"), None, NOW, 24);
                })
            },
        ),
        // Addresses.
        case(
            "reported IPv4 loopback",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(25, |f| {
                    f.plaintext = payload_with(SERVER, Some("127.0.0.1"), None, NOW, 25)
                })
            },
        ),
        case(
            "reported IPv4 unspecified",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(26, |f| {
                    f.plaintext = payload_with(SERVER, Some("0.0.0.0"), None, NOW, 26)
                })
            },
        ),
        case(
            "reported IPv4 broadcast",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(27, |f| {
                    f.plaintext = payload_with(SERVER, Some("255.255.255.255"), None, NOW, 27)
                })
            },
        ),
        case(
            "reported IPv4 multicast",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(28, |f| {
                    f.plaintext = payload_with(SERVER, Some("224.0.0.5"), None, NOW, 28)
                })
            },
        ),
        case(
            "reported IPv4 link-local",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(29, |f| {
                    f.plaintext = payload_with(SERVER, Some("169.254.0.9"), None, NOW, 29)
                })
            },
        ),
        case(
            "reported IPv6 link-local",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(30, |f| {
                    f.plaintext = payload_with(SERVER, None, Some("fe80::1"), NOW, 30)
                })
            },
        ),
        case(
            "reported IPv6 loopback",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(31, |f| {
                    f.plaintext = payload_with(SERVER, None, Some("::1"), NOW, 31)
                })
            },
        ),
        case(
            "reported IPv4 unparsable",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(32, |f| {
                    f.plaintext = payload_with(SERVER, Some("999.1.1.1"), None, NOW, 32)
                })
            },
        ),
        case(
            "IPv6 in the IPv4 field",
            C::InvalidAddress,
            "invalid_address",
            S::Addresses,
            |_| {
                forged(33, |f| {
                    f.plaintext = payload_with(SERVER, Some("fd00::9"), None, NOW, 33)
                })
            },
        ),
        case(
            "reported address does not match remote",
            C::InvalidAddress,
            "address_mismatch",
            S::Addresses,
            |_| {
                forged(34, |f| {
                    f.server = SERVER_MATCH.into();
                    f.plaintext = payload_with(SERVER_MATCH, Some("10.0.0.3"), None, NOW, 34);
                })
            },
        ),
    ]
}

#[test]
fn bad_requests_are_rejected_with_the_right_code_and_reason() {
    let cases = bad_request_cases();
    assert!(cases.len() >= 50, "table shrank to {}", cases.len());
    for c in cases {
        let state = state();
        let body = (c.make)(&state);
        state.take_trace();
        let nonces_before = state.nonce_count();
        let result = run_at(&body, &state, c.now);
        let rejection = match result {
            Ok(approved) => panic!("{}: approved {approved:?}", c.name),
            Err(r) => r,
        };
        assert_eq!(rejection.public_code(), c.code, "{}: {rejection}", c.name);
        assert_eq!(rejection.http_status(), c.code.http_status(), "{}", c.name);
        assert_eq!(rejection.reason().kind(), c.kind, "{}: {rejection}", c.name);
        assert_eq!(rejection.reason().public_code(), c.code, "{}", c.name);
        assert_eq!(rejection.stage(), c.stage, "{}: {rejection}", c.name);
        assert_eq!(
            rejection.binding().is_some(),
            c.stage > Stage::Hmac,
            "{}: a signed denial is possible exactly when the HMAC verified",
            c.name
        );
        let body_json = serde_json::to_string(&rejection.public_body()).unwrap();
        assert_eq!(
            body_json,
            format!("{{\"error\":\"{}\"}}", c.code.as_str()),
            "{}",
            c.name
        );
        if c.stage <= Stage::Hmac {
            let trace = state.take_trace();
            assert!(
                !trace.iter().any(|s| s.is_expensive()),
                "{}: {trace:?}",
                c.name
            );
            assert_eq!(
                state.nonce_count(),
                nonces_before,
                "{}: nonce recorded",
                c.name
            );
        }
    }
}
