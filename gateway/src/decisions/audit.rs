//! The audit log's writers.
//!
//! Authenticated approval decisions are not written here: an approval's record is committed
//! with its opening and a refusal's with its nonce (see [`crate::store::Journal`]). This
//! module writes enrollments and operator actions (in batches), and turns unauthenticated
//! failures into counters by reason and source prefix plus a rate-limited sample, so a flood
//! costs no write per request and cannot push real decisions out of the log.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::store::{AuditEvent, AuditTable, Store};

/// Events waiting for the writer at most.
const QUEUE: usize = 16_384;
/// Events written in one transaction at most.
const BATCH: usize = 1_024;
/// How long the writer waits to fill a batch.
const LINGER: Duration = Duration::from_millis(100);
/// Unauthenticated failures sampled into the store per second at most.
pub const SAMPLES_PER_SEC: u32 = 10;
/// Distinct (reason, prefix) counters kept at most; past that, new pairs count under the
/// prefix `other`.
pub const MAX_COUNTERS: usize = 4_096;

/// One counter of unauthenticated failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCount {
    /// The precise reason kind (e.g. `hmac_mismatch`, `malformed_json`).
    pub reason: &'static str,
    /// The source prefix (`/24` for IPv4, `/48` for IPv6), or `other`.
    pub prefix: String,
    /// Failures since start.
    pub count: u64,
}

/// The key of a counter: reason and source prefix (`None`: the overflow bucket).
type CounterKey = (&'static str, Option<IpAddr>);

#[derive(Debug)]
struct Failures {
    counts: HashMap<CounterKey, u64>,
    window_start: Instant,
    sampled_in_window: u32,
}

/// Handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<(AuditTable, AuditEvent)>,
    dropped: Arc<AtomicU64>,
    failures: Arc<Mutex<Failures>>,
}

/// The counting prefix of a source address: its /24 (IPv4) or /48 (IPv6).
pub fn source_prefix(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

fn prefix_text(prefix: Option<IpAddr>) -> String {
    match prefix {
        Some(IpAddr::V4(v4)) => format!("{v4}/24"),
        Some(IpAddr::V6(v6)) => format!("{v6}/48"),
        None => "other".to_owned(),
    }
}

impl AuditLog {
    /// Starts the writer task; the samples table keeps at most `max_samples` events.
    pub fn start(store: Arc<Store>, max_samples: u64) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, max_samples, events));
        let failures = Failures {
            counts: HashMap::new(),
            window_start: Instant::now(),
            sampled_in_window: 0,
        };
        Self {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(failures)),
        }
    }

    /// Records an enrollment or operator event (logged now, stored within about 100 ms).
    pub fn record(&self, event: AuditEvent) {
        log(&event);
        self.enqueue(AuditTable::Decisions, event);
    }

    /// Counts an unauthenticated failure from `remote`; `sample` builds its record, which is
    /// logged and stored only while under [`SAMPLES_PER_SEC`].
    pub fn failure(
        &self,
        reason: &'static str,
        remote: IpAddr,
        now: Instant,
        sample: impl FnOnce() -> AuditEvent,
    ) {
        let take_sample = {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let prefix = source_prefix(remote);
            let key = if failures.counts.len() < MAX_COUNTERS
                || failures.counts.contains_key(&(reason, Some(prefix)))
            {
                (reason, Some(prefix))
            } else {
                (reason, None)
            };
            *failures.counts.entry(key).or_default() += 1;
            if now.duration_since(failures.window_start) >= Duration::from_secs(1) {
                failures.window_start = now;
                failures.sampled_in_window = 0;
            }
            let take = failures.sampled_in_window < SAMPLES_PER_SEC;
            if take {
                failures.sampled_in_window += 1;
            }
            take
        };
        if take_sample {
            let event = sample();
            log(&event);
            self.enqueue(AuditTable::Samples, event);
        }
    }

    /// The unauthenticated failure counters, largest first.
    pub fn failure_counts(&self) -> Vec<FailureCount> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<FailureCount> = failures
            .counts
            .iter()
            .map(|((reason, prefix), count)| FailureCount {
                reason,
                prefix: prefix_text(*prefix),
                count: *count,
            })
            .collect();
        out.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.reason.cmp(b.reason))
                .then_with(|| a.prefix.cmp(&b.prefix))
        });
        out
    }

    fn enqueue(&self, table: AuditTable, event: AuditEvent) {
        if self.queue.try_send((table, event)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    "audit queue full; events dropped from the store (still in the log)"
                );
            }
        }
    }

    /// Events that could not be queued for the store.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Logs an audit event through tracing (target `xdpgate::audit`).
pub fn log(event: &AuditEvent) {
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
}

async fn write_batches(
    store: Arc<Store>,
    max_samples: u64,
    mut events: mpsc::Receiver<(AuditTable, AuditEvent)>,
) {
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
        let written = tokio::task::spawn_blocking(move || {
            for table in [AuditTable::Decisions, AuditTable::Samples] {
                let events: Vec<AuditEvent> = writing
                    .iter()
                    .filter(|(t, _)| *t == table)
                    .map(|(_, e)| e.clone())
                    .collect();
                if !events.is_empty() {
                    store.append_audit(table, &events, max_samples)?;
                }
            }
            Ok::<(), crate::store::StoreError>(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(error = %err, "writing audit events failed"),
            Err(err) => error!(error = %err, "audit writer task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_group_sources() {
        assert_eq!(
            source_prefix("198.51.100.77".parse().unwrap()),
            "198.51.100.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_prefix("2001:db8:1:2:3::9".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_prefix("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.0".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn failures_are_counted_all_and_sampled_at_most_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let log = AuditLog::start(store.clone(), 1_000);
        let start = Instant::now();
        let mut sampled = 0;
        for i in 0..1_000u32 {
            let remote = IpAddr::from([10, 0, (i % 2) as u8, (i % 200) as u8]);
            log.failure(
                "hmac_mismatch",
                remote,
                start + Duration::from_millis(u64::from(i)),
                || {
                    sampled += 1;
                    AuditEvent {
                        unix_ms: u64::from(i),
                        kind: crate::store::AuditKind::Approval,
                        client_id: String::new(),
                        remote: remote.to_string(),
                        server: String::new(),
                        verdict: "rejected".into(),
                        code: "denied".into(),
                        reason: "hmac".into(),
                    }
                },
            );
        }
        // 1,000 failures over one second and a bit: two windows of at most 10 samples.
        assert!(
            sampled <= 2 * SAMPLES_PER_SEC as usize && sampled >= SAMPLES_PER_SEC as usize,
            "{sampled}"
        );
        let counts = log.failure_counts();
        assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 1_000);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(
            counts
                .iter()
                .all(|c| c.reason == "hmac_mismatch" && c.prefix.ends_with(".0/24"))
        );
        tokio::time::sleep(LINGER * 3).await;
        let stored = store
            .audit_page(AuditTable::Samples, None, 10_000)
            .unwrap()
            .events
            .len();
        assert_eq!(
            stored, sampled,
            "the samples, and only they, reach the store"
        );
        assert!(
            store.audit_tail(10).unwrap().is_empty(),
            "no failure is an authenticated decision"
        );
    }
}
