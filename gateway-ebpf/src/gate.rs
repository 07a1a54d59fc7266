//! The decision for a packet to a TCP/UDP port: guarded or not, and if guarded, admitted or not.
use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_ktime_get_coarse_ns};
use gateway_common::{
    FAMILY_V4, FAMILY_V6, LAST_SEEN_GRANULARITY_NS, Opening, OpeningKeyV4, OpeningKeyV6,
    PORT_ANY_ADDR, PORT_ONE_ADDR, ServiceKey, ServiceValue, guard_slot, prefilter,
};

use crate::maps::{
    GUARD_PORTS, OPEN_V4, OPEN_V6, PREFILTER_V4, PREFILTER_V6, SERVICES, SVC_STATS, prefilter_shift,
};

/// Gate an IPv4 TCP/UDP packet.
#[inline(always)]
pub fn check_v4(proto: u8, port: [u8; 2], src: [u8; 4], dst: [u8; 4]) -> u32 {
    let port_host = u16::from_be_bytes(port);
    let service = find_service(
        FAMILY_V4,
        proto,
        port_host,
        |addr_or_any| match addr_or_any {
            true => ServiceKey::v4(proto, port_host, dst),
            false => ServiceKey::v4(proto, port_host, [0; 4]),
        },
    );
    let Some(service) = service else {
        return xdp_action::XDP_PASS;
    };
    let shift = prefilter_shift();
    if shift != 0 {
        let (word, mask) = prefilter::slot(prefilter::hash_v4(service.server_id, src), shift);
        if PREFILTER_V4.get(word).is_some_and(|bits| *bits & mask == 0) {
            return admit(None, service.stats_index);
        }
    }
    let key = OpeningKeyV4 {
        server_id: service.server_id,
        addr: src,
    };
    admit(OPEN_V4.get_ptr_mut(&key), service.stats_index)
}

/// Gate an IPv6 TCP/UDP packet.
#[inline(always)]
pub fn check_v6(proto: u8, port: [u8; 2], src: &[u8; 16], dst: &[u8; 16]) -> u32 {
    let port_host = u16::from_be_bytes(port);
    let service = find_service(
        FAMILY_V6,
        proto,
        port_host,
        |addr_or_any| match addr_or_any {
            true => ServiceKey::v6(proto, port_host, *dst),
            false => ServiceKey::v6(proto, port_host, [0; 16]),
        },
    );
    let Some(service) = service else {
        return xdp_action::XDP_PASS;
    };
    let shift = prefilter_shift();
    if shift != 0 {
        let (word, mask) = prefilter::slot(prefilter::hash_v6(service.server_id, src), shift);
        if PREFILTER_V6.get(word).is_some_and(|bits| *bits & mask == 0) {
            return admit(None, service.stats_index);
        }
    }
    let key = OpeningKeyV6 {
        server_id: service.server_id,
        addr: *src,
    };
    admit(OPEN_V6.get_ptr_mut(&key), service.stats_index)
}

/// The service a packet is for, if its port is guarded: an address-bound service first
/// (a `SERVICES` lookup, only on ports that have one), then the any-address service, which
/// the port's own entry names. `key(true)` builds the exact key.
#[inline(always)]
fn find_service(
    family: u8,
    proto: u8,
    port: u16,
    key: impl Fn(bool) -> ServiceKey,
) -> Option<ServiceValue> {
    let guard = *GUARD_PORTS.get(guard_slot(family, proto, port))?;
    if guard.flags & PORT_ONE_ADDR != 0 {
        // SAFETY: the value is copied out immediately; map values are plain integers.
        if let Some(found) = unsafe { SERVICES.get(&key(true)) } {
            return Some(*found);
        }
    }
    if guard.flags & PORT_ANY_ADDR != 0 {
        return Some(ServiceValue {
            server_id: guard.server_id,
            stats_index: guard.stats_index,
        });
    }
    None
}

/// Pass if `opening` exists and has not expired (and note that it was used), else drop.
/// The clock is read only when there is an opening to compare with: a flood from unknown
/// sources costs no clock reads.
#[inline(always)]
fn admit(opening: Option<*mut Opening>, stats_index: u32) -> u32 {
    let stats = SVC_STATS.get_ptr_mut(stats_index);
    if let Some(opening) = opening {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // SAFETY: `opening` points at a live map value; the controller may replace it
        // concurrently, which at worst makes this packet see the old or the new value.
        let open = unsafe { (*opening).expires_at_ns } > now;
        if open {
            // SAFETY: as above; a racy store of a timestamp is harmless.
            unsafe {
                if now.wrapping_sub((*opening).last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
                    (*opening).last_seen_ns = now;
                }
            }
            if let Some(stats) = stats {
                // SAFETY: per-CPU slot of this CPU.
                unsafe { (*stats).passed += 1 };
            }
            return xdp_action::XDP_PASS;
        }
    }
    if let Some(stats) = stats {
        // SAFETY: per-CPU slot of this CPU.
        unsafe { (*stats).dropped += 1 };
    }
    xdp_action::XDP_DROP
}
