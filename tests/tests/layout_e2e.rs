//! A change of the pinned-map layout version on the real gate: the controller finds the link a
//! release with another layout left pinned, swaps its program into that link (so the gate is
//! never off the interface), pins the link in its own folder and removes the old folder, maps
//! included. Openings come back from the state store. A probe loop runs throughout: an
//! unapproved source never gets through, and an approved one is back within the start-up.
#![allow(clippy::expect_used)] // test helpers outside #[test] functions
use std::{
    net::IpAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use xdpgate_tests::{Echoes, Gateway, NetNs, ProbeLoop, VethLink, require_root, udp_roundtrip};

const SERVER: &str = r#"
[[server]]
name = "vpn1"
id = 1
connect_window_secs = 600
idle_timeout_secs = 600

[[server.service]]
protocol = "udp"
port = 1194
"#;

const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

#[test]
fn an_older_layouts_link_is_taken_over_without_a_moment_with_no_gate() {
    require_root();
    let client = Arc::new(NetNs::new_unique("lyc"));
    let server_ns = NetNs::new_unique("lyg");
    let link = VethLink::new(&client, &server_ns, 58);
    let stranger = IpAddr::V4(link.a.add_v4_host(3));
    let me = IpAddr::V4(link.a.v4);
    let guarded = link.b.v4_addr(1194);
    let _echoes = Echoes::start(&server_ns, [guarded]);
    let mut gateway = Gateway::start(&server_ns, &[&link.b.ifname], SERVER);
    gateway.cli(&[
        "openings",
        "add",
        "--server",
        "vpn1",
        "--ip",
        &me.to_string(),
        "--ttl",
        "600",
    ]);
    assert!(udp_roundtrip(&client, Some(me), guarded, PROBE_TIMEOUT));
    assert!(!udp_roundtrip(
        &client,
        Some(stranger),
        guarded,
        PROBE_TIMEOUT
    ));

    // What the previous release would have left: the same pins under another layout folder.
    let current = std::fs::read_dir(gateway.bpffs_dir())
        .expect("reading the bpffs folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with('v'))
        .expect("a layout folder");
    let version: u32 = current[1..].parse().expect("v<N>");
    let old_name = format!("v{}", version.checked_sub(1).unwrap_or(version + 1));
    let old_dir = gateway.bpffs_dir().join(&old_name);
    gateway.kill9();
    std::fs::rename(gateway.bpffs_dir().join(&current), &old_dir)
        .expect("renaming the pin folder on bpffs");
    assert!(
        !udp_roundtrip(&client, Some(stranger), guarded, PROBE_TIMEOUT),
        "the old link keeps gating while no controller runs"
    );

    let probe = ProbeLoop::start(
        client.clone(),
        stranger,
        guarded,
        Duration::from_millis(100),
        Duration::ZERO,
        Duration::from_secs(60),
    );
    gateway.restart();
    // The approved client is back once the openings are restored from the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !udp_roundtrip(&client, Some(me), guarded, PROBE_TIMEOUT) {
        assert!(
            Instant::now() < deadline,
            "the opening did not come back:\n{}",
            gateway.log()
        );
    }
    thread::sleep(Duration::from_secs(1));
    let (sent, passed) = probe.finish();
    assert!(sent >= 8, "the stranger probed during the restart ({sent})");
    assert_eq!(
        passed, 0,
        "{passed} of {sent} stranger probes got through during the take-over"
    );

    let log = gateway.log();
    assert!(
        log.contains("took over the gate's link from an older map layout"),
        "{log}"
    );
    assert!(!old_dir.exists(), "the old layout folder is removed");
    assert!(
        gateway
            .bpffs_dir()
            .join(&current)
            .join(format!("link-{}", link.b.ifname))
            .exists()
    );
    let shown = server_ns.exec(&["ip", "-d", "link", "show", "dev", &link.b.ifname]);
    assert_eq!(
        shown.matches("prog/xdp").count(),
        1,
        "one XDP program attached: {shown}"
    );
    let status = gateway.cli(&["status"]);
    assert!(status.contains(&link.b.ifname), "{status}");
    assert!(!udp_roundtrip(
        &client,
        Some(stranger),
        guarded,
        PROBE_TIMEOUT
    ));
}
