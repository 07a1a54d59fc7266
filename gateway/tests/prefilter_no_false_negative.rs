//! The prefilter never drops an opened address: random sequences of grants, replaces,
//! expiry moves, expiries, revokes and controller restarts (maps pinned, the controller's
//! state thrown away and the prefilter rebuilt, sometimes at another size) are applied to
//! the real maps, and after every step every address of the pool is run through the real
//! XDP program with BPF_PROG_TEST_RUN: an unexpired opening passes, anything else drops.
//!
//! The pool pairs every address with one that hashes to the same prefilter bit, so revoking
//! one of two openings sharing a bit is exercised on every run. The kernel's prefilter words
//! are read back too: a bit no opening needs must be clear again (the filter still filters).
//!
//! Needs root; panics (never skips) without it. `PREFILTER_TEST_SEED` replays a run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{TestRun, TestRunOptions},
};
use gateway_common::{PROTO_UDP, ServiceKey, ServiceValue, map_names, prefilter};
use xdpgate::{
    clock::mono_ns,
    gate::{GateMaps, KernelService, loader},
};

const SERVER: u32 = 7;
const OTHER_SERVER: u32 = 8;
const PORT: u16 = 1194;
const OTHER_PORT: u16 = 1195;
const HOUR_NS: u64 = 3_600_000_000_000;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Map sizes a restart may pick (prefilters of 2^16 and 2^17 bits).
const SIZES: [u32; 2] = [1024, 16_384];

/// xorshift64*: reproducible from its seed, which a failure message prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pinned maps under a scratch bpffs folder, removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = loader::detach_all(&self.0);
    }
}

/// One controller lifetime over the pinned maps.
struct Controller {
    ebpf: Ebpf,
    maps: GateMaps,
}

impl Controller {
    fn start(pins: &Pins, max_openings: u32) -> Self {
        let pin_dir = loader::pin_folder(&pins.0);
        let mut ebpf =
            loader::load_pinned(&pin_dir, max_openings).expect("loading the XDP program");
        let mut maps =
            GateMaps::take(&mut ebpf).expect("taking the maps (rebuilds the prefilters)");
        let service = |key, server_id, stats_index| KernelService {
            key,
            value: ServiceValue {
                server_id,
                stats_index,
            },
        };
        maps.sync_services(&[
            service(ServiceKey::v4(PROTO_UDP, PORT, [0; 4]), SERVER, 0),
            service(ServiceKey::v6(PROTO_UDP, PORT, [0; 16]), SERVER, 1),
            service(
                ServiceKey::v4(PROTO_UDP, OTHER_PORT, [0; 4]),
                OTHER_SERVER,
                2,
            ),
            service(
                ServiceKey::v6(PROTO_UDP, OTHER_PORT, [0; 16]),
                OTHER_SERVER,
                3,
            ),
        ])
        .expect("installing services");
        Controller { ebpf, maps }
    }

    fn verdict(&mut self, frame: &[u8]) -> u32 {
        let xdp = loader::program(&mut self.ebpf).expect("the program");
        xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
    }
}

fn udp_frame(src: IpAddr, dst_port: u16) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40_000u16.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&26u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.resize(26, 0xab);
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match src {
        IpAddr::V4(src) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 46, 0x12, 0x34, 0x40, 0, 64, PROTO_UDP, 0, 0];
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&[192, 0, 2, 1]);
            let mut sum: u32 = ip
                .chunks(2)
                .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        IpAddr::V6(src) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 26, PROTO_UDP, 64]);
            frame.extend_from_slice(&src.octets());
            frame.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        }
    }
    frame.extend_from_slice(&udp);
    frame
}

fn hash(server_id: u32, addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(v4) => prefilter::hash_v4(server_id, v4.octets()),
        IpAddr::V6(v6) => prefilter::hash_v6(server_id, &v6.octets()),
    }
}

fn random_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(
            0x2001_0db8_0200_u128 << 80 | u128::from(rng.next() >> 16),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(
            0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff),
        ))
    }
}

/// Keys in pairs that share a prefilter bit at every size in [`SIZES`] (the bit index of the
/// smaller filter is a prefix of the larger one's, so sharing at the larger size suffices).
fn pool(rng: &mut Rng) -> Vec<(u32, IpAddr)> {
    let shift = prefilter::shift_for(SIZES[1]);
    let mut keys = Vec::new();
    for i in 0..48 {
        let server = if i % 3 == 0 { OTHER_SERVER } else { SERVER };
        let v6 = i % 2 == 1;
        let first = random_addr(rng, v6);
        let bit = prefilter::slot(hash(server, first), shift);
        let partner = (0..10_000_000)
            .map(|_| random_addr(rng, v6))
            .find(|a| *a != first && prefilter::slot(hash(server, *a), shift) == bit)
            .expect("a colliding partner within 10M tries");
        keys.push((server, first));
        keys.push((server, partner));
    }
    keys
}

/// What the program must do with each key: `Some(true)` open, `Some(false)` present but
/// expired, absent: no opening.
type Model = HashMap<(u32, IpAddr), bool>;

