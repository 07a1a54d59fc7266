//! Shared setup of the BPF_PROG_TEST_RUN tests: a freshly loaded gate with a fixed table of
//! guarded services, a runner for crafted frames, and counter snapshots to assert exactly
//! which counter a frame moved.
pub mod frames;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf,
    programs::{ProgramError, TestRun, TestRunOptions},
};
use gateway_common::{
    GlobalCounter, Opening, PROTO_TCP, PROTO_UDP, ServiceKey, ServiceStats, ServiceValue,
};
use xdpgate::{
    clock::mono_ns,
    gate::{GateMaps, KernelService, loader},
};

/// The server whose openings admit traffic to every service below except [`EXACT_OTHER_V4`]/`_V6`.
pub const SERVER: u32 = 7;
/// A second server.
pub const OTHER_SERVER: u32 = 8;

/// The gateway's own addresses (packet destinations).
pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const OTHER_LOCAL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const OTHER_LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Clients (packet sources).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const OTHER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const OTHER_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11);

/// Guarded on any local address: UDP 1194 and TCP 443.
pub const UDP_PORT: u16 = 1194;
pub const TCP_PORT: u16 = 443;
/// UDP guarded only on [`LOCAL_V4`] / [`LOCAL_V6`].
pub const EXACT_PORT: u16 = 51820;
/// TCP guarded on [`LOCAL_V4`] / [`LOCAL_V6`] for [`OTHER_SERVER`], and on any address for
/// [`SERVER`].
pub const SHARED_PORT: u16 = 8443;
/// A port no service uses.
pub const FREE_PORT: u16 = 8080;

/// Counter slots (`ServiceValue::stats_index`) of the services.
pub const ANY_V4_UDP: u32 = 0;
pub const ANY_V4_TCP: u32 = 1;
pub const ANY_V6_UDP: u32 = 2;
pub const ANY_V6_TCP: u32 = 3;
pub const EXACT_V4_UDP: u32 = 4;
pub const EXACT_V6_UDP: u32 = 5;
pub const EXACT_OTHER_V4: u32 = 6;
pub const WILDCARD_V4: u32 = 7;
pub const EXACT_OTHER_V6: u32 = 8;
pub const WILDCARD_V6: u32 = 9;

const SERVICES: [(ServiceKey, u32, u32); 10] = [
    (
        ServiceKey::v4(PROTO_UDP, UDP_PORT, [0; 4]),
        SERVER,
        ANY_V4_UDP,
    ),
    (
        ServiceKey::v4(PROTO_TCP, TCP_PORT, [0; 4]),
        SERVER,
        ANY_V4_TCP,
    ),
    (
        ServiceKey::v6(PROTO_UDP, UDP_PORT, [0; 16]),
        SERVER,
        ANY_V6_UDP,
    ),
    (
        ServiceKey::v6(PROTO_TCP, TCP_PORT, [0; 16]),
        SERVER,
        ANY_V6_TCP,
    ),
    (
        ServiceKey::v4(PROTO_UDP, EXACT_PORT, LOCAL_V4.octets()),
        SERVER,
        EXACT_V4_UDP,
    ),
    (
        ServiceKey::v6(PROTO_UDP, EXACT_PORT, LOCAL_V6.octets()),
        SERVER,
        EXACT_V6_UDP,
    ),
    (
        ServiceKey::v4(PROTO_TCP, SHARED_PORT, LOCAL_V4.octets()),
        OTHER_SERVER,
        EXACT_OTHER_V4,
    ),
    (
        ServiceKey::v4(PROTO_TCP, SHARED_PORT, [0; 4]),
        SERVER,
        WILDCARD_V4,
    ),
    (
        ServiceKey::v6(PROTO_TCP, SHARED_PORT, LOCAL_V6.octets()),
        OTHER_SERVER,
        EXACT_OTHER_V6,
    ),
    (
        ServiceKey::v6(PROTO_TCP, SHARED_PORT, [0; 16]),
        SERVER,
        WILDCARD_V6,
    ),
];

