//! The operator's audit trail, in two tables with their own retention:
//!
//! - `audit`: authenticated decisions (every approval and every refusal of a request whose
//!   HMAC verified), enrollments and operator actions, kept by age. An approval's record is
//!   committed with its opening, a refusal's with its nonce ([`Journal`]), so the table holds
//!   exactly the decisions that were made.
//! - `audit_samples`: a rate-limited sample of unauthenticated failures, kept by count, so a
//!   flood of garbage can neither cost a write per request nor push real decisions out.
use redb::{
    ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// Authenticated decisions and operator events by sequence number, JSON values.
pub(super) const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Sampled unauthenticated failures by sequence number, JSON values.
pub(super) const SAMPLES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_samples");

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
    /// A self-shutdown notice was acted on, or the operator cleared one.
    Notice,
    /// A device was seen, became pending, was approved (by PIN or automatically), refused a
    /// PIN, or was removed (`docs/PROTOCOL.md` §15).
    Device,
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

/// Which audit table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditTable {
    /// Authenticated decisions and operator events (retention by age).
    Decisions,
    /// Sampled unauthenticated failures (retention by count).
    Samples,
}

impl AuditTable {
    fn definition(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Self::Decisions => TABLE,
            Self::Samples => SAMPLES,
        }
    }
}

/// One page of audit events, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// `(sequence number, event)`, newest first.
    pub events: Vec<(u64, AuditEvent)>,
    /// Where the next (older) page starts, `None` when this page reached the oldest event.
    pub next_before: Option<u64>,
}

/// Records written in the same transaction as the state change they describe.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    /// Decisions for the `audit` table.
    pub audit: Vec<AuditEvent>,
    /// Committed answers, for idempotent retries (see [`super::StoredAnswer`]).
    pub answers: Vec<(Vec<u8>, super::StoredAnswer)>,
}

impl Journal {
    /// Writes the journal into `txn`.
    pub(super) fn write(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if !self.audit.is_empty() {
            append(txn, TABLE, &self.audit)?;
        }
        super::answers::write(txn, &self.answers)
    }
}

fn append(
    txn: &WriteTransaction,
    table: TableDefinition<u64, &[u8]>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(table)?;
    let first = table.last()?.map_or(0, |(seq, _)| seq.value() + 1);
    for (seq, event) in (first..).zip(events) {
        table.insert(seq, encode(event)?.as_slice())?;
    }
    Ok(())
}

impl Store {
    /// Appends events to `table` in one transaction (which also carries the nonces recorded
    /// since the last commit). The samples table keeps at most `max_samples` events.
    pub fn append_audit(
        &self,
        table: AuditTable,
        events: &[AuditEvent],
        max_samples: u64,
    ) -> Result<(), StoreError> {
        self.commit_with_nonces(|txn| {
            append(txn, table.definition(), events)?;
            if table == AuditTable::Samples {
                let mut samples = txn.open_table(SAMPLES)?;
                let excess = samples.len()?.saturating_sub(max_samples);
                for _ in 0..excess {
                    samples.pop_first()?;
                }
            }
            Ok(())
        })
    }

    /// Commits `journal` with the nonces recorded since the last commit: a refusal is on disk
    /// (its nonce consumed, its record written) before it is answered.
    pub fn commit_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        self.commit_with_nonces(|txn| journal.write(txn))
    }

    /// Drops decisions older than `cutoff_unix_ms`; returns how many.
    pub fn purge_audit(&self, cutoff_unix_ms: u64) -> Result<u64, StoreError> {
        let mut purged = 0;
        self.commit_with_nonces(|txn| {
            let mut table = txn.open_table(TABLE)?;
            loop {
                let old = match table.first()? {
                    Some((_, value)) => {
                        decode::<AuditEvent>("audit", value.value())?.unix_ms < cutoff_unix_ms
                    }
                    None => false,
                };
                if !old {
                    return Ok(());
                }
                table.pop_first()?;
                purged += 1;
            }
        })?;
        Ok(purged)
    }

    /// Up to `count` events of `table` older than sequence number `before` (all if `None`),
    /// newest first, and where the next page starts.
    pub fn audit_page(
        &self,
        table: AuditTable,
        before: Option<u64>,
        count: usize,
    ) -> Result<AuditPage, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table.definition())?;
        let range = match before {
            Some(before) => table.range(..before)?,
            None => table.range::<u64>(..)?,
        };
        let mut page = AuditPage::default();
        for entry in range.rev() {
            let (seq, value) = entry?;
            let seq = seq.value();
            if page.events.len() == count {
                page.next_before = page.events.last().map(|(last, _)| *last);
                break;
            }
            page.events
                .push((seq, decode(&seq.to_string(), value.value())?));
        }
        Ok(page)
    }

    /// The newest `count` decisions, oldest first.
    pub fn audit_tail(&self, count: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut events: Vec<AuditEvent> = self
            .audit_page(AuditTable::Decisions, None, count)?
            .events
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        events.reverse();
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(unix_ms: u64, verdict: &str) -> AuditEvent {
        AuditEvent {
            unix_ms,
            kind: AuditKind::Approval,
            client_id: "alice".into(),
            remote: "192.0.2.1".into(),
            server: "vpn1".into(),
            verdict: verdict.into(),
            code: String::new(),
            reason: String::new(),
        }
    }

    #[test]
    fn pages_reach_every_event_and_say_where_they_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let events: Vec<AuditEvent> = (0..25_000).map(|i| event(i, "approved")).collect();
        store
            .append_audit(AuditTable::Decisions, &events, 100)
            .unwrap();
        let (mut seen, mut before, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = store
                .audit_page(AuditTable::Decisions, before, 10_000)
                .unwrap();
            pages += 1;
            seen.extend(page.events.iter().map(|(_, e)| e.unix_ms));
            match page.next_before {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 25_000, "every event is reached, none twice");
        assert!(
            seen.windows(2).all(|w| w[0] == w[1] + 1),
            "newest first, no gap"
        );
        // A page that ends exactly at the oldest event says so.
        let last = store
            .audit_page(AuditTable::Decisions, Some(10), 10)
            .unwrap();
        assert_eq!((last.events.len(), last.next_before), (10, None));
    }

    #[test]
    fn samples_are_capped_by_count_and_decisions_expire_by_age_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_audit(
                AuditTable::Decisions,
                &[event(1_000, "approved"), event(5_000, "rejected")],
                100,
            )
            .unwrap();
        let garbage: Vec<AuditEvent> = (0..500).map(|i| event(10_000 + i, "rejected")).collect();
        for chunk in garbage.chunks(50) {
            store.append_audit(AuditTable::Samples, chunk, 100).unwrap();
        }
        assert_eq!(
            store
                .audit_page(AuditTable::Samples, None, 1_000)
                .unwrap()
                .events
                .len(),
            100
        );
        assert_eq!(
            store.audit_tail(10).unwrap(),
            vec![event(1_000, "approved"), event(5_000, "rejected")]
        );
        assert_eq!(store.purge_audit(2_000).unwrap(), 1);
        assert_eq!(
            store.audit_tail(10).unwrap(),
            vec![event(5_000, "rejected")]
        );
    }
}
