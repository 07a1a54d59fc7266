//! Where an address in a request came from and why it cannot be opened: the terms both the
//! address rules ([`crate::address`]) and the failure reasons ([`crate::error`]) use.
use std::fmt;

/// Where an address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSource {
    /// The socket address of the HTTP request, supplied by the caller.
    Remote,
    /// The `public_ipv4` field of the boxed payload.
    ReportedIpv4,
    /// The `public_ipv6` field of the boxed payload.
    ReportedIpv6,
}

impl fmt::Display for AddressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressSource::Remote => "remote",
            AddressSource::ReportedIpv4 => "reported IPv4",
            AddressSource::ReportedIpv6 => "reported IPv6",
        })
    }
}

/// Why an address cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AddressProblem {
    /// Not an address of the expected family in canonical text form.
    #[error("not a valid address of the expected family")]
    Unparsable,
    /// `0.0.0.0/8` or `::`.
    #[error("unspecified")]
    Unspecified,
    /// `127/8` or `::1`.
    #[error("loopback")]
    Loopback,
    /// `169.254/16` or `fe80::/10`.
    #[error("link-local")]
    LinkLocal,
    /// `224/4` or `ff00::/8`.
    #[error("multicast")]
    Multicast,
    /// `255.255.255.255`.
    #[error("broadcast")]
    Broadcast,
    /// `240/4` (reserved for future use).
    #[error("reserved")]
    Reserved,
    /// An IPv4-mapped or IPv4-compatible IPv6 address reported as IPv6.
    #[error("IPv4 address in IPv6 form")]
    Ipv4InIpv6,
    /// An address of the gateway itself (an interface address or a configured public address).
    #[error("an address of the gateway itself")]
    GatewayAddress,
}
