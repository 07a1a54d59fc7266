//! The differential target's fixed gate state: guarded services and openings, shared by the
//! kernel harness (which installs them) and the reference classifier (which reads them).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const SERVER: u32 = 7;
pub const OTHER_SERVER: u32 = 8;

pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const OTHER_LOCAL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const OTHER_LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const OTHER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const EXPIRED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const OTHER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11);
pub const EXPIRED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x12);

/// UDP and TCP guarded on any local address for [`SERVER`].
pub const UDP_PORT: u16 = 1194;
pub const TCP_PORT: u16 = 443;
/// UDP guarded only on the `LOCAL_*` addresses.
pub const EXACT_PORT: u16 = 51820;
/// TCP: on `LOCAL_*` for [`OTHER_SERVER`], on any other address for [`SERVER`].
pub const SHARED_PORT: u16 = 8443;
/// Not guarded.
pub const FREE_PORT: u16 = 8080;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// A guarded service: protocol, port, family, and `Some` address or any local address.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    pub v6: bool,
    pub proto: u8,
    pub port: u16,
    pub addr: Option<IpAddr>,
    pub server: u32,
}

const fn any(v6: bool, proto: u8, port: u16, server: u32) -> Service {
    Service {
        v6,
        proto,
        port,
        addr: None,
        server,
    }
}

/// Every guarded service.
pub const SERVICES: [Service; 10] = [
    any(false, UDP, UDP_PORT, SERVER),
    any(false, TCP, TCP_PORT, SERVER),
    any(true, UDP, UDP_PORT, SERVER),
    any(true, TCP, TCP_PORT, SERVER),
    Service {
        v6: false,
        proto: UDP,
        port: EXACT_PORT,
        addr: Some(IpAddr::V4(LOCAL_V4)),
        server: SERVER,
    },
    Service {
        v6: true,
        proto: UDP,
        port: EXACT_PORT,
        addr: Some(IpAddr::V6(LOCAL_V6)),
        server: SERVER,
    },
    Service {
        v6: false,
        proto: TCP,
        port: SHARED_PORT,
        addr: Some(IpAddr::V4(LOCAL_V4)),
        server: OTHER_SERVER,
    },
    any(false, TCP, SHARED_PORT, SERVER),
    Service {
        v6: true,
        proto: TCP,
        port: SHARED_PORT,
        addr: Some(IpAddr::V6(LOCAL_V6)),
        server: OTHER_SERVER,
    },
    any(true, TCP, SHARED_PORT, SERVER),
];

/// An opening: server, source, and whether it is still unexpired.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub server: u32,
    pub addr: IpAddr,
    pub unexpired: bool,
}

/// Every opening (the expired ones are in the map with an expiry in the past).
pub const GRANTS: [Grant; 6] = [
    Grant {
        server: SERVER,
        addr: IpAddr::V4(CLIENT_V4),
        unexpired: true,
    },
    Grant {
        server: SERVER,
        addr: IpAddr::V6(CLIENT_V6),
        unexpired: true,
    },
    Grant {
        server: OTHER_SERVER,
        addr: IpAddr::V4(OTHER_CLIENT_V4),
        unexpired: true,
    },
    Grant {
        server: OTHER_SERVER,
        addr: IpAddr::V6(OTHER_CLIENT_V6),
        unexpired: true,
    },
    Grant {
        server: SERVER,
        addr: IpAddr::V4(EXPIRED_V4),
        unexpired: false,
    },
    Grant {
        server: SERVER,
        addr: IpAddr::V6(EXPIRED_V6),
        unexpired: false,
    },
];