/// The entries of the fixed service table that `keep` accepts.
fn services_where(keep: impl Fn(&ServiceKey) -> bool) -> Vec<KernelService> {
    SERVICES
        .iter()
        .filter(|(key, _, _)| keep(key))
        .map(|(key, server_id, stats_index)| KernelService {
            key: *key,
            value: ServiceValue {
                server_id: *server_id,
                stats_index: *stats_index,
            },
        })
        .collect()
}

/// How long an opening made by [`Gate::open`] lasts.
const OPEN_FOR_NS: u64 = 3_600 * 1_000_000_000;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The program's verdict on a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Pass,
}

/// The one counter change a frame is expected to cause.
#[derive(Clone, Copy, Debug)]
pub enum Effect {
    /// No counter moves.
    Nothing,
    /// The service in this counter slot admitted the packet.
    Passed(u32),
    /// The service in this counter slot dropped the packet.
    Dropped(u32),
    /// This parse-path counter went up by one.
    Counted(GlobalCounter),
}

/// Every counter the tests look at, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Counters {
    services: BTreeMap<u32, ServiceStats>,
    global: Vec<(GlobalCounter, u64)>,
}

impl Counters {
    fn after(mut self, effect: Effect) -> Self {
        match effect {
            Effect::Nothing => {}
            Effect::Passed(slot) => self.service(slot).passed += 1,
            Effect::Dropped(slot) => self.service(slot).dropped += 1,
            Effect::Counted(counter) => {
                for (which, value) in &mut self.global {
                    if *which == counter {
                        *value += 1;
                    }
                }
            }
        }
        self
    }

    fn global(&self, counter: GlobalCounter) -> u64 {
        self.global
            .iter()
            .find(|(which, _)| *which == counter)
            .map_or(0, |(_, value)| *value)
    }

    fn service(&mut self, slot: u32) -> &mut ServiceStats {
        self.services
            .get_mut(&slot)
            .unwrap_or_else(|| panic!("counter slot {slot} is not in the test's service table"))
    }
}

/// Panics unless the tests run as root: loading an XDP program needs CAP_BPF + CAP_NET_ADMIN.
fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "the BPF_PROG_TEST_RUN tests load the XDP program into the kernel and need root \
             (CAP_BPF + CAP_NET_ADMIN); run them as root, e.g. with sudo -E"
        );
    }
}

/// Loads the program with its own private maps (see `loader::load_unpinned`).
fn load_isolated() -> Ebpf {
    loader::load_unpinned(1024).unwrap_or_else(|e| panic!("loading the XDP program: {e} ({e:?})"))
}

/// A freshly loaded XDP program with its own maps, holding the test's service table.
pub struct Gate {
    ebpf: Ebpf,
    maps: GateMaps,
}

impl Gate {
    /// Loads the program and installs the service table; no openings.
    pub fn load() -> Gate {
        require_root();
        let mut ebpf = load_isolated();
        let mut maps =
            GateMaps::take(&mut ebpf).unwrap_or_else(|e| panic!("taking the gate maps: {e}"));
        maps.sync_services(&services_where(|_| true))
            .unwrap_or_else(|e| panic!("installing services: {e}"));
        Gate { ebpf, maps }
    }

    /// Re-syncs the kernel with only the services of the fixed table that `keep` accepts,
    /// as a controller restarted with a smaller configuration would.
    pub fn resync(&mut self, keep: impl Fn(&ServiceKey) -> bool) {
        self.maps
            .sync_services(&services_where(keep))
            .unwrap_or_else(|e| panic!("re-syncing services: {e}"));
    }

