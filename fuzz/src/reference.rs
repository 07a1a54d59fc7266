//! A host-side reference classifier, written from the README's "Packet policy" section (not
//! from the eBPF code), for the differential target. Where the README is silent, the rule
//! used is its own principle: what cannot be shown not to be for a guarded port is dropped.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::{GRANTS, SERVICES, TCP, UDP};

/// What the gate must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

use Verdict::{Drop, Pass};

/// The verdict the README's packet policy gives `frame` under [`SERVICES`] and [`GRANTS`].
pub fn verdict(frame: &[u8]) -> Verdict {
    let Some(type_bytes) = frame.get(12..14) else {
        return Drop;
    };
    let mut ether_type = u16::from_be_bytes([type_bytes[0], type_bytes[1]]);
    let mut l3 = 14;
    // "Up to two VLAN tags (802.1ad outer, 802.1Q inner) are walked; a third tag is dropped."
    let is_tag = |t: u16| t == 0x8100 || t == 0x88a8;
    let mut tags = 0;
    while is_tag(ether_type) {
        if tags == 2 {
            return Drop;
        }
        // A cut tag could hide an IP header: dropped.
        let Some(inner) = frame.get(l3 + 2..l3 + 4) else {
            return Drop;
        };
        ether_type = u16::from_be_bytes([inner[0], inner[1]]);
        l3 += 4;
        tags += 1;
    }
    let datagram = &frame[l3..];
    match ether_type {
        0x0800 => ipv4(datagram),
        0x86dd => ipv6(datagram),
        // "Everything else passes untouched."
        _ => Pass,
    }
}

/// Transport header bytes the gate needs: "the whole TCP (20 bytes) or UDP (8 bytes) header".
fn transport_len(proto: u8) -> Option<usize> {
    match proto {
        TCP => Some(20),
        UDP => Some(8),
        _ => None,
    }
}

fn ipv4(packet: &[u8]) -> Verdict {
    // "A truncated or inconsistent IPv4/IPv6 header is dropped."
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return Drop;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < 20 || total_len < header_len || total_len > packet.len() {
        return Drop;
    }
    let proto = packet[9];
    // "Everything else passes untouched": not TCP/UDP.
    let Some(need) = transport_len(proto) else {
        return Pass;
    };
    // "A non-first fragment (IPv4 offset > 0 ...) carries no ports and passes."
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x1fff != 0 {
        return Pass;
    }
    // A first fragment too short for the transport header, or a plain incomplete header.
    let transport = &packet[header_len..total_len];
    if transport.len() < need {
        return Drop;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    gate(
        false,
        proto,
        port(transport),
        IpAddr::V4(src),
        IpAddr::V4(dst),
    )
}

fn ipv6(packet: &[u8]) -> Verdict {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return Drop;
    }
    let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    if 40 + payload_len > packet.len() {
        return Drop;
    }
    let payload = &packet[40..40 + payload_len];
    let mut next = packet[6];
    let mut at = 0usize;
    // "Hop-by-hop, routing, destination options, AH and fragment headers are walked, at most
    // 6; a longer chain, or one truncated, is dropped when it could hide TCP/UDP."
    let mut walked = 0;
    loop {
        let len = match next {
            0 | 43 | 60 => payload.get(at + 1).map(|l| (usize::from(*l) + 1) * 8),
            51 => payload.get(at + 1).map(|l| (usize::from(*l) + 2) * 4),
            44 => Some(8),
            _ => break,
        };
        if walked == 6 {
            return Drop;
        }
        let Some(len) = len else {
            return Drop;
        };
        if at + len > payload.len() {
            return Drop;
        }
        if next == 44 {
            let offset = u16::from_be_bytes([payload[at + 2], payload[at + 3]]) >> 3;
            // "... or an IPv6 fragment header with offset > 0 ... carries no ports and passes."
            if offset > 0 {
                return Pass;
            }
        }
        next = payload[at];
        at += len;
        walked += 1;
    }
    let Some(need) = transport_len(next) else {
        return Pass;
    };
    let transport = &payload[at..];
    if transport.len() < need {
        return Drop;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&packet[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&packet[24..40]);
    gate(
        true,
        next,
        port(transport),
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
    )
}

fn port(transport: &[u8]) -> u16 {
    u16::from_be_bytes([transport[2], transport[3]])
}

/// "A TCP or UDP packet to a guarded service (protocol, destination port, and optionally
/// destination address) passes only if `(server, source address)` has an unexpired opening;
/// otherwise it is dropped. Everything else passes untouched." A service on the destination
/// address is more specific than one on any address.
fn gate(v6: bool, proto: u8, port: u16, src: IpAddr, dst: IpAddr) -> Verdict {
    let matches = |addr: Option<IpAddr>| {
        SERVICES
            .iter()
            .find(|s| s.v6 == v6 && s.proto == proto && s.port == port && s.addr == addr)
    };
    let Some(service) = matches(Some(dst)).or_else(|| matches(None)) else {
        return Pass;
    };
    let open = GRANTS
        .iter()
        .any(|g| g.server == service.server && g.addr == src && g.unexpired);
    if open { Pass } else { Drop }
}
