//! BPF_PROG_TEST_RUN tier: crafted frames run through the real XDP program in the kernel,
//! asserting the verdict and the map side effects (per-service and parse-path counters,
//! `last_seen_ns`). Each test loads its own program, so the maps start empty.
//!
//! Needs root; the tests panic (never skip) without it.
mod support;

use std::net::IpAddr;

use aya::{programs::ProgramError, sys::SyscallError};
use gateway_common::{GlobalCounter, LAST_SEEN_GRANULARITY_NS, Opening};
use support::{
    ANY_V4_TCP, ANY_V4_UDP, ANY_V6_TCP, ANY_V6_UDP, CLIENT_V4, CLIENT_V6, EXACT_OTHER_V4,
    EXACT_OTHER_V6, EXACT_PORT, EXACT_V4_UDP, EXACT_V6_UDP, Effect, FREE_PORT, Gate, LOCAL_V4,
    LOCAL_V6, OTHER_CLIENT_V4, OTHER_CLIENT_V6, OTHER_LOCAL_V4, OTHER_LOCAL_V6, OTHER_SERVER,
    SERVER, SHARED_PORT, TCP_PORT, UDP_PORT, Verdict, WILDCARD_V4, WILDCARD_V6,
    frames::{self, *},
};
use xdpgate::clock::mono_ns;

use Effect::{Counted, Dropped, Nothing, Passed};
use GlobalCounter::*;
use Verdict::{Drop, Pass};

/// One of the four guarded flows (IPv4/IPv6 x UDP/TCP) and the service slot that gates it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    name: &'static str,
    proto: u8,
    client: IpAddr,
    other_client: IpAddr,
    local: IpAddr,
    port: u16,
    slot: u32,
}

const FLOWS: [Flow; 4] = [
    Flow {
        name: "IPv4 UDP",
        proto: PROTO_UDP,
        client: IpAddr::V4(CLIENT_V4),
        other_client: IpAddr::V4(OTHER_CLIENT_V4),
        local: IpAddr::V4(LOCAL_V4),
        port: UDP_PORT,
        slot: ANY_V4_UDP,
    },
    Flow {
        name: "IPv4 TCP",
        proto: PROTO_TCP,
        client: IpAddr::V4(CLIENT_V4),
        other_client: IpAddr::V4(OTHER_CLIENT_V4),
        local: IpAddr::V4(LOCAL_V4),
        port: TCP_PORT,
        slot: ANY_V4_TCP,
    },
    Flow {
        name: "IPv6 UDP",
        proto: PROTO_UDP,
        client: IpAddr::V6(CLIENT_V6),
        other_client: IpAddr::V6(OTHER_CLIENT_V6),
        local: IpAddr::V6(LOCAL_V6),
        port: UDP_PORT,
        slot: ANY_V6_UDP,
    },
    Flow {
        name: "IPv6 TCP",
        proto: PROTO_TCP,
        client: IpAddr::V6(CLIENT_V6),
        other_client: IpAddr::V6(OTHER_CLIENT_V6),
        local: IpAddr::V6(LOCAL_V6),
        port: TCP_PORT,
        slot: ANY_V6_TCP,
    },
];

const V4_FLOWS: [Flow; 2] = [FLOWS[0], FLOWS[1]];
const V6_FLOWS: [Flow; 2] = [FLOWS[2], FLOWS[3]];

impl Flow {
    /// The flow's transport header (UDP header or TCP SYN to the guarded port).
    fn l4(&self) -> Vec<u8> {
        frames::l4(self.proto, self.port)
    }

    /// A well-formed frame of this flow from its client.
    fn frame(&self) -> Vec<u8> {
        self.frame_from(self.client)
    }

    fn frame_from(&self, src: IpAddr) -> Vec<u8> {
        ip_frame(src, self.local, self.proto, &self.l4())
    }

    fn v4(&self) -> Ipv4 {
        match (self.client, self.local) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Ipv4::new(src, dst, self.proto),
            _ => panic!("{} is not an IPv4 flow", self.name),
        }
    }

    fn v6_frame(&self, next_header: u8, payload: &[u8]) -> Vec<u8> {
        match (self.client, self.local) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                ethernet(&[], ETH_P_IPV6, &ipv6(src, dst, next_header, payload))
            }
            _ => panic!("{} is not an IPv6 flow", self.name),
        }
    }

    fn v6_chain_frame(&self, chain: &[u8]) -> Vec<u8> {
        match (self.client, self.local) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet(
                &[],
                ETH_P_IPV6,
                &ipv6_chain(src, dst, chain, self.proto, &self.l4()),
            ),
            _ => panic!("{} is not an IPv6 flow", self.name),
        }
    }
}

/// A gate with every flow's client opened for [`SERVER`].
fn opened_gate() -> Gate {
    let mut gate = Gate::load();
    gate.open(SERVER, CLIENT_V4);
    gate.open(SERVER, CLIENT_V6);
    gate
}

