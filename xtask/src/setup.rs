//! `cargo xtask setup`: installs what building and testing xdpgate need, skipping what is
//! present. Prints one line per step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use std::{env, fs};

use anyhow::{Context as _, Result, bail};

use crate::run::{output, run_checked};

/// Debian packages the build and the tests use (the LLVM dev package is added per nightly).
const APT_PACKAGES: &[&str] = &[
    "nftables",
    "iptables",
    "ipset",
    "iproute2",
    "protobuf-compiler",
    "openvpn",
    "openssl",
    "haproxy",
    "netcat-openbsd",
    "tcpdump",
    "ethtool",
    // The appliance test: systemd-analyze/sysusers/tmpfiles, setpriv, a real Prometheus.
    "systemd",
    "util-linux",
    "prometheus",
    "curl",
    // Device authentication: tss-esapi links Debian's libtss2 (found with pkg-config); the
    // tests and the demo run one software TPM per client device.
    "pkg-config",
    "libtss2-dev",
    "swtpm",
    "swtpm-tools",
];

/// Written next to bpf-linker after setup builds it: the LLVM major it was built against.
const LLVM_STAMP: &str = ".bpf-linker-llvm-major";

pub fn setup() -> Result<()> {
    ensure_root()?;
    let started = Instant::now();
    ensure_nightly()?;
    ensure_lint_tools()?;
    let llvm = nightly_llvm_major()?;
    ensure_apt_packages(llvm)?;
    ensure_bpf_linker(llvm)?;
    ensure_cargo_fuzz()?;
    ensure_bpffs()?;
    ensure_system_users()?;
    check_btf();
    println!("setup: done ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "setup must run as root (it installs Debian packages and mounts bpffs; the tests \
             create network namespaces): run it as root, e.g. `sudo -E env PATH=$PATH cargo xtask ...`"
        );
    }
    Ok(())
}

/// The system users of the unprivileged parts: the web front (`xdpgate-web`) and the VPN
/// server with its tun interface (`xdpgate-vpn`). Each gets its own group, no home, no shell.
pub const SYSTEM_USERS: [&str; 2] = ["xdpgate-web", "xdpgate-vpn"];

fn ensure_system_users() -> Result<()> {
    for user in SYSTEM_USERS {
        let known = Command::new("id")
            .arg("-u")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success());
        if known {
            println!("setup: system user {user}: present");
            continue;
        }
        println!("setup: system user {user}: creating");
        run_quiet(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ]))?;
    }
    Ok(())
}

/// rustfmt and clippy for the default toolchain (`cargo xtask test` runs both).
fn ensure_lint_tools() -> Result<()> {
    let components = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|tool| {
            !components
                .lines()
                .any(|l| l == *tool || l.starts_with(&format!("{tool}-")))
        })
        .collect();
    if !missing.is_empty() {
        println!("setup: {}: installing", missing.join(", "));
        run_quiet(
            Command::new("rustup")
                .args(["component", "add"])
                .args(&missing),
        )?;
    }
    println!(
        "setup: rustfmt + clippy: {}",
        if missing.is_empty() {
            "present"
        } else {
            "installed"
        }
    );
    Ok(())
}

