//! The maps the program shares with the controller, all pinned by name.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use gateway_common::{
    DEFAULT_MAX_OPENINGS, GUARD_PORT_SLOTS, GlobalCounter, MAX_SERVICES, Opening, OpeningKeyV4,
    OpeningKeyV6, PortGuard, ServiceKey, ServiceStats, ServiceValue, prefilter,
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

/// IPv4 prefilter bits (see `gateway_common::prefilter`); sized by the loader.
#[map]
pub static PREFILTER_V4: Array<u64> = Array::pinned(prefilter::words(prefilter::MIN_SHIFT), 0);

/// IPv6 prefilter bits.
#[map]
pub static PREFILTER_V6: Array<u64> = Array::pinned(prefilter::words(prefilter::MIN_SHIFT), 0);

/// log2 of the bits in each prefilter map; 0 turns the prefilter off. Set by the loader.
#[unsafe(no_mangle)]
static PREFILTER_SHIFT: u32 = 0;

/// The prefilter's size, as the loader set it.
#[inline(always)]
pub fn prefilter_shift() -> u32 {
    // SAFETY: a read of a read-only global; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&PREFILTER_SHIFT) }
}

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
