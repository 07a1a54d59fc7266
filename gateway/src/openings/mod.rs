//! Openings: who may reach which server, until when. The store (redb) is the source of
//! truth and is always written first; the kernel maps follow it, and the sweeper and the
//! start-up reconciliation bring them back in line after any crash.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use crate::opening_record::{Holder, OpeningId, OpeningRecord};
use tokio::sync::{Mutex, oneshot};
use tracing::{debug, info, warn};

use crate::{
    clock::{ClockPair, millis},
    config::ServerConfig,
    gate::{GateError, GateHandle, KernelOpening},
    store::{Journal, Store, StoreError},
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
    /// The client was disabled or removed after its approval started: nothing was opened.
    #[error("client `{0}` was revoked while its approval was in flight")]
    Revoked(String),
    /// The client already holds its maximum number of open addresses on this server.
    #[error("client `{client}` already holds {limit} open address(es) on this server")]
    ClientCap {
        /// The client id.
        client: String,
        /// The configured limit.
        limit: usize,
    },
    /// The kernel map of this address family is nearly full: new approvals wait.
    #[error("the {family} openings map is nearly full ({open} of {capacity})")]
    NearCapacity {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Openings of that family.
        open: usize,
        /// The map's capacity.
        capacity: usize,
    },
    /// A `vpn` self-shutdown holds: the gate stays closed to everyone.
    #[error("the gate is sealed by a vpn self-shutdown (see `xdpgate notices status`)")]
    Sealed,
}

impl OpeningsError {
    /// The same refusal again, for the other grants of a call refused by a check (the check
    /// errors are plain data; anything else becomes a [`OpeningsError::Batch`] message).
    fn same_refusal(&self) -> Self {
        match self {
            Self::Revoked(client) => Self::Revoked(client.clone()),
            Self::ClientCap { client, limit } => Self::ClientCap {
                client: client.clone(),
                limit: *limit,
            },
            Self::NearCapacity {
                family,
                open,
                capacity,
            } => Self::NearCapacity {
                family,
                open: *open,
                capacity: *capacity,
            },
            other => Self::Batch(other.to_string()),
        }
    }
}

/// What an approval's grant must still satisfy when it is written, checked under the lock
/// that writes it (so a revocation or another grant cannot slip in between).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantCheck {
    /// The client's revocation generation read before its request was validated
    /// ([`Openings::generation`]); a revocation since then refuses the grant.
    pub generation: u64,
    /// At most this many addresses of one server may be held by the client at once.
    pub max_addresses_per_client: usize,
}

/// Approvals stop (answer `unavailable`) when a family's map has fewer free entries than
/// `capacity / CAPACITY_RESERVE_DIVISOR`; admin grants may still use the reserve.
pub const CAPACITY_RESERVE_DIVISOR: usize = 16;

