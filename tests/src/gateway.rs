//! A real `xdpgate controller` process running inside a test namespace, with its own config,
//! redb state, pin folder and control socket, and the admin CLI pointed at it.
//!
//! The controller is started with `nsenter --net=` (not `ip netns exec`), so it shares the
//! host's mount namespace: its bpffs pins stay visible to the next controller, as on a real
//! host. Dropping the fixture kills the controller and runs `xdpgate detach`, removing the
//! pinned maps and links.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{NetNs, unique_name, xdpgate_bin};

/// How long a controller may take to answer its first health check.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A controller under test.
pub struct Gateway {
    ns: String,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    bpffs_dir: PathBuf,
    child: Option<Child>,
    web: Option<Child>,
    /// `controller`, or `run` (controller plus a supervised, unprivileged web front).
    role: &'static str,
    /// `--log-format` of the controller (`text` unless a test asks for `json`).
    log_format: &'static str,
    /// `--log` of the controller ([`TEST_LOG`] unless a benchmark asks for the default).
    log_filter: &'static str,
}

/// The log filter of the processes tests start: the controller's and web front's debug
/// lines help when a test fails. Benchmarks measure at the production default, `info`.
pub const TEST_LOG: &str = "info,xdpgate=debug";

impl Gateway {
    /// Writes a config guarding `interfaces` of `ns` with the given `[[server]]` TOML
    /// sections (already formatted), and starts the controller.
    pub fn start(ns: &NetNs, interfaces: &[&str], servers_toml: &str) -> Gateway {
        Self::start_with(ns, interfaces, |_| servers_toml.to_owned())
    }

    /// Like [`Gateway::start`], with the sections after `[controller]` produced from the
    /// fixture's private folder (for paths of certificates, sockets and the like).
    pub fn start_with(
        ns: &NetNs,
        interfaces: &[&str],
        sections: impl FnOnce(&Path) -> String,
    ) -> Gateway {
        Self::start_role(ns, interfaces, sections, "controller")
    }

    /// Like [`Gateway::start_with`], running `xdpgate run` (controller and web front in one
    /// command) instead of `xdpgate controller`.
    pub fn start_run(
        ns: &NetNs,
        interfaces: &[&str],
        sections: impl FnOnce(&Path) -> String,
    ) -> Gateway {
        Self::start_role(ns, interfaces, sections, "run")
    }

