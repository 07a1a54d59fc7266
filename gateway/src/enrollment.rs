//! Sealed enrollment without moving private keys: the link the operator hands out, and the
//! boxed messages the client and the controller exchange through the (untrusted) web front.
//!
//! The operator runs `xdpgate clients add NAME --server S` and gets a single-use link that
//! expires. It carries the token, the SHA-256 pin of the web front's certificate and the
//! controller's long-term NaCl box public key. The client generates its RSA key pair itself,
//! boxes `{token, RSA public key, device name}` from a one-time X25519 key to the controller's
//! key, and the controller answers boxed from its long-term key to that one-time key, echoing
//! the SHA-256 of the request plaintext. The web front relays ciphertext it can neither read
//! nor alter undetected (`docs/PROTOCOL.md`, "Enrollment"). The envelopes and their strict
//! decoding are `xdpgate_protocol::enrollment` (re-exported here); this module adds the boxes
//! and the link. It is pure: no I/O.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crypto_box::aead::Aead as _;
use zeroize::Zeroizing;

pub use xdpgate_protocol::enrollment::*;

use crate::approval::{BOX_NONCE_LEN, BOX_PUBLIC_KEY_LEN, BoxPublicKey, HmacSecret, ServerBoxKeys};

/// Controller side of a [`SealedEnrollRequest`]: opening its box.
pub trait OpenSealedRequest {
    /// Opens the box with the controller's long-term key and parses the plaintext strictly.
    /// The returned [`OpenedEnrollment`] seals the answer.
    fn open(
        &self,
        keys: &ServerBoxKeys,
    ) -> Result<(EnrollRequest, OpenedEnrollment), EnrollmentError>;
}

impl OpenSealedRequest for SealedEnrollRequest {
    fn open(
        &self,
        keys: &ServerBoxKeys,
    ) -> Result<(EnrollRequest, OpenedEnrollment), EnrollmentError> {
        let client = BoxPublicKey::from_bytes(self.client_box_public_key).to_crypto_box();
        let shared = crypto_box::SalsaBox::new(&client, keys.secret());
        let plaintext = Zeroizing::new(
            shared
                .decrypt(&self.box_nonce.into(), self.ciphertext.as_slice())
                .map_err(|_| EnrollmentError::BoxOpen)?,
        );
        let request = parse_enroll_request(&plaintext)?;
        Ok((
            request,
            OpenedEnrollment {
                shared,
                request_sha256: sha256_hex(&plaintext),
            },
        ))
    }
}

/// A request the controller opened: seals the answer to the request's one-time key.
pub struct OpenedEnrollment {
    shared: crypto_box::SalsaBox,
    request_sha256: String,
}

impl std::fmt::Debug for OpenedEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedEnrollment")
            .field("request_sha256", &self.request_sha256)
            .finish_non_exhaustive()
    }
}

impl OpenedEnrollment {
    /// Hex SHA-256 of the request plaintext (goes into the answer).
    pub fn request_sha256(&self) -> &str {
        &self.request_sha256
    }

    /// Boxes `answer` (its `request_sha256` must be this request's) with a random nonce.
    pub fn seal(&self, answer: &EnrollResponse) -> Result<SealedEnrollAnswer, EnrollmentError> {
        self.seal_with_nonce(answer, random_array()?)
    }

    /// [`Self::seal`] with a caller-chosen nonce (test vectors).
    pub fn seal_with_nonce(
        &self,
        answer: &EnrollResponse,
        box_nonce: [u8; BOX_NONCE_LEN],
    ) -> Result<SealedEnrollAnswer, EnrollmentError> {
        if answer.request_sha256 != self.request_sha256 {
            return Err(EnrollmentError::Seal("answer bound to another request"));
        }
        let plaintext = Zeroizing::new(
            serde_json::to_vec(answer)
                .map_err(|_| EnrollmentError::Seal("JSON encoding failed"))?,
        );
        let ciphertext = self
            .shared
            .encrypt(&box_nonce.into(), plaintext.as_slice())
            .map_err(|_| EnrollmentError::Seal("box"))?;
        Ok(SealedEnrollAnswer {
            box_nonce,
            ciphertext,
        })
    }
}

/// A request the client sent: opens the controller's answer. Holds the one-time secret key.
pub struct PendingEnrollment {
    shared: crypto_box::SalsaBox,
    request_sha256: String,
}

