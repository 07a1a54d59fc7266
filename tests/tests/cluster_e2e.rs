//! End to end, in network namespaces around one router: a client, a real load balancer
//! (HAProxy, TCP mode, `send-proxy-v2`), two stateless web nodes and two gateway hosts, each
//! owning a different server. Approvals go client → HAProxy → any web node → the owning
//! controller over the cluster API (mutual TLS); the gate opens only on the owner, only for
//! the client's address, never for the balancer's. A dead owner costs a fast `unavailable`
//! while the other keeps working and its openings stay enforced; a node whose certificate is
//! from another CA is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use xdpgate_tests::{
    Echoes, Gateway, NetNs, Proc, VethLink, require_root, start_web_node, tcp_connects,
    udp_roundtrip, xdpgate_bin,
};

const GUARDED: u16 = 1194;
const WEB_PORT: u16 = 8443;
const CLUSTER_PORT: u16 = 7443;
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn xdpgate(args: &[&str]) -> Output {
    Command::new(xdpgate_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("xdpgate {args:?}: {e}"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_listening(ns: &NetNs, addr: SocketAddr, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ns
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{addr} exited during start-up ({status}):\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not listening:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `xdpgate web` in `ns` with `config`.
fn start_web(ns: &NetNs, config: &Path, listen: SocketAddr, log: &Path) -> Proc {
    Proc(
        start_web_node(ns.name(), config, listen, log, START_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn web_config(
    dir: &Path,
    node: &str,
    listen: SocketAddr,
    lb: IpAddr,
    controllers: &[(&str, SocketAddr)],
) -> PathBuf {
    let list: Vec<String> = controllers
        .iter()
        .map(|(name, addr)| format!("{{ name = {name:?}, address = \"{addr}\" }}"))
        .collect();
    let path = dir.join(format!("{node}.toml"));
    fs::write(
        &path,
        format!(
            r#"[web]
listen = "{listen}"
cert = {cert:?}
key = {key:?}
trusted_proxies = ["{lb}"]
proxy_protocol_peers = ["{lb}"]
rate_limit_per_minute = 60000
rate_limit_burst = 2000
request_timeout_ms = 3000

[web.cluster]
ca = {ca:?}
cert = {ncert:?}
key = {nkey:?}
refresh_ms = 500
controllers = [{list}]
"#,
            cert = dir.join("web-tls/cert.pem"),
            key = dir.join("web-tls/key.pem"),
            ca = dir.join(node).join("ca.pem"),
            ncert = dir.join(node).join("node.pem"),
            nkey = dir.join(node).join("node.key"),
            list = list.join(", "),
        ),
    )
    .unwrap();
    path
}

#[allow(clippy::too_many_arguments)]
fn gateway_sections(
    dir: &Path,
    shared: &Path,
    node: &str,
    listen: SocketAddr,
    server: &str,
    id: u32,
    public: IpAddr,
    lb: IpAddr,
) -> String {
    format!(
        r#"
[approvals]
public_url = "https://{lb}:{WEB_PORT}"
web_cert = {cert:?}
front_socket = {front:?}
timestamp_window_secs = 60

[cluster]
node = "{node}"
listen = "{listen}"
ca = {ca:?}
cert = {ncert:?}
key = {nkey:?}
crl = {crl:?}
allowed_peers = ["web-*"]

[[server]]
name = "{server}"
id = {id}
connect_window_secs = 120
idle_timeout_secs = 60
max_lifetime_secs = 3600
public_ipv4 = "{public}"

[[server.service]]
protocol = "udp"
port = {GUARDED}

[[server.service]]
protocol = "tcp"
port = {GUARDED}
"#,
        cert = shared.join("web-tls/cert.pem"),
        front = dir.join("front.sock"),
        ca = shared.join(node).join("ca.pem"),
        ncert = shared.join(node).join("node.pem"),
        nkey = shared.join(node).join("node.key"),
        crl = shared.join("ca/crl.pem"),
    )
}

struct Lab {
    client: NetNs,
    links: Vec<VethLink>,
    gw_a: Gateway,
    gw_b: Gateway,
    shared: tempfile_dir::Dir,
    web_logs: Vec<PathBuf>,
    _procs: Vec<Proc>,
    _echoes: Vec<Echoes>,
    _ns: Vec<NetNs>,
}

/// A folder removed on drop (no extra dependency).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Lab {
    fn lb_ip(&self) -> IpAddr {
        IpAddr::V4(self.links[1].b.v4)
    }
    fn client_ip(&self) -> IpAddr {
        IpAddr::V4(self.links[0].b.v4)
    }
    fn gw_ip(&self, which: usize) -> IpAddr {
        IpAddr::V4(self.links[4 + which].b.v4)
    }

    fn client_cmd(&self, args: &[&str]) -> Output {
        self.client
            .command(&xdpgate_bin().display().to_string())
            .args(args)
            .output()
            .unwrap()
    }

    fn enroll(&self, gateway: &Gateway, name: &str, server: &str) -> PathBuf {
        let added = gateway.cli(&["clients", "add", name, "--server", server]);
        let link = added
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in: {added}"));
        assert!(
            link.starts_with(&format!("https://{}:{WEB_PORT}", self.lb_ip())),
            "{link}"
        );
        let profile = self.shared.0.join(format!("{name}.profile.json"));
        let out = self.client_cmd(&[
            "client",
            "enroll",
            link,
            "--profile",
            &profile.display().to_string(),
            "--device-name",
            "laptop",
        ]);
        ok(&out, "enroll through the balancer");
        profile
    }

    fn connect(&self, profile: &Path, server: &str) -> (bool, String, Duration) {
        let started = Instant::now();
        let out = self.client_cmd(&[
            "client",
            "connect",
            "--profile",
            &profile.display().to_string(),
            "--server",
            server,
            "--json",
        ]);
        let elapsed = started.elapsed();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            elapsed,
        )
    }

    fn guarded(&self, which: usize) -> (bool, bool) {
        let to = SocketAddr::new(self.gw_ip(which), GUARDED);
        (
            udp_roundtrip(&self.client, Some(self.client_ip()), to, PROBE_TIMEOUT),
            tcp_connects(&self.client, Some(self.client_ip()), to, PROBE_TIMEOUT),
        )
    }

    fn new() -> Lab {
        require_root();
        let core = NetNs::new_unique("ccore");
        core.enable_forwarding();
        let names = ["ccli", "clb", "cweb", "cweb", "cgw", "cgw"];
        let nodes: Vec<NetNs> = names.iter().map(|n| NetNs::new_unique(n)).collect();
        let links: Vec<VethLink> = nodes
            .iter()
            .enumerate()
            .map(|(i, ns)| VethLink::new(&core, ns, 71 + i as u8))
            .collect();
        for (ns, link) in nodes.iter().zip(&links) {
            ns.add_default_routes(link.a.v4, link.a.v6);
        }
        let shared =
            tempfile_dir::Dir(std::env::temp_dir().join(xdpgate_tests::unique_name("xcl")));
        fs::create_dir_all(&shared.0).unwrap();
        let dir = shared.0.clone();
        let ca = dir.join("ca");
        ok(
            &xdpgate(&["cluster", "ca", "init", "--dir", &ca.display().to_string()]),
            "ca init",
        );
        // One role per certificate; web-8 is revoked before the controllers start (they load
        // the CA's revocation list).
        for (node, role) in [
            ("gw-a", "controller"),
            ("gw-b", "controller"),
            ("web-1", "web"),
            ("web-2", "web"),
            ("web-8", "web"),
        ] {
            let out = dir.join(node);
            ok(
                &xdpgate(&[
                    "cluster",
                    "cert",
                    "issue",
                    "--ca",
                    &ca.display().to_string(),
                    "--name",
                    node,
                    "--role",
                    role,
                    "--out",
                    &out.display().to_string(),
                ]),
                "cert issue",
            );
        }
        let revoked = xdpgate(&[
            "cluster",
            "cert",
            "revoke",
            "--ca",
            &ca.display().to_string(),
            "--cert",
            &dir.join("web-8/node.pem").display().to_string(),
        ]);
        ok(&revoked, "cert revoke");
        let lb = IpAddr::V4(links[1].b.v4);
        let web_addrs = [
            SocketAddr::new(IpAddr::V4(links[2].b.v4), WEB_PORT),
            SocketAddr::new(IpAddr::V4(links[3].b.v4), WEB_PORT),
        ];
        let cluster_addrs = [
            SocketAddr::new(IpAddr::V4(links[4].b.v4), CLUSTER_PORT),
            SocketAddr::new(IpAddr::V4(links[5].b.v4), CLUSTER_PORT),
        ];

        let echoes: Vec<Echoes> = [4, 5]
            .into_iter()
            .map(|i| {
                Echoes::start(
                    &nodes[i],
                    [SocketAddr::new(IpAddr::V4(links[i].b.v4), GUARDED)],
                )
            })
            .collect();
        let gw_a = Gateway::start_with(&nodes[4], &[&links[4].b.ifname], |gdir| {
            gateway_sections(
                gdir,
                &dir,
                "gw-a",
                cluster_addrs[0],
                "vpn-a",
                1,
                IpAddr::V4(links[4].b.v4),
                lb,
            )
        });
        let gw_b = Gateway::start_with(&nodes[5], &[&links[5].b.ifname], |gdir| {
            gateway_sections(
                gdir,
                &dir,
                "gw-b",
                cluster_addrs[1],
                "vpn-b",
                2,
                IpAddr::V4(links[5].b.v4),
                lb,
            )
        });

        let controllers = [("gw-a", cluster_addrs[0]), ("gw-b", cluster_addrs[1])];
        let mut procs = Vec::new();
        let mut web_logs = Vec::new();
        for (i, node) in ["web-1", "web-2"].iter().enumerate() {
            let config = web_config(&dir, node, web_addrs[i], lb, &controllers);
            let log = dir.join(format!("{node}.log"));
            procs.push(start_web(&nodes[2 + i], &config, web_addrs[i], &log));
            web_logs.push(log);
        }

        let haproxy_cfg = dir.join("haproxy.cfg");
        fs::write(
            &haproxy_cfg,
            format!(
                "global\n  maxconn 256\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
                 frontend fe\n  bind {lb}:{WEB_PORT}\n  default_backend be\n\n\
                 backend be\n  balance roundrobin\n  server w1 {} send-proxy-v2\n  server w2 {} send-proxy-v2\n",
                web_addrs[0], web_addrs[1]
            ),
        )
        .unwrap();
        let hlog = dir.join("haproxy.log");
        let hout = fs::File::create(&hlog).unwrap();
        let mut haproxy = nodes[1]
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(&haproxy_cfg)
            .stdin(Stdio::null())
            .stdout(hout.try_clone().unwrap())
            .stderr(hout)
            .spawn()
            .unwrap_or_else(|e| panic!("starting haproxy (installed by `cargo xtask setup`): {e}"));
        wait_listening(
            &nodes[1],
            SocketAddr::new(lb, WEB_PORT),
            &mut haproxy,
            &hlog,
        );
        procs.push(Proc(haproxy));

        let mut ns = vec![core];
        let mut nodes = nodes.into_iter();
        let client = nodes.next().unwrap();
        ns.extend(nodes);
        Lab {
            client,
            links,
            gw_a,
            gw_b,
            shared,
            web_logs,
            _procs: procs,
            _echoes: echoes,
            _ns: ns,
        }
    }

    /// Forwarding latencies (µs) the web nodes logged.
    fn forwarding_us(&self) -> Vec<u64> {
        let mut all = Vec::new();
        for log in &self.web_logs {
            // Plain text: logs carry no ANSI codes when stderr is not a terminal.
            for line in fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("forwarded"))
            {
                if let Some(v) = line
                    .split("elapsed_us=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                {
                    all.push(v);
                }
            }
        }
        all.sort_unstable();
        all
    }

    fn web_log(&self) -> String {
        self.web_logs
            .iter()
            .map(|l| fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

#[test]
fn cluster_routes_each_approval_to_its_owner_through_a_real_balancer() {
    let mut lab = Lab::new();
    let (client_ip, lb_ip) = (lab.client_ip().to_string(), lab.lb_ip().to_string());

    // The operator's view, with a web node's certificate.
    let web1_config = lab.shared.0.join("web-1.toml");
    let status = ok(
        &lab._ns[2]
            .command(&xdpgate_bin().display().to_string())
            .args(["cluster", "status", "--config"])
            .arg(&web1_config)
            .output()
            .unwrap(),
        "cluster status",
    );
    assert!(
        status.contains("gw-a")
            && status.contains("vpn-a")
            && status.contains("gw-b")
            && status.contains("vpn-b"),
        "{status}"
    );
    assert!(
        status.contains("SERVING") && status.contains("version=0.1.0"),
        "{status}"
    );

    assert_eq!(lab.guarded(0), (false, false), "A closed before approval");
    assert_eq!(lab.guarded(1), (false, false), "B closed before approval");

    let alice = lab.enroll(&lab.gw_a, "alice", "vpn-a");
    let bob = lab.enroll(&lab.gw_b, "bob", "vpn-b");

    let (approved, out, _) = lab.connect(&alice, "vpn-a");
    assert!(approved, "alice approved for A: {out}\n{}", lab.web_log());
    assert!(
        out.contains(&lab.gw_ip(0).to_string()),
        "the answer names gateway A's address: {out}"
    );
    assert_eq!(lab.guarded(0), (true, true), "A open for the client");
    assert_eq!(lab.guarded(1), (false, false), "B still closed");

    let (approved, out, _) = lab.connect(&bob, "vpn-b");
    assert!(approved, "bob approved for B: {out}");
    assert!(out.contains(&lab.gw_ip(1).to_string()), "{out}");
    assert_eq!(lab.guarded(1), (true, true), "B open for the client");

    for gw in [&lab.gw_a, &lab.gw_b] {
        let openings = gw.cli(&["openings", "list"]);
        assert!(openings.contains(&client_ip), "{openings}");
        assert!(
            !openings.contains(&lb_ip),
            "the balancer's address is never opened: {openings}"
        );
    }
    let a_open = lab.gw_a.cli(&["openings", "list"]);
    assert!(!a_open.contains("vpn-b"), "{a_open}");

    // Both web nodes served (round robin).
    for _ in 0..20 {
        let (approved, out, _) = lab.connect(&alice, "vpn-a");
        assert!(approved, "{out}");
    }
    let logs: Vec<String> = lab
        .web_logs
        .iter()
        .map(|l| fs::read_to_string(l).unwrap_or_default())
        .collect();
    // Each connect is two requests (the address echo `GET /v1/address`, then the approval), so
    // strict round robin may send every echo to one node and every approval to the other.
    assert!(
        logs.iter().all(|l| l.contains("answered")),
        "both web nodes answered:\n{}",
        lab.web_log()
    );
    assert!(
        logs.iter().any(|l| l.contains("forwarded")),
        "approvals were forwarded:\n{}",
        lab.web_log()
    );

    // B's controller dies: B fails fast with `unavailable`, A keeps working, B's opening holds.
    lab.gw_b.kill9();
    let (approved, out, elapsed) = lab.connect(&bob, "vpn-b");
    assert!(
        !approved && out.contains("unavailable"),
        "B is unavailable: {out}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "fails fast, took {elapsed:?}: {out}"
    );
    let (approved, out, _) = lab.connect(&alice, "vpn-a");
    assert!(approved, "A keeps working: {out}");
    assert_eq!(
        lab.guarded(1),
        (true, true),
        "B's opening is enforced while its controller is down"
    );

    lab.gw_b.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (approved, out, _) = lab.connect(&bob, "vpn-b");
        if approved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B works again after restart: {out}"
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(lab.guarded(1), (true, true));

    // A node with a certificate from another CA can neither list nor push.
    let rogue_ca = lab.shared.0.join("rogue-ca");
    ok(
        &xdpgate(&[
            "cluster",
            "ca",
            "init",
            "--dir",
            &rogue_ca.display().to_string(),
        ]),
        "rogue ca",
    );
    let rogue = lab.shared.0.join("web-9");
    ok(
        &xdpgate(&[
            "cluster",
            "cert",
            "issue",
            "--ca",
            &rogue_ca.display().to_string(),
            "--name",
            "web-9",
            "--role",
            "web",
            "--out",
            &rogue.display().to_string(),
        ]),
        "rogue cert",
    );
    fs::copy(lab.shared.0.join("web-1/ca.pem"), rogue.join("ca.pem.real")).unwrap();
    fs::remove_file(rogue.join("ca.pem")).unwrap();
    fs::rename(rogue.join("ca.pem.real"), rogue.join("ca.pem")).unwrap();
    let cfg = web_config(
        &lab.shared.0,
        "web-9",
        "127.0.0.1:1".parse().unwrap(),
        lab.lb_ip(),
        &[("gw-a", SocketAddr::new(lab.gw_ip(0), CLUSTER_PORT))],
    );
    let out = lab._ns[0]
        .command(&xdpgate_bin().display().to_string())
        .args(["cluster", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a foreign certificate is refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        lab.gw_a.log().contains("refused in the TLS handshake"),
        "{}",
        lab.gw_a.log()
    );

    // Roles and revocation: a controller's certificate cannot call as a web node, and a
    // revoked web certificate is refused, both at the handshake.
    for (node, why) in [
        ("gw-b", "a controller certificate used as a web node"),
        ("web-8", "a revoked web certificate"),
    ] {
        let cfg = web_config(
            &lab.shared.0,
            node,
            "127.0.0.1:1".parse().unwrap(),
            lab.lb_ip(),
            &[("gw-a", SocketAddr::new(lab.gw_ip(0), CLUSTER_PORT))],
        );
        let out = lab._ns[0]
            .command(&xdpgate_bin().display().to_string())
            .args(["cluster", "status", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{why} is refused: {text}");
        assert!(
            !text.contains("servers=vpn-a"),
            "{why} lists nothing: {text}"
        );
        assert!(
            text.contains("UNREACHABLE"),
            "{why}: refused at the connection, not a config error: {text}"
        );
    }

    let us = lab.forwarding_us();
    assert!(us.len() >= 20, "{us:?}");
    let p = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    println!(
        "forwarding latency web node -> owner (µs, n={}): p50={} p99={}",
        us.len(),
        p(0.5),
        p(0.99)
    );
}
