//! The passcode second factor (`second_factor = "totp"`, `docs/PROTOCOL.md` §7.4): a TOTP
//! secret per client (RFC 6238, HMAC-SHA1), handed over sealed in the enrollment answer; a
//! passcode the user types travels inside the approval request's box. The controller accepts
//! the current step and one step either side, each step's passcode once per client, and locks
//! a client out for a while after too many wrong passcodes.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ring::rand::SecureRandom as _;
use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

/// Bytes of a generated TOTP secret (160 bits, RFC 4226's recommendation for HMAC-SHA1).
pub const SECRET_LEN: usize = 20;
/// Steps of clock drift accepted either side of the current one.
pub const DRIFT_STEPS: u64 = 1;

/// Errors of the passcode module.
#[derive(Debug, thiserror::Error)]
pub enum PasscodeError {
    /// The system random source failed.
    #[error("the random source failed")]
    Random,
    /// A stored or received secret is not valid base32 or is too short.
    #[error("not a TOTP secret: {0}")]
    BadSecret(String),
}

/// How passcodes are made and checked (`[approvals] totp_digits`, `totp_step_secs`,
/// `passcode_max_failures`, `passcode_lockout_secs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasscodeRules {
    /// Digits of a passcode (6 to 8).
    pub digits: u32,
    /// Seconds per TOTP step.
    pub step_secs: u64,
    /// Wrong passcodes in a row that lock a client out.
    pub max_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
}

impl Default for PasscodeRules {
    /// 6 digits, 30 s steps (what authenticator apps assume), lockout for 15 min after 5
    /// wrong passcodes.
    fn default() -> Self {
        Self {
            digits: 6,
            step_secs: 30,
            max_failures: 5,
            lockout: Duration::from_secs(900),
        }
    }
}

/// A client's TOTP secret. Zeroed when dropped; never logged.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A fresh random secret of [`SECRET_LEN`] bytes.
    pub fn generate() -> Result<Self, PasscodeError> {
        let mut bytes = vec![0u8; SECRET_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| PasscodeError::Random)?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The secret as RFC 4648 base32 without padding (what authenticator apps take).
    pub fn to_base32(&self) -> Zeroizing<String> {
        match Secret::Raw(self.0.to_vec()).to_encoded() {
            Secret::Encoded(text) => Zeroizing::new(text.trim_end_matches('=').to_owned()),
            Secret::Raw(_) => Zeroizing::new(String::new()),
        }
    }

    /// Parses base32 (upper case, padding optional); at least 16 bytes.
    pub fn from_base32(text: &str) -> Result<Self, PasscodeError> {
        let bytes = Secret::Encoded(text.trim_end_matches('=').to_owned())
            .to_bytes()
            .map_err(|e| PasscodeError::BadSecret(format!("{e:?}")))?;
        if bytes.len() < 16 {
            return Err(PasscodeError::BadSecret(format!(
                "{} bytes; at least 16 needed",
                bytes.len()
            )));
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    fn totp(&self, rules: &PasscodeRules) -> TOTP {
        // Digits are 6..=8 (checked by the configuration); skew is handled by `verify`.
        TOTP::new_unchecked(
            Algorithm::SHA1,
            rules.digits as usize,
            0,
            rules.step_secs.max(1),
            self.0.to_vec(),
        )
    }

    /// The passcode of the step that contains `unix` seconds.
    pub fn code_at(&self, rules: &PasscodeRules, unix: u64) -> Zeroizing<String> {
        Zeroizing::new(self.totp(rules).generate(unix))
    }

    /// The step a passcode matches, if any: the step of `now` or one either side. Every
    /// candidate is compared, in constant time, whatever matched first.
    pub fn verify(&self, rules: &PasscodeRules, passcode: &str, now: u64) -> Option<u64> {
        let step = rules.step_secs.max(1);
        let current = now / step;
        let mut matched = None;
        for candidate in current.saturating_sub(DRIFT_STEPS)..=current.saturating_add(DRIFT_STEPS) {
            let code = self.code_at(rules, candidate.saturating_mul(step));
            let same: bool =
                subtle::ConstantTimeEq::ct_eq(code.as_bytes(), passcode.as_bytes()).into();
            if same && matched.is_none() {
                matched = Some(candidate);
            }
        }
        matched
    }

    /// The `otpauth://` URI an authenticator app imports (Google Authenticator's key URI
    /// format): label `issuer:account`, SHA1, the digits and period of `rules`.
    pub fn otpauth_uri(
        &self,
        rules: &PasscodeRules,
        issuer: &str,
        account: &str,
    ) -> Zeroizing<String> {
        let escape = |s: &str| -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        Zeroizing::new(format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={}&period={}",
            escape(issuer),
            escape(account),
            self.to_base32().as_str(),
            escape(issuer),
            rules.digits,
            rules.step_secs
        ))
    }
}

/// A passcode as received (6 to 8 digits). Zeroed when dropped; never logged.
#[derive(Clone)]
pub struct Passcode(Zeroizing<String>);

impl Passcode {
    /// Wraps received text.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passcode(<redacted>)")
    }
}

