//! The audit log: every decision with its precise reason, to tracing at once and to redb in
//! batches. A flood of rejected requests never costs one disk sync each; if the queue
//! overflows, events are counted as dropped (and still logged through tracing).
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::store::{AuditEvent, Store};

/// Events waiting for the writer at most.
const QUEUE: usize = 16_384;
/// Events written in one transaction at most.
const BATCH: usize = 1_024;
/// How long the writer waits to fill a batch.
const LINGER: Duration = Duration::from_millis(100);

/// Handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<AuditEvent>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer task keeping at most `retention` events in `store`.
    pub fn start(store: Arc<Store>, retention: u64) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, retention, events));
        Self { queue, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Records an event (logged now, stored within about 100 ms).
    pub fn record(&self, event: AuditEvent) {
        info!(
            target: "xdpgate::audit",
            kind = ?event.kind,
            client_id = %event.client_id,
            client_ip = %event.remote,
            server = %event.server,
            verdict = %event.verdict,
            code = %event.code,
            reason = %event.reason,
            "audit"
        );
        if self.queue.try_send(event).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(dropped, "audit queue full; events dropped from the store (still in the log)");
            }
        }
    }

    /// Events that could not be queued for the store.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_batches(store: Arc<Store>, retention: u64, mut events: mpsc::Receiver<AuditEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = events.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        let writing = std::mem::take(&mut batch);
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || store.append_audit(&writing, retention)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(error = %err, "writing audit events failed"),
            Err(err) => error!(error = %err, "audit writer task failed"),
        }
    }
}
