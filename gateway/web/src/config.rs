//! The web front's configuration: the `[web]` section of the config file, validated once into
//! typed values. The controller's configuration (`xdpgate::config`) reads the same section
//! with these rules, so one file serves both.
//!
//! Unknown keys are refused; every error names the line and the reason.
use std::{
    collections::HashSet,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrongly typed value.
    #[error("{path}: {message}")]
    Syntax {
        /// File that failed.
        path: PathBuf,
        /// The parser's message, which names line and column.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// File that failed.
        path: PathBuf,
        /// 1-based line of the offending value.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Defaults of `[web]` (the controller's `config::defaults` re-exports them).
pub mod defaults {
    use std::path::PathBuf;

    use toml::Spanned;

    use super::ConnectionLimits;

    /// The controller's socket for the web front.
    pub fn front_socket() -> PathBuf {
        PathBuf::from("/run/xdpgate/front.sock")
    }
    /// Where the web front listens.
    pub fn web_listen() -> Spanned<String> {
        Spanned::new(0..0, "[::]:8443".to_owned())
    }
    /// Requests per source address per minute.
    pub fn rate_limit_per_minute() -> Spanned<u32> {
        Spanned::new(0..0, 120)
    }
    /// Burst allowance per source address.
    pub fn rate_limit_burst() -> Spanned<u32> {
        Spanned::new(0..0, 20)
    }
    /// Deadline of one request through the web front, ms.
    pub fn request_timeout_ms() -> Spanned<u64> {
        Spanned::new(0..0, 5_000)
    }
    /// Connections the web front holds open at once.
    pub fn max_connections() -> Spanned<u32> {
        Spanned::new(0..0, ConnectionLimits::DEFAULT.max_connections)
    }
    /// Connections one source (see `source_prefix_v4`/`_v6`) may hold open at once.
    pub fn max_connections_per_source() -> Spanned<u32> {
        Spanned::new(0..0, ConnectionLimits::DEFAULT.max_per_source)
    }
    /// IPv4 addresses sharing one connection budget: a /32 each.
    pub fn source_prefix_v4() -> Spanned<u8> {
        Spanned::new(0..0, ConnectionLimits::DEFAULT.source_prefix_v4)
    }
    /// IPv6 addresses sharing one connection budget: a /64 each.
    pub fn source_prefix_v6() -> Spanned<u8> {
        Spanned::new(0..0, ConnectionLimits::DEFAULT.source_prefix_v6)
    }
    /// Unprivileged user the web front runs as under `xdpgate run` (its own system user, not
    /// `nobody`, which other daemons share).
    pub fn web_user() -> String {
        "xdpgate-web".to_owned()
    }
}

/// `[web]` as written (checked by [`SourceText::web`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    #[serde(default = "defaults::web_listen")]
    listen: Spanned<String>,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default = "defaults::front_socket")]
    front_socket: PathBuf,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default = "defaults::rate_limit_per_minute")]
    rate_limit_per_minute: Spanned<u32>,
    #[serde(default = "defaults::rate_limit_burst")]
    rate_limit_burst: Spanned<u32>,
    #[serde(default = "defaults::request_timeout_ms")]
    request_timeout_ms: Spanned<u64>,
    #[serde(default = "defaults::web_user")]
    user: String,
    #[serde(default)]
    proxy_protocol_peers: Vec<Spanned<String>>,
    #[serde(default)]
    cluster: Option<Spanned<RawWebCluster>>,
    #[serde(default = "defaults::max_connections")]
    max_connections: Spanned<u32>,
    #[serde(default = "defaults::max_connections_per_source")]
    max_connections_per_source: Spanned<u32>,
    #[serde(default = "defaults::source_prefix_v4")]
    source_prefix_v4: Spanned<u8>,
    #[serde(default = "defaults::source_prefix_v6")]
    source_prefix_v6: Spanned<u8>,
    #[serde(default)]
    metrics_listen: Option<Spanned<String>>,
}

/// `[web.cluster]`: this web node forwards to controllers over the cluster API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebCluster {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    crl: Option<PathBuf>,
    #[serde(default)]
    refresh_ms: Option<Spanned<u64>>,
    controllers: Vec<Spanned<RawControllerAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControllerAddr {
    name: Spanned<String>,
    address: Spanned<String>,
}

