//! Command-line interface of the `xdpgate` binary.
pub mod admin;
pub mod cluster;
pub mod devices;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use clap::{Parser, Subcommand};

/// eBPF/XDP dynamic firewall gateway: VPN ports stay invisible until an approval opens them.
#[derive(Debug, Parser)]
#[command(name = "xdpgate", version, about)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `xdpgate=debug`.
    #[arg(
        long,
        global = true,
        env = "XDPGATE_LOG",
        default_value = "info,tss_esapi=warn"
    )]
    pub log: String,
    /// Log line format: `text` (ANSI colours only when writing to a terminal) or `json`
    /// (one object per line, span fields as keys).
    #[arg(long, global = true, env = "XDPGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The controller's control socket (admin commands); before or after the subcommand.
    #[arg(
        long,
        global = true,
        env = "XDPGATE_SOCKET",
        default_value = "/run/xdpgate/control.sock"
    )]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

impl LogFormat {
    /// The flag value, for passing on to child processes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the privileged controller: load and attach the gate, serve the control API.
    Controller {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run controller and web front on one host; the web front runs as `[web].user`.
    Run {
        /// Configuration file (TOML) with `[controller]` and `[web]` sections.
        #[arg(long)]
        config: PathBuf,
    },
    /// Remove everything the controller pinned (links and maps): the gate stops guarding.
    Detach {
        /// Configuration file (TOML); its `bpffs_dir` is cleaned.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it guards.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the unprivileged HTTPS web front: checks and re-serializes client requests and
    /// forwards them to the controller's front socket.
    Web {
        /// Configuration file (TOML) with a `[web]` section.
        #[arg(long)]
        config: PathBuf,
    },
    /// The web front's self-signed certificate.
    WebCert {
        #[command(subcommand)]
        command: WebCertCommand,
    },
    /// The reference client: enroll with a link, then ask for approval before connecting.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// The cluster: CA, node certificates, and the status of every controller.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Guarded servers.
    Servers {
        #[command(subcommand)]
        command: ServersCommand,
    },
    /// Openings: source addresses allowed through the gate.
    Openings {
        #[command(subcommand)]
        command: OpeningsCommand,
    },
    /// Clients: who may ask for approvals.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Device authentication: pending devices, approving them with their PIN, removing them.
    Devices {
        #[command(subcommand)]
        command: devices::DevicesCommand,
    },
    /// The audit trail (every decision with its precise reason).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Signed self-shutdown notices: the state they set, and lifting it.
    Notices {
        #[command(subcommand)]
        command: NoticesCommand,
    },
    /// Interfaces, openings and packet counters per service.
    Status,
    /// Is the controller serving? Exit 0 serving, 1 not serving, 2 unreachable; says why.
    Health,
    /// Makes the running controller read its configuration file again (as SIGHUP does).
    /// Servers and services added, removed or changed apply at once, openings of remaining
    /// servers are kept; an invalid file, or a change only a restart applies, is refused and
    /// changes nothing.
    Reload,
    /// The server's box key (`docs/PROTOCOL.md` §16).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output folder (gets `man1/` and `completions/`).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `xdpgate servers ...`
#[derive(Debug, Subcommand)]
pub enum ServersCommand {
    /// List servers and their guarded services.
    List,
}

/// `xdpgate openings ...`
#[derive(Debug, Subcommand)]
pub enum OpeningsCommand {
    /// Open a server to one source address.
    Add {
        /// Server name.
        #[arg(long)]
        server: String,
        /// Source address to admit.
        #[arg(long)]
        ip: IpAddr,
        /// Connect window in seconds (traffic keeps it open up to the server's limits).
        #[arg(long)]
        ttl: u32,
    },
    /// List openings.
    List {
        /// Only this server.
        #[arg(long)]
        server: Option<String>,
    },
    /// Close the openings of an address at once.
    Revoke {
        /// Only on this server (default: every server).
        #[arg(long)]
        server: Option<String>,
        /// Source address.
        #[arg(long)]
        ip: IpAddr,
    },
}

/// `xdpgate clients ...`
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Create a client and print its single-use enrollment link.
    Add {
        /// Client name (its id).
        name: String,
        /// Server the client may use (repeat for several).
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
    },
    /// Issue a new single-use enrollment link for an existing client (a lost or replaced
    /// device): redeeming it replaces the client's keys, closes the openings made with the
    /// old ones and keeps its id, servers and audit history.
    Reenroll {
        /// Client name.
        name: String,
    },
    /// List clients.
    List,
    /// Disable a client: its requests are denied and its openings close at once.
    Disable {
        /// Client name.
        name: String,
    },
    /// Enable a disabled client.
    Enable {
        /// Client name.
        name: String,
    },
    /// Remove a client and close its openings.
    Remove {
        /// Client name.
        name: String,
    },
}

/// `xdpgate notices ...`
#[derive(Debug, Subcommand)]
pub enum NoticesCommand {
    /// Show which parts are shut down, the last notice and when it was fetched.
    Status,
    /// Lift every self-shutdown (audited); only a newer notice shuts down again.
    Clear,
}

/// `xdpgate audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest events (oldest of them first), paging through the whole log if asked;
    /// says where it stopped when older events remain.
    Tail {
        /// How many events.
        #[arg(short = 'n', long, default_value_t = 20, conflicts_with = "all")]
        count: u64,
        /// Every event.
        #[arg(long)]
        all: bool,
        /// Only events older than this sequence number (where an earlier run stopped).
        #[arg(long)]
        before: Option<u64>,
        /// The sampled unauthenticated failures instead of the decisions.
        #[arg(long)]
        unauthenticated: bool,
        /// One JSON document: events (oldest first), `next_before` and the failure counters.
        #[arg(long)]
        json: bool,
    },
}

/// `xdpgate client ...`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Redeem an enrollment link: generate this device's RSA key and write the profile.
    Enroll {
        /// The link from `xdpgate clients add` (`https://HOST:PORT/v1/enroll#token=…&pin=sha256:…`).
        link: String,
        /// Where to write the profile (JSON with secrets, mode 0600).
        #[arg(long)]
        profile: PathBuf,
        /// Name shown to the operator (default: the host name).
        #[arg(long)]
        device_name: Option<String>,
        /// Replace an existing profile.
        #[arg(long)]
        force: bool,
    },
    /// Ask for approval to connect; exits 0 only when approved.
    Connect {
        /// The profile written by `client enroll`.
        #[arg(long)]
        profile: PathBuf,
        /// Server to connect to (default: the profile's only server).
        #[arg(long)]
        server: Option<String>,
        /// This device's public IPv4 address, if known.
        #[arg(long)]
        public_ipv4: Option<Ipv4Addr>,
        /// This device's public IPv6 address, if known.
        #[arg(long)]
        public_ipv6: Option<Ipv6Addr>,
        /// Device name sent with the request (default: the host name).
        #[arg(long)]
        device_name: Option<String>,
        /// Print the approval as JSON.
        #[arg(long)]
        json: bool,
        /// The passcode from the authenticator app, for a server with a second factor
        /// (asked for on the terminal when omitted and stdin is a terminal).
        #[arg(long, value_name = "DIGITS")]
        passcode: Option<String>,
        /// Write this approval's OpenVPN username (client id) and one-time password to FILE
        /// (mode 0600), for OpenVPN's `--auth-user-pass FILE`.
        #[arg(long, value_name = "FILE")]
        openvpn_auth: Option<PathBuf>,
    },
    /// This device's TPM key (device authentication): show its fingerprint and PIN, or make
    /// a profile sign with it.
    Device {
        #[command(subcommand)]
        command: devices::ClientDeviceCommand,
    },
}

/// `xdpgate keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Makes a new box key current. The old key keeps opening requests for the overlap, and
    /// every answer to a request boxed to it names the new key, so clients update their
    /// profiles by connecting; after the overlap the old key is refused.
    Rotate {
        /// How long the old key still opens requests, in days.
        #[arg(long, default_value_t = 30.0)]
        overlap_days: f64,
    },
}

/// `xdpgate web-cert …`.
#[derive(Debug, Subcommand)]
pub enum WebCertCommand {
    /// Re-issues the `[web]` certificate for the same key, names and subject, valid from now.
    /// Client profiles keep working (they trust the key); restart the web front to serve it.
    Renew {
        /// Configuration file (TOML) with a `[web]` section.
        #[arg(long)]
        config: PathBuf,
        /// Days the new certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}
