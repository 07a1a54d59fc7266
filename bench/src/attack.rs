//! Part `attack`: valid approvals from one client namespace at a steady rate (each over a new
//! HTTPS connection, as the reference client makes them) while another namespace attacks the
//! real web front:
//! - `no_flood`: nothing, for comparison;
//! - `idle_flood`: 5,000 idle TLS connections plus 500 slowloris connections from 32 addresses;
//! - `garbage_flood`: wrong-HMAC approval requests as fast as it can from many addresses on
//!   kept-alive connections, with the rate limit raised so every one reaches the controller;
//! - `rate_limited`: the same from a few addresses against the configured rate limit, so
//!   nearly every request is answered 429 by the front.
//!
//! Server CPU per request comes from `/proc/<pid>/stat` (utime + stime) of the web front and
//! the controller over the flood's window, divided by the requests answered in it.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use xdpgate::{
    approval::{ClientProfile, build_request},
    client::https,
    tls,
};
use xdpgate_tests::{Flood, FloodSpec, Gateway, NetNs, VethLink, start_web_node_logging};

use crate::{Opts, percentile, progress, report::Report};

const CLIENT_SUBNET: u8 = 238;
const ATTACKER_SUBNET: u8 = 239;
const WEB_PORT: u16 = 8443;

/// Sizes of one run.
struct Plan {
    valid_per_sec: f64,
    phase: Duration,
    idle_tls: usize,
    slowloris: usize,
    idle_sources: u8,
    garbage_sources: u8,
    garbage_connections_per_source: usize,
    limited_sources: u8,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                valid_per_sec: 4.0,
                phase: Duration::from_secs(3),
                idle_tls: 300,
                slowloris: 30,
                idle_sources: 4,
                garbage_sources: 8,
                garbage_connections_per_source: 1,
                limited_sources: 2,
            }
        } else {
            Self {
                valid_per_sec: 5.0,
                phase: Duration::from_secs(20),
                idle_tls: 5000,
                slowloris: 500,
                idle_sources: 32,
                garbage_sources: 64,
                garbage_connections_per_source: 2,
                limited_sources: 8,
            }
        }
    }
}

fn controller_sections(client_side: &VethLink, dir: &Path) -> String {
    let web = dir.join("web");
    format!(
        "[approvals]\npublic_url = \"https://{gw}:{WEB_PORT}\"\nweb_cert = {cert:?}\nfront_socket = {front:?}\nfront_socket_user = \"xdpgate-web\"\nclient_approvals_per_minute = 0\n\n\
         [[server]]\nname = \"vpn1\"\nid = 1\npublic_ipv4 = \"{gw}\"\n\n[[server.service]]\nprotocol = \"udp\"\nport = 1194\n",
        gw = client_side.b.v4,
        cert = web.join("cert.pem"),
        front = dir.join("front.sock"),
    )
}

/// A `[web]`-only config for `xdpgate web` with the given per-source rate limit.
fn web_config(dir: &Path, name: &str, per_minute: u32, burst: u32) -> Result<PathBuf> {
    let web = dir.join("web");
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[web]\nlisten = \"0.0.0.0:{WEB_PORT}\"\ncert = {cert:?}\nkey = {key:?}\nfront_socket = {front:?}\n\
             rate_limit_per_minute = {per_minute}\nrate_limit_burst = {burst}\n",
            cert = web.join("cert.pem"),
            key = web.join("key.pem"),
            front = dir.join("front.sock"),
        ),
    )?;
    Ok(path)
}

/// The web front process, killed on drop.
struct Web(Child);

