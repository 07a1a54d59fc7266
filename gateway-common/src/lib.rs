//! Types shared by the xdpgate XDP program (kernel side) and its controller (user side).
//!
//! Every struct that crosses the kernel boundary is `#[repr(C)]`, has no implicit padding
//! (checked at compile time) and stores addresses and ports as network-order byte arrays,
//! so both sides agree on the bytes without any conversion in the packet path.
#![no_std]

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Address family tag for IPv4 in [`ServiceKey::family`].
pub const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6 in [`ServiceKey::family`].
pub const FAMILY_V6: u8 = 6;

/// [`PortGuard::flags`] bit: a service on any local address guards this port and protocol;
/// the entry itself names its server and counter slot, so no service lookup is needed.
pub const PORT_ANY_ADDR: u32 = 1;
/// [`PortGuard::flags`] bit: a service bound to one local address guards this port and
/// protocol; the program looks the exact destination up in `SERVICES`.
pub const PORT_ONE_ADDR: u32 = 2;

/// How one (destination port, protocol, address family) is guarded: an entry of `GUARD_PORTS`.
///
/// The common case, a service on any local address, is answered from this array entry alone;
/// only ports with address-bound services cost a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortGuard {
    /// [`PORT_ANY_ADDR`] and/or [`PORT_ONE_ADDR`]; 0: not guarded.
    pub flags: u32,
    /// Server of the any-address service (with [`PORT_ANY_ADDR`]).
    pub server_id: u32,
    /// Counter slot of the any-address service (with [`PORT_ANY_ADDR`]).
    pub stats_index: u32,
}
const _: () = assert!(core::mem::size_of::<PortGuard>() == 12);

/// Number of `GUARD_PORTS` entries: one per port, protocol (UDP, TCP) and family (v4, v6).
pub const GUARD_PORT_SLOTS: u32 = 65_536 * 4;

/// The `GUARD_PORTS` index of a port, protocol and address family.
pub const fn guard_slot(family: u8, proto: u8, port: u16) -> u32 {
    (port as u32) * 4
        + if proto == PROTO_TCP { 2 } else { 0 }
        + if family == FAMILY_V6 { 1 } else { 0 }
}

/// Maximum number of guarded services (size of the service and per-service counter maps).
pub const MAX_SERVICES: u32 = 1024;
/// Default capacity of each openings map (IPv4 and IPv6 separately).
pub const DEFAULT_MAX_OPENINGS: u32 = 262_144;

/// The program refreshes [`Opening::last_seen_ns`] at most this often per opening, so a busy
/// flow does not write the same cache line on every packet from every CPU.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 250_000_000;

/// Names of the maps, shared so the controller finds exactly what the program declares.
pub mod map_names {
    /// `Array<PortGuard>` indexed by [`guard_slot`](super::guard_slot)(family, protocol, port).
    pub const GUARD_PORTS: &str = "GUARD_PORTS";
    /// `HashMap<ServiceKey, ServiceValue>`: guarded services.
    pub const SERVICES: &str = "SERVICES";
    /// `HashMap<OpeningKeyV4, Opening>`: IPv4 sources allowed per server.
    pub const OPEN_V4: &str = "OPEN_V4";
    /// `HashMap<OpeningKeyV6, Opening>`: IPv6 sources allowed per server.
    pub const OPEN_V6: &str = "OPEN_V6";
    /// `PerCpuArray<ServiceStats>` indexed by [`ServiceValue::stats_index`](super::ServiceValue).
    pub const SVC_STATS: &str = "SVC_STATS";
    /// `PerCpuArray<u64>` indexed by [`GlobalCounter`](super::GlobalCounter).
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    /// `Array<u64>`: the IPv4 prefilter bit array (see [`prefilter`](super::prefilter)).
    pub const PREFILTER_V4: &str = "PREFILTER_V4";
    /// `Array<u64>`: the IPv6 prefilter bit array.
    pub const PREFILTER_V6: &str = "PREFILTER_V6";
    /// Every map the program declares, in a fixed order.
    pub const ALL: [&str; 8] = [
        GUARD_PORTS,
        SERVICES,
        OPEN_V4,
        OPEN_V6,
        SVC_STATS,
        GLOBAL_STATS,
        PREFILTER_V4,
        PREFILTER_V6,
    ];
}

