//! Parses a frame down to what the gate needs: protocol, destination port and addresses.
//!
//! Policy for what cannot be parsed (see also the README, "Packet policy"):
//! - Not IPv4/IPv6 (ARP, LLDP, ...): passes; not TCP/UDP (ICMP, ESP, ...): passes.
//! - Up to two VLAN tags (802.1ad outer, 802.1Q inner) are walked; a third is dropped.
//! - A truncated or inconsistent IP header is dropped: the kernel would drop it too, and we
//!   cannot tell whether it was meant for a guarded service.
//! - TCP/UDP whose header is incomplete is dropped.
//! - IPv4 and IPv6 **non-first fragments** carry no ports and pass. This is safe because the
//!   kernel cannot reassemble a datagram without its offset-0 fragment, which carries the ports
//!   and is gated like any packet; overlapping fragments make Linux discard the whole datagram.
//! - A **first fragment** that does not hold the whole TCP (20 bytes) or UDP (8 bytes) header
//!   is dropped ("tiny fragment" attack, RFC 1858 / RFC 7112).
//! - IPv6 extension headers (hop-by-hop, routing, destination options, AH, fragment) are walked,
//!   at most [`MAX_EXT_HEADERS`]; a longer chain, or one that overruns the payload length, is
//!   dropped.
use gateway_common::{GlobalCounter, PROTO_TCP, PROTO_UDP};

use crate::frame::{EthHdr, ExtHdr, FragHdr, Frame, Ipv4Hdr, Ipv6Hdr, Ports, VlanTag};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// The longest IPv6 extension-header chain the program walks.
pub const MAX_EXT_HEADERS: usize = 6;

const ETH_HDR_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const UDP_HDR_LEN: usize = 8;
const TCP_MIN_HDR_LEN: usize = 20;

/// What a frame is, as far as the gate cares.
pub enum Target {
    /// Not TCP/UDP over IP: pass untouched.
    Unguarded,
    /// Passed by policy, but worth counting.
    Noted(GlobalCounter),
    /// IPv4 TCP/UDP: check the destination port.
    V4 {
        proto: u8,
        port: [u8; 2],
        src: [u8; 4],
        dst: [u8; 4],
    },
    /// IPv6 TCP/UDP: check the destination port.
    V6 {
        proto: u8,
        port: [u8; 2],
        src: [u8; 16],
        dst: [u8; 16],
    },
}

/// Classifies a frame; `Err` names the counter of a frame that must be dropped.
#[inline(always)]
pub fn classify(frame: &Frame) -> Result<Target, GlobalCounter> {
    let (ether_type, l3) = ethernet(frame)?;
    match ether_type {
        ETH_P_IPV4 => ipv4(frame, l3),
        ETH_P_IPV6 => ipv6(frame, l3),
        _ => Ok(Target::Unguarded),
    }
}

/// The EtherType after at most two VLAN tags, and the offset of the layer-3 header.
#[inline(always)]
fn ethernet(frame: &Frame) -> Result<(u16, usize), GlobalCounter> {
    let eth: EthHdr = frame.header(0).ok_or(GlobalCounter::EthTruncated)?;
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    let mut offset = ETH_HDR_LEN;
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            return Ok((ether_type, offset));
        }
        let tag: VlanTag = frame.header(offset).ok_or(GlobalCounter::VlanTruncated)?;
        ether_type = u16::from_be_bytes(tag.ether_type);
        offset += VLAN_TAG_LEN;
    }
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(GlobalCounter::VlanTooDeep);
    }
    Ok((ether_type, offset))
}

/// Minimum transport header length of `proto`, or `None` if the gate does not look at it.
#[inline(always)]
fn l4_min_len(proto: u8) -> Option<usize> {
    match proto {
        PROTO_UDP => Some(UDP_HDR_LEN),
        PROTO_TCP => Some(TCP_MIN_HDR_LEN),
        _ => None,
    }
}

