//! Who the client is: the TCP peer, or, when the peer is a trusted proxy, the address that
//! proxy (and any trusted proxies before it) recorded in `X-Forwarded-For`.
//!
//! The connection-level address lives in [`ConnInfo`], set by the accept loop. PROXY protocol
//! v2 will be read there, before TLS, and will fill [`ConnInfo::proxied`]; [`client_ip`] then
//! applies the same trust rule to it.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

use crate::config::IpNet;

/// Most `X-Forwarded-For` hops considered; a longer chain is refused.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// What the accept loop knows about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The source address a PROXY protocol header announced (not implemented yet: `None`).
    pub proxied: Option<SocketAddr>,
}

impl ConnInfo {
    /// A direct connection from `peer`.
    pub fn direct(peer: SocketAddr) -> Self {
        Self {
            peer,
            proxied: None,
        }
    }
}

/// A trusted proxy sent a forwarding header that cannot be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    /// An entry is not an address (or the header is not ASCII).
    #[error("X-Forwarded-For entry {0:?} is not an IP address")]
    BadEntry(String),
    /// More than [`MAX_FORWARDED_HOPS`] entries.
    #[error("X-Forwarded-For has more than {MAX_FORWARDED_HOPS} entries")]
    TooManyHops,
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The client's address. An untrusted peer is the client. A trusted peer's
/// `X-Forwarded-For` (all header lines, in order) is walked from the right, skipping trusted
/// hops; the first untrusted entry is the client. If every entry is trusted the leftmost one
/// is, and a trusted peer that sent no header is itself the client. IPv4-mapped IPv6
/// addresses are taken as IPv4.
pub fn client_ip<'a>(
    conn: &ConnInfo,
    forwarded_for: impl Iterator<Item = &'a HeaderValue>,
    trusted: &[IpNet],
) -> Result<IpAddr, ForwardedError> {
    let mut current = conn.peer.ip().to_canonical();
    if !is_trusted(current, trusted) {
        return Ok(current);
    }
    if let Some(proxied) = conn.proxied {
        current = proxied.ip().to_canonical();
        if !is_trusted(current, trusted) {
            return Ok(current);
        }
    }
    // Entries left of the client are whatever the client wrote: they are never parsed.
    let values: Vec<&HeaderValue> = forwarded_for.collect();
    let entries = values
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|part| !part.is_empty());
    for (hop, part) in entries.enumerate() {
        if hop == MAX_FORWARDED_HOPS {
            return Err(ForwardedError::TooManyHops);
        }
        current = parse_entry(part)?;
        if !is_trusted(current, trusted) {
            return Ok(current);
        }
    }
    Ok(current)
}

/// An address, optionally with a port (`198.51.100.7:4711`, `[2001:db8::1]:4711`).
fn parse_entry(raw: &[u8]) -> Result<IpAddr, ForwardedError> {
    let bad = || {
        ForwardedError::BadEntry(String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned())
    };
    let text = std::str::from_utf8(raw).map_err(|_| bad())?;
    let ip = text
        .parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .map_err(|_| bad())?;
    Ok(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn resolve(peer: &str, headers: &[&str], trusted: &[&str]) -> Result<IpAddr, ForwardedError> {
        let conn = ConnInfo::direct(SocketAddr::new(peer.parse().unwrap(), 40000));
        let values: Vec<HeaderValue> = headers
            .iter()
            .map(|h| HeaderValue::from_str(h).unwrap())
            .collect();
        client_ip(&conn, values.iter(), &nets(trusted))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(
            resolve("203.0.113.9", &["198.51.100.7"], &["10.0.0.0/8"]),
            Ok(ip("203.0.113.9"))
        );
        assert_eq!(
            resolve("203.0.113.9", &["garbage"], &[]),
            Ok(ip("203.0.113.9")),
            "header ignored"
        );
        assert_eq!(
            resolve("::ffff:203.0.113.9", &[], &[]),
            Ok(ip("203.0.113.9")),
            "mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn trusted_peer_yields_the_last_untrusted_hop() {
        let trusted = ["10.0.0.0/8", "2001:db8:ff::/48"];
        // client, spoofed entry the client added, then the real chain.
        assert_eq!(
            resolve("10.0.0.2", &["1.2.3.4, 198.51.100.7, 10.0.0.1"], &trusted),
            Ok(ip("198.51.100.7")),
            "the entry left of the trusted hops is the client; the spoofed 1.2.3.4 is ignored"
        );
        assert_eq!(
            resolve("10.0.0.2", &["1.2.3.4", "198.51.100.7,10.0.0.1"], &trusted),
            Ok(ip("198.51.100.7")),
            "multiple header lines are one list"
        );
        assert_eq!(
            resolve(
                "10.0.0.2",
                &["[2001:db8::7]:5555, 2001:db8:ff::1"],
                &trusted
            ),
            Ok(ip("2001:db8::7"))
        );
        assert_eq!(
            resolve("10.0.0.2", &["198.51.100.7:1234"], &trusted),
            Ok(ip("198.51.100.7")),
            "ports are dropped"
        );
        assert_eq!(
            resolve("10.0.0.2", &["::ffff:198.51.100.7"], &trusted),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn trusted_peer_without_header_or_with_only_trusted_hops() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            resolve("10.0.0.2", &[], &trusted),
            Ok(ip("10.0.0.2")),
            "no header: the proxy itself"
        );
        assert_eq!(
            resolve("10.0.0.2", &["10.9.9.9, 10.0.0.1"], &trusted),
            Ok(ip("10.9.9.9")),
            "all trusted: the leftmost"
        );
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_refused() {
        let trusted = ["10.0.0.0/8"];
        assert!(matches!(
            resolve("10.0.0.2", &["unknown"], &trusted),
            Err(ForwardedError::BadEntry(_))
        ));
        assert!(matches!(
            resolve("10.0.0.2", &["198.51.100.7, bogus, 10.0.0.1"], &trusted),
            Err(ForwardedError::BadEntry(_))
        ));
        let long = vec!["10.0.0.1"; MAX_FORWARDED_HOPS + 1].join(",");
        assert_eq!(
            resolve("10.0.0.2", &[&long], &trusted),
            Err(ForwardedError::TooManyHops)
        );
        // What the client wrote left of itself is never looked at, even if it is junk.
        let junk = HeaderValue::from_bytes(b"\xff\xfe, not-an-ip").unwrap();
        let conn = ConnInfo::direct("10.0.0.2:1".parse().unwrap());
        let values = [junk, HeaderValue::from_static("198.51.100.7, 10.0.0.1")];
        assert_eq!(
            client_ip(&conn, values.iter(), &nets(&trusted)),
            Ok(ip("198.51.100.7"))
        );
        let many = format!("{}, 198.51.100.7", vec!["192.0.2.1"; 100].join(","));
        assert_eq!(
            resolve("10.0.0.2", &[&many], &trusted),
            Ok(ip("198.51.100.7")),
            "a long client-written prefix is fine"
        );
        // Empty elements (`a,,b`) are skipped, as proxies sometimes write them.
        assert_eq!(
            resolve("10.0.0.2", &["198.51.100.7,,10.0.0.1"], &trusted),
            Ok(ip("198.51.100.7"))
        );
    }
}
