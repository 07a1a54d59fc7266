//! The web front's side of the front API: a small pool of connections to the controller's
//! Unix socket, each carrying one call at a time in the framing of
//! [`xdpgate_proto::front::wire`], with connect and call deadlines so an absent or stuck
//! controller costs a quick 503, never a hang; or, on a cluster web node, the cluster routes,
//! which send each approval to the controller owning its server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use xdpgate_proto::front::v1::{FrontReply, FrontRequest, NoticesReply, NoticesRequest};
use xdpgate_proto::front::wire::{Call, Connection, Reply, WireError};

use crate::cluster::ClusterRoutes;

/// Largest reply body accepted from the controller.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Longest wait for the socket connection itself.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Most connections to the controller at once: calls beyond wait (within their deadline) for
/// one to come free, so a flood cannot open a socket per request on the controller.
pub const MAX_CONNECTIONS: usize = 64;

/// Which front API call a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontCall {
    /// `SubmitApproval`.
    Approval,
    /// `Enroll`.
    Enroll,
}

impl FrontCall {
    fn name(self) -> &'static str {
        match self {
            Self::Approval => "SubmitApproval",
            Self::Enroll => "Enroll",
        }
    }
}

/// Why a call got no answer from the controller.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The socket refused or failed the connection.
    #[error("cannot connect to the front socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What connect said.
        source: std::io::Error,
    },
    /// The whole call, connection included, passed its deadline.
    #[error("the controller did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection or a frame failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The controller read the call and refused to serve it.
    #[error("the controller did not serve the call: {0}")]
    Failed(String),
    /// The reply is not the kind the call expects.
    #[error("the controller answered {0} with another kind of reply")]
    Mismatch(&'static str),
    /// The reply body is over [`MAX_REPLY_BYTES`].
    #[error("the controller's reply body of {0} bytes is over the limit")]
    TooLong(usize),
    /// The cluster API failed.
    #[error("cluster: {} {}", .0.code(), .0.message())]
    Cluster(#[from] tonic::Status),
}

/// A cheap-to-clone handle on the controller's front API.
#[derive(Clone, Debug)]
pub struct FrontHandle {
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    /// The controller on this host.
    Local(Arc<Pool>),
    /// The owners, over the cluster API.
    Cluster(Arc<ClusterRoutes>),
}

/// Idle connections to the socket, and the permits that bound all of them.
#[derive(Debug)]
struct Pool {
    socket: PathBuf,
    call_timeout: Duration,
    idle: Mutex<Vec<Connection<UnixStream>>>,
    permits: Semaphore,
}

impl FrontHandle {
    /// A handle that connects on first use (and reconnects after failures). `call_timeout`
    /// bounds every call.
    pub fn new(socket: &Path, call_timeout: Duration) -> Self {
        Self {
            target: Target::Local(Arc::new(Pool {
                socket: socket.to_owned(),
                call_timeout,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(MAX_CONNECTIONS),
            })),
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
    ) -> Result<FrontReply, FrontError> {
        let request = FrontRequest {
            body,
            remote_address,
            request_id,
        };
        let pool = match &self.target {
            Target::Local(pool) => pool,
            Target::Cluster(routes) => return cluster_call(routes, call, request).await,
        };
        let wire_call = match call {
            FrontCall::Approval => Call::SubmitApproval(request),
            FrontCall::Enroll => Call::Enroll(request),
        };
        match pool.call(&wire_call).await? {
            Reply::Front(reply) if reply.body.len() > MAX_REPLY_BYTES => {
                Err(FrontError::TooLong(reply.body.len()))
            }
            Reply::Front(reply) => Ok(reply),
            Reply::Failure(reason) => Err(FrontError::Failed(reason)),
            Reply::Notices(_) => Err(FrontError::Mismatch(call.name())),
        }
    }

    /// The self-shutdown state to enforce. A cluster web node has no local controller to ask
    /// and gets the default (nothing shut down); its owners refuse calls themselves.
    pub async fn notices(&self) -> Result<NoticesReply, FrontError> {
        match &self.target {
            Target::Local(pool) => match pool.call(&Call::Notices(NoticesRequest {})).await? {
                Reply::Notices(reply) => Ok(reply),
                Reply::Failure(reason) => Err(FrontError::Failed(reason)),
                Reply::Front(_) => Err(FrontError::Mismatch("Notices")),
            },
            Target::Cluster(_) => Ok(NoticesReply::default()),
        }
    }

    /// Whether the controller accepts connections on its socket within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        match &self.target {
            Target::Local(pool) => {
                matches!(
                    tokio::time::timeout(timeout, UnixStream::connect(&pool.socket)).await,
                    Ok(Ok(_))
                )
            }
            Target::Cluster(routes) => routes.any_reachable(),
        }
    }
}

impl Pool {
    /// One call within the deadline, on an idle connection or a new one. A failure on a
    /// reused connection before any reply (the controller closed it, e.g. by restarting) is
    /// retried once on a new connection; resending is safe (see idempotent retry in
    /// `docs/PROTOCOL.md` §6). A connection whose call failed or was cancelled is dropped.
    async fn call(&self, call: &Call) -> Result<Reply, FrontError> {
        let work = async {
            // The semaphore is never closed.
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| FrontError::Timeout(self.call_timeout))?;
            let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let (connection, reply) = match reused {
                Some(mut connection) => match connection.call(call).await {
                    Err(err) if is_stale(&err) => {
                        tracing::debug!("front socket connection was closed ({err}); reconnecting");
                        self.call_fresh(call).await?
                    }
                    reply => (connection, reply),
                },
                None => self.call_fresh(call).await?,
            };
            let reply = reply?;
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(connection);
            }
            Ok(reply)
        };
        tokio::time::timeout(self.call_timeout, work)
            .await
            .map_err(|_| FrontError::Timeout(self.call_timeout))?
    }

    /// `call` on a new connection, returned with its reply (pooled by the caller on success).
    async fn call_fresh(
        &self,
        call: &Call,
    ) -> Result<(Connection<UnixStream>, Result<Reply, WireError>), FrontError> {
        let mut connection = self.connect().await?;
        let reply = connection.call(call).await;
        Ok((connection, reply))
    }

    async fn connect(&self) -> Result<Connection<UnixStream>, FrontError> {
        let connect = UnixStream::connect(&self.socket);
        match tokio::time::timeout(CONNECT_TIMEOUT.min(self.call_timeout), connect).await {
            Ok(Ok(stream)) => Ok(Connection::new(stream)),
            Ok(Err(source)) => Err(FrontError::Connect {
                path: self.socket.clone(),
                source,
            }),
            Err(_) => Err(FrontError::Timeout(CONNECT_TIMEOUT.min(self.call_timeout))),
        }
    }
}

/// Whether a reused connection failed because the controller had closed it.
fn is_stale(err: &WireError) -> bool {
    match err {
        WireError::Closed => true,
        WireError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        _ => false,
    }
}

/// Sends a request into the cluster. The approval's server name is read from the body,
/// which is already the canonical re-serialization, so it always parses.
async fn cluster_call(
    routes: &ClusterRoutes,
    call: FrontCall,
    request: FrontRequest,
) -> Result<FrontReply, FrontError> {
    let reply = match call {
        FrontCall::Approval => {
            let server = xdpgate_protocol::parse_request(&request.body)
                .map_err(|_| {
                    tonic::Status::internal("re-serialized approval request does not parse")
                })?
                .server;
            routes.submit_approval(&server, request).await?
        }
        FrontCall::Enroll => routes.enroll(request).await?,
    };
    Ok(reply)
}
