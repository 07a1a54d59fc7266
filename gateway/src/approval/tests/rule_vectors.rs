//! Recomputes `docs/key-rules-test-vectors.json` (§1) and
//! `docs/address-policy-test-vectors.json` (§7) with the implementation.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;
use crate::approval::address::{CheckedReported, Reported, check_reported};
use crate::approval::validate::refuse_gateway_addresses;

const KEY_RULES: &str = include_str!("../../../../docs/key-rules-test-vectors.json");
const ADDRESS_POLICY: &str = include_str!("../../../../docs/address-policy-test-vectors.json");

#[test]
fn key_rule_vectors() {
    let v: Value = serde_json::from_str(KEY_RULES).unwrap();
    let boxes = v["box_public_keys"].as_array().unwrap();
    assert!(boxes.len() >= 10);
    for case in boxes {
        let name = case["name"].as_str().unwrap();
        let key: [u8; 32] = unhex(case["key"].as_str().unwrap()).try_into().unwrap();
        let want = case["accepted"].as_bool().unwrap();
        assert_eq!(BoxPublicKey::from_bytes(key).is_strong(), want, "{name}");
    }
    let rsa = v["rsa_public_keys"].as_array().unwrap();
    assert!(rsa.len() >= 6);
    for case in rsa {
        let name = case["name"].as_str().unwrap();
        let der = unhex(case["pkcs1_der"].as_str().unwrap());
        let got = ClientRsaPublicKey::from_pkcs1_der(&der);
        match case["error"].as_str() {
            None => {
                assert!(case["accepted"].as_bool().unwrap(), "{name}");
                got.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            Some("rsa_size") => {
                let bits = usize::try_from(case["bits"].as_u64().unwrap()).unwrap();
                assert!(
                    matches!(got, Err(KeyError::RsaSize { bits: b }) if b == bits),
                    "{name}: {got:?}"
                );
            }
            Some("rsa_exponent") => {
                assert!(matches!(got, Err(KeyError::RsaExponent)), "{name}: {got:?}")
            }
            Some(other) => panic!("{name}: unknown error {other}"),
        }
    }
}

#[test]
fn address_policy_vectors() {
    let v: Value = serde_json::from_str(ADDRESS_POLICY).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let policy: AddressPolicy = serde_json::from_value(case["policy"].clone()).unwrap();
        let remote = ip(case["remote"].as_str().unwrap());
        let mut state = MemoryState::new();
        for g in case["gateway"].as_array().unwrap() {
            state.add_gateway_address(ip(g.as_str().unwrap()));
        }
        let decided = check_reported(Reported {
            ipv4: case["reported_ipv4"].as_str(),
            ipv6: case["reported_ipv6"].as_str(),
        })
        .and_then(|reported: CheckedReported| {
            let open = select_addresses(policy, remote, reported.ipv4, reported.ipv6)?;
            refuse_gateway_addresses(&state, &reported, &open)?;
            Ok(open)
        });
        match case["error"].as_str() {
            None => {
                let want: Vec<IpAddr> = case["open"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| ip(a.as_str().unwrap()))
                    .collect();
                assert_eq!(decided, Ok(want), "{name}");
            }
            Some(kind) => {
                let err = decided.expect_err(name);
                assert_eq!(err.kind(), kind, "{name}: {err}");
            }
        }
    }
}
