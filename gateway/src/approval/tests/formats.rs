//! Key, secret and profile formats, and redaction of secrets in `Debug`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

#[test]
fn secrets_are_redacted_in_debug() {
    let secret = secret_a();
    let keys = server_keys();
    let creds = creds_a();
    let (_, pending) = build_request(&creds, &params(), NOW).unwrap();
    let state = state();
    let approved = validate(
        &Forge::new(80).build(),
        &state,
        &keys,
        remote(),
        NOW,
        &ValidationConfig::default(),
    )
    .unwrap();
    let texts = [
        format!("{secret:?}"),
        format!("{keys:?}"),
        format!("{creds:?}"),
        format!("{pending:?}"),
        format!("{approved:?}"),
        format!("{:?}", rsa_a()),
        format!("{:?}", state.client(CLIENT_A)),
    ];
    let forbidden = [
        secret.to_base64().to_string(),
        hex(secret.expose_bytes()),
        keys.to_base64().to_string(),
        hex(keys.secret_bytes().as_ref()),
        format!("{:?}", secret.expose_bytes()),
        "PRIVATE KEY".to_owned(),
    ];
    for t in &texts {
        assert!(t.contains("redacted"), "{t}");
        for f in &forbidden {
            assert!(!t.contains(f.as_str()), "secret in debug output: {t}");
        }
    }
}

#[test]
fn hmac_secret_formats() {
    let s = HmacSecret::generate().unwrap();
    assert_eq!(s.expose_bytes().len(), HmacSecret::GENERATED_LEN);
    assert_eq!(HmacSecret::from_base64(&s.to_base64()).unwrap(), s);
    assert!(matches!(
        HmacSecret::from_bytes(&[1; 31]),
        Err(KeyError::Length { len: 31, .. })
    ));
    assert!(matches!(
        HmacSecret::from_bytes(&[1; 129]),
        Err(KeyError::Length { .. })
    ));
    assert!(matches!(
        HmacSecret::from_base64("not base64!"),
        Err(KeyError::Base64 { .. })
    ));
}

#[test]
fn server_box_key_formats() {
    let k = ServerBoxKeys::generate().unwrap();
    let back = ServerBoxKeys::from_base64(&k.to_base64()).unwrap();
    assert_eq!(back.public_key(), k.public_key());
    assert_eq!(*back.secret_bytes(), *k.secret_bytes());
    assert_eq!(
        ServerBoxKeys::from_secret_bytes(*k.secret_bytes()).public_key(),
        k.public_key()
    );
    assert_eq!(
        BoxPublicKey::from_base64(&k.public_key().to_base64()).unwrap(),
        k.public_key()
    );
    assert!(matches!(
        ServerBoxKeys::from_base64(&super::b64::encode(&[1; 31])),
        Err(KeyError::Length { .. })
    ));
    assert!(matches!(
        BoxPublicKey::from_base64("AAAA"),
        Err(KeyError::Length { .. })
    ));
}

#[test]
fn rsa_key_formats() {
    let key = rsa_a();
    let pem = key.to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = ClientRsaKey::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(again.public_key(), key.public_key());

    let public_pem = key.public_key().to_pem().unwrap();
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(
        ClientRsaPublicKey::from_pem(&public_pem).unwrap(),
        key.public_key()
    );
    assert_eq!(
        ClientRsaPublicKey::from_pkcs1_der(key.public_key().pkcs1_der()).unwrap(),
        key.public_key()
    );

    assert!(matches!(
        ClientRsaKey::from_pkcs8_pem(RSA2048_PEM),
        Err(KeyError::RsaSize { bits: 2048 })
    ));
    assert!(matches!(
        ClientRsaKey::from_pkcs8_pem(&public_pem),
        Err(KeyError::Pem { .. })
    ));
    assert!(matches!(
        ClientRsaKey::from_pkcs8_pem("garbage"),
        Err(KeyError::Pem { .. })
    ));
    assert!(matches!(
        ClientRsaPublicKey::from_pem("garbage"),
        Err(KeyError::Pem { .. })
    ));
}

