//! The web front's side of the front API: a lazily connected tonic channel to the
//! controller's Unix socket, with connect and call deadlines so an absent or stuck controller
//! costs a quick 503, never a hang; or, on a cluster web node, the cluster routes, which send
//! each approval to the controller owning its server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use xdpgate_proto::front::v1::front_client::FrontClient;
use xdpgate_proto::front::v1::{FrontReply, FrontRequest, NoticesReply, NoticesRequest};

use crate::cluster::ClusterRoutes;

/// Largest reply body accepted from the controller.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Longest wait for the socket connection itself.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Which front API call a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontCall {
    /// `SubmitApproval`.
    Approval,
    /// `Enroll`.
    Enroll,
}

/// A cheap-to-clone handle on the controller's front API.
#[derive(Clone, Debug)]
pub struct FrontHandle {
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    /// The controller on this host.
    Local {
        client: FrontClient<Channel>,
        socket: PathBuf,
    },
    /// The owners, over the cluster API.
    Cluster(Arc<ClusterRoutes>),
}

impl FrontHandle {
    /// A handle that connects on first use (and reconnects after failures). `call_timeout`
    /// bounds every call.
    pub fn new(socket: &Path, call_timeout: Duration) -> Self {
        let path = socket.to_owned();
        // The URI is required by the API but unused: the connector ignores it.
        let channel = Endpoint::from_static("http://controller.local")
            .connect_timeout(CONNECT_TIMEOUT.min(call_timeout))
            .timeout(call_timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        let client = FrontClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES);
        Self {
            target: Target::Local {
                client,
                socket: socket.to_owned(),
            },
        }
    }

    /// A handle that forwards to the controllers of a cluster.
    pub fn cluster(routes: Arc<ClusterRoutes>) -> Self {
        Self {
            target: Target::Cluster(routes),
        }
    }

    /// Forwards a re-serialized body; the reply is the controller's verbatim.
    pub async fn call(
        &self,
        call: FrontCall,
        body: Vec<u8>,
        remote_address: String,
        request_id: String,
    ) -> Result<FrontReply, tonic::Status> {
        let request = FrontRequest {
            body,
            remote_address,
            request_id,
        };
        let client = match &self.target {
            Target::Local { client, .. } => client,
            Target::Cluster(routes) => return cluster_call(routes, call, request).await,
        };
        let mut client = client.clone();
        let reply = match call {
            FrontCall::Approval => client.submit_approval(request).await?,
            FrontCall::Enroll => client.enroll(request).await?,
        };
        Ok(reply.into_inner())
    }

    /// The self-shutdown state to enforce. A cluster web node has no local controller to ask
    /// and gets the default (nothing shut down); its owners refuse calls themselves.
    pub async fn notices(&self) -> Result<NoticesReply, tonic::Status> {
        match &self.target {
            Target::Local { client, .. } => Ok(client
                .clone()
                .notices(NoticesRequest {})
                .await?
                .into_inner()),
            Target::Cluster(_) => Ok(NoticesReply::default()),
        }
    }

    /// Whether the controller accepts connections on its socket within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        match &self.target {
            Target::Local { socket, .. } => {
                matches!(
                    tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket)).await,
                    Ok(Ok(_))
                )
            }
            Target::Cluster(routes) => routes.any_reachable(),
        }
    }
}

/// Sends a request into the cluster. The approval's server name is read from the body,
/// which is already the canonical re-serialization, so it always parses.
async fn cluster_call(
    routes: &ClusterRoutes,
    call: FrontCall,
    request: FrontRequest,
) -> Result<FrontReply, tonic::Status> {
    match call {
        FrontCall::Approval => {
            let server = xdpgate_protocol::parse_request(&request.body)
                .map_err(|_| {
                    tonic::Status::internal("re-serialized approval request does not parse")
                })?
                .server;
            routes.submit_approval(&server, request).await
        }
        FrontCall::Enroll => routes.enroll(request).await,
    }
}
