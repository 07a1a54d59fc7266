//! X-Forwarded-For parser (`web::client_ip`) with arbitrary peers, PROXY-announced sources,
//! trusted networks and header lines. Checks: no panic; an untrusted peer is always the
//! client whatever the headers say; a result is canonical (never IPv4-mapped IPv6), and is
//! the peer, the PROXY source, or an entry of the header that no trusted network holds unless
//! every entry is trusted.
#![no_main]
use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use xdpgate::{
    config::IpNet,
    web::{ConnInfo, client_ip},
};

#[derive(Arbitrary, Debug)]
struct Input {
    peer: SocketAddr,
    proxied: Option<SocketAddr>,
    /// Trusted networks as text (`addr/prefix`), parsed like the config does.
    trusted: Vec<String>,
    headers: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let trusted: Vec<IpNet> = input
        .trusted
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    let values: Vec<HeaderValue> = input
        .headers
        .iter()
        .filter_map(|h| HeaderValue::from_bytes(h).ok())
        .collect();
    let conn = ConnInfo {
        peer: input.peer,
        proxied: input.proxied,
    };
    let result = client_ip(&conn, values.iter(), &trusted);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = input.peer.ip().to_canonical();
    if !is_trusted(peer) {
        assert_eq!(result, Ok(peer), "an untrusted peer must be the client");
        return;
    }
    let Ok(ip) = result else { return };
    assert_eq!(ip, ip.to_canonical(), "result {ip} is not canonical");
    let proxied = input.proxied.map(|p| p.ip().to_canonical());
    if ip == peer || Some(ip) == proxied {
        return;
    }
    // Otherwise the address came from a header entry.
    let entries: Vec<IpAddr> = values
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|e| std::str::from_utf8(e).ok())
        .map(str::trim)
        .filter_map(|e| {
            e.parse::<IpAddr>()
                .ok()
                .or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))
        })
        .map(|a| a.to_canonical())
        .collect();
    assert!(entries.contains(&ip), "result {ip} is in no header entry");
});