/// Rust nightly (builds the eBPF crate) and its rust-src (for `-Z build-std=core`).
fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let has_nightly = toolchains
        .lines()
        .any(|l| l == "nightly" || l.starts_with("nightly-"));
    if !has_nightly {
        println!("setup: rust nightly: installing");
        run_quiet(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    let has_src = components
        .lines()
        .any(|l| l == "rust-src" || l.starts_with("rust-src-"));
    if !has_src {
        println!("setup: rust-src for nightly: installing");
        run_quiet(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    println!(
        "setup: rust nightly + rust-src: {}",
        if has_nightly && has_src {
            "present"
        } else {
            "installed"
        }
    );
    Ok(())
}

/// The LLVM major version of `rustc +nightly`; bpf-linker must use the same one.
fn nightly_llvm_major() -> Result<u32> {
    let info = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    info.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")
}

/// Installs the missing Debian packages; `apt-get update` runs only when one is missing.
fn ensure_apt_packages(llvm: u32) -> Result<()> {
    let llvm_dev = format!("llvm-{llvm}-dev");
    let wanted: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .chain([llvm_dev.as_str()])
        .collect();
    let missing = missing_debs(&wanted)?;
    if missing.is_empty() {
        println!("setup: apt packages: present");
    } else {
        println!("setup: apt packages: installing {}", missing.join(" "));
        let started = Instant::now();
        run_quiet(Command::new("apt-get").args(["update", "-q"]))?;
        if missing.contains(&llvm_dev.as_str()) && !apt_has_candidate(&llvm_dev)? {
            bail!(
                "nightly rustc uses LLVM {llvm}, but apt offers no {llvm_dev} (bookworm-security \
                 ships llvm-22-dev): use a nightly whose `rustc -vV` says LLVM 22"
            );
        }
        run_quiet(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        println!(
            "setup: apt packages: installed ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let prefix = llvm_prefix(llvm);
    if !prefix.is_dir() {
        bail!(
            "nightly rustc uses LLVM {llvm} but {} does not exist after installing {llvm_dev}; \
             bpf-linker cannot be built against the same LLVM",
            prefix.display()
        );
    }
    Ok(())
}

/// The packages of `names` that dpkg does not list as installed.
fn missing_debs<'a>(names: &[&'a str]) -> Result<Vec<&'a str>> {
    // dpkg-query exits 1 when it knows a name not at all; its stdout still lists the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(names)
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(names
        .iter()
        .copied()
        .filter(|n| !installed.contains(n))
        .collect())
}

fn apt_has_candidate(package: &str) -> Result<bool> {
    let policy = output(Command::new("apt-cache").args(["policy", package]))?;
    Ok(policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .any(|c| c.trim() != "(none)"))
}

fn llvm_prefix(llvm: u32) -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{llvm}"))
}

/// bpf-linker, built against the same LLVM major as nightly rustc.
fn ensure_bpf_linker(llvm: u32) -> Result<()> {
    let cargo_bin = cargo_bin_dir()?;
    let bin = find_in_path("bpf-linker").unwrap_or_else(|| cargo_bin.join("bpf-linker"));
    let reason = match bpf_linker_llvm_major(&bin) {
        Some(found) if found == llvm => {
            println!("setup: bpf-linker (LLVM {found}): present");
            return Ok(());
        }
        Some(found) => format!(
            "{} uses LLVM {found}, nightly rustc LLVM {llvm}",
            bin.display()
        ),
        None if bin.exists() => format!("cannot tell which LLVM {} uses", bin.display()),
        None => "missing".to_owned(),
    };
    println!("setup: bpf-linker: {reason}; building it for LLVM {llvm} (about 2 min)");
    let started = Instant::now();
    run_checked(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--quiet", "--no-default-features"])
            .args(["--features", &format!("llvm-{llvm}"), "--locked", "--force"])
            .env("LLVM_PREFIX", llvm_prefix(llvm)),
    )?;
    let installed = cargo_bin.join("bpf-linker");
    fs::write(cargo_bin.join(LLVM_STAMP), format!("{llvm}\n"))
        .with_context(|| format!("cannot write {}", cargo_bin.join(LLVM_STAMP).display()))?;
    let found = bpf_linker_llvm_major(&installed);
    if found != Some(llvm) {
        bail!(
            "{} still does not use LLVM {llvm} after installing it",
            installed.display()
        );
    }
    if find_in_path("bpf-linker").as_deref() != Some(installed.as_path()) {
        println!(
            "setup: warning: {} is not the first bpf-linker on PATH",
            installed.display()
        );
    }
    println!(
        "setup: bpf-linker (LLVM {llvm}): installed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The LLVM major bpf-linker at `bin` uses, or None if it is missing or does not run.
///
/// bpf-linker 0.13 does not print its LLVM version, so this reads the libLLVM it links
/// dynamically (ldd), or else the stamp setup writes next to it after building it.
fn bpf_linker_llvm_major(bin: &Path) -> Option<u32> {
    if !bin.is_file() {
        return None;
    }
    // It does not start when its libLLVM is gone.
    output(Command::new(bin).arg("--version")).ok()?;
    if let Ok(ldd) = output(Command::new("ldd").arg(bin))
        && let Some(major) = ldd.lines().find_map(libllvm_major)
    {
        return Some(major);
    }
    let stamp = bin.with_file_name(LLVM_STAMP);
    fs::read_to_string(stamp).ok()?.trim().parse().ok()
}

/// The major version in an ldd line naming libLLVM: `libLLVM.so.22.1 => ...` or `libLLVM-22.so`.
fn libllvm_major(ldd_line: &str) -> Option<u32> {
    let lib = ldd_line.split_whitespace().next()?;
    let version = lib
        .strip_prefix("libLLVM.so.")
        .or_else(|| lib.strip_prefix("libLLVM-"))?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn cargo_bin_dir() -> Result<PathBuf> {
    let home = match env::var_os("CARGO_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
            .join(".cargo"),
    };
    Ok(home.join("bin"))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// cargo-fuzz, which builds the libFuzzer targets of `fuzz/` (`cargo xtask fuzz`).
fn ensure_cargo_fuzz() -> Result<()> {
    let bin = find_in_path("cargo-fuzz")
        .unwrap_or_else(|| cargo_bin_dir().unwrap_or_default().join("cargo-fuzz"));
    if bin.is_file()
        && Command::new(&bin)
            .args(["fuzz", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        println!("setup: cargo-fuzz: present");
        return Ok(());
    }
    println!("setup: cargo-fuzz: missing; installing it (about 1 min)");
    let started = Instant::now();
    run_checked(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--quiet",
        "--locked",
        "--version",
        "^0.13",
    ]))?;
    println!(
        "setup: cargo-fuzz: installed ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// bpffs at /sys/fs/bpf, where the gateway pins its maps and XDP link.
fn ensure_bpffs() -> Result<()> {
    const BPFFS: &str = "/sys/fs/bpf";
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        println!("setup: bpffs at {BPFFS}: present");
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
    run_quiet(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    println!("setup: bpffs at {BPFFS}: mounted");
    Ok(())
}

fn check_btf() {
    const BTF: &str = "/sys/kernel/btf/vmlinux";
    if Path::new(BTF).exists() {
        println!("setup: kernel BTF: present");
    } else {
        println!("setup: warning: {BTF} is missing; the kernel has no BTF, and loading may fail");
    }
}

/// Runs `cmd` capturing its output, which is shown only when it fails.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::libllvm_major;

    #[test]
    fn reads_the_llvm_major_from_ldd_lines() {
        let line = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f46)";
        assert_eq!(libllvm_major(line), Some(22));
        assert_eq!(
            libllvm_major("\tlibLLVM-19.so => /usr/lib/x (0x1)"),
            Some(19)
        );
        assert_eq!(libllvm_major("\tlibc.so.6 => /lib/libc.so.6 (0x1)"), None);
    }
}
