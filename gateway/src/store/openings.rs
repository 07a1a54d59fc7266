//! The openings table: one JSON record per (server, address).
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{Journal, Store, StoreError, decode, encode};
use crate::opening_record::{OpeningId, OpeningRecord};

/// Openings by `OpeningId::store_key`, JSON values.
pub(super) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("openings");

impl Store {
    /// Every recorded opening.
    pub fn load_openings(&self) -> Result<Vec<OpeningRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Writes and removes openings in one durable transaction (which also carries the nonces
    /// recorded since the last commit).
    pub fn save_openings(
        &self,
        put: &[&OpeningRecord],
        remove: &[OpeningId],
    ) -> Result<(), StoreError> {
        self.save_openings_with(put, remove, &Journal::default())
    }

    /// [`Store::save_openings`], with `journal` (the approvals' audit records and answers) in
    /// the same transaction.
    pub fn save_openings_with(
        &self,
        put: &[&OpeningRecord],
        remove: &[OpeningId],
        journal: &Journal,
    ) -> Result<(), StoreError> {
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.commit_with_nonces(|txn| {
            journal.write(txn)?;
            let mut table = txn.open_table(TABLE)?;
            for record in put {
                let value = encode(record)?;
                table.insert(record.id.store_key().as_str(), value.as_slice())?;
            }
            for id in remove {
                table.remove(id.store_key().as_str())?;
            }
            Ok(())
        })
    }
}
