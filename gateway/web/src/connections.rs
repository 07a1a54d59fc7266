//! Connection admission: a global cap, a budget per source, and reclaiming of connections
//! that have not earned their place yet.
//!
//! A connection is *pending* from accept until its first request's headers are complete
//! (TLS handshake, PROXY header and the first request's head are all pending time); after
//! that it is *active*. Near the global cap, the oldest pending connections are reclaimed
//! (closed) to make room before anyone is refused, so idle or slowloris floods cannot lock
//! out a client that completes a request. Under pressure (half the cap in use) pending
//! connections get a much shorter deadline. A source is an IPv4 prefix (a /32 by default)
//! or an IPv6 prefix (a /64 by default) and may hold at most `max_per_source` connections.
//! Reclaiming for room prefers sources that hold many connections, so a client with one
//! connection survives even a fast-churning flood. Refusals are counted in
//! [`ConnectionStats`], never logged one by one.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::ConnectionLimits;

/// Deadline of a pending connection (handshake and first request) while the front is under
/// pressure; otherwise the handshake and header timeouts apply.
pub const PRESSURE_PENDING_TIMEOUT: Duration = Duration::from_secs(2);
/// A source with at most this many connections is not a flood: its pending connections are
/// reclaimed for room only when no heavier source has one among the oldest.
pub const LIGHT_SOURCE: u32 = 4;
/// How many of the oldest pending connections are looked at for a heavy source's.
const RECLAIM_SCAN: usize = 64;

/// Counters of the web front's connection layer, for logs and metrics. All relaxed atomics:
/// `open` is a gauge, the others only grow.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now (admitted and not yet closed or reclaimed).
    pub open: AtomicU64,
    /// Connections admitted since start.
    pub accepted: AtomicU64,
    /// Connections closed on accept because their source had used its budget.
    pub refused_per_source: AtomicU64,
    /// Connections closed on accept because the cap was reached and nothing was reclaimable.
    pub refused_full: AtomicU64,
    /// Pending connections closed to make room near the cap, or past their deadline under
    /// pressure.
    pub reclaimed: AtomicU64,
    /// Requests answered 429 by the per-source rate limit.
    pub rate_limited: AtomicU64,
}

impl ConnectionStats {
    /// Connections refused on accept, for either reason.
    pub fn refused(&self) -> u64 {
        self.refused_per_source.load(Ordering::Relaxed) + self.refused_full.load(Ordering::Relaxed)
    }
}

/// Why a connection was closed on accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds `max_per_source` connections.
    SourceBudget,
    /// The cap is reached and no pending connection could be reclaimed.
    Full,
}

/// The budget key of an address: its prefix at the configured length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u128),
}

struct Entry {
    /// None for a load balancer's connections (not budgeted per source).
    source: Option<Source>,
    started: Instant,
    /// Present while pending: sending on it closes the connection.
    reclaim: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    live: HashMap<u64, Entry>,
    /// Ids of pending connections; ids grow with time, so the first is the oldest.
    pending: BTreeSet<u64>,
    per_source: HashMap<Source, u32>,
}

