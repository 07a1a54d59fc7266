//! Shared code of the fuzz targets: the frame generator, the reference classifier and the
//! kernel harness of the differential XDP target (`fuzz_targets/xdp_diff.rs`).
pub mod frames;
pub mod kernel;
pub mod policy;
pub mod reference;