/// The prefilter: a bit array per openings map that answers "certainly no opening" without
/// touching the hash map, so a flood from random sources is dropped from a few hundred KiB
/// that stay in cache instead of a cache miss into a map of up to millions of entries.
///
/// Each (server, source address) hashes to one bit. The controller sets the bit before it
/// creates an opening and clears it only after the last opening hashing there is gone (it
/// keeps a count per bit), so an opening's bit is never clear: a clear bit drops, a set bit
/// falls through to the exact lookup, and no verdict differs from the map alone. A bit set
/// by another opening (a collision) costs only the exact lookup.
pub mod prefilter {
    /// Name of the program's read-only global holding log2 of the bits per family (0: off).
    pub const SHIFT_GLOBAL: &str = "PREFILTER_SHIFT";
    /// Bits per opening the controller provisions (rounded up to a power of two in total):
    /// at a full map about 1 - e^(-1/8) = 11.8% of random sources fall through.
    pub const BITS_PER_OPENING: u64 = 8;
    /// Smallest and largest log2 of the bit count (8 KiB and 64 MiB).
    pub const MIN_SHIFT: u32 = 16;
    /// See [`MIN_SHIFT`].
    pub const MAX_SHIFT: u32 = 29;

    /// log2 of the number of bits for an openings map of `max_openings` entries.
    pub const fn shift_for(max_openings: u32) -> u32 {
        let wanted = (max_openings as u64) * BITS_PER_OPENING;
        let mut shift = MIN_SHIFT;
        while shift < MAX_SHIFT && (1u64 << shift) < wanted {
            shift += 1;
        }
        shift
    }

    /// Number of 64-bit words of a prefilter with `1 << shift` bits.
    pub const fn words(shift: u32) -> u32 {
        1 << (shift - 6)
    }

    /// Finalizer of MurmurHash3 (64-bit): every input bit affects every output bit.
    #[inline(always)]
    pub const fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        x
    }

    /// Hash of an IPv4 opening key.
    #[inline(always)]
    pub const fn hash_v4(server_id: u32, addr: [u8; 4]) -> u64 {
        mix(((server_id as u64) << 32) | u32::from_le_bytes(addr) as u64)
    }

    /// Hash of an IPv6 opening key.
    #[inline(always)]
    pub const fn hash_v6(server_id: u32, addr: &[u8; 16]) -> u64 {
        let hi = u64::from_le_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]);
        let lo = u64::from_le_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]);
        mix(mix(hi ^ server_id as u64) ^ lo)
    }

    /// The (word index, bit mask) of `hash` in a prefilter of `1 << shift` bits; `shift` must
    /// lie in `6..=63`.
    #[inline(always)]
    pub const fn slot(hash: u64, shift: u32) -> (u32, u64) {
        let bit = hash >> (64 - shift);
        ((bit >> 6) as u32, 1u64 << (bit & 63))
    }
}

/// Name of the XDP program inside the eBPF object.
pub const PROGRAM_NAME: &str = "xdpgate";

/// Version of the map layout. Pinned state lives under a folder named after it, so a
/// controller never reinterprets maps written with another layout.
pub const MAP_LAYOUT_VERSION: u32 = 2;

/// A guarded service: protocol, destination port and destination address.
///
/// An all-zero `addr` is the wildcard "any local address of this family"; the program first
/// looks up the exact destination, then the wildcard.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Destination address, network order; IPv4 uses the first 4 bytes, the rest are zero.
    pub addr: [u8; 16],
    /// Destination port, network order.
    pub port: [u8; 2],
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

