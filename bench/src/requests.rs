//! Pre-signed approval requests for the end-to-end parts: signing (RSA-4096) is the client's
//! cost, not the gateway's, so it is done before the clock starts, on every core.
use anyhow::{Result, anyhow};
use xdpgate::approval::{ClientCredentials, RequestParams, build_request};

/// What the benchmark's client asks for: server `vpn1`, no reported addresses.
pub fn vpn1_params() -> RequestParams {
    RequestParams {
        server: "vpn1".into(),
        public_ipv4: None,
        public_ipv6: None,
        client_version: "bench".into(),
        device_name: "bench".into(),
        passcode: None,
    }
}

/// `count` distinct requests of `creds` for `params`, timestamped now, as JSON bodies.
pub fn sign_requests(
    creds: &ClientCredentials,
    params: &RequestParams,
    count: usize,
) -> Result<Vec<Vec<u8>>> {
    let now = xdpgate::clock::unix_secs();
    let signers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| -> Result<Vec<Vec<u8>>> {
        let handles: Vec<_> = (0..signers)
            .map(|i| {
                let share = count / signers + usize::from(i < count % signers);
                scope.spawn(move || -> Result<Vec<Vec<u8>>> {
                    (0..share)
                        .map(|_| Ok(serde_json::to_vec(&build_request(creds, params, now)?.0)?))
                        .collect()
                })
            })
            .collect();
        let mut bodies = Vec::with_capacity(count);
        for handle in handles {
            bodies.extend(
                handle
                    .join()
                    .map_err(|_| anyhow!("a signing thread panicked"))??,
            );
        }
        Ok(bodies)
    })
}
