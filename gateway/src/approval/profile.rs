//! The client profile written at enrollment: everything a client needs to ask for approval,
//! as one JSON document. It holds secrets: it zeroizes on drop and its `Debug` is redacted.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::client::{ClientCredentials, ClientError};
use super::keys::{BoxPublicKey, ClientRsaKey, HmacSecret, KeyError};
use super::wire::{CLIENT_ID_MAX, SERVER_NAME_MAX, check_identifier};

/// The profile format version.
pub const PROFILE_VERSION: u16 = 1;

const MAX_SERVERS: usize = 64;
const MAX_ENDPOINT_LEN: usize = 2048;

/// A profile could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not valid profile JSON. Only the position is kept: the text may hold secrets.
    #[error("profile is not valid JSON of the expected shape (line {line}, column {column})")]
    Json {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
    /// The profile's version is not [`PROFILE_VERSION`].
    #[error("unsupported profile version {0}")]
    UnsupportedVersion(u16),
    /// A field is invalid.
    #[error("profile field `{field}` is invalid: {detail}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A key in the profile is invalid.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<serde_json::Error> for ProfileError {
    fn from(e: serde_json::Error) -> Self {
        ProfileError::Json {
            line: e.line(),
            column: e.column(),
        }
    }
}

/// A client profile.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// [`PROFILE_VERSION`].
    pub version: u16,
    /// The client id.
    pub client_id: String,
    /// The HMAC-SHA512 secret, base64.
    pub hmac_secret: String,
    /// The RSA private key, PKCS#8 `PRIVATE KEY` PEM.
    pub rsa_private_key_pem: String,
    /// The server's long-term X25519 box public key, base64.
    pub server_box_public_key: String,
    /// The approval web endpoint, `https://…` (requests go to `<endpoint>/v1/approvals`).
    pub web_endpoint: String,
    /// The pinned TLS trust anchor of the web endpoint, PEM certificate(s).
    pub tls_anchor_pem: String,
    /// The server names this profile may ask for.
    pub servers: Vec<String>,
    /// The servers whose approvals need a passcode (the TOTP secret itself is not kept here:
    /// it lives in the user's authenticator app).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passcode_servers: Vec<String>,
    /// With a value, every approval request is also signed by the device key in the TPM this
    /// TCTI names (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`;
    /// `docs/PROTOCOL.md` §15). The key itself is not kept here: the TPM regenerates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_tcti: Option<String>,
}

impl ClientProfile {
    /// Assembles and checks a profile.
    pub fn new(
        client_id: &str,
        hmac_secret: &HmacSecret,
        rsa_key: &ClientRsaKey,
        server_box_public_key: BoxPublicKey,
        web_endpoint: &str,
        tls_anchor_pem: &str,
        servers: Vec<String>,
    ) -> Result<Self, ProfileError> {
        let profile = Self {
            version: PROFILE_VERSION,
            client_id: client_id.to_owned(),
            hmac_secret: hmac_secret.to_base64().to_string(),
            rsa_private_key_pem: rsa_key.to_pkcs8_pem()?.to_string(),
            server_box_public_key: server_box_public_key.to_base64(),
            web_endpoint: web_endpoint.to_owned(),
            tls_anchor_pem: tls_anchor_pem.to_owned(),
            servers,
            passcode_servers: Vec::new(),
            device_tcti: None,
        };
        profile.check()?;
        Ok(profile)
    }

    /// Reads and checks a profile.
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let profile: Self = serde_json::from_str(text)?;
        profile.check()?;
        Ok(profile)
    }

    /// The profile as pretty JSON.
    pub fn to_json(&self) -> Result<Zeroizing<String>, ProfileError> {
        Ok(Zeroizing::new(serde_json::to_string_pretty(self)?))
    }

    /// Checks every field that needs no key parsing.
    pub fn check(&self) -> Result<(), ProfileError> {
        if self.version != PROFILE_VERSION {
            return Err(ProfileError::UnsupportedVersion(self.version));
        }
        check_identifier("client_id", &self.client_id, CLIENT_ID_MAX)
            .map_err(|r| invalid("client_id", r))?;
        check_endpoint(&self.web_endpoint)?;
        if !(self.tls_anchor_pem.contains("-----BEGIN CERTIFICATE-----")
            && self.tls_anchor_pem.contains("-----END CERTIFICATE-----"))
        {
            return Err(invalid("tls_anchor_pem", "not a PEM certificate"));
        }
        if self.servers.is_empty() || self.servers.len() > MAX_SERVERS {
            return Err(invalid("servers", format!("needs 1..={MAX_SERVERS} names")));
        }
        for name in &self.servers {
            check_identifier("servers", name, SERVER_NAME_MAX)
                .map_err(|r| invalid("servers", r))?;
        }
        Ok(())
    }

    /// Parses the keys into credentials for [`super::build_request`].
    pub fn credentials(&self) -> Result<ClientCredentials, ProfileError> {
        let hmac_secret = HmacSecret::from_base64(&self.hmac_secret)?;
        let rsa_key = ClientRsaKey::from_pkcs8_pem(&self.rsa_private_key_pem)?;
        let server_key = BoxPublicKey::from_base64(&self.server_box_public_key)?;
        ClientCredentials::new(self.client_id.clone(), hmac_secret, rsa_key, server_key).map_err(
            |e| match e {
                ClientError::InvalidClientId(r) => invalid("client_id", r),
                other => invalid("client_id", other),
            },
        )
    }
}

impl fmt::Debug for ClientProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientProfile")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("hmac_secret", &"<redacted>")
            .field("rsa_private_key_pem", &"<redacted>")
            .field("server_box_public_key", &self.server_box_public_key)
            .field("web_endpoint", &self.web_endpoint)
            .field(
                "tls_anchor_pem",
                &format_args!("<{} bytes>", self.tls_anchor_pem.len()),
            )
            .field("servers", &self.servers)
            .finish()
    }
}

fn check_endpoint(url: &str) -> Result<(), ProfileError> {
    let host = url.strip_prefix("https://").unwrap_or_default();
    if host.is_empty()
        || url.len() > MAX_ENDPOINT_LEN
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "web_endpoint",
            "must be an https:// URL without whitespace",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, detail: impl fmt::Display) -> ProfileError {
    ProfileError::InvalidField {
        field,
        detail: detail.to_string(),
    }
}
