//! End to end: device authentication (`docs/PROTOCOL.md` §15) with software TPMs. A client
//! namespace runs one swtpm per simulated device; the reference client signs every approval
//! through tss-esapi; the real controller and web front keep the device registry, and the
//! XDP gate opens only for approved devices.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use xdpgate_tests::{
    Echoes, Gateway, NetNs, Swtpm, VethLink, require_root, udp_roundtrip, wait_for, xdpgate_bin,
};

const GUARDED: u16 = 1194;
const PLAIN: u16 = 1195;
const WEB_PORT: u16 = 8443;
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// swtpm ports inside the client namespace (each uses two).
const TPM_PORTS: [u16; 6] = [23300, 23310, 23320, 23330, 23340, 23350];

fn sections(link: &VethLink, dir: &Path) -> String {
    let web_dir = dir.join("web");
    format!(
        r#"
[approvals]
public_url = "https://{gw}:{WEB_PORT}"
web_cert = {cert:?}
front_socket = {front:?}
timestamp_window_secs = 60
client_approvals_per_minute = 600

[web]
listen = "{gw}:{WEB_PORT}"
cert = {cert:?}
key = {key:?}
front_socket = {front:?}
rate_limit_per_minute = 6000
rate_limit_burst = 400

[[server]]
name = "dev1"
id = 1
connect_window_secs = 60
public_ipv4 = "{gw}"
device_auth = "required"

[[server.service]]
protocol = "udp"
port = {GUARDED}

# Device authentication off: behaves as before.
[[server]]
name = "plain"
id = 2
public_ipv4 = "{gw}"

[[server.service]]
protocol = "udp"
port = {PLAIN}
"#,
        gw = link.b.v4,
        cert = web_dir.join("cert.pem"),
        key = web_dir.join("key.pem"),
        front = dir.join("front.sock"),
    )
}

struct DeviceLab {
    gateway: Gateway,
    client: NetNs,
    _gateway_ns: NetNs,
    link: VethLink,
    profile: PathBuf,
    _echoes: Echoes,
}

/// What one `client connect` said.
struct Connect {
    ok: bool,
    text: String,
}

impl DeviceLab {
    fn new(subnet: u8) -> DeviceLab {
        require_root();
        let client = NetNs::new_unique("dcl");
        let gateway_ns = NetNs::new_unique("dgw");
        let link = VethLink::new(&client, &gateway_ns, subnet);
        let echoes = Echoes::start(
            &gateway_ns,
            [GUARDED, PLAIN]
                .into_iter()
                .map(|port| SocketAddr::new(IpAddr::V4(link.b.v4), port)),
        );
        let mut gateway =
            Gateway::start_with(&gateway_ns, &[&link.b.ifname], |dir| sections(&link, dir));
        gateway.start_web(SocketAddr::new(IpAddr::V4(link.b.v4), WEB_PORT));
        let profile = gateway.dir().join("alice.profile.json");
        DeviceLab {
            gateway,
            client,
            _gateway_ns: gateway_ns,
            link,
            profile,
            _echoes: echoes,
        }
    }

    fn client_cmd(&self, args: &[&str], tcti: Option<&str>) -> Output {
        let mut cmd = self.client.command(&xdpgate_bin().display().to_string());
        cmd.args(args).env("XDPGATE_LOG", "warn");
        match tcti {
            Some(t) => cmd.env("XDPGATE_TCTI", t),
            None => cmd.env_remove("XDPGATE_TCTI"),
        };
        cmd.output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"))
    }

    fn enroll(&self) {
        let added = self.gateway.cli(&[
            "clients", "add", "alice", "--server", "dev1", "--server", "plain",
        ]);
        let link = added
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in: {added}"));
        let out = self.client_cmd(
            &[
                "client",
                "enroll",
                link,
                "--profile",
                &self.profile.display().to_string(),
            ],
            None,
        );
        assert!(out.status.success(), "enroll: {}", text(&out));
    }

    /// `client connect` to `server` as device `name`, through the TPM `tcti` (or the
    /// profile's).
    fn connect(&self, server: &str, name: &str, tcti: Option<&str>) -> Connect {
        let out = self.client_cmd(
            &[
                "client",
                "connect",
                "--profile",
                &self.profile.display().to_string(),
                "--server",
                server,
                "--device-name",
                name,
            ],
            tcti,
        );
        Connect {
            ok: out.status.success(),
            text: text(&out),
        }
    }

