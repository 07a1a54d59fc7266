//! End to end: the real controller polls a local HTTPS notice server (in the gateway's
//! namespace) every second. Bad, unsigned, wrongly signed, oversized, slow, replayed, stale
//! and other-version notices change nothing; each signed notice shuts down exactly its part
//! (`vpn`: openings closed and approvals refused; `www`: every web request answered 503 with
//! the message; `web`: the web front stops), the state survives a controller restart, and a
//! newer notice or `xdpgate notices clear` (audited) lifts it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use base64::Engine as _;
use xdpgate_tests::{
    Gateway, NetNs, UdpEcho, VethLink,
    notice_server::{Answer, NoticeServer},
    require_root, udp_roundtrip, wait_for, xdpgate_bin,
};

const GUARDED: u16 = 1194;
const WEB_PORT: u16 = 8443;
const NOTICE_PORT: u16 = 9443;
const SEED: [u8; 32] = [42; 32];
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// A few polls (1 s apart) and the web front's state refresh (1 s).
const SETTLE: Duration = Duration::from_secs(10);

struct Lab {
    gateway: Gateway,
    client: NetNs,
    _gateway_ns: NetNs,
    link: VethLink,
    profile: PathBuf,
    notices: NoticeServer,
    _echo: UdpEcho,
    /// The notice server's folder (its certificate), removed after the server stops.
    _notice_dir: RemoveOnDrop,
}

/// Removes a folder the test created, however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sections(link: &VethLink, dir: &Path, notices: &NoticeServer) -> String {
    let web_dir = dir.join("web");
    let key = base64::engine::general_purpose::STANDARD
        .encode(xdpgate::signed_notice::public_key_of(&SEED).unwrap());
    format!(
        r#"
[approvals]
public_url = "https://{gw}:{WEB_PORT}"
web_cert = {cert:?}
front_socket = {front:?}

[web]
listen = "{gw}:{WEB_PORT}"
cert = {cert:?}
key = {key_file:?}
front_socket = {front:?}
rate_limit_per_minute = 6000
rate_limit_burst = 200

[notices]
url = "{url}"
public_key = "{key}"
interval_secs = 1
jitter_secs = 0
timeout_ms = 1000
ca_file = {ca:?}

[[server]]
name = "vpn1"
id = 1
connect_window_secs = 600
public_ipv4 = "{gw}"

[[server.service]]
protocol = "udp"
port = {GUARDED}
"#,
        gw = link.b.v4,
        cert = web_dir.join("cert.pem"),
        key_file = web_dir.join("key.pem"),
        front = dir.join("front.sock"),
        url = notices.url(),
        ca = notices.cert(),
    )
}

/// A signed notice payload: sequence, affected range and which parts are shut down.
fn payload(sequence: u64, range: (&str, &str), www: bool, web: bool, vpn: bool) -> Vec<u8> {
    let part = |shut: bool, name: &str| serde_json::json!({ "shutdown": shut, "message": format!("{name} off: CVE-2026-{sequence}") });
    serde_json::json!({
        "format": 1,
        "sequence": sequence,
        "issued_unix": 1_800_000_000u64 + sequence,
        "affected": { "from": range.0, "to": range.1 },
        "www": part(www, "www"),
        "web": part(web, "web"),
        "vpn": part(vpn, "vpn"),
    })
    .to_string()
    .into_bytes()
}

fn signed(sequence: u64, www: bool, web: bool, vpn: bool) -> Answer {
    Answer::now(
        xdpgate::signed_notice::sign(
            &payload(sequence, ("0.0.1", "0.9.99"), www, web, vpn),
            &SEED,
        )
        .unwrap(),
    )
}