/// A grant waiting to be written with the next batch.
struct PendingGrant {
    id: OpeningId,
    server_name: String,
    idle_timeout: Duration,
    max_lifetime: Duration,
    origin: String,
    /// The approving device's fingerprint, if the approval needed one.
    device: Option<String>,
    connect_window: Duration,
    check: Option<GrantCheck>,
    /// The [`Openings::grant_all`] call this grant belongs to: its grants pass their checks
    /// together or not at all.
    call: u64,
    /// Records committed with this grant's batch (see [`Openings::grant_all`]).
    journal: Option<Journal>,
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

/// The kernel (`CLOCK_MONOTONIC`) expiry of a record, from its boot-clock lifetimes: the wall
/// clock plays no part, so stepping it moves nothing.
fn kernel_expiry_ns(record: &OpeningRecord, clocks: &ClockPair) -> u64 {
    clocks.boot_ms_to_mono_ns(record.expiry_ms())
}

/// What the checks of one batch's approvals count: openings per family, and the addresses each
/// checked client holds per server. One pass over the records per batch.
#[derive(Clone)]
struct Tally {
    per_family: [usize; 2],
    held: HashMap<(String, u32), std::collections::HashSet<IpAddr>>,
    new_in_batch: std::collections::HashSet<OpeningId>,
}

impl Tally {
    fn of(records: &HashMap<OpeningId, OpeningRecord>, batch: &[PendingGrant]) -> Self {
        let mut tally = Tally {
            per_family: [0; 2],
            held: HashMap::new(),
            new_in_batch: Default::default(),
        };
        let origins: std::collections::HashSet<&str> = batch
            .iter()
            .filter(|g| g.check.is_some())
            .map(|g| g.origin.as_str())
            .collect();
        if origins.is_empty() {
            return tally;
        }
        for record in records.values() {
            tally.per_family[usize::from(record.id.addr.is_ipv6())] += 1;
            for holder in &record.holders {
                if origins.contains(holder.origin.as_str()) {
                    tally
                        .held
                        .entry((holder.origin.clone(), record.id.server_id))
                        .or_default()
                        .insert(record.id.addr);
                }
            }
        }
        tally
    }
}

/// The opening manager. Cheap to share behind an `Arc`.
pub struct Openings {
    gate: GateHandle,
    store: Arc<Store>,
    records: Mutex<HashMap<OpeningId, OpeningRecord>>,
    /// Grants waiting for the next batch (see [`Openings::grant`]).
    waiting: std::sync::Mutex<Vec<PendingGrant>>,
    next_holder: AtomicU64,
    /// Numbers [`Openings::grant_all`] calls, so a batch knows which grants go together.
    next_call: AtomicU64,
    /// Revocation generation per origin (client id), bumped under the records lock by
    /// [`Openings::revoke_origin_with`].
    generations: std::sync::Mutex<HashMap<String, u64>>,
    /// Entries of each kernel map (the controller's `max_openings`).
    map_capacity: usize,
    /// Set while a `vpn` self-shutdown holds: every grant is refused.
    sealed: std::sync::atomic::AtomicBool,
}

/// True for an address the gate may open: the one never-openable list is
/// [`crate::approval::check_openable`] (PROTOCOL.md §7).
pub fn is_openable(addr: IpAddr) -> bool {
    crate::approval::check_openable(addr).is_ok()
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
            next_call: AtomicU64::new(0),
            generations: std::sync::Mutex::new(HashMap::new()),
            map_capacity: usize::MAX,
            sealed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Sets the capacity of each kernel map, for the near-capacity check of approvals.
    pub fn with_map_capacity(mut self, max_openings: u32) -> Self {
        self.map_capacity = usize::try_from(max_openings).unwrap_or(usize::MAX);
        self
    }

    /// The revocation generation of `origin`: read it before validating a client's request and
    /// pass it in [`GrantCheck`], so a revocation in between refuses the grant.
    pub fn generation(&self, origin: &str) -> u64 {
        self.generations_lock().get(origin).copied().unwrap_or(0)
    }

    fn generations_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loads the store and makes the kernel match it: missing entries are added, stale ones
    /// removed, expiries corrected, and expired holders pruned.
    pub async fn reconcile(&self) -> Result<SweepReport, OpeningsError> {
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load_openings()).await??;
        let load_ms = started.elapsed().as_millis();
        // Times of another boot mean nothing (and the kernel maps did not survive it).
        let (ours, other_boot): (Vec<OpeningRecord>, Vec<OpeningRecord>) =
            loaded.into_iter().partition(OpeningRecord::of_this_boot);
        if !other_boot.is_empty() {
            warn!(
                count = other_boot.len(),
                "dropping openings recorded in another boot"
            );
            self.persist(Vec::new(), other_boot.iter().map(|r| r.id).collect())
                .await?;
        }
        {
            let mut records = self.records.lock().await;
            records.clear();
            records.extend(ours.into_iter().map(|r| (r.id, r)));
        }
        let report = self.sweep().await?;
        info!(
            ?report,
            load_ms,
            total_ms = started.elapsed().as_millis(),
            "reconciled openings with the kernel"
        );
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
        self.grant_checked(server, addr, origin, connect_window, None)
            .await
    }

    /// [`Openings::grant`] for one address of an approval: `check` is verified under the lock
    /// that writes the batch (see [`Openings::grant_all`]).
    pub async fn grant_checked(
        self: &Arc<Self>,
        server: &ServerConfig,
        addr: IpAddr,
        origin: &str,
        connect_window: Duration,
        check: Option<GrantCheck>,
    ) -> Result<OpeningRecord, OpeningsError> {
        let mut granted = self
            .grant_all(
                server,
                &[addr],
                origin,
                connect_window,
                check,
                Journal::default(),
            )
            .await?;
        granted
            .pop()
            .ok_or_else(|| OpeningsError::Batch("grant missing from its batch".into()))
    }

