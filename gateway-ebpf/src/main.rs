//! The xdpgate XDP program.
//!
//! Policy, in one place: a packet to a guarded service (protocol, destination port and
//! optionally destination address, see `SERVICES`) passes only when its source address has an
//! unexpired opening for that service's server; a malformed packet that could be one is
//! dropped; everything else passes untouched. The fragment and extension-header rules are
//! in `parse.rs` and the README.
#![no_std]
#![no_main]

mod frame;
mod gate;
mod maps;
mod parse;
mod trafficgen;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Entry point: attach this to the public interface.
#[xdp]
pub fn xdpgate(ctx: XdpContext) -> u32 {
    match parse::classify(&frame::Frame::new(&ctx)) {
        Ok(parse::Target::Unguarded) => xdp_action::XDP_PASS,
        Ok(parse::Target::Noted(counter)) => {
            maps::count(counter);
            xdp_action::XDP_PASS
        }
        Ok(parse::Target::V4 {
            proto,
            port,
            src,
            dst,
        }) => gate::check_v4(proto, port, src, dst),
        Ok(parse::Target::V6 {
            proto,
            port,
            src,
            dst,
        }) => gate::check_v6(proto, port, &src, &dst),
        Err(counter) => {
            maps::count(counter);
            xdp_action::XDP_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists only to link.
    loop {}
}

/// License of the program: GPL-compatible, so GPL-only helpers are available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
