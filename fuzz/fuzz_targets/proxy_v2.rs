//! PROXY protocol v2 header reader (`web::proxy_v2::read_header`) on arbitrary bytes.
//! Checks: it never panics, consumes exactly the header (16 + length bytes) when it accepts
//! one, and announces exactly the address bytes the header carries.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use xdpgate::web::proxy_v2::{MAX_PAYLOAD, SIGNATURE, read_header};

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
}

fuzz_target!(|data: &[u8]| {
    let mut reader: &[u8] = data;
    let result = RT.with(|rt| rt.block_on(read_header(&mut reader)));
    let Ok(announced) = result else { return };
    assert!(
        data.len() >= 16 && data[..12] == SIGNATURE,
        "accepted without the signature"
    );
    let length = usize::from(u16::from_be_bytes([data[14], data[15]]));
    assert!(length <= MAX_PAYLOAD, "accepted a {length}-byte payload");
    assert_eq!(
        reader.len(),
        data.len() - 16 - length,
        "did not consume exactly the header"
    );
    let payload = &data[16..16 + length];
    let expected = match (data[12], data[13]) {
        (0x20, _) => None,
        (0x21, 0x11) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                payload[0], payload[1], payload[2], payload[3],
            )),
            u16::from_be_bytes([payload[8], payload[9]]),
        )),
        (0x21, 0x21) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&payload[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([payload[32], payload[33]]),
            ))
        }
        (vc, fam) => panic!("accepted version/command {vc:#04x} family {fam:#04x}"),
    };
    assert_eq!(announced, expected);
});
