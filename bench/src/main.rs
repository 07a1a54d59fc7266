//! `xdpgate-bench`: measures the gate and the controller on this machine and writes
//! `report.json` and `report.svg` (run it through `cargo xtask bench`, as root).
//!
//! A benchmark, not a test: it never fails for being slow. Each part runs on its own; a part
//! that cannot run leaves its numbers null and says why, and the others still run.
mod approvals;
mod approvals_e2e;
mod attack;
mod cluster;
mod frames;
mod live;
mod program;
mod report;
mod requests;
mod restart;
mod sweep;

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    process::ExitCode,
    time::Instant,
};

use anyhow::Result;
use clap::Parser;

use crate::report::{Machine, Report};

/// Measures xdpgate on this machine: program cost (BPF_PROG_TEST_RUN), a live packet ladder
/// on veth (XDP gate vs nftables vs iptables+ipset vs nothing), approval crypto rates,
/// forwarding latency from a cluster web node to the owning controller, a controller
/// restart with 100k openings, and valid approvals while the web front is attacked.
#[derive(Parser, Debug)]
#[command(name = "xdpgate-bench")]
pub struct Opts {
    /// A short smoke run: small counts, seconds in all.
    #[arg(long)]
    pub quick: bool,
    /// Where report.json and report.svg go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Exit with failure if any part did not complete (for CI's smoke run; slowness never
    /// fails).
    #[arg(long)]
    pub fail_on_error: bool,
    /// Prefilter bits per opening of capacity for the program part's prefilter variant
    /// (rounded to a power of two in total; the controller uses 8), to compare sizes.
    #[arg(long, default_value_t = 8)]
    pub prefilter_bits: u32,
    /// Run only these parts (program, live, approvals, approvals-e2e, cluster, restart, sweep, attack); default all.
    #[arg(long = "only", value_name = "PART")]
    pub only: Vec<String>,
}

/// Prints a progress line with the time since start.
pub fn progress(line: &str) {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
}

type Part = fn(&mut Report, &Opts) -> Result<()>;

/// Fails unless `XDPGATE_BIN` names the xdpgate binary (the parts that run real processes
/// need it; `cargo xtask bench` sets it).
pub fn require_xdpgate_bin() -> Result<()> {
    if std::env::var_os("XDPGATE_BIN").is_none() {
        anyhow::bail!("XDPGATE_BIN is not set; run through `cargo xtask bench`");
    }
    Ok(())
}

/// The value at fraction `p` (0..=1) of `sorted` (nearest rank); `sorted` must not be empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "xdpgate-bench needs root (BPF, network namespaces); run `cargo xtask bench` as root"
        );
        return ExitCode::FAILURE;
    }
    progress(&format!(
        "xdpgate bench{}",
        if opts.quick { " (--quick)" } else { "" }
    ));
    let machine = Machine::probe();
    let mut report = Report::new();
    let parts: [(&str, Part); 8] = [
        ("program", program::run),
        ("live", live::run),
        ("approvals", approvals::run),
        ("approvals-e2e", approvals_e2e::run),
        ("cluster", cluster::run),
        ("restart", restart::run),
        ("sweep", sweep::run),
        ("attack", attack::run),
    ];
    let started = Instant::now();
    let mut failed_parts = Vec::new();
    for (name, part) in parts {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| o == name) {
            report.note(name, "not run (--only)");
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| part(&mut report, &opts)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(panic) => Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".into()),
            ),
        };
        if let Some(failure) = failure {
            failed_parts.push(name);
            progress(&format!("{name}: did not complete: {failure}"));
            report.note(&format!("{name}.error"), failure);
        }
    }
    derive(&mut report);
    report.set("run_seconds", started.elapsed().as_secs_f64());
    print!("{}", report.table(&machine));
    match report.write(&opts.out, &machine, opts.quick) {
        Ok(()) => {
            println!(
                "\nreport: {0}/report.json, {0}/report.svg",
                opts.out.display()
            );
            if opts.fail_on_error && !failed_parts.is_empty() {
                eprintln!("parts that did not complete: {}", failed_parts.join(", "));
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("writing the report: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ratios between parts.
fn derive(report: &mut Report) {
    if let (Some(e2e), Some(bound)) = (
        report.get("approvals.per_sec"),
        report.get("approvals.crypto_bound_per_sec"),
    ) {
        report.set("approvals.ratio", e2e / bound);
    }
}
