//! Generated types of the xdpgate gRPC APIs (see `proto/proto/`) and the front socket's
//! framing of the front API's messages.

/// The local control API (admin CLI <-> controller).
pub mod control {
    /// Version 1.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("xdpgate.control.v1");
    }
}

/// The front API (web front <-> controller): its messages, carried by [`wire`].
pub mod front {
    /// Version 1.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("xdpgate.front.v1");
    }

    pub mod wire;
}

/// The cluster API (web nodes <-> controllers, mutual TLS).
pub mod cluster {
    /// Version 1.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("xdpgate.cluster.v1");
    }
}
