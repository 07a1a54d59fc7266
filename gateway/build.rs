//! Builds the XDP program (`gateway-ebpf`) for the BPF target with the nightly toolchain and
//! bpf-linker, and places the object in OUT_DIR where `src/gate/loader.rs` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // `cargo fuzz` builds with --cfg fuzzing, which exposes `approval::fuzzing`.
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    let metadata = cargo_metadata_root()?;
    let ebpf_dir = format!("{metadata}/gateway-ebpf");
    let package = Package {
        name: "gateway-ebpf",
        root_dir: &ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
        .context("building the XDP program failed; run `cargo xtask setup` first")
}

/// The workspace root, derived from this crate's manifest directory.
fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("gateway crate has no parent directory"))?;
    Ok(root.display().to_string())
}
