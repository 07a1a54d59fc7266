//! Bounds-checked access to the packet and the header layouts the program reads.
//!
//! Every read goes through [`Frame::header`], which proves to the verifier (and to us) that the
//! whole header lies inside the frame before it is dereferenced.
use aya_ebpf::programs::XdpContext;

/// The packet bytes the program may read: `[start, end)`.
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    /// The frame of an XDP context.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Frame length in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A copy of the header of type `T` at `offset`, or `None` if it does not fit in the frame.
    ///
    /// `T` must be a `#[repr(C)]` struct of byte arrays (alignment 1), as all headers below are.
    #[inline(always)]
    pub fn header<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.start + offset;
        if at + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the check above keeps `[at, at + size_of::<T>())` inside the packet, and
        // every `T` used here has alignment 1 and accepts any bit pattern.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// The 4 bytes of an 802.1Q / 802.1ad tag that follow the tag protocol identifier.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanTag {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

/// IPv4 header without options (the fixed 20 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first two bytes every IPv6 extension header starts with.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExtHdr {
    pub next_header: u8,
    pub len: u8,
}

/// IPv6 fragment header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

/// Source and destination port, the first 4 bytes of TCP and UDP headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}
