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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin commands find the controller.
#[derive(Debug, clap::Args)]
pub struct ControlTarget {
    /// The controller's control socket.
    #[arg(
        long,
        env = "XDPGATE_SOCKET",
        default_value = "/run/xdpgate/control.sock"
    )]
    pub socket: PathBuf,
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
    Status {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Is the controller serving?
    Health {
        #[command(flatten)]
        target: ControlTarget,
    },
}

/// `xdpgate servers ...`
#[derive(Debug, Subcommand)]
pub enum ServersCommand {
    /// List servers and their guarded services.
    List {
        #[command(flatten)]
        target: ControlTarget,
    },
}

/// `xdpgate openings ...`
#[derive(Debug, Subcommand)]
pub enum OpeningsCommand {
    /// Open a server to one source address.
    Add {
        #[command(flatten)]
        target: ControlTarget,
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
        #[command(flatten)]
        target: ControlTarget,
        /// Only this server.
        #[arg(long)]
        server: Option<String>,
    },
    /// Close the openings of an address at once.
    Revoke {
        #[command(flatten)]
        target: ControlTarget,
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
        #[command(flatten)]
        target: ControlTarget,
        /// Client name (its id).
        name: String,
        /// Server the client may use (repeat for several).
        #[arg(long = "server", required = true)]
        servers: Vec<String>,
    },
    /// List clients.
    List {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Disable a client: its requests are denied and its openings close at once.
    Disable {
        #[command(flatten)]
        target: ControlTarget,
        /// Client name.
        name: String,
    },
    /// Enable a disabled client.
    Enable {
        #[command(flatten)]
        target: ControlTarget,
        /// Client name.
        name: String,
    },
    /// Remove a client and close its openings.
    Remove {
        #[command(flatten)]
        target: ControlTarget,
        /// Client name.
        name: String,
    },
}

/// `xdpgate notices ...`
#[derive(Debug, Subcommand)]
pub enum NoticesCommand {
    /// Show which parts are shut down, the last notice and when it was fetched.
    Status {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Lift every self-shutdown (audited); only a newer notice shuts down again.
    Clear {
        #[command(flatten)]
        target: ControlTarget,
    },
}

/// `xdpgate audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest events (oldest of them first), paging through the whole log if asked;
    /// says where it stopped when older events remain.
    Tail {
        #[command(flatten)]
        target: ControlTarget,
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
