//! Controller configuration: TOML on disk, validated once into typed values.
//!
//! Unknown keys are refused; every error names the line and the reason, and nothing is
//! applied from a file that fails validation.
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;
pub use xdpgate_web::config::{
    ConfigError, ConnectionLimits, IpNet, RawWeb, SourceText, WebConfig,
};

/// The XDP attach mode asked for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver (native) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    /// Driver mode only; fail if the driver cannot.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// A guarded transport protocol.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Protocol {
    /// The IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Udp => gateway_common::PROTO_UDP,
            Self::Tcp => gateway_common::PROTO_TCP,
        }
    }

    /// Lower-case name, as in the config file.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    controller: Option<RawController>,
    #[serde(default)]
    approvals: RawApprovals,
    web: Option<RawWeb>,
    #[serde(default)]
    cluster: Option<RawCluster>,
    #[serde(default)]
    notices: Option<Spanned<RawNotices>>,
    #[serde(default, rename = "server")]
    servers: Vec<Spanned<RawServer>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    #[serde(default)]
    timestamp_window_secs: Option<Spanned<u64>>,
    #[serde(default)]
    audit_retention: Option<Spanned<u64>>,
    #[serde(default)]
    audit_max_age_days: Option<Spanned<u64>>,
    #[serde(default)]
    enrollment_ttl_secs: Option<Spanned<u64>>,
    #[serde(default)]
    front_socket: Option<PathBuf>,
    #[serde(default)]
    front_socket_user: Option<String>,
    #[serde(default)]
    public_url: Option<Spanned<String>>,
    #[serde(default)]
    web_cert: Option<PathBuf>,
    #[serde(default)]
    client_approvals_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    totp_digits: Option<Spanned<u32>>,
    #[serde(default)]
    totp_step_secs: Option<Spanned<u64>>,
    #[serde(default)]
    passcode_max_failures: Option<Spanned<u32>>,
    #[serde(default)]
    passcode_lockout_secs: Option<Spanned<u64>>,
}

/// `[notices]`: the self-shutdown notice server this controller polls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotices {
    url: Spanned<String>,
    public_key: Spanned<String>,
    #[serde(default)]
    interval_secs: Option<Spanned<u64>>,
    #[serde(default)]
    jitter_secs: Option<Spanned<u64>>,
    #[serde(default)]
    timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// `[cluster]`: this controller serves the cluster API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    node: Spanned<String>,
    listen: Spanned<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    crl: Option<PathBuf>,
    #[serde(default)]
    allowed_peers: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    interfaces: Spanned<Vec<String>>,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    #[serde(default = "defaults::state_dir")]
    state_dir: PathBuf,
    #[serde(default = "defaults::bpffs_dir")]
    bpffs_dir: PathBuf,
    #[serde(default = "defaults::control_socket")]
    control_socket: PathBuf,
    #[serde(default = "defaults::sweep_interval_ms")]
    sweep_interval_ms: Spanned<u64>,
    #[serde(default = "defaults::max_openings")]
    max_openings: Spanned<u32>,
    #[serde(default)]
    metrics_listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    id: Spanned<u32>,
    #[serde(default)]
    address_policy: AddressPolicySetting,
    #[serde(default)]
    public_ipv4: Option<Spanned<String>>,
    #[serde(default)]
    public_ipv6: Option<Spanned<String>>,
    #[serde(default)]
    max_addresses_per_client: Option<Spanned<u32>>,
    #[serde(default)]
    second_factor: SecondFactor,
    #[serde(default)]
    device_auth: crate::device::DeviceAuth,
    #[serde(default = "defaults::connect_window_secs")]
    connect_window_secs: Spanned<u32>,
    #[serde(default = "defaults::idle_timeout_secs")]
    idle_timeout_secs: Spanned<u32>,
    #[serde(default = "defaults::max_lifetime_secs")]
    max_lifetime_secs: Spanned<u32>,
    #[serde(rename = "service")]
    services: Vec<Spanned<RawService>>,
    #[serde(default)]
    openvpn: Option<Spanned<RawOpenVpn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenVpn {
    management_socket: PathBuf,
    #[serde(default)]
    tun_name: Option<Spanned<String>>,
    #[serde(default)]
    tun_owner: Option<Spanned<String>>,
    #[serde(default)]
    tun_group: Option<Spanned<String>>,
    #[serde(default)]
    tun_address: Option<Spanned<String>>,
    #[serde(default = "defaults::disconnect_grace_ms")]
    disconnect_grace_ms: Spanned<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    protocol: Protocol,
    port: Spanned<u16>,
    #[serde(default)]
    address: Option<Spanned<String>>,
}

/// Defaults, in one place, for serde and the docs.
pub mod defaults {
    use std::path::PathBuf;

    use toml::Spanned;

    pub use xdpgate_web::config::defaults::*;

