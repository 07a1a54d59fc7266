//! Configuration reload on the real gate: `xdpgate reload` and `SIGHUP` add and remove
//! servers while a client of a third server keeps its opening and its traffic flows; an
//! invalid file and a change that needs a restart are refused and change nothing.
#![allow(clippy::expect_used)] // test helpers outside #[test] functions
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use xdpgate_tests::{Echoes, Gateway, NetNs, ProbeLoop, VethLink, require_root, udp_roundtrip};

const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// The server whose client must not notice any reload.
const KEEP: &str = r#"
[[server]]
name = "keep"
id = 1
connect_window_secs = 600
idle_timeout_secs = 600

[[server.service]]
protocol = "udp"
port = 1194
"#;

/// Removed by the first reload.
const GONE: &str = r#"
[[server]]
name = "gone"
id = 2

[[server.service]]
protocol = "udp"
port = 1195
"#;

/// Added by the first reload, removed again by SIGHUP.
const ADDED: &str = r#"
[[server]]
name = "added"
id = 3

[[server.service]]
protocol = "udp"
port = 1196
"#;

struct Lab {
    gateway: Gateway,
    client: Arc<NetNs>,
    _server_ns: NetNs,
    link: VethLink,
    _echoes: Echoes,
}

impl Lab {
    fn udp(&self, from: IpAddr, port: u16) -> bool {
        udp_roundtrip(
            &self.client,
            Some(from),
            SocketAddr::new(IpAddr::V4(self.link.b.v4), port),
            PROBE_TIMEOUT,
        )
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.gateway.config_path()).expect("reading the config")
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.gateway.config_path(), text).expect("writing the config");
    }

    fn reload(&self) -> std::process::Output {
        self.gateway.try_cli(&["reload"])
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn reload_adds_and_removes_servers_while_a_kept_client_flows_and_bad_files_change_nothing() {
    require_root();
    let client = Arc::new(NetNs::new_unique("rlc"));
    let server_ns = NetNs::new_unique("rlg");
    let link = VethLink::new(&client, &server_ns, 57);
    let stranger = IpAddr::V4(link.a.add_v4_host(3));
    let me = IpAddr::V4(link.a.v4);
    let echoes = Echoes::start(
        &server_ns,
        [1194, 1195, 1196].map(|port| link.b.v4_addr(port)),
    );
    let gateway = Gateway::start(&server_ns, &[&link.b.ifname], &format!("{KEEP}{GONE}"));
    let lab = Lab {
        gateway,
        client,
        _server_ns: server_ns,
        link,
        _echoes: echoes,
    };

    // Before: both guarded ports drop everyone; the client of `keep` is opened by the admin.
    assert!(!lab.udp(me, 1194) && !lab.udp(me, 1195));
    assert!(lab.udp(me, 1196), "1196 is not guarded yet");
    lab.gateway.cli(&[
        "openings",
        "add",
        "--server",
        "keep",
        "--ip",
        &me.to_string(),
        "--ttl",
        "600",
    ]);
    assert!(lab.udp(me, 1194), "the opened client reaches keep");

    // The kept client's traffic runs through every reload below, counted.
    let flow = ProbeLoop::start(
        lab.client.clone(),
        me,
        SocketAddr::new(IpAddr::V4(lab.link.b.v4), 1194),
        PROBE_TIMEOUT,
        Duration::from_millis(20),
        Duration::from_secs(120),
    );

    // 1. `xdpgate reload`: `gone` leaves, `added` arrives.
    let original = lab.config();
    lab.write_config(&original.replace(GONE, ADDED));
    let out = lab.reload();
    let said = text(&out);
    assert!(out.status.success(), "reload failed: {said}");
    assert!(
        said.contains("added: added") && said.contains("removed: gone"),
        "{said}"
    );
    assert!(
        !lab.udp(me, 1196),
        "the added server's port is guarded at once"
    );
    assert!(!lab.udp(stranger, 1196));
    assert!(
        lab.udp(stranger, 1195),
        "the removed server's port is no longer guarded"
    );
    assert!(lab.udp(me, 1194), "the kept opening survives the reload");
    let servers = lab.gateway.cli(&["servers", "list"]);
    assert!(
        servers.contains("added") && !servers.contains("gone"),
        "{servers}"
    );
    lab.gateway.cli(&[
        "openings",
        "add",
        "--server",
        "added",
        "--ip",
        &me.to_string(),
        "--ttl",
        "600",
    ]);
    assert!(lab.udp(me, 1196), "openings of the added server work");
    assert!(!lab.udp(stranger, 1196));

    // 2. An invalid file: refused with its line and reason; nothing changes.
    let good = lab.config();
    lab.write_config(&good.replace("port = 1196", "port = 70000"));
    let out = lab.reload();
    let said = text(&out);
    assert!(
        !out.status.success(),
        "an invalid file must be refused: {said}"
    );
    assert!(
        said.contains("invalid") && said.contains("xdpgate.toml"),
        "{said}"
    );
    assert!(
        lab.udp(me, 1196) && !lab.udp(stranger, 1196),
        "nothing changed"
    );
    assert!(!lab.udp(stranger, 1194));

    // 3. A setting only a restart applies: refused, named, nothing changes.
    lab.write_config(&good.replace("sweep_interval_ms = 200", "sweep_interval_ms = 300"));
    let out = lab.reload();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("sweep_interval_ms") && said.contains("restart"),
        "{said}"
    );
    assert!(
        lab.udp(me, 1196) && !lab.udp(stranger, 1196),
        "nothing changed"
    );

    // 4. SIGHUP: `added` leaves again; its port is unguarded once the log says so.
    lab.write_config(&good.replace(ADDED, ""));
    let pid = lab.gateway.controller_pid().expect("controller pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits")),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("sending SIGHUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.gateway.log().contains("removed: added") {
        assert!(
            Instant::now() < deadline,
            "no reload after SIGHUP:\n{}",
            lab.gateway.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(lab.udp(stranger, 1196), "SIGHUP removed the added server");
    assert!(lab.udp(me, 1194), "the kept opening survives SIGHUP too");
    let listed = lab.gateway.cli(&["openings", "list"]);
    assert!(
        listed.contains("keep") && !listed.contains("added"),
        "{listed}"
    );

    let (sent, answered) = flow.finish();
    let lost = sent - answered;
    assert!(sent >= 20, "the kept client's flow ran ({sent} probes)");
    assert_eq!(
        lost, 0,
        "{lost} of {sent} probes of the kept client were lost"
    );
}
