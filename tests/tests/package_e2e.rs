//! The Debian package: builds (by `cargo xtask test`, which passes XDPGATE_DEB), installs with
//! `dpkg -i`, puts every file where the units expect it, passes `systemd-analyze verify`, has
//! its exposure measured by `systemd-analyze security --offline=true`, accepts its own config,
//! runs the controller and web front exactly as the units' ExecStart, User and capability
//! lines say (setpriv, since systemd is not PID 1 here), and purges clean.
// Helpers outside #[test] fns panic on setup failures like the tests do.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use xdpgate_tests::{NetNs, Proc, UdpEcho, VethLink, require_root, udp_roundtrip, wait_for};

const GUARDED: u16 = 1194;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Purges the package however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "xdpgate"]);
        for log in [CONTROLLER_LOG, WEB_LOG] {
            let _ = fs::remove_file(log);
        }
    }
}

/// Logs of the processes run as the units say (removed with the package).
const CONTROLLER_LOG: &str = "/tmp/xdpgate-pkgtest-controller.log";
const WEB_LOG: &str = "/tmp/xdpgate-pkgtest-web.log";

/// `Key=` values of a unit file (every occurrence, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// setpriv arguments for a unit: its User, its capability bounding set (and ambient set),
/// no new privileges; then its ExecStart.
fn as_unit(unit_path: &Path) -> Vec<String> {
    let unit = fs::read_to_string(unit_path).unwrap();
    let user = unit_values(&unit, "User")
        .pop()
        .unwrap_or_else(|| "root".into());
    let caps = |key: &str| -> String {
        let set: Vec<String> = unit_values(&unit, key)
            .join(" ")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        if set.is_empty() {
            "-all".to_owned()
        } else {
            format!("-all,{}", set.join(","))
        }
    };
    let exec = unit_values(&unit, "ExecStart").pop().unwrap();
    let mut argv = vec!["setpriv".to_owned()];
    if user != "root" {
        argv.extend([
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".to_owned(),
        ]);
    }
    argv.extend([
        format!("--bounding-set={}", caps("CapabilityBoundingSet")),
        format!("--inh-caps={}", caps("AmbientCapabilities")),
        format!("--ambient-caps={}", caps("AmbientCapabilities")),
        "--no-new-privs".to_owned(),
        "--".to_owned(),
    ]);
    argv.extend(exec.split_whitespace().map(str::to_owned));
    argv
}

