//! Differential target: each structured frame runs through the real XDP program
//! (BPF_PROG_TEST_RUN) and through the README-derived reference classifier; any verdict
//! disagreement is a finding. Needs root and bpffs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xdpgate_fuzz::{
    frames::{FrameSpec, hex},
    kernel, reference,
};

fuzz_target!(|spec: FrameSpec| {
    let frame = spec.build();
    let expected = reference::verdict(&frame);
    let got = kernel::verdict(&frame);
    assert_eq!(
        got,
        expected,
        "verdict disagreement (program vs README policy) on frame [{}]",
        hex(&frame)
    );
});
