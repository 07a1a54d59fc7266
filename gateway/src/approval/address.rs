//! Which client addresses a server opens: the per-server [`AddressPolicy`], and the one rule
//! ([`check_openable`]) of which addresses are never opened.
//!
//! Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) and documentation ranges are allowed
//! on purpose: gateways run in private networks and tests run in network namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub use super::address_kind::{AddressProblem, AddressSource};
use super::error::{Reason, escape_for_log};

/// How a server combines the remote (socket) address with the addresses the client reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressPolicy {
    /// Open the remote address (when it is openable) and every reported address. A relayed
    /// request opens the relayer; explicit only.
    OpenAll,
    /// The default ("proven" addresses): the reported address of the remote's family must
    /// equal the remote address; only the remote address is opened.
    #[default]
    #[serde(alias = "proven")]
    RequireMatch,
    /// Open only the remote address; reported addresses are still checked but not used.
    IgnoreReported,
}

/// Checks that an address is unicast and routable enough to open: the one never-openable list
/// (`docs/PROTOCOL.md` §7), used for approvals and admin grants alike. The gateway's own
/// addresses, known only at run time, are refused on top of it by the approval pipeline.
pub fn check_openable(address: IpAddr) -> Result<(), AddressProblem> {
    match address {
        IpAddr::V4(v4) => check_v4(v4),
        IpAddr::V6(v6) => check_v6(v6),
    }
}

fn check_v4(a: Ipv4Addr) -> Result<(), AddressProblem> {
    let first = a.octets()[0];
    if a.is_broadcast() {
        Err(AddressProblem::Broadcast)
    } else if first == 0 {
        Err(AddressProblem::Unspecified)
    } else if a.is_loopback() {
        Err(AddressProblem::Loopback)
    } else if a.is_link_local() {
        Err(AddressProblem::LinkLocal)
    } else if a.is_multicast() {
        Err(AddressProblem::Multicast)
    } else if first >= 240 {
        Err(AddressProblem::Reserved)
    } else {
        Ok(())
    }
}

fn check_v6(a: Ipv6Addr) -> Result<(), AddressProblem> {
    let seg = a.segments();
    if a.is_unspecified() {
        Err(AddressProblem::Unspecified)
    } else if a.is_loopback() {
        Err(AddressProblem::Loopback)
    } else if a.is_multicast() {
        Err(AddressProblem::Multicast)
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Err(AddressProblem::LinkLocal)
    } else if a.to_ipv4_mapped().is_some() || seg[..6] == [0; 6] {
        Err(AddressProblem::Ipv4InIpv6)
    } else {
        Ok(())
    }
}

/// The addresses a client reported in its boxed payload, as text.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reported<'a> {
    /// `public_ipv4`, if present.
    pub(crate) ipv4: Option<&'a str>,
    /// `public_ipv6`, if present.
    pub(crate) ipv6: Option<&'a str>,
}

/// Reported addresses after parsing and the openable check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CheckedReported {
    pub(crate) ipv4: Option<Ipv4Addr>,
    pub(crate) ipv6: Option<Ipv6Addr>,
}

/// Parses and checks the reported addresses. Every reported address must be valid whatever
/// the policy: a well-behaved client never reports garbage.
pub(crate) fn check_reported(reported: Reported<'_>) -> Result<CheckedReported, Reason> {
    let ipv4 = reported
        .ipv4
        .map(|t| parse_checked::<Ipv4Addr>(t, AddressSource::ReportedIpv4))
        .transpose()?;
    let ipv6 = reported
        .ipv6
        .map(|t| parse_checked::<Ipv6Addr>(t, AddressSource::ReportedIpv6))
        .transpose()?;
    Ok(CheckedReported { ipv4, ipv6 })
}

fn parse_checked<A>(text: &str, source: AddressSource) -> Result<A, Reason>
where
    A: std::str::FromStr + Copy + Into<IpAddr>,
{
    let invalid = |problem| Reason::InvalidAddress {
        origin: source,
        address: escape_for_log(text, 64),
        problem,
    };
    let addr: A = text
        .parse()
        .map_err(|_| invalid(AddressProblem::Unparsable))?;
    check_openable(addr.into()).map_err(invalid)?;
    Ok(addr)
}