/// Runs `frame` on a gate without openings (expect DROP by the service in `slot`), then after
/// opening the client (expect PASS by that service).
fn assert_gated(what: &str, frame: &[u8], slot: u32) {
    let mut gate = Gate::load();
    gate.expect(&format!("{what}, no opening"), frame, Drop, Dropped(slot));
    gate.open(SERVER, CLIENT_V4);
    gate.open(SERVER, CLIENT_V6);
    gate.expect(&format!("{what}, opened"), frame, Pass, Passed(slot));
}

fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// The opening decides.

#[test]
fn guarded_port_without_opening_drops() {
    let mut gate = Gate::load();
    for flow in FLOWS {
        gate.expect(flow.name, &flow.frame(), Drop, Dropped(flow.slot));
    }
}

#[test]
fn resync_without_a_service_unguards_its_port_and_keeps_the_others() {
    let mut gate = Gate::load();
    let udp_any = |f: &&Flow| f.proto == PROTO_UDP;
    gate.resync(|key| !(key.proto == PROTO_UDP && key.port() == UDP_PORT));
    for flow in FLOWS.iter().filter(udp_any) {
        gate.expect(flow.name, &flow.frame(), Pass, Nothing);
    }
    for flow in FLOWS.iter().filter(|f| f.proto == PROTO_TCP) {
        gate.expect(flow.name, &flow.frame(), Drop, Dropped(flow.slot));
    }
    gate.resync(|_| true);
    for flow in FLOWS.iter().filter(udp_any) {
        gate.expect(flow.name, &flow.frame(), Drop, Dropped(flow.slot));
    }
}

/// How far the program's coarse clock may lag `CLOCK_MONOTONIC`: one tick (10 ms at HZ=100),
/// with margin.
const COARSE_CLOCK_LAG_NS: u64 = 20_000_000;

#[test]
fn unexpired_opening_passes_and_records_last_seen() {
    let mut gate = Gate::load();
    for flow in FLOWS {
        let expires_at_ns = mono_ns() + 3_600_000_000_000;
        gate.put_opening(
            SERVER,
            flow.client,
            Opening {
                expires_at_ns,
                last_seen_ns: 0,
            },
        );
        let before = mono_ns() - COARSE_CLOCK_LAG_NS;
        gate.expect(flow.name, &flow.frame(), Pass, Passed(flow.slot));
        let after = gate.opening(SERVER, flow.client);
        assert!(
            (before..=mono_ns()).contains(&after.last_seen_ns),
            "{}: last_seen_ns {} not stamped during the run",
            flow.name,
            after.last_seen_ns
        );
        assert_eq!(
            after.expires_at_ns, expires_at_ns,
            "{}: expiry changed",
            flow.name
        );
    }
}

#[test]
fn last_seen_is_refreshed_at_most_once_per_granularity() {
    let mut gate = Gate::load();
    let expires_at_ns = mono_ns() + 3_600_000_000_000;
    for flow in FLOWS {
        let recent = mono_ns() - LAST_SEEN_GRANULARITY_NS / 2;
        gate.put_opening(
            SERVER,
            flow.client,
            Opening {
                expires_at_ns,
                last_seen_ns: recent,
            },
        );
        gate.expect(flow.name, &flow.frame(), Pass, Passed(flow.slot));
        assert_eq!(
            gate.opening(SERVER, flow.client).last_seen_ns,
            recent,
            "{}: rewritten",
            flow.name
        );

        let stale = mono_ns() - 2 * LAST_SEEN_GRANULARITY_NS;
        gate.put_opening(
            SERVER,
            flow.client,
            Opening {
                expires_at_ns,
                last_seen_ns: stale,
            },
        );
        gate.expect(flow.name, &flow.frame(), Pass, Passed(flow.slot));
        assert!(
            gate.opening(SERVER, flow.client).last_seen_ns > stale,
            "{}: not refreshed",
            flow.name
        );
    }
}

#[test]
fn expired_opening_drops_and_leaves_last_seen_alone() {
    let mut gate = Gate::load();
    let expired = Opening {
        expires_at_ns: mono_ns() - COARSE_CLOCK_LAG_NS,
        last_seen_ns: 0,
    };
    gate.put_opening(SERVER, CLIENT_V4, expired);
    gate.put_opening(SERVER, CLIENT_V6, expired);
    for flow in FLOWS {
        gate.expect(flow.name, &flow.frame(), Drop, Dropped(flow.slot));
        assert_eq!(
            gate.opening(SERVER, flow.client),
            expired,
            "{}: opening touched",
            flow.name
        );
    }
}

#[test]
fn opening_for_another_server_drops() {
    let mut gate = Gate::load();
    gate.open(OTHER_SERVER, CLIENT_V4);
    gate.open(OTHER_SERVER, CLIENT_V6);
    for flow in FLOWS {
        gate.expect(flow.name, &flow.frame(), Drop, Dropped(flow.slot));
    }
}