/// Why a transport header is missing: a tiny first fragment or a plain truncation.
#[inline(always)]
fn missing_l4(first_fragment: bool) -> GlobalCounter {
    if first_fragment {
        GlobalCounter::FragmentTiny
    } else {
        GlobalCounter::L4Truncated
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, l3: usize) -> Result<Target, GlobalCounter> {
    // Read the fixed header whole before any variable-offset access (verifier-friendly).
    let ip: Ipv4Hdr = frame.header(l3).ok_or(GlobalCounter::Ipv4Truncated)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(GlobalCounter::Ipv4Malformed);
    }
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes(ip.total_len));
    if header_len < IPV4_MIN_HDR_LEN || total_len < header_len {
        return Err(GlobalCounter::Ipv4Malformed);
    }
    if l3 + total_len > frame.len() {
        return Err(GlobalCounter::Ipv4Truncated);
    }
    let Some(need) = l4_min_len(ip.proto) else {
        return Ok(Target::Unguarded);
    };
    let frag = u16::from_be_bytes(ip.frag_off);
    if frag & 0x1fff != 0 {
        return Ok(Target::Noted(GlobalCounter::PassNonFirstFragment));
    }
    let first_fragment = frag & 0x2000 != 0;
    if total_len - header_len < need {
        return Err(missing_l4(first_fragment));
    }
    let ports: Ports = frame
        .header(l3 + header_len)
        .ok_or(GlobalCounter::L4Truncated)?;
    Ok(Target::V4 {
        proto: ip.proto,
        port: ports.dst,
        src: ip.src,
        dst: ip.dst,
    })
}

#[inline(always)]
fn ipv6(frame: &Frame, l3: usize) -> Result<Target, GlobalCounter> {
    let ip: Ipv6Hdr = frame.header(l3).ok_or(GlobalCounter::Ipv6Truncated)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(GlobalCounter::Ipv6Malformed);
    }
    let end = l3 + IPV6_HDR_LEN + usize::from(u16::from_be_bytes(ip.payload_len));
    if end > frame.len() {
        return Err(GlobalCounter::Ipv6Truncated);
    }
    let mut next = ip.next_header;
    let mut offset = l3 + IPV6_HDR_LEN;
    let mut first_fragment = false;
    let mut non_first_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            PROTO_TCP | PROTO_UDP => break,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let ext: ExtHdr = frame.header(offset).ok_or(GlobalCounter::Ipv6ExtUnparsed)?;
                next = ext.next_header;
                offset += (usize::from(ext.len) + 1) * 8;
            }
            IPV6_AH => {
                let ext: ExtHdr = frame.header(offset).ok_or(GlobalCounter::Ipv6ExtUnparsed)?;
                next = ext.next_header;
                offset += (usize::from(ext.len) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let frag: FragHdr = frame.header(offset).ok_or(GlobalCounter::Ipv6ExtUnparsed)?;
                let offset_flags = u16::from_be_bytes(frag.offset_flags);
                non_first_fragment = offset_flags & 0xfff8 != 0;
                first_fragment = offset_flags & 1 != 0;
                next = frag.next_header;
                offset += 8;
            }
            _ => return Ok(Target::Unguarded),
        }
        // The header must end inside the payload, not in Ethernet padding after it. (Checked
        // after the read, so LLVM cannot fold the packet bounds check into this one.)
        if offset > end {
            return Err(GlobalCounter::Ipv6ExtUnparsed);
        }
        if non_first_fragment {
            return Ok(Target::Noted(GlobalCounter::PassNonFirstFragment));
        }
    }
    let need = match next {
        PROTO_TCP => TCP_MIN_HDR_LEN,
        PROTO_UDP => UDP_HDR_LEN,
        // Still inside the extension-header chain after MAX_EXT_HEADERS headers.
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AH | IPV6_FRAGMENT => {
            return Err(GlobalCounter::Ipv6ExtUnparsed);
        }
        _ => return Ok(Target::Unguarded),
    };
    if offset + need > end {
        return Err(missing_l4(first_fragment));
    }
    let ports: Ports = frame.header(offset).ok_or(GlobalCounter::L4Truncated)?;
    Ok(Target::V6 {
        proto: next,
        port: ports.dst,
        src: ip.src,
        dst: ip.dst,
    })
}