impl Web {
    fn start(ns: &NetNs, config: &Path, listen: SocketAddr, log: &Path) -> Result<Self> {
        // The production default log level: what the front costs as operators run it.
        start_web_node_logging(
            ns.name(),
            config,
            listen,
            log,
            Duration::from_secs(20),
            "info",
        )
        .map(Web)
        .map_err(anyhow::Error::msg)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of `pid` so far, in microseconds.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> Result<f64> { Ok(fields.get(i).context("short stat")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3. They count
    // USER_HZ ticks, which Linux fixes at 100 a second for every userspace interface.
    Ok((ticks(11)? + ticks(12)?) * 1e6 / 100.0)
}

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// One valid approval's outcome.
#[derive(Clone, Copy)]
struct Outcome {
    ok: bool,
    ms: f64,
}

/// Sends pre-signed `bodies` from namespace `ns` at `per_sec`, each on a new connection,
/// without waiting for earlier answers (open loop).
fn valid_approvals(
    ns: &NetNs,
    bodies: Vec<Vec<u8>>,
    per_sec: f64,
    endpoint: &https::Endpoint,
    tls_config: &Arc<rustls::ClientConfig>,
) -> Result<Vec<Outcome>> {
    ns.run(|| -> Result<Vec<Outcome>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
            let mut sent = tokio::task::JoinSet::new();
            for body in bodies {
                tick.tick().await;
                let (endpoint, tls_config) = (endpoint.clone(), tls_config.clone());
                sent.spawn(async move {
                    let started = Instant::now();
                    let request = https::HttpsRequest::post_json("/v1/approvals", body);
                    let reply = https::send(
                        &endpoint,
                        tls_config,
                        request,
                        Duration::from_secs(10),
                        64 * 1024,
                    )
                    .await;
                    Outcome {
                        ok: matches!(reply, Ok(ref r) if r.status == 200),
                        ms: started.elapsed().as_secs_f64() * 1e3,
                    }
                });
            }
            let mut outcomes = Vec::new();
            while let Some(done) = sent.join_next().await {
                outcomes.push(done.unwrap_or(Outcome {
                    ok: false,
                    ms: 10_000.0,
                }));
            }
            anyhow::Ok(outcomes)
        })
    })
}

/// Records `<phase>.valid_success` (fraction) and `<phase>.valid_p99_ms`.
fn record_valid(report: &mut Report, phase: &str, outcomes: &[Outcome]) -> f64 {
    let ok = outcomes.iter().filter(|o| o.ok).count();
    let mut ms: Vec<f64> = outcomes.iter().map(|o| o.ms).collect();
    ms.sort_by(f64::total_cmp);
    let p99 = if ms.is_empty() {
        f64::NAN
    } else {
        percentile(&ms, 0.99)
    };
    report.set(
        &format!("attack.{phase}.valid_success"),
        ok as f64 / outcomes.len().max(1) as f64,
    );
    report.set(&format!("attack.{phase}.valid_p99_ms"), p99);
    progress(&format!(
        "attack {phase}: {ok} of {} valid approvals succeeded, p99 {p99:.1} ms",
        outcomes.len()
    ));
    p99
}

/// What a request flood saw.
#[derive(Default)]
struct FloodCounts {
    answered: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
}

