//! The self-shutdown state: which parts a verified notice (or the operator) shut down, the
//! highest notice sequence acted on, and when the notice server was last asked. One record.
use redb::{ReadableDatabase as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};
use crate::signed_notice::{Notice, PartState};

/// One JSON record under [`KEY`].
pub(super) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("notices");
const KEY: &str = "state";

/// The durable shutdown state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRecord {
    /// The web front's answers.
    pub www: PartState,
    /// The web front process and the front API.
    pub web: PartState,
    /// Approvals, openings and VPN sessions.
    pub vpn: PartState,
    /// Highest sequence acted on (0: none yet).
    pub last_sequence: u64,
    /// When the state last changed, ms since the epoch (0: never).
    pub changed_unix_ms: u64,
    /// `notice` or `operator`: who set the current state.
    pub changed_by: String,
    /// The last notice acted on.
    pub last_notice: Option<Notice>,
    /// When the notice server was last asked, ms since the epoch (0: never).
    pub last_fetch_unix_ms: u64,
    /// What came of that: `acted`, or why nothing changed.
    pub last_outcome: String,
}

impl NoticeRecord {
    /// Whether any part is shut down.
    pub fn any_shutdown(&self) -> bool {
        self.www.shutdown || self.web.shutdown || self.vpn.shutdown
    }
}

impl Store {
    /// The shutdown state (the default when none was ever stored).
    pub fn notice_state(&self) -> Result<NoticeRecord, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        match table.get(KEY)? {
            Some(value) => decode(KEY, value.value()),
            None => Ok(NoticeRecord::default()),
        }
    }

    /// Replaces the shutdown state, durably.
    pub fn put_notice_state(&self, record: &NoticeRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            table.insert(KEY, encode(record)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}
