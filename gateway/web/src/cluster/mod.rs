//! The web node's side of the cluster (and what both sides share): the mTLS configurations
//! and peer names ([`mtls`]), one controller as seen by a web node ([`client`]), and which
//! controller owns which server ([`routing`]). The controller's listener and the CA that issues
//! node certificates are in the `xdpgate` crate (`cluster::server`, `cluster::ca`).

pub mod client;
pub mod mtls;
pub mod routing;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::ControllerClient;
pub use mtls::{NamePattern, NodeTls};
pub use routing::{ClusterRoutes, NodeStatus};

/// Default period of the ownership refresh on web nodes.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

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
