//! End to end with a real OpenVPN 2.6 server behind the gate: the controller creates the
//! server's persistent tun interface (owned by `nobody`), the server runs as `nobody` and is
//! followed through its management socket; a client namespace gets no answer before
//! approval, connects with the approval's one-time token and reaches the server through the
//! tunnel, a second namespace holding the same (stolen) credentials gets nothing, the spent
//! token is refused, and the opening closes after the client disconnects.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xdpgate_tests::{Gateway, NetNs, UdpEcho, VethLink, require_root, udp_roundtrip, unique_name, xdpgate_bin};

const VPN_PORT: u16 = 1194;
const WEB_PORT: u16 = 8443;
/// The server's side of the tunnel (set on the tun interface by the controller).
const TUNNEL_SERVER: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
const NOBODY_UID: u32 = 65534;

/// A folder for the OpenVPN keys, logs and management socket, readable by `nobody`.
struct VpnDir(PathBuf);

impl Drop for VpnDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A spawned process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deletes the persistent tun interface (it outlives every process by design).
struct TunGuard {
    ns: String,
    name: String,
}

impl Drop for TunGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["-n", &self.ns, "link", "delete", &self.name]).output();
    }
}

fn need_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    assert!(found, "`{name}` is not installed: `cargo xtask setup` installs Debian's openvpn and openssl packages");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A self-signed P-256 certificate and key named `name` in `dir`; returns its SHA-256
/// fingerprint (OpenVPN's `--peer-fingerprint` mode: no CA needed).
fn self_signed(dir: &Path, name: &str) -> String {
    run(Command::new("openssl").args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt"))));
    let out = run(Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(dir.join(format!("{name}.crt"))));
    out.trim().split_once('=').map(|(_, fp)| fp.to_owned()).unwrap_or_else(|| panic!("no fingerprint in {out}"))
}

fn chown_nobody(path: &Path) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(NOBODY_UID)), Some(nix::unistd::Gid::from_raw(NOBODY_UID)))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Polls `done` every 100 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

struct Lab {
    dir: VpnDir,
    server_fp: String,
    gateway: Gateway,
    gw_ns: NetNs,
    c1: NetNs,
    c2: NetNs,
    l1: VethLink,
    c2_ip: String,
    profile: PathBuf,
    tun: TunGuard,
}

fn sections(l1: &VethLink, dir: &Path, socket: &Path, tun: &str) -> String {
    let web = dir.join("web");
    format!(
        r#"
[approvals]
public_url = "https://{gw}:{WEB_PORT}"
web_cert = {cert:?}
front_socket = {front:?}

[web]
listen = "{gw}:{WEB_PORT}"
cert = {cert:?}
key = {key:?}
front_socket = {front:?}

[[server]]
name = "vpn1"
id = 1
connect_window_secs = 30
idle_timeout_secs = 10
max_lifetime_secs = 3600
public_ipv4 = "{gw}"

[[server.service]]
protocol = "udp"
port = {VPN_PORT}

[server.openvpn]
management_socket = {socket:?}
tun_name = "{tun}"
tun_owner = "nobody"
tun_group = "nogroup"
tun_address = "{TUNNEL_SERVER}/24"
disconnect_grace_ms = 1000
"#,
        gw = l1.b.v4,
        cert = web.join("cert.pem"),
        key = web.join("key.pem"),
        front = dir.join("front.sock"),
    )
}

impl Lab {
    fn new() -> Lab {
        require_root();
        need_tool("openvpn");
        need_tool("openssl");
        let dir = VpnDir(std::env::temp_dir().join(format!("xdpgate-ovpn-{}", unique_name("ov"))));
        fs::create_dir_all(dir.0.join("run")).unwrap_or_else(|e| panic!("creating {}: {e}", dir.0.display()));
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod: {e}"));
        chown_nobody(&dir.0.join("run"));
        let server_fp = self_signed(&dir.0, "server");
        chown_nobody(&dir.0.join("server.key"));
        self_signed(&dir.0, "client");

        let gw_ns = NetNs::new_unique("ovgw");
        let c1 = NetNs::new_unique("ovc");
        let c2 = NetNs::new_unique("ovc");
        let l1 = VethLink::new(&c1, &gw_ns, 61);
        let l2 = VethLink::new(&c2, &gw_ns, 62);
        let tun = unique_name("xgt");
        let socket = dir.0.join("run/management.sock");
        let tun_guard = TunGuard { ns: gw_ns.name().to_owned(), name: tun.clone() };
        let mut gateway =
            Gateway::start_with(&gw_ns, &[&l1.b.ifname, &l2.b.ifname], |gdir| sections(&l1, gdir, &socket, &tun));
        gateway.start_web(SocketAddr::new(IpAddr::V4(l1.b.v4), WEB_PORT));
        let profile = gateway.dir().join("alice.profile.json");
        let c2_ip = l2.a.v4.to_string();
        let lab = Lab { dir, server_fp, gateway, gw_ns, c1, c2, l1, c2_ip, profile, tun: tun_guard };
        lab.check_tun(&tun);
        lab.enroll();
        lab
    }