impl Inner {
    /// Forgets connection `id` (closed, or reclaimed); `None` if it was already gone.
    fn forget(&mut self, id: u64) -> Option<Entry> {
        let entry = self.live.remove(&id)?;
        self.pending.remove(&id);
        if let Some(source) = entry.source
            && let Some(count) = self.per_source.get_mut(&source)
        {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
        Some(entry)
    }

    /// Closes pending connection `id`.
    fn reclaim(&mut self, id: u64) {
        if let Some(entry) = self.forget(id)
            && let Some(reclaim) = entry.reclaim
        {
            let _ = reclaim.send(());
        }
    }

    /// Closes the oldest pending connection; false if there is none.
    fn reclaim_oldest(&mut self) -> bool {
        let Some(id) = self.pending.first().copied() else {
            return false;
        };
        self.reclaim(id);
        true
    }

    /// Closes a pending connection to make room: among the [`RECLAIM_SCAN`] oldest, the
    /// oldest whose source holds more than [`LIGHT_SOURCE`] connections (a flood's), else
    /// the oldest of all; false if none is pending.
    fn reclaim_for_room(&mut self) -> bool {
        let heavy = self.pending.iter().take(RECLAIM_SCAN).copied().find(|id| {
            self.live
                .get(id)
                .and_then(|entry| entry.source)
                .is_some_and(|source| {
                    self.per_source.get(&source).copied().unwrap_or(0) > LIGHT_SOURCE
                })
        });
        match heavy {
            Some(id) => {
                self.reclaim(id);
                true
            }
            None => self.reclaim_oldest(),
        }
    }
}

/// Admission state shared by the accept loop, the connections and the sweeper.
pub struct Tracker {
    limits: ConnectionLimits,
    stats: Arc<ConnectionStats>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("limits", &self.limits)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A connection's place: closing the connection (dropping this) frees it.
#[derive(Debug)]
pub struct Admitted {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Tracker {
    /// A tracker enforcing `limits`, counting into `stats`.
    pub fn new(limits: ConnectionLimits, stats: Arc<ConnectionStats>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            stats,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ConnectionStats> {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn source(&self, ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.limits.source_prefix_v4))
                    .unwrap_or(0);
                Source::V4(u32::from(v4) & mask)
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.limits.source_prefix_v6))
                    .unwrap_or(0);
                Source::V6(u128::from(v6) & mask)
            }
        }
    }

    /// Where reclaiming starts: 1/16 of the cap is kept free for connections that complete.
    fn high_water(&self) -> usize {
        let max = self.limits.max_connections as usize;
        max - max / 16
    }

    /// Whether half the cap is in use (pending connections then get
    /// [`PRESSURE_PENDING_TIMEOUT`]).
    pub fn under_pressure(&self) -> bool {
        self.lock().live.len() >= (self.limits.max_connections as usize) / 2
    }

    /// Admits a connection from `ip` at `now` (counted against its source's budget when
    /// `budgeted`), reclaiming the oldest pending connection when near the cap; the
    /// receiver completes if this connection is reclaimed in turn.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        budgeted: bool,
        now: Instant,
    ) -> Result<(Admitted, oneshot::Receiver<()>), Refused> {
        let source = budgeted.then(|| self.source(ip));
        let mut inner = self.lock();
        if let Some(source) = source
            && inner.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source
        {
            self.stats
                .refused_per_source
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refused::SourceBudget);
        }
        let mut reclaimed = 0;
        while inner.live.len() >= self.high_water() && inner.reclaim_for_room() {
            reclaimed += 1;
            // Near the cap, one new connection costs at most one pending one; at the cap
            // as many as it takes to get below it.
            if inner.live.len() < self.limits.max_connections as usize {
                break;
            }
        }
        if reclaimed > 0 {
            self.stats.reclaimed.fetch_add(reclaimed, Ordering::Relaxed);
        }
        if inner.live.len() >= self.limits.max_connections as usize {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            self.stats
                .open
                .store(inner.live.len() as u64, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (reclaim, reclaimed_rx) = oneshot::channel();
        inner.live.insert(
            id,
            Entry {
                source,
                started: now,
                reclaim: Some(reclaim),
            },
        );
        inner.pending.insert(id);
        if let Some(source) = source {
            *inner.per_source.entry(source).or_insert(0) += 1;
        }
        self.stats
            .open
            .store(inner.live.len() as u64, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok((
            Admitted {
                tracker: self.clone(),
                id,
            },
            reclaimed_rx,
        ))
    }

    /// Under pressure, reclaims pending connections older than [`PRESSURE_PENDING_TIMEOUT`];
    /// how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        if inner.live.len() < (self.limits.max_connections as usize) / 2 {
            return 0;
        }
        let mut count = 0;
        while let Some(&id) = inner.pending.first() {
            let expired = inner.live.get(&id).is_none_or(|entry| {
                now.saturating_duration_since(entry.started) >= PRESSURE_PENDING_TIMEOUT
            });
            if !expired || !inner.reclaim_oldest() {
                break;
            }
            count += 1;
        }
        self.stats
            .open
            .store(inner.live.len() as u64, Ordering::Relaxed);
        self.stats
            .reclaimed
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().live.len()
    }

    /// Connections open now that have not sent a first request.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Admitted {
    /// The first request arrived: this connection can no longer be reclaimed.
    pub fn activate(&self) {
        let mut inner = self.tracker.lock();
        if inner.pending.remove(&self.id)
            && let Some(entry) = inner.live.get_mut(&self.id)
        {
            entry.reclaim = None;
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut inner = self.tracker.lock();
        inner.forget(self.id);
        self.tracker
            .stats
            .open
            .store(inner.live.len() as u64, Ordering::Relaxed);
    }
}

