//! The kernel side of the gate as the controller sees it: loading and attaching the XDP
//! program (`loader`), typed map access (`maps`), the prefilter bits beside the openings
//! maps (`prefilter`), the one thread that owns the maps (`owner`), the check that the
//! program is still attached (`guard`) and what the kernel has attached now (`kernel_xdp`).
pub mod guard;
pub mod kernel_xdp;
pub mod loader;
pub mod maps;
pub mod owner;
pub mod plan;
pub mod prefilter;

use std::path::PathBuf;

pub use maps::{GateMaps, KernelOpening, KernelService};
pub use owner::{GateHandle, spawn_owner};

/// Errors of loading, attaching and map access.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The eBPF object failed to load (verifier, map creation, ...).
    #[error("loading the XDP program: {0}")]
    Load(#[from] aya::EbpfError),
    /// Program operation (load, attach, link) failed.
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// Link operation failed.
    #[error("XDP link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    /// Pinning failed.
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map concerned.
        name: &'static str,
        /// Underlying error.
        source: aya::maps::MapError,
    },
    /// The per-CPU counters could not be sized (`/sys/devices/system/cpu/possible`).
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
    /// An openings map is at capacity.
    #[error("map {0} is full; raise controller.max_openings")]
    OpeningsFull(&'static str),
    /// A prefilter map is not a power of two of at least the minimum number of words.
    #[error("prefilter map {name} has {words} words; expected a power of two")]
    PrefilterSize {
        /// Map concerned.
        name: &'static str,
        /// Its size.
        words: u32,
    },
    /// The object lacks a map the controller expects (build mismatch).
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    /// The object lacks the program (build mismatch).
    #[error("the XDP object has no program {}", gateway_common::PROGRAM_NAME)]
    MissingProgram,
    /// The pin folder is not on a bpf filesystem.
    #[error("{0} is not on a mounted bpffs (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// Filesystem error around pins.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The map-owner thread is gone.
    #[error("the map owner has stopped")]
    OwnerGone,
}
