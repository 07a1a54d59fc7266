//! `cargo xtask demo`: a real OpenVPN server behind the gate, narrated in plain lines.
//!
//! Builds a client and a gateway network namespace joined by a veth pair, starts the gateway
//! (controller and web front, embedded redb, XDP on the gateway's interface) with an OpenVPN
//! 2.6 server on the guarded UDP port 1194, and shows: the client's OpenVPN gets nothing back,
//! the client enrolls and asks for approval, OpenVPN connects and carries traffic, and after
//! the disconnect the port is closed again. With `--device-auth` (`cargo xtask demo
//! --device-auth`) vpn1 also requires device authentication: the client signs with a key in
//! a software TPM (swtpm), its first request is pending with a PIN, the operator approves it
//! with that PIN, and then it connects. Everything it creates (namespaces, processes, tun
//! interface, pinned maps, temporary folders) is removed at the end, also on Ctrl-C.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use xdpgate_tests::openvpn::{
    INIT_DONE, OpenVpn, TUNNEL_SERVER, VPN_PORT, start_gateway_with, wait_for, wait_for_log,
};
use xdpgate_tests::{NetNs, Swtpm, UdpEcho, VethLink, require_root, udp_roundtrip, xdpgate_bin};

const WEB_PORT: u16 = 8443;
const ECHO_PORT: u16 = 7777;
/// How long an OpenVPN attempt that should get nothing back is watched.
const ATTEMPT: Duration = Duration::from_secs(5);
/// How long the approved tunnel may take to come up.
const TUNNEL_UP: Duration = Duration::from_secs(20);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Stops the demo between steps after Ctrl-C, so the guards below clean up.
fn step(text: &str) -> Result<(), String> {
    if interrupted() {
        return Err("interrupted".to_owned());
    }
    println!("\n==> {text}");
    Ok(())
}

fn main() {
    require_root();
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(err) = unsafe { sigaction(signal, &action) } {
            eprintln!("warning: cannot handle {signal}: {err}");
        }
    }
    // A helper that fails because Ctrl-C also stopped its processes panics; say it quietly.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !interrupted() {
            report(info);
        }
    }));
    let device_auth = std::env::args().skip(1).any(|a| a == "--device-auth");
    let outcome = std::panic::catch_unwind(|| run(device_auth))
        .unwrap_or_else(|_| Err("failed (see above)".to_owned()));
    match outcome {
        Ok(()) => println!(
            "\nDemo done; namespaces, processes, tun interface, pinned maps and temporary folders removed."
        ),
        Err(reason) => {
            let reason = if interrupted() {
                "interrupted"
            } else {
                reason.as_str()
            };
            println!("\nDemo {reason}; everything it created was removed.");
            std::process::exit(if interrupted() { 130 } else { 1 });
        }
    }
}

fn run(device_auth: bool) -> Result<(), String> {
    step("Creating a client namespace and a gateway namespace joined by a veth pair")?;
    let client = NetNs::new_unique("democl");
    let gateway_ns = NetNs::new_unique("demogw");
    let link = VethLink::new(&client, &gateway_ns, 90);
    let gw = link.b.v4;
    println!("    client {}, gateway {gw}", link.a.v4);

    step(&format!(
        "Starting the gateway (controller + web front, embedded redb, XDP on {}) and OpenVPN on guarded UDP {gw}:{VPN_PORT}",
        link.b.ifname
    ))?;
    let vpn = OpenVpn::generate();
    let (gateway, tun) =
        start_gateway_with(&vpn, &gateway_ns, &[&link.b.ifname], gw, WEB_PORT, |toml| {
            if device_auth {
                toml.replacen(
                    "name = \"vpn1\"\n",
                    "name = \"vpn1\"\ndevice_auth = \"required\"\n",
                    1,
                )
            } else {
                toml
            }
        });
    if device_auth {
        println!("    vpn1 has device_auth = \"required\"");
    }
    let _server = vpn.start_server(&gateway_ns, &tun.name, &gateway);
    let echo = UdpEcho::start(
        &gateway_ns,
        SocketAddr::new(TUNNEL_SERVER.into(), ECHO_PORT),
    );
    println!(
        "    OpenVPN server up, as xdpgate-vpn, on the tun interface {} ({TUNNEL_SERVER}) the controller created",
        tun.name
    );
    print!("{}", indent(&gateway.cli(&["servers", "list"])));

    step("The client's OpenVPN tries to connect before any approval")?;
    let early = vpn.dir().join("early.auth");
    fs::write(&early, "alice\nno-approval-yet\n")
        .map_err(|e| format!("writing {}: {e}", early.display()))?;
    attempt(&vpn, &client, gw, &early, "early");
    print!("{}", indent(&dropped(&gateway.cli(&["status"]))));

    step("The client enrolls and asks for approval")?;
    println!("    $ xdpgate clients add alice --server vpn1");
    let added = gateway.cli(&["clients", "add", "alice", "--server", "vpn1"]);
    print!("{}", indent(&added));
    let enroll_link = added
        .lines()
        .find(|l| l.starts_with("https://"))
        .ok_or(format!("no link in: {added}"))?;
    let profile = vpn.dir().join("alice.profile.json").display().to_string();
    println!("    $ xdpgate client enroll LINK --profile {profile}");
    print!(
        "{}",
        indent(&xdpgate(
            &client,
            &["client", "enroll", enroll_link, "--profile", &profile]
        )?)
    );
    let auth = vpn.dir().join("alice.auth").display().to_string();
    // Kept until the end: the TPM must outlive every `client connect`.
    let _tpm = if device_auth {
        Some(device_step(&client, &gateway, &profile, &auth)?)
    } else {
        None
    };
    println!(
        "    $ xdpgate client connect --profile {profile} --server vpn1 --openvpn-auth {auth}"
    );
    let args = [
        "client",
        "connect",
        "--profile",
        &profile,
        "--server",
        "vpn1",
        "--openvpn-auth",
        &auth,
    ];
    print!("{}", indent(&xdpgate(&client, &args)?));

    step("OpenVPN connects with the approval's one-time token")?;
    let (mut session, log) = vpn.start_client(&client, gw, Path::new(&auth), "alice");
    if !wait_for(TUNNEL_UP, || {
        interrupted() || xdpgate_tests::openvpn::read(&log).contains(INIT_DONE)
    }) || interrupted()
    {
        return Err(format!(
            "failed: OpenVPN did not come up within {TUNNEL_UP:?}"
        ));
    }
    println!("    client: {INIT_DONE}");
    let answered = wait_for(Duration::from_secs(5), || {
        interrupted() || udp_roundtrip(&client, None, echo.local_addr(), Duration::from_millis(500))
    });
    println!(
        "    UDP echo to {} through the tunnel: {}",
        echo.local_addr(),
        if answered { "answered" } else { "no answer" }
    );
    print!("{}", indent(&gateway.cli(&["openings", "list"])));

    step("The client disconnects; the port closes again")?;
    if !session.terminate(Duration::from_secs(10)) {
        return Err("failed: the OpenVPN client did not exit on SIGTERM".to_owned());
    }
    drop(session);
    wait_for(Duration::from_secs(10), || {
        interrupted() || gateway.cli(&["openings", "list"]) == "no openings\n"
    });
    print!("{}", indent(&gateway.cli(&["openings", "list"])));
    attempt(&vpn, &client, gw, Path::new(&auth), "again");
    print!("{}", indent(&dropped(&gateway.cli(&["status"]))));
    Ok(())
}