impl std::fmt::Debug for PendingEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingEnrollment")
            .field("request_sha256", &self.request_sha256)
            .finish_non_exhaustive()
    }
}

/// Client side: boxes `request` from a fresh one-time key to `controller_key`.
pub fn seal_request(
    request: &EnrollRequest,
    controller_key: BoxPublicKey,
    controller: Option<String>,
) -> Result<(SealedEnrollRequest, PendingEnrollment), EnrollmentError> {
    seal_request_with(
        request,
        controller_key,
        controller,
        random_array()?,
        random_array()?,
    )
}

/// [`seal_request`] with a caller-chosen one-time secret key and nonce (test vectors).
pub fn seal_request_with(
    request: &EnrollRequest,
    controller_key: BoxPublicKey,
    controller: Option<String>,
    one_time_secret: [u8; 32],
    box_nonce: [u8; BOX_NONCE_LEN],
) -> Result<(SealedEnrollRequest, PendingEnrollment), EnrollmentError> {
    let secret = crypto_box::SecretKey::from_bytes(one_time_secret);
    let client_box_public_key = *secret.public_key().as_bytes();
    let shared = crypto_box::SalsaBox::new(&controller_key.to_crypto_box(), &secret);
    let plaintext = Zeroizing::new(
        serde_json::to_vec(request).map_err(|_| EnrollmentError::Seal("JSON encoding failed"))?,
    );
    if plaintext.len() > MAX_ENROLL_PLAINTEXT_BYTES {
        return Err(EnrollmentError::Malformed("request too large".into()));
    }
    let ciphertext = shared
        .encrypt(&box_nonce.into(), plaintext.as_slice())
        .map_err(|_| EnrollmentError::Seal("box"))?;
    let sealed = SealedEnrollRequest {
        controller,
        client_box_public_key,
        box_nonce,
        ciphertext,
    };
    Ok((
        sealed,
        PendingEnrollment {
            shared,
            request_sha256: sha256_hex(&plaintext),
        },
    ))
}

impl PendingEnrollment {
    /// Opens and checks the controller's answer body: the box must open with the link's
    /// controller key and this request's one-time key, the plaintext must be strict JSON
    /// answering this request, and its HMAC secret must be usable.
    pub fn open_answer(&self, body: &[u8]) -> Result<EnrollResponse, EnrollmentError> {
        let sealed = SealedEnrollAnswer::parse(body)?;
        let plaintext = Zeroizing::new(
            self.shared
                .decrypt(&sealed.box_nonce.into(), sealed.ciphertext.as_slice())
                .map_err(|_| EnrollmentError::AnswerNotSealed)?,
        );
        let answer: EnrollResponse = serde_json::from_slice(&plaintext)
            .map_err(|err| EnrollmentError::AnswerMalformed(err.to_string()))?;
        if !constant_time_eq(
            answer.request_sha256.as_bytes(),
            self.request_sha256.as_bytes(),
        ) {
            return Err(EnrollmentError::AnswerNotBound);
        }
        HmacSecret::from_base64(&answer.hmac_secret)
            .map_err(|err| EnrollmentError::AnswerMalformed(format!("hmac_secret: {err}")))?;
        if answer.client_id.is_empty() || answer.servers.is_empty() {
            return Err(EnrollmentError::AnswerMalformed(
                "no client id or no servers".into(),
            ));
        }
        if let Some(totp) = &answer.totp {
            let ok = totp.algorithm == "SHA1"
                && (6..=8).contains(&totp.digits)
                && (15..=300).contains(&totp.period)
                && !totp.servers.is_empty()
                && crate::passcode::TotpSecret::from_base32(&totp.secret).is_ok();
            if !ok {
                return Err(EnrollmentError::AnswerMalformed(
                    "totp: not SHA1, 6-8 digits, 15-300 s, a secret and servers".into(),
                ));
            }
        }
        Ok(answer)
    }

    /// Hex SHA-256 of the request plaintext.
    pub fn request_sha256(&self) -> &str {
        &self.request_sha256
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::tls::to_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn random_array<const N: usize>() -> Result<[u8; N], EnrollmentError> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| EnrollmentError::Seal("the system random generator failed"))?;
    Ok(bytes)
}