#[test]
fn opening_for_another_source_drops() {
    let mut gate = Gate::load();
    gate.open(SERVER, OTHER_CLIENT_V4);
    gate.open(SERVER, OTHER_CLIENT_V6);
    for flow in FLOWS {
        gate.expect(flow.name, &flow.frame(), Drop, Dropped(flow.slot));
        gate.expect(
            flow.name,
            &flow.frame_from(flow.other_client),
            Pass,
            Passed(flow.slot),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What is not guarded passes untouched.

#[test]
fn unguarded_port_passes_without_counting() {
    let mut gate = Gate::load();
    for flow in FLOWS {
        let frame = ip_frame(
            flow.client,
            flow.local,
            flow.proto,
            &l4(flow.proto, FREE_PORT),
        );
        gate.expect(flow.name, &frame, Pass, Nothing);
    }
}

#[test]
fn guarded_port_of_the_other_protocol_passes() {
    let mut gate = Gate::load();
    for flow in FLOWS {
        let other = if flow.proto == PROTO_UDP {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let frame = ip_frame(flow.client, flow.local, other, &l4(other, flow.port));
        gate.expect(flow.name, &frame, Pass, Nothing);
    }
}

#[test]
fn arp_passes_without_counting() {
    let mut gate = Gate::load();
    gate.expect(
        "ARP request",
        &ethernet(&[], ETH_P_ARP, &arp_request()),
        Pass,
        Nothing,
    );
}

#[test]
fn icmp_and_icmpv6_pass_without_counting() {
    let mut gate = Gate::load();
    let icmp = ip_frame(CLIENT_V4.into(), LOCAL_V4.into(), PROTO_ICMP, &icmp_echo(8));
    gate.expect("ICMP echo", &icmp, Pass, Nothing);
    let icmpv6 = ip_frame(
        CLIENT_V6.into(),
        LOCAL_V6.into(),
        PROTO_ICMPV6,
        &icmp_echo(128),
    );
    gate.expect("ICMPv6 echo", &icmpv6, Pass, Nothing);
}

// ---------------------------------------------------------------------------------------------
// Exact-address and any-address services.

#[test]
fn exact_address_service_guards_only_its_address() {
    let mut gate = Gate::load();
    let cases = [
        (
            IpAddr::from(CLIENT_V4),
            IpAddr::from(LOCAL_V4),
            IpAddr::from(OTHER_LOCAL_V4),
            EXACT_V4_UDP,
        ),
        (
            IpAddr::from(CLIENT_V6),
            IpAddr::from(LOCAL_V6),
            IpAddr::from(OTHER_LOCAL_V6),
            EXACT_V6_UDP,
        ),
    ];
    for (client, bound, other, slot) in cases {
        let to_bound = ip_frame(client, bound, PROTO_UDP, &udp(EXACT_PORT, 0));
        let to_other = ip_frame(client, other, PROTO_UDP, &udp(EXACT_PORT, 0));
        gate.expect(
            &format!("to {bound}, no opening"),
            &to_bound,
            Drop,
            Dropped(slot),
        );
        gate.expect(
            &format!("to {other}, not guarded"),
            &to_other,
            Pass,
            Nothing,
        );
        gate.open(SERVER, client);
        gate.expect(
            &format!("to {bound}, opened"),
            &to_bound,
            Pass,
            Passed(slot),
        );
    }
}

#[test]
fn exact_address_service_takes_precedence_over_wildcard() {
    // SHARED_PORT: bound to LOCAL_* for OTHER_SERVER, on any address for SERVER.
    let mut gate = opened_gate();
    let cases = [
        (
            IpAddr::from(CLIENT_V4),
            LOCAL_V4.into(),
            OTHER_LOCAL_V4.into(),
            EXACT_OTHER_V4,
            WILDCARD_V4,
        ),
        (
            IpAddr::from(CLIENT_V6),
            LOCAL_V6.into(),
            OTHER_LOCAL_V6.into(),
            EXACT_OTHER_V6,
            WILDCARD_V6,
        ),
    ];
    for (client, bound, other, exact_slot, wildcard_slot) in cases {
        let to_bound = ip_frame(client, bound, PROTO_TCP, &tcp(SHARED_PORT));
        let to_other = ip_frame(client, other, PROTO_TCP, &tcp(SHARED_PORT));
        gate.expect(
            &format!("{client} to {other} (wildcard)"),
            &to_other,
            Pass,
            Passed(wildcard_slot),
        );
        gate.expect(
            &format!("{client} to {bound} (exact)"),
            &to_bound,
            Drop,
            Dropped(exact_slot),
        );
        gate.open(OTHER_SERVER, client);
        gate.expect(
            &format!("{client} to {bound}, opened"),
            &to_bound,
            Pass,
            Passed(exact_slot),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// VLAN tags.

fn tagged(tags: &[u16], flow: &Flow) -> Vec<u8> {
    let untagged = flow.frame();
    ethernet(
        tags,
        u16::from_be_bytes([untagged[12], untagged[13]]),
        &untagged[ETH_HDR_LEN..],
    )
}

#[test]
fn single_802_1q_tag_is_gated() {
    for flow in FLOWS {
        assert_gated(
            &format!("{} in 802.1Q", flow.name),
            &tagged(&[ETH_P_8021Q], &flow),
            flow.slot,
        );
    }
}

#[test]
fn double_802_1ad_802_1q_tags_are_gated() {
    for flow in FLOWS {
        let frame = tagged(&[ETH_P_8021AD, ETH_P_8021Q], &flow);
        assert_gated(
            &format!("{} in 802.1ad+802.1Q", flow.name),
            &frame,
            flow.slot,
        );
    }
}

#[test]
fn triple_tag_drops_as_too_deep() {
    let mut gate = opened_gate();
    for flow in FLOWS {
        let frame = tagged(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], &flow);
        gate.expect(flow.name, &frame, Drop, Counted(VlanTooDeep));
    }
    let arp = ethernet(
        &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
        ETH_P_ARP,
        &arp_request(),
    );
    gate.expect("ARP under three tags", &arp, Drop, Counted(VlanTooDeep));
}

// ---------------------------------------------------------------------------------------------
// Truncation.

/// A complete frame to a guarded service, which passes once its client is opened.
struct Complete {
    name: String,
    /// Offset of the IP header.
    l3: usize,
    frame: Vec<u8>,
    /// Bytes of data after the transport header.
    data: usize,
}

/// First fragments carry this much data after the transport header.
const FRAGMENT_DATA: usize = 16;

fn complete_guarded_frames() -> Vec<Complete> {
    let complete = |name: String, l3, frame, data| Complete {
        name,
        l3,
        frame,
        data,
    };
    let mut out: Vec<Complete> = FLOWS
        .iter()
        .map(|flow| complete(flow.name.to_string(), ETH_HDR_LEN, flow.frame(), 0))
        .collect();
    for flow in V4_FLOWS {
        let packet = Ipv4 {
            option_words: 3,
            ..flow.v4()
        }
        .packet(&flow.l4());
        out.push(complete(
            format!("{} with options", flow.name),
            ETH_HDR_LEN,
            ethernet(&[], ETH_P_IPV4, &packet),
            0,
        ));
        let data = cat(&[&flow.l4(), &[0; FRAGMENT_DATA]]);
        let packet = Ipv4 {
            frag: IPV4_MORE_FRAGMENTS,
            ..flow.v4()
        }
        .packet(&data);
        out.push(complete(
            format!("{} first fragment", flow.name),
            ETH_HDR_LEN,
            ethernet(&[], ETH_P_IPV4, &packet),
            FRAGMENT_DATA,
        ));
    }
    for flow in V6_FLOWS {
        let frame = flow.v6_chain_frame(&[IPV6_HOP_BY_HOP, IPV6_DEST_OPTS, IPV6_ROUTING, IPV6_AH]);
        out.push(complete(
            format!("{} after 4 extension headers", flow.name),
            ETH_HDR_LEN,
            frame,
            0,
        ));
        let payload = cat(&[
            &ipv6_fragment(flow.proto, 0, true),
            &flow.l4(),
            &[0; FRAGMENT_DATA],
        ]);
        let frame = flow.v6_frame(IPV6_FRAGMENT, &payload);
        out.push(complete(
            format!("{} first fragment", flow.name),
            ETH_HDR_LEN,
            frame,
            FRAGMENT_DATA,
        ));
    }
    for flow in FLOWS {
        let frame = tagged(&[ETH_P_8021AD, ETH_P_8021Q], &flow);
        let l3 = ETH_HDR_LEN + 2 * VLAN_TAG_LEN;
        out.push(complete(
            format!("{} in 802.1ad+802.1Q", flow.name),
            l3,
            frame,
            0,
        ));
    }
    out
}

#[test]
fn every_truncation_of_an_opened_guarded_frame_drops() {
    // Cutting anywhere, even inside the data after the headers, leaves the IP length
    // disagreeing with the frame.
    let mut gate = opened_gate();
    for Complete { name, frame, .. } in complete_guarded_frames() {
        assert_eq!(
            gate.run(&frame),
            Pass,
            "{name}: the complete frame, opened, must pass"
        );
        for len in 0..frame.len() {
            let what = format!("{name} cut to {len} of {} bytes", frame.len());
            if len < ETH_HDR_LEN {
                assert_kernel_refuses_runt(&mut gate, &what, &frame[..len]);
            } else {
                gate.expect_parse_drop(&what, &frame[..len]);
            }
        }
    }
}

/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header (EINVAL), so a runt
/// frame never reaches the program here and `EthTruncated` is unreachable from this tier.
#[track_caller]
fn assert_kernel_refuses_runt(gate: &mut Gate, what: &str, frame: &[u8]) {
    match gate.try_run(frame) {
        Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::EINVAL) => {}
        other => panic!("{what}: expected the kernel to refuse a runt frame, got {other:?}"),
    }
}

/// `frame` cut to `len` bytes with the IP length field rewritten to match the cut, so the
/// IP layer is consistent and only the headers inside it are short.
fn cut_consistently(frame: &[u8], l3: usize, len: usize) -> Vec<u8> {
    let mut cut = frame[..len].to_vec();
    match frame[l3] >> 4 {
        4 => set_u16(&mut cut, l3 + IPV4_TOTAL_LEN_AT, (len - l3) as u16),
        6 => set_u16(
            &mut cut,
            l3 + IPV6_PAYLOAD_LEN_AT,
            (len - l3 - IPV6_HDR_LEN) as u16,
        ),
        other => panic!("IP version {other} at offset {l3}"),
    }
    cut
}

#[test]
fn every_truncation_inside_the_headers_with_matching_ip_length_drops() {
    // Cuts inside the data after the transport header would be complete, shorter packets.
    let mut gate = opened_gate();
    for Complete {
        name,
        l3,
        frame,
        data,
    } in complete_guarded_frames()
    {
        let fixed_header = if frame[l3] >> 4 == 4 {
            IPV4_HDR_LEN
        } else {
            IPV6_HDR_LEN
        };
        for len in l3 + fixed_header..frame.len() - data {
            let what = format!(
                "{name} cut to {len} of {} bytes, IP length matching",
                frame.len()
            );
            gate.expect_parse_drop(&what, &cut_consistently(&frame, l3, len));
        }
        let headers_only = cut_consistently(&frame, l3, frame.len() - data);
        assert_eq!(
            gate.run(&headers_only),
            Pass,
            "{name} without its data, opened, must pass"
        );
    }
}

#[test]
fn truncation_counts_the_header_it_cut() {
    let mut gate = opened_gate();
    let [v4_udp, v4_tcp, v6_udp, v6_tcp] = FLOWS.map(|flow| flow.frame());
    let l3 = ETH_HDR_LEN;
    let cases: [(&str, Vec<u8>, GlobalCounter); 14] = [
        ("IPv4: no IP header", v4_udp[..l3].to_vec(), Ipv4Truncated),
        (
            "IPv4: inside the IP header",
            v4_udp[..l3 + 19].to_vec(),
            Ipv4Truncated,
        ),
        (
            "IPv4: inside UDP, total length says more",
            v4_udp[..l3 + 24].to_vec(),
            Ipv4Truncated,
        ),
        (
            "IPv4: inside UDP, total length agrees",
            cut_consistently(&v4_udp, l3, l3 + 24),
            L4Truncated,
        ),
        (
            "IPv4: no UDP, total length agrees",
            cut_consistently(&v4_udp, l3, l3 + 20),
            L4Truncated,
        ),
        (
            "IPv4: inside TCP, total length agrees",
            cut_consistently(&v4_tcp, l3, l3 + 39),
            L4Truncated,
        ),
        ("IPv6: no IP header", v6_udp[..l3].to_vec(), Ipv6Truncated),
        (
            "IPv6: inside the IP header",
            v6_udp[..l3 + 39].to_vec(),
            Ipv6Truncated,
        ),
        (
            "IPv6: inside UDP, payload length says more",
            v6_udp[..l3 + 44].to_vec(),
            Ipv6Truncated,
        ),
        (
            "IPv6: inside UDP, payload length agrees",
            cut_consistently(&v6_udp, l3, l3 + 44),
            L4Truncated,
        ),
        (
            "IPv6: inside TCP, payload length agrees",
            cut_consistently(&v6_tcp, l3, l3 + 59),
            L4Truncated,
        ),
        (
            "802.1Q: inside the tag",
            tagged(&[ETH_P_8021Q], &FLOWS[0])[..l3 + 2].to_vec(),
            VlanTruncated,
        ),
        (
            "802.1ad+802.1Q: inside the inner tag",
            tagged(&[ETH_P_8021AD, ETH_P_8021Q], &FLOWS[0])[..l3 + VLAN_TAG_LEN + 2].to_vec(),
            VlanTruncated,
        ),
        (
            "IPv6: inside the first extension header",
            cut_consistently(
                &FLOWS[2].v6_chain_frame(&[IPV6_HOP_BY_HOP]),
                l3,
                l3 + IPV6_HDR_LEN + 1,
            ),
            Ipv6ExtUnparsed,
        ),
    ];
    for (what, frame, counter) in cases {
        gate.expect(what, &frame, Drop, Counted(counter));
    }
    assert_kernel_refuses_runt(&mut gate, "13-byte frame", &v4_udp[..ETH_HDR_LEN - 1]);
}

// ---------------------------------------------------------------------------------------------
// IPv4 header fields.

#[test]
fn ipv4_options_are_skipped_to_the_port() {
    // NOP-filled options: a program that read the port at offset 20 would see port 257.
    for flow in V4_FLOWS {
        for option_words in 1..=10u8 {
            let packet = Ipv4 {
                option_words,
                ..flow.v4()
            }
            .packet(&flow.l4());
            let what = format!("{} with IHL {}", flow.name, 5 + option_words);
            assert_gated(&what, &ethernet(&[], ETH_P_IPV4, &packet), flow.slot);
        }
    }
}

#[test]
fn ipv4_ihl_below_five_drops_as_malformed() {
    let mut gate = opened_gate();
    for flow in V4_FLOWS {
        for ihl in 0..5u8 {
            let mut frame = flow.frame();
            frame[ETH_HDR_LEN] = 0x40 | ihl;
            gate.expect(
                &format!("{} with IHL {ihl}", flow.name),
                &frame,
                Drop,
                Counted(Ipv4Malformed),
            );
        }
    }
}

#[test]
fn ipv4_bad_version_drops_as_malformed() {
    let mut gate = opened_gate();
    for flow in V4_FLOWS {
        for version in [0u8, 5, 6, 15] {
            let mut frame = flow.frame();
            frame[ETH_HDR_LEN] = version << 4 | 5;
            gate.expect(
                &format!("{} version {version}", flow.name),
                &frame,
                Drop,
                Counted(Ipv4Malformed),
            );
        }
    }
}

#[test]
fn ipv4_total_length_below_header_length_drops_as_malformed() {
    let mut gate = opened_gate();
    for flow in V4_FLOWS {
        for total_len in [0u16, 1, 19] {
            let mut frame = flow.frame();
            set_u16(&mut frame, ETH_HDR_LEN + IPV4_TOTAL_LEN_AT, total_len);
            gate.expect(
                &format!("{} total length {total_len}", flow.name),
                &frame,
                Drop,
                Counted(Ipv4Malformed),
            );
        }
        // IHL 6 (24-byte header) with a total length that stops inside the options.
        let packet = Ipv4 {
            option_words: 1,
            ..flow.v4()
        }
        .packet(&flow.l4());
        let mut frame = ethernet(&[], ETH_P_IPV4, &packet);
        set_u16(&mut frame, ETH_HDR_LEN + IPV4_TOTAL_LEN_AT, 23);
        gate.expect(
            &format!("{} IHL 6, total length 23", flow.name),
            &frame,
            Drop,
            Counted(Ipv4Malformed),
        );
    }
}

#[test]
fn ipv6_bad_version_drops_as_malformed() {
    let mut gate = opened_gate();
    for flow in V6_FLOWS {
        for version in [0u8, 4, 7, 15] {
            let mut frame = flow.frame();
            frame[ETH_HDR_LEN] = version << 4;
            gate.expect(
                &format!("{} version {version}", flow.name),
                &frame,
                Drop,
                Counted(Ipv6Malformed),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ethernet padding after the IP packet.

#[test]
fn ethernet_padding_after_the_ip_packet_is_ignored() {
    for flow in FLOWS {
        let frame = cat(&[&flow.frame(), &[0xff; 32]]);
        assert_gated(
            &format!("{} + 32 bytes of padding", flow.name),
            &frame,
            flow.slot,
        );
    }
}

#[test]
fn padding_does_not_complete_a_cut_transport_header() {
    // The IP length ends inside the transport header; the frame still carries all of it.
    let mut gate = opened_gate();
    for flow in FLOWS {
        let mut frame = cat(&[&flow.frame(), &[0; 8]]);
        match flow.client {
            IpAddr::V4(_) => set_u16(
                &mut frame,
                ETH_HDR_LEN + IPV4_TOTAL_LEN_AT,
                (IPV4_HDR_LEN + 4) as u16,
            ),
            IpAddr::V6(_) => set_u16(&mut frame, ETH_HDR_LEN + IPV6_PAYLOAD_LEN_AT, 4),
        }
        gate.expect(flow.name, &frame, Drop, Counted(L4Truncated));
    }
}

// ---------------------------------------------------------------------------------------------
// Fragments.

#[test]
fn ipv4_first_fragment_is_gated_by_its_ports() {
    for flow in V4_FLOWS {
        let packet = Ipv4 {
            frag: IPV4_MORE_FRAGMENTS,
            ..flow.v4()
        }
        .packet(&cat(&[&flow.l4(), &[0; FRAGMENT_DATA]]));
        assert_gated(
            &format!("{} first fragment", flow.name),
            &ethernet(&[], ETH_P_IPV4, &packet),
            flow.slot,
        );
    }
}

#[test]
fn ipv4_tiny_first_fragment_drops() {
    let mut gate = opened_gate();
    for (flow, l4_bytes) in [(V4_FLOWS[0], 4), (V4_FLOWS[1], 8), (V4_FLOWS[1], 16)] {
        let packet = Ipv4 {
            frag: IPV4_MORE_FRAGMENTS,
            ..flow.v4()
        }
        .packet(&flow.l4()[..l4_bytes]);
        let what = format!(
            "{} first fragment with {l4_bytes} bytes of header",
            flow.name
        );
        gate.expect(
            &what,
            &ethernet(&[], ETH_P_IPV4, &packet),
            Drop,
            Counted(FragmentTiny),
        );
    }
}

#[test]
fn ipv4_non_first_fragment_passes_and_is_counted() {
    // No openings. The payload starts with what looks like a header to the guarded port.
    let mut gate = Gate::load();
    for flow in V4_FLOWS {
        for frag in [
            1,
            185,
            IPV4_MORE_FRAGMENTS | 1,
            IPV4_MORE_FRAGMENTS | 0x1fff,
        ] {
            let packet = Ipv4 { frag, ..flow.v4() }.packet(&flow.l4());
            let what = format!("{} fragment field {frag:#06x}", flow.name);
            gate.expect(
                &what,
                &ethernet(&[], ETH_P_IPV4, &packet),
                Pass,
                Counted(PassNonFirstFragment),
            );
        }
    }
}

#[test]
fn ipv6_first_fragment_is_gated_by_its_ports() {
    for flow in V6_FLOWS {
        for more in [true, false] {
            let payload = cat(&[
                &ipv6_fragment(flow.proto, 0, more),
                &flow.l4(),
                &[0; FRAGMENT_DATA],
            ]);
            let what = format!("{} fragment offset 0, M={more}", flow.name);
            assert_gated(&what, &flow.v6_frame(IPV6_FRAGMENT, &payload), flow.slot);
        }
    }
}

#[test]
fn ipv6_tiny_first_fragment_drops() {
    let mut gate = opened_gate();
    for (flow, l4_bytes) in [(V6_FLOWS[0], 4), (V6_FLOWS[1], 8), (V6_FLOWS[1], 16)] {
        let payload = cat(&[&ipv6_fragment(flow.proto, 0, true), &flow.l4()[..l4_bytes]]);
        let what = format!(
            "{} first fragment with {l4_bytes} bytes of header",
            flow.name
        );
        gate.expect(
            &what,
            &flow.v6_frame(IPV6_FRAGMENT, &payload),
            Drop,
            Counted(FragmentTiny),
        );
    }
}

#[test]
fn ipv6_non_first_fragment_passes_and_is_counted() {
    let mut gate = Gate::load();
    for flow in V6_FLOWS {
        for (offset, more) in [(1, true), (1, false), (8191, false)] {
            let payload = cat(&[&ipv6_fragment(flow.proto, offset, more), &flow.l4()]);
            let what = format!("{} fragment offset {offset}, M={more}", flow.name);
            gate.expect(
                &what,
                &flow.v6_frame(IPV6_FRAGMENT, &payload),
                Pass,
                Counted(PassNonFirstFragment),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IPv6 extension headers.

#[test]
fn ipv6_extension_headers_are_walked_to_the_port() {
    for flow in V6_FLOWS {
        let frame = flow.v6_chain_frame(&[IPV6_HOP_BY_HOP, IPV6_DEST_OPTS, IPV6_ROUTING]);
        assert_gated(
            &format!("{} after hop-by-hop, dest-opts, routing", flow.name),
            &frame,
            flow.slot,
        );
    }
}

#[test]
fn ipv6_extension_header_length_is_honoured() {
    // A 16-byte hop-by-hop header (Hdr Ext Len 1): its second 8 bytes spell a UDP header to the
    // guarded port, which a walker that assumed 8 bytes would read.
    let flow = V6_FLOWS[1];
    let decoy = udp(UDP_PORT, 0);
    let hbh = cat(&[&[PROTO_TCP, 1, 1, 4, 0, 0, 0, 0], &decoy]);
    let frame = flow.v6_frame(IPV6_HOP_BY_HOP, &cat(&[&hbh, &flow.l4()]));
    assert_gated(
        "IPv6 TCP after a 16-byte hop-by-hop header",
        &frame,
        flow.slot,
    );
}

#[test]
fn ipv6_authentication_header_is_walked() {
    for flow in V6_FLOWS {
        assert_gated(
            &format!("{} after AH", flow.name),
            &flow.v6_chain_frame(&[IPV6_AH]),
            flow.slot,
        );
        let frame = flow.v6_chain_frame(&[IPV6_HOP_BY_HOP, IPV6_AH, IPV6_DEST_OPTS]);
        assert_gated(
            &format!("{} after hop-by-hop, AH, dest-opts", flow.name),
            &frame,
            flow.slot,
        );
    }
}

const SIX_HEADERS: [u8; 6] = [
    IPV6_HOP_BY_HOP,
    IPV6_DEST_OPTS,
    IPV6_ROUTING,
    IPV6_AH,
    IPV6_ROUTING,
    IPV6_DEST_OPTS,
];

#[test]
fn ipv6_chain_of_six_extension_headers_is_gated() {
    for flow in V6_FLOWS {
        assert_gated(
            &format!("{} after 6 extension headers", flow.name),
            &flow.v6_chain_frame(&SIX_HEADERS),
            flow.slot,
        );
    }
}

#[test]
fn ipv6_chain_longer_than_six_drops_as_unparsed() {
    let mut gate = opened_gate();
    for flow in V6_FLOWS {
        let seven = cat(&[&SIX_HEADERS, &[IPV6_DEST_OPTS]]);
        gate.expect(
            flow.name,
            &flow.v6_chain_frame(&seven),
            Drop,
            Counted(Ipv6ExtUnparsed),
        );
        // Six headers, then a fragment header as the seventh, then the transport header.
        let mut payload = Vec::new();
        let nexts = SIX_HEADERS[1..].iter().chain(&[IPV6_FRAGMENT]);
        for (kind, next) in SIX_HEADERS.iter().zip(nexts) {
            payload.extend(ipv6_ext(*kind, *next));
        }
        payload.extend(ipv6_fragment(flow.proto, 0, true));
        payload.extend(flow.l4());
        let what = format!("{} with a fragment header as the 7th", flow.name);
        gate.expect(
            &what,
            &flow.v6_frame(IPV6_HOP_BY_HOP, &payload),
            Drop,
            Counted(Ipv6ExtUnparsed),
        );
    }
}

#[test]
fn ipv6_truncated_extension_header_drops() {
    let mut gate = opened_gate();
    for flow in V6_FLOWS {
        // The payload ends where the hop-by-hop header should start.
        let frame = flow.v6_frame(IPV6_HOP_BY_HOP, &[]);
        gate.expect(
            &format!("{}: empty hop-by-hop", flow.name),
            &frame,
            Drop,
            Counted(Ipv6ExtUnparsed),
        );
        // A hop-by-hop header that claims 16 bytes in an 8-byte payload.
        let frame = flow.v6_frame(IPV6_HOP_BY_HOP, &[flow.proto, 1, 1, 4, 0, 0, 0, 0]);
        let what = format!("{}: hop-by-hop overruns the payload", flow.name);
        gate.expect(&what, &frame, Drop, Counted(Ipv6ExtUnparsed));
        // The same, but naming no next header: still a truncated IP header.
        let frame = flow.v6_frame(IPV6_HOP_BY_HOP, &[IPV6_NO_NEXT_HEADER, 1, 1, 4, 0, 0, 0, 0]);
        let what = format!(
            "{}: hop-by-hop overruns the payload, no next header",
            flow.name
        );
        gate.expect(&what, &frame, Drop, Counted(Ipv6ExtUnparsed));
    }
}

#[test]
fn ipv6_extension_headers_in_ethernet_padding_are_not_walked() {
    // Payload length 8 covers the hop-by-hop header only; the destination options header it
    // names lies in the padding the kernel trims, so the IP header is truncated.
    let mut gate = opened_gate();
    for flow in V6_FLOWS {
        let hbh = ipv6_ext(IPV6_HOP_BY_HOP, IPV6_DEST_OPTS);
        let in_padding = ipv6_ext(IPV6_DEST_OPTS, IPV6_NO_NEXT_HEADER);
        let mut frame = cat(&[&flow.v6_frame(IPV6_HOP_BY_HOP, &hbh), &in_padding]);
        set_u16(
            &mut frame,
            ETH_HDR_LEN + IPV6_PAYLOAD_LEN_AT,
            hbh.len() as u16,
        );
        gate.expect(flow.name, &frame, Drop, Counted(Ipv6ExtUnparsed));

        // Nor is a fragment header there, even one that says "non-first fragment".
        let hbh = ipv6_ext(IPV6_HOP_BY_HOP, IPV6_FRAGMENT);
        let in_padding = ipv6_fragment(flow.proto, 1, true);
        let mut frame = cat(&[&flow.v6_frame(IPV6_HOP_BY_HOP, &hbh), &in_padding]);
        set_u16(
            &mut frame,
            ETH_HDR_LEN + IPV6_PAYLOAD_LEN_AT,
            hbh.len() as u16,
        );
        gate.expect(flow.name, &frame, Drop, Counted(Ipv6ExtUnparsed));
    }
}

#[test]
fn ipv6_no_next_header_passes_without_counting() {
    let mut gate = opened_gate();
    let frame = ip_frame(CLIENT_V6.into(), LOCAL_V6.into(), IPV6_NO_NEXT_HEADER, &[]);
    gate.expect("IPv6, no next header", &frame, Pass, Nothing);
    let after_hbh = ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(
            CLIENT_V6,
            LOCAL_V6,
            IPV6_HOP_BY_HOP,
            &ipv6_ext(IPV6_HOP_BY_HOP, IPV6_NO_NEXT_HEADER),
        ),
    );
    gate.expect(
        "IPv6, hop-by-hop then no next header",
        &after_hbh,
        Pass,
        Nothing,
    );
}