    /// Grants every address in `addrs` like [`Openings::grant`], in one batch, and commits
    /// `journal` (an approval's audit record and answer) in the same transaction as the
    /// openings: the records exist exactly when the openings do. All or nothing.
    ///
    /// For an approval, `check` is verified under the lock that writes the batch (revocation
    /// generation, per-client cap, map capacity); a failed check opens nothing and evicts
    /// nobody.
    pub async fn grant_all(
        self: &Arc<Self>,
        server: &ServerConfig,
        addrs: &[IpAddr],
        origin: &str,
        connect_window: Duration,
        check: Option<GrantCheck>,
        journal: Journal,
    ) -> Result<Vec<OpeningRecord>, OpeningsError> {
        self.grant_all_for_device(server, addrs, origin, None, connect_window, check, journal)
            .await
    }

    /// [`Openings::grant_all`] for an approval signed by `device` (a fingerprint): its
    /// holders carry it, so [`Openings::revoke_device_with`] closes them.
    #[allow(clippy::too_many_arguments)]
    pub async fn grant_all_for_device(
        self: &Arc<Self>,
        server: &ServerConfig,
        addrs: &[IpAddr],
        origin: &str,
        device: Option<&str>,
        connect_window: Duration,
        check: Option<GrantCheck>,
        journal: Journal,
    ) -> Result<Vec<OpeningRecord>, OpeningsError> {
        if let Some(bad) = addrs.iter().find(|a| !is_openable(**a)) {
            return Err(OpeningsError::BadAddress(*bad));
        }
        if self.is_sealed() {
            return Err(OpeningsError::Sealed);
        }
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let mut journal = Some(journal);
        let mut answers = Vec::with_capacity(addrs.len());
        {
            // One lock: every grant of this call lands in the same batch, one after another.
            let mut waiting = self.waiting_grants();
            for addr in addrs {
                let (reply, answer) = oneshot::channel();
                waiting.push(PendingGrant {
                    id: OpeningId {
                        server_id: server.id,
                        addr: *addr,
                    },
                    server_name: server.name.clone(),
                    idle_timeout: server.idle_timeout,
                    max_lifetime: server.max_lifetime,
                    origin: origin.to_owned(),
                    device: device.map(str::to_owned),
                    connect_window,
                    check,
                    call,
                    journal: journal.take(),
                    reply,
                });
                answers.push(answer);
            }
        }
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
        let mut granted = Vec::with_capacity(answers.len());
        for answer in answers {
            granted.push(answer.await.unwrap_or_else(|_| {
                Err(OpeningsError::Batch("the grant batch was abandoned".into()))
            })?);
        }
        Ok(granted)
    }