/// The web front's settings (`[web]`).
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// TLS certificate chain (PEM).
    pub cert: PathBuf,
    /// TLS private key (PEM).
    pub key: PathBuf,
    /// The controller's front socket.
    pub front_socket: PathBuf,
    /// Peers whose PROXY/X-Forwarded-For client address is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests per source address per minute.
    pub rate_limit_per_minute: u32,
    /// Burst allowance per source address.
    pub rate_limit_burst: u32,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Unprivileged user for `xdpgate run`.
    pub user: String,
    /// Prometheus metrics listener (`GET /metrics`); off when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Peers that must start every connection with a PROXY protocol v2 header (each must
    /// also be in `trusted_proxies`); no other peer's bytes are ever parsed as PROXY.
    pub proxy_protocol_peers: Vec<IpNet>,
    /// Forward to controllers over the cluster API instead of the local front socket.
    pub cluster: Option<crate::cluster::WebClusterConfig>,
    /// Connection budgets (global and per source).
    pub connections: ConnectionLimits,
}

/// How many connections the web front holds, in all and per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; near it, connections that have not sent a first request
    /// are reclaimed (oldest first) before anyone is refused.
    pub max_connections: u32,
    /// Connections one source may hold open at once.
    pub max_per_source: u32,
    /// IPv4 prefix length that makes one source (32: each address).
    pub source_prefix_v4: u8,
    /// IPv6 prefix length that makes one source (64: a subscriber's usual allocation).
    pub source_prefix_v6: u8,
}

impl ConnectionLimits {
    /// 4096 connections, 256 per IPv4 address or IPv6 /64 (room for a carrier-grade NAT).
    pub const DEFAULT: Self = Self {
        max_connections: 4096,
        max_per_source: 256,
        source_prefix_v4: 32,
        source_prefix_v6: 64,
    };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An IP network (address and prefix length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network (families must match).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has a bad prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }
}

/// The file as the web front reads it: only `[web]`; the other sections are the controller's.
#[derive(Deserialize)]
struct WebOnly {
    #[serde(default)]
    web: Option<RawWeb>,
}

fn syntax(path: &Path, err: &toml::de::Error) -> ConfigError {
    ConfigError::Syntax {
        path: path.to_owned(),
        message: err.to_string().trim_end().to_owned(),
    }
}

/// Checks that `text` is TOML at all.
pub fn parse_syntax(text: &str, path: &Path) -> Result<(), ConfigError> {
    toml::from_str::<toml::Table>(text)
        .map(drop)
        .map_err(|err| syntax(path, &err))
}

impl WebConfig {
    /// Reads the `[web]` section of a config file (other sections are checked for syntax
    /// only), for `xdpgate web` on a host without a controller.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse_syntax(&text, path)?;
        let raw: WebOnly = toml::from_str(&text).map_err(|err| syntax(path, &err))?;
        let source = SourceText { text: &text, path };
        let web = raw
            .web
            .ok_or_else(|| source.fail(0..0, "missing [web] section"))?;
        source.web(web)
    }
}

/// The text of a config file and its path, for errors that name the line.
#[derive(Clone, Copy, Debug)]
pub struct SourceText<'a> {
    /// The whole file.
    pub text: &'a str,
    /// Its path (only used in messages).
    pub path: &'a Path,
}

