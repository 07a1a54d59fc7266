//! The maps the program shares with the controller, all pinned by name.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use gateway_common::{
    DEFAULT_MAX_OPENINGS, GUARD_PORT_SLOTS, GlobalCounter, MAX_SERVICES, Opening, OpeningKeyV4,
    OpeningKeyV6, PortGuard, ServiceKey, ServiceStats, ServiceValue,
};

/// Per destination port and protocol: how it is guarded (see [`PortGuard`]).
#[map]
pub static GUARD_PORTS: Array<PortGuard> = Array::pinned(GUARD_PORT_SLOTS, 0);

/// Guarded services.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICES, 0);

/// IPv4 openings, keyed by (server, source address).
#[map]
pub static OPEN_V4: HashMap<OpeningKeyV4, Opening> = HashMap::pinned(DEFAULT_MAX_OPENINGS, 0);

/// IPv6 openings, keyed by (server, source address).
#[map]
pub static OPEN_V6: HashMap<OpeningKeyV6, Opening> = HashMap::pinned(DEFAULT_MAX_OPENINGS, 0);

/// Per-service passed/dropped counters.
#[map]
pub static SVC_STATS: PerCpuArray<ServiceStats> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Parse-path counters, indexed by [`GlobalCounter`].
#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(GlobalCounter::COUNT, 0);

/// Adds one to a global counter of this CPU.
#[inline(always)]
pub fn count(counter: GlobalCounter) {
    if let Some(value) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU array slot of this CPU; XDP runs with preemption disabled.
        unsafe { *value += 1 };
    }
}
