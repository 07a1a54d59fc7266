//! End to end on real interfaces: a client namespace talks to a gateway namespace over a veth
//! pair; the gateway runs the real `xdpgate controller` with its XDP program attached to the
//! gateway end. Real UDP and TCP sockets probe guarded and unguarded ports over IPv4 and IPv6.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::Duration,
};

use xdpgate_tests::{
    Echoes, Gateway, NetNs, VethLink, require_root, tcp_connects, udp_roundtrip,
    udp_roundtrip_large,
};

const GUARDED: u16 = 1194;
const UNGUARDED_UDP: u16 = 5353;
const UNGUARDED_TCP: u16 = 8080;
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// One guarded server: UDP and TCP on port 1194, short limits so expiry is testable.
const SERVER: &str = r#"
[[server]]
name = "vpn1"
id = 1
connect_window_secs = 3
idle_timeout_secs = 2
max_lifetime_secs = 3600

[[server.service]]
protocol = "udp"
port = 1194

[[server.service]]
protocol = "tcp"
port = 1194
"#;

/// Client ⇄ gateway topology with echo services on the gateway and the gate attached.
struct Lab {
    // Dropped first: the controller stops and its pins go before the namespaces do.
    gateway: Gateway,
    client: NetNs,
    server_ns: NetNs,
    link: VethLink,
    /// A second address on the client's interface that is never approved.
    stranger: Ipv4Addr,
    _echoes: Echoes,
}

impl Lab {
    fn new(subnet: u8) -> Lab {
        require_root();
        let client = NetNs::new_unique("cl");
        let server_ns = NetNs::new_unique("gw");
        let link = VethLink::new(&client, &server_ns, subnet);
        let stranger = link.a.add_v4_host(3);
        let guarded = link.b.ips().map(|ip| SocketAddr::new(ip, GUARDED));
        let unguarded = [link.b.v4_addr(UNGUARDED_UDP), link.b.v4_addr(UNGUARDED_TCP)];
        let echoes = Echoes::start(&server_ns, guarded.into_iter().chain(unguarded));
        let gateway = Gateway::start(&server_ns, &[&link.b.ifname], SERVER);
        Lab {
            gateway,
            client,
            server_ns,
            link,
            stranger,
            _echoes: echoes,
        }
    }

    fn udp(&self, from: IpAddr, to: IpAddr) -> bool {
        udp_roundtrip(
            &self.client,
            Some(from),
            SocketAddr::new(to, GUARDED),
            PROBE_TIMEOUT,
        )
    }

    fn tcp(&self, from: IpAddr, to: IpAddr) -> bool {
        tcp_connects(
            &self.client,
            Some(from),
            SocketAddr::new(to, GUARDED),
            PROBE_TIMEOUT,
        )
    }

    /// Guarded UDP and TCP from the client's own address of `to`'s family.
    fn guarded_reachable(&self, to: IpAddr) -> (bool, bool) {
        let from = if to.is_ipv4() {
            IpAddr::V4(self.link.a.v4)
        } else {
            IpAddr::V6(self.link.a.v6)
        };
        (self.udp(from, to), self.tcp(from, to))
    }

    fn assert_unguarded_work(&self) {
        let to = self.link.b.v4;
        assert!(
            udp_roundtrip(
                &self.client,
                None,
                SocketAddr::new(IpAddr::V4(to), UNGUARDED_UDP),
                PROBE_TIMEOUT
            ),
            "unguarded UDP must always pass"
        );
        assert!(
            tcp_connects(
                &self.client,
                None,
                SocketAddr::new(IpAddr::V4(to), UNGUARDED_TCP),
                PROBE_TIMEOUT
            ),
            "unguarded TCP must always pass"
        );
    }

    fn open(&self, ip: IpAddr, ttl: u32) -> String {
        self.gateway.cli(&[
            "openings",
            "add",
            "--server",
            "vpn1",
            "--ip",
            &ip.to_string(),
            "--ttl",
            &ttl.to_string(),
        ])
    }

    fn both_families(&self) -> [IpAddr; 2] {
        self.link.b.ips()
    }
}

