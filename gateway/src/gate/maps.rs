//! Typed access to the XDP program's maps: services, openings and counters.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};
use gateway_common::{
    GlobalCounter, Opening, OpeningKeyV4, OpeningKeyV6, PORT_ANY_ADDR, PORT_ONE_ADDR, PortGuard,
    ServiceKey, ServiceStats, ServiceValue, guard_slot, map_names, prefilter,
};

use super::{GateError, prefilter::Prefilter};

/// Handles to every map of the program. Owned by exactly one thread (see `owner.rs`).
pub struct GateMaps {
    guard_ports: Array<MapData, PortGuard>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    open_v4: HashMap<MapData, OpeningKeyV4, Opening>,
    open_v6: HashMap<MapData, OpeningKeyV6, Opening>,
    svc_stats: PerCpuArray<MapData, ServiceStats>,
    global_stats: PerCpuArray<MapData, u64>,
    prefilter_v4: Prefilter,
    prefilter_v6: Prefilter,
    /// Second handles on the openings maps, for walking them on another thread.
    reader: Option<OpeningsReader>,
}

/// Read-only handles on the two openings maps (their own file descriptors), so a walk of
/// every entry, which takes hundreds of ms at 100k openings, runs beside the map owner
/// instead of holding up every grant queued behind it (see `owner.rs`).
pub struct OpeningsReader {
    open_v4: HashMap<MapData, OpeningKeyV4, Opening>,
    open_v6: HashMap<MapData, OpeningKeyV6, Opening>,
}

impl OpeningsReader {
    /// New handles on the openings maps of `ebpf` (descriptors duplicated; the maps are not
    /// taken).
    fn duplicate(ebpf: &Ebpf) -> Result<Self, GateError> {
        fn dup<K: aya::Pod, V: aya::Pod>(
            ebpf: &Ebpf,
            name: &'static str,
        ) -> Result<HashMap<MapData, K, V>, GateError> {
            use std::os::fd::AsFd as _;
            let map = ebpf.map(name).ok_or(GateError::MissingMap(name))?;
            let (aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data)) = map else {
                return Err(GateError::MissingMap(name));
            };
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| GateError::Io {
                    what: format!("duplicating the descriptor of map {name}"),
                    source,
                })?;
            let data = MapData::from_fd(fd).map_err(|source| GateError::Map { name, source })?;
            HashMap::try_from(aya::maps::Map::HashMap(data))
                .map_err(|source| GateError::Map { name, source })
        }
        Ok(Self {
            open_v4: dup(ebpf, map_names::OPEN_V4)?,
            open_v6: dup(ebpf, map_names::OPEN_V6)?,
        })
    }

    /// Every opening the kernel holds.
    pub fn openings(&self) -> Result<Vec<KernelOpening>, GateError> {
        collect_openings(&self.open_v4, &self.open_v6)
    }
}

/// Every entry of the two openings maps.
fn collect_openings(
    open_v4: &HashMap<MapData, OpeningKeyV4, Opening>,
    open_v6: &HashMap<MapData, OpeningKeyV6, Opening>,
) -> Result<Vec<KernelOpening>, GateError> {
    let mut out = Vec::new();
    for entry in open_v4.iter() {
        let (key, state) = entry.map_err(|source| GateError::Map {
            name: map_names::OPEN_V4,
            source,
        })?;
        out.push(KernelOpening {
            server_id: key.server_id,
            addr: IpAddr::from(key.addr),
            state,
        });
    }
    for entry in open_v6.iter() {
        let (key, state) = entry.map_err(|source| GateError::Map {
            name: map_names::OPEN_V6,
            source,
        })?;
        out.push(KernelOpening {
            server_id: key.server_id,
            addr: IpAddr::from(key.addr),
            state,
        });
    }
    Ok(out)
}

/// A service as written to the kernel, with its counter slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelService {
    /// Map key.
    pub key: ServiceKey,
    /// Map value.
    pub value: ServiceValue,
}

/// An opening as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOpening {
    /// Server id.
    pub server_id: u32,
    /// Source address.
    pub addr: IpAddr,
    /// Expiry and last-seen, monotonic-clock ns.
    pub state: Opening,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, GateError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(GateError::MissingMap(name))?;
    T::try_from(map).map_err(|source| GateError::Map { name, source })
}

