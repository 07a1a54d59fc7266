//! A traffic generator for the benchmark (`cargo xtask bench`), not part of the gate.
//!
//! Run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, it redirects every frame it is
//! given to the interface whose index is in [`TRAFFICGEN_TARGET`] (one end of a veth pair), as
//! xdp-trafficgen does, so the frames reach the peer as XDP frames without socket buffers.
//! `xdpgate_bench_pass` and `xdpgate_bench_drop` are the receivers the benchmark compares
//! the gate with. The controller never loads or attaches any of these.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::map,
    macros::xdp,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Slot 0: the ifindex to redirect to. Not pinned: each loader gets its own.
#[map]
static TRAFFICGEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// Redirects the frame to the target interface; aborts when no target is set.
#[xdp]
pub fn xdpgate_trafficgen(_ctx: XdpContext) -> u32 {
    redirect()
}

#[inline(always)]
fn redirect() -> u32 {
    match TRAFFICGEN_TARGET.get(0) {
        Some(&ifindex) if ifindex != 0 => {
            // SAFETY: a helper call with plain integer arguments.
            let action = unsafe { bpf_redirect(ifindex, 0) };
            action as u32
        }
        _ => xdp_action::XDP_ABORTED,
    }
}

/// Per CPU: how many frames [`xdpgate_trafficgen_random`] has rewritten.
#[map]
static TRAFFICGEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Offsets in an untagged Ethernet + IPv4 frame.
const IP_ID: usize = 14 + 4;
const IP_SRC: usize = 14 + 12;

/// Like [`xdpgate_trafficgen`], but first gives each frame (IPv4, untagged) a new source
/// address in 10.0.0.0/8: the n-th frame of a CPU gets 10.0.0.0 + (n × an odd constant mod
/// 2^24), which visits all 2^24 addresses in a scattered order. The IPv4 identification
/// field absorbs the change, so the header checksum stays valid without recomputing it.
#[xdp]
pub fn xdpgate_trafficgen_random(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + IP_SRC + 4 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = TRAFFICGEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot of this CPU.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let low = n.wrapping_mul(0x9e37_79b1) & 0x00ff_ffff;
    let new_hi = 0x0a00 | (low >> 16);
    let new_lo = low & 0xffff;
    // SAFETY: offsets checked against `end` above (the frame holds the IPv4 source).
    unsafe {
        let id = (start + IP_ID) as *mut [u8; 2];
        let src = (start + IP_SRC) as *mut [u8; 4];
        let old = *src;
        let old_hi = u32::from(u16::from_be_bytes([old[0], old[1]]));
        let old_lo = u32::from(u16::from_be_bytes([old[2], old[3]]));
        // One's-complement: keep id + src_hi + src_lo constant.
        let total = fold(u32::from(u16::from_be_bytes(*id)) + old_hi + old_lo);
        let new_id = fold(total + (!fold(new_hi + new_lo) & 0xffff));
        *id = (new_id as u16).to_be_bytes();
        *src = low.to_be_bytes();
        (*src)[0] = 10;
    }
    redirect()
}

/// Folds a sum of 16-bit words into 16 bits, one's-complement style.
#[inline(always)]
fn fold(mut sum: u32) -> u32 {
    sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// A receiver that passes every frame: attached to the veth end under nftables, iptables and
/// the baseline, because veth only takes redirected XDP frames when its peer runs XDP.
#[xdp]
pub fn xdpgate_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// A receiver that drops every frame: the floor of the live ladder (generator + veth cost).
#[xdp]
pub fn xdpgate_bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
