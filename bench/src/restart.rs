//! Parts 5 and 6: a controller restarted over a redb holding 100k openings: time from start to
//! healthy (it reconciles the kernel maps before it serves), and its peak RSS.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};

use anyhow::{Context, Result, anyhow};
use xdpgate::{
    clock::boot_ms,
    openings::{Holder, OpeningId, OpeningRecord},
    store::Store,
};
use xdpgate_tests::{Gateway, NetNs, VethLink, in_netns};

use crate::{Opts, progress, report::Report};

const SUBNET: u8 = 232;

/// `count` openings of server 1 (10.100.0.0 upwards), each held by one `bench` holder for an
/// hour (a day at most), as the restart and sweep parts preload them.
pub fn bench_openings(count: u32) -> Vec<OpeningRecord> {
    let now = boot_ms();
    (0..count)
        .map(|i| {
            let id = OpeningId {
                server_id: 1,
                addr: IpAddr::V4(Ipv4Addr::from(0x0a64_0000 + i)),
            };
            OpeningRecord::new(
                id,
                3_600_000,
                Holder {
                    id: format!("bench-{i}"),
                    origin: "bench".into(),
                    granted_ms: now,
                    connect_until_ms: now + 3_600_000,
                    deadline_ms: now + 86_400_000,
                    device: None,
                },
            )
        })
        .collect()
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    if std::env::var_os("XDPGATE_BIN").is_none() {
        report.note(
            "restart",
            "not run: XDPGATE_BIN is not set (cargo xtask bench sets it)",
        );
        return Err(anyhow!(
            "XDPGATE_BIN is not set; run through `cargo xtask bench`"
        ));
    }
    let count: u32 = if opts.quick { 5_000 } else { 100_000 };
    let peer = NetNs::new_unique("xbpeer");
    let ns = NetNs::new_unique("xbgw");
    let link = VethLink::new(&peer, &ns, SUBNET);
    let servers = format!(
        "[[server]]\nname = \"vpn1\"\nid = 1\nconnect_window_secs = 3600\nidle_timeout_secs = 3600\n\
         max_lifetime_secs = 86400\npublic_ipv4 = \"{}\"\naddress_policy = \"open_all\"\n\n\
         [[server.service]]\nprotocol = \"udp\"\nport = 1194\n",
        link.b.v4
    );
    let mut gw = Gateway::start(&ns, &[&link.b.ifname], &servers);
    gw.kill9();
    let started = Instant::now();
    {
        let store =
            Store::open(&gw.dir().join("state")).context("opening the controller's redb")?;
        let records = bench_openings(count);
        let refs: Vec<&OpeningRecord> = records.iter().collect();
        store.save_openings(&refs, &[]).context("saving openings")?;
    }
    progress(&format!(
        "restart: {count} openings written to redb in {:.1} s; restarting the controller",
        started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    gw.restart();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let rss = ns.pids().into_iter().find_map(peak_rss_mb);
    let reconciled = gw
        .log()
        .lines()
        .filter(|l| l.contains("reconciled openings with the kernel"))
        .count();
    for line in gw.log().lines().filter(|l| {
        l.contains("reconciled openings with the kernel") || l.contains("rebuilt the prefilter")
    }) {
        progress(&format!("  controller: {}", line.trim()));
    }
    progress(&format!(
        "  start to healthy (reconciled {count} openings): {ms:.0} ms; controller peak RSS {}",
        rss.map_or_else(|| "unknown".to_owned(), |r| format!("{r:.1} MB"))
    ));
    if reconciled < 2 {
        return Err(anyhow!(
            "the controller log has no second reconcile line:\n{}",
            gw.log()
        ));
    }
    report.set("restart.reconcile_ms", ms);
    report.set("restart.openings", f64::from(count));
    if let Some(rss) = rss {
        report.set("memory.controller_rss_mb", rss);
    }
    wrong_packets(report, &mut gw, &peer, &link)?;
    report.note("restart", "reconcile_ms: wall time from spawning the controller over a redb with the openings \
        (none in the kernel maps) to its first successful `xdpgate health` (polled every 20 ms; it reconciles \
        before it serves); controller_rss_mb: VmHWM right after; then a second restart (kernel already in sync) while a peer sends ~20k UDP/s each from an opened and an unopened address: wrongly_passed = passed counter delta beyond what the opened address sent, wrongly_dropped = dropped delta beyond what the unopened address sent (counters of the pinned maps)");
    Ok(())
}

/// Restarts the controller (kernel and redb already in agreement) while a peer sends UDP to
/// the guarded port from an opened and from an unopened address, and compares the gate's
/// pinned counters with what was sent.
fn wrong_packets(
    report: &mut Report,
    gw: &mut Gateway,
    peer: &NetNs,
    link: &VethLink,
) -> Result<()> {
    let closed = link.a.add_v4_host(3);
    gw.cli(&[
        "openings",
        "add",
        "--server",
        "vpn1",
        "--ip",
        &link.a.v4.to_string(),
        "--ttl",
        "3600",
    ]);
    let stats_pin = gw
        .bpffs_dir()
        .join(format!("v{}", gateway_common::MAP_LAYOUT_VERSION))
        .join(gateway_common::map_names::SVC_STATS);
    let before = counters(&stats_pin)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, ns, open, dst) = (
            stop.clone(),
            peer.name().to_owned(),
            link.a.v4,
            SocketAddr::new(IpAddr::V4(link.b.v4), 1194),
        );
        thread::spawn(move || in_netns(&ns, move || send_until(&stop, open, closed, dst)))
    };
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    gw.restart();
    let again_ms = started.elapsed().as_secs_f64() * 1e3;
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (sent_open, sent_closed) = sender
        .join()
        .map_err(|_| anyhow!("the sender panicked"))??;
    thread::sleep(Duration::from_millis(200));
    let after = counters(&stats_pin)?;
    let (passed, dropped) = (after.0 - before.0, after.1 - before.1);
    let wrongly_passed = passed.saturating_sub(sent_open);
    let wrongly_dropped = dropped.saturating_sub(sent_closed);
    progress(&format!(
        "  restart under traffic ({again_ms:.0} ms): sent {sent_open} from an opened and {sent_closed} from an unopened \
         address; the gate passed {passed} and dropped {dropped} -> wrongly passed {wrongly_passed}, wrongly dropped {wrongly_dropped}"
    ));
    report.set("restart.wrongly_passed", wrongly_passed as f64);
    report.set("restart.wrongly_dropped", wrongly_dropped as f64);
    report.set("restart.restart_in_sync_ms", again_ms);
    report.set(
        "restart.packets_during_restart",
        (sent_open + sent_closed) as f64,
    );
    Ok(())
}