const TEST_ANCHOR: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn profile() -> ClientProfile {
    ClientProfile::new(
        CLIENT_A,
        &secret_a(),
        rsa_a(),
        server_keys().public_key(),
        "https://gw.example.test:8443",
        TEST_ANCHOR,
        vec![SERVER.into(), SERVER_MATCH.into()],
    )
    .unwrap()
}

#[test]
fn profile_round_trip_and_use() {
    let p = profile();
    let text = p.to_json().unwrap();
    let back = ClientProfile::from_json(&text).unwrap();
    assert_eq!(*back.to_json().unwrap(), *text);
    let creds = back.credentials().unwrap();
    assert_eq!(creds.client_id(), CLIENT_A);
    let (request, _) = build_request(&creds, &params(), NOW).unwrap();
    let state = state();
    assert!(
        validate(
            &request,
            &state,
            &server_keys(),
            remote(),
            NOW,
            &ValidationConfig::default()
        )
        .is_ok()
    );
    let dbg = format!("{p:?}");
    assert!(
        !dbg.contains(&p.hmac_secret) && !dbg.contains("PRIVATE KEY"),
        "{dbg}"
    );
}

#[test]
fn profile_rejects_bad_input_without_echoing_secrets() {
    let p = profile();
    let mut v: Value = serde_json::from_str(&p.to_json().unwrap()).unwrap();
    v["extra"] = json!(1);
    assert!(matches!(
        ClientProfile::from_json(&v.to_string()),
        Err(ProfileError::Json { .. })
    ));

    let mut v: Value = serde_json::from_str(&p.to_json().unwrap()).unwrap();
    v["servers"] = json!(p.hmac_secret.clone());
    let err = ClientProfile::from_json(&v.to_string()).unwrap_err();
    assert!(!err.to_string().contains(&p.hmac_secret), "{err}");

    let mut q = p.clone();
    q.web_endpoint = "http://gw.example.test".into();
    assert!(matches!(
        q.check(),
        Err(ProfileError::InvalidField {
            field: "web_endpoint",
            ..
        })
    ));
    let mut q = p.clone();
    q.tls_anchor_pem = "none".into();
    assert!(matches!(
        q.check(),
        Err(ProfileError::InvalidField {
            field: "tls_anchor_pem",
            ..
        })
    ));
    let mut q = p.clone();
    q.servers.clear();
    assert!(matches!(
        q.check(),
        Err(ProfileError::InvalidField {
            field: "servers",
            ..
        })
    ));
    let mut q = p.clone();
    q.version = 9;
    assert!(matches!(
        q.check(),
        Err(ProfileError::UnsupportedVersion(9))
    ));
    let mut q = p;
    q.hmac_secret = super::b64::encode(&[1; 16]);
    assert!(matches!(
        q.credentials(),
        Err(ProfileError::Key(KeyError::Length { .. }))
    ));
}

#[test]
#[ignore = "RSA-4096 generation: seconds with optimisation, minutes without; run with --ignored"]
fn generated_rsa_key_works_end_to_end() {
    let key = ClientRsaKey::generate().unwrap();
    let pem = key.to_pkcs8_pem().unwrap();
    let creds = ClientCredentials::new(
        CLIENT_B.into(),
        secret_b(),
        ClientRsaKey::from_pkcs8_pem(&pem).unwrap(),
        server_keys().public_key(),
    )
    .unwrap();
    let mut state = state();
    state.add_client(ClientRecord {
        client_id: CLIENT_B.into(),
        enabled: true,
        hmac_secret: secret_b(),
        rsa_public_key: ClientRsaPublicKey::from_pem(&key.public_key().to_pem().unwrap()).unwrap(),
    });
    state.allow(CLIENT_B, SERVER);
    let (request, _) = build_request(&creds, &params(), NOW).unwrap();
    assert!(
        validate(
            &request,
            &state,
            &server_keys(),
            remote(),
            NOW,
            &ValidationConfig::default()
        )
        .is_ok()
    );
}