    /// Where redb files live.
    pub fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/xdpgate")
    }
    /// Where maps and links are pinned (a layout-version folder is added below it).
    pub fn bpffs_dir() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/xdpgate")
    }
    /// The admin API's Unix socket.
    pub fn control_socket() -> PathBuf {
        PathBuf::from("/run/xdpgate/control.sock")
    }
    /// How often the sweeper runs.
    pub fn sweep_interval_ms() -> Spanned<u64> {
        Spanned::new(0..0, 1000)
    }
    /// Capacity of each openings map.
    pub fn max_openings() -> Spanned<u32> {
        Spanned::new(0..0, gateway_common::DEFAULT_MAX_OPENINGS)
    }
    /// How long a fresh opening waits for the client's first packet.
    pub fn connect_window_secs() -> Spanned<u32> {
        Spanned::new(0..0, 180)
    }
    /// How long an opening survives without traffic once used.
    pub fn idle_timeout_secs() -> Spanned<u32> {
        Spanned::new(0..0, 300)
    }
    /// Hard limit on an opening's life, however busy.
    pub fn max_lifetime_secs() -> Spanned<u32> {
        Spanned::new(0..0, 86_400)
    }
    /// Accepted clock skew of approval requests, seconds.
    pub const TIMESTAMP_WINDOW_SECS: u64 = 300;
    /// Open addresses one client may hold on one server (a dual-stack client behind two
    /// networks needs four).
    pub const MAX_ADDRESSES_PER_CLIENT: usize = 4;
    /// Approvals one client may get per minute.
    pub const CLIENT_APPROVALS_PER_MINUTE: u32 = 30;
    /// Sampled unauthenticated failures kept.
    pub const AUDIT_RETENTION: u64 = 100_000;
    /// Age after which authenticated decisions leave the audit log, days.
    pub const AUDIT_MAX_AGE_DAYS: u64 = 400;
    /// Lifetime of an enrollment link, seconds.
    pub const ENROLLMENT_TTL_SECS: u64 = 900;
    /// Self-shutdown notice poll interval: one hour.
    pub const NOTICE_INTERVAL_SECS: u64 = 3600;
    /// Deadline of one notice fetch.
    pub const NOTICE_TIMEOUT_MS: u64 = 10_000;
    /// The system's trusted certificates (Debian's ca-certificates).
    pub const NOTICE_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
    /// How long an OpenVPN client's opening survives its disconnect, ms.
    pub fn disconnect_grace_ms() -> Spanned<u64> {
        Spanned::new(0..0, 5_000)
    }
}

/// Which addresses an approval opens (see docs/PROTOCOL.md §7).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AddressPolicySetting {
    /// The request's remote address and the client-reported IPv4 and IPv6: a relayed request
    /// opens the relayer, and a client can open third-party addresses. Explicit only;
    /// `check-config` warns about it.
    OpenAll,
    /// The default ("proven" addresses): only the remote address, and the client must have
    /// reported that same address inside the box, so neither a relay nor the web front alone
    /// can choose what opens.
    #[default]
    #[serde(alias = "proven")]
    RequireMatch,
    /// Only the remote address.
    IgnoreReported,
}

impl Config {
    /// Settings that are valid but weaken the gate, one sentence each, for `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for server in &self.servers {
            if server.address_policy == AddressPolicySetting::OpenAll {
                out.push(format!(
                    "server {:?}: address_policy = \"open_all\" opens whatever address a request comes from and \
                     every address the client reports: a relayed request opens the relayer, and a client can open \
                     third-party addresses (the default, \"require_match\", opens only proven addresses)",
                    server.name
                ));
            }
            for service in &server.services {
                if let Some(address) = service.address {
                    out.push(format!(
                        "server {:?} guards {}/{} only on destination {address}: the same port on this host's \
                         other addresses (other subnets, broadcast, multicast) is not guarded",
                        server.name,
                        service.protocol.name(),
                        service.port
                    ));
                }
            }
        }
        out
    }
}

/// Approval settings of the controller.
#[derive(Clone, Debug)]
pub struct ApprovalsConfig {
    /// Accepted clock skew, seconds; nonces are kept twice as long.
    pub timestamp_window_secs: u64,
    /// Sampled unauthenticated failures kept (a count).
    pub audit_retention: u64,
    /// Authenticated decisions, enrollments and operator events are kept this long.
    pub audit_max_age: Duration,
    /// Lifetime of an enrollment link.
    pub enrollment_ttl: Duration,
    /// Socket the web front submits requests on.
    pub front_socket: PathBuf,
    /// User allowed to connect to `front_socket` (it is chowned to them, mode 0600);
    /// defaults to `[web].user` when the same file configures the web front.
    pub front_socket_user: Option<String>,
    /// The HTTPS endpoint clients use, as written into enrollment links.
    pub public_url: Option<String>,
    /// The web front's certificate, pinned by clients via the enrollment link.
    pub web_cert: Option<PathBuf>,
    /// Approvals one client may get per minute (token bucket; 0: unlimited).
    pub client_approvals_per_minute: u32,
    /// The TOTP passcode rules of servers with `second_factor = "totp"`.
    pub passcode: crate::passcode::PasscodeRules,
}

/// A server's second factor (`second_factor`), checked after the triple-signed request.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    /// None: the request's three signatures suffice.
    #[default]
    Off,
    /// A single-use TOTP passcode (RFC 6238) inside the request box (`docs/PROTOCOL.md` §7.4).
    Totp,
}

/// Validated controller configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interfaces the gate is attached to.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub xdp_mode: XdpModeSetting,
    /// Folder of the redb state.
    pub state_dir: PathBuf,
    /// bpffs folder for pinned maps and links.
    pub bpffs_dir: PathBuf,
    /// Admin API socket.
    pub control_socket: PathBuf,
    /// Sweeper period.
    pub sweep_interval: Duration,
    /// Capacity of each openings map.
    pub max_openings: u32,
    /// Prometheus metrics listener (`GET /metrics`); off when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Guarded servers.
    pub servers: Vec<ServerConfig>,
    /// Approval settings.
    pub approvals: ApprovalsConfig,
    /// The web front, if configured in the same file.
    pub web: Option<WebConfig>,
    /// The cluster API this controller serves, if configured.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The self-shutdown notice server, if configured.
    pub notices: Option<NoticesConfig>,
}