/// Sends alternately from `open` and `closed` to `dst` until told to stop (at most 30 s and
/// 2M datagrams), about 20k per second each; returns how many went out from each.
fn send_until(
    stop: &AtomicBool,
    open: Ipv4Addr,
    closed: Ipv4Addr,
    dst: SocketAddr,
) -> Result<(u64, u64)> {
    let a = UdpSocket::bind((open, 0))?;
    let b = UdpSocket::bind((closed, 0))?;
    let (mut sent_a, mut sent_b) = (0u64, 0u64);
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && started.elapsed() < Duration::from_secs(30)
        && sent_a + sent_b < 2_000_000
    {
        if a.send_to(b"xdpgate-bench", dst).is_ok() {
            sent_a += 1;
        }
        if b.send_to(b"xdpgate-bench", dst).is_ok() {
            sent_b += 1;
        }
        thread::sleep(Duration::from_micros(50));
    }
    Ok((sent_a, sent_b))
}

/// Passed and dropped over every service slot of the pinned per-service counters.
fn counters(pin: &std::path::Path) -> Result<(u64, u64)> {
    let data = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let stats: PerCpuArray<_, gateway_common::ServiceStats> =
        PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let (mut passed, mut dropped) = (0, 0);
    for slot in 0..16 {
        for cpu in stats.get(&slot, 0)?.iter() {
            passed += cpu.passed;
            dropped += cpu.dropped;
        }
    }
    Ok((passed, dropped))
}

/// VmHWM of a process, MB, if it is an xdpgate controller.
fn peak_rss_mb(pid: i32) -> Option<f64> {
    let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    if !cmdline.contains("controller") {
        return None;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