    /// Runs the program once on `frame`; `Err` if the kernel refused to run it.
    pub fn try_run(&mut self, frame: &[u8]) -> Result<Verdict, ProgramError> {
        let xdp = loader::program(&mut self.ebpf)
            .unwrap_or_else(|e| panic!("the loaded object lost its program: {e}"));
        let result = xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..Default::default()
        })?;
        match result.return_value {
            XDP_DROP => Ok(Verdict::Drop),
            XDP_PASS => Ok(Verdict::Pass),
            other => panic!("the program returned {other}, neither XDP_DROP nor XDP_PASS"),
        }
    }

    /// Runs the program once on `frame` and returns its verdict.
    #[track_caller]
    pub fn run(&mut self, frame: &[u8]) -> Verdict {
        self.try_run(frame)
            .unwrap_or_else(|e| panic!("test_run of a {}-byte frame: {e}", frame.len()))
    }

    /// Runs `frame` and asserts both the verdict and that `effect` is the only counter change.
    #[track_caller]
    pub fn expect(&mut self, what: &str, frame: &[u8], verdict: Verdict, effect: Effect) {
        let before = self.counters();
        let got = self.run(frame);
        assert_eq!(got, verdict, "{what}: verdict on {}", hex(frame));
        let after = self.counters();
        assert_eq!(
            after,
            before.after(effect),
            "{what}: counters after {effect:?}"
        );
    }

    /// Runs `frame` and asserts the parse path dropped it: DROP, exactly one global counter up
    /// by one, no service counter moved. Returns that counter.
    #[track_caller]
    pub fn expect_parse_drop(&mut self, what: &str, frame: &[u8]) -> GlobalCounter {
        let before = self.counters();
        let got = self.run(frame);
        assert_eq!(got, Verdict::Drop, "{what}: verdict on {}", hex(frame));
        let after = self.counters();
        assert_eq!(
            after.services, before.services,
            "{what}: a service counter moved"
        );
        let moved: Vec<GlobalCounter> = GlobalCounter::ALL
            .into_iter()
            .filter(|counter| after.global(*counter) != before.global(*counter))
            .collect();
        match moved.as_slice() {
            [counter] if after.global(*counter) == before.global(*counter) + 1 => *counter,
            _ => panic!(
                "{what}: expected one global counter +1\nbefore: {:?}\nafter:  {:?}",
                before.global, after.global
            ),
        }
    }

    fn counters(&self) -> Counters {
        let services = SERVICES
            .iter()
            .map(|(_, _, slot)| {
                let stats = self
                    .maps
                    .service_stats(*slot)
                    .unwrap_or_else(|e| panic!("reading counter slot {slot}: {e}"));
                (*slot, stats)
            })
            .collect();
        let global = self
            .maps
            .global_counters()
            .unwrap_or_else(|e| panic!("reading global counters: {e}"));
        Counters { services, global }
    }

    /// Opens `server` to `client` for the next hour.
    pub fn open(&mut self, server_id: u32, client: impl Into<IpAddr>) {
        self.put_opening(
            server_id,
            client,
            Opening {
                expires_at_ns: mono_ns() + OPEN_FOR_NS,
                last_seen_ns: 0,
            },
        );
    }

    /// Writes an opening as given.
    pub fn put_opening(&mut self, server_id: u32, client: impl Into<IpAddr>, state: Opening) {
        let client = client.into();
        self.maps
            .put_opening(server_id, client, state)
            .unwrap_or_else(|e| panic!("opening server {server_id} to {client}: {e}"));
    }

    /// The kernel's state of an opening that must exist.
    pub fn opening(&self, server_id: u32, client: impl Into<IpAddr>) -> Opening {
        let client = client.into();
        self.maps
            .opening(server_id, client)
            .unwrap_or_else(|e| panic!("reading opening {server_id}/{client}: {e}"))
            .unwrap_or_else(|| panic!("opening {server_id}/{client} vanished"))
    }
}

/// A frame as hex, for failure messages.
pub fn hex(frame: &[u8]) -> String {
    let bytes: Vec<String> = frame.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} bytes [{}]", frame.len(), bytes.join(" "))
}