/// `--device-auth`: the device key is made in a software TPM, the first request is pending
/// with a PIN, and the operator approves the device with it.
fn device_step(
    client: &NetNs,
    gateway: &xdpgate_tests::Gateway,
    profile: &str,
    auth: &str,
) -> Result<Swtpm, String> {
    step("Device authentication: the client's key lives in a TPM (swtpm here)")?;
    let tpm = Swtpm::start(client, 23400);
    println!(
        "    $ xdpgate client device enable --profile {profile} --tcti {}",
        tpm.tcti()
    );
    let enabled = xdpgate(
        client,
        &[
            "client",
            "device",
            "enable",
            "--profile",
            profile,
            "--tcti",
            &tpm.tcti(),
        ],
    )?;
    print!("{}", indent(&enabled));
    let pin = enabled
        .lines()
        .find_map(|l| l.strip_prefix("PIN "))
        .ok_or(format!("no PIN in: {enabled}"))?
        .trim()
        .to_owned();
    step("The device's first request is refused: pending, with the PIN to read to the operator")?;
    println!(
        "    $ xdpgate client connect --profile {profile} --server vpn1 --device-name alice-laptop"
    );
    let out = client
        .command(&xdpgate_bin().display().to_string())
        .args([
            "client",
            "connect",
            "--profile",
            profile,
            "--server",
            "vpn1",
            "--device-name",
            "alice-laptop",
            "--openvpn-auth",
            auth,
        ])
        .env("XDPGATE_LOG", "warn")
        .output()
        .map_err(|e| format!("running xdpgate client connect: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() || !said.contains("ask your administrator") {
        return Err(format!("failed: expected a pending device, got: {said}"));
    }
    print!("{}", indent(&said));
    println!("    $ xdpgate devices pending");
    print!("{}", indent(&gateway.cli(&["devices", "pending"])));
    step(&format!(
        "The operator approves the device with its PIN {pin}"
    ))?;
    println!("    $ xdpgate devices approve alice alice-laptop --pin {pin}");
    print!(
        "{}",
        indent(&gateway.cli(&["devices", "approve", "alice", "alice-laptop", "--pin", &pin]))
    );
    Ok(tpm)
}

/// Starts an OpenVPN client that should get nothing back, watches it for [`ATTEMPT`] and says
/// how it went.
fn attempt(vpn: &OpenVpn, ns: &NetNs, gw: Ipv4Addr, auth: &Path, name: &str) {
    let (_client, log) = vpn.start_client(ns, gw, auth, name);
    let answered = wait_for_log(&log, "Peer Connection Initiated", ATTEMPT);
    if answered {
        println!("    OpenVPN got an answer from the server (the gate let it through)");
    } else {
        println!(
            "    OpenVPN did not complete within {}s: no answer from {gw}:{VPN_PORT}",
            ATTEMPT.as_secs()
        );
    }
}

/// Runs `xdpgate ARGS` in `ns`; its output (progress on stderr first), or an error with it.
fn xdpgate(ns: &NetNs, args: &[&str]) -> Result<String, String> {
    let out = ns
        .command(&xdpgate_bin().display().to_string())
        .args(args)
        .output()
        .map_err(|e| format!("running xdpgate {args:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("failed: xdpgate {} said: {text}", args.join(" ")))
    }
}

/// The lines of `xdpgate status` with the gate's dropped counters.
fn dropped(status: &str) -> String {
    let lines: String = status
        .lines()
        .filter(|l| l.contains("dropped"))
        .map(|l| format!("xdpgate status: {}\n", l.trim()))
        .collect();
    if lines.is_empty() {
        status.to_owned()
    } else {
        lines
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("    {line}\n")).collect()
}
