//! Openings: who may reach which server, until when. The store (redb) is the source of
//! truth and is always written first; the kernel maps follow it, and the sweeper and the
//! start-up reconciliation bring them back in line after any crash.
mod record;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use record::{Holder, OpeningId, OpeningRecord};
use tokio::sync::{Mutex, oneshot};
use tracing::{debug, info, warn};

use crate::{
    clock::{ClockPair, millis},
    config::ServerConfig,
    gate::{GateError, GateHandle, KernelOpening},
    store::{Store, StoreError},
};

/// Kernel expiries closer than this to the wanted value are left alone.
const EXPIRY_TOLERANCE_NS: u64 = 50_000_000;

/// Errors of opening management.
#[derive(Debug, thiserror::Error)]
pub enum OpeningsError {
    /// The kernel side failed.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking store task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The address cannot be opened.
    #[error("{0} is not a unicast address that can be opened")]
    BadAddress(IpAddr),
    /// The batch this grant was written in failed (the message says why).
    #[error("granting failed: {0}")]
    Batch(String),
}

/// A grant waiting to be written with the next batch.
struct PendingGrant {
    id: OpeningId,
    server_name: String,
    idle_timeout: Duration,
    max_lifetime: Duration,
    origin: String,
    connect_window: Duration,
    reply: oneshot::Sender<Result<OpeningRecord, OpeningsError>>,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Openings whose last holder expired and which were closed.
    pub closed: usize,
    /// Kernel expiries moved (extended for activity, or corrected).
    pub updated: usize,
    /// Kernel entries with no record, removed.
    pub stale_removed: usize,
}

/// An opening with the kernel's view of it.
#[derive(Clone, Debug)]
pub struct OpeningView {
    /// The controller's record.
    pub record: OpeningRecord,
    /// The kernel entry, if present.
    pub kernel: Option<gateway_common::Opening>,
    /// Clocks at the time of reading, to convert kernel times.
    pub clocks: ClockPair,
}

/// The opening manager. Cheap to share behind an `Arc`.
pub struct Openings {
    gate: GateHandle,
    store: Arc<Store>,
    records: Mutex<HashMap<OpeningId, OpeningRecord>>,
    /// Grants waiting for the next batch (see [`Openings::grant`]).
    waiting: std::sync::Mutex<Vec<PendingGrant>>,
    next_holder: AtomicU64,
}

/// True for an address the gate may open: not unspecified, loopback or multicast, not IPv4
/// broadcast, not link-local.
pub fn is_openable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local())
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified() || v6.is_loopback() || v6.is_multicast() || link_local)
        }
    }
}

impl Openings {
    /// A manager over `store`, with nothing loaded yet; call [`Openings::reconcile`] next.
    pub fn new(gate: GateHandle, store: Arc<Store>) -> Self {
        Self {
            gate,
            store,
            records: Mutex::new(HashMap::new()),
            waiting: std::sync::Mutex::new(Vec::new()),
            next_holder: AtomicU64::new(crate::clock::unix_ms()),
        }
    }