    fn waiting_grants(&self) -> std::sync::MutexGuard<'_, Vec<PendingGrant>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes a batch of grants: records first (one commit), then the kernel (one call),
    /// then answers each waiter.
    async fn grant_batch(
        &self,
        records: &mut HashMap<OpeningId, OpeningRecord>,
        batch: Vec<PendingGrant>,
    ) {
        let clocks = ClockPair::now();
        let mut updated: HashMap<OpeningId, OpeningRecord> = HashMap::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        // Checked again under the lock: a grant queued before a seal must not land after the
        // seal's `revoke_all`.
        if self.is_sealed() {
            for grant in batch {
                let _ = grant.reply.send(Err(OpeningsError::Sealed));
            }
            return;
        }
        let mut tally = Tally::of(records, &batch);
        // The grants of one call are next to each other (pushed under one lock); they pass
        // their checks together or are all refused with the first failure.
        let mut batch = batch.into_iter().peekable();
        while let Some(first) = batch.next() {
            let mut call = vec![first];
            while let Some(next) = batch.next_if(|g| g.call == call[0].call) {
                call.push(next);
            }
            let mut trial = tally.clone();
            let failed = call.iter().find_map(|grant| {
                grant
                    .check
                    .and_then(|check| self.check_grant(&mut trial, records, grant, check).err())
            });
            match failed {
                None => {
                    tally = trial;
                    accepted.extend(call);
                }
                Some(err) => {
                    for grant in call {
                        let _ = grant.reply.send(Err(err.same_refusal()));
                    }
                }
            }
        }
        let batch = accepted;
        if batch.is_empty() {
            return;
        }
        for grant in &batch {
            let holder = Holder {
                id: format!(
                    "{}-{}",
                    grant.origin,
                    self.next_holder.fetch_add(1, Ordering::Relaxed)
                ),
                origin: grant.origin.clone(),
                device: grant.device.clone(),
                granted_ms: clocks.boot_ms,
                connect_until_ms: clocks.boot_ms.saturating_add(millis(grant.connect_window)),
                deadline_ms: clocks.boot_ms.saturating_add(millis(grant.max_lifetime)),
            };
            let mut record = match updated.get(&grant.id).or_else(|| records.get(&grant.id)) {
                Some(existing) => {
                    let mut record = existing.clone();
                    record.prune(clocks.boot_ms);
                    record.add_holder(holder);
                    record
                }
                None => OpeningRecord::new(grant.id, millis(grant.idle_timeout), holder),
            };
            record.idle_timeout_ms = millis(grant.idle_timeout);
            updated.insert(grant.id, record);
        }
        let mut journal = Journal::default();
        for grant in &batch {
            if let Some(part) = &grant.journal {
                journal.audit.extend(part.audit.iter().cloned());
                journal.answers.extend(part.answers.iter().cloned());
            }
        }
        if let Err(err) = self
            .persist_with(updated.values().cloned().collect(), Vec::new(), journal)
            .await
        {
            let message = err.to_string();
            for grant in batch {
                let _ = grant.reply.send(Err(OpeningsError::Batch(message.clone())));
            }
            return;
        }
        let expiries: Vec<(OpeningId, u64, bool)> = updated
            .values()
            .map(|r| {
                (
                    r.id,
                    kernel_expiry_ns(r, &clocks),
                    !records.contains_key(&r.id),
                )
            })
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

    /// Checks an approval's grant against the records and the grants accepted before it in
    /// its batch; counts it in `tally` when it passes.
    fn check_grant(
        &self,
        tally: &mut Tally,
        records: &HashMap<OpeningId, OpeningRecord>,
        grant: &PendingGrant,
        check: GrantCheck,
    ) -> Result<(), OpeningsError> {
        if self.generation(&grant.origin) != check.generation {
            return Err(OpeningsError::Revoked(grant.origin.clone()));
        }
        let held = tally
            .held
            .entry((grant.origin.clone(), grant.id.server_id))
            .or_default();
        if !held.contains(&grant.id.addr) && held.len() >= check.max_addresses_per_client {
            return Err(OpeningsError::ClientCap {
                client: grant.origin.clone(),
                limit: check.max_addresses_per_client,
            });
        }
        let new = !records.contains_key(&grant.id) && !tally.new_in_batch.contains(&grant.id);
        let v6 = grant.id.addr.is_ipv6();
        if new {
            let open = tally.per_family[usize::from(v6)];
            let reserve = (self.map_capacity / CAPACITY_RESERVE_DIVISOR).max(1);
            if open.saturating_add(reserve) >= self.map_capacity {
                let family = if v6 { "IPv6" } else { "IPv4" };
                warn!(
                    family,
                    open,
                    capacity = self.map_capacity,
                    "openings map nearly full: refusing new approvals"
                );
                return Err(OpeningsError::NearCapacity {
                    family,
                    open,
                    capacity: self.map_capacity,
                });
            }
            tally.per_family[usize::from(v6)] += 1;
            tally.new_in_batch.insert(grant.id);
        }
        held.insert(grant.id.addr);
        Ok(())
    }

    /// Seals (or unseals) the gate: while sealed, every grant is refused.
    pub fn set_sealed(&self, sealed: bool) {
        self.sealed
            .store(sealed, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether grants are refused.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every opening of every server; returns how many.
    pub async fn revoke_all(&self) -> Result<usize, OpeningsError> {
        let mut records = self.records.lock().await;
        let ids: Vec<OpeningId> = records.keys().copied().collect();
        self.close(&mut records, ids).await
    }

    /// Closes every opening of server `server_id` (a server removed by a reload); returns
    /// how many.
    pub async fn revoke_server(&self, server_id: u32) -> Result<usize, OpeningsError> {
        let mut records = self.records.lock().await;
        let ids: Vec<OpeningId> = records
            .keys()
            .filter(|id| id.server_id == server_id)
            .copied()
            .collect();
        self.close(&mut records, ids).await
    }

    /// Closes openings of `addr` (on `server_id`, or on every server); returns how many.
    ///
    /// Like [`Openings::grant`], the work runs in its own task: a caller that goes away never
    /// leaves a revocation half done.
    pub async fn revoke_address(
        self: &Arc<Self>,
        server_id: Option<u32>,
        addr: IpAddr,
    ) -> Result<usize, OpeningsError> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut records = this.records.lock().await;
            let ids: Vec<OpeningId> = records
                .keys()
                .filter(|id| id.addr == addr && server_id.is_none_or(|s| s == id.server_id))
                .copied()
                .collect();
            this.close(&mut records, ids).await
        })
        .await?
    }

