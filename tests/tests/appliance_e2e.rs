//! The appliance: honest `health` exit codes, a gate removed from outside attached again,
//! and Prometheus scraping the controller's metrics, all against the real controller in
//! network namespaces.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use xdpgate_tests::{
    Gateway, NetNs, Proc, UdpEcho, VethLink, require_root, udp_roundtrip, wait_for, xdpgate_bin,
};

const GUARDED: u16 = 1194;
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
const WEB_PORT: u16 = 8443;

const SERVER: &str = r#"
[[server]]
name = "vpn1"
id = 1
connect_window_secs = 60
idle_timeout_secs = 30
max_lifetime_secs = 3600

[[server.service]]
protocol = "udp"
port = 1194
"#;

fn health(gateway: &Gateway) -> (i32, String) {
    let out = gateway.try_cli(&["health"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn xdp_on(ns: &NetNs, ifname: &str) -> bool {
    ns.exec(&["ip", "link", "show", ifname]).contains("xdp")
}

#[test]
fn health_exits_0_serving_1_not_serving_2_unreachable() {
    require_root();
    let client = NetNs::new_unique("hcl");
    let server_ns = NetNs::new_unique("hgw");
    let link = VethLink::new(&client, &server_ns, 51);
    // A second guarded interface that the test can take away from the controller.
    server_ns.exec(&[
        "ip", "link", "add", "hx0", "type", "veth", "peer", "name", "hx1",
    ]);
    server_ns.exec(&["ip", "link", "set", "hx0", "up"]);
    let mut gateway = Gateway::start(&server_ns, &[&link.b.ifname, "hx0"], SERVER);
    let (code, out) = health(&gateway);
    assert_eq!(code, 0, "serving exits 0: {out}");
    assert!(out.starts_with("serving"), "{out}");
    // `--socket` before the subcommand works as well as after it (`health` passes it after).
    let before = Command::new(xdpgate_bin())
        .arg("--socket")
        .arg(gateway.socket())
        .arg("health")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before.status.code(), Some(0), "{before:?}");

    server_ns.exec(&["ip", "link", "del", "hx0"]);
    thread::sleep(Duration::from_millis(500));
    let (code, out) = health(&gateway);
    assert_eq!(code, 1, "not serving exits 1: {out}");
    assert!(
        out.starts_with("not_serving") && out.contains("hx0"),
        "says why, naming the interface: {out}"
    );
    let status = gateway.cli(&["status"]);
    assert!(
        status.contains("interface hx0") && status.contains("NOT SERVING"),
        "{status}"
    );
    assert!(
        status.contains(&format!("interface {}", link.b.ifname)),
        "{status}"
    );

    gateway.kill9();
    let (code, out) = health(&gateway);
    assert_eq!(code, 2, "unreachable exits 2: {out}");
    assert!(out.starts_with("unreachable"), "{out}");
}

#[test]
fn json_logs_carry_their_fields_as_keys_and_text_logs_have_no_ansi_codes() {
    require_root();
    let client = NetNs::new_unique("jcl");
    let server_ns = NetNs::new_unique("jgw");
    let link = VethLink::new(&client, &server_ns, 55);
    let mut gateway = Gateway::start(&server_ns, &[&link.b.ifname], SERVER);
    let text = gateway.log();
    assert!(text.contains("gate ready"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI codes in a log file:\n{text}"
    );
    gateway.restart_with_log_format("json");
    gateway.cli(&[
        "openings",
        "add",
        "--server",
        "vpn1",
        "--ip",
        "192.0.2.9",
        "--ttl",
        "60",
    ]);
    let log = gateway.log();
    let json_lines: Vec<serde_json::Value> = log[text.len()..]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        !json_lines.is_empty(),
        "json lines after the restart:\n{log}"
    );
    for line in &json_lines {
        assert!(
            line["level"].is_string() && line["timestamp"].is_string(),
            "{line}"
        );
    }
    let ready = json_lines
        .iter()
        .find(|l| l["message"] == "gate ready")
        .unwrap_or_else(|| panic!("no gate ready line:\n{log}"));
    assert_eq!(
        ready["services"], 1,
        "event fields are top-level keys: {ready}"
    );
    assert!(ready["attachments"].is_string(), "{ready}");
}

/// Detaches the XDP link pinned at `pin` with BPF_LINK_DETACH, as `bpftool link detach` does.
fn bpf_link_detach(pin: &Path) {
    use std::ffi::CString;
    let path = CString::new(pin.as_os_str().as_encoded_bytes()).unwrap_or_else(|e| panic!("{e}"));
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut get = [0u64; 2];
    get[0] = path.as_ptr() as u64;
    // SAFETY: BPF_OBJ_GET reads a 16-byte attr whose first field points at a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            7 as libc::c_long,
            get.as_mut_ptr(),
            16 as libc::c_long,
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {}: {}",
        pin.display(),
        std::io::Error::last_os_error()
    );
    let fd = i32::try_from(fd).unwrap_or_else(|e| panic!("{e}"));
    // BPF_LINK_DETACH (34): attr { link_fd: u32 }.
    let mut detach = [0u32; 4];
    detach[0] = u32::try_from(fd).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: BPF_LINK_DETACH reads a 4-byte attr holding the link fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            34 as libc::c_long,
            detach.as_mut_ptr(),
            16 as libc::c_long,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd was returned by BPF_OBJ_GET above and is closed once.
    unsafe { libc::close(fd) };
    assert_eq!(rc, 0, "BPF_LINK_DETACH: {err}");
}

#[test]
fn a_gate_removed_from_outside_is_attached_again_within_a_second() {
    require_root();
    let client = NetNs::new_unique("dcl");
    let server_ns = NetNs::new_unique("dgw");
    let link = VethLink::new(&client, &server_ns, 52);
    let target = SocketAddr::new(IpAddr::V4(link.b.v4), GUARDED);
    let _echo = UdpEcho::start(&server_ns, target);
    let gateway = Gateway::start(&server_ns, &[&link.b.ifname], SERVER);
    let ifname = link.b.ifname.clone();
    assert!(
        !udp_roundtrip(&client, None, target, PROBE_TIMEOUT),
        "closed while guarded"
    );
    let version = std::fs::read_dir(gateway.bpffs_dir())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let pin = version.join(format!("link-{ifname}"));
    assert!(pin.exists(), "link pinned at {}", pin.display());

    // 1. `xdpgate detach` while the controller runs removes every pin.
    let out = Command::new(xdpgate_bin())
        .args(["detach", "--config"])
        .arg(gateway.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(1), || pin.exists()),
        "link pinned again within a second:\n{}",
        gateway.log()
    );
    assert!(xdp_on(&server_ns, &ifname), "still attached");
    assert!(
        !udp_roundtrip(&client, None, target, PROBE_TIMEOUT),
        "still closed after `xdpgate detach`"
    );
    assert_eq!(health(&gateway).0, 0, "serving: {}", health(&gateway).1);

    // 2. The link itself detached in the kernel (BPF_LINK_DETACH, like `bpftool link detach`).
    bpf_link_detach(&pin);
    let started = Instant::now();
    assert!(
        wait_for(Duration::from_secs(1), || xdp_on(&server_ns, &ifname)),
        "attached again within a second:\n{}",
        gateway.log()
    );
    let took = started.elapsed();
    assert!(
        !udp_roundtrip(&client, None, target, PROBE_TIMEOUT),
        "closed again after re-attach ({took:?})"
    );
    let status = gateway.cli(&["status"]);
    assert!(
        status.contains(&format!("interface {ifname}"))
            && status.contains(": serving; kernel: XDP program"),
        "{status}"
    );
    let (code, out) = health(&gateway);
    assert_eq!(code, 0, "{out}");
    assert!(
        gateway.log().contains("removed from outside"),
        "logged:\n{}",
        gateway.log()
    );

    // 3. `ip link set dev X xdp off` is refused by the kernel while the link holds the gate.
    let off = server_ns.try_exec(&["ip", "link", "set", "dev", &ifname, "xdp", "off"]);
    thread::sleep(Duration::from_millis(500));
    assert!(
        xdp_on(&server_ns, &ifname),
        "gate attached after `xdp off` (exit {:?})",
        off.status
    );
    assert!(
        !udp_roundtrip(&client, None, target, PROBE_TIMEOUT),
        "closed after `xdp off`"
    );

    // The openings still work through the re-attached program.
    gateway.cli(&[
        "openings",
        "add",
        "--server",
        "vpn1",
        "--ip",
        &link.a.v4.to_string(),
        "--ttl",
        "60",
    ]);
    assert!(
        udp_roundtrip(&client, None, target, PROBE_TIMEOUT),
        "opened through the re-attached gate"
    );
}

