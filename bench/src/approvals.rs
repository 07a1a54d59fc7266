//! Part 3 (in-process): the crypto bound of approvals (parse + validate of real requests, one
//! RSA-4096 PSS verify and one X25519 box open each, against a `MemoryState`) and garbage
//! requests (wrong HMAC) rejected per second per core. The HTTPS end-to-end rate is
//! `approvals_e2e`.
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use xdpgate::approval::{
    AddressPolicy, ClientCredentials, ClientRecord, ClientRsaKey, HmacSecret, MemoryState,
    RequestParams, ServerBoxKeys, ServerPolicy, ValidationConfig, build_request, parse_request,
    validate,
};

use crate::{Opts, progress, report::Report};

/// A fixed RSA-4096 test key of the approval tests (generating one takes seconds).
const CLIENT_PEM: &str = include_str!("../../gateway/src/approval/testdata/client_a_rsa4096.pem");
const CLIENT: &str = "bench-client";
const SERVER: &str = "vpn-bench";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn run(report: &mut Report, opts: &Opts) -> Result<()> {
    let server_keys = ServerBoxKeys::generate()?;
    let secret = HmacSecret::from_bytes(&[0xa1; 64])?;
    let rsa = ClientRsaKey::from_pkcs8_pem(CLIENT_PEM)?;
    let client_record = ClientRecord {
        client_id: CLIENT.to_owned(),
        enabled: true,
        hmac_secret: HmacSecret::from_bytes(&[0xa1; 64])?,
        rsa_public_key: rsa.public_key(),
    };
    // A fresh state forgets the nonces, so the same requests can be validated again.
    let fresh_state = || {
        let mut state = MemoryState::new();
        state.add_client(client_record.clone());
        state.add_server_here(
            SERVER,
            ServerPolicy {
                address_policy: AddressPolicy::OpenAll,
            },
        );
        state.allow(CLIENT, SERVER);
        state
    };
    let state = Arc::new(fresh_state());
    let creds = ClientCredentials::new(CLIENT.to_owned(), secret, rsa, server_keys.public_key())?;
    let params = RequestParams {
        server: SERVER.to_owned(),
        public_ipv4: Some(Ipv4Addr::new(10, 0, 0, 2)),
        public_ipv6: None,
        client_version: "bench".to_owned(),
        device_name: "bench".to_owned(),
        passcode: None,
    };
    let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let config = ValidationConfig::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let per_thread = if opts.quick { 4 } else { 48 };
    let total = per_thread * (cores + 1);
    progress(&format!(
        "approvals: signing {total} requests (RSA-4096) with a test client"
    ));
    let started = Instant::now();
    let mut bodies = Vec::with_capacity(total);
    for _ in 0..total {
        let (request, _pending) = build_request(&creds, &params, now_unix())?;
        bodies.push(request.to_json()?);
    }
    progress(&format!(
        "  signed in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // Each thread validates its own requests, pass after pass (a fresh state per pass), for
    // the time budget: one thread, then one per core.
    let budget = if opts.quick {
        Duration::from_millis(150)
    } else {
        Duration::from_secs(1)
    };
    let run_threads = |threads: usize| -> Result<f64> {
        let started = Instant::now();
        let validated = std::thread::scope(|scope| -> Result<usize> {
            let handles: Vec<_> = bodies
                .chunks(bodies.len().div_ceil(threads))
                .take(threads)
                .map(|chunk| {
                    let (keys, fresh_state) = (&server_keys, &fresh_state);
                    scope.spawn(move || -> Result<usize> {
                        let mut validated = 0;
                        // Bounded in passes and time.
                        for _ in 0..10_000 {
                            let state = fresh_state();
                            for body in chunk {
                                let request = parse_request(body)
                                    .map_err(|r| anyhow::anyhow!("parse: {:?}", r.reason()))?;
                                validate(&request, &state, keys, remote, now_unix(), &config)
                                    .map_err(|r| {
                                        anyhow::anyhow!(
                                            "a valid request was rejected: {:?}",
                                            r.reason()
                                        )
                                    })?;
                            }
                            validated += chunk.len();
                            if started.elapsed() >= budget {
                                break;
                            }
                        }
                        Ok(validated)
                    })
                })
                .collect();
            let mut n = 0;
            for h in handles {
                n += h
                    .join()
                    .map_err(|_| anyhow::anyhow!("a validation thread panicked"))??;
            }
            Ok(n)
        })?;
        Ok(validated as f64 / started.elapsed().as_secs_f64())
    };
    let per_core = run_threads(1)?;
    progress(&format!(
        "  crypto bound, one core: {per_core:.0} approvals/s"
    ));
    let all_cores = run_threads(cores)?;
    progress(&format!(
        "  crypto bound, {cores} cores: {all_cores:.0} approvals/s"
    ));
    report.set("approvals.crypto_bound_per_sec", all_cores);
    report.set("approvals.crypto_bound_per_sec_per_core", per_core);

    garbage(
        report,
        opts,
        &bodies[0],
        &state,
        &server_keys,
        remote,
        &config,
    )?;
    report.note("approvals", format!(
        "crypto_bound_per_sec: parse_request + validate of valid requests against an in-memory state on {cores} \
         threads, each on its own requests for the time budget (one RSA-4096 PSS verify + one X25519 box open each); \
         garbage: one request with its HMAC flipped, parse + validate on one thread"));
    Ok(())
}

fn garbage(
    report: &mut Report,
    opts: &Opts,
    valid: &[u8],
    state: &MemoryState,
    keys: &ServerBoxKeys,
    remote: IpAddr,
    config: &ValidationConfig,
) -> Result<()> {
    let mut request =
        parse_request(valid).map_err(|r| anyhow::anyhow!("parse: {:?}", r.reason()))?;
    request.hmac[0] ^= 0x01;
    let body = request
        .to_json()
        .context("serialising the garbage request")?;
    let budget = if opts.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    let started = Instant::now();
    let mut rejected = 0u64;
    // Bounded in count (10M) and time (the budget, checked every 256).
    while rejected < 10_000_000 {
        let parsed = parse_request(&body);
        let outcome = parsed.and_then(|r| validate(&r, state, keys, remote, now_unix(), config));
        if outcome.is_ok() {
            bail!("a request with a wrong HMAC was accepted");
        }
        rejected += 1;
        if rejected.is_multiple_of(256) && started.elapsed() >= budget {
            break;
        }
    }
    let rate = rejected as f64 / started.elapsed().as_secs_f64();
    progress(&format!(
        "  garbage (wrong HMAC) rejected: {rate:.0}/s on one core"
    ));
    report.set("approvals.garbage_rejected_per_sec", rate);
    Ok(())
}
