//! Part 2: the live ladder. A traffic generator (`xdpgate_trafficgen`, run with
//! BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES) redirects the same UDP frame to a guarded
//! port into one end of a veth pair; the other end, in its own namespace, drops it by
//!
//! - `floor`: a bare XDP_DROP program (what generator + veth cost by themselves),
//! - `xdp`: the gate (native XDP), counted by its per-service counter,
//! - `nft`: an nftables rule with a set at netdev ingress (XDP_PASS program attached, as veth
//!   needs one to take redirected frames), counted by the rule's counter,
//! - `iptables_ipset`: iptables raw PREROUTING with an ipset, counted by the rule's counter,
//! - `baseline`: nothing; the frames go up the stack to a port nobody listens on (UDP
//!   NoPorts), counted by Ip:InReceives.
//!
//! The main ladder runs on one core: veth receives on the sending CPU (the NAPI poll runs when
//! each batch's bottom half is re-enabled), so packets per second is what one core sustains
//! generating and dropping, and its busy time per packet minus the floor's is the receive
//! cost. With two cores or more it runs again with the receiving veth's NAPI as a thread
//! pinned to the other CPU (`live.own_core.*`): each filter's rate is then what its receive
//! path sustains on a core of its own, but every frame it reads was written by the other CPU,
//! a cross-core cache miss that a NIC's DMA does not cause.
use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use gateway_common::{PROTO_UDP, ServiceKey, ServiceValue};
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};
use xdpgate::gate::{GateMaps, KernelService, loader};
use xdpgate_tests::{NetNs, VethLink};

use crate::{
    Opts, frames,
    program::median,
    progress,
    report::{Bar, Report},
};

const PORT: u16 = 1194;
const SUBNET: u8 = 231;
const TRAFFICGEN: &str = "xdpgate_trafficgen";
/// The generator that gives every frame a new source address in 10.0.0.0/8.
const TRAFFICGEN_RANDOM: &str = "xdpgate_trafficgen_random";
const PASS: &str = "xdpgate_bench_pass";
const DROP: &str = "xdpgate_bench_drop";
/// An address in the allow set / opened, so the set is not empty (never the sender).
const ALLOWED: Ipv4Addr = Ipv4Addr::new(10, 231, 99, 1);
const XDP_REDIRECT: u32 = 4;
const NFT_TABLE: &str = "xdpgate_bench";
const IPSET: &str = "xdpgate_bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Floor,
    Xdp,
    Nft,
    IptablesIpset,
    Baseline,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::Floor,
        Case::Xdp,
        Case::Nft,
        Case::IptablesIpset,
        Case::Baseline,
    ];
    fn key(self) -> &'static str {
        match self {
            Case::Floor => "floor",
            Case::Xdp => "xdp",
            Case::Nft => "nft",
            Case::IptablesIpset => "iptables_ipset",
            Case::Baseline => "baseline",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Case::Floor => "floor: bare XDP_DROP",
            Case::Xdp => "xdpgate (XDP)",
            Case::Nft => "nftables set, netdev ingress",
            Case::IptablesIpset => "iptables raw + ipset",
            Case::Baseline => "no filter (UDP, no listener)",
        }
    }
    fn receiver(self) -> &'static str {
        match self {
            Case::Floor => DROP,
            Case::Xdp => gateway_common::PROGRAM_NAME,
            _ => PASS,
        }
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    pps: f64,
    cpu_ns_per_packet: f64,
    delivered: f64,
}