/// Logs what the connection layer refused or reclaimed, one line per `every` at most and
/// only when something happened; gives freed memory back to the OS once a flood is over.
pub async fn summarize(tracker: Arc<Tracker>, every: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_line = Instant::now();
    let (mut refused_before, mut reclaimed_before, mut limited_before) = (0, 0, 0);
    let mut peak = 0usize;
    loop {
        tick.tick().await;
        let now = Instant::now();
        tracker.sweep(now);
        let open = tracker.open();
        peak = peak.max(open);
        if peak >= 256 && open <= peak / 8 {
            trim_heap();
            peak = open;
        }
        if now.duration_since(last_line) < every {
            continue;
        }
        let stats = tracker.stats();
        let refused = stats.refused();
        let reclaimed = stats.reclaimed.load(Ordering::Relaxed);
        let limited = stats.rate_limited.load(Ordering::Relaxed);
        if (refused, reclaimed, limited) != (refused_before, reclaimed_before, limited_before) {
            tracing::warn!(
                open,
                refused = refused - refused_before,
                reclaimed = reclaimed - reclaimed_before,
                rate_limited = limited - limited_before,
                seconds = now.duration_since(last_line).as_secs(),
                "connections refused, reclaimed or rate limited since the last summary"
            );
            (refused_before, reclaimed_before, limited_before) = (refused, reclaimed, limited);
        }
        last_line = now;
    }
}