fn exposure(unit: &str) -> f64 {
    let out = run("systemd-analyze", &["security", "--offline=true", unit]);
    let all = text(&out);
    let line = all
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{all}"));
    let value = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"));
    value.parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn cap_eff(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn the_package_installs_runs_confined_and_purges() {
    require_root();
    let deb = PathBuf::from(
        std::env::var("XDPGATE_DEB")
            .unwrap_or_else(|_| panic!("XDPGATE_DEB is not set: run `cargo xtask test`")),
    );
    assert!(deb.is_file(), "{} is missing", deb.display());
    let installed = run("dpkg", &["-i", &deb.display().to_string()]);
    let _purge = Installed;
    assert!(installed.status.success(), "dpkg -i: {}", text(&installed));

    let controller_unit = Path::new("/usr/lib/systemd/system/xdpgate-controller.service");
    let web_unit = Path::new("/usr/lib/systemd/system/xdpgate-web.service");
    for file in [
        "/usr/bin/xdpgate",
        "/usr/lib/sysusers.d/xdpgate.conf",
        "/usr/lib/tmpfiles.d/xdpgate.conf",
        "/usr/share/man/man1/xdpgate.1.gz",
        "/usr/share/man/man1/xdpgate-controller.1.gz",
        "/usr/share/bash-completion/completions/xdpgate",
        "/usr/share/zsh/vendor-completions/_xdpgate",
        "/usr/share/fish/vendor_completions.d/xdpgate.fish",
        "/usr/share/doc/xdpgate/OPERATIONS.md",
    ] {
        assert!(Path::new(file).is_file(), "{file} installed");
    }
    assert!(controller_unit.is_file() && web_unit.is_file());
    for user in ["xdpgate-web", "xdpgate-vpn"] {
        assert!(
            run("getent", &["passwd", user]).status.success(),
            "system user {user} created"
        );
    }
    let web = nix::unistd::User::from_name("xdpgate-web")
        .unwrap()
        .unwrap();
    let conf = fs::metadata("/etc/xdpgate/xdpgate.toml").unwrap();
    assert_eq!(
        (conf.mode() & 0o777, conf.uid(), conf.gid()),
        (0o640, 0, web.gid.as_raw()),
        "conffile root:xdpgate-web 0640"
    );
    let state = fs::metadata("/var/lib/xdpgate").unwrap();
    assert_eq!(
        (state.mode() & 0o777, state.uid()),
        (0o700, 0),
        "controller state root only"
    );
    let web_state = fs::metadata("/var/lib/xdpgate-web").unwrap();
    assert_eq!(
        web_state.uid(),
        web.uid.as_raw(),
        "web state owned by xdpgate-web"
    );
    assert!(Path::new("/run/xdpgate").is_dir());
    let conffiles = text(&run("dpkg-query", &["-W", "-f=${Conffiles}", "xdpgate"]));
    assert!(
        conffiles.contains("/etc/xdpgate/xdpgate.toml"),
        "a conffile: {conffiles}"
    );

    let check = run(
        "/usr/bin/xdpgate",
        &["check-config", "--config", "/etc/xdpgate/xdpgate.toml"],
    );
    assert!(
        check.status.success() && text(&check).contains("ok:"),
        "installed config accepted: {}",
        text(&check)
    );
    let units = [
        controller_unit.display().to_string(),
        web_unit.display().to_string(),
    ];
    let verify = run(
        "systemd-analyze",
        &["verify", "--man=no", &units[0], &units[1]],
    );
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let (controller_exposure, web_exposure) = (exposure(&units[0]), exposure(&units[1]));
    println!(
        "systemd-analyze security --offline=true: controller {controller_exposure}, web front {web_exposure}"
    );
    assert!(
        web_exposure <= 2.0,
        "web front exposure {web_exposure} > 2.0"
    );
    assert!(
        controller_exposure < 5.0,
        "controller exposure {controller_exposure}"
    );

    run_as_the_units_say(controller_unit, web_unit);

    let purged = run("dpkg", &["--purge", "xdpgate"]);
    assert!(purged.status.success(), "dpkg --purge: {}", text(&purged));
    for gone in [
        "/usr/bin/xdpgate",
        "/etc/xdpgate",
        "/var/lib/xdpgate",
        "/var/lib/xdpgate-web",
        "/run/xdpgate",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} removed by purge");
    }
    assert!(
        !controller_unit.exists() && !web_unit.exists(),
        "units removed"
    );
    // Debian policy keeps system users (files they own may remain elsewhere).
    assert!(
        run("getent", &["passwd", "xdpgate-web"]).status.success(),
        "users kept, as Debian does"
    );
}

/// Configures the installed config for a namespace, runs both units' ExecStart under their
/// User and capabilities, and checks the gate works with only those.
fn run_as_the_units_say(controller_unit: &Path, web_unit: &Path) {
    let client = NetNs::new_unique("kcl");
    let server_ns = NetNs::new_unique("kgw");
    let link = VethLink::new(&client, &server_ns, 54);
    let target = SocketAddr::new(IpAddr::V4(link.b.v4), GUARDED);
    let _echo = UdpEcho::start(&server_ns, target);
    let installed = fs::read_to_string("/etc/xdpgate/xdpgate.toml").unwrap();
    let config = installed
        .replace(
            r#"interfaces = ["eth0"]"#,
            &format!("interfaces = [{:?}]", link.b.ifname),
        )
        .replace("192.0.2.1", &link.b.v4.to_string())
        .replace(
            r#"bpffs_dir = "/sys/fs/bpf/xdpgate""#,
            r#"bpffs_dir = "/sys/fs/bpf/xdpgate-pkgtest""#,
        );
    fs::write("/etc/xdpgate/xdpgate.toml", config).unwrap();
    fs::set_permissions(
        "/etc/xdpgate/xdpgate.toml",
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let spawn = |unit: &Path, log: &str| {
        let argv = as_unit(unit);
        let log = fs::File::create(log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", server_ns.name()))
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        (Proc(child), argv)
    };
    let controller_log = CONTROLLER_LOG;
    let (mut controller, argv) = spawn(controller_unit, controller_log);
    let healthy = wait_for(Duration::from_secs(20), || {
        run("/usr/bin/xdpgate", &["health"]).status.success()
    });
    let log = || fs::read_to_string(controller_log).unwrap_or_default();
    assert!(healthy, "controller healthy under {argv:?}:\n{}", log());
    let pid = controller.0.id();
    assert_eq!(
        cap_eff(pid),
        "000000c000001001",
        "CapEff: CAP_CHOWN, CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF only"
    );
    assert!(
        !udp_roundtrip(&client, None, target, Duration::from_millis(600)),
        "guarded: closed"
    );
    let added = run(
        "/usr/bin/xdpgate",
        &[
            "openings",
            "add",
            "--server",
            "vpn1",
            "--ip",
            &link.a.v4.to_string(),
            "--ttl",
            "60",
        ],
    );
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        udp_roundtrip(&client, None, target, Duration::from_millis(600)),
        "opened with only the unit's capabilities"
    );

    let web_log = WEB_LOG;
    let (mut web, argv) = spawn(web_unit, web_log);
    let listen = SocketAddr::new(IpAddr::V4(link.b.v4), 8443);
    let up = wait_for(Duration::from_secs(20), || {
        client.run(|| {
            std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
        })
    });
    assert!(
        up,
        "web front serving under {argv:?}:\n{}",
        fs::read_to_string(web_log).unwrap_or_default()
    );
    let status = fs::read_to_string(format!("/proc/{}/status", web.0.id())).unwrap_or_default();
    let web_uid = nix::unistd::User::from_name("xdpgate-web")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:")
            && l.split_whitespace().nth(1) == Some(web_uid.to_string().as_str())),
        "{status}"
    );
    assert_eq!(
        cap_eff(web.0.id()),
        "0000000000000000",
        "the web front has no capability"
    );
    assert!(
        Path::new("/var/lib/xdpgate-web/key.pem").is_file(),
        "TLS key generated by the web front in its state folder"
    );

    assert!(
        web.terminate(Duration::from_secs(5)),
        "web front stops on SIGTERM"
    );
    assert!(
        controller.terminate(Duration::from_secs(10)),
        "controller stops on SIGTERM"
    );
    let _ = run(
        "/usr/bin/xdpgate",
        &["detach", "--config", "/etc/xdpgate/xdpgate.toml"],
    );
}