struct Bed {
    tx: NetNs,
    rx: NetNs,
    link: VethLink,
    frame: Vec<u8>,
    /// The generator's CPU.
    cpu: usize,
    /// In split mode, the CPU the receiver's NAPI thread is pinned to; otherwise the receiver
    /// runs on the generator's CPU.
    rx_cpu: Option<usize>,
    /// The generator program (one source, or a new source per frame).
    generator: &'static str,
    /// The addresses every filter admits (the gate's openings, the nftables set, the ipset).
    allowed: Vec<Ipv4Addr>,
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    let (budget, chunk, trials) = if opts.quick {
        (Duration::from_millis(300), 100_000u32, 1)
    } else {
        (Duration::from_secs(2), 1_000_000u32, 3)
    };
    let tx = NetNs::new_unique("xbtx");
    let rx = NetNs::new_unique("xbrx");
    let link = VethLink::new(&tx, &rx, SUBNET);
    let b_mac = mac(&rx, &link.b.ifname)?;
    let a_mac = mac(&tx, &link.a.ifname)?;
    let frame = frames::udp_v4_mac(b_mac, a_mac, link.a.v4, link.b.v4, PORT);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cores - 1;
    let mut bed = Bed {
        tx,
        rx,
        link,
        frame,
        cpu,
        rx_cpu: None,
        generator: TRAFFICGEN,
        allowed: vec![ALLOWED],
    };

    // Capacity for the largest full set of the random-source ladder.
    let mut ebpf = loader::load_unpinned(if opts.quick { 2_048 } else { 1_001_024 })
        .context("loading the gate")?;
    for name in [TRAFFICGEN, TRAFFICGEN_RANDOM, PASS, DROP] {
        xdp(&mut ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    let a_ifindex = bed.link.a.ifindex();
    let mut target: Array<_, u32> = Array::try_from(
        ebpf.map_mut("TRAFFICGEN_TARGET")
            .ok_or_else(|| anyhow!("no TRAFFICGEN_TARGET map"))?,
    )?;
    target.set(0, a_ifindex, 0)?;
    let mut maps = GateMaps::take(&mut ebpf)?;
    maps.sync_services(&[KernelService {
        key: ServiceKey::v4(PROTO_UDP, PORT, [0; 4]),
        value: ServiceValue {
            server_id: 1,
            stats_index: 0,
        },
    }])?;
    maps.put_opening(
        1,
        ALLOWED.into(),
        gateway_common::Opening {
            expires_at_ns: xdpgate::clock::mono_ns() + 3_600_000_000_000,
            last_seen_ns: 0,
        },
    )?;

    // The one-core ladder (`live.*`), then, with two cores or more, the receiver on a core of
    // its own (threaded NAPI, pinned; `live.own_core.*`).
    let modes: Vec<Option<usize>> = if cores >= 2 {
        vec![None, Some(0)]
    } else {
        vec![None]
    };
    for rx_cpu in modes {
        bed.rx_cpu = rx_cpu;
        let prefix = if rx_cpu.is_some() {
            "live.own_core"
        } else {
            "live"
        };
        match rx_cpu {
            Some(rx) => progress(&format!(
                "live, own core: generator on CPU {}, receiver (threaded NAPI) on CPU {rx}, {trials} trial(s) of {:.1} s per case",
                bed.cpu,
                budget.as_secs_f64()
            )),
            None => progress(&format!(
                "live: veth {} -> {} (namespaces {} -> {}), generator and receiver on CPU {}, {trials} trial(s) of {:.1} s per case",
                bed.link.a.ifname,
                bed.link.b.ifname,
                bed.link.a.ns,
                bed.link.b.ns,
                bed.cpu,
                budget.as_secs_f64()
            )),
        }
        let results = ladder(&mut ebpf, &maps, &bed, budget, chunk, trials, report);
        record(report, &results, prefix, rx_cpu.is_some());
    }

    // Random sources against full sets (`live.random.*`): every frame from a new source, the
    // gate, the nftables set and the ipset each holding the same `size` addresses.
    bed.rx_cpu = None;
    bed.generator = TRAFFICGEN_RANDOM;
    let sizes: &[u32] = if opts.quick {
        &[1_000]
    } else {
        &[100_000, 1_000_000]
    };
    let opening = gateway_common::Opening {
        expires_at_ns: xdpgate::clock::mono_ns() + 3_600_000_000_000,
        last_seen_ns: 0,
    };
    let mut filled = 0u32;
    for (n, &size) in sizes.iter().enumerate() {
        let started = Instant::now();
        for i in filled..size {
            maps.put_opening(1, full_set_addr(i).into(), opening)?;
        }
        filled = size;
        bed.allowed = (0..size).map(full_set_addr).collect();
        progress(&format!(
            "live, random sources: a new source in 10.0.0.0/8 per frame, {size} addresses in every filter's set (gate filled in {:.1} s)",
            started.elapsed().as_secs_f64()
        ));
        let results = ladder(&mut ebpf, &maps, &bed, budget, chunk, trials, report);
        let tag = if size % 1_000_000 == 0 {
            format!("{}m", size / 1_000_000)
        } else {
            format!("{}k", size / 1_000)
        };
        record(report, &results, &format!("live.random.{tag}"), false);
        if n + 1 == sizes.len() {
            record(report, &results, "live.random", false);
        }
    }
    report.note("live.random", "as live, but the generator (xdpgate_trafficgen_random) gives every frame a new source in \
        10.0.0.0/8 (2^24 addresses in a scattered order) and the gate's openings, the nftables set and the ipset each hold \
        the same addresses (172.16.0.0 + i, none of them a source): live.random.<size>.* per set size, live.random.* at \
        the largest");
    Ok(())
}

/// The i-th address of the full sets (172.16.0.0/12 holds 2^20 of them).
fn full_set_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000 + i)
}