impl Lab {
    fn new() -> Lab {
        require_root();
        let client = NetNs::new_unique("ncl");
        let gateway_ns = NetNs::new_unique("ngw");
        let link = VethLink::new(&client, &gateway_ns, 47);
        let echo = UdpEcho::start(&gateway_ns, SocketAddr::new(IpAddr::V4(link.b.v4), GUARDED));
        let dir = std::env::temp_dir().join(format!("xdpgate-notice-{}", gateway_ns.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let notices = NoticeServer::start(
            &gateway_ns,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), NOTICE_PORT),
            &dir,
        );
        notices.set(Answer::now(b"{}".to_vec()));
        let mut gateway = Gateway::start_with(&gateway_ns, &[&link.b.ifname], |d| {
            sections(&link, d, &notices)
        });
        gateway.start_web(SocketAddr::new(IpAddr::V4(link.b.v4), WEB_PORT));
        let profile = gateway.dir().join("alice.profile.json");
        let lab = Lab {
            gateway,
            client,
            _gateway_ns: gateway_ns,
            link,
            profile,
            notices,
            _echo: echo,
            _notice_dir: RemoveOnDrop(dir),
        };
        let added = lab
            .gateway
            .cli(&["clients", "add", "alice", "--server", "vpn1"]);
        let link_text = added
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link: {added}"));
        let out = lab.client_cmd(&[
            "client",
            "enroll",
            link_text,
            "--profile",
            &lab.profile.display().to_string(),
        ]);
        assert!(
            out.status.success(),
            "enroll: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    fn client_cmd(&self, args: &[&str]) -> Output {
        self.client
            .command(&xdpgate_bin().display().to_string())
            .args(args)
            .output()
            .unwrap()
    }

    /// `client connect`: (approved, stdout+stderr).
    fn connect(&self) -> (bool, String) {
        let out = self.client_cmd(&[
            "client",
            "connect",
            "--profile",
            &self.profile.display().to_string(),
        ]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn gate_open(&self) -> bool {
        udp_roundtrip(
            &self.client,
            Some(IpAddr::V4(self.link.a.v4)),
            SocketAddr::new(IpAddr::V4(self.link.b.v4), GUARDED),
            PROBE_TIMEOUT,
        )
    }

    fn status(&self) -> String {
        self.gateway.cli(&["notices", "status"])
    }

    fn counter(&self, name: &str) -> u64 {
        self.status()
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Serves `answer` and waits until two fetches have completed after it was set, so at
    /// least one of them got it. Returns the status afterwards.
    fn serve_and_settle(&self, answer: Answer) -> String {
        self.notices.set(answer);
        let start = self.counter("fetched");
        assert!(
            wait_for(SETTLE, || self.counter("fetched") >= start + 2),
            "controller stopped polling:\n{}",
            self.gateway.log()
        );
        self.status()
    }

    /// GET `path` on the web front over HTTPS pinned to its certificate: (status, body).
    fn web_get(&self, path: &str) -> Option<(u16, String)> {
        let cert = self.gateway.dir().join("web").join("cert.pem");
        let pin =
            xdpgate::tls::parse_pin_hex(&xdpgate::tls::cert_sha256_hex(&cert).unwrap()).unwrap();
        let tls = std::sync::Arc::new(xdpgate::tls::pinned_client_config(vec![pin]).unwrap());
        let endpoint = xdpgate::client::https::Endpoint::parse(&format!(
            "https://{}:{WEB_PORT}",
            self.link.b.v4
        ))
        .unwrap();
        let path = path.to_owned();
        self.client.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let request = xdpgate::client::https::HttpsRequest::new(http_get(), &path);
                xdpgate::client::https::send(
                    &endpoint,
                    tls,
                    request,
                    Duration::from_secs(3),
                    64 * 1024,
                )
                .await
                .ok()
                .map(|reply| {
                    (
                        reply.status,
                        String::from_utf8_lossy(&reply.body).into_owned(),
                    )
                })
            })
        })
    }
}

fn http_get() -> http::Method {
    http::Method::GET
}

fn part_line(status: &str, part: &str) -> String {
    status
        .lines()
        .find(|l| l.starts_with(&format!("{part}:")))
        .unwrap_or_default()
        .to_owned()
}