#[test]
fn guarded_ports_open_only_for_opened_sources_until_expiry_or_revoke() {
    let lab = Lab::new(31);
    let stranger = IpAddr::V4(lab.stranger);

    for to in lab.both_families() {
        assert_eq!(
            lab.guarded_reachable(to),
            (false, false),
            "{to}: guarded UDP/TCP must be closed at first"
        );
    }
    lab.assert_unguarded_work();

    for ip in lab.link.a.ips() {
        let out = lab.open(ip, 3);
        assert!(out.contains(&format!("opened {ip} on vpn1")), "{out}");
    }
    for to in lab.both_families() {
        assert_eq!(
            lab.guarded_reachable(to),
            (true, true),
            "{to}: opened source must pass"
        );
    }
    let v4 = IpAddr::V4(lab.link.b.v4);
    assert!(
        !lab.udp(stranger, v4) && !lab.tcp(stranger, v4),
        "an address that was not opened stays closed"
    );
    lab.assert_unguarded_work();

    let status = lab.gateway.cli(&["status"]);
    let udp_line = status
        .lines()
        .find(|l| l.contains("udp/1194"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        !udp_line.contains("passed 0 ") && !udp_line.ends_with("dropped 0"),
        "counters move: {udp_line}"
    );

    // No traffic for longer than both the connect window (3 s) and the idle timeout (2 s).
    thread::sleep(Duration::from_millis(4_500));
    for to in lab.both_families() {
        assert_eq!(
            lab.guarded_reachable(to),
            (false, false),
            "{to}: expired opening must close"
        );
    }
    let listed = lab.gateway.cli(&["openings", "list"]);
    assert_eq!(
        listed, "no openings\n",
        "the sweeper removes expired openings"
    );

    lab.open(IpAddr::V4(lab.link.a.v4), 60);
    assert_eq!(lab.guarded_reachable(v4), (true, true));
    let out = lab
        .gateway
        .cli(&["openings", "revoke", "--ip", &lab.link.a.v4.to_string()]);
    assert!(out.contains("revoked 1"), "{out}");
    assert_eq!(
        lab.guarded_reachable(v4),
        (false, false),
        "revocation closes at once"
    );
    lab.assert_unguarded_work();
}

#[test]
fn traffic_keeps_an_opening_alive_past_its_connect_window() {
    let lab = Lab::new(32);
    let v4 = IpAddr::V4(lab.link.b.v4);
    lab.open(IpAddr::V4(lab.link.a.v4), 2);
    // Keep talking every 500 ms for 5 s: well past the 2 s connect window.
    for round in 0..10 {
        assert!(
            lab.udp(IpAddr::V4(lab.link.a.v4), v4),
            "round {round}: active opening must stay open"
        );
        thread::sleep(Duration::from_millis(500));
    }
    thread::sleep(Duration::from_millis(3_000));
    assert!(
        !lab.udp(IpAddr::V4(lab.link.a.v4), v4),
        "idle opening closes after the idle timeout"
    );
}

#[test]
fn gate_keeps_enforcing_while_the_controller_is_killed_and_restarted() {
    let mut lab = Lab::new(33);
    let v4 = IpAddr::V4(lab.link.b.v4);
    let v6 = IpAddr::V6(lab.link.b.v6);
    let stranger = IpAddr::V4(lab.stranger);
    lab.open(IpAddr::V4(lab.link.a.v4), 60);
    // A short opening that must expire while no controller runs.
    lab.open(IpAddr::V6(lab.link.a.v6), 2);

    lab.gateway.kill9();
    assert!(
        lab.gateway.try_cli(&["health"]).status.code() != Some(0),
        "controller is really gone"
    );
    assert_eq!(
        lab.guarded_reachable(v4),
        (true, true),
        "open stays open without a controller"
    );
    assert!(
        !lab.udp(stranger, v4) && !lab.tcp(stranger, v4),
        "closed stays closed without a controller"
    );
    lab.assert_unguarded_work();
    thread::sleep(Duration::from_millis(3_000));
    assert_eq!(
        lab.guarded_reachable(v6),
        (false, false),
        "the kernel expires openings on its own"
    );

    lab.gateway.restart();
    let status = lab.gateway.cli(&["status"]);
    assert!(
        status.contains("(kept)"),
        "restart reuses the pinned link: {status}"
    );
    assert_eq!(
        lab.guarded_reachable(v4),
        (true, true),
        "open stays open after restart"
    );
    assert!(!lab.udp(stranger, v4), "closed stays closed after restart");
    let listed = lab.gateway.cli(&["openings", "list"]);
    assert!(
        listed.contains(&lab.link.a.v4.to_string()) && !listed.contains(&lab.link.a.v6.to_string()),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.trim_end().ends_with("yes")),
        "{listed}"
    );
    lab.assert_unguarded_work();
}

#[test]
fn fragmented_udp_to_a_guarded_port_passes_only_when_opened() {
    let lab = Lab::new(34);
    let big = 3_000;
    for to in lab.both_families() {
        let target = SocketAddr::new(to, GUARDED);
        assert!(
            !udp_roundtrip_large(&lab.client, None, target, PROBE_TIMEOUT, big),
            "{to}: fragments must not sneak in"
        );
    }
    let unguarded = lab.link.b.v4_addr(UNGUARDED_UDP);
    assert!(
        udp_roundtrip_large(&lab.client, None, unguarded, PROBE_TIMEOUT, big),
        "fragmented unguarded UDP passes"
    );
    for ip in lab.link.a.ips() {
        lab.open(ip, 30);
    }
    for to in lab.both_families() {
        let target = SocketAddr::new(to, GUARDED);
        assert!(
            udp_roundtrip_large(&lab.client, None, target, PROBE_TIMEOUT, big),
            "{to}: opened source, fragmented"
        );
    }
}

#[test]
fn detach_removes_the_gate_and_every_pin() {
    let mut lab = Lab::new(35);
    let v4 = IpAddr::V4(lab.link.b.v4);
    assert_eq!(lab.guarded_reachable(v4), (false, false));
    let out = lab.gateway.detach();
    assert!(out.contains("the gate is detached"), "{out}");
    assert!(!Path::new(lab.gateway.bpffs_dir()).exists(), "pins removed");
    assert_eq!(
        lab.guarded_reachable(v4),
        (true, true),
        "no gate, no filtering"
    );
    let link = lab
        .server_ns
        .exec(&["ip", "link", "show", &lab.link.b.ifname]);
    assert!(
        !link.contains("xdp"),
        "no XDP program left on the interface: {link}"
    );
}