/// Runs every case once in the current mode of `bed`.
fn ladder(
    ebpf: &mut Ebpf,
    maps: &GateMaps,
    bed: &Bed,
    budget: Duration,
    chunk: u32,
    trials: usize,
    report: &mut Report,
) -> Vec<(Case, Sample)> {
    let mut results: Vec<(Case, Sample)> = Vec::new();
    for case in Case::ALL {
        let sample = (|| -> Result<Sample> {
            let _filter = Filter::install(case, bed)?;
            let receiver = case.receiver();
            let link_id = {
                let prog = xdp(ebpf, receiver)?;
                let ifname = bed.link.b.ifname.clone();
                bed.rx
                    .run(|| prog.attach(&ifname, XdpMode::Driver))
                    .with_context(|| format!("attaching {receiver} to {ifname} (native)"))?
            };
            let mut samples = Vec::new();
            let mut outcome = match bed.rx_cpu {
                Some(rx_cpu) => pin_receiver(bed, rx_cpu),
                None => unthread_receiver(bed),
            };
            for _ in 0..trials {
                if outcome.is_err() {
                    break;
                }
                match one_run(ebpf, maps, case, bed, budget, chunk) {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            xdp(ebpf, receiver)?.detach(link_id)?;
            outcome?;
            let mut pps: Vec<f64> = samples.iter().map(|s| s.pps).collect();
            let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu_ns_per_packet).collect();
            let delivered =
                samples.iter().map(|s| s.delivered).sum::<f64>() / samples.len().max(1) as f64;
            Ok(Sample {
                pps: median(&mut pps),
                cpu_ns_per_packet: median(&mut cpu),
                delivered,
            })
        })();
        match sample {
            Ok(s) => {
                progress(&format!(
                    "  {:<30} {:>7.3} Mpps, {:>6.1} ns CPU/packet ({:.0}% of generated frames counted)",
                    case.label(),
                    s.pps / 1e6,
                    s.cpu_ns_per_packet,
                    s.delivered * 100.0
                ));
                results.push((case, s));
            }
            Err(e) => {
                progress(&format!("  {:<30} failed: {e:#}", case.label()));
                report.note(&format!("live.{}", case.key()), format!("failed: {e:#}"));
            }
        }
    }
    results
}

/// Writes one mode's results under `prefix`. The CPU figures are the receiver's own in split
/// mode and the shared CPU's on one core; either way the receive cost of a filter is its CPU
/// time per packet minus the floor's (a bare XDP_DROP).
fn record(report: &mut Report, results: &[(Case, Sample)], prefix: &str, split: bool) {
    let get = |c: Case| results.iter().find(|(k, _)| *k == c).map(|(_, s)| *s);
    let floor = get(Case::Floor);
    let rx_cost = |s: Sample| floor.map(|f| s.cpu_ns_per_packet - f.cpu_ns_per_packet);
    for (case, s) in results {
        report.set(&format!("{prefix}.{}_pps", case.key()), s.pps);
        report.set(
            &format!("{prefix}.{}_cpu_ns_per_packet", case.key()),
            s.cpu_ns_per_packet,
        );
        if let Some(rx) = rx_cost(*s) {
            report.set(&format!("{prefix}.{}_rx_ns_per_packet", case.key()), rx);
        }
        if prefix == "live" || prefix == "live.random" {
            let label = if prefix == "live" {
                case.label().to_owned()
            } else {
                format!("{}, random sources, full set", case.label())
            };
            report.ladder_bars.push(Bar {
                label: label.clone(),
                value: s.pps,
            });
            if let Some(rx) = rx_cost(*s) {
                report.rx_bars.push(Bar { label, value: rx });
            }
        }
    }
    if let Some(x) = get(Case::Xdp) {
        for other in [Case::Nft, Case::IptablesIpset, Case::Baseline] {
            if let Some(o) = get(other) {
                report.set(&format!("{prefix}.xdp_over_{}", other.key()), x.pps / o.pps);
                if let (Some(xr), Some(or)) = (rx_cost(x), rx_cost(o))
                    && xr > 0.0
                {
                    report.set(
                        &format!("{prefix}.rx_cost_{}_over_xdp", other.key()),
                        or / xr,
                    );
                }
            }
        }
    }
    let note = if split {
        "the generator (xdpgate_trafficgen, BPF_F_TEST_XDP_LIVE_FRAMES, batch 64) runs on one CPU and the receiving \
         veth's NAPI runs threaded, pinned to another, so *_pps = packets counted by the receiver per wall second is \
         what that receive path sustains on one core (frames the receiver cannot take are dropped at the veth ring); \
         *_cpu_ns_per_packet = the receiver CPU's busy time (/proc/stat) per counted packet; *_rx_ns_per_packet = \
         that minus the floor's (bare XDP_DROP, which does not read the frame); \
         nft/iptables/baseline receivers run an XDP_PASS program (veth needs one to take redirected frames); \
         baseline = no filter, UDP to a port without listener"
    } else {
        "one core generates and receives (veth NAPI runs on the sending CPU); *_pps = packets counted by the receiver \
         per wall second; *_cpu_ns_per_packet = busy time of that CPU per generated packet; *_rx_ns_per_packet = that \
         minus the floor (bare XDP_DROP receiver)"
    };
    report.note(prefix, note);
}

/// Split mode: makes the receiving veth's NAPI a kernel thread and pins it to `rx_cpu`.
fn pin_receiver(bed: &Bed, rx_cpu: usize) -> Result<()> {
    set_threaded(bed, true)?;
    let ifname = &bed.link.b.ifname;
    // Thread names are cut at 15 characters: "napi/<ifname>-<id>".
    let prefix: String = format!("napi/{ifname}").chars().take(15).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let threads = loop {
        let found = kernel_threads_named(&prefix);
        if !found.is_empty() {
            break found;
        }
        if Instant::now() >= deadline {
            bail!("no NAPI thread {prefix}* after enabling threaded NAPI on {ifname}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut set = CpuSet::new();
    set.set(rx_cpu)?;
    for pid in threads {
        sched_setaffinity(Pid::from_raw(pid), &set)
            .with_context(|| format!("pinning {prefix} ({pid}) to CPU {rx_cpu}"))?;
    }
    Ok(())
}

/// One-core mode: NAPI back in softirq context (on the sending CPU).
fn unthread_receiver(bed: &Bed) -> Result<()> {
    set_threaded(bed, false)
}

fn set_threaded(bed: &Bed, on: bool) -> Result<()> {
    let ifname = &bed.link.b.ifname;
    let out = bed.rx.try_exec(&[
        "sh",
        "-c",
        &format!("echo {} > /sys/class/net/{ifname}/threaded", u8::from(on)),
    ]);
    if !out.status.success() {
        bail!(
            "setting threaded NAPI on {ifname}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Pids whose command name starts with `prefix`.
fn kernel_threads_named(prefix: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?;
    Ok(prog.try_into()?)
}

fn mac(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| anyhow!("bad MAC {text:?} for {ifname}"))
}

/// Generates for `budget` (in chunks of `chunk` frames) and counts what the receiver dropped.
fn one_run(
    ebpf: &mut Ebpf,
    maps: &GateMaps,
    case: Case,
    bed: &Bed,
    budget: Duration,
    chunk: u32,
) -> Result<Sample> {
    let before = counted(case, maps, bed)?;
    let frame = bed.frame.clone();
    let cpu = bed.cpu;
    let measured_cpu = bed.rx_cpu.unwrap_or(cpu);
    let generator = xdp(ebpf, bed.generator)?;
    let (sent, wall, busy_ns) = bed.tx.run(move || -> Result<(u64, Duration, f64)> {
        let mut set = CpuSet::new();
        set.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &set)?;
        let busy_before = cpu_busy_ns(measured_cpu)?;
        let started = Instant::now();
        let mut sent = 0u64;
        // Bounded in count (at most 60 chunks) and in time (the budget).
        for _ in 0..60 {
            let r = generator.test_run(TestRunOptions {
                data_in: Some(&frame),
                repeat: chunk,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })?;
            if r.return_value != XDP_REDIRECT && r.return_value != 0 {
                bail!("the generator returned {}", r.return_value);
            }
            sent += u64::from(chunk);
            if started.elapsed() >= budget {
                break;
            }
        }
        let wall = started.elapsed();
        Ok((sent, wall, cpu_busy_ns(measured_cpu)? - busy_before))
    })?;
    std::thread::sleep(Duration::from_millis(50));
    let after = counted(case, maps, bed)?;
    let got = after.saturating_sub(before) as f64;
    if got == 0.0 {
        bail!("the receiver counted nothing of {sent} generated frames");
    }
    // Split mode charges the receiver's CPU to the packets it took; one-core mode charges the
    // shared CPU to every packet generated.
    let per = if bed.rx_cpu.is_some() {
        got
    } else {
        sent as f64
    };
    Ok(Sample {
        pps: got / wall.as_secs_f64(),
        cpu_ns_per_packet: busy_ns / per,
        delivered: got / sent as f64,
    })
}

/// The receiver's count of dropped (or, for the baseline, received) packets.
fn counted(case: Case, maps: &GateMaps, bed: &Bed) -> Result<u64> {
    match case {
        Case::Xdp => Ok(maps.service_stats(0)?.dropped),
        Case::Floor => rx_xdp_drops(bed),
        Case::Nft => {
            let text = bed.rx.exec(&["nft", "list", "table", "netdev", NFT_TABLE]);
            counter_after(&text, "counter packets ")
                .ok_or_else(|| anyhow!("no counter in:\n{text}"))
        }
        Case::IptablesIpset => {
            let text = bed.rx.exec(&[
                "iptables",
                "-t",
                "raw",
                "-L",
                "PREROUTING",
                "-v",
                "-x",
                "-n",
            ]);
            text.lines()
                .find(|l| l.contains("match-set"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("no rule counter in:\n{text}"))
        }
        Case::Baseline => bed
            .rx
            .snmp_counters()
            .get("Ip:InReceives")
            .copied()
            .ok_or_else(|| anyhow!("no Ip:InReceives")),
    }
}

/// XDP drops on the receiving veth (ethtool -S ... `rx_xdp_drops`, summed over queues).
fn rx_xdp_drops(bed: &Bed) -> Result<u64> {
    let text = bed.rx.exec(&["ethtool", "-S", &bed.link.b.ifname]);
    let total = text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.trim().ends_with("xdp_drops") && !k.contains("peer"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum();
    Ok(total)
}

fn counter_after(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)? + marker.len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// Busy time (everything but idle and iowait) of one CPU so far, from /proc/stat.
fn cpu_busy_ns(cpu: usize) -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))
        .ok_or_else(|| anyhow!("cpu{cpu} not in /proc/stat"))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy * 1e9 / hz.max(1.0))
}

/// The filter of one case, removed on drop (the namespace's deletion would also remove it).
struct Filter<'a> {
    case: Case,
    bed: &'a Bed,
}

impl<'a> Filter<'a> {
    fn install(case: Case, bed: &'a Bed) -> Result<Filter<'a>> {
        let filter = Filter { case, bed };
        match case {
            Case::Nft => {
                let elements: Vec<String> = bed.allowed.iter().map(Ipv4Addr::to_string).collect();
                let rules = format!(
                    "table netdev {NFT_TABLE} {{\n  set allowed {{ type ipv4_addr; size {}; elements = {{ {} }} }}\n  \
                     chain ingress {{\n    type filter hook ingress device \"{}\" priority -500; policy accept;\n    \
                     ip protocol udp udp dport {PORT} ip saddr != @allowed counter drop\n  }}\n}}\n",
                    bed.allowed.len().max(65_536) * 2,
                    elements.join(", "),
                    bed.link.b.ifname
                );
                let path =
                    std::env::temp_dir().join(format!("xdpgate-bench-{}.nft", std::process::id()));
                fs::write(&path, rules)?;
                let out = bed.rx.try_exec(&["nft", "-f", &path.to_string_lossy()]);
                let _ = fs::remove_file(&path);
                if !out.status.success() {
                    bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            Case::IptablesIpset => {
                let max = (bed.allowed.len() * 2).max(65_536);
                let mut restore = format!(
                    "create {IPSET} hash:ip hashsize {} maxelem {max}\n",
                    max.next_power_of_two() / 2
                );
                for addr in &bed.allowed {
                    let _ = writeln!(restore, "add {IPSET} {addr}");
                }
                let path = std::env::temp_dir()
                    .join(format!("xdpgate-bench-{}.ipset", std::process::id()));
                fs::write(&path, restore)?;
                let out =
                    bed.rx
                        .try_exec(&["sh", "-c", &format!("ipset restore < {}", path.display())]);
                let _ = fs::remove_file(&path);
                if !out.status.success() {
                    bail!("ipset restore: {}", String::from_utf8_lossy(&out.stderr));
                }
                bed.rx.exec(&iptables_rule("-A"));
            }
            _ => {}
        }
        Ok(filter)
    }
}

fn iptables_rule(op: &str) -> Vec<&str> {
    vec![
        "iptables",
        "-t",
        "raw",
        op,
        "PREROUTING",
        "-p",
        "udp",
        "--dport",
        "1194",
        "-m",
        "set",
        "!",
        "--match-set",
        IPSET,
        "src",
        "-j",
        "DROP",
    ]
}

impl Drop for Filter<'_> {
    fn drop(&mut self) {
        match self.case {
            Case::Nft => {
                let _ = self
                    .bed
                    .rx
                    .try_exec(&["nft", "delete", "table", "netdev", NFT_TABLE]);
            }
            Case::IptablesIpset => {
                let _ = self.bed.rx.try_exec(&iptables_rule("-D"));
                let _ = self.bed.rx.try_exec(&["ipset", "destroy", IPSET]);
            }
            _ => {}
        }
    }
}
