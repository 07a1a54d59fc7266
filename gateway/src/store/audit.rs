//! The operator's audit trail: every approval decision, enrollment and client change, with
//! the precise reason that clients never see. Bounded: the oldest events are dropped past
//! the retention count.
use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// Events by sequence number, JSON values.
pub(super) const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// What an audit event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// An approval request was decided.
    Approval,
    /// An enrollment was attempted.
    Enrollment,
    /// The operator changed a client.
    Client,
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, ms since the epoch.
    pub unix_ms: u64,
    /// What kind of event.
    pub kind: AuditKind,
    /// Client id, as claimed or known ("" if none).
    pub client_id: String,
    /// Source address of the request ("" if none).
    pub remote: String,
    /// Server concerned ("" if none).
    pub server: String,
    /// `approved`, `rejected`, or the operator action.
    pub verdict: String,
    /// Public code sent to the client ("" for operator actions).
    pub code: String,
    /// The precise reason (never sent to clients).
    pub reason: String,
}

impl Store {
    /// Appends events in one transaction (which also carries the nonces recorded since the
    /// last commit), dropping the oldest past `retention` events.
    pub fn append_audit(&self, events: &[AuditEvent], retention: u64) -> Result<(), StoreError> {
        self.commit_with_nonces(|txn| {
            let mut table = txn.open_table(TABLE)?;
            let first = table.last()?.map_or(0, |(seq, _)| seq.value() + 1);
            for (seq, event) in (first..).zip(events) {
                table.insert(seq, encode(event)?.as_slice())?;
            }
            let excess = table.len()?.saturating_sub(retention);
            for _ in 0..excess {
                table.pop_first()?;
            }
            Ok(())
        })
    }

    /// The newest `count` events, oldest first.
    pub fn audit_tail(&self, count: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut out = Vec::with_capacity(count);
        for entry in table.iter()?.rev().take(count) {
            let (seq, value) = entry?;
            out.push(decode(&seq.value().to_string(), value.value())?);
        }
        out.reverse();
        Ok(out)
    }
}