/// POSTs a body that is not a request to the web front at `addr` over TLS (no certificate
/// check: only the answer's arrival matters); the status line.
fn post_garbage(ns: &NetNs, addr: SocketAddr) -> Option<String> {
    let out = ns
        .command("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .args([
            "--data",
            "{\"v\":2}",
            &format!("https://{addr}/v1/approvals"),
        ])
        .output()
        .ok()?;
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    (code.len() == 3 && code != "000").then_some(code)
}

/// GET `path` from `addr` (HTTP/1.0), the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// Asks Prometheus at `prom` for `query`; the first sample's value.
fn prom_value(ns: &NetNs, prom: SocketAddr, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let body = ns.run(|| http_get(prom, &format!("/api/v1/query?query={encoded}")))?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_drops_openings_and_approvals() {
    require_root();
    let prometheus = Path::new("/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "prometheus is missing: run `cargo xtask setup`"
    );
    let client = NetNs::new_unique("pcl");
    let server_ns = NetNs::new_unique("pgw");
    let link = VethLink::new(&client, &server_ns, 53);
    let target = SocketAddr::new(IpAddr::V4(link.b.v4), GUARDED);
    let _echo = UdpEcho::start(&server_ns, target);
    let metrics: SocketAddr = "127.0.0.1:9477".parse().unwrap();
    let web_metrics: SocketAddr = "127.0.0.1:9478".parse().unwrap();
    let web_listen = SocketAddr::new(IpAddr::V4(link.b.v4), WEB_PORT);
    let gateway = Gateway::start_with(&server_ns, &[&link.b.ifname], |dir| {
        let web_dir = dir.join("web");
        format!(
            "[approvals]\npublic_url = \"https://{web_listen}\"\nweb_cert = {cert:?}\nfront_socket = {front:?}\n\n\
             [web]\nlisten = \"{web_listen}\"\ncert = {cert:?}\nkey = {key:?}\nfront_socket = {front:?}\n\
             metrics_listen = \"{web_metrics}\"\n\n\
             [[server]]\nname = \"vpn1\"\nid = 1\npublic_ipv4 = \"{gw}\"\n\n\
             [[server.service]]\nprotocol = \"udp\"\nport = {GUARDED}\n",
            cert = web_dir.join("cert.pem"),
            key = web_dir.join("key.pem"),
            front = dir.join("front.sock"),
            gw = link.b.v4,
        )
    });
    // The fixture writes [controller] first; metrics_listen goes there, so restart with it.
    let config = std::fs::read_to_string(gateway.config_path()).unwrap();
    let config = config.replacen(
        "[controller]\n",
        &format!("[controller]\nmetrics_listen = \"{metrics}\"\n"),
        1,
    );
    std::fs::write(gateway.config_path(), config).unwrap();
    let mut gateway = gateway;
    gateway.restart();
    gateway.start_web(web_listen);
    for _ in 0..5 {
        assert!(
            !udp_roundtrip(&client, None, target, Duration::from_millis(200)),
            "dropped"
        );
    }
    // A real enrollment and approval through the web front, and one refused request.
    let profile = gateway.dir().join("alice.profile.json");
    let added = gateway.cli(&["clients", "add", "alice", "--server", "vpn1"]);
    let enroll_link = added
        .lines()
        .find(|l| l.starts_with("https://"))
        .unwrap_or_else(|| panic!("no link in: {added}"));
    let client_cmd = |args: &[&str]| {
        client
            .command(&xdpgate_bin().display().to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"))
    };
    let profile_arg = profile.display().to_string();
    let enrolled = client_cmd(&["client", "enroll", enroll_link, "--profile", &profile_arg]);
    assert!(enrolled.status.success(), "enroll: {enrolled:?}");
    let approved = client_cmd(&[
        "client",
        "connect",
        "--profile",
        &profile_arg,
        "--server",
        "vpn1",
    ]);
    assert!(
        approved.status.success(),
        "connect: {approved:?}\n{}",
        gateway.log()
    );
    let garbage = post_garbage(&client, web_listen);
    assert_eq!(
        garbage.as_deref(),
        Some("400"),
        "the front refuses a malformed request"
    );
    // A well-formed request under a wrong HMAC secret reaches the controller and is refused.
    let mut forged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    forged["hmac_secret"] = serde_json::Value::String({
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([7u8; 64])
    });
    let forged_path = gateway.dir().join("forged.profile.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let refused = client_cmd(&[
        "client",
        "connect",
        "--profile",
        &forged_path.display().to_string(),
        "--server",
        "vpn1",
    ]);
    assert!(!refused.status.success(), "a wrong secret is refused");
    assert!(
        udp_roundtrip(&client, None, target, PROBE_TIMEOUT),
        "passed once approved"
    );
    let direct = server_ns
        .run(|| http_get(metrics, "/metrics"))
        .unwrap_or_else(|| panic!("no /metrics:\n{}", gateway.log()));
    assert!(direct.contains("xdpgate_gate_packets_total"), "{direct}");

    let dir = gateway.dir().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xdpgate\n    static_configs:\n      \
             - targets: ['{metrics}', '{web_metrics}']\n"
        ),
    )
    .unwrap();
    let prom: SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", server_ns.name()))
        .arg(prometheus)
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
    let mut prom_proc = Proc(child);
    let dropped = r#"sum(xdpgate_gate_packets_total{server="vpn1",verdict="dropped"})"#;
    let ok = wait_for(Duration::from_secs(30), || {
        prom_value(&server_ns, prom, dropped).is_some_and(|v| v >= 5.0)
    });
    let prom_log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert!(
        ok,
        "Prometheus never saw the drops: {:?}\n{prom_log}",
        prom_value(&server_ns, prom, dropped)
    );
    let passed = prom_value(
        &server_ns,
        prom,
        r#"sum(xdpgate_gate_packets_total{server="vpn1",verdict="passed"})"#,
    );
    assert!(passed.is_some_and(|v| v >= 1.0), "passed: {passed:?}");
    let openings = prom_value(&server_ns, prom, r#"xdpgate_openings{server="vpn1"}"#);
    assert_eq!(openings, Some(1.0), "one opening");
    let approvals = prom_value(
        &server_ns,
        prom,
        r#"xdpgate_approvals_total{code="approved"}"#,
    );
    assert_eq!(approvals, Some(1.0), "one approval");
    let malformed = prom_value(
        &server_ns,
        prom,
        r#"sum(xdpgate_approvals_total{code!="approved"})"#,
    );
    assert!(
        malformed.is_some_and(|v| v >= 1.0),
        "the refusal counted: {malformed:?}"
    );
    let enrollments = prom_value(
        &server_ns,
        prom,
        r#"xdpgate_enrollments_total{code="enrolled"}"#,
    );
    assert_eq!(enrollments, Some(1.0), "one enrollment");
    let web_up = format!(r#"up{{instance="{web_metrics}"}}"#);
    let scraped = wait_for(Duration::from_secs(10), || {
        prom_value(&server_ns, prom, &web_up) == Some(1.0)
    });
    assert!(
        scraped,
        "the web front is scraped too: {:?}\n{}\n{}",
        prom_value(&server_ns, prom, &web_up),
        server_ns
            .run(|| http_get(web_metrics, "/metrics"))
            .unwrap_or_else(|| "no answer on the web front's metrics listener".into()),
        gateway.web_log()
    );
    let refused = prom_value(
        &server_ns,
        prom,
        "sum(xdpgate_web_connections_refused_total)",
    );
    assert_eq!(refused, Some(0.0), "nothing refused: {refused:?}");
    let approval_latency = prom_value(&server_ns, prom, "xdpgate_approval_duration_seconds_count");
    assert!(
        approval_latency.is_some_and(|v| v >= 2.0),
        "approvals timed: {approval_latency:?}"
    );
    let serving = prom_value(
        &server_ns,
        prom,
        &format!(r#"xdpgate_gate_serving{{interface="{}"}}"#, link.b.ifname),
    );
    assert_eq!(serving, Some(1.0), "serving");
    let sweeps = prom_value(&server_ns, prom, "xdpgate_sweep_duration_seconds_count");
    assert!(sweeps.is_some_and(|v| v >= 1.0), "sweeps timed: {sweeps:?}");
    assert!(
        prom_proc.terminate(Duration::from_secs(5)),
        "prometheus stops on SIGTERM"
    );
}
