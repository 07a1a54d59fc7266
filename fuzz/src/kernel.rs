//! The real XDP program, loaded once per fuzzing process with private maps holding
//! [`crate::policy`], run on frames with BPF_PROG_TEST_RUN.
use std::{cell::RefCell, net::IpAddr};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use gateway_common::{Opening, ServiceKey, ServiceValue};
use xdpgate::{
    clock::mono_ns,
    gate::{GateMaps, KernelService, loader},
};

use crate::policy::{GRANTS, SERVICES};
use crate::reference::Verdict;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Loaded {
    ebpf: Ebpf,
    // Held so the maps stay alive with the program.
    _maps: GateMaps,
}

thread_local! {
    static GATE: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

fn load() -> Loaded {
    let mut ebpf = loader::load_unpinned(64)
        .unwrap_or_else(|e| panic!("loading the XDP program (needs root and bpffs): {e} ({e:?})"));
    let mut maps =
        GateMaps::take(&mut ebpf).unwrap_or_else(|e| panic!("taking the gate maps: {e}"));
    let services: Vec<KernelService> = (0u32..)
        .zip(SERVICES.iter())
        .map(|(slot, s)| {
            let key = match s.addr {
                Some(IpAddr::V4(a)) => ServiceKey::v4(s.proto, s.port, a.octets()),
                Some(IpAddr::V6(a)) => ServiceKey::v6(s.proto, s.port, a.octets()),
                None if s.v6 => ServiceKey::v6(s.proto, s.port, [0; 16]),
                None => ServiceKey::v4(s.proto, s.port, [0; 4]),
            };
            KernelService {
                key,
                value: ServiceValue {
                    server_id: s.server,
                    stats_index: slot,
                },
            }
        })
        .collect();
    maps.sync_services(&services)
        .unwrap_or_else(|e| panic!("installing services: {e}"));
    // Openings last far longer than any fuzzing run; expired ones ended at boot.
    let far = mono_ns() + 30 * 24 * 3_600 * 1_000_000_000;
    for grant in GRANTS {
        let expires_at_ns = if grant.unexpired { far } else { 1 };
        maps.put_opening(
            grant.server,
            grant.addr,
            Opening {
                expires_at_ns,
                last_seen_ns: 0,
            },
        )
        .unwrap_or_else(|e| panic!("opening {}/{}: {e}", grant.server, grant.addr));
    }
    Loaded { ebpf, _maps: maps }
}

/// The real program's verdict on `frame` (at least 14 bytes).
pub fn verdict(frame: &[u8]) -> Verdict {
    GATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let loaded = slot.get_or_insert_with(load);
        let xdp = loader::program(&mut loaded.ebpf).unwrap_or_else(|e| panic!("program: {e}"));
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("test_run of a {}-byte frame: {e}", frame.len()));
        match result.return_value {
            XDP_DROP => Verdict::Drop,
            XDP_PASS => Verdict::Pass,
            other => panic!("the program returned {other}, neither XDP_DROP nor XDP_PASS"),
        }
    })
}
