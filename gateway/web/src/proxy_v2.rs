//! PROXY protocol version 2 (haproxy's `send-proxy-v2`): the binary header a load balancer
//! writes before the client's first byte, announcing the client's address.
//!
//! It is read only on connections from `proxy_protocol_peers`, and there it is required:
//! such a connection without a valid header is closed. A `LOCAL` header (the balancer's own
//! health checks) announces nothing. Exactly the header's bytes are consumed, so TLS follows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The 12-byte signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Largest address block plus TLVs accepted.
pub const MAX_PAYLOAD: usize = 1024;

/// A PROXY header that cannot be believed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading failed or the peer closed early.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The first bytes are not a PROXY v2 signature.
    #[error("no PROXY v2 signature")]
    NoSignature,
    /// Version is not 2 or the command is unknown.
    #[error("unsupported PROXY version/command byte {0:#04x}")]
    Version(u8),
    /// The address block is longer than allowed or shorter than its family needs.
    #[error("bad PROXY address block length {0}")]
    Length(usize),
    /// The family/transport is not TCP over IPv4 or IPv6.
    #[error("unsupported PROXY family {0:#04x}")]
    Family(u8),
}

/// Reads one PROXY v2 header; `Ok(None)` for `LOCAL`, else the announced source.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut fixed = [0u8; 16];
    reader.read_exact(&mut fixed).await?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyError::NoSignature);
    }
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > MAX_PAYLOAD {
        return Err(ProxyError::Length(length));
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await?;
    parse(fixed[12], fixed[13], &payload)
}

/// Interprets the version/command byte, the family byte and the payload.
pub fn parse(
    version_command: u8,
    family: u8,
    payload: &[u8],
) -> Result<Option<SocketAddr>, ProxyError> {
    match version_command {
        0x20 => return Ok(None),
        0x21 => {}
        other => return Err(ProxyError::Version(other)),
    }
    match family {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            let block = payload.get(..12).ok_or(ProxyError::Length(payload.len()))?;
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let port = u16::from_be_bytes([block[8], block[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6.
        0x21 => {
            let block = payload.get(..36).ok_or(ProxyError::Length(payload.len()))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            let port = u16::from_be_bytes([block[32], block[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        other => Err(ProxyError::Family(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(vc: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[vc, fam]);
        h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[tokio::test]
    async fn v4_v6_local_and_exact_consumption() {
        let mut v4 = [198, 51, 100, 7, 10, 0, 0, 1, 0x12, 0x34, 0x20, 0xfb].to_vec();
        v4.extend_from_slice(&[0x03, 0, 2, 0xaa, 0xbb]); // a TLV is skipped
        let mut bytes = header(0x21, 0x11, &v4);
        bytes.extend_from_slice(b"\x16\x03\x01TLS");
        let mut reader = bytes.as_slice();
        assert_eq!(
            read_header(&mut reader).await.unwrap(),
            Some("198.51.100.7:4660".parse().unwrap())
        );
        assert_eq!(reader, b"\x16\x03\x01TLS", "only the header is consumed");

        let mut v6 = vec![0u8; 36];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 7;
        v6[32] = 0x01;
        let bytes = header(0x21, 0x21, &v6);
        assert_eq!(
            read_header(&mut bytes.as_slice()).await.unwrap(),
            Some("[2001::7]:256".parse().unwrap())
        );

        let bytes = header(0x20, 0x00, &[]);
        assert_eq!(
            read_header(&mut bytes.as_slice()).await.unwrap(),
            None,
            "LOCAL announces nothing"
        );
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec();
        assert!(matches!(
            read_header(&mut tls.as_slice()).await,
            Err(ProxyError::NoSignature)
        ));
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec();
        assert!(matches!(
            read_header(&mut v1.as_slice()).await,
            Err(ProxyError::NoSignature)
        ));
        assert!(matches!(
            read_header(&mut header(0x31, 0x11, &[0; 12]).as_slice()).await,
            Err(ProxyError::Version(0x31))
        ));
        assert!(matches!(
            read_header(&mut header(0x21, 0x11, &[0; 8]).as_slice()).await,
            Err(ProxyError::Length(8))
        ));
        assert!(matches!(
            read_header(&mut header(0x21, 0x12, &[0; 12]).as_slice()).await,
            Err(ProxyError::Family(0x12))
        ));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_header(&mut long.as_slice()).await,
            Err(ProxyError::Length(65535))
        ));
        let short = header(0x21, 0x11, &[0; 12]);
        assert!(
            matches!(read_header(&mut &short[..20]).await, Err(ProxyError::Io(_))),
            "truncated"
        );
    }
}