/// What an enrollment link carries: where to enroll, the token, the pin of the web front's
/// certificate, the controller's long-term box public key and, in a cluster, the issuing
/// controller's node name. Written
/// `https://HOST:PORT/v1/enroll#token=T&pin=sha256:HEX&box=B64URL[&controller=NAME]`.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentLink {
    /// The web front's base URL, e.g. `https://vpn.example.net:8443`.
    pub base_url: String,
    /// The single-use token.
    pub token: String,
    /// Lower-case hex SHA-256 of the web front's certificate (DER).
    pub cert_sha256: String,
    /// The controller's long-term box public key: the enrollment is sealed to it.
    pub controller_box_key: BoxPublicKey,
    /// The issuing controller's cluster node name (web nodes route the enrollment to it).
    pub controller: Option<String>,
}

impl std::fmt::Debug for EnrollmentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentLink")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .field("cert_sha256", &self.cert_sha256)
            .field("controller_box_key", &self.controller_box_key)
            .field("controller", &self.controller)
            .finish()
    }
}

impl std::fmt::Display for EnrollmentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base = self.base_url.trim_end_matches('/');
        let key = URL_SAFE_NO_PAD.encode(self.controller_box_key.to_bytes());
        write!(
            f,
            "{base}{ENROLL_PATH}#token={}&pin=sha256:{}&box={key}",
            self.token, self.cert_sha256
        )?;
        if let Some(controller) = &self.controller {
            write!(f, "&controller={controller}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for EnrollmentLink {
    type Err = EnrollmentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| EnrollmentError::BadLink(why.to_owned());
        let (url, fragment) = text
            .trim()
            .split_once('#')
            .ok_or_else(|| bad("no #token=…&pin=…&box=… part"))?;
        let base_url = url
            .strip_suffix(ENROLL_PATH)
            .ok_or_else(|| bad("path is not /v1/enroll"))?;
        if !base_url.starts_with("https://") || base_url.len() <= "https://".len() {
            return Err(bad("not an https:// URL"));
        }
        let (mut token, mut pin, mut key, mut controller) = (None, None, None, None);
        for pair in fragment.split('&') {
            let slot = match pair.split_once('=') {
                Some(("token", value)) => (&mut token, value),
                Some(("pin", value)) => (
                    &mut pin,
                    value
                        .strip_prefix("sha256:")
                        .ok_or_else(|| bad("pin is not sha256:"))?,
                ),
                Some(("box", value)) => (&mut key, value),
                Some(("controller", value)) => (&mut controller, value),
                _ => return Err(bad("unexpected part after #")),
            };
            if slot.0.replace(slot.1.to_owned()).is_some() {
                return Err(bad("a part after # is repeated"));
            }
        }
        let token = token.ok_or_else(|| bad("no token"))?;
        let cert_sha256 = pin.ok_or_else(|| bad("no sha256 pin"))?;
        let pin_ok = cert_sha256.len() == 64
            && cert_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !pin_ok {
            return Err(bad("pin must be 64 lower-case hex digits"));
        }
        if token.len() != token_text_len() {
            return Err(bad("token has the wrong length"));
        }
        let key = key.ok_or_else(|| {
            bad("no box= controller key (a link from before sealed enrollment); ask the operator for a new link")
        })?;
        let key: [u8; BOX_PUBLIC_KEY_LEN] = URL_SAFE_NO_PAD
            .decode(&key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("box= must be 32 bytes of base64url without padding"))?;
        if controller
            .as_deref()
            .is_some_and(|c| !valid_controller_name(c))
        {
            return Err(bad("controller= is not a node name"));
        }
        Ok(Self {
            base_url: base_url.to_owned(),
            token,
            cert_sha256,
            controller_box_key: BoxPublicKey::from_bytes(key),
            controller,
        })
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{Value, json};

    use super::*;

    /// Read at run time, so `regenerate_enrollment_vectors` and this test share one build.
    fn vectors_json() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/enrollment-test-vectors.json"
        );
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn key_bytes(start: u8) -> [u8; 32] {
        std::array::from_fn(|i| start.wrapping_add(i as u8))
    }

    fn link() -> EnrollmentLink {
        EnrollmentLink {
            base_url: "https://10.0.0.1:8443".into(),
            token: "A".repeat(token_text_len()),
            cert_sha256: "ab".repeat(32),
            controller_box_key: ServerBoxKeys::from_secret_bytes(key_bytes(1)).public_key(),
            controller: None,
        }
    }

    fn request() -> EnrollRequest {
        EnrollRequest {
            token: "A".repeat(token_text_len()),
            rsa_public_key_pem: "-----BEGIN PUBLIC KEY-----".into(),
            device_name: "laptop".into(),
        }
    }

    fn answer(request_sha256: &str) -> EnrollResponse {
        EnrollResponse {
            request_sha256: request_sha256.to_owned(),
            client_id: "alice".into(),
            hmac_secret: HmacSecret::from_bytes(&[7; 64])
                .unwrap()
                .to_base64()
                .to_string(),
            servers: vec!["vpn1".into()],
            totp: None,
        }
    }

    #[test]
    fn link_round_trips_and_hides_the_token_in_debug() {
        let text = link().to_string();
        assert!(
            text.starts_with("https://10.0.0.1:8443/v1/enroll#token="),
            "{text}"
        );
        assert!(text.contains("&box="), "{text}");
        assert_eq!(text.parse::<EnrollmentLink>().unwrap(), link());
        assert!(!format!("{:?}", link()).contains("AAAA"));
        let clustered = EnrollmentLink {
            controller: Some("ctl-a".into()),
            ..link()
        };
        assert_eq!(
            clustered.to_string().parse::<EnrollmentLink>().unwrap(),
            clustered
        );
    }

    #[test]
    fn bad_links_are_refused() {
        let good = link().to_string();
        let (without_box, _) = good.split_once("&box=").unwrap();
        for bad in [
            good.replace("https://", "http://"),
            good.replace("/v1/enroll", "/v1/other"),
            good.replace("&pin=sha256:", "&pin=md5:"),
            good.replace("#", "?"),
            good.replace("token=A", "token=AA"),
            good.replace("&box=", "&box=A"),
            format!("{good}&extra=1"),
            format!("{good}&controller=Bad_Name"),
            format!("{good}&token={}", "A".repeat(token_text_len())),
        ] {
            assert!(bad.parse::<EnrollmentLink>().is_err(), "{bad}");
        }
        let old = without_box.parse::<EnrollmentLink>().unwrap_err();
        assert!(
            old.to_string().contains("ask the operator for a new link"),
            "{old}"
        );
    }

    #[test]
    fn enroll_requests_are_parsed_strictly() {
        let ok = request();
        let body = serde_json::to_vec(&ok).unwrap();
        assert_eq!(parse_enroll_request(&body).unwrap(), ok);
        let extra = br#"{"token":"x","rsa_public_key_pem":"y","device_name":"z","admin":true}"#;
        assert!(
            parse_enroll_request(extra).is_err(),
            "unknown fields are refused"
        );
        let mut short = ok.clone();
        short.token = "short".into();
        assert!(parse_enroll_request(&serde_json::to_vec(&short).unwrap()).is_err());
        let mut control = ok.clone();
        control.device_name = "a\nb".into();
        assert!(parse_enroll_request(&serde_json::to_vec(&control).unwrap()).is_err());
        assert!(parse_enroll_request(&vec![b' '; MAX_ENROLL_PLAINTEXT_BYTES + 1]).is_err());
    }

    #[test]
    fn sealed_enrollment_round_trips_and_binds_the_answer_to_the_request() {
        let controller = ServerBoxKeys::from_secret_bytes(key_bytes(1));
        let (sealed, pending) =
            seal_request(&request(), controller.public_key(), Some("ctl-a".into())).unwrap();
        let body = sealed.to_json().unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            !text.contains("laptop") && !text.contains("AAAA"),
            "the front sees no plaintext: {text}"
        );
        let parsed = SealedEnrollRequest::parse(&body).unwrap();
        assert_eq!(parsed, sealed);
        let (opened_request, opened) = parsed.open(&controller).unwrap();
        assert_eq!(opened_request, request());
        assert_eq!(opened.request_sha256(), pending.request_sha256());
        let answer_body = opened
            .seal(&answer(opened.request_sha256()))
            .unwrap()
            .to_json()
            .unwrap();
        assert!(!String::from_utf8_lossy(&answer_body).contains("alice"));
        assert_eq!(
            pending.open_answer(&answer_body).unwrap(),
            answer(pending.request_sha256())
        );

        // Another controller's key cannot open the request.
        let other = ServerBoxKeys::from_secret_bytes(key_bytes(2));
        assert_eq!(parsed.open(&other).unwrap_err(), EnrollmentError::BoxOpen);
        // An answer sealed by anyone else (a front that swapped the box key) does not open.
        let client_key = BoxPublicKey::from_bytes(sealed.client_box_public_key).to_crypto_box();
        let forged_box = crypto_box::SalsaBox::new(&client_key, other.secret());
        let forged = OpenedEnrollment {
            shared: forged_box,
            request_sha256: pending.request_sha256().to_owned(),
        };
        let forged_body = forged
            .seal(&answer(pending.request_sha256()))
            .unwrap()
            .to_json()
            .unwrap();
        assert_eq!(
            pending.open_answer(&forged_body).unwrap_err(),
            EnrollmentError::AnswerNotSealed
        );
        // A flipped ciphertext byte does not open.
        let mut flipped = SealedEnrollAnswer::parse(&answer_body).unwrap();
        flipped.ciphertext[0] ^= 1;
        let flipped_body = flipped.to_json().unwrap();
        assert_eq!(
            pending.open_answer(&flipped_body).unwrap_err(),
            EnrollmentError::AnswerNotSealed
        );
        // The controller's answer to another request of the same client key is not accepted.
        let real_box = crypto_box::SalsaBox::new(&client_key, controller.secret());
        let unbound = OpenedEnrollment {
            shared: real_box,
            request_sha256: "00".repeat(32),
        };
        let unbound_body = unbound
            .seal(&answer(&"00".repeat(32)))
            .unwrap()
            .to_json()
            .unwrap();
        assert_eq!(
            pending.open_answer(&unbound_body).unwrap_err(),
            EnrollmentError::AnswerNotBound
        );
        // Sealing refuses an answer bound to another request.
        assert!(opened.seal(&answer(&"00".repeat(32))).is_err());
    }

    #[test]
    fn sealed_envelopes_are_parsed_strictly() {
        let controller = ServerBoxKeys::from_secret_bytes(key_bytes(1));
        let (sealed, _) = seal_request(&request(), controller.public_key(), None).unwrap();
        let good: Value = serde_json::from_slice(&sealed.to_json().unwrap()).unwrap();
        let with = |key: &str, value: Value| {
            let mut v = good.clone();
            v[key] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let bad = [
            with("version", json!(2)),
            with("admin", json!(true)),
            with("controller", json!("Bad_Name")),
            with("client_box_public_key", json!(STANDARD.encode([0u8; 31]))),
            with("box_nonce", json!(URL_SAFE_NO_PAD.encode([0xffu8; 24]))),
            with("ciphertext", json!(STANDARD.encode([0u8; 16]))),
            with("ciphertext", json!("A".repeat(MAX_ENROLL_BODY_BYTES))),
            br#"[]"#.to_vec(),
        ];
        for body in bad {
            let err = SealedEnrollRequest::parse(&body).unwrap_err();
            assert!(
                matches!(err, EnrollmentError::Malformed(_)),
                "{err:?} for {}",
                String::from_utf8_lossy(&body)
            );
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("box_nonce");
        assert!(SealedEnrollRequest::parse(&serde_json::to_vec(&missing).unwrap()).is_err());
        // The answer plaintext is strict too: an unknown field is refused after opening.
        let (sealed, pending) = seal_request(&request(), controller.public_key(), None).unwrap();
        let (_, opened) = sealed.open(&controller).unwrap();
        let mut plaintext = serde_json::to_value(answer(opened.request_sha256())).unwrap();
        plaintext["admin"] = json!(true);
        let ciphertext = opened
            .shared
            .encrypt(
                &[9u8; 24].into(),
                serde_json::to_vec(&plaintext).unwrap().as_slice(),
            )
            .unwrap();
        let body = SealedEnrollAnswer {
            box_nonce: [9; 24],
            ciphertext,
        }
        .to_json()
        .unwrap();
        assert!(matches!(
            pending.open_answer(&body),
            Err(EnrollmentError::AnswerMalformed(_))
        ));
    }

    /// Everything the vectors file states, recomputed from its inputs.
    fn compute_vectors(rsa_public_key_pem: &str) -> Value {
        let controller = ServerBoxKeys::from_secret_bytes(key_bytes(0x40));
        let one_time_secret = key_bytes(0x60);
        let request = EnrollRequest {
            token: URL_SAFE_NO_PAD.encode(key_bytes(0x10)),
            rsa_public_key_pem: rsa_public_key_pem.to_owned(),
            device_name: "laptop-1".into(),
        };
        let request_box_nonce: [u8; 24] = std::array::from_fn(|i| 0xc0 + i as u8);
        let answer_box_nonce: [u8; 24] = std::array::from_fn(|i| 0xe0 + i as u8);
        let (sealed, pending) = seal_request_with(
            &request,
            controller.public_key(),
            Some("ctl-a".into()),
            one_time_secret,
            request_box_nonce,
        )
        .unwrap();
        let (_, opened) = sealed.open(&controller).unwrap();
        let answer = EnrollResponse {
            request_sha256: opened.request_sha256().to_owned(),
            client_id: "client-0001".into(),
            hmac_secret: HmacSecret::from_bytes(&key_bytes(0x00).repeat(2))
                .unwrap()
                .to_base64()
                .to_string(),
            servers: vec!["vpn1".into()],
            totp: None,
        };
        let answer_body = opened
            .seal_with_nonce(&answer, answer_box_nonce)
            .unwrap()
            .to_json()
            .unwrap();
        assert_eq!(pending.open_answer(&answer_body).unwrap(), answer);
        let link = EnrollmentLink {
            base_url: "https://vpn.example.net:8443".into(),
            token: request.token.clone(),
            cert_sha256: "ab".repeat(32),
            controller_box_key: controller.public_key(),
            controller: Some("ctl-a".into()),
        };
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        json!({
            "description": "Sealed enrollment (docs/PROTOCOL.md, Enrollment). All keys and nonces are fixed test values; base64 is padded standard base64 except in the link.",
            "controller_box_secret_key": controller.to_base64().to_string(),
            "controller_box_public_key": controller.public_key().to_base64(),
            "link": link.to_string(),
            "client_one_time_secret_key": STANDARD.encode(one_time_secret),
            "client_one_time_public_key": STANDARD.encode(sealed.client_box_public_key),
            "request_plaintext": text(serde_json::to_vec(&request).unwrap()),
            "request_plaintext_sha256": pending.request_sha256(),
            "request_box_nonce": STANDARD.encode(request_box_nonce),
            "request_body": text(sealed.to_json().unwrap()),
            "answer_plaintext": text(serde_json::to_vec(&answer).unwrap()),
            "answer_box_nonce": STANDARD.encode(answer_box_nonce),
            "answer_body": text(answer_body),
        })
    }

    #[test]
    fn published_enrollment_vectors_are_recomputed() {
        let published: Value = serde_json::from_str(&vectors_json()).unwrap();
        let pem = published["request_plaintext"]
            .as_str()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .unwrap();
        let pem = pem["rsa_public_key_pem"].as_str().unwrap().to_owned();
        crate::approval::ClientRsaPublicKey::from_pem(&pem)
            .expect("the vectors' RSA key is a valid 4096-bit key");
        assert_eq!(compute_vectors(&pem), published);
        // The controller opens the published request body to the published plaintext.
        let controller =
            ServerBoxKeys::from_base64(published["controller_box_secret_key"].as_str().unwrap())
                .unwrap();
        let body = published["request_body"].as_str().unwrap().as_bytes();
        let (request, _) = SealedEnrollRequest::parse(body)
            .unwrap()
            .open(&controller)
            .unwrap();
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            published["request_plaintext"].as_str().unwrap()
        );
    }

    /// `ENROLLMENT_VECTORS_OUT=docs/enrollment-test-vectors.json RSA_PEM=pub.pem cargo test
    /// regenerate_enrollment -- --ignored` writes the file after a deliberate change.
    #[test]
    #[ignore = "writes the vectors file"]
    fn regenerate_enrollment_vectors() {
        let out = std::env::var("ENROLLMENT_VECTORS_OUT").unwrap();
        let pem = std::fs::read_to_string(std::env::var("RSA_PEM").unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&compute_vectors(&pem)).unwrap();
        std::fs::write(out, format!("{text}\n")).unwrap();
    }
}
