//! A real OpenVPN 2.6 server and clients behind the gate: self-signed keys (peer-fingerprint
//! mode, no CA), the controller's `[server.openvpn]` config, the server run as `xdpgate-vpn` on the
//! controller's persistent tun, clients in their own namespaces, and bounded waits on logs.
//!
//! Used by `tests/openvpn_e2e.rs` and by `cargo xtask demo`. Every guard here cleans up on
//! drop: the key folder, the processes, the tun interface.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

pub use crate::process::{Proc, wait_for};
use crate::{Gateway, NetNs, unique_name};

/// The guarded OpenVPN port (UDP).
pub const VPN_PORT: u16 = 1194;
/// The server's side of the tunnel (set on the tun interface by the controller).
pub const TUNNEL_SERVER: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
/// OpenVPN's system user (and group), owner of the tun interface.
pub const VPN_USER: &str = "xdpgate-vpn";

/// The uid of [`VPN_USER`], created if missing.
pub fn vpn_uid() -> u32 {
    crate::system_uid(VPN_USER)
}
/// What OpenVPN logs once its tunnel is up.
pub const INIT_DONE: &str = "Initialization Sequence Completed";

/// Deletes the persistent tun interface (it outlives every process by design).
pub struct TunGuard {
    pub ns: String,
    pub name: String,
}

impl Drop for TunGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "delete", &self.name])
            .output();
    }
}

/// Panics unless `name` is on the `PATH`.
pub fn need_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    assert!(
        found,
        "`{name}` is not installed: `cargo xtask setup` installs Debian's openvpn and openssl packages"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SHA-256 fingerprint of a certificate (OpenVPN's `--peer-fingerprint` form).
fn fingerprint(cert: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert));
    out.trim()
        .split_once('=')
        .map(|(_, fp)| fp.to_owned())
        .unwrap_or_else(|| panic!("no fingerprint in {out}"))
}

/// A self-signed P-256 certificate and key named `name` in `dir`; returns its fingerprint.
fn self_signed(dir: &Path, name: &str) -> String {
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt"))));
    fingerprint(&dir.join(format!("{name}.crt")))
}

