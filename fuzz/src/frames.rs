//! Structured random frames for the differential target: Ethernet, up to three VLAN tags,
//! IPv4 with options and fragments, IPv6 with extension-header chains, TCP/UDP, and cuts at
//! any length. Every field the gate looks at can also be set to a wrong value.
use std::net::{Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;

use crate::policy::{
    CLIENT_V4, CLIENT_V6, EXACT_PORT, EXPIRED_V4, EXPIRED_V6, FREE_PORT, LOCAL_V4, LOCAL_V6,
    OTHER_CLIENT_V4, OTHER_CLIENT_V6, OTHER_LOCAL_V4, OTHER_LOCAL_V6, SHARED_PORT, TCP_PORT,
    UDP_PORT,
};

/// The smallest frame BPF_PROG_TEST_RUN accepts for XDP (an Ethernet header).
pub const MIN_FRAME: usize = 14;

/// The largest frame built: BPF_PROG_TEST_RUN takes at most about a page for XDP.
pub const MAX_FRAME: usize = 1514;

/// A frame: built from layers, or raw bytes.
#[derive(Arbitrary, Debug, Clone)]
pub enum FrameSpec {
    /// Built layer by layer.
    Layered(Layered),
    /// Raw bytes (padded to [`MIN_FRAME`]).
    Raw(Vec<u8>),
}

/// An Ethernet frame.
#[derive(Arbitrary, Debug, Clone)]
pub struct Layered {
    /// VLAN tags, outermost first (at most 3 are used).
    pub tags: Vec<Tpid>,
    /// What the Ethernet (or innermost tag's) EtherType announces.
    pub l3: L3,
    /// Cut the finished frame to `cut % (len + 1)` bytes.
    pub cut: Option<u16>,
    /// Bytes after the IP datagram (Ethernet padding), `% 64`.
    pub padding: u8,
}

/// A VLAN tag protocol identifier.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Tpid {
    /// 802.1Q.
    Dot1Q,
    /// 802.1ad.
    Dot1Ad,
    /// Anything else (then the "tag" is the EtherType).
    Other(u16),
}

/// The layer-3 part.
#[derive(Arbitrary, Debug, Clone)]
pub enum L3 {
    /// IPv4.
    V4(V4),
    /// IPv6.
    V6(V6),
    /// Another EtherType with arbitrary bytes.
    Other { ether_type: u16, payload: Vec<u8> },
}

/// A source or destination chosen from the policy's addresses, or any address.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Who {
    /// The client opened for the default server.
    Client,
    /// The client opened for the other server.
    OtherClient,
    /// A client whose opening has expired.
    Expired,
    /// The gateway's address with exact services.
    Local,
    /// Another local address.
    OtherLocal,
    /// Any address.
    Any([u8; 16]),
}

impl Who {
    fn v4(self) -> Ipv4Addr {
        match self {
            Who::Client => CLIENT_V4,
            Who::OtherClient => OTHER_CLIENT_V4,
            Who::Expired => EXPIRED_V4,
            Who::Local => LOCAL_V4,
            Who::OtherLocal => OTHER_LOCAL_V4,
            Who::Any(b) => Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        }
    }

    fn v6(self) -> Ipv6Addr {
        match self {
            Who::Client => CLIENT_V6,
            Who::OtherClient => OTHER_CLIENT_V6,
            Who::Expired => EXPIRED_V6,
            Who::Local => LOCAL_V6,
            Who::OtherLocal => OTHER_LOCAL_V6,
            Who::Any(b) => Ipv6Addr::from(b),
        }
    }
}

/// The transport protocol number.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP or ICMPv6, by family.
    Icmp,
    Other(u8),
}

impl Proto {
    fn number(self, v6: bool) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp if v6 => 58,
            Proto::Icmp => 1,
            Proto::Other(n) => n,
        }
    }
}

/// A destination port: one of the policy's, or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    Udp,
    Tcp,
    Exact,
    Shared,
    Free,
    Any(u16),
}

