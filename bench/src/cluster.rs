//! Part 4 (cluster): the latency of forwarding an approval from a stateless web node to the
//! controller that owns its server, over the cluster's mutual-TLS gRPC API.
//!
//! One web node in cluster mode and one gateway, each in its own namespace, joined by a veth
//! pair; the cluster CA and node certificates come from the real `xdpgate cluster` commands.
//! A client in the web node's namespace sends pre-signed approvals over a few kept-alive HTTPS
//! sessions; the web node logs `forwarded … elapsed_us=` for each call it forwards (the gRPC
//! round trip plus the owner's approval work), and those are the samples.
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use xdpgate::{approval::ClientProfile, client::https, tls};
use xdpgate_tests::{Gateway, NetNs, Proc, VethLink, start_web_node, unique_name, xdpgate_bin};

use crate::{Opts, percentile, progress, report::Report};

const SUBNET: u8 = 236;
const GUARDED: u16 = 1194;
const WEB_PORT: u16 = 8443;
const CLUSTER_PORT: u16 = 7443;
/// Concurrent kept-alive HTTPS sessions.
const CONCURRENCY: usize = 4;
/// Requests sent first to open the sessions and the gRPC channel; not measured.
const WARM_UP: usize = CONCURRENCY;
/// Bound on any one CLI command or start-up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the whole measured batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(180);

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `xdpgate args` (in `ns` if given) under `timeout`; its stdout, or an error with stderr.
fn xdpgate(ns: Option<&NetNs>, args: &[&str]) -> Result<String> {
    let secs = STEP_TIMEOUT.as_secs().to_string();
    let bin = xdpgate_bin().display().to_string();
    let mut cmd = match ns {
        Some(ns) => ns.command("timeout"),
        None => Command::new("timeout"),
    };
    let out = cmd
        .arg(&secs)
        .arg(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running xdpgate {args:?}"))?;
    if !out.status.success() {
        bail!(
            "xdpgate {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The gateway's sections: approvals pointing at the web node, the cluster API, one server.
fn gateway_sections(
    dir: &Path,
    shared: &Path,
    listen: SocketAddr,
    web: SocketAddr,
    public: IpAddr,
) -> String {
    format!(
        "[approvals]\npublic_url = \"https://{web}\"\nweb_cert = {cert:?}\nfront_socket = {front:?}\nclient_approvals_per_minute = 0\n\n\
         [cluster]\nnode = \"gw-a\"\nlisten = \"{listen}\"\nca = {ca:?}\ncert = {ncert:?}\nkey = {nkey:?}\n\
         allowed_peers = [\"web-*\"]\n\n\
         [[server]]\nname = \"vpn1\"\nid = 1\npublic_ipv4 = \"{public}\"\naddress_policy = \"open_all\"\n\n\
         [[server.service]]\nprotocol = \"udp\"\nport = {GUARDED}\n",
        cert = shared.join("web-tls/cert.pem"),
        front = dir.join("front.sock"),
        ca = shared.join("gw-a/ca.pem"),
        ncert = shared.join("gw-a/node.pem"),
        nkey = shared.join("gw-a/node.key"),
    )
}

/// Writes the web node's config (cluster mode, one controller) and returns its path.
fn web_config(shared: &Path, listen: SocketAddr, controller: SocketAddr) -> Result<PathBuf> {
    let path = shared.join("web-1.toml");
    let text = format!(
        "[web]\nlisten = \"{listen}\"\ncert = {cert:?}\nkey = {key:?}\n\
         rate_limit_per_minute = 1000000\nrate_limit_burst = 100000\nrequest_timeout_ms = 5000\n\n\
         [web.cluster]\nca = {ca:?}\ncert = {ncert:?}\nkey = {nkey:?}\nrefresh_ms = 5000\n\
         controllers = [{{ name = \"gw-a\", address = \"{controller}\" }}]\n",
        cert = shared.join("web-tls/cert.pem"),
        key = shared.join("web-tls/key.pem"),
        ca = shared.join("web-1/ca.pem"),
        ncert = shared.join("web-1/node.pem"),
        nkey = shared.join("web-1/node.key"),
    );
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts `xdpgate web` in `ns` (debug log to `log`) and waits until it accepts on `listen`.
fn start_web(ns: &NetNs, config: &Path, listen: SocketAddr, log: &Path) -> Result<Proc> {
    Ok(Proc(
        start_web_node(ns.name(), config, listen, log, STEP_TIMEOUT).map_err(anyhow::Error::msg)?,
    ))
}

/// The text without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The `elapsed_us` of every successful `forwarded` line in `log`.
fn forwarded_us(log: &str) -> Vec<u64> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("forwarded") && l.contains("ok=true"))
        .filter_map(|l| {
            l.split("elapsed_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Peak resident set size of process `pid` in MB (VmHWM).
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    crate::require_xdpgate_bin()?;
    let web_ns = NetNs::new_unique("xbclw");
    let gateway_ns = NetNs::new_unique("xbclg");
    let link = VethLink::new(&web_ns, &gateway_ns, SUBNET);
    let shared = TempDir(std::env::temp_dir().join(unique_name("xbcl")));
    fs::create_dir_all(&shared.0).with_context(|| format!("creating {}", shared.0.display()))?;
    let dir = shared.0.clone();

    progress("cluster: CA and node certificates");
    let ca = dir.join("ca").display().to_string();
    xdpgate(None, &["cluster", "ca", "init", "--dir", &ca])?;
    for node in ["gw-a", "web-1"] {
        let role = if node.starts_with("web") {
            "web"
        } else {
            "controller"
        };
        xdpgate(
            None,
            &[
                "cluster",
                "cert",
                "issue",
                "--ca",
                &ca,
                "--name",
                node,
                "--role",
                role,
                "--out",
                &dir.join(node).display().to_string(),
            ],
        )?;
    }
    let web_addr = SocketAddr::new(IpAddr::V4(link.a.v4), WEB_PORT);
    let cluster_addr = SocketAddr::new(IpAddr::V4(link.b.v4), CLUSTER_PORT);
    let gateway = Gateway::start_with(&gateway_ns, &[&link.b.ifname], |gdir| {
        gateway_sections(gdir, &dir, cluster_addr, web_addr, IpAddr::V4(link.b.v4))
    });
    let web_log = dir.join("web-1.log");
    let web = start_web(
        &web_ns,
        &web_config(&dir, web_addr, cluster_addr)?,
        web_addr,
        &web_log,
    )?;

    // Enrollment goes through the web node too (the web node offers it to the controller).
    let added = gateway.cli(&["clients", "add", "bench", "--server", "vpn1"]);
    let enroll_link = added
        .lines()
        .find(|l| l.starts_with("https://"))
        .context("no enrollment link")?;
    let profile_path = dir.join("bench.json").display().to_string();
    xdpgate(
        Some(&web_ns),
        &["client", "enroll", enroll_link, "--profile", &profile_path],
    )
    .map_err(|e| {
        anyhow!(
            "{e:#}\nweb log:\n{}\ncontroller log:\n{}",
            fs::read_to_string(&web_log).unwrap_or_default(),
            gateway.log()
        )
    })?;
    let profile = ClientProfile::from_json(&fs::read_to_string(&profile_path)?)?;

    let total = if opts.quick { 20 } else { 1000 };
    progress(&format!("cluster: signing {} requests", total + WARM_UP));
    let mut bodies = sign(&profile, total + WARM_UP)?;
    let measured = bodies.split_off(WARM_UP);
    let endpoint = https::Endpoint::parse(&profile.web_endpoint)?;
    let tls_config = Arc::new(tls::pinned_client_config(tls::pins_from_anchor_pem(
        &profile.tls_anchor_pem,
    )?)?);

    progress(&format!(
        "cluster: {total} approvals through the web node, {CONCURRENCY} kept-alive sessions"
    ));
    let (skip, failures, elapsed) = web_ns.run(|| -> Result<(usize, usize, Duration)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let sessions = runtime.block_on(open_sessions(&endpoint, &tls_config))?;
        let (sessions, warm_failures) = runtime.block_on(send_all(sessions, bodies));
        if warm_failures > 0 {
            bail!(
                "{warm_failures} of {WARM_UP} warm-up approvals failed; web log:\n{}",
                fs::read_to_string(&web_log).unwrap_or_default()
            );
        }
        let skip = forwarded_us(&fs::read_to_string(&web_log)?).len();
        let started = Instant::now();
        let (_sessions, failures) = runtime.block_on(send_all(sessions, measured));
        Ok((skip, failures, started.elapsed()))
    })?;
    let rss = peak_rss_mb(web.0.id());

    // The web node logs each call as it completes; give the last lines a moment to land.
    let expected = skip + total - failures;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut samples = forwarded_us(&fs::read_to_string(&web_log)?);
    while samples.len() < expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        samples = forwarded_us(&fs::read_to_string(&web_log)?);
    }
    let mut samples = samples.split_off(skip.min(samples.len()));
    if samples.is_empty() {
        bail!(
            "no `forwarded` lines in the web node's log ({failures} of {total} failed):\n{}",
            fs::read_to_string(&web_log).unwrap_or_default()
        );
    }
    samples.sort_unstable();
    let (p50, p99) = (
        percentile(&samples, 0.5) as f64 / 1000.0,
        percentile(&samples, 0.99) as f64 / 1000.0,
    );
    progress(&format!(
        "cluster: forward p50 {p50:.2} ms, p99 {p99:.2} ms over {} samples ({failures} failed, {:.1} s)",
        samples.len(),
        elapsed.as_secs_f64()
    ));
    if failures > 0 {
        report.note(
            "cluster.failures",
            format!("{failures} of {total} requests were not approved"),
        );
    }
    report.set("cluster.forward_p50_ms", p50);
    report.set("cluster.forward_p99_ms", p99);
    report.set("cluster.forward_samples", samples.len() as f64);
    if let Some(rss) = rss {
        report.set("memory.web_rss_mb", rss);
    }
    report.note(
        "cluster.method",
        format!(
            "one web node in cluster mode and one gateway in separate namespaces over veth; {total} pre-signed \
             approvals over {CONCURRENCY} kept-alive HTTPS sessions to the web node, which forwards each to the \
             owner over mutual-TLS gRPC; samples are the web node's own `forwarded elapsed_us` (gRPC round trip \
             plus the owner's validation, opening and sealing), after {WARM_UP} warm-up requests; \
             memory.web_rss_mb is the web node's VmHWM after the run"
        ),
    );
    Ok(())
}

/// `count` distinct approval requests for server `vpn1`, signed on every core.
fn sign(profile: &ClientProfile, count: usize) -> Result<Vec<Vec<u8>>> {
    let creds = profile.credentials()?;
    let params = crate::requests::vpn1_params();
    crate::requests::sign_requests(&creds, &params, count)
}

/// Opens the kept-alive sessions (from the calling thread's namespace).
async fn open_sessions(
    endpoint: &https::Endpoint,
    tls_config: &Arc<rustls::ClientConfig>,
) -> Result<Vec<https::Session>> {
    let mut sessions = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let session = tokio::time::timeout(
            Duration::from_secs(10),
            https::Session::open(endpoint, tls_config.clone()),
        )
        .await
        .context("opening an HTTPS session timed out")??;
        sessions.push(session);
    }
    Ok(sessions)
}

/// Sends `bodies` as approvals over `sessions`, one worker per session, each request bounded
/// in time and the whole batch by [`BATCH_TIMEOUT`]. Returns the sessions still usable and
/// how many requests were not approved (a worker whose session breaks stops; the others take
/// the rest of the queue).
async fn send_all(
    sessions: Vec<https::Session>,
    bodies: Vec<Vec<u8>>,
) -> (Vec<https::Session>, usize) {
    let total = bodies.len();
    let deadline = Instant::now() + BATCH_TIMEOUT;
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let mut workers = tokio::task::JoinSet::new();
    for mut session in sessions {
        let queue = queue.clone();
        workers.spawn(async move {
            let mut approved = 0usize;
            loop {
                let Some(body) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return (Some(session), approved);
                };
                if Instant::now() > deadline {
                    return (Some(session), approved);
                }
                let request = https::HttpsRequest::post_json("/v1/approvals", body);
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    session.send(request, 64 * 1024),
                )
                .await
                {
                    Ok(Ok(reply)) if reply.status == 200 => approved += 1,
                    Ok(Ok(_)) => {}
                    _ => return (None, approved),
                }
            }
        });
    }
    let (mut kept, mut approved) = (Vec::new(), 0);
    while let Some(done) = workers.join_next().await {
        if let Ok((session, n)) = done {
            kept.extend(session);
            approved += n;
        }
    }
    (kept, total - approved)
}
