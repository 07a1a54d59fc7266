//! Enrollment decoder: the `POST /v1/enroll` body (`enrollment::parse_enroll_request`), the
//! client's RSA public key in it (`ClientRsaPublicKey::from_pem`) and the enrollment link
//! (`EnrollmentLink::from_str`). Checks: no panic; an accepted body meets every documented
//! limit; an accepted key re-encodes to a key that parses to itself; an accepted link prints
//! as a link that parses back to the same token, pin and base URL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xdpgate::{
    approval::ClientRsaPublicKey,
    enrollment::{
        EnrollmentLink, MAX_DEVICE_NAME_LEN, MAX_ENROLL_BODY_BYTES, MAX_PUBLIC_KEY_PEM_LEN,
        parse_enroll_request, token_text_len,
    },
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_enroll_request(data) {
        assert!(data.len() <= MAX_ENROLL_BODY_BYTES);
        assert_eq!(request.token.len(), token_text_len());
        assert!(
            request
                .token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(request.rsa_public_key_pem.len() <= MAX_PUBLIC_KEY_PEM_LEN);
        let name_len = request.device_name.chars().count();
        assert!((1..=MAX_DEVICE_NAME_LEN).contains(&name_len));
        assert!(!request.device_name.chars().any(char::is_control));
        if let Ok(key) = ClientRsaPublicKey::from_pem(&request.rsa_public_key_pem) {
            let pem = key
                .to_pem()
                .unwrap_or_else(|e| panic!("an accepted key does not re-encode: {e}"));
            let again = ClientRsaPublicKey::from_pem(&pem)
                .unwrap_or_else(|e| panic!("re-encoded key refused: {e}"));
            assert!(again == key, "re-encoded key differs");
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ClientRsaPublicKey::from_pem(text);
    if let Ok(link) = text.parse::<EnrollmentLink>() {
        let again: EnrollmentLink = link
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("a printed link does not parse: {e}"));
        assert_eq!(again.token, link.token);
        assert_eq!(again.cert_sha256, link.cert_sha256);
        assert_eq!(
            again.base_url.trim_end_matches('/'),
            link.base_url.trim_end_matches('/')
        );
    }
});
