//! The controller's side of the cluster API: a TCP listener with mutual TLS, the peer's
//! certificate name checked before any request is read, the `Cluster` service and the
//! standard gRPC health service.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info, info_span, warn};
use xdpgate_proto::cluster::v1::{self as pb, cluster_server::ClusterServer};
use xdpgate_proto::front::v1::{FrontReply, FrontRequest};

use super::mtls::{self, NamePattern, PeerInfo, PeerStream};
use super::{ClusterConfig, ClusterError};
use crate::decisions::{Approvals, FrontAnswer};

/// Deadline of the TLS handshake of a cluster connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request accepted over the cluster API.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Implementation of `xdpgate.cluster.v1.Cluster`.
pub struct ClusterService {
    approvals: Arc<Approvals>,
    node: String,
}

impl ClusterService {
    /// The service of controller `node`; the servers it owns are the approvals' servers of
    /// the moment (a reload changes them).
    pub fn new(approvals: Arc<Approvals>, node: &str) -> Self {
        Self {
            approvals,
            node: node.to_owned(),
        }
    }

    fn ownership(&self) -> pb::ServerOwnership {
        pb::ServerOwnership {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            servers: self
                .approvals
                .servers()
                .iter()
                .map(|s| pb::OwnedServer {
                    name: s.name.clone(),
                    public_ipv4: s.public_ipv4.map(|ip| ip.to_string()).unwrap_or_default(),
                    public_ipv6: s.public_ipv6.map(|ip| ip.to_string()).unwrap_or_default(),
                })
                .collect(),
        }
    }
}

fn peer_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.node.clone())
        .unwrap_or_default()
}

fn remote_of(request: &FrontRequest) -> Result<IpAddr, Status> {
    request
        .remote_address
        .parse()
        .map_err(|_| Status::invalid_argument("remote_address is not an IP address"))
}

fn reply(answer: FrontAnswer) -> Response<FrontReply> {
    Response::new(FrontReply {
        http_status: u32::from(answer.status),
        body: answer.body,
    })
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn list_servers(
        &self,
        _request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ServerOwnership>, Status> {
        Ok(Response::new(self.ownership()))
    }

    async fn submit_approval(
        &self,
        request: Request<FrontRequest>,
    ) -> Result<Response<FrontReply>, Status> {
        let peer = peer_of(&request);
        let request = request.into_inner();
        let remote = remote_of(&request)?;
        let span = info_span!("cluster_approval", request_id = %request.request_id, client_ip = %remote, web_node = %peer);
        Ok(reply(
            self.approvals
                .submit(request.body, remote, &request.request_id)
                .instrument(span)
                .await,
        ))
    }

    async fn enroll(&self, request: Request<FrontRequest>) -> Result<Response<FrontReply>, Status> {
        let peer = peer_of(&request);
        let request = request.into_inner();
        let remote = remote_of(&request)?;
        let span = info_span!("cluster_enrollment", request_id = %request.request_id, client_ip = %remote, web_node = %peer);
        Ok(reply(
            self.approvals
                .enroll(request.body, remote, &request.request_id)
                .instrument(span)
                .await,
        ))
    }
}

/// Serves the cluster API on `config.listen` until `shutdown` completes.
pub async fn serve(
    config: &ClusterConfig,
    service: ClusterService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ClusterError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ClusterError::Bind {
            addr: config.listen,
            source,
        })?;
    serve_on(listener, config, service, shutdown).await
}

/// Like [`serve`] on a bound listener (tests bind port 0).
pub async fn serve_on(
    listener: TcpListener,
    config: &ClusterConfig,
    service: ClusterService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ClusterError> {
    let acceptor = TlsAcceptor::from(Arc::new(mtls::server_config(&config.tls)?));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClusterServer<ClusterService>>().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<PeerStream, std::io::Error>>(64);
    let allowed: Arc<[NamePattern]> = config.allowed_peers.clone().into();
    let local = listener.local_addr().map_err(ClusterError::Accept)?;
    info!(listen = %local, node = %config.node, "cluster API listening (mutual TLS)");
    let accept = tokio::spawn(accept_loop(listener, acceptor, allowed, tx));
    let served = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(ClusterServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(health_service)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept.abort();
    served.map_err(|err| ClusterError::Serve(err.to_string()))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allowed: Arc<[NamePattern]>,
    tx: tokio::sync::mpsc::Sender<Result<PeerStream, std::io::Error>>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                warn!("cluster accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, allowed, tx) = (acceptor.clone(), allowed.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(stream) = handshake(acceptor, tcp, addr, &allowed).await {
                let _ = tx.send(Ok(stream)).await;
            }
        });
    }
}

/// The TLS handshake and the name check; `None` (and a log line) if the peer is refused.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    allowed: &[NamePattern],
) -> Option<PeerStream> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            warn!(%addr, "cluster peer refused in the TLS handshake: {err}");
            return None;
        }
        Err(_) => {
            warn!(%addr, "cluster TLS handshake timed out");
            return None;
        }
    };
    let names = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(mtls::dns_names)
        .unwrap_or_default();
    let Some(node) = mtls::allowed_name(&names, allowed).map(str::to_owned) else {
        warn!(%addr, ?names, "cluster peer refused: no allowed node name in its certificate");
        return None;
    };
    tracing::debug!(%addr, %node, "cluster peer accepted");
    Some(PeerStream::new(tls, PeerInfo { node, addr }))
}

/// Binds the cluster API of a controller (errors surface at start) and serves it in a task
/// until aborted.
pub async fn spawn(
    config: &ClusterConfig,
    approvals: Arc<Approvals>,
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    // Fail early on unusable files rather than in the task.
    mtls::server_config(&config.tls)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ClusterError::Bind {
            addr: config.listen,
            source,
        })?;
    let service = ClusterService::new(approvals, &config.node);
    let config = config.clone();
    Ok(tokio::spawn(
        async move {
            if let Err(err) = serve_on(listener, &config, service, std::future::pending()).await {
                tracing::error!(error = %err, "cluster API stopped");
            }
        }
        .instrument(info_span!("cluster_api")),
    ))
}
