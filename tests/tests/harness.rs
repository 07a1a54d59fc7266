//! Self-test of the namespace harness, without any XDP: two namespaces joined by a veth
//! link pass UDP (small and fragmented) and TCP both ways over IPv4 and IPv6, and probes to a
//! port nobody listens on fail.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use xdpgate_tests::{
    NetNs, TcpEcho, UdpEcho, VethLink, in_netns, require_root, tcp_connects, udp_roundtrip,
    udp_roundtrip_large,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const UNUSED_PORT: u16 = 9;

#[test]
fn udp_and_tcp_roundtrips_over_veth_v4_and_v6() {
    require_root();
    let client = NetNs::new_unique("hc");
    let server = NetNs::new_unique("hs");
    let link = VethLink::new(&client, &server, 1);
    assert!(
        link.a.ifindex() > 1 && link.b.ifindex() > 1,
        "veth ifindex of {link:?}"
    );

    for (client_ip, server_ip) in link.a.ips().into_iter().zip(link.b.ips()) {
        let udp = UdpEcho::start(&server, SocketAddr::new(server_ip, 7001));
        let tcp = TcpEcho::start(&server, SocketAddr::new(server_ip, 0));
        assert!(
            udp_roundtrip(&client, None, udp.local_addr(), TIMEOUT),
            "UDP to {server_ip}"
        );
        assert!(
            udp_roundtrip(&client, Some(client_ip), udp.local_addr(), TIMEOUT),
            "UDP from {client_ip} to {server_ip}"
        );
        assert!(
            tcp_connects(&client, None, tcp.local_addr(), TIMEOUT),
            "TCP to {server_ip}"
        );
        assert!(
            tcp_connects(&client, Some(client_ip), tcp.local_addr(), TIMEOUT),
            "TCP from {client_ip} to {server_ip}"
        );

        // Nobody listens: the ICMP unreachable / RST makes these fail fast.
        let closed = SocketAddr::new(server_ip, UNUSED_PORT);
        let started = Instant::now();
        assert!(
            !udp_roundtrip(&client, None, closed, TIMEOUT),
            "UDP to closed {closed}"
        );
        assert!(
            !tcp_connects(&client, None, closed, TIMEOUT),
            "TCP to closed {closed}"
        );
        assert!(
            started.elapsed() < TIMEOUT,
            "refusals took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn large_udp_datagrams_are_fragmented_and_reassembled() {
    require_root();
    let client = NetNs::new_unique("hc");
    let server = NetNs::new_unique("hs");
    let link = VethLink::new(&client, &server, 2);

    for (server_ip, created, reassembled) in [
        (IpAddr::V4(link.b.v4), "Ip:FragCreates", "Ip:ReasmOKs"),
        (IpAddr::V6(link.b.v6), "Ip6FragCreates", "Ip6ReasmOKs"),
    ] {
        let udp = UdpEcho::start(&server, SocketAddr::new(server_ip, 7003));
        let counter = |ns: &NetNs, key: &str| ns.snmp_counters().get(key).copied().unwrap_or(0);
        let sent_before = counter(&client, created);
        let reassembled_before = counter(&server, reassembled);
        assert!(
            udp_roundtrip_large(&client, None, udp.local_addr(), TIMEOUT, 3000),
            "3000-byte UDP to {server_ip}"
        );
        assert!(
            counter(&client, created) > sent_before,
            "client sent no {created}"
        );
        assert!(
            counter(&server, reassembled) > reassembled_before,
            "server did no {reassembled}"
        );
    }
}

#[test]
fn sockets_made_in_a_namespace_outlive_the_thread() {
    require_root();
    let client = NetNs::new_unique("hc");
    let server = NetNs::new_unique("hs");
    let link = VethLink::new(&client, &server, 3);
    let echo = UdpEcho::start(&server, link.b.v4_addr(7004));

    let socket = in_netns(client.name(), || UdpSocket::bind(link.a.v4_addr(0)))
        .unwrap_or_else(|e| panic!("bind in client netns: {e}"));
    // This thread is in the host namespace, which has no route to 10.201.3.0/24.
    socket
        .connect(echo.local_addr())
        .unwrap_or_else(|e| panic!("connect: {e}"));
    socket
        .set_read_timeout(Some(TIMEOUT))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    socket.send(b"ping").unwrap_or_else(|e| panic!("send: {e}"));
    let mut buf = [0u8; 16];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("recv: {e}"));
    assert_eq!(&buf[..n], b"ping");
}

#[test]
fn dropping_a_namespace_deletes_it_and_kills_its_processes() {
    require_root();
    let ns = NetNs::new_unique("hd");
    let name = ns.name().to_owned();
    let mut child = ns.spawn(&["sleep", "600"]);
    assert!(
        ns.pids().contains(&pid_of(&child)),
        "sleep is not listed in {name}"
    );
    assert!(
        ns.exec(&["ip", "link", "show", "lo"]).contains("UP"),
        "lo is not up in {name}"
    );

    drop(ns);
    assert!(
        !Path::new(&format!("/run/netns/{name}")).exists(),
        "{name} still exists"
    );
    let status = child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(
        !status.success(),
        "sleep should have been killed, got {status}"
    );
}

#[test]
#[should_panic(expected = "failed")]
fn a_failing_command_panics_with_its_error() {
    require_root();
    let ns = NetNs::new_unique("he");
    ns.exec(&["ip", "link", "set", "nosuchdev0", "up"]);
}

fn pid_of(child: &std::process::Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}
