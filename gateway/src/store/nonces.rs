//! Seen request and payload nonces, kept for at least twice the timestamp window so that a
//! restart does not reopen the replay door.
//!
//! The replay check runs against an in-memory copy (loaded at open), so it costs no disk
//! sync of its own. A new nonce is written by the next transaction this store commits: the
//! opening of the approval that carried it is one of them, so no approval is answered before
//! its nonces are durable. Nonces of rejected requests ride with the audit batch that records
//! the rejection (within about 100 ms).
use std::{
    collections::HashMap,
    sync::{MutexGuard, PoisonError},
};

use redb::{
    ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};

use super::{Store, StoreError};

/// Key: scope byte followed by the nonce; value: keep-until (unix seconds).
pub(super) const TABLE: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");

/// The in-memory view of the nonces table plus the entries not yet committed.
#[derive(Debug, Default)]
pub(super) struct NonceCache {
    /// Every live nonce with its keep-until time.
    seen: HashMap<Vec<u8>, u64>,
    /// Recorded but not yet written.
    unwritten: Vec<(Vec<u8>, u64)>,
}

impl NonceCache {
    /// The cache of the nonces already in `db`.
    pub(super) fn load(db: &redb::Database) -> Result<Self, StoreError> {
        let txn = db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut seen = HashMap::new();
        for entry in table.iter()? {
            let (key, until) = entry?;
            seen.insert(key.value().to_vec(), until.value());
        }
        Ok(Self {
            seen,
            unwritten: Vec::new(),
        })
    }
}

impl Store {
    fn nonce_cache(&self) -> MutexGuard<'_, NonceCache> {
        self.nonces.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `key` until `keep_until_unix`; `Ok(false)` if it was already recorded and
    /// still live (a replay). Atomic; durable with the store's next commit (see the module
    /// documentation).
    pub fn record_nonce(
        &self,
        key: &[u8],
        now_unix: u64,
        keep_until_unix: u64,
    ) -> Result<bool, StoreError> {
        let mut cache = self.nonce_cache();
        if cache.seen.get(key).is_some_and(|until| *until >= now_unix) {
            return Ok(false);
        }
        cache.seen.insert(key.to_vec(), keep_until_unix);
        cache.unwritten.push((key.to_vec(), keep_until_unix));
        Ok(true)
    }

    /// Writes the nonces recorded since the last commit into `txn`. If the transaction is
    /// not committed, [`Store::requeue_nonces`] must get them back.
    pub(super) fn write_unwritten_nonces(
        &self,
        txn: &WriteTransaction,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let unwritten = std::mem::take(&mut self.nonce_cache().unwritten);
        if unwritten.is_empty() {
            return Ok(unwritten);
        }
        let written = (|| -> Result<(), StoreError> {
            let mut table = txn.open_table(TABLE)?;
            for (key, until) in &unwritten {
                table.insert(key.as_slice(), *until)?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => Ok(unwritten),
            Err(err) => {
                self.requeue_nonces(unwritten);
                Err(err)
            }
        }
    }

    /// Puts back nonces whose transaction did not commit, for the next one.
    pub(super) fn requeue_nonces(&self, nonces: Vec<(Vec<u8>, u64)>) {
        if !nonces.is_empty() {
            self.nonce_cache().unwritten.extend(nonces);
        }
    }

    /// Commits the nonces recorded since the last commit, if any.
    pub fn flush_nonces(&self) -> Result<(), StoreError> {
        if self.nonce_cache().unwritten.is_empty() {
            return Ok(());
        }
        self.commit_with_nonces(|_| Ok(()))
    }

    /// Runs `write` in a write transaction that also carries the unwritten nonces, and
    /// commits it.
    pub(super) fn commit_with_nonces(
        &self,
        write: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write()?;
        let nonces = self.write_unwritten_nonces(&txn)?;
        let committed = write(&txn).and_then(|()| txn.commit().map_err(StoreError::from));
        crate::metrics::observe_since(&crate::metrics::latencies().commit, started);
        if committed.is_err() {
            self.requeue_nonces(nonces);
        }
        committed
    }

    /// Forgets nonces whose keep-until time has passed; returns how many.
    pub fn purge_nonces(&self, now_unix: u64) -> Result<usize, StoreError> {
        let mut purged = 0;
        self.commit_with_nonces(|txn| {
            let mut table = txn.open_table(TABLE)?;
            let before = table.len()?;
            table.retain(|_, until| until >= now_unix)?;
            purged = before - table.len()?;
            Ok(())
        })?;
        self.nonce_cache()
            .seen
            .retain(|_, until| *until >= now_unix);
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    /// Number of nonces held.
    pub fn nonce_count(&self) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.nonce_cache().seen.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn replays_are_refused_and_nonces_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.record_nonce(b"r1", 100, 200).unwrap());
            assert!(
                !store.record_nonce(b"r1", 150, 250).unwrap(),
                "a live nonce is a replay"
            );
            assert!(store.record_nonce(b"r2", 100, 120).unwrap());
            // Carried by an unrelated commit.
            store
                .save_openings(
                    &[],
                    &[crate::opening_record::OpeningId {
                        server_id: 1,
                        addr: "10.0.0.2".parse().unwrap(),
                    }],
                )
                .unwrap();
            assert!(store.record_nonce(b"r3", 100, 200).unwrap());
            // r3 is written when the store closes.
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.nonce_count().unwrap(), 3);
        assert!(!store.record_nonce(b"r1", 150, 250).unwrap());
        assert!(!store.record_nonce(b"r3", 150, 250).unwrap());
        assert!(
            store.record_nonce(b"r2", 150, 250).unwrap(),
            "an expired nonce may be used again"
        );
        assert_eq!(store.purge_nonces(201).unwrap(), 2);
        assert_eq!(store.nonce_count().unwrap(), 1);
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().nonce_count().unwrap(), 1);
    }
}
