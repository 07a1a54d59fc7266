//! Minimal Ethernet/IPv4/IPv6/UDP frame builders (well-formed: lengths and IPv4 checksum set).
use std::net::{Ipv4Addr, Ipv6Addr};

/// Smallest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;

/// An Ethernet frame of `ether_type` carrying `payload`, padded to 60 bytes.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME.max(14 + payload.len()));
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    if frame.len() < MIN_FRAME {
        frame.resize(MIN_FRAME, 0);
    }
    frame
}

/// A UDP datagram from port 40000 to `dst_port` with `payload_len` bytes (no checksum).
pub fn udp(dst_port: u16, payload_len: usize) -> Vec<u8> {
    let len = 8 + payload_len;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&40_000u16.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.resize(len, 0xab);
    out
}

/// An IPv4 packet with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(usize::from(total));
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let sum = checksum(&out);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An IPv6 packet without extension headers.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + payload.len());
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(
        &u16::try_from(payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&[next_header, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(payload);
    out
}

/// A UDP frame over IPv4 with made-up MAC addresses.
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    udp_v4_mac(
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        src,
        dst,
        dst_port,
    )
}

/// A UDP frame over IPv4 between the given MAC addresses.
pub fn udp_v4_mac(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_port: u16,
) -> Vec<u8> {
    ethernet(
        dst_mac,
        src_mac,
        0x0800,
        &ipv4(src, dst, 17, &udp(dst_port, 18)),
    )
}

/// A UDP frame over IPv6 with made-up MAC addresses.
pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, dst_port: u16) -> Vec<u8> {
    ethernet(
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        0x86dd,
        &ipv6(src, dst, 17, &udp(dst_port, 18)),
    )
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
