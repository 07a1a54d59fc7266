//! The cluster: stateless web nodes push client requests to the controller that owns the
//! server, over the cluster API (tonic, mutual TLS with a cluster CA, see
//! `proto/proto/xdpgate/cluster/v1/cluster.proto`).
//!
//! - [`ca`]: `xdpgate cluster ca init` / `cluster cert issue` (rcgen).
//! - [`mtls`]: rustls configurations, peer names and their allow-list.
//! - [`server`]: the controller's listener and the `Cluster` and health services.
//! - [`client`]: one controller as seen by a web node (lazy mTLS channel with deadlines).
//! - [`routing`]: which controller owns which server, learned with `ListServers`, refreshed
//!   periodically and cached; forwarding and the enrollment rule.

pub mod ca;
pub mod client;
pub mod mtls;
pub mod routing;
pub mod server;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::ControllerClient;
pub use mtls::{NamePattern, NodeTls};
pub use routing::{ClusterRoutes, NodeStatus};

/// Default period of the ownership refresh on web nodes.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// A controller's `[cluster]` section, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This controller's node name (the DNS name in its certificate).
    pub node: String,
    /// TCP address of the cluster API.
    pub listen: SocketAddr,
    /// CA, certificate and key.
    pub tls: NodeTls,
    /// Names a client certificate must carry (one matching pattern suffices).
    pub allowed_peers: Vec<NamePattern>,
}

/// One controller a web node forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerAddr {
    /// Its node name; its certificate must be valid for it.
    pub name: String,
    /// Its cluster API address.
    pub address: SocketAddr,
}

/// A web node's `[web.cluster]` section, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebClusterConfig {
    /// CA, certificate and key of this web node.
    pub tls: NodeTls,
    /// The controllers, in the order enrollments are offered to them.
    pub controllers: Vec<ControllerAddr>,
    /// Period of the ownership refresh.
    pub refresh: Duration,
}

/// The cluster API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// TLS files or configuration.
    #[error(transparent)]
    Mtls(#[from] mtls::MtlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The listener broke.
    #[error("accepting cluster connections failed")]
    Accept(#[source] std::io::Error),
    /// The gRPC server stopped on an error.
    #[error("cluster API: {0}")]
    Serve(String),
    /// A controller address or name is unusable.
    #[error("controller {0:?}: {1}")]
    Controller(String, String),
}