    /// Removes every holder granted to `origin`, closing openings left without holders
    /// (cancellation-safe like [`Openings::revoke_address`]).
    pub async fn revoke_origin(self: &Arc<Self>, origin: &str) -> Result<usize, OpeningsError> {
        self.revoke_origin_with(origin, || Ok::<(), OpeningsError>(()))
            .await
    }

    /// Revokes `origin` atomically with its in-flight approvals: under the records lock (the
    /// lock every grant batch is written under) it bumps the origin's generation, runs
    /// `before` (e.g. the store write that disables the client), then removes the origin's
    /// holders. A grant checked against the old generation ([`GrantCheck`]) is refused from
    /// then on. Runs in its own task (cancellation-safe).
    pub async fn revoke_origin_with<F, E>(
        self: &Arc<Self>,
        origin: &str,
        before: F,
    ) -> Result<usize, E>
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: From<OpeningsError> + Send + 'static,
    {
        let this = Arc::clone(self);
        let origin = origin.to_owned();
        let task = tokio::spawn(async move {
            let mut records = this.records.lock().await;
            *this.generations_lock().entry(origin.clone()).or_default() += 1;
            tokio::task::spawn_blocking(before)
                .await
                .map_err(|e| E::from(OpeningsError::Join(e)))??;
            this.revoke_origin_locked(&mut records, &origin)
                .await
                .map_err(E::from)
        });
        task.await.map_err(|e| E::from(OpeningsError::Join(e)))?
    }

    /// Revokes what `origin` holds through `device` (a fingerprint), atomically with the
    /// origin's approvals in flight, like [`Openings::revoke_origin_with`]: the origin's
    /// generation is bumped (an approval of the client validated before this point, by any
    /// of its devices, is refused), `before` runs (the store write that removes the device),
    /// then the device's holders go. Returns how many openings closed.
    pub async fn revoke_device_with<F, E>(
        self: &Arc<Self>,
        origin: &str,
        device: &str,
        before: F,
    ) -> Result<usize, E>
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: From<OpeningsError> + Send + 'static,
    {
        let this = Arc::clone(self);
        let origin = origin.to_owned();
        let device = device.to_owned();
        let task = tokio::spawn(async move {
            let mut records = this.records.lock().await;
            *this.generations_lock().entry(origin.clone()).or_default() += 1;
            tokio::task::spawn_blocking(before)
                .await
                .map_err(|e| E::from(OpeningsError::Join(e)))??;
            let mut emptied = Vec::new();
            let mut changed = Vec::new();
            for record in records.values() {
                let mut updated = record.clone();
                if updated.remove_device(&origin, &device) == 0 {
                    continue;
                }
                if updated.is_empty() {
                    emptied.push(updated.id)
                } else {
                    changed.push(updated)
                }
            }
            let count = emptied.len();
            this.persist(changed.clone(), Vec::new())
                .await
                .map_err(E::from)?;
            for record in changed {
                records.insert(record.id, record);
            }
            this.close(&mut records, emptied).await.map_err(E::from)?;
            Ok(count)
        });
        task.await.map_err(|e| E::from(OpeningsError::Join(e)))?
    }

