//! End to end: one namespace floods the real web front with idle TCP, idle TLS and slowloris
//! connections from several addresses (more than the front's connection cap, and one address
//! past its per-source budget) while a client in another namespace enrolls earlier and then
//! gets approved again and again with the reference client. Every approval must succeed; the
//! front reclaims and refuses, logs only summary lines, and gives its memory back afterwards.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use xdpgate_tests::{
    Flood, FloodSpec, Gateway, NetNs, VethLink, require_root, wait_for, xdpgate_bin,
};

const WEB_PORT: u16 = 8443;
const MAX_CONNECTIONS: u32 = 512;
const PER_SOURCE: u32 = 100;
const APPROVALS: usize = 10;
const SUMMARY_LINE: &str = "connections refused, reclaimed or rate limited since the last summary";

fn sections(client_side: &VethLink, dir: &Path) -> String {
    let web = dir.join("web");
    format!(
        "[approvals]\npublic_url = \"https://{gw}:{WEB_PORT}\"\nweb_cert = {cert:?}\nfront_socket = {front:?}\n\n\
         [web]\nlisten = \"0.0.0.0:{WEB_PORT}\"\ncert = {cert:?}\nkey = {key:?}\nfront_socket = {front:?}\n\
         rate_limit_per_minute = 6000\nrate_limit_burst = 200\n\
         max_connections = {MAX_CONNECTIONS}\nmax_connections_per_source = {PER_SOURCE}\n\n\
         [[server]]\nname = \"vpn1\"\nid = 1\npublic_ipv4 = \"{gw}\"\n\n[[server.service]]\nprotocol = \"udp\"\nport = 1194\n",
        gw = client_side.b.v4,
        cert = web.join("cert.pem"),
        key = web.join("key.pem"),
        front = dir.join("front.sock"),
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading the web front's status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The sum of `field=N` over the summary lines of `log`.
fn summed(log: &str, field: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains(SUMMARY_LINE))
        .filter_map(|line| {
            let at = line.find(&format!(" {field}="))?;
            line[at + field.len() + 2..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn approvals_succeed_while_another_namespace_floods_idle_tls_and_slowloris_connections() {
    require_root();
    let client = NetNs::new_unique("fcl");
    let attacker = NetNs::new_unique("fat");
    let gateway_ns = NetNs::new_unique("fgw");
    let client_side = VethLink::new(&client, &gateway_ns, 77);
    let attacker_side = VethLink::new(&attacker, &gateway_ns, 78);
    let mut gateway = Gateway::start_with(&gateway_ns, &[&client_side.b.ifname], |dir| {
        sections(&client_side, dir)
    });
    let front = SocketAddr::new(IpAddr::V4(client_side.b.v4), WEB_PORT);
    gateway.start_web(front);
    let web_pid = gateway
        .web_pid()
        .unwrap_or_else(|| panic!("the web front has no pid"));

    let added = gateway.cli(&["clients", "add", "alice", "--server", "vpn1"]);
    let link = added
        .lines()
        .find(|l| l.starts_with("https://"))
        .unwrap_or_else(|| panic!("no link in: {added}"));
    let profile = gateway.dir().join("alice.json").display().to_string();
    let bin = xdpgate_bin().display().to_string();
    let run_client = |args: &[&str]| {
        client
            .command(&bin)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"))
    };
    let out = run_client(&["client", "enroll", link, "--profile", &profile]);
    assert!(
        out.status.success(),
        "enroll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let connect = || {
        run_client(&[
            "client",
            "connect",
            "--profile",
            &profile,
            "--server",
            "vpn1",
            "--json",
        ])
    };

    let pem = std::fs::read_to_string(gateway.dir().join("web/cert.pem"))
        .unwrap_or_else(|e| panic!("web cert: {e}"));
    let pins = xdpgate::tls::pins_from_anchor_pem(&pem).unwrap_or_else(|e| panic!("pin: {e}"));
    let tls = Arc::new(
        xdpgate::tls::pinned_client_config(pins).unwrap_or_else(|e| panic!("tls config: {e}")),
    );
    let rss_before = rss_kib(web_pid);

    // Eight addresses share 800 slots (within their budgets, above the cap); a ninth asks
    // for 150 connections, 50 past its budget.
    let sources: Vec<IpAddr> = (10..18)
        .map(|host| IpAddr::V4(attacker_side.a.add_v4_host(host)))
        .collect();
    let greedy = IpAddr::V4(attacker_side.a.add_v4_host(30));
    let target = SocketAddr::new(IpAddr::V4(attacker_side.b.v4), WEB_PORT);
    let started = Instant::now();
    let flood = Flood::start(
        &attacker,
        FloodSpec {
            target,
            sources,
            idle_tcp: 400,
            idle_tls: 300,
            slowloris: 100,
            reconnect: Duration::from_millis(500),
            ramp: Duration::from_secs(2),
            duration: Duration::from_secs(60),
        },
        tls.clone(),
    );
    let greedy_flood = Flood::start(
        &attacker,
        FloodSpec {
            target,
            sources: vec![greedy],
            idle_tcp: 150,
            idle_tls: 0,
            slowloris: 0,
            reconnect: Duration::from_secs(1),
            ramp: Duration::from_millis(500),
            duration: Duration::from_secs(60),
        },
        tls,
    );
    assert!(
        wait_for(Duration::from_secs(15), || flood.held()
            + greedy_flood.held()
            >= u64::from(MAX_CONNECTIONS) / 2),
        "the flood never held {} connections (held {})",
        MAX_CONNECTIONS / 2,
        flood.held() + greedy_flood.held()
    );
    thread::sleep(Duration::from_secs(1));

    let mut failures = Vec::new();
    for i in 0..APPROVALS {
        let out = connect();
        if !out.status.success() {
            failures.push(format!(
                "approval {i}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        thread::sleep(Duration::from_millis(300));
    }
    let rss_peak = rss_kib(web_pid);
    let report = flood.stop();
    let greedy_report = greedy_flood.stop();
    let flood_secs = started.elapsed().as_secs();
    let web_log = gateway.web_log();
    assert!(
        !web_log.contains('\u{1b}'),
        "the web log (not a terminal) carries no ANSI colour codes"
    );
    assert!(
        failures.is_empty(),
        "{} of {APPROVALS} approvals failed during the flood:\n{}\nflood: {report:?}\nweb log tail:\n{}",
        failures.len(),
        failures.join("\n"),
        web_log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        report.held_peak >= u64::from(MAX_CONNECTIONS) / 2,
        "the flood held too little to test anything: {report:?}"
    );
    assert!(
        report.closed_by_server > 0,
        "the front closed none of the flood's connections: {report:?}"
    );
    assert!(
        greedy_report.closed_by_server >= 50,
        "the per-source budget let one address hold more than {PER_SOURCE}: {greedy_report:?}"
    );

    // Refusals are summarized: a few lines, never one per connection.
    assert!(
        wait_for(Duration::from_secs(8), || gateway
            .web_log()
            .contains(SUMMARY_LINE)),
        "no summary line of refused or reclaimed connections in the web log"
    );
    let web_log = gateway.web_log();
    let summaries = web_log
        .lines()
        .filter(|line| line.contains(SUMMARY_LINE))
        .count();
    let warnings = web_log
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .count();
    assert!(
        summaries as u64 <= flood_secs / 5 + 3,
        "{summaries} summary lines in {flood_secs} s"
    );
    assert!(
        warnings <= summaries + 10,
        "{warnings} warnings for {summaries} summaries: refusals are logged one by one"
    );
    assert!(
        summed(&web_log, "refused") >= 50,
        "the summaries count fewer refusals than the per-source budget made"
    );
    assert!(
        summed(&web_log, "reclaimed") > 0,
        "the summaries count no reclaimed connection"
    );

    // After the flood the front's connections close and its memory goes back.
    thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(web_pid);
    assert!(
        rss_after <= rss_before + 64 * 1024,
        "RSS {rss_before} KiB before, {rss_peak} KiB during, {rss_after} KiB after the flood"
    );
    let out = connect();
    assert!(
        out.status.success(),
        "approval after the flood failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(gateway);
}
