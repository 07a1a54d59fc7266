#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn key(n: u8) -> SoftwareDeviceKey {
    let mut scalar = [0u8; 32];
    scalar[31] = n;
    SoftwareDeviceKey::from_scalar(&scalar).unwrap()
}

#[test]
fn keys_are_checked_strictly() {
    let good = *key(7).public_key().as_bytes();
    assert!(DevicePublicKey::from_sec1(&good).is_ok());
    assert_eq!(
        DevicePublicKey::from_sec1(&good[..64]).unwrap_err(),
        DeviceKeyError::Length(64)
    );
    let mut compressed = good;
    compressed[0] = 0x03;
    assert_eq!(
        DevicePublicKey::from_sec1(&compressed).unwrap_err(),
        DeviceKeyError::Encoding(0x03)
    );
    let mut off = good;
    off[40] ^= 0x80;
    assert_eq!(
        DevicePublicKey::from_sec1(&off).unwrap_err(),
        DeviceKeyError::NotOnCurve
    );
    // The 33-byte compressed form of a valid key is refused too (only 65 bytes are).
    let short = p256::ecdsa::VerifyingKey::from_sec1_bytes(&good)
        .unwrap()
        .to_encoded_point(true);
    assert_eq!(
        DevicePublicKey::from_sec1(short.as_bytes()).unwrap_err(),
        DeviceKeyError::Length(33)
    );
}

#[test]
fn coordinates_are_left_padded() {
    let k = key(9);
    let bytes = k.public_key().as_bytes();
    let again = DevicePublicKey::from_coordinates(&bytes[1..33], &bytes[33..]).unwrap();
    assert_eq!(&again, k.public_key());
    assert!(DevicePublicKey::from_coordinates(&[1; 33], &bytes[33..]).is_err());
}

#[test]
fn fingerprint_and_pin_follow_the_spec() {
    let k = key(1);
    let fp = k.public_key().fingerprint();
    let digest = ring::digest::digest(&ring::digest::SHA256, k.public_key().as_bytes());
    assert_eq!(fp.0.as_slice(), digest.as_ref());
    let n = u32::from_be_bytes([fp.0[0], fp.0[1], fp.0[2], fp.0[3]]);
    assert_eq!(fp.pin(), format!("{:04}", n % 10_000));
    assert_eq!(fp.pin().len(), 4);
    assert_eq!(Fingerprint::from_hex(&fp.to_hex()), Some(fp));
    assert_eq!(Fingerprint::from_hex(&fp.to_hex().to_uppercase()), Some(fp));
    assert_eq!(Fingerprint::from_hex("00"), None);
    // Leading zeros are kept.
    assert_eq!(
        pin_of(
            &[0, 0, 0, 7]
                .iter()
                .copied()
                .chain([0; 28])
                .collect::<Vec<_>>()
                .try_into()
                .unwrap()
        ),
        "0007"
    );
    assert!(pin_matches(&fp, &fp.pin()));
    assert!(pin_matches(&fp, &format!(" {} ", fp.pin())));
    let wrong = format!("{:04}", (n % 10_000 + 1) % 10_000);
    assert!(!pin_matches(&fp, &wrong));
    assert!(!pin_matches(&fp, ""));
    assert!(!pin_matches(&fp, &format!("{}0", fp.pin())));
}

#[test]
fn software_signatures_verify_and_are_deterministic() {
    let mut k = key(3);
    let a = k.sign(b"message").unwrap();
    let b = k.sign(b"message").unwrap();
    assert_eq!(a, b, "RFC 6979");
    assert!(k.public_key().verify(b"message", &a));
    assert!(!k.public_key().verify(b"messagf", &a));
    assert!(!key(4).public_key().verify(b"message", &a));
}

#[test]
fn tpm_signature_parts_are_padded_to_32_bytes() {
    let sig = signature_from_parts(&[1, 2], &[0, 0, 3]).unwrap();
    assert_eq!(sig[30..32], [1, 2]);
    assert_eq!(sig[63], 3);
    assert!(sig[..30].iter().all(|b| *b == 0));
    assert!(signature_from_parts(&[1; 33], &[1]).is_err());
    // A 33-byte part with a leading zero is fine.
    let mut r = vec![0u8];
    r.extend_from_slice(&[9; 32]);
    assert_eq!(signature_from_parts(&r, &[1]).unwrap()[..32], [9; 32]);
}
