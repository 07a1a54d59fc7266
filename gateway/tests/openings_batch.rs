//! Grants that arrive together are written in shared batches (one redb commit and one kernel
//! call each). Under a burst of concurrent grants every caller gets its own record, every
//! opening is in redb and in the kernel map, and two grants of one address in the same burst
//! end up as two holders of one opening; a grant whose caller goes away is still written
//! whole, and so is a revocation. An approval's grant is checked under the batch lock: the
//! per-client cap, the map's capacity (no eviction) and revocation in flight. Real maps
//! (loaded unpinned), a real redb file.
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
    openings::{GrantCheck, Openings, OpeningsError},
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
        Lab::with_capacity(u32::MAX)
    }

    /// A lab whose manager believes each kernel map holds `capacity` entries.
    fn with_capacity(capacity: u32) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF maps: run it as root (cargo xtask test)"
        );
        let config = Config::parse(CONFIG, Path::new("test.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut ebpf = loader::load_unpinned(1024).unwrap();
        let gate = spawn_owner(GateMaps::take(&mut ebpf).unwrap()).unwrap();
        let openings = Arc::new(Openings::new(gate, store.clone()).with_map_capacity(capacity));
        Lab {
            server: config.servers[0].clone(),
            store,
            openings,
            _ebpf: ebpf,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_grants_is_fully_written_and_answered() {
    let Lab {
        server,
        store,
        openings,
        ..
    } = &Lab::new();

    const DISTINCT: u32 = 64;
    let mut grants = tokio::task::JoinSet::new();
    for i in 0..DISTINCT {
        let (openings, server) = (openings.clone(), server.clone());
        grants.spawn(async move {
            let record = openings
                .grant(
                    &server,
                    address(i),
                    &format!("client-{i}"),
                    Duration::from_secs(60),
                )
                .await;
            (i, record)
        });
    }
    // Two more clients behind the first address (one NAT), in the same burst.
    for origin in ["nat-a", "nat-b"] {
        let (openings, server) = (openings.clone(), server.clone());
        grants.spawn(async move {
            (
                0,
                openings
                    .grant(&server, address(0), origin, Duration::from_secs(60))
                    .await,
            )
        });
    }
    while let Some(done) = grants.join_next().await {
        let (i, record) = done.unwrap();
        let record = record.unwrap_or_else(|e| panic!("grant {i} failed: {e}"));
        assert_eq!(
            record.id.addr,
            address(i),
            "each caller gets the record of its own address"
        );
    }

    let views = openings.list().await.unwrap();
    assert_eq!(views.len(), usize::try_from(DISTINCT).unwrap());
    for view in &views {
        assert!(
            view.kernel.is_some(),
            "{} is in the kernel map",
            view.record.id.addr
        );
    }
    let shared = views
        .iter()
        .find(|v| v.record.id.addr == address(0))
        .unwrap();
    let mut origins: Vec<&str> = shared
        .record
        .holders
        .iter()
        .map(|h| h.origin.as_str())
        .collect();
    origins.sort_unstable();
    assert_eq!(
        origins,
        ["client-0", "nat-a", "nat-b"],
        "grants of one address in one burst add up"
    );

    let stored = store.load_openings().unwrap();
    assert_eq!(stored.len(), views.len(), "every opening is in redb");
    let stored_shared = stored.iter().find(|r| r.id.addr == address(0)).unwrap();
    assert_eq!(stored_shared.holders.len(), 3);
}

// One thread: no spawned task runs before this one yields, so the first poll of the grant
// cannot find it already written.
#[tokio::test(flavor = "current_thread")]
async fn a_grant_whose_caller_goes_away_is_still_written_whole() {
    let Lab {
        server,
        store,
        openings,
        ..
    } = &Lab::new();

    // Polled once (which queues the grant), then dropped: a cancelled request.
    let mut grant = Box::pin(openings.grant(server, address(7), "gone", Duration::from_secs(60)));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(grant.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the grant cannot have finished without waiting"
    );
    drop(grant);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let views = openings.list().await.unwrap();
        if let Some(view) = views.iter().find(|v| v.record.id.addr == address(7)) {
            assert!(view.kernel.is_some(), "in the kernel map too");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned grant was never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.load_openings().unwrap().len(), 1, "and in redb");
}

const WINDOW: Duration = Duration::from_secs(60);

fn check(openings: &Openings, origin: &str, cap: usize) -> Option<GrantCheck> {
    Some(GrantCheck {
        generation: openings.generation(origin),
        max_addresses_per_client: cap,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holds_at_most_its_cap_and_nobody_is_evicted() {
    let Lab {
        server, openings, ..
    } = &Lab::new();
    for i in 0..3 {
        openings
            .grant_checked(
                server,
                address(i),
                "alice",
                WINDOW,
                check(openings, "alice", 3),
            )
            .await
            .unwrap();
    }
    let fourth = openings
        .grant_checked(
            server,
            address(3),
            "alice",
            WINDOW,
            check(openings, "alice", 3),
        )
        .await;
    assert!(
        matches!(fourth, Err(OpeningsError::ClientCap { limit: 3, .. })),
        "{fourth:?}"
    );
    // Re-approving an address alice already holds is not a further address.
    openings
        .grant_checked(
            server,
            address(1),
            "alice",
            WINDOW,
            check(openings, "alice", 3),
        )
        .await
        .unwrap();
    // Another client is not limited by alice's holdings, even on alice's addresses (NAT).
    openings
        .grant_checked(server, address(0), "bob", WINDOW, check(openings, "bob", 1))
        .await
        .unwrap();
    let views = openings.list().await.unwrap();
    let addrs: Vec<IpAddr> = views.iter().map(|v| v.record.id.addr).collect();
    assert_eq!(
        addrs,
        [address(0), address(1), address(2)],
        "the refused address was not opened"
    );
    assert!(views.iter().all(|v| v.kernel.is_some()));
    // Concurrent grants of one client in one burst cannot exceed the cap either.
    let mut burst = tokio::task::JoinSet::new();
    for i in 10..20 {
        let (openings, server) = (openings.clone(), server.clone());
        burst.spawn(async move {
            let c = check(&openings, "carol", 4);
            openings
                .grant_checked(&server, address(i), "carol", WINDOW, c)
                .await
        });
    }
    let mut granted = 0;
    while let Some(done) = burst.join_next().await {
        match done.unwrap() {
            Ok(_) => granted += 1,
            Err(OpeningsError::ClientCap { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(granted, 4, "exactly the cap, however the burst was batched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_capacity_refuses_new_openings_and_evicts_nothing() {
    // 32 entries per map: approvals stop with 2 (32 / 16) left.
    let Lab {
        server, openings, ..
    } = &Lab::with_capacity(32);
    let mut granted = Vec::new();
    for i in 0..40 {
        match openings
            .grant_checked(
                server,
                address(i),
                &format!("c{i}"),
                WINDOW,
                check(openings, &format!("c{i}"), 4),
            )
            .await
        {
            Ok(_) => granted.push(address(i)),
            Err(OpeningsError::NearCapacity {
                family: "IPv4",
                capacity: 32,
                ..
            }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(
        granted.len(),
        30,
        "refused once fewer than 1/16 of the entries are free"
    );
    let views = openings.list().await.unwrap();
    assert_eq!(
        views.iter().map(|v| v.record.id.addr).collect::<Vec<_>>(),
        granted,
        "nobody was evicted"
    );
    // An address already open can still be re-approved (it takes no new entry).
    openings
        .grant_checked(server, address(0), "c0", WINDOW, check(openings, "c0", 4))
        .await
        .unwrap();
    // Operator grants are not approvals: they may use the reserve.
    openings
        .grant(server, address(100), "admin", WINDOW)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_an_approval_opens_nothing() {
    let Lab {
        server,
        store,
        openings,
        ..
    } = &Lab::new();
    openings
        .grant_checked(
            server,
            address(1),
            "alice",
            WINDOW,
            check(openings, "alice", 4),
        )
        .await
        .unwrap();
    // The approval reads the generation before validating...
    let in_flight = check(openings, "alice", 4);
    // ...the operator disables the client meanwhile (the store write runs under the lock)...
    let wrote = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = wrote.clone();
    let closed = openings
        .revoke_origin_with("alice", move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), OpeningsError>(())
        })
        .await
        .unwrap();
    assert!(wrote.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(closed, 1);
    // ...and the approval's grant then comes: refused, nothing opens.
    let late = openings
        .grant_checked(server, address(2), "alice", WINDOW, in_flight)
        .await;
    assert!(
        matches!(late, Err(OpeningsError::Revoked(ref c)) if c == "alice"),
        "{late:?}"
    );
    assert!(openings.list().await.unwrap().is_empty());
    assert!(store.load_openings().unwrap().is_empty());
    // A fresh approval (generation read after the revocation) works again, e.g. after enable.
    openings
        .grant_checked(
            server,
            address(2),
            "alice",
            WINDOW,
            check(openings, "alice", 4),
        )
        .await
        .unwrap();
}

// One thread, as for the grant: the revocation cannot run before its caller goes away.
#[tokio::test(flavor = "current_thread")]
async fn a_revocation_whose_caller_goes_away_is_still_done_whole() {
    let Lab {
        server,
        store,
        openings,
        ..
    } = &Lab::new();
    openings
        .grant(server, address(8), "gone", WINDOW)
        .await
        .unwrap();
    let mut revoke = Box::pin(openings.revoke_address(None, address(8)));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(revoke.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the revocation cannot have finished without waiting"
    );
    drop(revoke);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let views = openings.list().await.unwrap();
        if views.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned revocation was never done"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.load_openings().unwrap().is_empty(), "gone from redb");
}