impl ServiceKey {
    /// Key for an IPv4 service; `addr` all zero means any local address.
    pub const fn v4(proto: u8, port: u16, addr: [u8; 4]) -> Self {
        let mut full = [0u8; 16];
        full[0] = addr[0];
        full[1] = addr[1];
        full[2] = addr[2];
        full[3] = addr[3];
        Self {
            addr: full,
            port: port.to_be_bytes(),
            proto,
            family: FAMILY_V4,
        }
    }

    /// Key for an IPv6 service; `addr` all zero means any local address.
    pub const fn v6(proto: u8, port: u16, addr: [u8; 16]) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            proto,
            family: FAMILY_V6,
        }
    }

    /// The destination port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// What a guarded service maps to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// The server (VPN instance) whose openings admit traffic to this service.
    pub server_id: u32,
    /// Index of this service's counters in the `SVC_STATS` per-CPU array.
    pub stats_index: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);

/// Key of an IPv4 opening: a source address allowed to reach one server's services.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpeningKeyV4 {
    /// Server the opening belongs to.
    pub server_id: u32,
    /// Source address, network order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<OpeningKeyV4>() == 8);

/// Key of an IPv6 opening.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpeningKeyV6 {
    /// Server the opening belongs to.
    pub server_id: u32,
    /// Source address, network order.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<OpeningKeyV6>() == 20);

/// An opening's state, in the kernel's `CLOCK_MONOTONIC` nanoseconds.
///
/// The program admits a packet only while `expires_at_ns` lies in the future, so an opening
/// closes on time even when the controller is not running.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    /// Absolute expiry (`bpf_ktime_get_mono_ns` clock).
    pub expires_at_ns: u64,
    /// When the program last admitted a packet for this opening (0: never).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Opening>() == 16);

/// Per-service, per-CPU packet counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Packets admitted because an unexpired opening existed.
    pub passed: u64,
    /// Packets dropped because no unexpired opening existed.
    pub dropped: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 16);

/// Global counters of the parse path, indexes into `GLOBAL_STATS`.
///
/// Every drop the program makes outside a guarded-service decision is counted here; the
/// `Pass*` entries count notable packets that were let through by policy.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalCounter {
    /// Frame shorter than an Ethernet header. Dropped.
    EthTruncated = 0,
    /// Frame ends inside a VLAN tag. Dropped.
    VlanTruncated = 1,
    /// More than two stacked VLAN tags. Dropped.
    VlanTooDeep = 2,
    /// Frame ends inside the IPv4 header or before the IPv4 total length. Dropped.
    Ipv4Truncated = 3,
    /// IPv4 version/IHL/total-length fields inconsistent. Dropped.
    Ipv4Malformed = 4,
    /// Frame ends inside the IPv6 header or before its payload length. Dropped.
    Ipv6Truncated = 5,
    /// IPv6 extension header chain truncated or longer than the program walks. Dropped.
    Ipv6ExtUnparsed = 6,
    /// TCP/UDP header incomplete in an unfragmented packet. Dropped.
    L4Truncated = 7,
    /// First fragment too short to hold the whole TCP/UDP header. Dropped.
    FragmentTiny = 8,
    /// Non-first fragment (carries no ports). Passed: see the fragment policy in the README.
    PassNonFirstFragment = 9,
    /// IPv6 version field is not 6. Dropped.
    Ipv6Malformed = 10,
}

impl GlobalCounter {
    /// Number of counters (size of the `GLOBAL_STATS` map).
    pub const COUNT: u32 = 11;
    /// All counters, in index order.
    pub const ALL: [GlobalCounter; Self::COUNT as usize] = [
        Self::EthTruncated,
        Self::VlanTruncated,
        Self::VlanTooDeep,
        Self::Ipv4Truncated,
        Self::Ipv4Malformed,
        Self::Ipv6Truncated,
        Self::Ipv6ExtUnparsed,
        Self::L4Truncated,
        Self::FragmentTiny,
        Self::PassNonFirstFragment,
        Self::Ipv6Malformed,
    ];

