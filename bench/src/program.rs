//! Part 1: the gate's cost per packet from BPF_PROG_TEST_RUN (JIT as the machine has it), per
//! path and family, with 1k, 10k and 1M openings, hot (one frame repeated) and cold (65,536
//! and 1M rotating sources), with the prefilter and without it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use gateway_common::{Opening, PROTO_UDP, ServiceKey, ServiceValue};
use xdpgate::{
    clock::mono_ns,
    gate::{GateMaps, KernelService, loader},
};

use crate::{
    Opts, frames, progress,
    report::{Bar, Report},
};

/// The guarded port and the one that is not.
const GUARDED: u16 = 1194;
const FREE: u16 = 8080;
const SERVER: u32 = 1;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Destination of every frame (never a real address: these frames exist only in test_run).
const DST_V4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);

/// The i-th opened source, and the i-th source that never has an opening.
fn opened_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a40_0000 + i)
}
fn closed_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0000 + i)
}
fn opened_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_0064_0000_0000_0000_0000_0000_0000u128 + u128::from(i))
}
fn closed_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_0128_0000_0000_0000_0000_0000_0000u128 + u128::from(i))
}

struct Path {
    key: &'static str,
    label: &'static str,
    frame: Vec<u8>,
    verdict: u32,
}

fn paths() -> Vec<Path> {
    vec![
        Path {
            key: "v4_drop",
            label: "IPv4 guarded drop",
            frame: frames::udp_v4(closed_v4(0), DST_V4, GUARDED),
            verdict: XDP_DROP,
        },
        Path {
            key: "v4_allow",
            label: "IPv4 guarded allow",
            frame: frames::udp_v4(opened_v4(0), DST_V4, GUARDED),
            verdict: XDP_PASS,
        },
        Path {
            key: "v4_unguarded",
            label: "IPv4 unguarded pass",
            frame: frames::udp_v4(closed_v4(0), DST_V4, FREE),
            verdict: XDP_PASS,
        },
        Path {
            key: "v6_drop",
            label: "IPv6 guarded drop",
            frame: frames::udp_v6(closed_v6(0), DST_V6, GUARDED),
            verdict: XDP_DROP,
        },
        Path {
            key: "v6_allow",
            label: "IPv6 guarded allow",
            frame: frames::udp_v6(opened_v6(0), DST_V6, GUARDED),
            verdict: XDP_PASS,
        },
        Path {
            key: "v6_unguarded",
            label: "IPv6 unguarded pass",
            frame: frames::udp_v6(closed_v6(0), DST_V6, FREE),
            verdict: XDP_PASS,
        },
    ]
}