/// Returns free heap pages to the OS (glibc keeps them otherwise, and a flood's buffers
/// would stay in the resident set).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, per_source: u32) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            max_per_source: per_source,
            ..ConnectionLimits::DEFAULT
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4((0x0a00_0000 + i).into())
    }

    #[test]
    fn per_source_budget_counts_v4_addresses_and_v6_64s() {
        let tracker = Tracker::new(limits(1000, 2), Arc::default());
        let now = Instant::now();
        let a = [
            tracker.admit(ip("198.51.100.7"), true, now).unwrap(),
            tracker.admit(ip("::ffff:198.51.100.7"), true, now).unwrap(),
        ];
        assert_eq!(
            tracker.admit(ip("198.51.100.7"), true, now).unwrap_err(),
            Refused::SourceBudget
        );
        assert!(
            tracker.admit(ip("198.51.100.8"), true, now).is_ok(),
            "another address has its own budget"
        );
        let b = [
            tracker.admit(ip("2001:db8:0:1::1"), true, now).unwrap(),
            tracker
                .admit(ip("2001:db8:0:1:ffff::2"), true, now)
                .unwrap(),
        ];
        assert_eq!(
            tracker.admit(ip("2001:db8:0:1::3"), true, now).unwrap_err(),
            Refused::SourceBudget,
            "same /64"
        );
        assert!(
            tracker.admit(ip("2001:db8:0:2::1"), true, now).is_ok(),
            "next /64"
        );
        drop(a);
        assert!(
            tracker.admit(ip("198.51.100.7"), true, now).is_ok(),
            "closing frees the budget"
        );
        assert_eq!(
            tracker.stats().refused_per_source.load(Ordering::Relaxed),
            2
        );
        drop(b);
    }

    #[test]
    fn source_prefixes_are_configurable() {
        let tracker = Tracker::new(
            ConnectionLimits {
                max_connections: 100,
                max_per_source: 1,
                source_prefix_v4: 24,
                source_prefix_v6: 48,
            },
            Arc::default(),
        );
        let now = Instant::now();
        let _a = tracker.admit(ip("198.51.100.7"), true, now).unwrap();
        assert!(
            tracker.admit(ip("198.51.100.200"), true, now).is_err(),
            "same /24"
        );
        let _b = tracker.admit(ip("198.51.101.1"), true, now).unwrap();
        let _c = tracker.admit(ip("2001:db8:1:1::1"), true, now).unwrap();
        assert!(
            tracker.admit(ip("2001:db8:1:2::1"), true, now).is_err(),
            "same /48"
        );
    }

    #[test]
    fn near_the_cap_the_oldest_pending_connection_is_reclaimed_and_active_ones_are_kept() {
        let tracker = Tracker::new(limits(32, 32), Arc::default());
        let now = Instant::now();
        // 30 = high water (32 - 2): the first is active, 29 are pending.
        let mut held = Vec::new();
        for i in 0..30 {
            held.push(tracker.admit(v4(i), true, now).unwrap());
        }
        held[0].0.activate();
        let (_new, _rx) = tracker.admit(v4(100), true, now).unwrap();
        assert_eq!(tracker.stats().reclaimed.load(Ordering::Relaxed), 1);
        assert!(
            held[1].1.try_recv().is_ok(),
            "the oldest pending connection was told to close"
        );
        assert!(held[0].1.try_recv().is_err(), "the active one was not");
        assert!(held[2].1.try_recv().is_err(), "nor a younger pending one");
        assert_eq!(tracker.open(), 30);
        // A flood of new pending connections never gets past the cap and never reclaims the
        // active connection.
        let mut flood = Vec::new();
        for i in 0..200 {
            flood.push(tracker.admit(v4(1000 + i), true, now).unwrap());
            assert!(tracker.open() <= 32);
        }
        assert!(
            held[0].1.try_recv().is_err(),
            "the active connection survived the flood"
        );
        assert_eq!(
            tracker.stats().refused(),
            0,
            "nobody was refused while something was reclaimable"
        );
    }

    #[test]
    fn reclaiming_for_room_spares_a_light_source_while_a_heavy_one_has_pending_connections() {
        let tracker = Tracker::new(limits(32, 32), Arc::default());
        let now = Instant::now();
        let mut client = tracker.admit(ip("198.51.100.7"), true, now).unwrap();
        let mut flood: Vec<_> = (0..29)
            .map(|_| tracker.admit(ip("203.0.113.66"), true, now).unwrap())
            .collect();
        for _ in 0..100 {
            flood.push(tracker.admit(ip("203.0.113.66"), true, now).unwrap());
        }
        assert!(
            client.1.try_recv().is_err(),
            "the one-connection client was not reclaimed"
        );
        assert_eq!(tracker.stats().reclaimed.load(Ordering::Relaxed), 100);
        assert!(flood[0].1.try_recv().is_ok(), "the flood's oldest was");
    }

    #[test]
    fn at_the_cap_with_nothing_pending_new_connections_are_refused() {
        let tracker = Tracker::new(limits(16, 16), Arc::default());
        let now = Instant::now();
        let held: Vec<_> = (0..16)
            .map(|i| {
                let admitted = tracker.admit(v4(i), true, now).unwrap();
                admitted.0.activate();
                admitted
            })
            .collect();
        assert_eq!(tracker.admit(v4(99), true, now).unwrap_err(), Refused::Full);
        assert_eq!(tracker.stats().refused_full.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(tracker.open(), 0);
        assert_eq!(tracker.stats().open.load(Ordering::Relaxed), 0);
        assert!(tracker.admit(v4(99), true, now).is_ok());
    }

    #[test]
    fn under_pressure_old_pending_connections_are_swept_young_and_active_ones_kept() {
        let tracker = Tracker::new(limits(16, 16), Arc::default());
        let t0 = Instant::now();
        let old: Vec<_> = (0..6)
            .map(|i| tracker.admit(v4(i), true, t0).unwrap())
            .collect();
        old[0].0.activate();
        let later = t0 + PRESSURE_PENDING_TIMEOUT;
        let mut young = vec![tracker.admit(v4(10), true, later).unwrap()];
        assert!(!tracker.under_pressure());
        assert_eq!(
            tracker.sweep(later),
            0,
            "7 of 16 is no pressure: nothing is swept"
        );
        young.push(tracker.admit(v4(20), true, later).unwrap());
        assert!(tracker.under_pressure());
        assert_eq!(tracker.sweep(later), 5, "the five old pending connections");
        assert_eq!(tracker.open(), 3);
        let mut old = old;
        assert!(old[0].1.try_recv().is_err(), "the active one stays");
        assert!(old.iter_mut().skip(1).all(|c| c.1.try_recv().is_ok()));
        assert!(young.iter_mut().all(|c| c.1.try_recv().is_err()));
    }
}
