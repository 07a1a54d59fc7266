//! Clients and their single-use enrollment tokens.
//!
//! A client is created by the operator (`xdpgate clients add`) with the servers it may use,
//! then enrolls once with a token: it registers its RSA public key and receives its HMAC
//! secret. Tokens are stored only as SHA-256 digests, expire, and are consumed on use.
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// Clients by id, JSON values.
pub(super) const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
/// Enrollment tokens by hex SHA-256 of the token, JSON values.
pub(super) const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");

/// What a client registered when it enrolled.
#[derive(Clone, Serialize, Deserialize)]
pub struct Enrollment {
    /// The shared HMAC-SHA512 secret, base64.
    pub hmac_secret_b64: String,
    /// The client's RSA public key, PEM.
    pub rsa_public_key_pem: String,
    /// Device name the client reported.
    pub device_name: String,
    /// When it enrolled.
    pub enrolled_unix: u64,
    /// Its TOTP secret (base32), when a server of it needs a passcode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret_b32: Option<String>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("hmac_secret_b64", &"<redacted>")
            .field("device_name", &self.device_name)
            .field("enrolled_unix", &self.enrolled_unix)
            .finish_non_exhaustive()
    }
}

/// A client as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredClient {
    /// Unique id (the name the operator chose).
    pub client_id: String,
    /// Servers the client may open.
    pub servers: Vec<String>,
    /// Disabled clients are denied and their openings closed.
    pub enabled: bool,
    /// When the operator added it.
    pub created_unix: u64,
    /// Set once the client enrolled.
    pub enrollment: Option<Enrollment>,
}

/// A pending enrollment (stored under the token's digest, never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// The client the token enrolls.
    pub client_id: String,
    /// The token is refused after this time.
    pub expires_unix: u64,
}

impl Store {
    /// Creates a client; fails if the id exists.
    pub fn create_client(&self, client: &StoredClient) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CLIENTS)?;
            if table.get(client.client_id.as_str())?.is_some() {
                return Err(StoreError::Exists(format!("client {:?}", client.client_id)));
            }
            table.insert(client.client_id.as_str(), encode(client)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The client with this id.
    pub fn client(&self, client_id: &str) -> Result<Option<StoredClient>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLIENTS)?;
        let Some(value) = table.get(client_id)? else {
            return Ok(None);
        };
        decode(client_id, value.value()).map(Some)
    }

    /// Every client, by id.
    pub fn clients(&self) -> Result<Vec<StoredClient>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLIENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Applies `change` to a client in one transaction and returns the result.
    pub fn update_client(
        &self,
        client_id: &str,
        change: impl FnOnce(&mut StoredClient),
    ) -> Result<StoredClient, StoreError> {
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(CLIENTS)?;
            let mut client: StoredClient = match table.get(client_id)? {
                Some(value) => decode(client_id, value.value())?,
                None => return Err(StoreError::NotFound(format!("client {client_id:?}"))),
            };
            change(&mut client);
            table.insert(client_id, encode(&client)?.as_slice())?;
            client
        };
        txn.commit()?;
        Ok(updated)
    }

    /// Deletes a client and any enrollment token of it.
    pub fn remove_client(&self, client_id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CLIENTS)?;
            if table.remove(client_id)?.is_none() {
                return Err(StoreError::NotFound(format!("client {client_id:?}")));
            }
            let mut tokens = txn.open_table(ENROLLMENTS)?;
            let mut stale = Vec::new();
            for entry in tokens.iter()? {
                let (key, value) = entry?;
                let token: EnrollmentToken = decode(key.value(), value.value())?;
                if token.client_id == client_id {
                    stale.push(key.value().to_owned());
                }
            }
            for key in stale {
                tokens.remove(key.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Stores a pending enrollment under the token's digest.
    pub fn put_enrollment_token(
        &self,
        digest_hex: &str,
        token: &EnrollmentToken,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(ENROLLMENTS)?
            .insert(digest_hex, encode(token)?.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The token stored under `digest_hex`, if any (used or not, expired or not).
    pub fn enrollment_token(
        &self,
        digest_hex: &str,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENROLLMENTS)?;
        let Some(value) = table.get(digest_hex)? else {
            return Ok(None);
        };
        decode(digest_hex, value.value()).map(Some)
    }

    /// Stores a new token for an existing client and removes every other token of that
    /// client, in one transaction: only the newest link of a client can enroll.
    pub fn reissue_enrollment_token(
        &self,
        digest_hex: &str,
        token: &EnrollmentToken,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            if txn
                .open_table(CLIENTS)?
                .get(token.client_id.as_str())?
                .is_none()
            {
                return Err(StoreError::NotFound(format!(
                    "client {:?}",
                    token.client_id
                )));
            }
            let mut tokens = txn.open_table(ENROLLMENTS)?;
            let mut stale = Vec::new();
            for entry in tokens.iter()? {
                let (key, value) = entry?;
                let old: EnrollmentToken = decode(key.value(), value.value())?;
                if old.client_id == token.client_id {
                    stale.push(key.value().to_owned());
                }
            }
            for key in stale {
                tokens.remove(key.as_str())?;
            }
            tokens.insert(digest_hex, encode(token)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Consumes a token and records the client's enrollment, atomically: a token enrolls at
    /// most once. Returns `Ok(None)` if the token is unknown, used or expired.
    pub fn redeem_enrollment_token(
        &self,
        digest_hex: &str,
        now_unix: u64,
        enrollment: Enrollment,
    ) -> Result<Option<StoredClient>, StoreError> {
        let txn = self.db.begin_write()?;
        let client = {
            let mut tokens = txn.open_table(ENROLLMENTS)?;
            let token: EnrollmentToken = match tokens.remove(digest_hex)? {
                Some(value) => decode(digest_hex, value.value())?,
                None => return Ok(None),
            };
            let mut clients = txn.open_table(CLIENTS)?;
            let stored: Option<StoredClient> = match clients.get(token.client_id.as_str())? {
                Some(value) => Some(decode(&token.client_id, value.value())?),
                None => None,
            };
            match stored {
                // An expired token is consumed too (removed above), but enrolls nobody.
                Some(mut client) if token.expires_unix >= now_unix => {
                    client.enrollment = Some(enrollment);
                    clients.insert(token.client_id.as_str(), encode(&client)?.as_slice())?;
                    Some(client)
                }
                _ => None,
            }
        };
        txn.commit()?;
        Ok(client)
    }
}
