//! The schema version of the state file and the migrations from older versions.
//!
//! Version 1 is every file written before the version was recorded (no `meta` table). A
//! binary opens a file of its own version as is, migrates an older one in one transaction
//! after copying it aside (`xdpgate.redb.v<N>.bak`), and refuses a newer one: it cannot know
//! what a newer binary stored.
use redb::{ReadableDatabase, TableDefinition, TableError, WriteTransaction};

use super::StoreError;

/// Metadata of the file: `schema_version` (u64).
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

/// The schema this binary reads and writes.
pub const SCHEMA_VERSION: u64 = 2;

/// One step from version `from` to `from + 1`, run inside the migration's transaction.
type Step = fn(&WriteTransaction) -> Result<(), StoreError>;

/// Every step, oldest first; `MIGRATIONS[i]` goes from version `i + 1`.
const MIGRATIONS: &[Step] = &[v1_to_v2];

/// Version 2 only records the version (the `meta` table is written by `finish`).
fn v1_to_v2(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// The version recorded in `db`; 1 when it has none (written before versions existed).
pub(super) fn read_version(db: &impl ReadableDatabase) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    match txn.open_table(META) {
        Ok(table) => Ok(table.get(SCHEMA_KEY)?.map_or(1, |v| v.value())),
        Err(TableError::TableDoesNotExist(_)) => Ok(1),
        Err(err) => Err(err.into()),
    }
}

/// Runs the steps from `from` to [`SCHEMA_VERSION`] and records the version, in `txn`.
pub(super) fn migrate(txn: &WriteTransaction, from: u64) -> Result<(), StoreError> {
    let first = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
    for step in MIGRATIONS.iter().skip(first) {
        step(txn)?;
    }
    txn.open_table(META)?.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
    Ok(())
}
