//! The crate boundaries hold, read from `cargo metadata`'s resolved graph (issue 10):
//! the web front (`xdpgate-web`) cannot reach the gate, the state or any server key, and the
//! wire protocol (`xdpgate-protocol`) does no I/O.
#![allow(clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// What the web front must never link: the eBPF loader, the redb state, the approval and
/// device cryptography that holds or uses server and client keys, the TPM stack, the
/// controller crate and the kernel-shared types.
const NOT_IN_WEB: &[&str] = &[
    "aya",
    "aya-log",
    "aya-obj",
    "redb",
    "crypto_box",
    "crypto_secretbox",
    "rsa",
    "p256",
    "ecdsa",
    "totp-rs",
    "tss-esapi",
    "tun",
    "xdpgate",
    "gateway-common",
];

/// What a crate with no I/O has no use for: runtimes, sockets, TLS, system calls, randomness.
const NOT_IN_PROTOCOL: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "hyper",
    "tonic",
    "rustls",
    "ring",
    "nix",
    "libc",
    "getrandom",
    "xdpgate-web",
    "xdpgate",
];

struct Graph {
    names: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

impl Graph {
    fn load() -> Self {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // This host's platform only, so no other platform's crates need downloading.
        let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let output = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", &platform])
            .current_dir(&root)
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let meta: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
        let names = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id").to_owned(),
                    p["name"].as_str().expect("name").to_owned(),
                )
            })
            .collect();
        let mut deps = HashMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let id = node["id"].as_str().expect("node id").to_owned();
            // Normal and build dependencies: everything compiled into or run for the crate;
            // dev-dependencies only build its tests.
            let linked = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .expect("dep_kinds")
                        .iter()
                        .any(|kind| kind["kind"].as_str() != Some("dev"))
                })
                .map(|dep| dep["pkg"].as_str().expect("pkg").to_owned())
                .collect();
            deps.insert(id, linked);
        }
        Self { names, deps }
    }

    /// Names of every package `name` depends on, directly or not (without itself).
    fn closure(&self, name: &str) -> BTreeSet<String> {
        let start = self
            .names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("{name} is not in the workspace"));
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(id) = todo.pop() {
            for dep in self.deps.get(&id).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen.remove(&start);
        seen.iter().map(|id| self.names[id].clone()).collect()
    }
}

fn offenders(closure: &BTreeSet<String>, forbidden: &[&str]) -> Vec<String> {
    forbidden
        .iter()
        .filter(|name| closure.contains(**name))
        .map(|name| (*name).to_owned())
        .collect()
}

#[test]
fn the_web_front_cannot_reach_maps_state_or_keys_and_the_protocol_does_no_io() {
    let graph = Graph::load();

    // The walk finds what is really there: the controller crate links all of it.
    let controller = graph.closure("xdpgate");
    for name in [
        "aya",
        "redb",
        "rsa",
        "crypto_box",
        "xdpgate-web",
        "xdpgate-protocol",
    ] {
        assert!(controller.contains(name), "xdpgate should link {name}");
    }

    let web = graph.closure("xdpgate-web");
    assert!(
        web.contains("xdpgate-protocol") && web.contains("rustls") && web.contains("axum"),
        "the web front parses with xdpgate-protocol and serves with rustls and axum: {web:?}"
    );
    assert_eq!(
        offenders(&web, NOT_IN_WEB),
        Vec::<String>::new(),
        "xdpgate-web must not depend on these"
    );

    let protocol = graph.closure("xdpgate-protocol");
    assert_eq!(
        offenders(&protocol, NOT_IN_PROTOCOL),
        Vec::<String>::new(),
        "xdpgate-protocol must not depend on these"
    );
}

#[test]
fn the_protocol_sources_use_no_file_socket_process_or_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/protocol/src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read protocol sources") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for needle in [
            "std::fs",
            "std::net::TcpStream",
            "std::net::UdpSocket",
            "std::process",
            "std::os::",
            "std::env",
            "SystemTime::now",
            "Instant::now",
            "unsafe ",
        ] {
            assert!(
                !text.contains(needle),
                "{} uses {needle}: the protocol crate is pure",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} protocol sources found");
}
