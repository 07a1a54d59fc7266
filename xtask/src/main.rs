//! Developer tasks for xdpgate: `cargo xtask <setup|build-ebpf|test|demo|bench|fuzz>`.
//!
//! Every task that builds or runs the gateway starts with `setup`, which installs what is
//! missing and is a no-op on a machine that has everything.

mod fuzz;
mod package;
mod run;
mod setup;
mod workspace;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::run::{exit_code, run_checked, run_status};

/// Developer tasks for xdpgate. Run them as root: setup installs packages and mounts bpffs,
/// and the tests create network namespaces and attach XDP programs.
#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    version,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need; skips what is present (root).
    ///
    /// Steps: Rust nightly with rust-src; Debian packages (llvm-<N>-dev matching nightly
    /// rustc's LLVM, nftables, iptables, ipset, iproute2, protobuf-compiler, openvpn, haproxy,
    /// netcat-openbsd, tcpdump, ethtool, systemd, util-linux, prometheus); bpf-linker built against that same LLVM; bpffs
    /// mounted at /sys/fs/bpf; a check for kernel BTF.
    Setup,
    /// Setup, then build the gateway and its XDP object (`cargo build --release -p xdpgate`).
    BuildEbpf,
    /// Setup, build the workspace in release mode, then run its tests one at a time.
    ///
    /// The tests get XDPGATE_BIN=<target>/release/xdpgate. Arguments after `--` go to the
    /// test binaries, e.g. `cargo xtask test -- gate_e2e` runs only tests matching gate_e2e.
    /// Without a filter it then runs every fuzz target for a few seconds (see `fuzz`), and
    /// fails if one finds a crash.
    Test(TestArgs),
    /// Setup, build, then make a Debian package (`<target>/package/xdpgate_<version>_<arch>.deb`)
    /// with the binary, systemd units, sysusers.d, tmpfiles.d, the conffile, man pages and
    /// shell completions.
    Package,
    /// Setup, build, then run the narrated demo in network namespaces.
    Demo(DemoArgs),
    /// Setup, build, then measure: program cost, live packet ladder (XDP gate vs nftables vs
    /// iptables+ipset vs nothing on veth), approval crypto rates, controller restart.
    ///
    /// Writes <target>/bench/report.json and report.svg. A benchmark, not a test: it never
    /// fails for being slow.
    Bench(BenchArgs),
    /// Setup, build the libFuzzer targets of `fuzz/` (nightly), run each for a time budget.
    ///
    /// Targets: approval, enrollment, proxy_v2, client_addr, config, openvpn_mgmt, xdp_diff
    /// (the XDP program against a reference classifier, with BPF_PROG_TEST_RUN). Fails if a
    /// target finds a crash or a verdict disagreement; the input is kept in
    /// <target>/fuzz/artifacts/<target>/.
    Fuzz(FuzzArgs),
}

#[derive(Args)]
struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Run only this target (repeatable); default: all.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// A short smoke run (seconds, small counts), e.g. for CI.
    #[arg(long)]
    quick: bool,
    /// More arguments for the bench binary, e.g. `-- --only program`.
    #[arg(last = true, value_name = "BENCH_ARGS")]
    bench_args: Vec<String>,
}

#[derive(Args)]
struct DemoArgs {
    /// Also show device authentication: the client's key in a software TPM (swtpm), its first
    /// request pending with a PIN, the operator approving it, then the connection.
    #[arg(long)]
    device_auth: bool,
}