    fn start_role(
        ns: &NetNs,
        interfaces: &[&str],
        sections: impl FnOnce(&Path) -> String,
        role: &'static str,
    ) -> Gateway {
        crate::ensure_system_users();
        let name = unique_name("gw");
        let dir = std::env::temp_dir().join(format!("xdpgate-test-{name}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let bpffs_dir = PathBuf::from("/sys/fs/bpf").join(format!("xdpgate-test-{name}"));
        let socket = dir.join("control.sock");
        let config = dir.join("xdpgate.toml");
        let mut servers_toml = sections(&dir);
        if !servers_toml.contains("[approvals]") {
            // Keep every socket inside the fixture's folder.
            servers_toml = format!(
                "[approvals]\nfront_socket = {:?}\n\n{servers_toml}",
                dir.join("front.sock")
            );
        }
        let interfaces: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
        let text = format!(
            "[controller]\ninterfaces = [{}]\nstate_dir = {:?}\nbpffs_dir = {:?}\n\
             control_socket = {:?}\nsweep_interval_ms = 200\n\n{servers_toml}\n",
            interfaces.join(", "),
            dir.join("state"),
            bpffs_dir,
            socket,
        );
        fs::write(&config, text).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let mut gateway = Gateway {
            ns: ns.name().to_owned(),
            dir,
            config,
            socket,
            bpffs_dir,
            child: None,
            web: None,
            role,
            log_format: "text",
            log_filter: TEST_LOG,
        };
        gateway.launch();
        gateway
    }

    /// Starts the controller process and waits until it answers `health`.
    fn launch(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controller.log"))
            .unwrap_or_else(|e| panic!("opening controller log: {e}"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning log handle: {e}"));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(xdpgate_bin())
            .args(["--log", self.log_filter, "--log-format", self.log_format])
            .args([self.role, "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the controller: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.try_cli(&["health"]).status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "controller exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "controller not healthy after {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            // Short, so that the restart benchmark's start-to-healthy time is not rounded up.
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// This gateway's private folder (config, state, sockets, logs, web certificate).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `xdpgate web` (the config must have a `[web]` section) in the gateway's
    /// namespace and waits until it accepts TCP connections on `listen`.
    pub fn start_web(&mut self, listen: std::net::SocketAddr) {
        let log = self.dir.join("web.log");
        let child = start_web_node(&self.ns, &self.config, listen, &log, START_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        self.web = Some(child);
    }

    /// Stops the web front started by [`Gateway::start_web`] (SIGKILL) and waits for it.
    pub fn stop_web(&mut self) {
        if let Some(mut web) = self.web.take() {
            let _ = web.kill();
            let _ = web.wait();
        }
    }

    /// The pid of the web front started by [`Gateway::start_web`], if it runs.
    pub fn web_pid(&self) -> Option<u32> {
        self.web.as_ref().map(Child::id)
    }

    /// The pid of the controller (or of `xdpgate run`).
    pub fn controller_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the web front started by [`Gateway::start_web`] has exited.
    pub fn web_exited(&mut self) -> bool {
        self.web
            .as_mut()
            .is_some_and(|web| matches!(web.try_wait(), Ok(Some(_))))
    }

    /// The web front's log so far.
    pub fn web_log(&self) -> String {
        fs::read_to_string(self.dir.join("web.log")).unwrap_or_default()
    }

    /// Kills the controller with SIGKILL (no clean-up of its own) and waits for it to die.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the controller again with the same config, state and pins.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Starts the controller again with log filter `filter` (e.g. `info`, the production
    /// default, for a benchmark).
    pub fn restart_with_log_filter(&mut self, filter: &'static str) {
        self.log_filter = filter;
        self.restart();
    }

    /// Starts the controller again writing `format` (`text` or `json`) log lines.
    pub fn restart_with_log_format(&mut self, format: &'static str) {
        self.log_format = format;
        self.restart();
    }

    /// The controller's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs an admin command against this controller; panics with stderr if it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.try_cli(args);
        assert!(
            output.status.success(),
            "xdpgate {args:?} failed: {}\ncontroller log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs an admin command and returns its output, whatever the exit status.
    pub fn try_cli(&self, args: &[&str]) -> Output {
        let (group, rest) = args.split_at(args.len().min(admin_words(args)));
        Command::new(xdpgate_bin())
            .args(group)
            .arg("--socket")
            .arg(&self.socket)
            .args(rest)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate {args:?}: {e}"))
    }

    /// The config file, e.g. for `xdpgate detach --config`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The bpffs folder this controller pins under.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    /// Detaches the gate (`xdpgate detach`) and returns its output.
    pub fn detach(&mut self) -> String {
        self.kill9();
        let output = Command::new(xdpgate_bin())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output()
            .unwrap_or_else(|e| panic!("running xdpgate detach: {e}"));
        assert!(
            output.status.success(),
            "detach failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// How many leading words of an admin command name the subcommand (the socket flag goes after
/// them): `openings add ...` → 2, `status` → 1.
fn admin_words(args: &[&str]) -> usize {
    match args.first() {
        Some(&"openings") | Some(&"servers") | Some(&"clients") | Some(&"audit")
        | Some(&"notices") | Some(&"devices") => 2,
        _ => 1,
    }
}

/// How many of a log's last lines a failing test prints.
const LOG_TAIL_LINES: usize = 80;

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failing test shows what the controller and the web front logged (the folder
        // holding the logs is removed below).
        if std::thread::panicking() {
            for (name, text) in [("controller", self.log()), ("web front", self.web_log())] {
                if !text.is_empty() {
                    eprintln!(
                        "--- last {LOG_TAIL_LINES} lines of the {name} log ---\n{}",
                        tail(&text, LOG_TAIL_LINES)
                    );
                }
            }
        }
        if let Some(mut web) = self.web.take() {
            let _ = web.kill();
            let _ = web.wait();
        }
        self.kill9();
        let _ = Command::new(xdpgate_bin())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = fs::remove_dir_all(&self.bpffs_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts `xdpgate web --config CONFIG` in the namespace named `ns` (log filter [`TEST_LOG`]
/// to `log`) and waits up to `limit` until it accepts TCP on `listen`. nsenter execs the
/// program, so the child's pid is the web front's. On failure the child is killed and the
/// error carries its log.
pub fn start_web_node(
    ns: &str,
    config: &Path,
    listen: std::net::SocketAddr,
    log: &Path,
    limit: Duration,
) -> Result<Child, String> {
    start_web_node_logging(ns, config, listen, log, limit, TEST_LOG)
}

/// [`start_web_node`] with log filter `filter`.
pub fn start_web_node_logging(
    ns: &str,
    config: &Path,
    listen: std::net::SocketAddr,
    log: &Path,
    limit: Duration,
    filter: &str,
) -> Result<Child, String> {
    let out = fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cloning the log handle: {e}"))?;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(xdpgate_bin())
        .args(["--log", filter, "web", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting xdpgate web: {e}"))?;
    let deadline = Instant::now() + limit;
    let fail = |why: String, child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "{why}:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        ))
    };
    while !crate::in_netns(ns, || {
        std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
    }) {
        if let Ok(Some(status)) = child.try_wait() {
            return fail(
                format!("the web front exited during start-up ({status})"),
                &mut child,
            );
        }
        if Instant::now() >= deadline {
            return fail(
                format!("the web front is not listening on {listen} after {limit:?}"),
                &mut child,
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(child)
}
