//! Part 3 (end to end): approvals per second through the real web front over HTTPS to the real
//! controller (validate, open the gate, seal), several concurrent kept-alive clients; and the time from
//! an approval's answer to the first packet passing the gate (p50, p99).
use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use xdpgate::{
    approval::{ClientProfile, RequestParams, build_request},
    client::https,
    tls,
};
use xdpgate_tests::{Gateway, NetNs, UdpEcho, VethLink};

use crate::{Opts, percentile, progress, report::Report};

const SUBNET: u8 = 233;
const GUARDED: u16 = 1194;
const WEB_PORT: u16 = 8443;
/// Concurrent HTTPS clients, one run each.
const CONCURRENCY: [usize; 2] = [8, 32];

fn sections(link: &VethLink, dir: &Path) -> String {
    let web = dir.join("web");
    format!(
        "[approvals]\npublic_url = \"https://{gw}:{WEB_PORT}\"\nweb_cert = {cert:?}\nfront_socket = {front:?}\nclient_approvals_per_minute = 0\n\n\
         [web]\nlisten = \"{gw}:{WEB_PORT}\"\ncert = {cert:?}\nkey = {key:?}\nfront_socket = {front:?}\n\
         rate_limit_per_minute = 1000000\nrate_limit_burst = 100000\n\n\
         [[server]]\nname = \"vpn1\"\nid = 1\npublic_ipv4 = \"{gw}\"\naddress_policy = \"open_all\"\n\n[[server.service]]\nprotocol = \"udp\"\nport = {GUARDED}\n",
        gw = link.b.v4,
        cert = web.join("cert.pem"),
        key = web.join("key.pem"),
        front = dir.join("front.sock"),
    )
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    crate::require_xdpgate_bin()?;
    let client = NetNs::new_unique("xbacl");
    let gateway_ns = NetNs::new_unique("xbagw");
    let link = VethLink::new(&client, &gateway_ns, SUBNET);
    let _echo = UdpEcho::start(&gateway_ns, SocketAddr::new(IpAddr::V4(link.b.v4), GUARDED));
    let mut gateway =
        Gateway::start_with(&gateway_ns, &[&link.b.ifname], |dir| sections(&link, dir));
    gateway.start_web(SocketAddr::new(IpAddr::V4(link.b.v4), WEB_PORT));
    let added = gateway.cli(&["clients", "add", "bench", "--server", "vpn1"]);
    let enroll_link = added
        .lines()
        .find(|l| l.starts_with("https://"))
        .context("no enrollment link")?;
    let profile_path = gateway.dir().join("bench.json");
    let bin = xdpgate_tests::xdpgate_bin();
    let out = client
        .command(&bin.display().to_string())
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
            "enrollment failed: {}\nweb log:\n{}\ncontroller log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            gateway.web_log(),
            gateway.log()
        );
    }
    let profile = ClientProfile::from_json(&std::fs::read_to_string(&profile_path)?)?;
    let creds = profile.credentials()?;
    let params = crate::requests::vpn1_params();
    let total = if opts.quick { 32 } else { 4000 };
    progress(&format!("approvals e2e: signing {total} requests"));
    let bodies = crate::requests::sign_requests(&creds, &params, total)?;
    let endpoint = https::Endpoint::parse(&profile.web_endpoint)?;
    let tls_config = Arc::new(tls::pinned_client_config(tls::pins_from_anchor_pem(
        &profile.tls_anchor_pem,
    )?)?);

    // Few clients show the latency-bound rate (each approval waits for its durable commit);
    // many show what group commit makes of it.
    let mut bodies = bodies;
    let mut best = 0.0f64;
    for (level, clients) in CONCURRENCY.iter().enumerate() {
        let share = if level + 1 == CONCURRENCY.len() {
            bodies.len()
        } else {
            total / CONCURRENCY.len()
        };
        let batch: Vec<Vec<u8>> = bodies.drain(..share).collect();
        let count = batch.len();
        progress(&format!(
            "approvals e2e: {count} approvals over HTTPS, {clients} concurrent clients"
        ));
        let (elapsed, failures) =
            client.run(|| send_all(batch, *clients, &endpoint, &tls_config))?;
        if failures > 0 {
            report.note(
                &format!("approvals.e2e_failures_{clients}"),
                format!("{failures} of {count} requests were not approved"),
            );
        }
        let per_sec = (count - failures) as f64 / elapsed.as_secs_f64();
        progress(&format!(
            "approvals e2e: {per_sec:.0} approvals/s with {clients} clients ({failures} failed)"
        ));
        report.set(&format!("approvals.per_sec_{clients}_clients"), per_sec);
        best = best.max(per_sec);
    }
    report.set("approvals.per_sec", best);
    report.note(
        "approvals.method",
        format!(
            "HTTPS through the web front (one kept-alive TLS connection per client; {CONCURRENCY:?} concurrent \
             clients, per_sec is the best), front socket, controller validation, gate opening in the kernel and \
             sealed answer; requests pre-signed"
        ),
    );

    let samples = if opts.quick { 5 } else { 60 };
    progress(&format!(
        "approvals e2e: approval-to-open latency over {samples} approvals"
    ));
    let latencies = open_latencies(
        &client,
        &gateway,
        &link,
        &creds,
        &params,
        &endpoint,
        &tls_config,
        samples,
    )?;
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    report.set("approvals.open_latency_p50_ms", percentile(&sorted, 0.5));
    report.set("approvals.open_latency_p99_ms", percentile(&sorted, 0.99));
    drop(gateway);
    Ok(())
}