impl GateMaps {
    /// Takes the maps out of a loaded program and rebuilds the prefilters from the openings
    /// the kernel holds (they may be pinned from an earlier run, or new).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, GateError> {
        let reader = Some(OpeningsReader::duplicate(ebpf)?);
        let mut maps = Self {
            reader,
            guard_ports: take(ebpf, map_names::GUARD_PORTS)?,
            services: take(ebpf, map_names::SERVICES)?,
            open_v4: take(ebpf, map_names::OPEN_V4)?,
            open_v6: take(ebpf, map_names::OPEN_V6)?,
            svc_stats: take(ebpf, map_names::SVC_STATS)?,
            global_stats: take(ebpf, map_names::GLOBAL_STATS)?,
            prefilter_v4: Prefilter::new(
                map_names::PREFILTER_V4,
                take(ebpf, map_names::PREFILTER_V4)?,
            )?,
            prefilter_v6: Prefilter::new(
                map_names::PREFILTER_V6,
                take(ebpf, map_names::PREFILTER_V6)?,
            )?,
        };
        maps.rebuild_prefilters()?;
        Ok(maps)
    }

    /// Recomputes both prefilters from the openings maps (start-up; see `prefilter.rs`).
    pub fn rebuild_prefilters(&mut self) -> Result<(), GateError> {
        let mut v4 = Vec::new();
        for key in self.open_v4.keys() {
            let key = key.map_err(|source| GateError::Map {
                name: map_names::OPEN_V4,
                source,
            })?;
            v4.push(prefilter::hash_v4(key.server_id, key.addr));
        }
        let mut v6 = Vec::new();
        for key in self.open_v6.keys() {
            let key = key.map_err(|source| GateError::Map {
                name: map_names::OPEN_V6,
                source,
            })?;
            v6.push(prefilter::hash_v6(key.server_id, &key.addr));
        }
        self.prefilter_v4.rebuild(v4.into_iter())?;
        self.prefilter_v6.rebuild(v6.into_iter())
    }

    /// Makes the kernel's service tables equal `wanted`: adds and updates first, then removes
    /// stale entries, so a service that stays guarded is never unguarded in between.
    pub fn sync_services(&mut self, wanted: &[KernelService]) -> Result<(), GateError> {
        let mut guards: BTreeMap<u32, PortGuard> = BTreeMap::new();
        for service in wanted {
            self.services
                .insert(service.key, service.value, 0)
                .map_err(|source| GateError::Map {
                    name: map_names::SERVICES,
                    source,
                })?;
            let slot = guard_slot(service.key.family, service.key.proto, service.key.port());
            let guard = guards.entry(slot).or_default();
            if service.key.addr == [0; 16] {
                guard.flags |= PORT_ANY_ADDR;
                guard.server_id = service.value.server_id;
                guard.stats_index = service.value.stats_index;
            } else {
                guard.flags |= PORT_ONE_ADDR;
            }
        }
        for (slot, guard) in &guards {
            self.set_port_guard(*slot, *guard)?;
        }
        let wanted_keys: HashSet<ServiceKey> = wanted.iter().map(|s| s.key).collect();
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !wanted_keys.contains(key))
            .collect();
        // Every non-zero guard slot belongs to a key in SERVICES (they are written together),
        // so the stale keys name every slot that may need clearing. Slots are cleared before
        // their keys go, so a crash in between never leaves a slot that no key explains.
        for key in &stale {
            let slot = guard_slot(key.family, key.proto, key.port());
            if !guards.contains_key(&slot) {
                self.set_port_guard(slot, PortGuard::default())?;
            }
        }
        for key in stale {
            self.services
                .remove(&key)
                .map_err(|source| GateError::Map {
                    name: map_names::SERVICES,
                    source,
                })?;
        }
        Ok(())
    }

    fn set_port_guard(&mut self, slot: u32, guard: PortGuard) -> Result<(), GateError> {
        self.guard_ports
            .set(slot, guard, 0)
            .map_err(|source| GateError::Map {
                name: map_names::GUARD_PORTS,
                source,
            })
    }

    /// The prefilter of `addr`'s family and the hash of (server, `addr`) in it.
    fn prefilter_of(&mut self, server_id: u32, addr: IpAddr) -> (&mut Prefilter, u64) {
        match addr {
            IpAddr::V4(v4) => (
                &mut self.prefilter_v4,
                prefilter::hash_v4(server_id, v4.octets()),
            ),
            IpAddr::V6(v6) => (
                &mut self.prefilter_v6,
                prefilter::hash_v6(server_id, &v6.octets()),
            ),
        }
    }

    /// Writes an opening with `flags` (`BPF_ANY`, `BPF_NOEXIST`, ...): the raw map call.
    fn insert(
        &mut self,
        server_id: u32,
        addr: IpAddr,
        state: Opening,
        flags: u64,
    ) -> (&'static str, Result<(), MapError>) {
        match addr {
            IpAddr::V4(v4) => {
                let key = OpeningKeyV4 {
                    server_id,
                    addr: v4.octets(),
                };
                (map_names::OPEN_V4, self.open_v4.insert(key, state, flags))
            }
            IpAddr::V6(v6) => {
                let key = OpeningKeyV6 {
                    server_id,
                    addr: v6.octets(),
                };
                (map_names::OPEN_V6, self.open_v6.insert(key, state, flags))
            }
        }
    }

    /// Creates the opening if the kernel lacks it, its prefilter bit held first and counted
    /// after; `Ok(false)` (nothing written) if it exists.
    fn create(&mut self, server_id: u32, addr: IpAddr, state: Opening) -> Result<bool, GateError> {
        const BPF_NOEXIST: u64 = 1;
        let (filter, hash) = self.prefilter_of(server_id, addr);
        filter.hold(hash)?;
        match self.insert(server_id, addr, state, BPF_NOEXIST) {
            (_, Ok(())) => {
                self.prefilter_of(server_id, addr).0.count(hash);
                Ok(true)
            }
            (_, Err(MapError::SyscallError(err)))
                if err.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(false)
            }
            (name, Err(source)) => {
                self.prefilter_of(server_id, addr).0.settle(hash)?;
                Err(map_full(name, source))
            }
        }
    }

    /// Inserts or replaces an opening.
    pub fn put_opening(
        &mut self,
        server_id: u32,
        addr: IpAddr,
        state: Opening,
    ) -> Result<(), GateError> {
        if self.create(server_id, addr, state)? {
            return Ok(());
        }
        // It exists, so its prefilter bit is set and counted: a plain replace.
        match self.insert(server_id, addr, state, 0) {
            (_, Ok(())) => Ok(()),
            (name, Err(source)) => Err(map_full(name, source)),
        }
    }

    /// Creates an opening the kernel does not hold yet, in one map call; if it exists after
    /// all, only its expiry is set (keeping the program's last-seen time).
    pub fn create_opening(
        &mut self,
        server_id: u32,
        addr: IpAddr,
        expires_at_ns: u64,
    ) -> Result<(), GateError> {
        if self.create(
            server_id,
            addr,
            Opening {
                expires_at_ns,
                last_seen_ns: 0,
            },
        )? {
            return Ok(());
        }
        self.set_expiry(server_id, addr, expires_at_ns)
    }

    /// Sets an opening's expiry, keeping the last-seen time the program recorded.
    pub fn set_expiry(
        &mut self,
        server_id: u32,
        addr: IpAddr,
        expires_at_ns: u64,
    ) -> Result<(), GateError> {
        let Some(current) = self.opening(server_id, addr)? else {
            return self.put_opening(
                server_id,
                addr,
                Opening {
                    expires_at_ns,
                    last_seen_ns: 0,
                },
            );
        };
        // It exists, so its prefilter bit is set and counted: a plain replace.
        let state = Opening {
            expires_at_ns,
            last_seen_ns: current.last_seen_ns,
        };
        match self.insert(server_id, addr, state, 0) {
            (_, Ok(())) => Ok(()),
            (name, Err(source)) => Err(map_full(name, source)),
        }
    }

    /// Removes an opening (then its prefilter count); `Ok(false)` if there was none.
    pub fn remove_opening(&mut self, server_id: u32, addr: IpAddr) -> Result<bool, GateError> {
        let (name, result) = match addr {
            IpAddr::V4(v4) => {
                let key = OpeningKeyV4 {
                    server_id,
                    addr: v4.octets(),
                };
                (map_names::OPEN_V4, self.open_v4.remove(&key))
            }
            IpAddr::V6(v6) => {
                let key = OpeningKeyV6 {
                    server_id,
                    addr: v6.octets(),
                };
                (map_names::OPEN_V6, self.open_v6.remove(&key))
            }
        };
        match result {
            Ok(()) => {
                let (filter, hash) = self.prefilter_of(server_id, addr);
                filter.uncount(hash)?;
                Ok(true)
            }
            // The kernel answers ENOENT (aya passes it through as a syscall error).
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(source) => Err(GateError::Map { name, source }),
        }
    }

    /// Whether the prefilter bit of (server, `addr`) is set: true for every opening the
    /// kernel holds.
    pub fn prefilter_admits(&mut self, server_id: u32, addr: IpAddr) -> bool {
        let (filter, hash) = self.prefilter_of(server_id, addr);
        filter.is_set(hash)
    }

    /// log2 of the prefilter bits per family (IPv4, IPv6).
    pub fn prefilter_shifts(&self) -> (u32, u32) {
        (self.prefilter_v4.shift(), self.prefilter_v6.shift())
    }

    /// The state of one opening, if the kernel holds it.
    pub fn opening(&self, server_id: u32, addr: IpAddr) -> Result<Option<Opening>, GateError> {
        let (name, result) = match addr {
            IpAddr::V4(v4) => {
                let key = OpeningKeyV4 {
                    server_id,
                    addr: v4.octets(),
                };
                (map_names::OPEN_V4, self.open_v4.get(&key, 0))
            }
            IpAddr::V6(v6) => {
                let key = OpeningKeyV6 {
                    server_id,
                    addr: v6.octets(),
                };
                (map_names::OPEN_V6, self.open_v6.get(&key, 0))
            }
        };
        match result {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(GateError::Map { name, source }),
        }
    }

    /// Every opening the kernel holds.
    pub fn openings(&self) -> Result<Vec<KernelOpening>, GateError> {
        collect_openings(&self.open_v4, &self.open_v6)
    }

    /// The second handles on the openings maps, for a reader thread (once).
    pub fn take_reader(&mut self) -> Option<OpeningsReader> {
        self.reader.take()
    }

    /// Passed/dropped counters of one service slot, summed over CPUs.
    pub fn service_stats(&self, index: u32) -> Result<ServiceStats, GateError> {
        let per_cpu = self
            .svc_stats
            .get(&index, 0)
            .map_err(|source| GateError::Map {
                name: map_names::SVC_STATS,
                source,
            })?;
        Ok(per_cpu
            .iter()
            .fold(ServiceStats::default(), |sum, cpu| ServiceStats {
                passed: sum.passed + cpu.passed,
                dropped: sum.dropped + cpu.dropped,
            }))
    }

    /// Sets the counters of one service slot to zero on every CPU (a slot given to another
    /// service by a reload).
    pub fn reset_service_stats(&mut self, index: u32) -> Result<(), GateError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| GateError::Cpus(err))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![ServiceStats::default(); cpus])
            .map_err(GateError::Cpus)?;
        self.svc_stats
            .set(index, zeros, 0)
            .map_err(|source| GateError::Map {
                name: map_names::SVC_STATS,
                source,
            })
    }

    /// Every global counter, summed over CPUs.
    pub fn global_counters(&self) -> Result<Vec<(GlobalCounter, u64)>, GateError> {
        GlobalCounter::ALL
            .iter()
            .map(|counter| {
                let per_cpu = self
                    .global_stats
                    .get(&(*counter as u32), 0)
                    .map_err(|source| GateError::Map {
                        name: map_names::GLOBAL_STATS,
                        source,
                    })?;
                Ok((*counter, per_cpu.iter().sum()))
            })
            .collect()
    }
}

fn map_full(name: &'static str, source: MapError) -> GateError {
    match &source {
        MapError::SyscallError(err) if err.io_error.raw_os_error() == Some(libc::E2BIG) => {
            GateError::OpeningsFull(name)
        }
        _ => GateError::Map { name, source },
    }
}
