//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` (their own workspace, nightly)
//! and runs them, each for a time budget, from the seed corpus in `fuzz/corpus/<target>`.
//!
//! New inputs go to `<target-dir>/fuzz/corpus/<target>` (not the repository); a crash or a
//! verdict disagreement is written to `<target-dir>/fuzz/artifacts/<target>/` and fails the
//! run. `cargo xtask test` runs every target for a few seconds this way.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::run::{display, run_checked};
use crate::workspace;

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 7] = [
    "approval",
    "enrollment",
    "proxy_v2",
    "client_addr",
    "config",
    "openvpn_mgmt",
    "xdp_diff",
];

/// Seconds per target in `cargo xtask test`: 7 targets, about half a minute in all.
pub const SMOKE_SECONDS: u64 = 4;

/// What one target's run did.
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub seconds: f64,
    /// `None` when it found nothing, else what it printed about the finding.
    pub finding: Option<String>,
}

/// Builds the targets (release, debug assertions and overflow checks on, no sanitizer: the
/// code under test is safe Rust, and panics and overflows are what it finds).
pub fn build() -> Result<PathBuf> {
    let target_dir = workspace::target_dir()?.join("fuzz");
    run_checked(
        Command::new("cargo")
            .current_dir(workspace::root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .args([
                "+nightly",
                "fuzz",
                "build",
                "--release",
                "--debug-assertions",
            ])
            .args(["--sanitizer", "none", "--target-dir"])
            .arg(&target_dir),
    )?;
    Ok(target_dir)
}

/// Runs `targets` for `seconds` each; returns every outcome (also those that found something).
pub fn run(target_dir: &Path, targets: &[String], seconds: u64) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "unknown fuzz target {target:?}; targets: {}",
                TARGETS.join(", ")
            );
        }
        outcomes.push(run_one(target_dir, target, seconds)?);
    }
    Ok(outcomes)
}

fn run_one(target_dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let bin = target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(target);
    if !bin.is_file() {
        bail!("{} is missing after the fuzz build", bin.display());
    }
    let corpus = target_dir.join("corpus").join(target);
    let artifacts = target_dir.join("artifacts").join(target);
    let seeds = workspace::root().join("fuzz/corpus").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut cmd = Command::new(&bin);
    cmd.arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args([
            "-print_final_stats=1",
            "-timeout=20",
            "-rss_limit_mb=2048",
            "-max_len=16384",
        ]);
    let dict = workspace::root()
        .join("fuzz/dicts")
        .join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    println!(
        "xtask: fuzzing {target} for {seconds} s: `{}`",
        display(&cmd)
    );
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let executions = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let finding = if out.status.success() {
        None
    } else {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        Some(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    };
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        seconds,
        finding,
    })
}

/// Prints one line per target; fails if any found something.
pub fn report(outcomes: &[Outcome]) -> Result<()> {
    println!(
        "fuzz: {:<14} {:>14} {:>9}  result",
        "target", "executions", "seconds"
    );
    for o in outcomes {
        let result = if o.finding.is_some() {
            "FINDING"
        } else {
            "nothing found"
        };
        println!(
            "fuzz: {:<14} {:>14} {:>9.1}  {result}",
            o.target, o.executions, o.seconds
        );
    }
    let found: Vec<&Outcome> = outcomes.iter().filter(|o| o.finding.is_some()).collect();
    for o in &found {
        eprintln!(
            "fuzz: {} found a crash or disagreement:\n{}",
            o.target,
            o.finding.as_deref().unwrap_or("")
        );
    }
    if !found.is_empty() {
        let names: Vec<&str> = found.iter().map(|o| o.target.as_str()).collect();
        bail!(
            "fuzz targets found something: {} (inputs under target/fuzz/artifacts/)",
            names.join(", ")
        );
    }
    Ok(())
}