    /// A stable snake_case name for reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::EthTruncated => "eth_truncated",
            Self::VlanTruncated => "vlan_truncated",
            Self::VlanTooDeep => "vlan_too_deep",
            Self::Ipv4Truncated => "ipv4_truncated",
            Self::Ipv4Malformed => "ipv4_malformed",
            Self::Ipv6Truncated => "ipv6_truncated",
            Self::Ipv6ExtUnparsed => "ipv6_ext_unparsed",
            Self::L4Truncated => "l4_truncated",
            Self::FragmentTiny => "fragment_tiny",
            Self::PassNonFirstFragment => "pass_non_first_fragment",
            Self::Ipv6Malformed => "ipv6_malformed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], built only from integers and byte arrays, and its size
    // is asserted above to equal the sum of its fields, so it has no padding and every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpeningKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OpeningKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Opening {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServiceStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortGuard {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_service_key_puts_address_first_and_port_big_endian() {
        let key = ServiceKey::v4(PROTO_UDP, 1194, [10, 0, 0, 1]);
        assert_eq!(&key.addr[..4], &[10, 0, 0, 1]);
        assert!(key.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(key.port, [0x04, 0xaa]);
        assert_eq!(key.port(), 1194);
        assert_eq!(key.family, FAMILY_V4);
    }

    #[test]
    fn guard_slots_are_distinct_per_port_and_protocol() {
        assert_eq!(guard_slot(FAMILY_V4, PROTO_UDP, 0), 0);
        assert_eq!(guard_slot(FAMILY_V6, PROTO_UDP, 0), 1);
        assert_eq!(guard_slot(FAMILY_V4, PROTO_TCP, 0), 2);
        assert_eq!(guard_slot(FAMILY_V4, PROTO_UDP, 1194), 4776);
        assert_eq!(
            guard_slot(FAMILY_V6, PROTO_TCP, u16::MAX),
            GUARD_PORT_SLOTS - 1
        );
    }

    #[test]
    fn prefilter_sizes_and_slots_stay_in_range() {
        assert_eq!(prefilter::shift_for(1), prefilter::MIN_SHIFT);
        assert_eq!(prefilter::shift_for(DEFAULT_MAX_OPENINGS), 21);
        assert_eq!(prefilter::shift_for(1_001_024), 23);
        assert_eq!(prefilter::shift_for(u32::MAX), prefilter::MAX_SHIFT);
        assert_eq!(prefilter::words(21), 32_768);
        for shift in [prefilter::MIN_SHIFT, 21, prefilter::MAX_SHIFT] {
            for hash in [0, 1, u64::MAX, prefilter::hash_v4(1, [10, 0, 0, 1])] {
                let (word, mask) = prefilter::slot(hash, shift);
                assert!(word < prefilter::words(shift));
                assert_eq!(mask.count_ones(), 1);
            }
        }
        // The key's parts all matter.
        assert_ne!(
            prefilter::hash_v4(1, [10, 0, 0, 1]),
            prefilter::hash_v4(2, [10, 0, 0, 1])
        );
        assert_ne!(
            prefilter::hash_v4(1, [10, 0, 0, 1]),
            prefilter::hash_v4(1, [10, 0, 0, 2])
        );
        let mut a = [0u8; 16];
        let b = a;
        a[15] = 1;
        assert_ne!(prefilter::hash_v6(1, &a), prefilter::hash_v6(1, &b));
        assert_ne!(prefilter::hash_v6(1, &b), prefilter::hash_v6(2, &b));
    }

    #[test]
    fn global_counter_table_matches_discriminants() {
        for (index, counter) in GlobalCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as u32 as usize, index, "{}", counter.name());
        }
    }
}