    /// The controller made the tun interface: persistent, owned by nobody, addressed.
    fn check_tun(&self, tun: &str) {
        let owner = self.gw_ns.exec(&["cat", &format!("/sys/class/net/{tun}/owner")]);
        assert_eq!(owner.trim(), NOBODY_UID.to_string(), "tun owner");
        let addr = self.gw_ns.exec(&["ip", "-4", "addr", "show", "dev", tun]);
        assert!(addr.contains(&format!("{TUNNEL_SERVER}/24")), "tun address: {addr}\n{}", self.gateway.log());
    }

    fn enroll(&self) {
        let added = self.gateway.cli(&["clients", "add", "alice", "--server", "vpn1"]);
        let link = added.lines().find(|l| l.starts_with("https://")).unwrap_or_else(|| panic!("no link in: {added}"));
        let out = self.xdpgate(&self.c1, &["client", "enroll", link, "--profile", &self.profile.display().to_string()]);
        assert!(out.0, "enroll failed: {}", out.1);
    }

    fn xdpgate(&self, ns: &NetNs, args: &[&str]) -> (bool, String) {
        let out = ns
            .command(&xdpgate_bin().display().to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"));
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// The OpenVPN server, started as `nobody` on the controller's persistent tun.
    ///
    /// Debian's udev makes `/dev/net/tun` mode 0666; where it is 0600 (some containers), the
    /// server gets a private mount namespace with a 0666 node of the same device bound over
    /// it, so it still never runs as root.
    fn start_server(&self, tun: &str) -> Proc {
        let d = &self.dir.0;
        let client_fp = {
            let out = run(Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(d.join("client.crt")));
            out.trim().split_once('=').map(|(_, fp)| fp.to_owned()).unwrap_or_default()
        };
        let args = [
            "--mode server --tls-server --proto udp4 --port 1194 --dev",
            tun,
            "--dev-type tun --topology subnet --ifconfig 10.8.0.1 255.255.255.0 --ifconfig-pool 10.8.0.10 10.8.0.50 \
             --push 'topology subnet' --push 'route-gateway 10.8.0.1' --ifconfig-noexec --route-noexec --disable-dco \
             --duplicate-cn --keepalive 2 10 --dh none --verb 3",
        ]
        .join(" ");
        let script = format!(
            "set -e\n\
             if [ \"$(stat -c %a /dev/net/tun)\" != 666 ]; then\n\
               mount -t tmpfs -o mode=0755 none {d}/devtun && mknod -m 0666 {d}/devtun/tun c 10 200 && mount --bind {d}/devtun/tun /dev/net/tun\n\
             fi\n\
             exec setpriv --reuid nobody --regid nogroup --clear-groups openvpn {args} --cert {d}/server.crt --key {d}/server.key \
             --peer-fingerprint {client_fp} --management {d}/run/management.sock unix --management-client-auth \
             --log {d}/run/server.log\n",
            d = d.display(),
        );
        fs::create_dir_all(d.join("devtun")).unwrap_or_else(|e| panic!("devtun: {e}"));
        let mut cmd = self.gw_ns.command("unshare");
        let out = fs::File::create(d.join("server.out")).unwrap_or_else(|e| panic!("server.out: {e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("server.out: {e}"));
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]).stdin(Stdio::null()).stdout(out).stderr(err);
        let proc = Proc(self.gw_ns.spawn_command(&mut cmd));
        let log = d.join("run/server.log");
        assert!(wait_for(Duration::from_secs(15), || read(&log).contains("Initialization Sequence Completed")), "OpenVPN server did not start:\n{}{}", read(&d.join("server.out")), read(&log));
        assert!(
            wait_for(Duration::from_secs(10), || self.gateway.log().contains("following OpenVPN's management interface")),
            "the controller did not connect to the management socket:\n{}",
            self.gateway.log()
        );
        proc
    }

    /// An OpenVPN client in `ns` with `auth` as its `--auth-user-pass` file; logs to `name`.log.
    fn start_client(&self, ns: &NetNs, auth: &Path, name: &str) -> (Proc, PathBuf) {
        let d = &self.dir.0;
        let log = d.join(format!("{name}.log"));
        let mut cmd = ns.command("openvpn");
        cmd.args(["--client", "--proto", "udp4", "--remote", &self.l1.b.v4.to_string(), &VPN_PORT.to_string()])
            .args(["--dev", "tun", "--dev-type", "tun", "--disable-dco", "--nobind", "--verb", "3", "--explicit-exit-notify", "1"])
            .args(["--peer-fingerprint", &self.server_fp, "--connect-retry", "1", "--hand-window", "5"])
            .arg("--cert")
            .arg(d.join("client.crt"))
            .arg("--key")
            .arg(d.join("client.key"))
            .arg("--auth-user-pass")
            .arg(auth)
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        (Proc(ns.spawn_command(&mut cmd)), log)
    }

    fn openings(&self) -> String {
        self.gateway.cli(&["openings", "list"])
    }
}

#[test]
fn openvpn_connects_only_after_approval_with_its_one_time_token() {
    let lab = Lab::new();
    let tun = lab.tun.name.clone();
    let _server = lab.start_server(&tun);
    let server_log = lab.dir.0.join("run/server.log");
    let c1_ip = lab.l1.a.v4.to_string();
    let echo = UdpEcho::start(&lab.gw_ns, SocketAddr::new(IpAddr::V4(TUNNEL_SERVER), 7777));

    // 1. Before approval: the client's packets are dropped by XDP, OpenVPN never sees them.
    let early_auth = lab.dir.0.join("early.auth");
    fs::write(&early_auth, "alice\nnot-a-token\n").unwrap_or_else(|e| panic!("{e}"));
    {
        let (_client, log) = lab.start_client(&lab.c1, &early_auth, "early");
        thread::sleep(Duration::from_secs(4));
        assert!(!read(&log).contains("Peer Connection Initiated"), "handshake before approval:\n{}", read(&log));
        assert!(!read(&server_log).contains(&c1_ip), "the server saw the client before approval:\n{}", read(&server_log));
    }

    // 2. Approval writes the OpenVPN credentials; the tunnel comes up and carries traffic.
    let auth = lab.dir.0.join("alice.auth");
    let (ok, out) = lab.xdpgate(
        &lab.c1,
        &["client", "connect", "--profile", &lab.profile.display().to_string(), "--server", "vpn1", "--openvpn-auth", &auth.display().to_string()],
    );
    assert!(ok, "approval failed: {out}");
    let auth_text = read(&auth);
    assert!(auth_text.starts_with("alice\n") && auth_text.lines().nth(1).is_some_and(|p| p.len() == 32), "{auth_text:?}");
    assert_eq!(fs::metadata(&auth).map(|m| m.permissions().mode() & 0o777).unwrap_or(0), 0o600);
    let (client, log) = lab.start_client(&lab.c1, &auth, "alice");
    assert!(
        wait_for(Duration::from_secs(20), || read(&log).contains("Initialization Sequence Completed")),
        "tunnel not up after approval:\nclient:\n{}\nserver:\n{}\ncontroller:\n{}",
        read(&log),
        read(&server_log),
        lab.gateway.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || udp_roundtrip(&lab.c1, None, echo.local_addr(), Duration::from_millis(500))),
        "no answer through the tunnel"
    );
    assert!(lab.openings().contains(&c1_ip), "{}", lab.openings());
    assert!(lab.gateway.log().contains("session opening held"), "{}", lab.gateway.log());

    // 3. Meanwhile: the same credentials from another namespace get nothing back (XDP), and
    //    the spent token is refused even from the approved address.
    let stolen = lab.dir.0.join("stolen.auth");
    fs::copy(&auth, &stolen).unwrap_or_else(|e| panic!("{e}"));
    {
        let (_thief, thief_log) = lab.start_client(&lab.c2, &stolen, "thief");
        thread::sleep(Duration::from_secs(4));
        assert!(!read(&thief_log).contains("Peer Connection Initiated"), "{}", read(&thief_log));
        assert!(!read(&server_log).contains(&lab.c2_ip), "the server saw the thief:\n{}", read(&server_log));
    }
    {
        let (_replay, replay_log) = lab.start_client(&lab.c1, &stolen, "replay");
        assert!(
            wait_for(Duration::from_secs(20), || read(&replay_log).contains("AUTH_FAILED")),
            "a spent token must be refused:\n{}",
            read(&replay_log)
        );
    }
    assert!(udp_roundtrip(&lab.c1, None, echo.local_addr(), Duration::from_millis(1000)), "the first tunnel is unaffected");

    // 4. Disconnect (explicit exit notify): the opening closes after the grace period.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(client.0.id()).unwrap_or(0));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap_or_else(|e| panic!("SIGTERM: {e}"));
    let mut client = client;
    assert!(wait_for(Duration::from_secs(10), || matches!(client.0.try_wait(), Ok(Some(_)))), "client did not exit on SIGTERM");
    drop(client);
    assert!(
        wait_for(Duration::from_secs(10), || lab.openings() == "no openings\n"),
        "opening still there after disconnect:\n{}\n{}",
        lab.openings(),
        lab.gateway.log()
    );
    assert!(lab.gateway.log().contains("opening closed after disconnect"), "{}", lab.gateway.log());
}