    async fn revoke_origin_locked(
        &self,
        records: &mut HashMap<OpeningId, OpeningRecord>,
        origin: &str,
    ) -> Result<usize, OpeningsError> {
        let mut emptied = Vec::new();
        let mut changed = Vec::new();
        for record in records.values() {
            let mut updated = record.clone();
            if updated.remove_origin(origin) == 0 {
                continue;
            }
            if updated.is_empty() {
                emptied.push(updated.id)
            } else {
                changed.push(updated)
            }
        }
        let count = emptied.len();
        self.persist(changed.clone(), Vec::new()).await?;
        for record in changed {
            records.insert(record.id, record);
        }
        self.close(records, emptied).await?;
        Ok(count)
    }

    /// Removes the holders `origin` has on the opening of `addr` on `server_id`, closing it if
    /// no other holder is left; returns whether it closed. (An OpenVPN client disconnected.)
    /// Cancellation-safe like [`Openings::revoke_address`].
    pub async fn release(
        self: &Arc<Self>,
        server_id: u32,
        addr: IpAddr,
        origin: &str,
    ) -> Result<bool, OpeningsError> {
        let this = Arc::clone(self);
        let origin = origin.to_owned();
        tokio::spawn(async move { this.release_now(server_id, addr, &origin).await }).await?
    }

    async fn release_now(
        &self,
        server_id: u32,
        addr: IpAddr,
        origin: &str,
    ) -> Result<bool, OpeningsError> {
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
        let expires_at_ns = kernel_expiry_ns(&record, &ClockPair::now());
        self.gate
            .run(move |maps| maps.set_expiry(id.server_id, id.addr, expires_at_ns))
            .await??;
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
        self.persist_with(put, remove, Journal::default()).await
    }