/// `[notices]`: where and how often to ask for signed self-shutdown notices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticesConfig {
    /// `https://` URL; the controller adds `?version=<its version>`.
    pub url: String,
    /// The pinned Ed25519 public key notices must be signed with.
    pub public_key: [u8; 32],
    /// Time between polls (default one hour).
    pub interval: Duration,
    /// Each wait is `interval` plus a random part of up to this (default a tenth of it).
    pub jitter: Duration,
    /// Deadline of one fetch, connection to last byte.
    pub timeout: Duration,
    /// Certificates (PEM) trusted for the notice server's TLS.
    pub ca_file: PathBuf,
}

/// One guarded server (a VPN instance) and its services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Unique name used by the CLI and clients.
    pub name: String,
    /// Stable numeric id used in the kernel maps; never reuse one for another server.
    pub id: u32,
    /// How long a new opening waits for first traffic.
    pub connect_window: Duration,
    /// How long a used opening survives without traffic.
    pub idle_timeout: Duration,
    /// Absolute limit of an opening's life.
    pub max_lifetime: Duration,
    /// The guarded (protocol, port, address) tuples.
    pub services: Vec<ServiceConfig>,
    /// Which addresses an approval opens.
    pub address_policy: AddressPolicySetting,
    /// At most this many addresses of this server held open by one client at once.
    pub max_addresses_per_client: usize,
    /// The second factor approvals of this server need.
    pub second_factor: SecondFactor,
    /// Whether approvals need a signature by an approved device (`docs/PROTOCOL.md` §15).
    pub device_auth: crate::device::DeviceAuth,
    /// The public IPv4 address clients are told to connect to.
    pub public_ipv4: Option<std::net::Ipv4Addr>,
    /// The public IPv6 address clients are told to connect to.
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// The OpenVPN server the controller follows (`[server.openvpn]`), if any.
    pub openvpn: Option<OpenVpnConfig>,
}

/// An OpenVPN server behind the gate (`[server.openvpn]`, see docs/OPENVPN.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenVpnConfig {
    /// OpenVPN's management socket (`--management PATH unix --management-client-auth`).
    pub management_socket: PathBuf,
    /// The persistent tun interface the controller creates, if any.
    pub tun: Option<TunConfig>,
    /// How long an opening survives the client's disconnect (a reconnect keeps it).
    pub disconnect_grace: Duration,
}

/// A persistent tun interface made by the controller for an unprivileged VPN process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// User that may attach to it (the VPN server's user).
    pub owner: String,
    /// Group that may attach to it.
    pub group: Option<String>,
    /// IPv4 address and prefix set on it (the VPN server's side of the tunnel).
    pub address: Option<IpNet>,
}

/// A guarded service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceConfig {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// Destination address; `None` is any local address.
    pub address: Option<IpAddr>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw = parse_raw(text, path)?;
        Validator { text, path }.validate(raw)
    }

    /// The server with this name.
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|server| server.name == name)
    }

    /// The server with this id.
    pub fn server_by_id(&self, id: u32) -> Option<&ServerConfig> {
        self.servers.iter().find(|server| server.id == id)
    }
}

