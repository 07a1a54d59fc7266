//! veth links between two test namespaces, addressed from private test ranges
//! (10.0.0.0/8 /24s and fd00::/8 /64s), up and usable when the constructor returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{NetNs, run};
use crate::unique_name;

/// How long a new link may take to come up with usable addresses.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// One end of a [`VethLink`]: its namespace, interface and addresses.
#[derive(Clone, Debug)]
pub struct VethEnd {
    /// Name of the namespace the interface is in.
    pub ns: String,
    /// Interface name inside that namespace.
    pub ifname: String,
    /// IPv4 address (prefix /24).
    pub v4: Ipv4Addr,
    /// IPv6 address (prefix /64, added with `nodad`).
    pub v6: Ipv6Addr,
}

impl VethEnd {
    /// `v4:port` as a socket address.
    pub fn v4_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.v4), port)
    }

    /// `[v6]:port` as a socket address.
    pub fn v6_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.v6), port)
    }

    /// Both addresses, IPv4 first, for tests that run once per family.
    pub fn ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.v4), IpAddr::V6(self.v6)]
    }

    /// Adds a second IPv4 address, host `host` of this end's /24, to the interface and
    /// returns it: another source on the same wire (an address that was never opened).
    pub fn add_v4_host(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.v4.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        run(std::process::Command::new("ip").args([
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &self.ifname,
        ]));
        addr
    }

    /// The interface's index inside its namespace (for attaching XDP).
    pub fn ifindex(&self) -> u32 {
        let path = format!("/sys/class/net/{}/ifindex", self.ifname);
        // /sys shows the caller's namespace, so read it through `ip netns exec`, which
        // remounts /sys for the target namespace.
        let out =
            run(std::process::Command::new("ip").args(["netns", "exec", &self.ns, "cat", &path]));
        out.trim().parse().unwrap_or_else(|e| {
            panic!(
                "bad ifindex {out:?} for {} in {}: {e}",
                self.ifname, self.ns
            )
        })
    }
}

/// A veth pair from namespace `a` to namespace `b`. It lives as long as its namespaces: there
/// is nothing to drop.
#[derive(Clone, Debug)]
pub struct VethLink {
    /// The end in the first namespace (host .1 / ::1 for [`VethLink::new`]).
    pub a: VethEnd,
    /// The end in the second namespace (host .2 / ::2 for [`VethLink::new`]).
    pub b: VethEnd,
}

impl VethLink {
    /// A link on subnet number `subnet`: `a` is 10.201.S.1/24 and fd00:201:S::1/64, `b` is
    /// 10.201.S.2 and fd00:201:S::2. Use a different `subnet` for each link of a topology.
    pub fn new(a: &NetNs, b: &NetNs, subnet: u8) -> VethLink {
        let v4 = |host| Ipv4Addr::new(10, 201, subnet, host);
        let v6 = |host| Ipv6Addr::new(0xfd00, 0x201, u16::from(subnet), 0, 0, 0, 0, host);
        VethLink::with_addrs(a, (v4(1), v6(1)), b, (v4(2), v6(2)))
    }

    /// A link with the given addresses on each end; each IPv4 address gets a /24, each IPv6
    /// address a /64. Panics unless they are in 10.0.0.0/8 and fd00::/8.
    pub fn with_addrs(
        a: &NetNs,
        a_addrs: (Ipv4Addr, Ipv6Addr),
        b: &NetNs,
        b_addrs: (Ipv4Addr, Ipv6Addr),
    ) -> VethLink {
        for (v4, v6) in [a_addrs, b_addrs] {
            assert!(
                v4.octets()[0] == 10 && v6.octets()[0] == 0xfd,
                "test addresses must be in 10.0.0.0/8 and fd00::/8, got {v4} and {v6}"
            );
        }
        let a_end = VethEnd {
            ns: a.name().to_owned(),
            ifname: unique_name("xv"),
            v4: a_addrs.0,
            v6: a_addrs.1,
        };
        let b_end = VethEnd {
            ns: b.name().to_owned(),
            ifname: unique_name("xv"),
            v4: b_addrs.0,
            v6: b_addrs.1,
        };
        // Both ends are created directly inside their namespaces, never in the caller's.
        a.exec(&[
            "ip",
            "link",
            "add",
            &a_end.ifname,
            "type",
            "veth",
            "peer",
            "name",
            &b_end.ifname,
            "netns",
            b.name(),
        ]);
        for (ns, end) in [(a, &a_end), (b, &b_end)] {
            configure(ns, end);
        }
        for (ns, end) in [(a, &a_end), (b, &b_end)] {
            wait_usable(ns, end);
        }
        VethLink { a: a_end, b: b_end }
    }
}

/// Addresses and up; DAD off so no address (link-local included) stays tentative.
fn configure(ns: &NetNs, end: &VethEnd) {
    ns.sysctl(&format!("net.ipv6.conf.{}.accept_dad", end.ifname), "0");
    ns.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", end.v4),
        "dev",
        &end.ifname,
    ]);
    ns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/64", end.v6),
        "dev",
        &end.ifname,
        "nodad",
    ]);
    ns.exec(&["ip", "link", "set", &end.ifname, "up"]);
}

/// Waits until the interface has carrier and no tentative IPv6 address.
fn wait_usable(ns: &NetNs, end: &VethEnd) {
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    loop {
        let link = ns.exec(&["ip", "-o", "link", "show", "dev", &end.ifname]);
        let tentative = ns.exec(&[
            "ip",
            "-o",
            "-6",
            "addr",
            "show",
            "dev",
            &end.ifname,
            "tentative",
        ]);
        if link.contains("LOWER_UP") && link.contains("state UP") && tentative.trim().is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "veth {} in {} not usable after {LINK_UP_TIMEOUT:?}: link {link:?}, tentative {tentative:?}",
                end.ifname, end.ns
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
