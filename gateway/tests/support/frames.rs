//! A small builder of Ethernet frames for the BPF_PROG_TEST_RUN tests.
//!
//! Every function returns well-formed bytes (lengths and the IPv4 checksum filled in). Tests
//! that need a malformed frame build a good one and then break exactly one thing: cut it, or
//! overwrite a field at one of the offsets below.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_AH: u8 = 51;
pub const IPV6_NO_NEXT_HEADER: u8 = 59;
pub const IPV6_DEST_OPTS: u8 = 60;

pub const ETH_HDR_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const IPV4_HDR_LEN: usize = 20;
pub const IPV6_HDR_LEN: usize = 40;
pub const UDP_HDR_LEN: usize = 8;
pub const TCP_HDR_LEN: usize = 20;

/// Offset of the IPv4 total-length field inside the IPv4 header.
pub const IPV4_TOTAL_LEN_AT: usize = 2;
/// Offset of the IPv6 payload-length field inside the IPv6 header.
pub const IPV6_PAYLOAD_LEN_AT: usize = 4;

/// IPv4 "more fragments" flag in the flags/fragment-offset field.
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
/// IPv4 "don't fragment" flag.
pub const IPV4_DONT_FRAGMENT: u16 = 0x4000;

/// An Ethernet frame; `tags` are the TPIDs of the VLAN tags, outermost first.
pub fn ethernet(tags: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HDR_LEN + tags.len() * VLAN_TAG_LEN + payload.len());
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination MAC
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
    for (vid, tpid) in (100u16..).zip(tags) {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes()); // TCI: priority 0, VLAN id
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A UDP header to `dst_port` followed by `payload_len` bytes.
pub fn udp(dst_port: u16, payload_len: usize) -> Vec<u8> {
    let len = u16::try_from(UDP_HDR_LEN + payload_len).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(usize::from(len));
    out.extend_from_slice(&40_000u16.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // checksum: none (the gate does not look)
    out.resize(usize::from(len), 0xab);
    out
}

/// A 20-byte TCP SYN to `dst_port`.
pub fn tcp(dst_port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(TCP_HDR_LEN);
    out.extend_from_slice(&40_000u16.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
    out.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement number
    out.extend_from_slice(&[5 << 4, 0x02]); // data offset 5 words, SYN
    out.extend_from_slice(&64_240u16.to_be_bytes()); // window
    out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    out
}

/// The transport header the gate parses for `proto`: a UDP header or a TCP SYN.
pub fn l4(proto: u8, dst_port: u16) -> Vec<u8> {
    match proto {
        PROTO_TCP => tcp(dst_port),
        PROTO_UDP => udp(dst_port, 0),
        other => panic!("l4: protocol {other} is neither TCP nor UDP"),
    }
}

/// An ICMP (or ICMPv6) echo request of the given type: 8 for ICMP, 128 for ICMPv6.
pub fn icmp_echo(icmp_type: u8) -> Vec<u8> {
    vec![icmp_type, 0, 0, 0, 0, 1, 0, 1]
}

/// An ARP request, as an Ethernet payload.
pub fn arp_request() -> Vec<u8> {
    let mut out = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1]; // Ethernet/IPv4, request
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 198, 51, 100, 10]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
    out
}

/// The IPv4 header fields the tests vary.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Option words after the fixed header (IHL = 5 + this), filled with NOP options.
    pub option_words: u8,
    /// The flags/fragment-offset field (offset in 8-byte units in the low 13 bits).
    pub frag: u16,
}

impl Ipv4 {
    /// An unfragmented IPv4 header without options.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            option_words: 0,
            frag: IPV4_DONT_FRAGMENT,
        }
    }

    /// The header followed by `payload`, with total length and checksum set.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + self.option_words;
        let header_len = usize::from(ihl) * 4;
        let total_len = u16::try_from(header_len + payload.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(usize::from(total_len));
        out.extend_from_slice(&[0x40 | (ihl & 0x0f), 0]);
        out.extend_from_slice(&total_len.to_be_bytes());
        out.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
        out.extend_from_slice(&self.frag.to_be_bytes());
        out.extend_from_slice(&[64, self.proto, 0, 0]); // TTL, protocol, checksum (below)
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.resize(header_len, 0x01); // NOP options
        let checksum = internet_checksum(&out);
        out[10..12].copy_from_slice(&checksum.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv6 header followed by `payload` (which starts with header `next_header`).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let payload_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(IPV6_HDR_LEN + payload.len());
    out.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, class 0, flow 0
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&[next_header, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(payload);
    out
}

/// An IPv6 packet whose extension headers are `chain` (hop-by-hop, routing, destination
/// options or AH), in order, before the transport header `l4` of protocol `proto`.
pub fn ipv6_chain(src: Ipv6Addr, dst: Ipv6Addr, chain: &[u8], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, kind) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(proto);
        payload.extend(ipv6_ext(*kind, next));
    }
    payload.extend_from_slice(l4);
    ipv6(src, dst, chain.first().copied().unwrap_or(proto), &payload)
}

/// One extension header of the given kind: 8 bytes for hop-by-hop, routing and destination
/// options (PadN filled), 24 bytes for AH (12-byte ICV).
pub fn ipv6_ext(kind: u8, next_header: u8) -> Vec<u8> {
    match kind {
        IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => vec![next_header, 0, 1, 4, 0, 0, 0, 0],
        // Type 4 (segment routing) with no segments left: the kernel skips it.
        IPV6_ROUTING => vec![next_header, 0, 4, 0, 0, 0, 0, 0],
        // Length in 4-byte units minus 2: (24 / 4) - 2 = 4.
        IPV6_AH => {
            let mut out = vec![next_header, 4, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1];
            out.resize(24, 0xcc);
            out
        }
        other => panic!("ipv6_ext: {other} is not a hop-by-hop/routing/dest-opts/AH header"),
    }
}

/// An IPv6 fragment header: `offset` in 8-byte units, `more` the M flag.
pub fn ipv6_fragment(next_header: u8, offset: u16, more: bool) -> Vec<u8> {
    let offset_flags = (offset << 3) | u16::from(more);
    let mut out = vec![next_header, 0];
    out.extend_from_slice(&offset_flags.to_be_bytes());
    out.extend_from_slice(&0xdead_beefu32.to_be_bytes()); // identification
    out
}

/// A whole frame: `l4` (which starts with header `proto`) over IPv4 or IPv6, by address family.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            ethernet(&[], ETH_P_IPV4, &Ipv4::new(src, dst, proto).packet(l4))
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet(&[], ETH_P_IPV6, &ipv6(src, dst, proto, l4)),
        _ => panic!("ip_frame: {src} and {dst} are of different families"),
    }
}

/// Concatenates byte strings.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}