impl Port {
    fn number(self) -> u16 {
        match self {
            Port::Udp => UDP_PORT,
            Port::Tcp => TCP_PORT,
            Port::Exact => EXACT_PORT,
            Port::Shared => SHARED_PORT,
            Port::Free => FREE_PORT,
            Port::Any(n) => n,
        }
    }
}

/// The transport header and payload.
#[derive(Arbitrary, Debug, Clone)]
pub struct L4 {
    pub src_port: u16,
    pub dst_port: Port,
    /// TCP data offset in words (default 5).
    pub tcp_data_offset: Option<u8>,
    /// Payload bytes after the header, `% 64`.
    pub payload_len: u8,
    /// Keep only this many bytes of header + payload (`% 33`), before lengths are computed.
    pub keep: Option<u8>,
}

impl L4 {
    fn bytes(&self, proto: u8) -> Vec<u8> {
        let payload = usize::from(self.payload_len % 64);
        let mut out = Vec::new();
        out.extend_from_slice(&self.src_port.to_be_bytes());
        out.extend_from_slice(&self.dst_port.number().to_be_bytes());
        match proto {
            6 => {
                out.extend_from_slice(&1u32.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
                out.push((self.tcp_data_offset.unwrap_or(5) & 0x0f) << 4);
                out.push(0x02);
                out.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
            }
            _ => {
                let len = u16::try_from(8 + payload).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
        out.resize(out.len() + payload, 0xab);
        if let Some(keep) = self.keep {
            out.truncate(usize::from(keep % 33));
        }
        out
    }
}

/// IPv4 fragment fields.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Frag4 {
    /// Don't-fragment set, offset 0.
    Whole,
    /// More-fragments set, offset 0.
    First,
    /// Offset in 8-byte units (`% 8192`), more-fragments as given.
    Later { offset: u16, more: bool },
    /// The whole 16-bit field (flags and offset).
    Raw(u16),
}

impl Frag4 {
    fn field(self) -> u16 {
        match self {
            Frag4::Whole => 0x4000,
            Frag4::First => 0x2000,
            Frag4::Later { offset, more } => (offset & 0x1fff) | if more { 0x2000 } else { 0 },
            Frag4::Raw(v) => v,
        }
    }
}

/// An IPv4 datagram.
#[derive(Arbitrary, Debug, Clone)]
pub struct V4 {
    /// Replaces the version nibble.
    pub version: Option<u8>,
    /// Option words after the fixed header (`% 11`), NOPs.
    pub option_words: u8,
    /// Replaces the IHL nibble.
    pub ihl: Option<u8>,
    /// Replaces the total length.
    pub total_len: Option<u16>,
    pub frag: Frag4,
    pub proto: Proto,
    pub src: Who,
    pub dst: Who,
    pub l4: L4,
}

impl V4 {
    fn bytes(&self) -> Vec<u8> {
        let proto = self.proto.number(false);
        let words = self.option_words % 11;
        let header_len = 20 + usize::from(words) * 4;
        let l4 = self.l4.bytes(proto);
        let total = self
            .total_len
            .unwrap_or(u16::try_from(header_len + l4.len()).unwrap_or(u16::MAX));
        let version = self.version.unwrap_or(4) & 0x0f;
        let ihl = self.ihl.unwrap_or(5 + words) & 0x0f;
        let mut out = vec![version << 4 | ihl, 0];
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&0x1234u16.to_be_bytes());
        out.extend_from_slice(&self.frag.field().to_be_bytes());
        out.extend_from_slice(&[64, proto, 0, 0]);
        out.extend_from_slice(&self.src.v4().octets());
        out.extend_from_slice(&self.dst.v4().octets());
        out.resize(header_len, 0x01);
        let checksum = internet_checksum(&out);
        out[10..12].copy_from_slice(&checksum.to_be_bytes());
        out.extend_from_slice(&l4);
        out
    }
}

/// An IPv6 extension header kind.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ExtKind {
    HopByHop,
    Routing,
    DestOpts,
    Ah,
    Fragment {
        offset: u16,
        more: bool,
    },
    /// A header of another protocol number (its bytes look like an extension header).
    Other(u8),
}

