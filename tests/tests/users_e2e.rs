//! Separate users under `xdpgate run`: the web front runs as `xdpgate-web` (not `nobody`, not
//! root), the controller's tun interface belongs to `xdpgate-vpn`, the front socket is the web
//! user's alone, and the web front inherits no descriptor of the controller's: no BPF map or
//! program, no tun, no redb file, nothing in the controller's state folder.
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use xdpgate_tests::openvpn::TunGuard;
use xdpgate_tests::{Gateway, NetNs, VethLink, require_root, system_uid, wait_for};

const WEB_PORT: u16 = 8443;
const TUN: &str = "xgfd0";

fn sections(link: &VethLink, dir: &Path) -> String {
    format!(
        r#"
[approvals]
public_url = "https://{gw}:{WEB_PORT}"
front_socket = {front:?}

[web]
listen = "{gw}:{WEB_PORT}"
cert = {cert:?}
key = {key:?}
front_socket = {front:?}

[[server]]
name = "vpn1"
id = 1
public_ipv4 = "{gw}"

[[server.service]]
protocol = "udp"
port = 1194

[server.openvpn]
management_socket = {mgmt:?}
tun_name = "{TUN}"
tun_owner = "xdpgate-vpn"
tun_group = "xdpgate-vpn"
tun_address = "10.9.0.1/24"
"#,
        gw = link.b.v4,
        cert = dir.join("web").join("cert.pem"),
        key = dir.join("web").join("key.pem"),
        front = dir.join("front.sock"),
        mgmt = dir.join("vpn").join("management.sock"),
    )
}

/// Pids whose command line contains every word, with their real uid.
fn processes_with(words: &[&str]) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !words.iter().all(|w| cmdline.contains(w)) {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
        if let Some(uid) = uid {
            found.push((pid, uid));
        }
    }
    found
}

#[test]
fn the_web_front_runs_as_its_own_user_and_holds_no_controller_descriptor() {
    require_root();
    let client = NetNs::new_unique("ucl");
    let gateway_ns = NetNs::new_unique("ugw");
    let link = VethLink::new(&client, &gateway_ns, 63);
    let _tun = TunGuard {
        ns: gateway_ns.name().to_owned(),
        name: TUN.to_owned(),
    };
    let gateway = Gateway::start_run(&gateway_ns, &[&link.b.ifname], |dir| sections(&link, dir));
    let listen = SocketAddr::new(IpAddr::V4(link.b.v4), WEB_PORT);
    let up = wait_for(Duration::from_secs(20), || {
        client.run(|| {
            std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
        })
    });
    assert!(
        up,
        "web front not up under `xdpgate run`:\n{}",
        gateway.log()
    );

    let config = gateway.config_path().display().to_string();
    let web = processes_with(&["web", "--config", &config]);
    assert_eq!(
        web.len(),
        1,
        "one web front process: {web:?}\n{}",
        gateway.log()
    );
    let (web_pid, web_uid) = web[0];
    let web_user = system_uid("xdpgate-web");
    let vpn_user = system_uid("xdpgate-vpn");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    assert_eq!(web_uid, web_user, "the web front runs as xdpgate-web");
    assert_ne!(Some(web_uid), nobody, "not as nobody");
    assert_ne!(web_user, vpn_user, "the web and VPN users differ");

    // The tun interface belongs to the VPN user, not to the web user.
    let owner = gateway_ns.exec(&["cat", &format!("/sys/class/net/{TUN}/owner")]);
    assert_eq!(owner.trim(), vpn_user.to_string(), "tun owner");

    // The front socket: the web user's, mode 0600.
    let front = std::fs::metadata(gateway.dir().join("front.sock"))
        .unwrap_or_else(|e| panic!("front socket: {e}"));
    assert_eq!(front.uid(), web_user, "front socket owner");
    assert_eq!(
        front.permissions().mode() & 0o777,
        0o600,
        "front socket mode"
    );

    // No inherited or opened descriptor of the controller's.
    let state = gateway.dir().join("state");
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{web_pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{web_pid}/fd: {e}"))
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    assert!(
        fds.len() >= 3,
        "the web front has descriptors to inspect: {fds:?}"
    );
    assert!(
        fds.iter().any(|t| t.starts_with("socket:")),
        "it holds its listening socket: {fds:?}"
    );
    for target in &fds {
        let bad = target.contains("bpf-map")
            || target.contains("bpf-prog")
            || target.contains("bpf_link")
            || target.contains("bpf-link")
            || target.starts_with("/sys/fs/bpf")
            || target == "/dev/net/tun"
            || target.ends_with(".redb")
            || target.starts_with(&state.display().to_string());
        assert!(
            !bad,
            "the web front holds a controller descriptor: {target} (all: {fds:?})"
        );
    }
    // The controller itself does hold BPF maps (so the check above looks for real things).
    let controller = processes_with(&["run", "--config", &config]);
    let (controller_pid, controller_uid) = controller
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no controller"));
    assert_eq!(controller_uid, 0, "the controller stays root");
    let controller_fds: Vec<String> = std::fs::read_dir(format!("/proc/{controller_pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|t| t.display().to_string())
        .collect();
    assert!(
        controller_fds.iter().any(|t| t.contains("bpf-map")),
        "controller fds: {controller_fds:?}"
    );
    assert!(
        controller_fds.iter().any(|t| t.ends_with(".redb")),
        "controller fds: {controller_fds:?}"
    );
}