    async fn persist_with(
        &self,
        put: Vec<OpeningRecord>,
        remove: Vec<OpeningId>,
        journal: Journal,
    ) -> Result<(), OpeningsError> {
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&OpeningRecord> = put.iter().collect();
            store.save_openings_with(&refs, &remove, &journal)
        })
        .await??;
        Ok(())
    }

    /// Every opening with its kernel state.
    pub async fn list(&self) -> Result<Vec<OpeningView>, OpeningsError> {
        // Records first: every record in this copy has its kernel entry written already
        // (grants write the kernel under the lock), so the walk after it finds them; the
        // lock is not held across the walk.
        let records: Vec<OpeningRecord> = self.records.lock().await.values().cloned().collect();
        let kernel: HashMap<OpeningId, gateway_common::Opening> = self
            .gate
            .walk_openings()
            .await?
            .into_iter()
            .map(|k| {
                (
                    OpeningId {
                        server_id: k.server_id,
                        addr: k.addr,
                    },
                    k.state,
                )
            })
            .collect();
        let clocks = ClockPair::now();
        let mut views: Vec<OpeningView> = records
            .into_iter()
            .map(|record| OpeningView {
                kernel: kernel.get(&record.id).copied(),
                record,
                clocks,
            })
            .collect();
        views.sort_by_key(|v| v.record.id);
        Ok(views)
    }

    /// One pass of the sweeper: learn traffic from the kernel, extend active openings,
    /// close expired ones, remove kernel entries nobody holds.
    ///
    /// The kernel maps are walked *before* the records lock is taken (a walk of 100k entries
    /// takes hundreds of ms; approvals must not wait for it). What changed in between is safe:
    /// a record granted since has its kernel entry already (grants write the kernel under the
    /// lock) and, missing from the walk, is re-created with `create_opening`, which keeps an
    /// existing entry's last-seen time; an entry closed since is gone from the records and its
    /// removal is a no-op.
    pub async fn sweep(&self) -> Result<SweepReport, OpeningsError> {
        // On the reader thread: grants keep reaching the kernel during the walk.
        let kernel = self.gate.walk_openings().await?;
        let mut records = self.records.lock().await;
        let clocks = ClockPair::now();
        let mut report = SweepReport::default();
        let mut kernel_expiry = HashMap::with_capacity(kernel.len());
        let mut stale = Vec::new();
        for KernelOpening {
            server_id,
            addr,
            state,
        } in kernel
        {
            let id = OpeningId { server_id, addr };
            match records.get_mut(&id) {
                Some(record) => {
                    if state.last_seen_ns != 0 {
                        record.observe_traffic(clocks.mono_ns_to_boot_ms(state.last_seen_ns));
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
            if record.prune(clocks.boot_ms) > 0 {
                if record.is_empty() {
                    closed.push(record.id);
                    continue;
                }
                pruned.push(record.clone());
            }
            let wanted = kernel_expiry_ns(record, &clocks);
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
            warn!(
                count = stale.len(),
                "removing kernel openings that no record holds"
            );
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
    use super::{ClockPair, Holder, OpeningId, OpeningRecord, is_openable, kernel_expiry_ns};

    const HOUR_MS: u64 = 3_600_000;

    fn record_granted_at(boot_ms: u64) -> OpeningRecord {
        let id = OpeningId {
            server_id: 1,
            addr: "10.0.0.2".parse().unwrap(),
        };
        let holder = Holder {
            id: "a".into(),
            origin: "c1".into(),
            granted_ms: boot_ms,
            connect_until_ms: boot_ms + 60_000,
            deadline_ms: boot_ms + HOUR_MS,
            device: None,
        };
        OpeningRecord::new(id, 30_000, holder)
    }

    #[test]
    fn a_stepped_wall_clock_moves_no_expiry() {
        let mut record = record_granted_at(1_000_000);
        let at = |unix_ms| ClockPair {
            unix_ms,
            mono_ns: 900_000_000_000,
            boot_ms: 1_010_000,
        };
        let wall = 1_800_000_000_000;
        let base = kernel_expiry_ns(&record, &at(wall));
        assert_eq!(
            base,
            900_000_000_000 + 50_000_000_000,
            "connect window: 50 s left"
        );
        for step_hours in [-5i64, -2, -1, 1, 2, 5] {
            let stepped = wall.saturating_add_signed(step_hours * HOUR_MS as i64);
            assert_eq!(
                kernel_expiry_ns(&record, &at(stepped)),
                base,
                "wall clock stepped {step_hours} h"
            );
            let mut pruned = record.clone();
            assert_eq!(
                pruned.prune(at(stepped).boot_ms),
                0,
                "no holder expires for a step of {step_hours} h"
            );
        }
        // Traffic keeps it up to the idle timeout, never past the absolute deadline, whatever
        // the wall clock says.
        record.observe_traffic(1_000_000 + HOUR_MS - 1_000);
        for step_hours in [-3i64, 3] {
            let clocks = ClockPair {
                unix_ms: wall.saturating_add_signed(step_hours * HOUR_MS as i64),
                ..at(wall)
            };
            let expiry_boot = clocks.mono_ns_to_boot_ms(kernel_expiry_ns(&record, &clocks));
            assert_eq!(
                expiry_boot,
                1_000_000 + HOUR_MS,
                "capped at the deadline (step {step_hours} h)"
            );
        }
    }

    #[test]
    fn a_suspend_cannot_extend_an_opening_past_its_deadline() {
        let mut record = record_granted_at(1_000_000);
        record.observe_traffic(1_000_000 + 10_000);
        // Two hours suspended: the boot clock counts them, the monotonic clock does not.
        let resumed = ClockPair {
            unix_ms: 1_800_000_007_200_000,
            mono_ns: 900_000_000_000,
            boot_ms: 1_000_000 + 2 * HOUR_MS,
        };
        assert!(
            kernel_expiry_ns(&record, &resumed) <= resumed.mono_ns,
            "the kernel expiry is already past"
        );
        assert_eq!(
            record.prune(resumed.boot_ms),
            1,
            "the holder is past its deadline"
        );
        assert!(record.is_empty());
    }

    #[test]
    fn only_unicast_addresses_are_openable() {
        for good in ["10.0.0.2", "203.0.113.9", "fd00::2", "2001:db8::1"] {
            assert!(is_openable(good.parse().unwrap()), "{good}");
        }
        // The same list as the approval pipeline's, including 0/8, 240/4 and IPv4 in IPv6 form.
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
        ] {
            assert!(!is_openable(bad.parse().unwrap()), "{bad}");
        }
    }
}
