//! End to end: a logging TLS relay holding the web front's own certificate and key stands in
//! front of the real web front (a compromised front). It runs on the client's host, so the
//! address the controller sees is the client's own (under the default proven-address policy a
//! relay elsewhere opens nothing: `approvals_e2e` shows that). Enrollment and approval through it work,
//! and it never sees the client's HMAC secret; a relay that forges or alters the sealed
//! enrollment answer makes `client enroll` fail with a clear message and write no profile.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use xdpgate_tests::relay::{Relay, Tamper, forged_hmac_secret};
use xdpgate_tests::{Gateway, NetNs, VethLink, require_root, xdpgate_bin};

const WEB_PORT: u16 = 8443;
const RELAY_PORT: u16 = 8444;

fn sections(link: &VethLink, dir: &Path) -> String {
    let web_dir = dir.join("web");
    format!(
        r#"
[approvals]
public_url = "https://{client}:{RELAY_PORT}"
web_cert = {cert:?}
front_socket = {front:?}

[web]
listen = "{gw}:{WEB_PORT}"
cert = {cert:?}
key = {key:?}
front_socket = {front:?}

[[server]]
name = "vpn1"
id = 1
public_ipv4 = "{gw}"

[[server.service]]
protocol = "udp"
port = 1194
"#,
        gw = link.b.v4,
        client = link.a.v4,
        cert = web_dir.join("cert.pem"),
        key = web_dir.join("key.pem"),
        front = dir.join("front.sock"),
    )
}

struct Lab {
    gateway: Gateway,
    client: NetNs,
    _gateway_ns: NetNs,
    link: VethLink,
}

impl Lab {
    fn new(subnet: u8) -> Lab {
        require_root();
        let client = NetNs::new_unique("rcl");
        let gateway_ns = NetNs::new_unique("rgw");
        let link = VethLink::new(&client, &gateway_ns, subnet);
        let mut gateway =
            Gateway::start_with(&gateway_ns, &[&link.b.ifname], |dir| sections(&link, dir));
        gateway.start_web(SocketAddr::new(IpAddr::V4(link.b.v4), WEB_PORT));
        Lab {
            gateway,
            client,
            _gateway_ns: gateway_ns,
            link,
        }
    }

    fn relay(&self, tamper: Tamper) -> Relay {
        let web = self.gateway.dir().join("web");
        Relay::start(
            &self.client,
            SocketAddr::new(IpAddr::V4(self.link.a.v4), RELAY_PORT),
            SocketAddr::new(IpAddr::V4(self.link.b.v4), WEB_PORT),
            &web.join("cert.pem"),
            &web.join("key.pem"),
            tamper,
        )
    }

    fn client_cmd(&self, args: &[&str]) -> Output {
        self.client
            .command(&xdpgate_bin().display().to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"))
    }

    /// `clients add NAME`, then `client enroll` with the link (which points at the relay).
    fn enroll(&self, name: &str, profile: &Path) -> Output {
        let added = self
            .gateway
            .cli(&["clients", "add", name, "--server", "vpn1"]);
        let link = added
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in: {added}"));
        assert!(
            link.contains(&format!(":{RELAY_PORT}/v1/enroll#")) && link.contains("&box="),
            "{link}"
        );
        self.client_cmd(&[
            "client",
            "enroll",
            link,
            "--profile",
            &profile.display().to_string(),
            "--device-name",
            "relay-laptop",
        ])
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_compromised_front_relays_enrollment_and_approval_without_seeing_the_hmac_secret() {
    let lab = Lab::new(61);
    let relay = lab.relay(Tamper::None);
    let profile = lab.gateway.dir().join("alice.profile.json");
    let out = lab.enroll("alice", &profile);
    assert!(
        out.status.success(),
        "enroll through the relay failed: {}\nweb log:\n{}",
        text(&out),
        lab.gateway.web_log()
    );
    let connect = lab.client_cmd(&[
        "client",
        "connect",
        "--profile",
        &profile.display().to_string(),
        "--json",
    ]);
    assert!(
        connect.status.success(),
        "approval through the relay failed: {}",
        text(&connect)
    );
    let approved: serde_json::Value =
        serde_json::from_slice(&connect.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(approved["approved"], true, "{}", text(&connect));

    let requests = relay.requests();
    assert!(
        requests.iter().any(|r| r == "POST /v1/enroll -> 200"),
        "the relay carried the enrollment: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r == "POST /v1/approvals -> 200"),
        "the relay carried the approval: {requests:?}"
    );
    let seen = relay.seen();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).unwrap_or_default())
            .unwrap_or_default();
    let secret_b64 = json["hmac_secret"]
        .as_str()
        .unwrap_or_else(|| panic!("profile has no hmac_secret: {json}"));
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret_b64)
        .unwrap_or_default();
    assert_eq!(secret.len(), 64, "the profile holds a 64-byte secret");
    assert!(
        contains(&seen, b"/v1/enroll") && contains(&seen, b"\"ciphertext\""),
        "the relay saw the sealed enrollment"
    );
    assert!(
        !contains(&seen, secret_b64.as_bytes()),
        "the relay saw the HMAC secret in base64"
    );
    assert!(
        !contains(&seen, &secret),
        "the relay saw the HMAC secret's bytes"
    );
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret);
    assert!(
        !contains(&seen, url_safe.as_bytes()),
        "the relay saw the HMAC secret in base64url"
    );
    assert!(
        !contains(&seen, b"relay-laptop"),
        "the device name was boxed"
    );
}

#[test]
fn a_front_that_forges_or_alters_the_enrollment_answer_makes_enrollment_fail_at_the_client() {
    let lab = Lab::new(62);
    for (tamper, name) in [
        (Tamper::ForgeAnswer, "mallory-forged"),
        (Tamper::FlipByte, "mallory-flipped"),
    ] {
        let relay = lab.relay(tamper);
        let profile = lab.gateway.dir().join(format!("{name}.profile.json"));
        let out = lab.enroll(name, &profile);
        let said = text(&out);
        assert!(
            !out.status.success(),
            "{tamper:?}: enrollment must fail: {said}"
        );
        assert!(
            said.contains("not sealed by the controller key in the link"),
            "{tamper:?}: the client says why: {said}"
        );
        assert!(!profile.exists(), "{tamper:?}: no profile is written");
        assert!(
            relay
                .requests()
                .iter()
                .any(|r| r == "POST /v1/enroll -> 200"),
            "{tamper:?}: {:?}",
            relay.requests()
        );
        assert!(!said.contains(&forged_hmac_secret()));
        drop(relay);
    }
}