/// Sends `body` over kept-alive HTTPS connections (`per_source` from each of `sources`) as
/// fast as answers come, until `stop`; bounded by `limit` too.
#[allow(clippy::too_many_arguments)]
fn request_flood(
    ns: &NetNs,
    sources: Vec<IpAddr>,
    per_source: usize,
    body: Vec<u8>,
    target: SocketAddr,
    tls_config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
    limit: Duration,
) -> thread::JoinHandle<()> {
    let name = ns.name().to_owned();
    thread::spawn(move || {
        xdpgate_tests::in_netns(&name, move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let deadline = Instant::now() + limit;
                let body = bytes_of(body);
                let mut tasks = tokio::task::JoinSet::new();
                for source in sources
                    .iter()
                    .flat_map(|s| std::iter::repeat_n(*s, per_source))
                {
                    let (stop, counts, tls_config, body) = (
                        stop.clone(),
                        counts.clone(),
                        tls_config.clone(),
                        body.clone(),
                    );
                    tasks.spawn(async move {
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            let Ok(mut session) = kept_alive(source, target, &tls_config).await
                            else {
                                counts.errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            };
                            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                                match session.send(body.clone()).await {
                                    Ok(status) => {
                                        counts.answered.fetch_add(1, Ordering::Relaxed);
                                        if status == 429 {
                                            counts.rate_limited.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                    Err(()) => {
                                        counts.errors.fetch_add(1, Ordering::Relaxed);
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
        });
    })
}

fn bytes_of(body: Vec<u8>) -> http_body_util::Full<hyper::body::Bytes> {
    http_body_util::Full::new(hyper::body::Bytes::from(body))
}

/// A kept-alive HTTP/1.1 connection over TLS from a given source address.
struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    authority: String,
    _driver: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn kept_alive(
    source: IpAddr,
    target: SocketAddr,
    tls_config: &Arc<rustls::ClientConfig>,
) -> Result<KeptAlive> {
    let connect = async {
        let tcp = xdpgate_tests::connect_from(source, target).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
        let tls = tokio_rustls::TlsConnector::from(tls_config.clone())
            .connect(name, tcp)
            .await?;
        anyhow::Ok(tls)
    };
    let tls = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .context("connect timed out")??;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(KeptAlive {
        sender,
        authority: target.to_string(),
        _driver: AbortOnDrop(driver),
    })
}

impl KeptAlive {
    /// One request; its status, after reading the whole answer.
    async fn send(&mut self, body: http_body_util::Full<hyper::body::Bytes>) -> Result<u16, ()> {
        use http_body_util::BodyExt as _;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("/v1/approvals")
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|_| ())?;
        self.sender.ready().await.map_err(|_| ())?;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = self.sender.send_request(request).await.map_err(|_| ())?;
            let status = response.status().as_u16();
            response.into_body().collect().await.map_err(|_| ())?;
            Ok::<_, ()>(status)
        });
        answer.await.map_err(|_| ())?
    }
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    crate::require_xdpgate_bin()?;
    let plan = Plan::new(opts.quick);
    let client = NetNs::new_unique("xkcl");
    let attacker = NetNs::new_unique("xkat");
    let gateway_ns = NetNs::new_unique("xkgw");
    let client_side = VethLink::new(&client, &gateway_ns, CLIENT_SUBNET);
    let attacker_side = VethLink::new(&attacker, &gateway_ns, ATTACKER_SUBNET);
    let mut gateway = Gateway::start_with(&gateway_ns, &[&client_side.b.ifname], |dir| {
        controller_sections(&client_side, dir)
    });
    // Measured at the production default log level, like the web front.
    gateway.restart_with_log_filter("info");
    let dir = gateway.dir().to_owned();
    let listen = SocketAddr::new(IpAddr::V4(client_side.b.v4), WEB_PORT);
    // The valid client's rate fits the limits of every phase; the open config lets every
    // garbage request through to the controller.
    let open_config = web_config(&dir, "web-open.toml", 10_000_000, 1_000_000)?;
    let limited_config = web_config(&dir, "web-limited.toml", 600, 20)?;
    let mut web = Web::start(&gateway_ns, &open_config, listen, &dir.join("web-open.log"))?;
    let controller_pid = gateway
        .controller_pid()
        .context("the controller has no pid")?;

    let added = gateway.cli(&["clients", "add", "bench", "--server", "vpn1"]);
    let enroll_link = added
        .lines()
        .find(|l| l.starts_with("https://"))
        .context("no enrollment link")?;
    let profile_path = dir.join("bench.json");
    let out = client
        .command(&xdpgate_tests::xdpgate_bin().display().to_string())
        .args([
            "client",
            "enroll",
            enroll_link,
            "--profile",
            &profile_path.display().to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "enrollment failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let profile = ClientProfile::from_json(&std::fs::read_to_string(&profile_path)?)?;
    let creds = profile.credentials()?;
    // The default (proven-address) policy: the valid client names the address it sends from.
    let mut params = crate::requests::vpn1_params();
    params.public_ipv4 = Some(client_side.a.v4);
    let endpoint = https::Endpoint::parse(&profile.web_endpoint)?;
    let tls_config = Arc::new(tls::pinned_client_config(tls::pins_from_anchor_pem(
        &profile.tls_anchor_pem,
    )?)?);
    let per_phase = (plan.valid_per_sec * plan.phase.as_secs_f64()).ceil() as usize;
    let target = SocketAddr::new(IpAddr::V4(attacker_side.b.v4), WEB_PORT);
    let mut next_host = 10u8;
    let mut hosts = |count: u8| -> Vec<IpAddr> {
        let hosts = (0..count)
            .map(|i| IpAddr::V4(attacker_side.a.add_v4_host(next_host + i)))
            .collect();
        next_host += count;
        hosts
    };

    // No flood.
    progress(&format!(
        "attack: {per_phase} valid approvals without a flood"
    ));
    let bodies = crate::requests::sign_requests(&creds, &params, per_phase)?;
    let baseline = valid_approvals(&client, bodies, plan.valid_per_sec, &endpoint, &tls_config)?;
    let baseline_p99 = record_valid(report, "no_flood", &baseline);
    let rss_before = status_kib(web.pid(), "VmRSS")?;

    // (a) Idle TLS and slowloris connections.
    progress(&format!(
        "attack: idle flood of {} TLS + {} slowloris connections",
        plan.idle_tls, plan.slowloris
    ));
    let bodies = crate::requests::sign_requests(&creds, &params, per_phase)?;
    let flood = Flood::start(
        &attacker,
        FloodSpec {
            target,
            sources: hosts(plan.idle_sources),
            idle_tcp: 0,
            idle_tls: plan.idle_tls,
            slowloris: plan.slowloris,
            reconnect: Duration::from_millis(200),
            ramp: plan.phase / 4,
            duration: plan.phase * 3,
        },
        tls_config.clone(),
    );
    thread::sleep(plan.phase / 4);
    let idle = valid_approvals(&client, bodies, plan.valid_per_sec, &endpoint, &tls_config)?;
    let held = flood.held();
    let rss_peak = status_kib(web.pid(), "VmHWM")?;
    let flood_report = flood.stop();
    record_valid(report, "idle_flood", &idle);
    report.set(
        "attack.idle_flood.attacker_connections_peak",
        flood_report.held_peak as f64,
    );
    report.set("attack.idle_flood.attacker_connections_at_end", held as f64);
    report.set(
        "attack.idle_flood.closed_by_front",
        flood_report.closed_by_server as f64,
    );
    report.set("attack.web_peak_rss_mib", rss_peak / 1024.0);
    thread::sleep(Duration::from_secs(2));
    let rss_after = status_kib(web.pid(), "VmRSS")?;
    report.set("attack.idle_flood.web_rss_before_mib", rss_before / 1024.0);
    report.set("attack.idle_flood.web_rss_after_mib", rss_after / 1024.0);
    progress(&format!(
        "attack idle flood: attacker held {} at most, front closed {}; front RSS {:.0} MiB before, peak {:.0}, {:.0} after",
        flood_report.held_peak,
        flood_report.closed_by_server,
        rss_before / 1024.0,
        rss_peak / 1024.0,
        rss_after / 1024.0
    ));

    // (b) Wrong-HMAC requests from many addresses on kept-alive connections.
    let mut garbage = build_request(&creds, &params, xdpgate::clock::unix_secs())?.0;
    garbage.hmac[0] ^= 0x55;
    let garbage = serde_json::to_vec(&garbage)?;
    for (phase, sources, per_source) in [
        (
            "garbage_flood",
            hosts(plan.garbage_sources),
            plan.garbage_connections_per_source,
        ),
        (
            "rate_limited",
            hosts(plan.limited_sources),
            plan.garbage_connections_per_source * 4,
        ),
    ] {
        if phase == "rate_limited" {
            drop(web);
            web = Web::start(
                &gateway_ns,
                &limited_config,
                listen,
                &dir.join("web-limited.log"),
            )?;
        }
        progress(&format!(
            "attack: {phase}: wrong-HMAC requests from {} addresses, {per_source} connections each",
            sources.len()
        ));
        let bodies = crate::requests::sign_requests(&creds, &params, per_phase)?;
        let (stop, counts) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(FloodCounts::default()),
        );
        let attack = request_flood(
            &attacker,
            sources,
            per_source,
            garbage.clone(),
            target,
            tls_config.clone(),
            stop.clone(),
            counts.clone(),
            plan.phase * 3,
        );
        // Let the connections open before the window starts.
        thread::sleep(Duration::from_millis(500));
        let (web_cpu0, controller_cpu0, answered0, limited0) = (
            cpu_us(web.pid())?,
            cpu_us(controller_pid)?,
            counts.answered.load(Ordering::Relaxed),
            counts.rate_limited.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        let valid = valid_approvals(&client, bodies, plan.valid_per_sec, &endpoint, &tls_config)?;
        let seconds = started.elapsed().as_secs_f64();
        let (web_cpu1, controller_cpu1, answered1, limited1) = (
            cpu_us(web.pid())?,
            cpu_us(controller_pid)?,
            counts.answered.load(Ordering::Relaxed),
            counts.rate_limited.load(Ordering::Relaxed),
        );
        stop.store(true, Ordering::Relaxed);
        let _ = attack.join();
        let answered = (answered1 - answered0).max(1) as f64;
        let web_us = (web_cpu1 - web_cpu0) / answered;
        let controller_us = (controller_cpu1 - controller_cpu0) / answered;
        record_valid(report, phase, &valid);
        report.set(
            &format!("attack.{phase}.rejected_per_sec"),
            answered / seconds,
        );
        report.set(&format!("attack.{phase}.web_us_per_request"), web_us);
        report.set(
            &format!("attack.{phase}.controller_us_per_request"),
            controller_us,
        );
        report.set(
            &format!("attack.{phase}.rate_limited_fraction"),
            (limited1 - limited0) as f64 / answered,
        );
        progress(&format!(
            "attack {phase}: {:.0} rejections/s ({:.0}% 429), {web_us:.1} µs web + {controller_us:.1} µs controller CPU each, {} connection errors",
            answered / seconds,
            100.0 * (limited1 - limited0) as f64 / answered,
            counts.errors.load(Ordering::Relaxed)
        ));
    }
    if let (Some(flooded), true) = (
        report.get("attack.garbage_flood.valid_p99_ms"),
        baseline_p99 > 0.0,
    ) {
        report.set(
            "attack.garbage_flood.valid_p99_ratio",
            flooded / baseline_p99,
        );
    }
    report.note(
        "attack.method",
        format!(
            "valid approvals at {}/s, each on a new HTTPS connection, from one namespace while another floods: \
             idle = {} idle TLS + {} slowloris connections from {} addresses; garbage = wrong-HMAC requests on \
             {} kept-alive connections from each of {} addresses, rate limit raised; rate_limited = the same from \
             {} addresses at the default-like limit 600/min burst 20; CPU from /proc/<pid>/stat over the window \
             divided by answered flood requests; {} s per phase",
            plan.valid_per_sec,
            plan.idle_tls,
            plan.slowloris,
            plan.idle_sources,
            plan.garbage_connections_per_source,
            plan.garbage_sources,
            plan.limited_sources,
            plan.phase.as_secs()
        ),
    );
    drop(web);
    drop(gateway);
    Ok(())
}
