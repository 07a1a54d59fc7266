//! Generated types of the xdpgate gRPC APIs (see `proto/proto/`).
#![allow(clippy::all, missing_docs)]

/// The local control API (admin CLI <-> controller).
pub mod control {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("xdpgate.control.v1");
    }
}

/// The front API (web front <-> controller).
pub mod front {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("xdpgate.front.v1");
    }
}

/// The cluster API (web nodes <-> controllers, mutual TLS).
pub mod cluster {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("xdpgate.cluster.v1");
    }
}