impl SourceText<'_> {
    /// An [`ConfigError::Invalid`] for the value at `span`.
    pub fn fail(&self, span: Range<usize>, reason: impl Into<String>) -> ConfigError {
        let line = self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            reason: reason.into(),
        }
    }

    /// A `metrics_listen` value (`[controller]` or `[web]`).
    pub fn metrics_listen(
        &self,
        raw: Option<&Spanned<String>>,
    ) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        raw.map(|listen| {
            listen.get_ref().parse().map_err(|_| {
                self.fail(
                    listen.span(),
                    "metrics_listen must be ADDRESS:PORT, e.g. 127.0.0.1:9477",
                )
            })
        })
        .transpose()
    }

    fn web_cluster(
        &self,
        raw: Spanned<RawWebCluster>,
    ) -> Result<crate::cluster::WebClusterConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.controllers.is_empty() {
            return Err(self.fail(span, "[web.cluster] needs at least one controller"));
        }
        let mut controllers = Vec::with_capacity(raw.controllers.len());
        let mut names = HashSet::new();
        for controller in raw.controllers {
            let controller = controller.into_inner();
            let name = controller.name.get_ref();
            if !xdpgate_protocol::node_name::valid_node_name(name) || !names.insert(name.clone()) {
                return Err(self.fail(
                    controller.name.span(),
                    format!("controller name {name:?} is not a DNS name or is repeated"),
                ));
            }
            let address = controller.address.get_ref().parse().map_err(|_| {
                self.fail(controller.address.span(), "address must be ADDRESS:PORT")
            })?;
            controllers.push(crate::cluster::ControllerAddr {
                name: name.clone(),
                address,
            });
        }
        let refresh = match raw.refresh_ms {
            None => crate::cluster::DEFAULT_REFRESH,
            Some(ms) if (100..=600_000).contains(ms.get_ref()) => {
                Duration::from_millis(*ms.get_ref())
            }
            Some(ms) => {
                return Err(self.fail(ms.span(), "refresh_ms must be between 100 and 600000"));
            }
        };
        Ok(crate::cluster::WebClusterConfig {
            tls: crate::cluster::NodeTls {
                ca: raw.ca,
                cert: raw.cert,
                key: raw.key,
                crl: raw.crl,
            },
            controllers,
            refresh,
        })
    }

    /// Checks `[web]`.
    pub fn web(&self, raw: RawWeb) -> Result<WebConfig, ConfigError> {
        let listen = raw.listen.get_ref().parse().map_err(|_| {
            self.fail(
                raw.listen.span(),
                "listen must be ADDRESS:PORT, e.g. [::]:8443",
            )
        })?;
        let mut trusted_proxies = Vec::new();
        for net in &raw.trusted_proxies {
            trusted_proxies.push(
                net.get_ref()
                    .parse::<IpNet>()
                    .map_err(|reason| self.fail(net.span(), reason))?,
            );
        }
        if *raw.rate_limit_per_minute.get_ref() == 0 || *raw.rate_limit_burst.get_ref() == 0 {
            return Err(self.fail(raw.rate_limit_per_minute.span(), "rate limits must be > 0"));
        }
        let timeout = *raw.request_timeout_ms.get_ref();
        if !(100..=60_000).contains(&timeout) {
            return Err(self.fail(
                raw.request_timeout_ms.span(),
                "request_timeout_ms must be between 100 and 60000",
            ));
        }
        let mut proxy_protocol_peers = Vec::new();
        for net in &raw.proxy_protocol_peers {
            let parsed = net
                .get_ref()
                .parse::<IpNet>()
                .map_err(|reason| self.fail(net.span(), reason))?;
            let covered = trusted_proxies
                .iter()
                .any(|t| t.prefix <= parsed.prefix && t.contains(parsed.addr));
            if !covered {
                return Err(self.fail(
                    net.span(),
                    "every proxy_protocol_peers network must lie in trusted_proxies",
                ));
            }
            proxy_protocol_peers.push(parsed);
        }
        let connections = self.connection_limits(&raw)?;
        let cluster = raw
            .cluster
            .map(|cluster| self.web_cluster(cluster))
            .transpose()?;
        let metrics_listen = self.metrics_listen(raw.metrics_listen.as_ref())?;
        Ok(WebConfig {
            metrics_listen,
            listen,
            cert: raw.cert,
            key: raw.key,
            front_socket: raw.front_socket,
            trusted_proxies,
            rate_limit_per_minute: *raw.rate_limit_per_minute.get_ref(),
            rate_limit_burst: *raw.rate_limit_burst.get_ref(),
            request_timeout: Duration::from_millis(timeout),
            user: raw.user,
            proxy_protocol_peers,
            cluster,
            connections,
        })
    }

    fn connection_limits(&self, raw: &RawWeb) -> Result<ConnectionLimits, ConfigError> {
        let max_connections = *raw.max_connections.get_ref();
        if !(16..=1_000_000).contains(&max_connections) {
            return Err(self.fail(
                raw.max_connections.span(),
                "max_connections must be between 16 and 1000000",
            ));
        }
        let max_per_source = *raw.max_connections_per_source.get_ref();
        if max_per_source == 0 || max_per_source > max_connections {
            return Err(self.fail(
                raw.max_connections_per_source.span(),
                "max_connections_per_source must be between 1 and max_connections",
            ));
        }
        let source_prefix_v4 = *raw.source_prefix_v4.get_ref();
        if !(8..=32).contains(&source_prefix_v4) {
            return Err(self.fail(
                raw.source_prefix_v4.span(),
                "source_prefix_v4 must be between 8 and 32",
            ));
        }
        let source_prefix_v6 = *raw.source_prefix_v6.get_ref();
        if !(16..=128).contains(&source_prefix_v6) {
            return Err(self.fail(
                raw.source_prefix_v6.span(),
                "source_prefix_v6 must be between 16 and 128",
            ));
        }
        Ok(ConnectionLimits {
            max_connections,
            max_per_source,
            source_prefix_v4,
            source_prefix_v6,
        })
    }
}