impl ExtKind {
    fn number(self) -> u8 {
        match self {
            ExtKind::HopByHop => 0,
            ExtKind::Routing => 43,
            ExtKind::DestOpts => 60,
            ExtKind::Ah => 51,
            ExtKind::Fragment { .. } => 44,
            ExtKind::Other(n) => n,
        }
    }
}

/// One extension header.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Ext {
    pub kind: ExtKind,
    /// The length field (`% 4`; units per kind).
    pub len: u8,
}

/// An IPv6 packet.
#[derive(Arbitrary, Debug, Clone)]
pub struct V6 {
    /// Replaces the version nibble.
    pub version: Option<u8>,
    /// Replaces the payload length.
    pub payload_len: Option<u16>,
    pub src: Who,
    pub dst: Who,
    /// The extension-header chain (at most 9 are used).
    pub exts: Vec<Ext>,
    pub proto: Proto,
    pub l4: L4,
}

impl V6 {
    fn bytes(&self) -> Vec<u8> {
        let proto = self.proto.number(true);
        let exts = &self.exts[..self.exts.len().min(9)];
        let first = exts.first().map_or(proto, |e| e.kind.number());
        let mut payload = Vec::new();
        for (i, ext) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(proto, |e| e.kind.number());
            let len = ext.len % 4;
            match ext.kind {
                ExtKind::Fragment { offset, more } => {
                    let field = (offset << 3) | u16::from(more);
                    payload.extend_from_slice(&[next, len]);
                    payload.extend_from_slice(&field.to_be_bytes());
                    payload.extend_from_slice(&[0, 0, 0x56, 0x78]);
                }
                ExtKind::Ah => {
                    let bytes = (usize::from(len) + 2) * 4;
                    payload.extend_from_slice(&[next, len]);
                    payload.resize(payload.len() + bytes - 2, 0);
                }
                _ => {
                    let bytes = (usize::from(len) + 1) * 8;
                    payload.extend_from_slice(&[next, len, 1, 4]);
                    payload.resize(payload.len() + bytes - 4, 0);
                }
            }
        }
        payload.extend_from_slice(&self.l4.bytes(proto));
        let payload_len = self
            .payload_len
            .unwrap_or(u16::try_from(payload.len()).unwrap_or(u16::MAX));
        let version = self.version.unwrap_or(6) & 0x0f;
        let mut out = vec![version << 4, 0, 0, 0];
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.extend_from_slice(&[first, 64]);
        out.extend_from_slice(&self.src.v6().octets());
        out.extend_from_slice(&self.dst.v6().octets());
        out.extend_from_slice(&payload);
        out
    }
}

impl FrameSpec {
    /// The frame's bytes ([`MIN_FRAME`] to [`MAX_FRAME`]).
    pub fn build(&self) -> Vec<u8> {
        let mut frame = match self {
            FrameSpec::Raw(bytes) => bytes.clone(),
            FrameSpec::Layered(layered) => layered.build(),
        };
        frame.truncate(MAX_FRAME);
        if frame.len() < MIN_FRAME {
            frame.resize(MIN_FRAME, 0);
        }
        frame
    }
}

impl Layered {
    fn build(&self) -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
        let (ether_type, l3) = match &self.l3 {
            L3::V4(v4) => (0x0800, v4.bytes()),
            L3::V6(v6) => (0x86dd, v6.bytes()),
            L3::Other {
                ether_type,
                payload,
            } => (*ether_type, payload.clone()),
        };
        for (vid, tag) in (100u16..).zip(self.tags.iter().take(3)) {
            let tpid = match tag {
                Tpid::Dot1Q => 0x8100,
                Tpid::Dot1Ad => 0x88a8,
                Tpid::Other(t) => *t,
            };
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&vid.to_be_bytes());
        }
        frame.extend_from_slice(&u16::to_be_bytes(ether_type));
        frame.extend_from_slice(&l3);
        frame.resize(frame.len() + usize::from(self.padding % 64), 0);
        if let Some(cut) = self.cut {
            frame.truncate(usize::from(cut) % (frame.len() + 1));
        }
        frame
    }
}

/// The IPv4 header checksum (RFC 1071).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// A frame as hex, for findings.
pub fn hex(frame: &[u8]) -> String {
    frame
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
