//! Seen request and payload nonces, kept for at least twice the timestamp window so that a
//! restart does not reopen the replay door.
use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition};

use super::{Store, StoreError};

/// Key: scope byte followed by the nonce; value: keep-until (unix seconds).
pub(super) const TABLE: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");

impl Store {
    /// Records `key` until `keep_until_unix`; `Ok(false)` if it was already recorded and
    /// still live (a replay). Durable before it returns.
    pub fn record_nonce(&self, key: &[u8], now_unix: u64, keep_until_unix: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let fresh = {
            let mut table = txn.open_table(TABLE)?;
            let live = table.get(key)?.is_some_and(|until| until.value() >= now_unix);
            if !live {
                table.insert(key, keep_until_unix)?;
            }
            !live
        };
        txn.commit()?;
        Ok(fresh)
    }

    /// Forgets nonces whose keep-until time has passed; returns how many.
    pub fn purge_nonces(&self, now_unix: u64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let purged = {
            let mut table = txn.open_table(TABLE)?;
            let before = table.len()?;
            table.retain(|_, until| until >= now_unix)?;
            before - table.len()?
        };
        txn.commit()?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    /// Number of nonces held.
    pub fn nonce_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(TABLE)?.len()?)
    }
}