    /// Loads the store and makes the kernel match it: missing entries are added, stale ones
    /// removed, expiries corrected, and expired holders pruned.
    pub async fn reconcile(&self) -> Result<SweepReport, OpeningsError> {
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load_openings()).await??;
        let load_ms = started.elapsed().as_millis();
        {
            let mut records = self.records.lock().await;
            records.clear();
            records.extend(loaded.into_iter().map(|r| (r.id, r)));
        }
        let report = self.sweep().await?;
        info!(?report, load_ms, total_ms = started.elapsed().as_millis(), "reconciled openings with the kernel");
        Ok(report)
    }

    /// Grants `origin` access from `addr` to `server` for `connect_window` (extended by
    /// traffic up to the server's idle timeout and max lifetime).
    ///
    /// Grants that arrive while another batch is being written are written together in the
    /// next one: one durable commit and one kernel update for all of them (group commit). The
    /// writing runs in its own task, so a caller that goes away (a cancelled request) never
    /// leaves a batch half written.
    pub async fn grant(
        self: &Arc<Self>,
        server: &ServerConfig,
        addr: IpAddr,
        origin: &str,
        connect_window: Duration,
    ) -> Result<OpeningRecord, OpeningsError> {
        if !is_openable(addr) {
            return Err(OpeningsError::BadAddress(addr));
        }
        let (reply, answer) = oneshot::channel();
        self.waiting_grants().push(PendingGrant {
            id: OpeningId { server_id: server.id, addr },
            server_name: server.name.clone(),
            idle_timeout: server.idle_timeout,
            max_lifetime: server.max_lifetime,
            origin: origin.to_owned(),
            connect_window,
            reply,
        });
        // Whichever writer gets the lock first writes every waiting grant, ours included;
        // writers that find the queue empty have nothing to do.
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut records = this.records.lock().await;
            let batch = std::mem::take(&mut *this.waiting_grants());
            if !batch.is_empty() {
                this.grant_batch(&mut records, batch).await;
            }
        });
        answer.await.unwrap_or_else(|_| Err(OpeningsError::Batch("the grant batch was abandoned".into())))
    }

    fn waiting_grants(&self) -> std::sync::MutexGuard<'_, Vec<PendingGrant>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes a batch of grants: records first (one commit), then the kernel (one call),
    /// then answers each waiter.
    async fn grant_batch(&self, records: &mut HashMap<OpeningId, OpeningRecord>, batch: Vec<PendingGrant>) {
        let clocks = ClockPair::now();
        let mut updated: HashMap<OpeningId, OpeningRecord> = HashMap::with_capacity(batch.len());
        for grant in &batch {
            let holder = Holder {
                id: format!("{}-{}", grant.origin, self.next_holder.fetch_add(1, Ordering::Relaxed)),
                origin: grant.origin.clone(),
                granted_unix_ms: clocks.unix_ms,
                connect_until_unix_ms: clocks.unix_ms.saturating_add(millis(grant.connect_window)),
                deadline_unix_ms: clocks.unix_ms.saturating_add(millis(grant.max_lifetime)),
            };
            let mut record = match updated.get(&grant.id).or_else(|| records.get(&grant.id)) {
                Some(existing) => {
                    let mut record = existing.clone();
                    record.prune(clocks.unix_ms);
                    record.add_holder(holder);
                    record
                }
                None => OpeningRecord::new(grant.id, millis(grant.idle_timeout), holder),
            };
            record.idle_timeout_ms = millis(grant.idle_timeout);
            updated.insert(grant.id, record);
        }
        if let Err(err) = self.persist(updated.values().cloned().collect(), Vec::new()).await {
            let message = err.to_string();
            for grant in batch {
                let _ = grant.reply.send(Err(OpeningsError::Batch(message.clone())));
            }
            return;
        }
        let expiries: Vec<(OpeningId, u64, bool)> = updated
            .values()
            .map(|r| (r.id, clocks.unix_ms_to_mono_ns(r.expiry_unix_ms()), !records.contains_key(&r.id)))
            .collect();
        // The records are stored: keep them even if the kernel update fails (the sweeper
        // retries it).
        records.extend(updated.iter().map(|(id, record)| (*id, record.clone())));
        let kernel = self
            .gate
            .run(move |maps| -> Result<(), GateError> {
                for (id, expires_at_ns, new) in expiries {
                    if new {
                        maps.create_opening(id.server_id, id.addr, expires_at_ns)?;
                    } else {
                        maps.set_expiry(id.server_id, id.addr, expires_at_ns)?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(OpeningsError::from)
            .and_then(|done| done.map_err(OpeningsError::from));
        let failure = kernel.err().map(|err| err.to_string());
        for grant in batch {
            let answer = match (&failure, updated.get(&grant.id)) {
                (None, Some(record)) => {
                    info!(server = %grant.server_name, client_ip = %grant.id.addr, origin = %grant.origin, holders = record.holders.len(), "opening granted");
                    Ok(record.clone())
                }
                (Some(message), _) => Err(OpeningsError::Batch(message.clone())),
                (None, None) => Err(OpeningsError::Batch("grant missing from its batch".into())),
            };
            let _ = grant.reply.send(answer);
        }
    }

    /// Closes openings of `addr` (on `server_id`, or on every server); returns how many.
    pub async fn revoke_address(
        &self,
        server_id: Option<u32>,
        addr: IpAddr,
    ) -> Result<usize, OpeningsError> {
        let mut records = self.records.lock().await;
        let ids: Vec<OpeningId> = records
            .keys()
            .filter(|id| id.addr == addr && server_id.is_none_or(|s| s == id.server_id))
            .copied()
            .collect();
        self.close(&mut records, ids).await
    }

    /// Removes every holder granted to `origin`, closing openings left without holders.
    pub async fn revoke_origin(&self, origin: &str) -> Result<usize, OpeningsError> {
        let mut records = self.records.lock().await;
        let mut emptied = Vec::new();
        let mut changed = Vec::new();
        for record in records.values() {
            let mut updated = record.clone();
            if updated.remove_origin(origin) == 0 {
                continue;
            }
            if updated.is_empty() { emptied.push(updated.id) } else { changed.push(updated) }
        }
        let count = emptied.len();
        self.persist(changed.clone(), Vec::new()).await?;
        for record in changed {
            records.insert(record.id, record);
        }
        self.close(&mut records, emptied).await?;
        Ok(count)
    }

    /// Removes the holders `origin` has on the opening of `addr` on `server_id`, closing it if
    /// no other holder is left; returns whether it closed. (An OpenVPN client disconnected.)
    pub async fn release(&self, server_id: u32, addr: IpAddr, origin: &str) -> Result<bool, OpeningsError> {
        let id = OpeningId { server_id, addr };
        let mut records = self.records.lock().await;
        let Some(mut record) = records.get(&id).cloned() else {
            return Ok(false);
        };
        if record.remove_origin(origin) == 0 {
            return Ok(false);
        }
        if record.is_empty() {
            self.close(&mut records, vec![id]).await?;
            info!(server_id, client_ip = %addr, origin, "opening released and closed");
            return Ok(true);
        }
        self.persist(vec![record.clone()], Vec::new()).await?;
        let expires_at_ns = ClockPair::now().unix_ms_to_mono_ns(record.expiry_unix_ms());
        self.gate.run(move |maps| maps.set_expiry(id.server_id, id.addr, expires_at_ns)).await??;
        info!(server_id, client_ip = %addr, origin, holders = record.holders.len(), "hold released; opening kept");
        records.insert(id, record);
        Ok(false)
    }

    /// Deletes records (store first, so a crash cannot resurrect them) then kernel entries.
    async fn close(
        &self,
        records: &mut HashMap<OpeningId, OpeningRecord>,
        ids: Vec<OpeningId>,
    ) -> Result<usize, OpeningsError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.persist(Vec::new(), ids.clone()).await?;
        for id in &ids {
            records.remove(id);
        }
        let count = ids.len();
        self.gate
            .run(move |maps| -> Result<(), GateError> {
                for id in ids {
                    maps.remove_opening(id.server_id, id.addr)?;
                }
                Ok(())
            })
            .await??;
        Ok(count)
    }

    async fn persist(
        &self,
        put: Vec<OpeningRecord>,
        remove: Vec<OpeningId>,
    ) -> Result<(), OpeningsError> {
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&OpeningRecord> = put.iter().collect();
            store.save_openings(&refs, &remove)
        })
        .await??;
        Ok(())
    }

    /// Every opening with its kernel state.
    pub async fn list(&self) -> Result<Vec<OpeningView>, OpeningsError> {
        let records = self.records.lock().await;
        let kernel: HashMap<OpeningId, gateway_common::Opening> = self
            .gate
            .run(|maps| maps.openings())
            .await??
            .into_iter()
            .map(|k| (OpeningId { server_id: k.server_id, addr: k.addr }, k.state))
            .collect();
        let clocks = ClockPair::now();
        let mut views: Vec<OpeningView> = records
            .values()
            .map(|record| OpeningView {
                record: record.clone(),
                kernel: kernel.get(&record.id).copied(),
                clocks,
            })
            .collect();
        views.sort_by_key(|v| v.record.id);
        Ok(views)
    }

    /// One pass of the sweeper: learn traffic from the kernel, extend active openings,
    /// close expired ones, remove kernel entries nobody holds.
    pub async fn sweep(&self) -> Result<SweepReport, OpeningsError> {
        let mut records = self.records.lock().await;
        let kernel = self.gate.run(|maps| maps.openings()).await??;
        let clocks = ClockPair::now();
        let mut report = SweepReport::default();
        let mut kernel_expiry = HashMap::with_capacity(kernel.len());
        let mut stale = Vec::new();
        for KernelOpening { server_id, addr, state } in kernel {
            let id = OpeningId { server_id, addr };
            match records.get_mut(&id) {
                Some(record) => {
                    if state.last_seen_ns != 0 {
                        record.observe_traffic(clocks.mono_ns_to_unix_ms(state.last_seen_ns));
                    }
                    kernel_expiry.insert(id, state.expires_at_ns);
                }
                None => stale.push(id),
            }
        }
        let mut closed = Vec::new();
        let mut pruned = Vec::new();
        let mut updates = Vec::new();
        for record in records.values_mut() {
            if record.prune(clocks.unix_ms) > 0 {
                if record.is_empty() {
                    closed.push(record.id);
                    continue;
                }
                pruned.push(record.clone());
            }
            let wanted = clocks.unix_ms_to_mono_ns(record.expiry_unix_ms());
            let current = kernel_expiry.get(&record.id).copied();
            if current.is_none_or(|ns| ns.abs_diff(wanted) > EXPIRY_TOLERANCE_NS) {
                updates.push((record.id, wanted, current.is_none()));
            }
        }
        self.persist(pruned, closed.clone()).await?;
        for id in &closed {
            debug!(server_id = id.server_id, client_ip = %id.addr, "opening expired");
            records.remove(id);
        }
        report.closed = closed.len();
        report.updated = updates.len();
        report.stale_removed = stale.len();
        if !stale.is_empty() {
            warn!(count = stale.len(), "removing kernel openings that no record holds");
        }
        self.gate
            .run(move |maps| -> Result<(), GateError> {
                for id in closed.into_iter().chain(stale) {
                    maps.remove_opening(id.server_id, id.addr)?;
                }
                for (id, expires_at_ns, missing) in updates {
                    if missing {
                        maps.create_opening(id.server_id, id.addr, expires_at_ns)?;
                    } else {
                        maps.set_expiry(id.server_id, id.addr, expires_at_ns)?;
                    }
                }
                Ok(())
            })
            .await??;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::is_openable;

    #[test]
    fn only_unicast_addresses_are_openable() {
        for good in ["10.0.0.2", "203.0.113.9", "fd00::2", "2001:db8::1"] {
            assert!(is_openable(good.parse().unwrap()), "{good}");
        }
        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "169.254.1.1", "::", "::1", "ff02::1", "fe80::1"] {
            assert!(!is_openable(bad.parse().unwrap()), "{bad}");
        }
    }
}
