//! Where the workspace and its build output live.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run::output;

/// The workspace root (the parent of this crate's directory).
pub fn root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR and cargo config.
pub fn target_dir() -> Result<PathBuf> {
    let json = output(Command::new("cargo").current_dir(root()).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("cannot parse `cargo metadata` output")?;
    match meta.get("target_directory").and_then(|v| v.as_str()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("`cargo metadata` printed no target_directory"),
    }
}

/// The release gateway binary, which must have been built.
pub fn xdpgate_bin() -> Result<PathBuf> {
    let bin = target_dir()?.join("release").join("xdpgate");
    if !bin.is_file() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}
