//! End to end with a real OpenVPN 2.6 server behind the gate: the controller creates the
//! server's persistent tun interface (owned by `xdpgate-vpn`), the server runs as `xdpgate-vpn` and is
//! followed through its management socket; a client namespace gets no answer before
//! approval, connects with the approval's one-time token and reaches the server through the
//! tunnel, a second namespace holding the same (stolen) credentials gets nothing, the spent
//! token is refused, a controller restart under the live tunnel leaves it working, the
//! opening closes after the client disconnects (though an earlier controller accepted it), and
//! disabling a client cuts its live tunnel.
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use xdpgate_tests::openvpn::{
    INIT_DONE, OpenVpn, Proc, TUNNEL_SERVER, TunGuard, read, start_gateway, wait_for, wait_for_log,
};
use xdpgate_tests::{Gateway, NetNs, UdpEcho, VethLink, require_root, udp_roundtrip, xdpgate_bin};

const WEB_PORT: u16 = 8443;

struct Lab {
    vpn: OpenVpn,
    gateway: Gateway,
    gw_ns: NetNs,
    c1: NetNs,
    c2: NetNs,
    l1: VethLink,
    c2_ip: String,
    profile: PathBuf,
    tun: TunGuard,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let vpn = OpenVpn::generate();
        let gw_ns = NetNs::new_unique("ovgw");
        let c1 = NetNs::new_unique("ovc");
        let c2 = NetNs::new_unique("ovc");
        let l1 = VethLink::new(&c1, &gw_ns, 61);
        let l2 = VethLink::new(&c2, &gw_ns, 62);
        let (gateway, tun) = start_gateway(
            &vpn,
            &gw_ns,
            &[&l1.b.ifname, &l2.b.ifname],
            l1.b.v4,
            WEB_PORT,
        );
        let profile = gateway.dir().join("alice.profile.json");
        let c2_ip = l2.a.v4.to_string();
        let lab = Lab {
            vpn,
            gateway,
            gw_ns,
            c1,
            c2,
            l1,
            c2_ip,
            profile,
            tun,
        };
        lab.check_tun();
        lab.enroll();
        lab
    }

    /// The controller made the tun interface: persistent, owned by xdpgate-vpn, addressed.
    fn check_tun(&self) {
        let tun = &self.tun.name;
        let owner = self
            .gw_ns
            .exec(&["cat", &format!("/sys/class/net/{tun}/owner")]);
        assert_eq!(
            owner.trim(),
            xdpgate_tests::openvpn::vpn_uid().to_string(),
            "tun owner"
        );
        let addr = self.gw_ns.exec(&["ip", "-4", "addr", "show", "dev", tun]);
        assert!(
            addr.contains(&format!("{TUNNEL_SERVER}/24")),
            "tun address: {addr}\n{}",
            self.gateway.log()
        );
    }

    fn enroll(&self) {
        let added = self
            .gateway
            .cli(&["clients", "add", "alice", "--server", "vpn1"]);
        let link = added
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in: {added}"));
        let out = self.xdpgate(
            &self.c1,
            &[
                "client",
                "enroll",
                link,
                "--profile",
                &self.profile.display().to_string(),
            ],
        );
        assert!(out.0, "enroll failed: {}", out.1);
    }

    fn xdpgate(&self, ns: &NetNs, args: &[&str]) -> (bool, String) {
        let out = ns
            .command(&xdpgate_bin().display().to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn start_server(&self) -> Proc {
        self.vpn
            .start_server(&self.gw_ns, &self.tun.name, &self.gateway)
    }

    /// An OpenVPN client in `ns` with `auth` as its `--auth-user-pass` file; logs to `name`.log.
    fn start_client(&self, ns: &NetNs, auth: &Path, name: &str) -> (Proc, PathBuf) {
        self.vpn.start_client(ns, self.l1.b.v4, auth, name)
    }

    fn openings(&self) -> String {
        self.gateway.cli(&["openings", "list"])
    }
}

#[test]
fn openvpn_connects_only_after_approval_with_its_one_time_token() {
    let mut lab = Lab::new();
    let _server = lab.start_server();
    let server_log = lab.vpn.server_log();
    let c1_ip = lab.l1.a.v4.to_string();
    let echo = UdpEcho::start(&lab.gw_ns, SocketAddr::new(IpAddr::V4(TUNNEL_SERVER), 7777));

    // 1. Before approval: the client's packets are dropped by XDP, OpenVPN never sees them.
    let early_auth = lab.vpn.dir().join("early.auth");
    fs::write(&early_auth, "alice\nnot-a-token\n").unwrap_or_else(|e| panic!("{e}"));
    {
        let (_client, log) = lab.start_client(&lab.c1, &early_auth, "early");
        thread::sleep(Duration::from_secs(4));
        assert!(
            !read(&log).contains("Peer Connection Initiated"),
            "handshake before approval:\n{}",
            read(&log)
        );
        assert!(
            !read(&server_log).contains(&c1_ip),
            "the server saw the client before approval:\n{}",
            read(&server_log)
        );
    }

    // 2. Approval writes the OpenVPN credentials; the tunnel comes up and carries traffic.
    let auth = lab.vpn.dir().join("alice.auth");
    let (ok, out) = lab.xdpgate(
        &lab.c1,
        &[
            "client",
            "connect",
            "--profile",
            &lab.profile.display().to_string(),
            "--server",
            "vpn1",
            "--openvpn-auth",
            &auth.display().to_string(),
        ],
    );
    assert!(ok, "approval failed: {out}");
    let auth_text = read(&auth);
    assert!(
        auth_text.starts_with("alice\n") && auth_text.lines().nth(1).is_some_and(|p| p.len() == 32),
        "{auth_text:?}"
    );
    assert_eq!(
        fs::metadata(&auth)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0),
        0o600
    );
    let (client, log) = lab.start_client(&lab.c1, &auth, "alice");
    assert!(
        wait_for_log(&log, INIT_DONE, Duration::from_secs(20)),
        "tunnel not up after approval:\nclient:\n{}\nserver:\n{}\ncontroller:\n{}",
        read(&log),
        read(&server_log),
        lab.gateway.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || udp_roundtrip(
            &lab.c1,
            None,
            echo.local_addr(),
            Duration::from_millis(500)
        )),
        "no answer through the tunnel"
    );
    assert!(lab.openings().contains(&c1_ip), "{}", lab.openings());
    assert!(
        lab.gateway.log().contains("session opening held"),
        "{}",
        lab.gateway.log()
    );

    // 3. Meanwhile: the same credentials from another namespace get nothing back (XDP), and
    //    the spent token is refused even from the approved address.
    let stolen = lab.vpn.dir().join("stolen.auth");
    fs::copy(&auth, &stolen).unwrap_or_else(|e| panic!("{e}"));
    {
        let (_thief, thief_log) = lab.start_client(&lab.c2, &stolen, "thief");
        thread::sleep(Duration::from_secs(4));
        assert!(
            !read(&thief_log).contains("Peer Connection Initiated"),
            "{}",
            read(&thief_log)
        );
        assert!(
            !read(&server_log).contains(&lab.c2_ip),
            "the server saw the thief:\n{}",
            read(&server_log)
        );
    }
    {
        let (_replay, replay_log) = lab.start_client(&lab.c1, &stolen, "replay");
        assert!(
            wait_for(Duration::from_secs(20), || read(&replay_log)
                .contains("AUTH_FAILED")),
            "a spent token must be refused:\n{}",
            read(&replay_log)
        );
    }
    assert!(
        udp_roundtrip(
            &lab.c1,
            None,
            echo.local_addr(),
            Duration::from_millis(1000)
        ),
        "the first tunnel is unaffected"
    );

    // 4. The controller restarts under the live tunnel (an upgrade): the tunnel keeps carrying
    //    traffic, and the new controller follows OpenVPN again.
    lab.gateway.restart();
    assert!(
        udp_roundtrip(
            &lab.c1,
            None,
            echo.local_addr(),
            Duration::from_millis(1000)
        ),
        "tunnel broken by the restart"
    );
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .gateway
            .log()
            .matches("following OpenVPN's management interface")
            .count()
            >= 2),
        "the restarted controller does not follow OpenVPN:\n{}",
        lab.gateway.log()
    );

    // 5. Disconnect (explicit exit notify): the opening closes after the grace period, though
    //    the session was accepted by the controller before the restart.
    let mut client = client;
    assert!(
        client.terminate(Duration::from_secs(10)),
        "client did not exit on SIGTERM"
    );
    drop(client);
    assert!(
        wait_for(Duration::from_secs(10), || lab.openings()
            == "no openings\n"),
        "opening still there after disconnect:\n{}\n{}",
        lab.openings(),
        lab.gateway.log()
    );
    assert!(
        lab.gateway
            .log()
            .contains("opening closed after disconnect"),
        "{}",
        lab.gateway.log()
    );

    // 6. A new approval and tunnel; disabling the client cuts the live tunnel at once
    //    (client-kill), closes the opening, and the client cannot come back.
    let (ok, out) = lab.xdpgate(
        &lab.c1,
        &[
            "client",
            "connect",
            "--profile",
            &lab.profile.display().to_string(),
            "--server",
            "vpn1",
            "--openvpn-auth",
            &auth.display().to_string(),
        ],
    );
    assert!(ok, "second approval failed: {out}");
    let (cut_client, log) = lab.start_client(&lab.c1, &auth, "alice-again");
    assert!(
        wait_for_log(&log, INIT_DONE, Duration::from_secs(20)),
        "second tunnel not up:\n{}",
        read(&log)
    );
    assert!(
        wait_for(Duration::from_secs(5), || udp_roundtrip(
            &lab.c1,
            None,
            echo.local_addr(),
            Duration::from_millis(500)
        )),
        "no answer through the second tunnel"
    );
    let disconnects_before = lab.gateway.log().matches("client disconnected").count();
    lab.gateway.cli(&["clients", "disable", "alice"]);
    assert!(
        wait_for(Duration::from_secs(10), || lab
            .gateway
            .log()
            .contains("client revoked; cutting its tunnels")),
        "no tunnel cut after disable:\n{}",
        lab.gateway.log()
    );
    // OpenVPN reports the killed session's DISCONNECT, which the follower logs.
    let cut_seen = wait_for(Duration::from_secs(10), || {
        lab.gateway.log().matches("client disconnected").count() > disconnects_before
    });
    assert!(
        cut_seen,
        "OpenVPN did not drop the session:\nserver:\n{}\ncontroller:\n{}",
        read(&server_log),
        lab.gateway.log()
    );
    assert_eq!(lab.openings(), "no openings\n");
    assert!(
        !udp_roundtrip(
            &lab.c1,
            None,
            echo.local_addr(),
            Duration::from_millis(1000)
        ),
        "traffic still flows through the tunnel of a disabled client"
    );

    // 7. A DISCONNECT the controller misses: the controller is down (SIGKILL) when the client
    //    vanishes without a word (SIGKILL, no exit notify). The restarted controller has no
    //    session to release, yet the opening closes once the address has been idle for
    //    idle_timeout_secs (10 s), before OpenVPN's own ping-restart (20 s) could report it.
    // The client cut off in step 6 keeps retrying from the same address; its packets would
    // keep the opening below alive (and it is no part of this step), so it goes first.
    drop(cut_client);
    lab.gateway.cli(&["clients", "enable", "alice"]);
    let (ok, out) = lab.xdpgate(
        &lab.c1,
        &[
            "client",
            "connect",
            "--profile",
            &lab.profile.display().to_string(),
            "--server",
            "vpn1",
            "--openvpn-auth",
            &auth.display().to_string(),
        ],
    );
    assert!(ok, "third approval failed: {out}");
    let (client, log) = lab.start_client(&lab.c1, &auth, "alice-vanishes");
    assert!(
        wait_for_log(&log, INIT_DONE, Duration::from_secs(20)),
        "third tunnel not up:\n{}",
        read(&log)
    );
    assert!(
        wait_for(Duration::from_secs(5), || udp_roundtrip(
            &lab.c1,
            None,
            echo.local_addr(),
            Duration::from_millis(500)
        )),
        "no answer through the third tunnel"
    );
    assert!(
        wait_for(Duration::from_secs(5), || lab
            .gateway
            .log()
            .matches("session opening held")
            .count()
            >= 3),
        "third session not held:\n{}",
        lab.gateway.log()
    );
    let timeouts_before = read(&server_log).matches("Inactivity timeout").count();
    lab.gateway.kill9();
    drop(client);
    let vanished = std::time::Instant::now();
    lab.gateway.restart();
    assert!(
        wait_for(Duration::from_secs(17), || lab.openings()
            == "no openings\n"),
        "the idle session opening is still there {:?} after the client vanished:\n{}\n{}",
        vanished.elapsed(),
        lab.openings(),
        lab.gateway.log()
    );
    assert!(
        vanished.elapsed() >= Duration::from_secs(8),
        "closed after {:?}, before the idle timeout",
        vanished.elapsed()
    );
    assert_eq!(
        read(&server_log).matches("Inactivity timeout").count(),
        timeouts_before,
        "OpenVPN had already timed the client out: the test did not show the idle close"
    );
}
