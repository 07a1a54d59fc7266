//! A traffic generator for the benchmark (`cargo xtask bench`), not part of the gate.
//!
//! Run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, it redirects every frame it is
//! given to the interface whose index is in [`TRAFFICGEN_TARGET`] (one end of a veth pair), as
//! xdp-trafficgen does, so the frames reach the peer as XDP frames without socket buffers.
//! `xdpgate_bench_pass` and `xdpgate_bench_drop` are the receivers the benchmark compares
//! the gate with. The controller never loads or attaches any of these.
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_redirect, macros::map, macros::xdp, maps::Array,
    programs::XdpContext,
};

/// Slot 0: the ifindex to redirect to. Not pinned: each loader gets its own.
#[map]
static TRAFFICGEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// Redirects the frame to the target interface; aborts when no target is set.
#[xdp]
pub fn xdpgate_trafficgen(_ctx: XdpContext) -> u32 {
    match TRAFFICGEN_TARGET.get(0) {
        Some(&ifindex) if ifindex != 0 => {
            // SAFETY: a helper call with plain integer arguments.
            let action = unsafe { bpf_redirect(ifindex, 0) };
            action as u32
        }
        _ => xdp_action::XDP_ABORTED,
    }
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