#[derive(Args)]
struct TestArgs {
    /// Test only this package (repeatable); default: the workspace except the eBPF crate.
    #[arg(short, long = "package", value_name = "SPEC")]
    packages: Vec<String>,
    /// Arguments for the test binaries, e.g. a name filter.
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_task(cli.task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Task::BuildEbpf => {
            setup::setup()?;
            build_gateway()?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Test(args) => test(&args),
        Task::Package => {
            setup::setup()?;
            build_gateway()?;
            package::package(&workspace::xdpgate_bin()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Demo(args) => demo(&args),
        Task::Bench(args) => bench(&args),
        Task::Fuzz(args) => fuzz_task(&args),
    }
}

/// `cargo build --release -p xdpgate`; its build.rs builds the eBPF object.
fn build_gateway() -> Result<()> {
    run_checked(cargo().args(["build", "--release", "-p", "xdpgate"]))
}

fn test(args: &TestArgs) -> Result<ExitCode> {
    setup::setup()?;
    // The whole run starts with the lints (cheap, and a red lint fails the run before the
    // long part); a filtered run is for iterating and skips them.
    if args.test_args.is_empty() && args.packages.is_empty() {
        lint()?;
    }
    // The eBPF crate cannot link for the host; gateway's build.rs builds it for BPF.
    // --all-targets builds with the test targets' feature set, so `cargo test` reuses it all.
    run_checked(
        cargo()
            .args(["build", "--release", "--all-targets", "--workspace"])
            .args(["--exclude", "gateway-ebpf"]),
    )?;
    let bin = workspace::xdpgate_bin()?;
    // The appliance test installs this package.
    let deb = package::package(&bin)?;

    let mut cmd = cargo();
    cmd.args(["test", "--release", "--no-fail-fast"]);
    if args.packages.is_empty() {
        cmd.args(["--workspace", "--exclude", "gateway-ebpf"]);
    } else {
        for package in &args.packages {
            cmd.args(["-p", package]);
        }
    }
    // One test at a time: the end-to-end tests attach XDP programs and pin maps in bpffs.
    cmd.args(["--", "--test-threads=1"]).args(&args.test_args);
    cmd.env("XDPGATE_BIN", &bin).env("XDPGATE_DEB", &deb);
    let status = run_status(&mut cmd)?;
    // A few seconds of every fuzz target (seed corpus first), unless only some tests were
    // asked for; a crash fails the run.
    if args.test_args.is_empty() && args.packages.is_empty() {
        let target_dir = fuzz::build()?;
        let all: Vec<String> = fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect();
        fuzz::report(&fuzz::run(&target_dir, &all, fuzz::SMOKE_SECONDS)?)?;
    }
    Ok(exit_code(status))
}

/// `cargo fmt --check` and `cargo clippy --all-targets -D warnings` over the workspace (the
/// eBPF crate is linted by its own build; clippy cannot check it for the host).
fn lint() -> Result<()> {
    run_checked(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("cargo fmt --check: run `cargo fmt --all`")?;
    run_checked(
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "gateway-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"]),
    )
    .context("cargo clippy found warnings")
}

fn fuzz_task(args: &FuzzArgs) -> Result<ExitCode> {
    setup::setup()?;
    let target_dir = fuzz::build()?;
    let targets: Vec<String> = if args.targets.is_empty() {
        fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        args.targets.clone()
    };
    fuzz::report(&fuzz::run(&target_dir, &targets, args.seconds)?)?;
    Ok(ExitCode::SUCCESS)
}

fn demo(args: &DemoArgs) -> Result<ExitCode> {
    setup::setup()?;
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "xdpgate",
        "-p",
        "xdpgate-tests",
        "--bins",
    ]))?;
    let bin = workspace::xdpgate_bin()?;
    let demo = bin.with_file_name("xdpgate-demo");
    let mut command = Command::new(&demo);
    command.env("XDPGATE_BIN", &bin);
    if args.device_auth {
        command.arg("--device-auth");
    }
    let status = run_status(&mut command)?;
    Ok(exit_code(status))
}

fn bench(args: &BenchArgs) -> Result<ExitCode> {
    setup::setup()?;
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "xdpgate",
        "-p",
        "xdpgate-bench",
        "--bins",
    ]))?;
    let bin = workspace::xdpgate_bin()?;
    let bench = bin.with_file_name("xdpgate-bench");
    let out = workspace::target_dir()?.join("bench");
    let mut cmd = Command::new(&bench);
    cmd.current_dir(workspace::root())
        .env("XDPGATE_BIN", &bin)
        .arg("--out")
        .arg(&out);
    if args.quick {
        cmd.arg("--quick");
    }
    cmd.args(&args.bench_args);
    let status = run_status(&mut cmd)?;
    eprintln!(
        "bench report: {}, {}",
        out.join("report.json").display(),
        out.join("report.svg").display()
    );
    Ok(exit_code(status))
}

/// A `cargo` command run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace::root());
    cmd
}