/// Sends every body over `clients` kept-alive HTTPS connections at once; the time taken and
/// how many were not approved.
fn send_all(
    bodies: Vec<Vec<u8>>,
    clients: usize,
    endpoint: &https::Endpoint,
    tls_config: &Arc<rustls::ClientConfig>,
) -> Result<(Duration, usize)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let queue = Arc::new(tokio::sync::Mutex::new(bodies));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (queue, endpoint, tls_config) =
                (queue.clone(), endpoint.clone(), tls_config.clone());
            workers.spawn(async move {
                let mut failures = 0usize;
                let mut session = None;
                loop {
                    let Some(body) = queue.lock().await.pop() else {
                        return failures;
                    };
                    if session.is_none() {
                        session = https::Session::open(&endpoint, tls_config.clone())
                            .await
                            .ok();
                    }
                    let Some(open) = session.as_mut() else {
                        failures += 1;
                        continue;
                    };
                    let request = https::HttpsRequest::post_json("/v1/approvals", body);
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        open.send(request, 64 * 1024),
                    )
                    .await
                    {
                        Ok(Ok(reply)) if reply.status == 200 => {}
                        Ok(Ok(_)) => failures += 1,
                        // A broken or timed-out connection is replaced for the next request.
                        _ => {
                            failures += 1;
                            session = None;
                        }
                    }
                }
            });
        }
        let mut failures = 0;
        while let Some(done) = workers.join_next().await {
            failures += done.unwrap_or(1);
        }
        Ok((started.elapsed(), failures))
    })
}

/// For each sample: revoke the client's opening, get an approval, then send UDP probes to
/// the guarded port until one is echoed; the time from the answer to that echo.
#[allow(clippy::too_many_arguments)]
fn open_latencies(
    client: &NetNs,
    gateway: &Gateway,
    link: &VethLink,
    creds: &xdpgate::approval::ClientCredentials,
    params: &RequestParams,
    endpoint: &https::Endpoint,
    tls_config: &Arc<rustls::ClientConfig>,
    samples: usize,
) -> Result<Vec<f64>> {
    let target = SocketAddr::new(IpAddr::V4(link.b.v4), GUARDED);
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        gateway.cli(&["openings", "revoke", "--ip", &link.a.v4.to_string()]);
        let body =
            serde_json::to_vec(&build_request(creds, params, xdpgate::clock::unix_secs())?.0)?;
        let latency = client.run(|| -> Result<f64> {
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(link.a.v4), 0))?;
            socket.connect(target)?;
            socket.set_read_timeout(Some(Duration::from_micros(200)))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let request = https::HttpsRequest::post_json("/v1/approvals", body);
            let reply = runtime.block_on(https::send(
                endpoint,
                tls_config.clone(),
                request,
                Duration::from_secs(10),
                64 * 1024,
            ))?;
            if reply.status != 200 {
                return Err(anyhow!("approval refused: {}", reply.status));
            }
            let answered = Instant::now();
            let mut buf = [0u8; 64];
            while answered.elapsed() < Duration::from_secs(2) {
                socket.send(b"probe")?;
                if socket.recv(&mut buf).is_ok() {
                    return Ok(answered.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Err(anyhow!("no packet passed within 2 s of the approval"))
        })?;
        latencies.push(latency);
    }
    Ok(latencies)
}