/// A program variant: with the prefilter (keys `program.*`) or without it, the design before
/// issue 12 (keys `program.before.*`), measured in the same run.
struct Variant {
    prefix: &'static str,
    label: &'static str,
    prefilter: bool,
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    let sizes: &[u32] = if opts.quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 1_000_000]
    };
    let sources: &[u32] = if opts.quick {
        &[4_096]
    } else {
        &[65_536, 1_000_000]
    };
    let (repeat, trials) = if opts.quick {
        (100_000, 3)
    } else {
        (1_000_000, 5)
    };
    let largest = sizes.last().copied().unwrap_or(1);
    let variants = [
        Variant {
            prefix: "program.before",
            label: "no prefilter",
            prefilter: false,
        },
        Variant {
            prefix: "program",
            label: "prefilter",
            prefilter: true,
        },
    ];
    let mut empty = f64::NAN;
    for variant in &variants {
        let capacity = largest + 1024;
        // shift_for provisions BITS_PER_OPENING (8) bits per opening; --prefilter-bits scales it.
        let scale = i64::from(opts.prefilter_bits.max(1).ilog2()) - 3;
        let shift = variant.prefilter.then(|| {
            let base = i64::from(gateway_common::prefilter::shift_for(capacity));
            let (min, max) = (
                gateway_common::prefilter::MIN_SHIFT,
                gateway_common::prefilter::MAX_SHIFT,
            );
            (base + scale).clamp(i64::from(min), i64::from(max)) as u32
        });
        let mut ebpf = loader::load_unpinned_with(capacity, shift).context("loading the gate")?;
        let mut maps = GateMaps::take(&mut ebpf).context("taking the gate maps")?;
        maps.sync_services(&[
            KernelService {
                key: ServiceKey::v4(PROTO_UDP, GUARDED, [0; 4]),
                value: ServiceValue {
                    server_id: SERVER,
                    stats_index: 0,
                },
            },
            KernelService {
                key: ServiceKey::v6(PROTO_UDP, GUARDED, [0; 16]),
                value: ServiceValue {
                    server_id: SERVER,
                    stats_index: 1,
                },
            },
        ])?;
        let opening = Opening {
            expires_at_ns: mono_ns() + 24 * 3_600_000_000_000,
            last_seen_ns: 0,
        };
        let paths = paths();
        let mut filled = 0u32;
        progress(&format!(
            "program, {}: prefilter {}",
            variant.label,
            shift.map_or("off".to_owned(), |s| format!("2^{s} bits per family"))
        ));
        for &size in sizes {
            let started = Instant::now();
            for i in filled..size {
                maps.put_opening(SERVER, IpAddr::V4(opened_v4(i)), opening)?;
                maps.put_opening(SERVER, IpAddr::V6(opened_v6(i)), opening)?;
            }
            filled = size;
            progress(&format!(
                "program, {}: {size} openings per family (filled in {:.1} s); {trials} trials x {repeat} repeats per path",
                variant.label,
                started.elapsed().as_secs_f64()
            ));
            for path in &paths {
                let ns = hot_cost(&mut ebpf, path, repeat, trials)?;
                progress(&format!("  {:<22} {ns:>6.1} ns/packet", path.label));
                report.set(
                    &format!("{}.{}_ns_{}", variant.prefix, path.key, size_tag(size)),
                    ns,
                );
                if size == largest {
                    report.set(&format!("{}.{}_ns", variant.prefix, path.key), ns);
                }
                for &count in sources {
                    let cold = cold_cost(&mut ebpf, path, ns, size, count)?;
                    report.set(
                        &format!(
                            "{}.cold_{}_ns_{}_{}",
                            variant.prefix,
                            path.key,
                            size_tag(size),
                            size_tag(count)
                        ),
                        cold,
                    );
                    if size == largest && count == sources[0] {
                        report.set(&format!("{}.cold_{}_ns", variant.prefix, path.key), cold);
                    }
                }
                if size == largest {
                    let cold = report
                        .get(&format!("{}.cold_{}_ns", variant.prefix, path.key))
                        .unwrap_or(f64::NAN);
                    report.program_bars.push(Bar {
                        label: format!("{}, {}: hot", path.label, variant.label),
                        value: ns,
                    });
                    report.program_bars.push(Bar {
                        label: format!("{}, {}: cold", path.label, variant.label),
                        value: cold,
                    });
                }
            }
        }
        // The harness's own cost: an XDP program that only returns XDP_PASS, same frame and runs.
        empty = empty_program_cost(&mut ebpf, &paths[0].frame, repeat, trials)?;
        progress(&format!(
            "  {:<22} {empty:>6.1} ns/packet (harness floor)",
            "empty program"
        ));
    }
    report.set("program.empty_program_ns", empty);
    report.set("program.openings", f64::from(largest));
    for prefix in ["program", "program.before"] {
        for family in ["v4", "v6"] {
            if let (Some(cold), Some(hot)) = (
                report.get(&format!("{prefix}.cold_{family}_drop_ns")),
                report.get(&format!("{prefix}.{family}_drop_ns")),
            ) {
                report.set(&format!("{prefix}.cold_over_hot_{family}_drop"), cold / hot);
            }
            for path in ["drop", "allow"] {
                if let Some(hot) = report.get(&format!("{prefix}.{family}_{path}_ns")) {
                    report.set(
                        &format!("{prefix}.{family}_{path}_over_floor_ns"),
                        hot - empty,
                    );
                }
            }
        }
    }
    let counts: Vec<String> = sources.iter().map(|c| size_tag(*c)).collect();
    report.note("program", format!(
        "BPF_PROG_TEST_RUN, 60-byte UDP frames, median of {trials} trials of {repeat} repeats (hot: one frame repeated); \
         program.* is the gate with its prefilter, program.before.* the same object with the prefilter off (the design \
         before issue 12), both in this run; *_ns_<openings> per map size, keys without a size at {largest} openings per \
         family; cold_<path>_ns_<openings>_<sources>: one run per frame over {} rotating sources (allow: over the opened \
         sources, at most one per opening), cold = hot + (median repeat-1 run on distinct sources - median repeat-1 run \
         on one source); cold_<path>_ns = {largest} openings, {} sources; *_over_floor_ns: hot cost minus \
         empty_program_ns (a program that only returns XDP_PASS: the harness's own cost)",
        counts.join(" and "), counts[0]));
    Ok(())
}