fn check(
    step: &str,
    controller: &mut Controller,
    pins: &Pins,
    pool: &[(u32, IpAddr)],
    model: &Model,
) {
    for &(server, addr) in pool {
        let port = if server == SERVER { PORT } else { OTHER_PORT };
        let open = model.get(&(server, addr)) == Some(&true);
        let got = controller.verdict(&udp_frame(addr, port));
        let want = if open { XDP_PASS } else { XDP_DROP };
        assert_eq!(
            got, want,
            "{step}: server {server} source {addr}: open={open}, verdict {got}"
        );
        if model.contains_key(&(server, addr)) {
            assert!(
                controller.maps.prefilter_admits(server, addr),
                "{step}: {addr} held but its bit is clear"
            );
        }
    }
    // The kernel's words hold exactly the bits of the openings present: a bit whose openings
    // are all gone was cleared.
    let pin_dir = loader::pin_folder(&pins.0);
    for (name, v6) in [
        (map_names::PREFILTER_V4, false),
        (map_names::PREFILTER_V6, true),
    ] {
        let map = MapData::from_pin(pin_dir.join(name)).expect("opening the pinned prefilter");
        let array: Array<MapData, u64> =
            Array::try_from(aya::maps::Map::Array(map)).expect("an array");
        let shift = array.len().trailing_zeros() + 6;
        let mut wanted = HashMap::<u32, u64>::new();
        for (server, addr) in model.keys().filter(|(_, a)| a.is_ipv6() == v6) {
            let (word, mask) = prefilter::slot(hash(*server, *addr), shift);
            *wanted.entry(word).or_default() |= mask;
        }
        for &(server, addr) in pool.iter().filter(|(_, a)| a.is_ipv6() == v6) {
            let (word, _) = prefilter::slot(hash(server, addr), shift);
            let have = array.get(&word, 0).expect("reading a prefilter word");
            assert_eq!(
                have,
                wanted.get(&word).copied().unwrap_or(0),
                "{step}: {name} word {word}"
            );
        }
    }
}

#[test]
fn random_grants_revokes_expiries_and_restarts_never_drop_an_open_address() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads XDP programs and pins maps: run it as root"
    );
    let seed = std::env::var("PREFILTER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| mono_ns() | 1);
    eprintln!("PREFILTER_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let pool = pool(&mut rng);
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/xdpgate-prefilter-test-{}",
        std::process::id()
    )));
    let mut size = SIZES[0];
    let mut controller = Controller::start(&pins, size);
    let mut model = Model::new();
    let (mut restarts, mut resizes, mut revokes_of_shared) = (0, 0, 0);
    for step in 0..600 {
        let (server, addr) = pool[rng.below(pool.len())];
        let key = (server, addr);
        let what = match rng.below(20) {
            0..=5 => {
                controller
                    .maps
                    .create_opening(server, addr, mono_ns() + HOUR_NS)
                    .expect("grant");
                model.insert(key, true);
                "grant"
            }
            6..=7 => {
                let state = gateway_common::Opening {
                    expires_at_ns: mono_ns() + HOUR_NS,
                    last_seen_ns: 0,
                };
                controller
                    .maps
                    .put_opening(server, addr, state)
                    .expect("put");
                model.insert(key, true);
                "put"
            }
            8 => {
                controller
                    .maps
                    .set_expiry(server, addr, mono_ns() + 2 * HOUR_NS)
                    .expect("extend");
                model.insert(key, true);
                "extend"
            }
            9..=10 => {
                // Expired in the kernel but not yet swept: present, and must drop (a second in the
                // past, as the program reads the coarse clock).
                controller
                    .maps
                    .set_expiry(server, addr, mono_ns().saturating_sub(1_000_000_000))
                    .expect("expire");
                model.insert(key, false);
                "expire"
            }
            11..=16 => {
                let partner = pool[pool.iter().position(|k| *k == key).expect("in pool") ^ 1];
                if model.contains_key(&key) && model.contains_key(&partner) {
                    revokes_of_shared += 1;
                }
                let removed = controller
                    .maps
                    .remove_opening(server, addr)
                    .expect("revoke");
                assert_eq!(
                    removed,
                    model.remove(&key).is_some(),
                    "step {step}: revoke of {addr}"
                );
                "revoke"
            }
            17..=18 => {
                // The sweeper closes every expired opening.
                let expired: Vec<(u32, IpAddr)> = model
                    .iter()
                    .filter(|(_, open)| !**open)
                    .map(|(k, _)| *k)
                    .collect();
                for (s, a) in expired {
                    assert!(controller.maps.remove_opening(s, a).expect("sweep"));
                    model.remove(&(s, a));
                }
                "sweep"
            }
            _ => {
                // A controller restart over the pinned maps, at the same or another size.
                drop(controller);
                if rng.below(3) == 0 {
                    size = SIZES[usize::from(size == SIZES[0])];
                    resizes += 1;
                }
                restarts += 1;
                controller = Controller::start(&pins, size);
                "restart"
            }
        };
        check(
            &format!("step {step} ({what} {server}/{addr}, seed {seed})"),
            &mut controller,
            &pins,
            &pool,
            &model,
        );
    }
    eprintln!(
        "restarts {restarts} (resized {resizes}), revokes of one of two openings sharing a bit {revokes_of_shared}, open at the end {}",
        model.len()
    );
    assert!(
        restarts > 0 && resizes > 0,
        "the sequence must include restarts and resizes (seed {seed})"
    );
    assert!(
        revokes_of_shared > 0,
        "the sequence must revoke an opening whose bit another one shares (seed {seed})"
    );
}
