//! Part 7: the grant step of approvals while the sweeper runs over 100k openings. Real kernel
//! maps (loaded unpinned, 262,144 entries each), a real redb file, the controller's own
//! `Openings`: the sweeper runs back to back (as under load, every `sweep_interval_ms`) while
//! grants are timed one after another. A grant is the part of an approval that waits for the
//! records lock; the sweeper walks the kernel maps without holding it.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use xdpgate::{
    config::Config,
    gate::{GateMaps, loader, spawn_owner},
    openings::Openings,
    store::Store,
};

use crate::{Opts, percentile, progress, report::Report};

const CONFIG: &str = "[controller]\ninterfaces = [\"eth0\"]\nstate_dir = \"/nonexistent\"\n\n\
    [[server]]\nname = \"vpn1\"\nid = 1\nconnect_window_secs = 3600\nidle_timeout_secs = 3600\n\
    max_lifetime_secs = 86400\n\n[[server.service]]\nprotocol = \"udp\"\nport = 1194\n";

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    let (count, grants): (u32, usize) = if opts.quick {
        (5_000, 200)
    } else {
        (100_000, 2_000)
    };
    let dir = std::env::temp_dir().join(format!("xdpgate-bench-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = measure(report, &dir, count, grants);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(report: &mut Report, dir: &Path, count: u32, grants: usize) -> Result<()> {
    let config = Config::parse(CONFIG, Path::new("bench.toml")).map_err(|e| anyhow!("{e}"))?;
    let server = config
        .servers
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("no server"))?;
    let store = Arc::new(Store::open(dir).context("opening redb")?);
    let records = crate::restart::bench_openings(count);
    store
        .save_openings(&records.iter().collect::<Vec<_>>(), &[])
        .context("saving openings")?;
    let mut ebpf = loader::load_unpinned(262_144).context("loading the maps")?;
    let gate = spawn_owner(GateMaps::take(&mut ebpf)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let openings = Arc::new(Openings::new(gate, store.clone()));
        openings.reconcile().await?;
        progress(&format!("sweep: {count} openings in redb and the kernel; sweeping back to back while granting"));
        let stop = Arc::new(AtomicBool::new(false));
        let sweeps = Arc::new(AtomicU64::new(0));
        let sweep_ns = Arc::new(AtomicU64::new(0));
        let sweeper = {
            let (openings, stop, sweeps, sweep_ns) = (openings.clone(), stop.clone(), sweeps.clone(), sweep_ns.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    openings.sweep().await?;
                    sweep_ns.fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
                    sweeps.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<(), xdpgate::openings::OpeningsError>(())
            })
        };
        let mut latencies = Vec::with_capacity(grants);
        for i in 0..grants {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).unwrap_or(0)));
            let started = Instant::now();
            openings.grant(&server, addr, "bench-client", Duration::from_secs(60)).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        stop.store(true, Ordering::Relaxed);
        sweeper.await??;
        latencies.sort_by(f64::total_cmp);
        let swept = sweeps.load(Ordering::Relaxed).max(1);
        let sweep_ms = sweep_ns.load(Ordering::Relaxed) as f64 / swept as f64 / 1e6;
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        progress(&format!("  {grants} grants during {swept} sweeps (mean sweep {sweep_ms:.0} ms): p50 {p50:.2} ms, p99 {p99:.2} ms"));
        report.set("approvals.p99_during_sweep_ms", p99);
        report.set("approvals.p50_during_sweep_ms", p50);
        report.set("approvals.sweep_ms", sweep_ms);
        report.set("approvals.sweep_openings", f64::from(count));
        report.note("sweep", "approvals.p99_during_sweep_ms: p99 of the grant step of an approval (the part that \
            waits for the records lock: one redb commit and one kernel update), timed one after another while the \
            sweeper runs back to back (10 ms apart) over the openings (real maps, real redb, in-process); \
            sweep_ms: mean duration of one sweep");
        Ok::<(), anyhow::Error>(())
    })
}