/// Chooses the addresses to open for a request from `remote` under `policy`.
///
/// The remote address is canonicalised first (`::ffff:a.b.c.d` becomes `a.b.c.d`). The result
/// is non-empty, free of duplicates, IPv4 before IPv6.
pub fn select_addresses(
    policy: AddressPolicy,
    remote: IpAddr,
    reported_ipv4: Option<Ipv4Addr>,
    reported_ipv6: Option<Ipv6Addr>,
) -> Result<Vec<IpAddr>, Reason> {
    let remote = remote.to_canonical();
    let remote_ok = check_openable(remote);
    let remote_invalid = |problem| Reason::InvalidAddress {
        origin: AddressSource::Remote,
        address: remote.to_string(),
        problem,
    };
    let mut open: Vec<IpAddr> = Vec::with_capacity(3);
    match policy {
        AddressPolicy::OpenAll => {
            if remote_ok.is_ok() {
                open.push(remote);
            }
            open.extend(reported_ipv4.map(IpAddr::V4));
            open.extend(reported_ipv6.map(IpAddr::V6));
            if open.is_empty() {
                return Err(Reason::NoOpenableAddress {
                    remote: remote.to_string(),
                });
            }
        }
        AddressPolicy::RequireMatch => {
            remote_ok.map_err(remote_invalid)?;
            let reported = match remote {
                IpAddr::V4(_) => reported_ipv4.map(IpAddr::V4),
                IpAddr::V6(_) => reported_ipv6.map(IpAddr::V6),
            };
            if reported != Some(remote) {
                return Err(Reason::AddressMismatch {
                    reported: reported.map_or_else(|| "none".to_owned(), |a| a.to_string()),
                    remote: remote.to_string(),
                });
            }
            open.push(remote);
        }
        AddressPolicy::IgnoreReported => {
            remote_ok.map_err(remote_invalid)?;
            open.push(remote);
        }
    }
    open.sort_by_key(|a| (a.is_ipv6(), *a));
    open.dedup();
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    #[test]
    fn openable_table() {
        let cases: &[(&str, Result<(), AddressProblem>)] = &[
            ("10.1.2.3", Ok(())),
            ("192.168.0.1", Ok(())),
            ("203.0.113.9", Ok(())),
            ("8.8.8.8", Ok(())),
            ("fd00::1", Ok(())),
            ("2001:db8::1", Ok(())),
            ("2a00:1450::1", Ok(())),
            ("0.0.0.0", Err(AddressProblem::Unspecified)),
            ("0.1.2.3", Err(AddressProblem::Unspecified)),
            ("127.0.0.1", Err(AddressProblem::Loopback)),
            ("127.9.9.9", Err(AddressProblem::Loopback)),
            ("169.254.1.1", Err(AddressProblem::LinkLocal)),
            ("224.0.0.1", Err(AddressProblem::Multicast)),
            ("239.255.255.250", Err(AddressProblem::Multicast)),
            ("255.255.255.255", Err(AddressProblem::Broadcast)),
            ("240.0.0.1", Err(AddressProblem::Reserved)),
            ("::", Err(AddressProblem::Unspecified)),
            ("::1", Err(AddressProblem::Loopback)),
            ("fe80::1", Err(AddressProblem::LinkLocal)),
            ("febf::1", Err(AddressProblem::LinkLocal)),
            ("ff02::1", Err(AddressProblem::Multicast)),
            ("::ffff:10.0.0.1", Err(AddressProblem::Ipv4InIpv6)),
            ("::10.0.0.1", Err(AddressProblem::Ipv4InIpv6)),
        ];
        for (text, want) in cases {
            assert_eq!(check_openable(ip(text)), *want, "{text}");
        }
    }

    #[test]
    fn reported_must_parse_in_its_family() {
        let bad = check_reported(Reported {
            ipv4: Some("2001:db8::1"),
            ipv6: None,
        });
        assert!(matches!(
            bad,
            Err(Reason::InvalidAddress {
                origin: AddressSource::ReportedIpv4,
                problem: AddressProblem::Unparsable,
                ..
            })
        ));
        let bad = check_reported(Reported {
            ipv4: None,
            ipv6: Some("fe80::2"),
        });
        assert!(matches!(
            bad,
            Err(Reason::InvalidAddress {
                problem: AddressProblem::LinkLocal,
                ..
            })
        ));
        let ok = check_reported(Reported {
            ipv4: Some("10.0.0.2"),
            ipv6: Some("fd00::2"),
        });
        assert!(matches!(
            ok,
            Ok(CheckedReported {
                ipv4: Some(_),
                ipv6: Some(_)
            })
        ));
    }

    #[test]
    fn open_all_unions_and_dedups() {
        let v4: Ipv4Addr = "10.0.0.2".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let v6: Ipv6Addr = "fd00::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let got = select_addresses(
            AddressPolicy::OpenAll,
            ip("::ffff:10.0.0.2"),
            Some(v4),
            Some(v6),
        );
        assert_eq!(got, Ok(vec![ip("10.0.0.2"), ip("fd00::2")]));
        let got = select_addresses(AddressPolicy::OpenAll, ip("127.0.0.1"), Some(v4), None);
        assert_eq!(got, Ok(vec![ip("10.0.0.2")]));
        let got = select_addresses(AddressPolicy::OpenAll, ip("127.0.0.1"), None, None);
        assert!(matches!(got, Err(Reason::NoOpenableAddress { .. })));
    }

    #[test]
    fn require_match_compares_the_remote_family_only() {
        let v4: Ipv4Addr = "10.0.0.2".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let v6: Ipv6Addr = "fd00::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
        let p = AddressPolicy::RequireMatch;
        assert_eq!(
            select_addresses(p, ip("10.0.0.2"), Some(v4), Some(v6)),
            Ok(vec![ip("10.0.0.2")])
        );
        assert!(matches!(
            select_addresses(p, ip("10.0.0.3"), Some(v4), Some(v6)),
            Err(Reason::AddressMismatch { .. })
        ));
        assert!(matches!(
            select_addresses(p, ip("10.0.0.2"), None, Some(v6)),
            Err(Reason::AddressMismatch { .. })
        ));
        assert!(matches!(
            select_addresses(p, ip("127.0.0.1"), Some(v4), None),
            Err(Reason::InvalidAddress {
                origin: AddressSource::Remote,
                ..
            })
        ));
    }

    #[test]
    fn ignore_reported_opens_remote_only() {
        let v4: Ipv4Addr = "10.0.0.9".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let p = AddressPolicy::IgnoreReported;
        assert_eq!(
            select_addresses(p, ip("fd00::5"), Some(v4), None),
            Ok(vec![ip("fd00::5")])
        );
        assert!(matches!(
            select_addresses(p, ip("::"), Some(v4), None),
            Err(Reason::InvalidAddress {
                problem: AddressProblem::Unspecified,
                ..
            })
        ));
    }
}