fn assert_running(status: &str, why: &str) {
    for part in ["www", "web", "vpn"] {
        assert!(
            part_line(status, part).starts_with(&format!("{part}: running")),
            "{why}: {part} must run:\n{status}"
        );
    }
}

#[test]
fn signed_notices_shut_down_exactly_their_part_and_bad_ones_change_nothing() {
    let mut lab = Lab::new();
    assert!(!lab.gate_open(), "closed before approval");
    let (ok, out) = lab.connect();
    assert!(ok, "approved before any notice: {out}");
    assert!(lab.gate_open(), "open after approval");
    let requests = lab.notices.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /notice?version=0.1.0 ")),
        "the controller sends its version: {requests:?}"
    );

    // Bad answers: each is refused with its reason, counted, and changes nothing.
    let b64 = base64::engine::general_purpose::STANDARD;
    let vpn_off = payload(1, ("0.0.1", "0.9.99"), false, false, true);
    let bad: Vec<(&str, Answer)> = vec![
        (
            "refused.unsigned",
            Answer::now(format!(r#"{{"payload":"{}"}}"#, b64.encode(&vpn_off)).into_bytes()),
        ),
        (
            "refused.bad_signature",
            Answer::now(xdpgate::signed_notice::sign(&vpn_off, &[9; 32]).unwrap()),
        ),
        (
            "refused.malformed",
            Answer::now(b"<html>not a notice</html>".to_vec()),
        ),
        (
            "refused.oversized",
            Answer::now(vec![b' '; xdpgate::signed_notice::MAX_NOTICE_BYTES + 10]),
        ),
        (
            "refused.other_version",
            Answer::now(
                xdpgate::signed_notice::sign(
                    &payload(1, ("1.0.0", "1.2.0"), true, true, true),
                    &SEED,
                )
                .unwrap(),
            ),
        ),
        (
            "failed.fetch",
            Answer {
                delay: Duration::from_secs(3),
                ..signed(1, true, true, true)
            },
        ),
    ];
    for (counter, answer) in bad {
        let status = lab.serve_and_settle(answer);
        assert!(lab.counter(counter) >= 1, "{counter} counted:\n{status}");
        assert_running(&status, counter);
        assert!(
            status.contains("last sequence acted on: 0"),
            "{counter}:\n{status}"
        );
        assert!(lab.gate_open(), "{counter}: the opening stays");
    }

    // vpn: every opening closed, approvals and admin openings refused; survives a restart.
    let status = lab.serve_and_settle(signed(1, false, false, true));
    assert!(
        part_line(&status, "vpn").starts_with("vpn: shutdown (vpn off: CVE-2026-1)"),
        "{status}"
    );
    assert!(
        part_line(&status, "www").starts_with("www: running"),
        "{status}"
    );
    assert!(!lab.gate_open(), "vpn shutdown closes the open opening");
    assert_eq!(lab.gateway.cli(&["openings", "list"]), "no openings\n");
    let (ok, out) = lab.connect();
    assert!(
        !ok && out.contains("shutdown") && out.contains("vpn off: CVE-2026-1"),
        "approval refused with the message: {out}"
    );
    let added = lab.gateway.try_cli(&[
        "openings",
        "add",
        "--server",
        "vpn1",
        "--ip",
        &lab.link.a.v4.to_string(),
    ]);
    assert!(
        !added.status.success(),
        "an admin opening is refused while vpn is shut down"
    );
    assert!(!lab.gate_open());
    lab.gateway.restart();
    let status = lab.status();
    assert!(
        part_line(&status, "vpn").starts_with("vpn: shutdown"),
        "survives a restart:\n{status}"
    );
    assert!(!lab.connect().0, "still refused after a restart");
    assert!(!lab.gate_open());

    // A replay of sequence 1 (even one that would lift) changes nothing.
    let status = lab.serve_and_settle(signed(1, false, false, false));
    assert!(lab.counter("refused.replayed") >= 1, "{status}");
    assert!(
        part_line(&status, "vpn").starts_with("vpn: shutdown"),
        "{status}"
    );

    // www (sequence 2): vpn lifted, every web request answered 503 with the message.
    let status = lab.serve_and_settle(signed(2, true, false, false));
    assert!(
        part_line(&status, "www").starts_with("www: shutdown"),
        "{status}"
    );
    assert!(
        part_line(&status, "vpn").starts_with("vpn: running"),
        "{status}"
    );
    assert!(
        wait_for(SETTLE, || lab.web_get("/healthz").is_some_and(
            |(code, body)| code == 503 && body.contains("\"status\":\"shutdown\"")
        )),
        "healthz says shutdown: {:?}",
        lab.web_get("/healthz")
    );
    let (code, body) = lab.web_get("/anything").expect("the web front answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("www off: CVE-2026-2"), "{body}");
    let (ok, out) = lab.connect();
    assert!(!ok && out.contains("shutdown"), "{out}");
    assert!(!lab.gate_open());
    lab.gateway.restart();
    assert!(
        part_line(&lab.status(), "www").starts_with("www: shutdown"),
        "www survives a restart"
    );
    assert!(wait_for(SETTLE, || lab
        .web_get("/healthz")
        .is_some_and(|(code, _)| code == 503)));

    // A stale notice (sequence 1 after 2) changes nothing.
    let status = lab.serve_and_settle(signed(1, false, false, false));
    assert!(lab.counter("refused.stale") >= 1, "{status}");
    assert!(
        part_line(&status, "www").starts_with("www: shutdown"),
        "{status}"
    );

    // web (sequence 3): the web front stops serving.
    let status = lab.serve_and_settle(signed(3, false, true, false));
    assert!(
        part_line(&status, "web").starts_with("web: shutdown"),
        "{status}"
    );
    assert!(
        wait_for(SETTLE, || lab.gateway.web_exited()),
        "the web front stops:\n{}",
        lab.gateway.web_log()
    );
    assert!(
        lab.web_get("/healthz").is_none(),
        "nothing answers on the web port"
    );
    lab.gateway.restart();
    assert!(
        part_line(&lab.status(), "web").starts_with("web: shutdown"),
        "web survives a restart"
    );

    // A newer notice (sequence 4) lifts everything: the web front serves, approvals open.
    let status = lab.serve_and_settle(signed(4, false, false, false));
    assert_running(&status, "lifted by notice 4");
    lab.gateway
        .start_web(SocketAddr::new(IpAddr::V4(lab.link.b.v4), WEB_PORT));
    let (ok, out) = lab.connect();
    assert!(ok, "approved again after the lift: {out}");
    assert!(lab.gate_open());

    // The operator lifts a shutdown with `notices clear`, audited; replaying it then does nothing.
    let status = lab.serve_and_settle(signed(5, false, false, true));
    assert!(
        part_line(&status, "vpn").starts_with("vpn: shutdown"),
        "{status}"
    );
    assert!(!lab.gate_open());
    let cleared = lab.gateway.cli(&["notices", "clear"]);
    assert!(
        cleared.contains("cleared") && cleared.contains("vpn: running"),
        "{cleared}"
    );
    let status = lab.serve_and_settle(signed(5, false, false, true));
    assert!(
        part_line(&status, "vpn").starts_with("vpn: running"),
        "the same notice does not shut down again:\n{status}"
    );
    let (ok, out) = lab.connect();
    assert!(ok, "{out}");
    assert!(lab.gate_open());
    let audit = lab.gateway.cli(&["audit", "tail", "-n", "200"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains(" notice ") && l.contains("cleared")),
        "clear is audited:\n{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains(" notice ") && l.contains("acted") && l.contains("notice 5")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains(" approval ") && l.contains(" shutdown ")),
        "refusals audited:\n{audit}"
    );
}
