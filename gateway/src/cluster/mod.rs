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
pub mod server;

use std::net::SocketAddr;

pub use xdpgate_web::cluster::{
    ClusterError, ClusterRoutes, ControllerAddr, ControllerClient, DEFAULT_REFRESH, NamePattern,
    NodeStatus, NodeTls, WebClusterConfig, client, mtls, routing,
};

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

#[cfg(test)]
mod role_tests;
