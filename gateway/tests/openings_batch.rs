//! Grants that arrive together are written in shared batches (one redb commit and one kernel
//! call each). Under a burst of concurrent grants every caller gets its own record, every
//! opening is in redb and in the kernel map, and two grants of one address in the same burst
//! end up as two holders of one opening; a grant whose caller goes away is still written
//! whole. Real maps (loaded unpinned), a real redb file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use xdpgate::{
    config::{Config, ServerConfig},
    gate::{GateMaps, loader, spawn_owner},
    openings::Openings,
    store::Store,
};

const CONFIG: &str = r#"
[controller]
interfaces = ["eth0"]
state_dir = "/nonexistent"

[[server]]
name = "vpn1"
id = 3
connect_window_secs = 60

[[server.service]]
protocol = "udp"
port = 1194
"#;

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a63_0000 + i))
}

/// A fresh opening manager over real maps (loaded unpinned) and a redb file in a temporary
/// folder, with the server of [`CONFIG`].
struct Lab {
    server: ServerConfig,
    store: Arc<Store>,
    openings: Arc<Openings>,
    _ebpf: aya::Ebpf,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        assert!(nix::unistd::geteuid().is_root(), "this test loads BPF maps: run it as root (cargo xtask test)");
        let config = Config::parse(CONFIG, Path::new("test.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut ebpf = loader::load_unpinned(1024).unwrap();
        let gate = spawn_owner(GateMaps::take(&mut ebpf).unwrap()).unwrap();
        let openings = Arc::new(Openings::new(gate, store.clone()));
        Lab { server: config.servers[0].clone(), store, openings, _ebpf: ebpf, _dir: dir }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_grants_is_fully_written_and_answered() {
    let Lab { server, store, openings, .. } = &Lab::new();

    const DISTINCT: u32 = 64;
    let mut grants = tokio::task::JoinSet::new();
    for i in 0..DISTINCT {
        let (openings, server) = (openings.clone(), server.clone());
        grants.spawn(async move {
            let record = openings.grant(&server, address(i), &format!("client-{i}"), Duration::from_secs(60)).await;
            (i, record)
        });
    }
    // Two more clients behind the first address (one NAT), in the same burst.
    for origin in ["nat-a", "nat-b"] {
        let (openings, server) = (openings.clone(), server.clone());
        grants.spawn(async move { (0, openings.grant(&server, address(0), origin, Duration::from_secs(60)).await) });
    }
    while let Some(done) = grants.join_next().await {
        let (i, record) = done.unwrap();
        let record = record.unwrap_or_else(|e| panic!("grant {i} failed: {e}"));
        assert_eq!(record.id.addr, address(i), "each caller gets the record of its own address");
    }

    let views = openings.list().await.unwrap();
    assert_eq!(views.len(), usize::try_from(DISTINCT).unwrap());
    for view in &views {
        assert!(view.kernel.is_some(), "{} is in the kernel map", view.record.id.addr);
    }
    let shared = views.iter().find(|v| v.record.id.addr == address(0)).unwrap();
    let mut origins: Vec<&str> = shared.record.holders.iter().map(|h| h.origin.as_str()).collect();
    origins.sort_unstable();
    assert_eq!(origins, ["client-0", "nat-a", "nat-b"], "grants of one address in one burst add up");

    let stored = store.load_openings().unwrap();
    assert_eq!(stored.len(), views.len(), "every opening is in redb");
    let stored_shared = stored.iter().find(|r| r.id.addr == address(0)).unwrap();
    assert_eq!(stored_shared.holders.len(), 3);
}

// One thread: no spawned task runs before this one yields, so the first poll of the grant
// cannot find it already written.
#[tokio::test(flavor = "current_thread")]
async fn a_grant_whose_caller_goes_away_is_still_written_whole() {
    let Lab { server, store, openings, .. } = &Lab::new();

    // Polled once (which queues the grant), then dropped: a cancelled request.
    let mut grant = Box::pin(openings.grant(server, address(7), "gone", Duration::from_secs(60)));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(grant.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the grant cannot have finished without waiting");
    drop(grant);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let views = openings.list().await.unwrap();
        if let Some(view) = views.iter().find(|v| v.record.id.addr == address(7)) {
            assert!(view.kernel.is_some(), "in the kernel map too");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the abandoned grant was never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.load_openings().unwrap().len(), 1, "and in redb");
}