/// True for text that can be a passcode of `rules`: exactly `digits` ASCII digits.
pub fn well_formed(rules: &PasscodeRules, passcode: &str) -> bool {
    passcode.len() == rules.digits as usize && passcode.bytes().all(|b| b.is_ascii_digit())
}

/// The key under which a used step is recorded (one-time use): SHA-256 of a domain label, the
/// client id and the step number, so it cannot collide with request nonces.
pub fn used_step_key(client_id: &str, step: u64) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"xdpgate passcode step\0");
    ctx.update(client_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(&step.to_be_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Wrong passcodes per client, and lockouts. In memory: a restart lifts lockouts (the audit
/// log keeps every failure).
#[derive(Debug, Default)]
pub struct Failures {
    by_client: Mutex<HashMap<String, FailureState>>,
}

#[derive(Debug, Clone, Copy)]
struct FailureState {
    count: u32,
    locked_until: Option<Instant>,
}

impl Failures {
    /// How long `client_id` stays locked out, if it is.
    pub fn locked(&self, client_id: &str, now: Instant) -> Option<Duration> {
        let map = self.lock();
        let until = map.get(client_id)?.locked_until?;
        until
            .checked_duration_since(now)
            .filter(|left| !left.is_zero())
    }

    /// Counts a wrong passcode; returns how many more are allowed before a lockout (0: this
    /// one locked the client out).
    pub fn failed(&self, client_id: &str, rules: &PasscodeRules, now: Instant) -> u32 {
        let mut map = self.lock();
        let state = map.entry(client_id.to_owned()).or_insert(FailureState {
            count: 0,
            locked_until: None,
        });
        if state.locked_until.is_some_and(|until| until <= now) {
            *state = FailureState {
                count: 0,
                locked_until: None,
            };
        }
        state.count = state.count.saturating_add(1);
        if state.count >= rules.max_failures {
            state.locked_until = Some(now + rules.lockout);
            state.count = 0;
            return 0;
        }
        rules.max_failures - state.count
    }

    /// A right passcode: the count starts again.
    pub fn succeeded(&self, client_id: &str) {
        self.lock().remove(client_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailureState>> {
        self.by_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 6238 appendix B, SHA1, 8 digits, secret "12345678901234567890".
    #[test]
    fn rfc6238_sha1_vectors() {
        let secret = TotpSecret(Zeroizing::new(b"12345678901234567890".to_vec()));
        let rules = PasscodeRules {
            digits: 8,
            ..PasscodeRules::default()
        };
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(secret.code_at(&rules, time).as_str(), code, "T = {time}");
        }
        assert_eq!(
            secret.to_base32().as_str(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let back = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(back.code_at(&rules, 59).as_str(), "94287082");
    }

    #[test]
    fn one_step_of_drift_either_side_and_no_more() {
        let secret = TotpSecret::generate().unwrap();
        let rules = PasscodeRules::default();
        let now = 1_700_000_015;
        let step = now / 30;
        for (offset, expected) in [
            (-2i64, None),
            (-1, Some(step - 1)),
            (0, Some(step)),
            (1, Some(step + 1)),
            (2, None),
        ] {
            let at = u64::try_from(i64::try_from(now).unwrap() + offset * 30).unwrap();
            let code = secret.code_at(&rules, at);
            let got = secret.verify(&rules, &code, now);
            // A code of a far step may collide with a near one by chance (1 in 10^6): only
            // then is a match outside the window tolerated.
            if let (None, Some(step)) = (expected, got) {
                assert_eq!(secret.code_at(&rules, step * 30), code);
            } else {
                assert_eq!(got, expected, "offset {offset}");
            }
        }
        assert_eq!(secret.verify(&rules, "12345", now), None);
        assert!(
            well_formed(&rules, "012345")
                && !well_formed(&rules, "12345")
                && !well_formed(&rules, "12345a")
        );
    }

    #[test]
    fn lockout_after_max_failures_then_lifted() {
        let failures = Failures::default();
        let rules = PasscodeRules {
            max_failures: 3,
            lockout: Duration::from_secs(60),
            ..PasscodeRules::default()
        };
        let t0 = Instant::now();
        assert_eq!(failures.failed("a", &rules, t0), 2);
        assert_eq!(failures.failed("a", &rules, t0), 1);
        assert!(failures.locked("a", t0).is_none());
        assert_eq!(
            failures.failed("a", &rules, t0),
            0,
            "the third wrong passcode locks"
        );
        assert!(failures.locked("a", t0).is_some());
        assert!(failures.locked("b", t0).is_none(), "only that client");
        assert!(
            failures.locked("a", t0 + Duration::from_secs(61)).is_none(),
            "lifted after the lockout"
        );
        failures.succeeded("a");
        assert!(failures.locked("a", t0).is_none());
    }

    #[test]
    fn otpauth_uri_has_the_key_uri_format() {
        let secret = TotpSecret(Zeroizing::new(b"12345678901234567890".to_vec()));
        let uri = secret.otpauth_uri(&PasscodeRules::default(), "xdpgate", "alice@gw 1");
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/xdpgate:alice%40gw%201?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=xdpgate&algorithm=SHA1&digits=6&period=30"
        );
        assert_ne!(used_step_key("a", 1), used_step_key("a", 2));
        assert_ne!(used_step_key("a", 1), used_step_key("b", 1));
    }
}

#[cfg(test)]
mod vectors {
    //! `docs/passcode-test-vectors.json`, recomputed. `PASSCODE_VECTORS_OUT=path cargo test
    //! regenerate_passcode_vectors -- --ignored` rewrites it.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::{Value, json};

    use super::*;

    const VECTORS_JSON: &str = include_str!("../../docs/passcode-test-vectors.json");
    const TIMES: [u64; 6] = [
        59,
        1_111_111_109,
        1_111_111_111,
        1_234_567_890,
        2_000_000_000,
        20_000_000_000,
    ];

    fn compute() -> Value {
        let secret = TotpSecret(Zeroizing::new(b"12345678901234567890".to_vec()));
        let eight = PasscodeRules {
            digits: 8,
            ..PasscodeRules::default()
        };
        let six = PasscodeRules::default();
        let codes: Vec<Value> = TIMES
            .iter()
            .map(|&t| {
                json!({
                    "unix": t,
                    "step": t / 30,
                    "code_8_digits": secret.code_at(&eight, t).as_str(),
                    "code_6_digits": secret.code_at(&six, t).as_str(),
                })
            })
            .collect();
        let key = used_step_key("client-a", 1_111_111_109 / 30);
        json!({
            "description": "TOTP of PROTOCOL.md §7.4: RFC 6238 appendix B (HMAC-SHA1, T0 = 0, 30 s steps) for the RFC's secret, with 8 digits (the RFC's values) and the 6 digits a default server expects; the record key of a used step; the otpauth URI the reference client prints.",
            "secret_ascii": "12345678901234567890",
            "secret_base32": secret.to_base32().as_str(),
            "period": 30,
            "codes": codes,
            "used_step": {
                "client_id": "client-a",
                "step": 1_111_111_109 / 30,
                "key_hex": format!("63{}", crate::tls::to_hex(&key)),
            },
            "otpauth_uri": secret.otpauth_uri(&six, "xdpgate", "client-a").as_str(),
        })
    }

    #[test]
    fn published_passcode_vectors_are_recomputed() {
        let published: Value =
            serde_json::from_str(VECTORS_JSON).expect("docs/passcode-test-vectors.json is JSON");
        assert_eq!(compute(), published);
        // The RFC's own values, independently of the file.
        let codes = published["codes"].as_array().unwrap();
        let rfc = [
            "94287082", "07081804", "14050471", "89005924", "69279037", "65353130",
        ];
        for (row, want) in codes.iter().zip(rfc) {
            assert_eq!(row["code_8_digits"], want);
            assert_eq!(row["code_6_digits"].as_str().unwrap(), &want[2..]);
        }
    }

    #[test]
    #[ignore = "rewrites the published passcode vectors"]
    fn regenerate_passcode_vectors() {
        let text = serde_json::to_string_pretty(&compute()).unwrap() + "\n";
        match std::env::var_os("PASSCODE_VECTORS_OUT") {
            Some(path) => std::fs::write(path, text).unwrap(),
            None => println!("{text}"),
        }
    }
}