/// DER of a PKCS#1 `RSAPublicKey` with the given big-endian modulus and exponent.
fn pkcs1_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }
    fn integer(v: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        if v[0] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(v);
        tlv(0x02, &body)
    }
    let mut seq = integer(n);
    seq.extend(integer(e));
    tlv(0x30, &seq)
}

/// An odd modulus of exactly `bits` bits (not a real RSA modulus: only its size matters).
fn modulus_of_bits(bits: usize) -> Vec<u8> {
    let mut n = vec![0x5au8; bits.div_ceil(8)];
    let top_bits = bits - (n.len() - 1) * 8;
    n[0] = (0xffu8 >> (8 - top_bits)) | (1 << (top_bits - 1));
    *n.last_mut().unwrap() |= 1;
    n
}

#[test]
fn rsa_public_keys_are_checked_exactly() {
    let f4 = [0x01, 0x00, 0x01];
    let pem_of = |der: &[u8]| {
        use rsa::pkcs8::EncodePublicKey as _;
        rsa::PublicKey::from_pkcs1_der(der)
            .unwrap()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    };
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    // Every size from 4089 to 4095 bits fits in 512 bytes: each is refused by its bit length.
    for bits in [4089, 4094, 4095] {
        let der = pkcs1_der(&modulus_of_bits(bits), &f4);
        let got = ClientRsaPublicKey::from_pkcs1_der(&der);
        assert!(
            matches!(got, Err(KeyError::RsaSize { bits: b }) if b == bits),
            "{bits}: {got:?}"
        );
        let got = ClientRsaPublicKey::from_pem(&pem_of(&der));
        assert!(
            matches!(got, Err(KeyError::RsaSize { bits: b }) if b == bits),
            "{bits} (PEM): {got:?}"
        );
    }
    for bits in [4096, 6000, 8192] {
        let der = pkcs1_der(&modulus_of_bits(bits), &f4);
        ClientRsaPublicKey::from_pkcs1_der(&der).unwrap_or_else(|e| panic!("{bits}: {e}"));
        ClientRsaPublicKey::from_pem(&pem_of(&der)).unwrap_or_else(|e| panic!("{bits}: {e}"));
    }
    // Exponents other than 65537, with a valid 4096-bit modulus.
    for e in [&[0x03][..], &[0x01, 0x00, 0x03], &[0x01, 0x00, 0x00, 0x01]] {
        let der = pkcs1_der(&modulus_of_bits(4096), e);
        let got = ClientRsaPublicKey::from_pkcs1_der(&der);
        assert!(
            matches!(got, Err(KeyError::RsaExponent)),
            "e = {e:02x?}: {got:?}"
        );
        let got = ClientRsaPublicKey::from_pem(&pem_of(&der));
        assert!(
            matches!(got, Err(KeyError::RsaExponent)),
            "e = {e:02x?} (PEM): {got:?}"
        );
    }
    // Past the verifier's limit.
    let der = pkcs1_der(&modulus_of_bits(8200), &f4);
    assert!(ClientRsaPublicKey::from_pkcs1_der(&der).is_err());
}

#[test]
fn weak_one_time_box_keys_are_recognised() {
    let p_le = {
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    };
    let mut weak: Vec<[u8; 32]> = vec![[0; 32], p_le];
    // Every non-canonical spelling (u = p + k, and any key with the top bit set).
    for k in 1..19u8 {
        let mut v = p_le;
        v[0] += k;
        weak.push(v);
    }
    let mut top = server_keys().public_key().to_bytes();
    top[31] |= 0x80;
    weak.push(top);
    let mut one = [0u8; 32];
    one[0] = 1;
    weak.push(one);
    for key in &weak {
        assert!(!BoxPublicKey::from_bytes(*key).is_strong(), "{}", hex(key));
    }
    for seed in 0..32u8 {
        let key = crypto_box::SecretKey::from_bytes([seed; 32]).public_key();
        assert!(
            BoxPublicKey::from_bytes(key.to_bytes()).is_strong(),
            "seed {seed}"
        );
    }
}
