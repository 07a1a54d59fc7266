//! Test harness for xdpgate's end-to-end tests: network namespaces, veth links between them,
//! and bounded-time UDP/TCP probes, all on private test addresses inside namespaces the test
//! creates and deletes.
//!
//! Everything here panics with a clear message when it cannot do its job: a test that cannot
//! run fails loudly, it is never skipped. The tests need root; run them with
//! `cargo xtask test`, which also builds the gateway and sets `XDPGATE_BIN`.
//!
//! ```no_run
//! use std::net::{IpAddr, SocketAddr};
//! use std::time::Duration;
//! use xdpgate_tests::*;
//!
//! require_root();
//! let client = NetNs::new_unique("cl");
//! let server = NetNs::new_unique("sv");
//! let link = VethLink::new(&client, &server, 1);
//! let echo = UdpEcho::start(&server, SocketAddr::new(IpAddr::V4(link.b.v4), 5353));
//! assert!(udp_roundtrip(&client, None, echo.local_addr(), Duration::from_secs(1)));
//! ```

mod flood;
mod gateway;
mod netns;
pub mod notice_server;
pub mod openvpn;
mod probe;
mod process;
pub mod relay;
mod swtpm;
mod veth;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

pub use flood::{Flood, FloodReport, FloodSpec, connect_from};
pub use gateway::{Gateway, TEST_LOG, start_web_node, start_web_node_logging};
pub use netns::{NetNs, in_netns};
pub use probe::{
    Echoes, ProbeLoop, TcpEcho, UdpEcho, tcp_connects, udp_roundtrip, udp_roundtrip_large,
};
pub use process::{Proc, wait_for};
pub use swtpm::Swtpm;
pub use veth::{VethEnd, VethLink};

/// The web front's and the VPN server's system users (`cargo xtask setup` creates them too).
pub const SYSTEM_USERS: [&str; 2] = ["xdpgate-web", "xdpgate-vpn"];

/// Creates the system users of [`SYSTEM_USERS`] that are missing (`useradd --system`).
pub fn ensure_system_users() {
    for user in SYSTEM_USERS {
        if nix::unistd::User::from_name(user).ok().flatten().is_some() {
            continue;
        }
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run useradd: {e}"));
        // Another test may have created it meanwhile (exit 9: already exists).
        let exists = nix::unistd::User::from_name(user).ok().flatten().is_some();
        assert!(
            out.status.success() || exists,
            "useradd {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The uid of a system user of [`SYSTEM_USERS`], created if missing.
pub fn system_uid(user: &str) -> u32 {
    ensure_system_users();
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no user {user}"))
        .uid
        .as_raw()
}

/// Panics unless the test runs as root (namespaces, veth and XDP need it).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "these tests need root: they create network namespaces and veth links and attach \
             XDP programs; run them as root with `cargo xtask test`"
        );
    }
}

/// The gateway binary under test, from the environment variable `XDPGATE_BIN`.
///
/// Panics if it is unset or names no file: `cargo xtask test` builds the binary and sets it.
pub fn xdpgate_bin() -> PathBuf {
    let Some(path) = std::env::var_os("XDPGATE_BIN") else {
        panic!(
            "XDPGATE_BIN is not set: run the end-to-end tests with `cargo xtask test`, which \
             builds target/release/xdpgate and sets XDPGATE_BIN to it"
        );
    };
    let path = PathBuf::from(path);
    if !path.is_file() {
        panic!(
            "XDPGATE_BIN={} is not a file: run the tests with `cargo xtask test`, which builds it",
            path.display()
        );
    }
    path
}

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A name unique to this process and call, short enough for an interface (at most 15 bytes):
/// `prefix` + the process id in 5 base-36 digits + a per-process counter in 3 base-36 digits.
///
/// Panics if `prefix` is longer than 7 bytes or not lowercase ASCII alphanumeric.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    const PREFIX_MAX: usize = MAX_IFNAME_LEN - 8;
    assert!(
        prefix.len() <= PREFIX_MAX
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "unique_name prefix {prefix:?} must be at most {PREFIX_MAX} lowercase letters or digits"
    );
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) % 36u32.pow(3);
    format!(
        "{prefix}{}{}",
        base36(std::process::id(), 5),
        base36(count, 3)
    )
}

/// `value` in base 36, zero-padded to `width` digits (pids fit 5 digits: pid_max <= 2^22).
fn base36(mut value: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value % 36) as usize];
        value /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// POSTs `body` as an approval request to the web front of `profile`, from namespace `ns`,
/// over HTTPS pinned as the profile says; the status and the body. Panics if the exchange
/// fails (tests of crafted requests, which the client would refuse to build).
pub fn post_approval(
    ns: &NetNs,
    profile: &xdpgate::approval::ClientProfile,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    use xdpgate::{client::https, tls};
    let endpoint = https::Endpoint::parse(&profile.web_endpoint).unwrap_or_else(|e| panic!("{e}"));
    let pins = tls::pins_from_anchor_pem(&profile.tls_anchor_pem).unwrap_or_else(|e| panic!("{e}"));
    let config =
        std::sync::Arc::new(tls::pinned_client_config(pins).unwrap_or_else(|e| panic!("{e}")));
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = runtime
            .block_on(https::send(
                &endpoint,
                config,
                https::HttpsRequest::post_json("/v1/approvals", body),
                std::time::Duration::from_secs(10),
                64 * 1024,
            ))
            .unwrap_or_else(|e| panic!("HTTPS exchange failed: {e}"));
        (reply.status, reply.body.to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_short_distinct_and_valid() {
        let a = unique_name("xgtest1");
        let b = unique_name("xgtest1");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME_LEN, "{a} is too long");
        assert!(a.starts_with("xgtest1"));
    }

    #[test]
    #[should_panic(expected = "must be at most 7")]
    fn unique_name_rejects_long_prefix() {
        unique_name("toolong1");
    }

    #[test]
    fn base36_pads_and_encodes() {
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(4_194_304, 5), "2hwcg");
    }
}
