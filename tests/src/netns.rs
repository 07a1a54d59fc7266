//! Network namespaces owned by a test: created by `ip netns add`, deleted (with every process
//! still in them) on drop; commands and threads can run inside them.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{require_root, unique_name};

/// A network namespace `/run/netns/NAME`, deleted on drop.
///
/// Drop first SIGKILLs the processes still in it (as `ip netns pids NAME | xargs kill -9`),
/// then runs `ip netns del`. Sockets the test opened in it keep the (then nameless)
/// namespace alive until they are closed; veth ends in it vanish with it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` and brings its `lo` up. Panics if it exists already.
    pub fn new(name: &str) -> NetNs {
        require_root();
        run(Command::new("ip").args(["netns", "add", name]));
        // Built before `lo` comes up so that a failure there still deletes the namespace.
        let ns = NetNs {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Creates a namespace named [`unique_name`]`(prefix)`.
    pub fn new_unique(prefix: &str) -> NetNs {
        NetNs::new(&unique_name(prefix))
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`);
    /// add arguments, environment and stdio before spawning it.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its stdout; panics with its stderr if it
    /// fails. Example: `ns.exec(&["ip", "-6", "route", "show"])`.
    pub fn exec(&self, argv: &[&str]) -> String {
        run(&mut self.argv_command(argv))
    }

    /// Runs `argv` inside the namespace and returns its output, whether it succeeded or not.
    pub fn try_exec(&self, argv: &[&str]) -> Output {
        let mut cmd = self.argv_command(argv);
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", display(&cmd)))
    }

    /// Starts `argv` in the background inside the namespace, with stdin closed and stdout
    /// and stderr inherited, and returns once the child is in the namespace (or has exited).
    /// The child is killed when the namespace is dropped, if it has not exited before.
    pub fn spawn(&self, argv: &[&str]) -> Child {
        let mut cmd = self.argv_command(argv);
        cmd.stdin(Stdio::null());
        self.spawn_command(&mut cmd)
    }

    /// Spawns a command made by [`NetNs::command`] and returns once the child is in the
    /// namespace (or has exited); panics if it cannot start or does not get there in 5 s.
    pub fn spawn_command(&self, cmd: &mut Command) -> Child {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", display(cmd)));
        let ns_link = format!("net:[{}]", self.inode());
        let proc_link = format!("/proc/{}/ns/net", child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let entered =
                std::fs::read_link(&proc_link).is_ok_and(|l| l.as_os_str() == ns_link.as_str());
            if entered || matches!(child.try_wait(), Ok(Some(_))) {
                return child;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "`{}` did not enter netns {} within 5 s",
                    display(cmd),
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The namespace's inode number (as in `/proc/PID/ns/net` -> `net:[INODE]`).
    fn inode(&self) -> u64 {
        let path = format!("/run/netns/{}", self.name);
        std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or_else(|e| panic!("cannot stat {path}: {e}"))
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        in_netns(&self.name, f)
    }

    /// Sets a sysctl of this namespace, e.g. `ns.sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // /proc/sys/net shows the network namespace of the thread that opens it.
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("cannot set {key}={value} in netns {}: {e}", self.name));
    }

    /// Turns on IPv4 and IPv6 forwarding, for a namespace that routes between two links.
    pub fn enable_forwarding(&self) {
        self.sysctl("net.ipv4.ip_forward", "1");
        self.sysctl("net.ipv6.conf.all.forwarding", "1");
    }

    /// Adds default routes via `v4` and `v6` (neighbours on one of this namespace's links).
    pub fn add_default_routes(&self, v4: Ipv4Addr, v6: Ipv6Addr) {
        self.exec(&["ip", "route", "add", "default", "via", &v4.to_string()]);
        self.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &v6.to_string(),
        ]);
    }

    /// The IP, ICMP, UDP and TCP counters of `/proc/net/snmp` and `/proc/net/snmp6` in this
    /// namespace, keyed like `Ip:FragCreates`, `Ip:ReasmOKs`, `Ip6FragCreates`, `Ip6ReasmOKs`.
    pub fn snmp_counters(&self) -> HashMap<String, u64> {
        let (snmp, snmp6) = self.run(|| {
            let read = |path: &str| {
                std::fs::read_to_string(path)
                    .unwrap_or_else(|e| panic!("cannot read {path} in netns: {e}"))
            };
            (
                read("/proc/thread-self/net/snmp"),
                read("/proc/thread-self/net/snmp6"),
            )
        });
        let mut counters = parse_snmp(&snmp);
        for line in snmp6.lines() {
            if let Some((key, value)) = line.split_once(char::is_whitespace)
                && let Ok(value) = value.trim().parse()
            {
                counters.insert(key.to_owned(), value);
            }
        }
        counters
    }

    /// Process ids in the namespace, as `ip netns pids` lists them.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip netns pids {}`: {e}", self.name));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    }

    fn argv_command(&self, argv: &[&str]) -> Command {
        let Some((program, args)) = argv.split_first() else {
            panic!("NetNs::exec/spawn needs a program to run, got an empty argv");
        };
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd
    }

    /// Kills the processes in the namespace and waits (up to 2 s) until none is left.
    fn kill_all(&self) {
        let own = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let pids: Vec<i32> = self.pids().into_iter().filter(|&p| p != own).collect();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in pids {
                // The process may be gone already; that is what we want.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.kill_all();
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let failure = match out {
            Ok(out) if out.status.success() => return,
            Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let msg = format!(
            "cannot delete network namespace {}: {}",
            self.name,
            failure.trim()
        );
        if thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

/// Runs `f` on a new thread that first enters the network namespace `/run/netns/NAME`
/// (`setns(CLONE_NEWNET)`), and returns what `f` returns; a panic in `f` propagates.
///
/// Sockets created in `f` belong to that namespace for their whole life, so they can be
/// returned and used from any thread after this returns. Only the network namespace changes:
/// files and mounts are the caller's.
pub fn in_netns<T: Send, F: FnOnce() -> T + Send>(name: &str, f: F) -> T {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {path}: {e} (is the namespace created?)"));
    thread::scope(|scope| {
        let thread = thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn_scoped(scope, move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {path} failed: {e}"));
                f()
            })
            .unwrap_or_else(|e| panic!("cannot spawn a thread for netns {name}: {e}"));
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `cmd` (outside any namespace); returns stdout or panics with stderr.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", display(cmd)));
    if !out.status.success() {
        panic!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn display(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// `/proc/net/snmp` pairs a header line (`Ip: Forwarding ...`) with a value line (`Ip: 1 ...`).
fn parse_snmp(text: &str) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [header, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) =
            (header.split_once(' '), values.split_once(' '))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                counters.insert(format!("{proto}{name}"), value);
            }
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::parse_snmp;

    #[test]
    fn parses_snmp_pairs() {
        let text = "Ip: Forwarding FragCreates\nIp: 2 7\nUdp: InDatagrams\nUdp: 5\n";
        let counters = parse_snmp(text);
        assert_eq!(counters.get("Ip:FragCreates"), Some(&7));
        assert_eq!(counters.get("Udp:InDatagrams"), Some(&5));
    }
}