fn chown_vpn(path: &Path) {
    crate::ensure_system_users();
    let user = nix::unistd::User::from_name(VPN_USER)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no user {VPN_USER}"));
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// A file's text, or "" if it cannot be read (yet).
pub fn read(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits up to `limit` for `text` in the log at `path`.
pub fn wait_for_log(path: &Path, text: &str, limit: Duration) -> bool {
    wait_for(limit, || read(path).contains(text))
}

/// The controller's config after `[controller]`: approvals, a web front on `gw:web_port`, and
/// server `vpn1` guarding UDP [`VPN_PORT`] with OpenVPN followed on `socket` and the tun
/// interface `tun` created for `xdpgate-vpn`. `dir` is the gateway's private folder.
pub fn gateway_sections(
    gw: Ipv4Addr,
    web_port: u16,
    dir: &Path,
    socket: &Path,
    tun: &str,
) -> String {
    let web = dir.join("web");
    format!(
        r#"
[approvals]
public_url = "https://{gw}:{web_port}"
web_cert = {cert:?}
front_socket = {front:?}

[web]
listen = "{gw}:{web_port}"
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
tun_owner = "xdpgate-vpn"
tun_group = "xdpgate-vpn"
tun_address = "{TUNNEL_SERVER}/24"
disconnect_grace_ms = 1000
"#,
        cert = web.join("cert.pem"),
        key = web.join("key.pem"),
        front = dir.join("front.sock"),
    )
}

/// A controller and web front in `gw_ns` guarding `interfaces`, configured for OpenVPN by
/// [`gateway_sections`] (the web front listens on `gw:web_port`); returns it with the guard
/// of the tun interface the controller created.
pub fn start_gateway(
    vpn: &OpenVpn,
    gw_ns: &NetNs,
    interfaces: &[&str],
    gw: Ipv4Addr,
    web_port: u16,
) -> (Gateway, TunGuard) {
    start_gateway_with(vpn, gw_ns, interfaces, gw, web_port, |toml| toml)
}

/// [`start_gateway`] with the configuration text passed through `edit` first (e.g. to turn
/// on `device_auth` for vpn1).
pub fn start_gateway_with(
    vpn: &OpenVpn,
    gw_ns: &NetNs,
    interfaces: &[&str],
    gw: Ipv4Addr,
    web_port: u16,
    edit: impl Fn(String) -> String,
) -> (Gateway, TunGuard) {
    let tun = TunGuard {
        ns: gw_ns.name().to_owned(),
        name: unique_name("xgt"),
    };
    let socket = vpn.management_socket();
    let mut gateway = Gateway::start_with(gw_ns, interfaces, |gdir| {
        edit(gateway_sections(gw, web_port, gdir, &socket, &tun.name))
    });
    gateway.start_web(SocketAddr::new(gw.into(), web_port));
    (gateway, tun)
}

/// A folder with the OpenVPN keys, logs and management socket, readable by `xdpgate-vpn`; removed
/// on drop.
pub struct OpenVpn {
    dir: PathBuf,
    server_fp: String,
    client_fp: String,
}

impl OpenVpn {
    /// Creates the folder and a self-signed server and client key pair.
    pub fn generate() -> OpenVpn {
        need_tool("openvpn");
        need_tool("openssl");
        let dir = std::env::temp_dir().join(format!("xdpgate-ovpn-{}", unique_name("ov")));
        fs::create_dir_all(dir.join("run"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // From here on, drop removes the folder, also if a step below panics.
        let mut vpn = OpenVpn {
            dir,
            server_fp: String::new(),
            client_fp: String::new(),
        };
        fs::set_permissions(&vpn.dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod: {e}"));
        chown_vpn(&vpn.dir.join("run"));
        vpn.server_fp = self_signed(&vpn.dir, "server");
        chown_vpn(&vpn.dir.join("server.key"));
        vpn.client_fp = self_signed(&vpn.dir, "client");
        vpn
    }

    /// The folder (for auth files and the like).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the server's management socket will be.
    pub fn management_socket(&self) -> PathBuf {
        self.dir.join("run/management.sock")
    }

    /// The server's log.
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("run/server.log")
    }

    /// The OpenVPN server in `ns`, started as `xdpgate-vpn` on the controller's persistent `tun`;
    /// waits until it is up and `gateway` follows its management interface.
    ///
    /// Debian's udev makes `/dev/net/tun` mode 0666; where it is 0600 (some containers), the
    /// server gets a private mount namespace with a 0666 node of the same device bound over
    /// it, so it still never runs as root.
    pub fn start_server(&self, ns: &NetNs, tun: &str, gateway: &Gateway) -> Proc {
        let d = &self.dir;
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
             exec setpriv --reuid xdpgate-vpn --regid xdpgate-vpn --clear-groups openvpn {args} --cert {d}/server.crt --key {d}/server.key \
             --peer-fingerprint {fp} --management {d}/run/management.sock unix --management-client-auth \
             --log {d}/run/server.log\n",
            d = d.display(),
            fp = self.client_fp,
        );
        fs::create_dir_all(d.join("devtun")).unwrap_or_else(|e| panic!("devtun: {e}"));
        let mut cmd = ns.command("unshare");
        let out =
            fs::File::create(d.join("server.out")).unwrap_or_else(|e| panic!("server.out: {e}"));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("server.out: {e}"));
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let proc = Proc(ns.spawn_command(&mut cmd));
        let log = self.server_log();
        assert!(
            wait_for_log(&log, INIT_DONE, Duration::from_secs(15)),
            "OpenVPN server did not start:\n{}{}",
            read(&d.join("server.out")),
            read(&log)
        );
        assert!(
            wait_for(Duration::from_secs(10), || gateway
                .log()
                .contains("following OpenVPN's management interface")),
            "the controller did not connect to the management socket:\n{}",
            gateway.log()
        );
        proc
    }

    /// An OpenVPN client in `ns` connecting to `remote`:[`VPN_PORT`] with `auth` as its
    /// `--auth-user-pass` file; returns it and its log (`name`.log in the folder).
    pub fn start_client(
        &self,
        ns: &NetNs,
        remote: Ipv4Addr,
        auth: &Path,
        name: &str,
    ) -> (Proc, PathBuf) {
        let d = &self.dir;
        let log = d.join(format!("{name}.log"));
        let mut cmd = ns.command("openvpn");
        cmd.args([
            "--client",
            "--proto",
            "udp4",
            "--remote",
            &remote.to_string(),
            &VPN_PORT.to_string(),
        ])
        .args([
            "--dev",
            "tun",
            "--dev-type",
            "tun",
            "--disable-dco",
            "--nobind",
            "--verb",
            "3",
            "--explicit-exit-notify",
            "1",
        ])
        .args([
            "--peer-fingerprint",
            &self.server_fp,
            "--connect-retry",
            "1",
            "--hand-window",
            "5",
        ])
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
}

impl Drop for OpenVpn {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
