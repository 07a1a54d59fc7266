//! Committed approval answers, by request nonce, for idempotent retries: resending the exact
//! bytes of an approved request returns that approval again (same addresses, same expiry)
//! instead of `replay`. Kept as long as the request's nonce.
use std::net::IpAddr;

use redb::{ReadableDatabase as _, ReadableTableMetadata as _, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};
use crate::approval::ConnectTarget;

/// Key: the request nonce's store key; value: JSON [`StoredAnswer`].
pub(super) const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("answers");

/// What an approval answered, and which exact request it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAnswer {
    /// SHA-256 of the request body the controller received, hex.
    pub body_sha256: String,
    /// The client it was answered to.
    pub client_id: String,
    /// Where to connect.
    pub connect: ConnectTarget,
    /// The addresses opened.
    pub opened: Vec<IpAddr>,
    /// The expiry of the answer (unix seconds).
    pub expires_unix: u64,
    /// Kept until (unix seconds), the request nonce's keep-until time.
    pub keep_until_unix: u64,
}

pub(super) fn write(
    txn: &WriteTransaction,
    answers: &[(Vec<u8>, StoredAnswer)],
) -> Result<(), StoreError> {
    if answers.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(TABLE)?;
    for (key, answer) in answers {
        table.insert(key.as_slice(), encode(answer)?.as_slice())?;
    }
    Ok(())
}

impl Store {
    /// The committed answer to the request with this nonce key, if any.
    pub fn answer(&self, nonce_key: &[u8]) -> Result<Option<StoredAnswer>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        match table.get(nonce_key)? {
            Some(value) => Ok(Some(decode("answer", value.value())?)),
            None => Ok(None),
        }
    }

    /// Forgets answers kept until before `now_unix`; returns how many.
    pub fn purge_answers(&self, now_unix: u64) -> Result<u64, StoreError> {
        let mut purged = 0;
        self.commit_with_nonces(|txn| {
            let mut table = txn.open_table(TABLE)?;
            let before = table.len()?;
            table.retain(|_, value| {
                decode::<StoredAnswer>("answer", value)
                    .map_or(true, |a| a.keep_until_unix >= now_unix)
            })?;
            purged = before - table.len()?;
            Ok(())
        })?;
        Ok(purged)
    }
}
