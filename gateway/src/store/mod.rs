//! Durable controller state in one redb file: openings, clients, enrollment tokens, seen
//! nonces, the audit trail and the self-shutdown state, one module per table.
//!
//! The state folder is created 0700 and the database file 0600: it holds client secrets.
mod answers;
mod audit;
mod clients;
pub mod devices;
mod meta;
mod nonces;
mod notices;
mod openings;

pub use answers::StoredAnswer;
pub use audit::{AuditEvent, AuditKind, AuditPage, AuditTable, Journal};
pub use clients::{Enrollment, EnrollmentToken, StoredClient};
pub use meta::SCHEMA_VERSION;
pub use notices::NoticeRecord;
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use redb::Database;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating the folder or setting permissions failed.
    #[error("state folder {path}: {source}")]
    Folder {
        /// Folder or file concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// redb failed to open the database.
    #[error("opening the database: {0}")]
    Open(#[from] redb::DatabaseError),
    /// redb failed a transaction.
    #[error("database transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// redb failed on a table.
    #[error("database table: {0}")]
    Table(#[from] redb::TableError),
    /// redb failed to read or write.
    #[error("database storage: {0}")]
    Storage(#[from] redb::StorageError),
    /// redb failed to commit.
    #[error("database commit: {0}")]
    Commit(#[from] redb::CommitError),
    /// A stored value did not decode.
    #[error("corrupt record {key}: {source}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// Decode error.
        source: serde_json::Error,
    },
    /// A value did not encode (never expected).
    #[error("encoding a record: {0}")]
    Encode(serde_json::Error),
    /// The record asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The record to create exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The file was written by a newer xdpgate.
    #[error(
        "{path} has schema version {found}, newer than this xdpgate understands ({supported}): \
         run the newer xdpgate, or restore a backup made for this one"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u64,
        /// The newest this binary reads.
        supported: u64,
    },
}

/// Decodes a JSON value stored under `key`.
fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

/// Encodes a value as JSON for storage.
fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

/// The controller's database.
pub struct Store {
    db: Database,
    /// Seen nonces (see the `nonces` module).
    nonces: std::sync::Mutex<nonces::NonceCache>,
}

impl Store {
    /// File name of the database inside the state folder.
    pub const FILE_NAME: &'static str = "xdpgate.redb";
    /// redb's page cache ceiling. Its default (1 GiB) lets one start-up scan of 100k
    /// openings stay resident for the life of the process; the hot set (b-tree interior
    /// pages, clients) is far smaller.
    pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

    /// Opens (or creates) the database in `state_dir`, fixing permissions.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let folder_err = |source| StoreError::Folder {
            path: state_dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(folder_err)?;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(folder_err)?;
        let path = state_dir.join(Self::FILE_NAME);
        let existed = path.exists();
        let open = || {
            redb::Builder::new()
                .set_cache_size(Self::CACHE_BYTES)
                .create(&path)
        };
        // The version is read without writing to the file, so a file refused as too new, or
        // backed up before a migration, is exactly as the other release left it. A file that
        // needs repair (after a crash) cannot be opened read-only: the writable open repairs
        // it first.
        let found = if existed {
            match redb::Builder::new().open_read_only(&path) {
                Ok(read_only) => meta::read_version(&read_only)?,
                Err(_) => meta::read_version(&open()?)?,
            }
        } else {
            SCHEMA_VERSION
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            // A copy of the closed file first, so the copy is consistent.
            let backup = state_dir.join(format!("{}.v{found}.bak", Self::FILE_NAME));
            copy_private(&path, &backup)?;
            tracing::warn!(
                from = found,
                to = SCHEMA_VERSION,
                backup = %backup.display(),
                "migrating the state file"
            );
        }
        let db = open()?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            StoreError::Folder {
                path: path.clone(),
                source,
            }
        })?;
        create_tables(&db, found)?;
        let nonces = std::sync::Mutex::new(nonces::NonceCache::load(&db)?);
        Ok(Self { db, nonces })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(err) = self.flush_nonces() {
            tracing::error!(error = %err, "writing the last seen nonces failed");
        }
    }
}

/// Copies `from` to `to` with mode 0600 (it holds client secrets).
fn copy_private(from: &Path, to: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Folder {
        path: to.to_owned(),
        source,
    };
    let mut source = fs::File::open(from).map_err(err)?;
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .map_err(err)?;
    std::io::copy(&mut source, &mut target).map_err(err)?;
    target.sync_all().map_err(err)
}

/// Creates missing tables and, in the same transaction, migrates a file of schema version
/// `found` (a new file counts as the current version) and records the version.
fn create_tables(db: &Database, found: u64) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    meta::migrate(&txn, found)?;
    txn.open_table(openings::TABLE)?;
    txn.open_table(clients::CLIENTS)?;
    txn.open_table(clients::ENROLLMENTS)?;
    txn.open_table(nonces::TABLE)?;
    txn.open_table(audit::TABLE)?;
    txn.open_table(audit::SAMPLES)?;
    txn.open_table(answers::TABLE)?;
    txn.open_table(notices::TABLE)?;
    txn.open_table(devices::TABLE)?;
    txn.open_table(devices::SETTINGS)?;
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opening_record::{Holder, OpeningId, OpeningRecord};

    fn sample(addr: &str) -> OpeningRecord {
        let id = OpeningId {
            server_id: 7,
            addr: addr.parse().unwrap(),
        };
        let holder = Holder {
            id: "admin-1".into(),
            origin: "admin".into(),
            granted_ms: 1,
            connect_until_ms: 2,
            deadline_ms: 3,
            device: None,
        };
        OpeningRecord::new(id, 1000, holder)
    }

    #[test]
    fn openings_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = sample("10.0.0.2");
        let b = sample("fd00::2");
        {
            let store = Store::open(&state).unwrap();
            store.save_openings(&[&a, &b], &[]).unwrap();
            store.save_openings(&[], &[a.id]).unwrap();
        }
        let store = Store::open(&state).unwrap();
        assert_eq!(store.load_openings().unwrap(), vec![b]);
        let mode = fs::metadata(state.join(Store::FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    fn set_version(state: &Path, version: Option<u64>) {
        let db = Database::open(state.join(Store::FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        match version {
            Some(v) => {
                txn.open_table(meta::META)
                    .unwrap()
                    .insert("schema_version", v)
                    .unwrap();
            }
            None => {
                txn.delete_table(meta::META).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_new_file_records_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(meta::read_version(&store.db).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_file_without_a_version_is_migrated_after_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample("10.0.0.2");
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_openings(&[&a], &[]).unwrap();
        }
        set_version(dir.path(), None);
        let before = fs::read(dir.path().join(Store::FILE_NAME)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(meta::read_version(&store.db).unwrap(), SCHEMA_VERSION);
        assert_eq!(store.load_openings().unwrap(), vec![a], "data kept");
        let backup = dir.path().join(format!("{}.v1.bak", Store::FILE_NAME));
        assert_eq!(
            fs::read(&backup).unwrap(),
            before,
            "the backup is the untouched file"
        );
        let mode = fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_newer_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        set_version(dir.path(), Some(SCHEMA_VERSION + 1));
        let before = fs::read(dir.path().join(Store::FILE_NAME)).unwrap();
        let err = Store::open(dir.path()).err().expect("refused");
        let text = err.to_string();
        assert!(
            matches!(err, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{text}"
        );
        assert!(
            text.contains("newer than this xdpgate understands"),
            "{text}"
        );
        assert_eq!(fs::read(dir.path().join(Store::FILE_NAME)).unwrap(), before);
    }
}
