//! `cargo xtask demo`: the gate on real interfaces, narrated in plain lines.
//!
//! Builds a client and a gateway network namespace joined by a veth pair, starts the real
//! controller (embedded redb, XDP on the gateway's interface) guarding UDP and TCP port 1194,
//! and shows: closed to everyone, opened for one client address, still enforced while the
//! controller is killed and restarted, closed again on revoke. Everything it creates is
//! removed at the end, also on Ctrl-C.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use xdpgate_tests::{Gateway, NetNs, TcpEcho, UdpEcho, VethLink, require_root, tcp_connects, udp_roundtrip};

const PORT: u16 = 1194;
const TIMEOUT: Duration = Duration::from_millis(800);
const SERVER: &str = r#"
[[server]]
name = "vpn1"
id = 1
connect_window_secs = 60
idle_timeout_secs = 60
max_lifetime_secs = 3600

[[server.service]]
protocol = "udp"
port = 1194

[[server.service]]
protocol = "tcp"
port = 1194
"#;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Stops the demo between steps after Ctrl-C, so the guards below clean up.
fn step(text: &str) -> Result<(), &'static str> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted; cleaning up");
    }
    println!("\n==> {text}");
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "answered" } else { "no answer (dropped by the XDP gate)" }
}

fn main() {
    require_root();
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(err) = unsafe { sigaction(signal, &action) } {
            eprintln!("warning: cannot handle {signal}: {err}");
        }
    }
    match run() {
        Ok(()) => println!("\nDemo finished; namespaces, links and pinned maps removed."),
        Err(reason) => {
            println!("\n{reason}");
            std::process::exit(130);
        }
    }
}

fn run() -> Result<(), &'static str> {
    step("Creating a client namespace and a gateway namespace joined by a veth pair")?;
    let client = NetNs::new_unique("democl");
    let gateway_ns = NetNs::new_unique("demogw");
    let link = VethLink::new(&client, &gateway_ns, 90);
    let stranger = Ipv4Addr::new(10, 201, 90, 3);
    client.exec(&["ip", "addr", "add", &format!("{stranger}/24"), "dev", &link.a.ifname]);
    let service = SocketAddr::new(IpAddr::V4(link.b.v4), PORT);
    let _udp = UdpEcho::start(&gateway_ns, service);
    let _tcp = TcpEcho::start(&gateway_ns, service);
    println!("    client {} (and a second address {stranger}), gateway {}", link.a.v4, link.b.v4);
    println!("    a stand-in VPN service answers on UDP and TCP {service}");

    step("Starting the xdpgate controller (embedded redb, XDP on the gateway's interface)")?;
    let mut gateway = Gateway::start(&gateway_ns, &[&link.b.ifname], SERVER);
    print!("{}", indent(&gateway.cli(&["servers", "list"])));

    let client_ip = IpAddr::V4(link.a.v4);
    let probe = |from: IpAddr| {
        (udp_roundtrip(&client, Some(from), service, TIMEOUT), tcp_connects(&client, Some(from), service, TIMEOUT))
    };
    step("The client knocks on the VPN port before any approval")?;
    let (udp, tcp) = probe(client_ip);
    println!("    UDP: {}\n    TCP: {}", verdict(udp), verdict(tcp));

    step(&format!("The operator opens the port for {client_ip} only: xdpgate openings add --server vpn1 --ip {client_ip} --ttl 60"))?;
    print!("{}", indent(&gateway.cli(&["openings", "add", "--server", "vpn1", "--ip", &client_ip.to_string(), "--ttl", "60"])));
    let (udp, tcp) = probe(client_ip);
    println!("    from {client_ip}: UDP {}, TCP {}", verdict(udp), verdict(tcp));
    let (udp, tcp) = probe(IpAddr::V4(stranger));
    println!("    from {stranger}: UDP {}, TCP {}", verdict(udp), verdict(tcp));

    step("The controller is killed with SIGKILL: the pinned gate keeps enforcing")?;
    gateway.kill9();
    println!("    from {client_ip}: UDP {}", verdict(probe(client_ip).0));
    println!("    from {stranger}: UDP {}", verdict(probe(IpAddr::V4(stranger)).0));

    step("The controller restarts, reuses the pinned gate and its redb state")?;
    gateway.restart();
    print!("{}", indent(&gateway.cli(&["openings", "list"])));

    step(&format!("The operator revokes {client_ip}"))?;
    print!("{}", indent(&gateway.cli(&["openings", "revoke", "--ip", &client_ip.to_string()])));
    println!("    from {client_ip}: UDP {}", verdict(probe(client_ip).0));

    step("Packet counters of the gate")?;
    print!("{}", indent(&gateway.cli(&["status"])));
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