fn parse_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|err| ConfigError::Syntax {
        path: path.to_owned(),
        message: err.to_string().trim_end().to_owned(),
    })
}

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn fail(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        self.source().fail(span, reason)
    }

    /// The same file, for the `[web]` rules in `xdpgate-web`.
    fn source(&self) -> SourceText<'_> {
        SourceText {
            text: self.text,
            path: self.path,
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let controller = raw
            .controller
            .ok_or_else(|| self.fail(0..0, "missing [controller] section"))?;
        let interfaces = controller.interfaces.get_ref().clone();
        if interfaces.is_empty() {
            return Err(self.fail(
                controller.interfaces.span(),
                "interfaces must name at least one",
            ));
        }
        for name in &interfaces {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(self.fail(
                    controller.interfaces.span(),
                    format!("{name:?} is not a valid interface name"),
                ));
            }
        }
        let sweep_ms = *controller.sweep_interval_ms.get_ref();
        if !(50..=60_000).contains(&sweep_ms) {
            return Err(self.fail(
                controller.sweep_interval_ms.span(),
                "sweep_interval_ms must be between 50 and 60000",
            ));
        }
        let max_openings = *controller.max_openings.get_ref();
        if !(16..=16_777_216).contains(&max_openings) {
            return Err(self.fail(
                controller.max_openings.span(),
                "max_openings must be between 16 and 16777216",
            ));
        }
        let servers = self.servers(raw.servers)?;
        for server in &servers {
            if server.idle_timeout < 2 * Duration::from_millis(sweep_ms) {
                return Err(self.fail(
                    controller.sweep_interval_ms.span(),
                    format!(
                        "sweep_interval_ms must be at most half of server {:?}'s idle timeout",
                        server.name
                    ),
                ));
            }
        }
        let metrics_listen = self
            .source()
            .metrics_listen(controller.metrics_listen.as_ref())?;
        let mut approvals = self.approvals(raw.approvals, &controller.state_dir)?;
        let web = raw.web.map(|web| self.source().web(web)).transpose()?;
        let cluster = raw
            .cluster
            .map(|cluster| self.cluster(cluster))
            .transpose()?;
        let notices = raw
            .notices
            .map(|notices| self.notices(notices))
            .transpose()?;
        if let (None, Some(web)) = (&approvals.front_socket_user, &web) {
            // The web front configured here drops to this user; it must reach the socket.
            approvals.front_socket_user = Some(web.user.clone());
        }
        Ok(Config {
            approvals,
            web,
            cluster,
            notices,
            interfaces,
            xdp_mode: controller.xdp_mode,
            state_dir: controller.state_dir,
            bpffs_dir: controller.bpffs_dir,
            control_socket: controller.control_socket,
            sweep_interval: Duration::from_millis(sweep_ms),
            max_openings,
            metrics_listen,
            servers,
        })
    }

    fn servers(&self, raw: Vec<Spanned<RawServer>>) -> Result<Vec<ServerConfig>, ConfigError> {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut services_seen = BTreeSet::new();
        let mut servers = Vec::with_capacity(raw.len());
        for server in raw {
            let server = server.into_inner();
            let name = server.name.get_ref();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(self.fail(
                    server.name.span(),
                    "server name must be 1-64 characters of A-Z a-z 0-9 - _",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(self.fail(
                    server.name.span(),
                    format!("duplicate server name {name:?}"),
                ));
            }
            let id = *server.id.get_ref();
            if id == 0 || id > u32::from(u16::MAX) {
                return Err(self.fail(server.id.span(), "server id must be between 1 and 65535"));
            }
            if !ids.insert(id) {
                return Err(self.fail(server.id.span(), format!("duplicate server id {id}")));
            }
            let limits = self.limits(&server)?;
            let max_addresses_per_client = self.max_addresses_per_client(&server)?;
            let openvpn = server.openvpn.map(|raw| self.openvpn(raw)).transpose()?;
            let public_ipv4 = self.public_address(&server.public_ipv4, "IPv4")?;
            let public_ipv6 = self.public_address(&server.public_ipv6, "IPv6")?;
            if server.services.is_empty() {
                return Err(self.fail(
                    server.name.span(),
                    "a server needs at least one [[server.service]]",
                ));
            }
            let mut services = Vec::with_capacity(server.services.len());
            for service in server.services {
                let span = service.span();
                let service = self.service(service.into_inner())?;
                if !services_seen.insert(service) {
                    return Err(self.fail(span, "this protocol/port/address is guarded twice"));
                }
                services.push(service);
            }
            servers.push(ServerConfig {
                name: name.clone(),
                id,
                connect_window: limits.0,
                idle_timeout: limits.1,
                max_lifetime: limits.2,
                services,
                address_policy: server.address_policy,
                max_addresses_per_client,
                second_factor: server.second_factor,
                device_auth: server.device_auth,
                public_ipv4,
                public_ipv6,
                openvpn,
            });
        }
        if services_seen.len() > gateway_common::MAX_SERVICES as usize {
            return Err(self.fail(0..0, "too many services (limit 1024)"));
        }
        Ok(servers)
    }

    fn approvals(
        &self,
        raw: RawApprovals,
        state_dir: &Path,
    ) -> Result<ApprovalsConfig, ConfigError> {
        let passcode = self.passcode_rules(&raw)?;
        let window =
            raw.timestamp_window_secs
                .map_or(Ok(defaults::TIMESTAMP_WINDOW_SECS), |w| {
                    let value = *w.get_ref();
                    if (10..=3600).contains(&value) {
                        Ok(value)
                    } else {
                        Err(self.fail(
                            w.span(),
                            "timestamp_window_secs must be between 10 and 3600",
                        ))
                    }
                })?;
        let retention = raw
            .audit_retention
            .map_or(Ok(defaults::AUDIT_RETENTION), |r| {
                let value = *r.get_ref();
                if (100..=10_000_000).contains(&value) {
                    Ok(value)
                } else {
                    Err(self.fail(r.span(), "audit_retention must be between 100 and 10000000"))
                }
            })?;
        let max_age_days =
            raw.audit_max_age_days
                .map_or(Ok(defaults::AUDIT_MAX_AGE_DAYS), |d| {
                    let value = *d.get_ref();
                    if (1..=36_500).contains(&value) {
                        Ok(value)
                    } else {
                        Err(self.fail(d.span(), "audit_max_age_days must be between 1 and 36500"))
                    }
                })?;
        let ttl = raw
            .enrollment_ttl_secs
            .map_or(Ok(defaults::ENROLLMENT_TTL_SECS), |t| {
                let value = *t.get_ref();
                if (60..=7 * 86_400).contains(&value) {
                    Ok(value)
                } else {
                    Err(self.fail(
                        t.span(),
                        "enrollment_ttl_secs must be between 60 and 604800",
                    ))
                }
            })?;
        let client_rate = raw.client_approvals_per_minute.map_or(
            Ok(defaults::CLIENT_APPROVALS_PER_MINUTE),
            |r| {
                let value = *r.get_ref();
                if value <= 100_000 {
                    Ok(value)
                } else {
                    Err(self.fail(
                        r.span(),
                        "client_approvals_per_minute must be at most 100000",
                    ))
                }
            },
        )?;
        if let Some(url) = raw
            .public_url
            .as_ref()
            .filter(|u| !u.get_ref().starts_with("https://"))
        {
            return Err(self.fail(url.span(), "public_url must be an https:// URL"));
        }
        Ok(ApprovalsConfig {
            timestamp_window_secs: window,
            audit_retention: retention,
            audit_max_age: Duration::from_secs(max_age_days.saturating_mul(86_400)),
            enrollment_ttl: Duration::from_secs(ttl),
            front_socket: raw.front_socket.unwrap_or_else(defaults::front_socket),
            front_socket_user: raw.front_socket_user,
            public_url: raw.public_url.map(Spanned::into_inner),
            web_cert: raw
                .web_cert
                .or_else(|| Some(state_dir.join("web").join("cert.pem"))),
            client_approvals_per_minute: client_rate,
            passcode,
        })
    }

    fn passcode_rules(
        &self,
        raw: &RawApprovals,
    ) -> Result<crate::passcode::PasscodeRules, ConfigError> {
        let mut rules = crate::passcode::PasscodeRules::default();
        if let Some(d) = &raw.totp_digits {
            if !(6..=8).contains(d.get_ref()) {
                return Err(self.fail(d.span(), "totp_digits must be 6, 7 or 8"));
            }
            rules.digits = *d.get_ref();
        }
        if let Some(t) = &raw.totp_step_secs {
            if !(15..=300).contains(t.get_ref()) {
                return Err(self.fail(t.span(), "totp_step_secs must be between 15 and 300"));
            }
            rules.step_secs = *t.get_ref();
        }
        if let Some(f) = &raw.passcode_max_failures {
            if !(1..=100).contains(f.get_ref()) {
                return Err(self.fail(f.span(), "passcode_max_failures must be between 1 and 100"));
            }
            rules.max_failures = *f.get_ref();
        }
        if let Some(l) = &raw.passcode_lockout_secs {
            if !(10..=86_400).contains(l.get_ref()) {
                return Err(self.fail(
                    l.span(),
                    "passcode_lockout_secs must be between 10 and 86400",
                ));
            }
            rules.lockout = Duration::from_secs(*l.get_ref());
        }
        Ok(rules)
    }

    fn notices(&self, raw: Spanned<RawNotices>) -> Result<NoticesConfig, ConfigError> {
        let raw = raw.into_inner();
        let url = raw.url.get_ref();
        if crate::client::https::Endpoint::parse(url).is_err() {
            return Err(self.fail(
                raw.url.span(),
                "notices.url must be an https://HOST[:PORT]/PATH URL without a query",
            ));
        }
        let key = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            raw.public_key.get_ref().trim(),
        )
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| {
            self.fail(
                raw.public_key.span(),
                "notices.public_key must be a base64 Ed25519 public key (32 bytes)",
            )
        })?;
        let interval = raw
            .interval_secs
            .map_or(Ok(defaults::NOTICE_INTERVAL_SECS), |i| {
                let value = *i.get_ref();
                if (1..=86_400).contains(&value) {
                    Ok(value)
                } else {
                    Err(self.fail(i.span(), "interval_secs must be between 1 and 86400"))
                }
            })?;
        let jitter = raw.jitter_secs.map_or(Ok(interval / 10), |j| {
            let value = *j.get_ref();
            if value <= interval {
                Ok(value)
            } else {
                Err(self.fail(j.span(), "jitter_secs must be at most interval_secs"))
            }
        })?;
        let timeout = raw
            .timeout_ms
            .map_or(Ok(defaults::NOTICE_TIMEOUT_MS), |t| {
                let value = *t.get_ref();
                if (100..=60_000).contains(&value) {
                    Ok(value)
                } else {
                    Err(self.fail(t.span(), "timeout_ms must be between 100 and 60000"))
                }
            })?;
        Ok(NoticesConfig {
            url: url.clone(),
            public_key: key,
            interval: Duration::from_secs(interval),
            jitter: Duration::from_secs(jitter),
            timeout: Duration::from_millis(timeout),
            ca_file: raw
                .ca_file
                .unwrap_or_else(|| PathBuf::from(defaults::NOTICE_CA_FILE)),
        })
    }

    fn cluster(&self, raw: RawCluster) -> Result<crate::cluster::ClusterConfig, ConfigError> {
        let node = raw.node.get_ref();
        if !crate::cluster::ca::valid_node_name(node) {
            return Err(self.fail(
                raw.node.span(),
                "node must be a DNS name (a-z 0-9 - .), 1-63 characters",
            ));
        }
        let listen = raw
            .listen
            .get_ref()
            .parse()
            .map_err(|_| self.fail(raw.listen.span(), "listen must be ADDRESS:PORT"))?;
        let allowed_peers = match &raw.allowed_peers {
            None => vec![crate::cluster::NamePattern::default_web()],
            Some(list) => {
                let parsed = list
                    .get_ref()
                    .iter()
                    .map(|p| p.parse::<crate::cluster::NamePattern>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| self.fail(list.span(), reason))?;
                if parsed.is_empty() {
                    return Err(
                        self.fail(list.span(), "allowed_peers must name at least one pattern")
                    );
                }
                parsed
            }
        };
        Ok(crate::cluster::ClusterConfig {
            node: node.clone(),
            listen,
            tls: crate::cluster::NodeTls {
                ca: raw.ca,
                cert: raw.cert,
                key: raw.key,
                crl: raw.crl,
            },
            allowed_peers,
        })
    }

    fn openvpn(&self, raw: Spanned<RawOpenVpn>) -> Result<OpenVpnConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.management_socket.as_os_str().is_empty() || !raw.management_socket.is_absolute() {
            return Err(self.fail(span, "openvpn.management_socket must be an absolute path"));
        }
        let grace = *raw.disconnect_grace_ms.get_ref();
        if grace > 600_000 {
            return Err(self.fail(
                raw.disconnect_grace_ms.span(),
                "disconnect_grace_ms must be at most 600000",
            ));
        }
        let tun = match raw.tun_name {
            None => {
                let stray = raw
                    .tun_owner
                    .as_ref()
                    .or(raw.tun_group.as_ref())
                    .or(raw.tun_address.as_ref());
                if let Some(stray) = stray {
                    return Err(self.fail(
                        stray.span(),
                        "tun_owner, tun_group and tun_address need tun_name",
                    ));
                }
                None
            }
            Some(name) => Some(self.tun(name, raw.tun_owner, raw.tun_group, raw.tun_address)?),
        };
        Ok(OpenVpnConfig {
            management_socket: raw.management_socket,
            tun,
            disconnect_grace: Duration::from_millis(grace),
        })
    }

    fn tun(
        &self,
        name: Spanned<String>,
        owner: Option<Spanned<String>>,
        group: Option<Spanned<String>>,
        address: Option<Spanned<String>>,
    ) -> Result<TunConfig, ConfigError> {
        let text = name.get_ref();
        let name_ok = !text.is_empty()
            && text.len() <= 15
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !name_ok {
            return Err(self.fail(
                name.span(),
                "tun_name must be 1-15 characters of A-Z a-z 0-9 . - _",
            ));
        }
        let owner = owner.ok_or_else(|| {
            self.fail(
                name.span(),
                "tun_name needs tun_owner (the VPN server's user)",
            )
        })?;
        let user_ok =
            |s: &str| !s.is_empty() && s.len() <= 32 && !s.contains([':', '/', ' ', '\n']);
        if !user_ok(owner.get_ref()) {
            return Err(self.fail(owner.span(), "tun_owner must be a user name"));
        }
        if let Some(group) = group.as_ref().filter(|g| !user_ok(g.get_ref())) {
            return Err(self.fail(group.span(), "tun_group must be a group name"));
        }
        let address = match address {
            None => None,
            Some(text) => {
                let net: IpNet = text
                    .get_ref()
                    .parse()
                    .map_err(|reason| self.fail(text.span(), reason))?;
                if !net.addr.is_ipv4() || !text.get_ref().contains('/') {
                    return Err(self.fail(
                        text.span(),
                        "tun_address must be IPv4 ADDRESS/PREFIX, e.g. 10.8.0.1/24",
                    ));
                }
                Some(net)
            }
        };
        Ok(TunConfig {
            name: name.into_inner(),
            owner: owner.into_inner(),
            group: group.map(Spanned::into_inner),
            address,
        })
    }

    fn public_address<T: std::str::FromStr>(
        &self,
        raw: &Option<Spanned<String>>,
        family: &str,
    ) -> Result<Option<T>, ConfigError> {
        raw.as_ref()
            .map(|text| {
                text.get_ref().parse::<T>().map_err(|_| {
                    self.fail(
                        text.span(),
                        format!("{:?} is not an {family} address", text.get_ref()),
                    )
                })
            })
            .transpose()
    }

    fn max_addresses_per_client(&self, server: &RawServer) -> Result<usize, ConfigError> {
        match &server.max_addresses_per_client {
            None => Ok(defaults::MAX_ADDRESSES_PER_CLIENT),
            Some(v) if (1..=1024).contains(v.get_ref()) => {
                Ok(usize::try_from(*v.get_ref()).unwrap_or(1))
            }
            Some(v) => Err(self.fail(
                v.span(),
                "max_addresses_per_client must be between 1 and 1024",
            )),
        }
    }

    fn limits(&self, server: &RawServer) -> Result<(Duration, Duration, Duration), ConfigError> {
        let connect = *server.connect_window_secs.get_ref();
        let idle = *server.idle_timeout_secs.get_ref();
        let max = *server.max_lifetime_secs.get_ref();
        if connect == 0 {
            return Err(self.fail(
                server.connect_window_secs.span(),
                "connect_window_secs must be > 0",
            ));
        }
        if idle == 0 {
            return Err(self.fail(
                server.idle_timeout_secs.span(),
                "idle_timeout_secs must be > 0",
            ));
        }
        if max < connect || max < idle {
            return Err(self.fail(
                server.max_lifetime_secs.span(),
                "max_lifetime_secs must be at least connect_window_secs and idle_timeout_secs",
            ));
        }
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        Ok((secs(connect), secs(idle), secs(max)))
    }

    fn service(&self, raw: RawService) -> Result<ServiceConfig, ConfigError> {
        let port = *raw.port.get_ref();
        if port == 0 {
            return Err(self.fail(raw.port.span(), "port 0 cannot be guarded"));
        }
        let address = match raw.address {
            None => None,
            Some(text) => {
                let address: IpAddr = text.get_ref().parse().map_err(|_| {
                    self.fail(
                        text.span(),
                        format!("{:?} is not an IP address", text.get_ref()),
                    )
                })?;
                if address.is_unspecified() || address.is_multicast() {
                    return Err(self.fail(
                        text.span(),
                        "a service address must be a unicast address (omit it for any address)",
                    ));
                }
                Some(address)
            }
        };
        Ok(ServiceConfig {
            protocol: raw.protocol,
            port,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[controller]
interfaces = ["eth0"]
state_dir = "/tmp/x"

[[server]]
name = "vpn1"
id = 1
idle_timeout_secs = 60

[[server.service]]
protocol = "udp"
port = 1194

[[server.service]]
protocol = "tcp"
port = 443
address = "192.0.2.1"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    /// 1-based line of the first occurrence of `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    fn invalid_line(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::Invalid { line, reason, .. }) => (line, reason),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.interfaces, vec!["eth0"]);
        assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(config.sweep_interval, Duration::from_secs(1));
        let server = config.server("vpn1").unwrap();
        assert_eq!(server.id, 1);
        assert_eq!(server.idle_timeout, Duration::from_secs(60));
        assert_eq!(server.connect_window, Duration::from_secs(180));
        assert_eq!(server.services.len(), 2);
        assert_eq!(
            server.services[1].address,
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn proven_addresses_are_the_default_and_open_all_is_warned_about() {
        let config = parse(GOOD).unwrap();
        let server = config.server("vpn1").unwrap();
        assert_eq!(server.address_policy, AddressPolicySetting::RequireMatch);
        assert_eq!(
            server.max_addresses_per_client,
            defaults::MAX_ADDRESSES_PER_CLIENT
        );
        assert_eq!(
            config.approvals.client_approvals_per_minute,
            defaults::CLIENT_APPROVALS_PER_MINUTE
        );
        assert!(
            !config.warnings().iter().any(|w| w.contains("open_all")),
            "{:?}",
            config.warnings()
        );
        let proven = GOOD.replace("id = 1\n", "id = 1\naddress_policy = \"proven\"\n");
        assert_eq!(
            parse(&proven).unwrap().servers[0].address_policy,
            AddressPolicySetting::RequireMatch
        );
        let open_all = GOOD.replace("id = 1\n", "id = 1\naddress_policy = \"open_all\"\n");
        let warnings: Vec<String> = parse(&open_all)
            .unwrap()
            .warnings()
            .into_iter()
            .filter(|w| w.contains("open_all"))
            .collect();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("vpn1") && warnings[0].contains("relayed request"),
            "{warnings:?}"
        );
        let capped = GOOD.replace("id = 1\n", "id = 1\nmax_addresses_per_client = 0\n");
        let (line, reason) = invalid_line(&capped);
        assert_eq!(line, line_of(&capped, "max_addresses_per_client"));
        assert!(reason.contains("between 1 and 1024"), "{reason}");
    }

    #[test]
    fn a_service_bound_to_one_destination_is_warned_about() {
        // GOOD guards tcp/443 on 192.0.2.1 only.
        let warnings = parse(GOOD).unwrap().warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("tcp/443")
                && warnings[0].contains("192.0.2.1")
                && warnings[0].contains("not guarded"),
            "{warnings:?}"
        );
        let unbound = GOOD.replace("address = \"192.0.2.1\"\n", "");
        assert!(parse(&unbound).unwrap().warnings().is_empty());
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = GOOD.replace("id = 1\n", "id = 1\nidel_timeout = 5\n");
        match parse(&text) {
            Err(ConfigError::Syntax { message, .. }) => {
                assert!(message.contains("idel_timeout"), "{message}");
                let line = line_of(&text, "idel_timeout");
                assert!(message.contains(&format!("line {line}")), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn bad_address_names_line_and_reason() {
        let text = GOOD.replace("192.0.2.1", "192.0.2.300");
        let (line, reason) = invalid_line(&text);
        assert_eq!(line, line_of(&text, "192.0.2.300"));
        assert!(reason.contains("not an IP address"), "{reason}");
    }

    #[test]
    fn duplicate_ids_and_services_are_refused() {
        let twice = format!(
            "{GOOD}\n[[server]]\nname = \"vpn2\"\nid = 1\n[[server.service]]\nprotocol = \"udp\"\nport = 1\n"
        );
        let (line, reason) = invalid_line(&twice);
        let lines: Vec<&str> = twice.lines().collect();
        assert_eq!(
            line,
            lines.iter().rposition(|l| *l == "id = 1").unwrap() + 1
        );
        assert!(reason.contains("duplicate server id"), "{reason}");

        let same_service = format!(
            "{GOOD}\n[[server]]\nname = \"vpn2\"\nid = 2\n[[server.service]]\nprotocol = \"udp\"\nport = 1194\n"
        );
        let (_, reason) = invalid_line(&same_service);
        assert!(reason.contains("guarded twice"), "{reason}");
    }

    #[test]
    fn limits_must_be_consistent() {
        let (_, reason) =
            invalid_line(&GOOD.replace("idle_timeout_secs = 60", "max_lifetime_secs = 10"));
        assert!(reason.contains("max_lifetime_secs"), "{reason}");
        let (_, reason) = invalid_line(&GOOD.replace("port = 1194", "port = 0"));
        assert!(reason.contains("port 0"), "{reason}");
    }

    #[test]
    fn device_auth_is_off_by_default_and_read_strictly() {
        let config = parse(GOOD).unwrap();
        assert_eq!(
            config.servers[0].device_auth,
            crate::device::DeviceAuth::Off
        );
        let on = GOOD.replacen(
            "name = \"vpn1\"",
            "name = \"vpn1\"\ndevice_auth = \"required\"",
            1,
        );
        assert_eq!(
            parse(&on).unwrap().servers[0].device_auth,
            crate::device::DeviceAuth::Required
        );
        let bad = GOOD.replacen(
            "name = \"vpn1\"",
            "name = \"vpn1\"\ndevice_auth = \"maybe\"",
            1,
        );
        assert!(
            parse(&bad).is_err(),
            "an unknown device_auth value is refused"
        );
    }

    #[test]
    fn example_config_in_the_repo_is_valid() {
        let text = include_str!("../../config/example.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.approvals.timestamp_window_secs, 300);
        assert!(
            config
                .approvals
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        );
        let web = config.web.unwrap();
        assert_eq!(web.rate_limit_burst, 20);
        assert_eq!(web.connections, ConnectionLimits::DEFAULT);
        assert_eq!(
            config.approvals.front_socket_user.as_deref(),
            Some("xdpgate-web")
        );
        assert_eq!(
            config.servers[0].public_ipv4,
            Some("203.0.113.10".parse().unwrap())
        );
    }

    #[test]
    fn connection_limits_are_read_and_checked() {
        let text = include_str!("../../config/example.toml");
        let custom = text
            .replace("max_connections = 4096", "max_connections = 1000")
            .replace(
                "max_connections_per_source = 256",
                "max_connections_per_source = 10",
            )
            .replace("source_prefix_v6 = 64", "source_prefix_v6 = 56");
        let web = parse(&custom).unwrap().web.unwrap();
        assert_eq!(
            web.connections,
            ConnectionLimits {
                max_connections: 1000,
                max_per_source: 10,
                source_prefix_v4: 32,
                source_prefix_v6: 56
            }
        );
        for (from, to, key) in [
            (
                "max_connections = 4096",
                "max_connections = 8",
                "max_connections",
            ),
            (
                "max_connections_per_source = 256",
                "max_connections_per_source = 0",
                "max_connections_per_source",
            ),
            (
                "max_connections_per_source = 256",
                "max_connections_per_source = 5000",
                "max_connections_per_source",
            ),
            (
                "source_prefix_v4 = 32",
                "source_prefix_v4 = 33",
                "source_prefix_v4",
            ),
            (
                "source_prefix_v6 = 64",
                "source_prefix_v6 = 8",
                "source_prefix_v6",
            ),
        ] {
            let (line, reason) = invalid_line(&text.replace(from, to));
            assert!(reason.contains(key), "{reason}");
            assert_eq!(
                text.lines().nth(line - 1),
                Some(from),
                "the error names the line of {key}"
            );
        }
    }

    #[test]
    fn notices_section_is_validated_with_defaults() {
        let key = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
        let section = |extra: &str| {
            format!(
                "{GOOD}\n[notices]\nurl = \"https://192.0.2.1:9443/n\"\npublic_key = \"{key}\"\n{extra}"
            )
        };
        let notices = parse(&section("")).unwrap().notices.unwrap();
        assert_eq!(notices.interval, Duration::from_secs(3600));
        assert_eq!(notices.jitter, Duration::from_secs(360));
        assert_eq!(notices.timeout, Duration::from_secs(10));
        assert_eq!(notices.public_key[0], 0x03);
        let (_, reason) = invalid_line(&section("interval_secs = 0"));
        assert!(reason.contains("interval_secs"), "{reason}");
        let (_, reason) = invalid_line(&section("interval_secs = 10\njitter_secs = 11"));
        assert!(reason.contains("jitter_secs"), "{reason}");
        let (_, reason) = invalid_line(&section("").replace(key, "c2hvcnQ="));
        assert!(reason.contains("public_key"), "{reason}");
        let (_, reason) =
            invalid_line(&section("").replace("https://192.0.2.1:9443/n", "http://192.0.2.1/n"));
        assert!(reason.contains("notices.url"), "{reason}");
        assert!(
            parse(GOOD).unwrap().notices.is_none(),
            "no section, no polling"
        );
    }

    #[test]
    fn web_node_example_in_the_repo_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/web-node.toml"
        ));
        let web = WebConfig::load(path).unwrap();
        assert_eq!(web.proxy_protocol_peers.len(), 1);
        assert_eq!(web.cluster.as_ref().map(|c| c.controllers.len()), Some(2));
    }

    #[test]
    fn ip_networks_match_by_prefix() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let host: IpNet = "fd00::1".parse().unwrap();
        assert!(
            host.contains("fd00::1".parse().unwrap()) && !host.contains("fd00::2".parse().unwrap())
        );
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn openvpn_section_parses_and_is_validated_with_lines() {
        let with = format!(
            "{GOOD}\n[server.openvpn]\nmanagement_socket = \"/run/openvpn/vpn1.sock\"\ntun_name = \"xgtun0\"\n\
             tun_owner = \"nobody\"\ntun_group = \"nogroup\"\ntun_address = \"10.8.0.1/24\"\ndisconnect_grace_ms = 1500\n"
        );
        let config = parse(&with).unwrap();
        let vpn = config.servers[0].openvpn.clone().unwrap();
        assert_eq!(
            vpn.management_socket,
            PathBuf::from("/run/openvpn/vpn1.sock")
        );
        assert_eq!(vpn.disconnect_grace, Duration::from_millis(1500));
        let tun = vpn.tun.unwrap();
        assert_eq!(
            (tun.name.as_str(), tun.owner.as_str(), tun.group.as_deref()),
            ("xgtun0", "nobody", Some("nogroup"))
        );
        assert_eq!(tun.address, Some("10.8.0.1/24".parse().unwrap()));

        let too_long = with.replace("xgtun0", "a-very-long-tun-name");
        let (line, reason) = invalid_line(&too_long);
        assert_eq!(line, line_of(&too_long, "a-very-long-tun-name"));
        assert!(reason.contains("tun_name"), "{reason}");

        let no_owner = with.replace("tun_owner = \"nobody\"\n", "");
        let (_, reason) = invalid_line(&no_owner);
        assert!(reason.contains("tun_owner"), "{reason}");

        let bad_address = with.replace("10.8.0.1/24", "fd00::1/64");
        let (line, _) = invalid_line(&bad_address);
        assert_eq!(line, line_of(&bad_address, "fd00::1/64"));

        let unknown = with.replace("disconnect_grace_ms", "disconect_grace_ms");
        assert!(matches!(parse(&unknown), Err(ConfigError::Syntax { .. })));
        assert!(parse(GOOD).unwrap().servers[0].openvpn.is_none());
    }

    #[test]
    fn missing_controller_section_is_a_syntax_error() {
        assert!(matches!(
            parse("[[server]]\n"),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            parse("[approvals]\n"),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