/// Median ns per repeat of `xdpgate_bench_pass` (returns XDP_PASS, touches nothing) on
/// `frame`: what BPF_PROG_TEST_RUN itself costs per packet here.
fn empty_program_cost(ebpf: &mut Ebpf, frame: &[u8], repeat: u32, trials: usize) -> Result<f64> {
    let program: &mut Xdp = ebpf
        .program_mut("xdpgate_bench_pass")
        .context("the eBPF object has no xdpgate_bench_pass")?
        .try_into()?;
    program.load()?;
    let mut samples = Vec::with_capacity(trials);
    for _ in 0..trials {
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        samples.push(result.duration.as_nanos() as f64);
    }
    Ok(median(&mut samples))
}

fn size_tag(size: u32) -> String {
    match size {
        s if s >= 1_000_000 && s % 1_000_000 == 0 => format!("{}m", s / 1_000_000),
        s if s >= 1_000 && s % 1_000 == 0 => format!("{}k", s / 1_000),
        s => s.to_string(),
    }
}

/// Median over `trials` of the kernel's mean ns per repeat.
fn hot_cost(ebpf: &mut Ebpf, path: &Path, repeat: u32, trials: usize) -> Result<f64> {
    let xdp = loader::program(ebpf)?;
    let mut samples = Vec::with_capacity(trials);
    for _ in 0..trials {
        let result = xdp.test_run(TestRunOptions {
            data_in: Some(&path.frame),
            repeat,
            ..Default::default()
        })?;
        if result.return_value != path.verdict {
            bail!(
                "{}: the gate returned {} instead of {}",
                path.label,
                result.return_value,
                path.verdict
            );
        }
        samples.push(result.duration.as_nanos() as f64);
    }
    Ok(median(&mut samples))
}

/// The i-th of `count` rotating frames of `path` with `openings` opened: drops and
/// unguarded frames come from sources never opened, allows from opened sources spread over
/// the map (at most one frame per opening).
fn rotating_frame(path: &Path, i: u32, openings: u32, count: u32) -> Vec<u8> {
    let stride = (openings / count.min(openings).max(1)).max(1);
    let opened = (i % openings.max(1)) * stride;
    match path.key {
        "v4_drop" => frames::udp_v4(closed_v4(i), DST_V4, GUARDED),
        "v4_allow" => frames::udp_v4(opened_v4(opened), DST_V4, GUARDED),
        "v4_unguarded" => frames::udp_v4(closed_v4(i), DST_V4, FREE),
        "v6_drop" => frames::udp_v6(closed_v6(i), DST_V6, GUARDED),
        "v6_allow" => frames::udp_v6(opened_v6(opened), DST_V6, GUARDED),
        _ => frames::udp_v6(closed_v6(i), DST_V6, FREE),
    }
}

/// One run per frame (repeat 1), each from a different source, so the map entry or bucket
/// is not in cache. A repeat-1 run also pays the kernel's timer, so the cold cost is the hot
/// (many-repeat) cost plus the difference between the medians of repeat-1 runs on distinct
/// sources and on one source.
fn cold_cost(ebpf: &mut Ebpf, path: &Path, hot: f64, openings: u32, count: u32) -> Result<f64> {
    let xdp = loader::program(ebpf)?;
    let verdict = path.verdict;
    let one = |frame: &[u8]| -> Result<f64> {
        let r = xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })?;
        if r.return_value != verdict {
            bail!(
                "cold {}: the gate returned {} instead of {verdict}",
                path.label,
                r.return_value
            );
        }
        Ok(r.duration.as_nanos() as f64)
    };
    let distinct_count = if path.key.ends_with("allow") {
        count.min(openings)
    } else {
        count
    };
    let mut distinct = Vec::with_capacity(distinct_count as usize);
    for i in 0..distinct_count {
        distinct.push(one(&rotating_frame(path, i, openings, distinct_count))?);
    }
    let mut same = Vec::with_capacity(distinct.len().min(65_536));
    for _ in 0..distinct.len().min(65_536) {
        same.push(one(&path.frame)?);
    }
    let (distinct, same) = (median(&mut distinct), median(&mut same));
    let cold = hot + (distinct - same).max(0.0);
    progress(&format!(
        "    cold over {:>7} sources {cold:>6.1} ns/packet (repeat-1 medians: distinct {distinct:.0}, same {same:.0})",
        distinct_count
    ));
    Ok(cold)
}

pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