    fn guarded_open(&self, port: u16) -> bool {
        udp_roundtrip(
            &self.client,
            Some(IpAddr::V4(self.link.a.v4)),
            SocketAddr::new(IpAddr::V4(self.link.b.v4), port),
            PROBE_TIMEOUT,
        )
    }

    fn devices(&self, args: &[&str]) -> String {
        let mut all = vec!["devices"];
        all.extend_from_slice(args);
        self.gateway.cli(&all)
    }

    fn try_devices(&self, args: &[&str]) -> Output {
        let mut all = vec!["devices"];
        all.extend_from_slice(args);
        self.gateway.try_cli(&all)
    }

    fn audit(&self) -> String {
        self.gateway.cli(&["audit", "tail", "--all"])
    }

    /// Waits (the audit writer batches) for an audit line that holds every one of `words`.
    fn audited(&self, words: &[&str]) {
        let found = wait_for(Duration::from_secs(5), || {
            self.audit()
                .lines()
                .any(|l| words.iter().all(|w| l.contains(w)))
        });
        assert!(found, "no audit line with {words:?}:\n{}", self.audit());
    }

    /// `client device show` for a TPM: (fingerprint, PIN).
    fn show(&self, tcti: &str) -> (String, String) {
        let out = self.client_cmd(&["client", "device", "show", "--tcti", tcti], None);
        assert!(out.status.success(), "device show: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key:?} in {stdout}"))
                .trim()
                .to_owned()
        };
        (value("fingerprint "), value("PIN "))
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The pending devices of `client` in `devices pending` output.
fn pending_of(listing: &str, client: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.starts_with(&format!("{client}\t")) && l.contains("\tpending"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn devices_are_pending_until_approved_with_their_pin_and_removal_closes_their_openings() {
    let mut lab = DeviceLab::new(91);
    let mut tpm_a = Swtpm::start(&lab.client, TPM_PORTS[0]);
    lab.enroll();
    let saved_profile = std::fs::read(&lab.profile).expect("profile written");

    // A server without device authentication approves as before.
    let plain = lab.connect("plain", "laptop-a", None);
    assert!(
        plain.ok,
        "device_auth off: approved without a device: {}",
        plain.text
    );
    assert!(lab.guarded_open(PLAIN));

    // dev1 wants a device signature; the profile signs with none yet.
    let none = lab.connect("dev1", "laptop-a", None);
    assert!(
        !none.ok && none.text.contains("device_required"),
        "{}",
        none.text
    );
    assert!(none.text.contains("client device enable"), "{}", none.text);
    assert!(
        !lab.guarded_open(GUARDED),
        "nothing opened without a device"
    );

    // The client makes its key in TPM A; show and enable agree on fingerprint and PIN.
    let (fp_a, pin_a) = lab.show(&tpm_a.tcti());
    assert_eq!(fp_a.len(), 64, "{fp_a}");
    assert_eq!(pin_a.len(), 4, "{pin_a}");
    let out = lab.client_cmd(
        &[
            "client",
            "device",
            "enable",
            "--profile",
            &lab.profile.display().to_string(),
            "--tcti",
            &tpm_a.tcti(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&fp_a) && text(&out).contains(&pin_a),
        "{}",
        text(&out)
    );
    let profile_text = std::fs::read_to_string(&lab.profile).unwrap();
    assert!(
        profile_text.contains("device_tcti") && !profile_text.contains(&fp_a),
        "the profile names the TPM, not the key: {profile_text}"
    );

    // First connection: pending, with the PIN printed for the user.
    let first = lab.connect("dev1", "laptop-a", None);
    assert!(!first.ok, "{}", first.text);
    let want = format!("ask your administrator to approve device \"laptop-a\" with PIN {pin_a}");
    assert!(first.text.contains(&want), "{}", first.text);
    assert!(!lab.guarded_open(GUARDED), "a pending device opens nothing");
    let pending = lab.devices(&["pending"]);
    let rows = pending_of(&pending, "alice");
    assert_eq!(rows.len(), 1, "{pending}");
    assert!(
        rows[0].contains(&fp_a) && rows[0].contains("laptop-a"),
        "{pending}"
    );
    assert!(
        rows[0].contains(&lab.link.a.v4.to_string()),
        "source address: {pending}"
    );

    // Asking again: the same pending entry and PIN.
    let again = lab.connect("dev1", "laptop-a", None);
    assert!(!again.ok && again.text.contains(&want), "{}", again.text);
    assert_eq!(pending_of(&lab.devices(&["pending"]), "alice").len(), 1);

    // A wrong PIN approves nothing and is audited; the right one approves.
    let wrong_pin = format!("{:04}", (pin_a.parse::<u32>().unwrap() + 1) % 10_000);
    let out = lab.try_devices(&["approve", "alice", "laptop-a", "--pin", &wrong_pin]);
    assert!(
        !out.status.success() && text(&out).contains("wrong PIN"),
        "{}",
        text(&out)
    );
    assert_eq!(pending_of(&lab.devices(&["pending"]), "alice").len(), 1);
    assert!(
        !lab.connect("dev1", "laptop-a", None).ok,
        "still pending after a wrong PIN"
    );
    let source = lab.link.a.v4.to_string();
    lab.audited(&["device", "pin_wrong", &fp_a, "alice", &source]);
    lab.devices(&["approve", "alice", "laptop-a", "--pin", &pin_a]);
    let approved = lab.connect("dev1", "laptop-a", None);
    assert!(approved.ok, "approved device connects: {}", approved.text);
    assert!(lab.guarded_open(GUARDED), "the VPN port opens");

    // The client's files wiped and re-created; the TPM restarted (a reboot): same device.
    std::fs::remove_file(&lab.profile).unwrap();
    std::fs::write(&lab.profile, &saved_profile).unwrap();
    tpm_a.restart(&lab.client);
    assert_eq!(lab.show(&tpm_a.tcti()), (fp_a.clone(), pin_a.clone()));
    let out = lab.client_cmd(
        &[
            "client",
            "device",
            "enable",
            "--profile",
            &lab.profile.display().to_string(),
            "--tcti",
            &tpm_a.tcti(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let back = lab.connect("dev1", "laptop-a", None);
    assert!(
        back.ok,
        "same TPM, same device, still approved: {}",
        back.text
    );
    let listing = lab.devices(&["list", "alice"]);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("alice\t")).count(),
        1,
        "{listing}"
    );

    // A second TPM for the same client: a new device, pending with its own PIN.
    let tpm_b = Swtpm::start(&lab.client, TPM_PORTS[1]);
    let (fp_b, pin_b) = lab.show(&tpm_b.tcti());
    assert_ne!(fp_b, fp_a);
    let b = lab.connect("dev1", "laptop-b", Some(&tpm_b.tcti()));
    assert!(
        !b.ok && b.text.contains(&format!("PIN {pin_b}")),
        "{}",
        b.text
    );

    // Four new devices (b, c, d, e): three stay pending, the oldest (b) is gone.
    let tpms: Vec<Swtpm> = TPM_PORTS[2..5]
        .iter()
        .map(|port| Swtpm::start(&lab.client, *port))
        .collect();
    let mut prints = Vec::new();
    for (n, tpm) in tpms.iter().enumerate() {
        let name = format!("laptop-{}", ["c", "d", "e"][n]);
        let r = lab.connect("dev1", &name, Some(&tpm.tcti()));
        assert!(
            !r.ok && r.text.contains("ask your administrator"),
            "{}",
            r.text
        );
        prints.push(lab.show(&tpm.tcti()).0);
    }
    let pending = lab.devices(&["pending"]);
    let rows = pending_of(&pending, "alice");
    assert_eq!(rows.len(), 3, "{pending}");
    assert!(
        !pending.contains(&fp_b),
        "the oldest pending device is gone: {pending}"
    );
    for fp in &prints {
        assert!(pending.contains(fp.as_str()), "{pending}");
    }
    lab.audited(&["evicted", &fp_b, "alice"]);

    // Removing device a closes its openings at once, and it is refused afterwards.
    assert!(lab.connect("dev1", "laptop-a", None).ok);
    assert!(lab.guarded_open(GUARDED));
    let removed = lab.devices(&["remove", "alice", &fp_a[..12]]);
    assert!(removed.contains("1 opening(s) closed"), "{removed}");
    assert!(!lab.guarded_open(GUARDED), "closed at once, not at expiry");
    let refused = lab.connect("dev1", "laptop-a", None);
    assert!(
        !refused.ok && refused.text.contains("denied"),
        "{}",
        refused.text
    );
    assert!(!lab.guarded_open(GUARDED));

    // Every device event so far is counted.
    let status = lab.gateway.cli(&["status"]);
    for counter in [
        "device.pending",
        "device.pending_again",
        "device.approved",
        "device.evicted",
        "device.removed",
        "device.pin_wrong",
    ] {
        assert!(
            status.contains(counter),
            "{counter} missing from status: {status}"
        );
    }

    // Override: pending and new devices are approved without a PIN, also across a restart;
    // a removed device stays refused; `require` ends it, also across a restart.
    lab.devices(&["override", "--hours", "8"]);
    let c = lab.connect("dev1", "laptop-c", Some(&tpms[0].tcti()));
    assert!(c.ok, "override approves a pending device: {}", c.text);
    lab.gateway.restart();
    let ready = wait_for(Duration::from_secs(10), || {
        lab.gateway.try_cli(&["health"]).status.success()
    });
    assert!(ready, "controller back after restart");
    assert!(lab.devices(&["pending"]).contains("override: ON"));
    let f = Swtpm::start(&lab.client, TPM_PORTS[5]);
    let fc = lab.connect("dev1", "laptop-f", Some(&f.tcti()));
    assert!(fc.ok, "override survives a restart: {}", fc.text);
    let still = lab.connect("dev1", "laptop-a", None);
    assert!(!still.ok && still.text.contains("denied"), "{}", still.text);
    lab.audited(&["auto_approved", &prints[0]]);
    lab.audited(&["auto_approved", "laptop-f"]);
    lab.devices(&["require"]);
    lab.gateway.restart();
    let ready = wait_for(Duration::from_secs(10), || {
        lab.gateway.try_cli(&["health"]).status.success()
    });
    assert!(ready);
    assert!(lab.devices(&["pending"]).contains("override: off"));
    let e = lab.connect("dev1", "laptop-e", Some(&tpms[2].tcti()));
    assert!(
        !e.ok && e.text.contains("ask your administrator"),
        "{}",
        e.text
    );

    // PIN guessing: after 5 wrong PINs in 15 minutes (one above) even the right one is
    // refused, and it is audited.
    let (fp_e, pin_e) = lab.show(&tpms[2].tcti());
    for _ in 0..4 {
        let bad = format!("{:04}", (pin_e.parse::<u32>().unwrap() + 7) % 10_000);
        let out = lab.try_devices(&["approve", "alice", "laptop-e", "--pin", &bad]);
        assert!(!out.status.success(), "{}", text(&out));
    }
    // The controller restarted since the first wrong PIN, which forgot it: one more.
    let bad = format!("{:04}", (pin_e.parse::<u32>().unwrap() + 3) % 10_000);
    assert!(
        !lab.try_devices(&["approve", "alice", &fp_e[..16], "--pin", &bad])
            .status
            .success()
    );
    let out = lab.try_devices(&["approve", "alice", "laptop-e", "--pin", &pin_e]);
    assert!(
        !out.status.success() && text(&out).contains("too many wrong PINs"),
        "{}",
        text(&out)
    );
    assert!(
        pending_of(&lab.devices(&["pending"]), "alice")
            .iter()
            .any(|l| l.contains(&fp_e))
    );
    lab.audited(&["pin_locked", "alice"]);
    assert!(lab.gateway.cli(&["status"]).contains("device.pin_locked"));
}

/// Sends `body` to the web front from the client namespace over pinned HTTPS.
fn post(
    lab: &DeviceLab,
    profile: &xdpgate::approval::ClientProfile,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    xdpgate_tests::post_approval(&lab.client, profile, body)
}

/// Signs with `sign`'s key but claims `public`'s (a signature that does not match the key).
struct Mismatched {
    public: xdpgate::device::DevicePublicKey,
    sign: xdpgate::device::SoftwareDeviceKey,
}

impl xdpgate::device::DeviceSigner for Mismatched {
    fn public_key(&self) -> &xdpgate::device::DevicePublicKey {
        &self.public
    }
    fn sign(&mut self, message: &[u8]) -> Result<[u8; 64], xdpgate::device::DeviceSignError> {
        self.sign.sign(message)
    }
}

/// How a crafted request is changed after it is built.
#[derive(Clone, Copy, Debug)]
enum Craft {
    /// Built with the TPM key, unchanged.
    Genuine,
    /// No device key and no device signature.
    NoDevice,
    /// The TPM key in the box, the signature removed (and the request re-MACed).
    StripSignature,
    /// One bit of the device signature flipped (re-MACed).
    FlipSignature,
    /// The TPM's public key in the box, signed by another key.
    OtherKeySigns,
}

#[test]
fn bad_device_signatures_over_https_are_refused_with_their_code_and_open_nothing() {
    use xdpgate::approval::{self, ClientProfile, RequestParams};
    use xdpgate::device::{DeviceSigner as _, SoftwareDeviceKey};
    let lab = DeviceLab::new(92);
    let tpm = Swtpm::start(&lab.client, TPM_PORTS[0]);
    lab.enroll();
    let out = lab.client_cmd(
        &[
            "client",
            "device",
            "enable",
            "--profile",
            &lab.profile.display().to_string(),
            "--tcti",
            &tpm.tcti(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let (fp, pin) = lab.show(&tpm.tcti());
    assert!(!lab.connect("dev1", "laptop", None).ok, "pending first");
    lab.devices(&["approve", "alice", "laptop", "--pin", &pin]);
    let profile =
        ClientProfile::from_json(&std::fs::read_to_string(&lab.profile).unwrap()).unwrap();
    let v4 = lab.link.a.v4;
    let tcti = tpm.tcti();
    // Builds one request in the client namespace (where the swtpm listens), with the TPM.
    let craft = |how: Craft| -> (Vec<u8>, approval::PendingApproval) {
        let profile = profile.clone();
        let tcti = tcti.clone();
        lab.client.run(move || {
            let creds = profile.credentials().unwrap();
            let params = RequestParams {
                server: "dev1".into(),
                public_ipv4: Some(v4),
                public_ipv6: None,
                client_version: "device-table/1".into(),
                device_name: "laptop".into(),
                passcode: None,
            };
            let mut tpm_key = xdpgate::client::tpm::TpmDeviceKey::open(&tcti).unwrap();
            let mut other = Mismatched {
                public: tpm_key.public_key().clone(),
                sign: SoftwareDeviceKey::generate().unwrap(),
            };
            let device: Option<&mut dyn xdpgate::device::DeviceSigner> = match how {
                Craft::NoDevice => None,
                Craft::OtherKeySigns => Some(&mut other),
                _ => Some(&mut tpm_key),
            };
            let (mut request, pending) = approval::build_request_with_device(
                &creds,
                &params,
                xdpgate::clock::unix_secs(),
                device,
            )
            .unwrap();
            match how {
                Craft::StripSignature => request.device_signature = None,
                Craft::FlipSignature => {
                    if let Some(sig) = request.device_signature.as_mut() {
                        sig[10] ^= 0x01;
                    }
                }
                _ => {}
            }
            request.hmac = creds
                .hmac_secret()
                .sign(&approval::request_mac_input(&request));
            (request.to_json().unwrap(), pending)
        })
    };
    let creds = profile.credentials().unwrap();
    for (how, status, code) in [
        (Craft::NoDevice, 401, "device_required"),
        (Craft::StripSignature, 401, "device_required"),
        (Craft::FlipSignature, 403, "denied"),
        (Craft::OtherKeySigns, 403, "denied"),
    ] {
        let (body, pending) = craft(how);
        let (got, answer) = post(&lab, &profile, body);
        assert_eq!(got, status, "{how:?}: {}", String::from_utf8_lossy(&answer));
        // A sealed denial: the client can tell it is the server's real answer.
        let sealed = approval::open_denial(&creds, &pending, &answer)
            .unwrap_or_else(|e| panic!("{how:?}: not a sealed denial: {e}"));
        assert_eq!(sealed.as_str(), code, "{how:?}");
        assert!(!lab.guarded_open(GUARDED), "{how:?} opened the port");
    }
    lab.audited(&["rejected denied", "does not verify with device key", &fp]);
    lab.audited(&[
        "rejected device_required",
        "lacks a device signature",
        "alice",
    ]);
    // The same path with nothing changed is approved: the refusals above were for their flaw.
    let (body, pending) = craft(Craft::Genuine);
    let (got, answer) = post(&lab, &profile, body);
    assert_eq!(got, 200, "{}", String::from_utf8_lossy(&answer));
    approval::open_response(&creds, &pending, &answer).unwrap();
    assert!(lab.guarded_open(GUARDED));
}
