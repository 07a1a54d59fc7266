//! One controller as a web node sees it: a lazily connected tonic channel over mutual TLS,
//! with connect and call deadlines, so an unreachable owner costs a quick `unavailable`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use xdpgate_proto::cluster::v1::cluster_client::ClusterClient;
use xdpgate_proto::cluster::v1::{ListServersRequest, ServerOwnership};
use xdpgate_proto::front::v1::{FrontReply, FrontRequest};

use super::{ClusterError, ControllerAddr};

/// Longest wait for the TCP connection and TLS handshake to a controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest reply accepted from a controller.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A cheap-to-clone client of one controller's cluster API.
#[derive(Clone, Debug)]
pub struct ControllerClient {
    /// The controller's node name and address.
    pub addr: ControllerAddr,
    client: ClusterClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
}

impl ControllerClient {
    /// A client that connects on first use (and reconnects after failures); `call_timeout`
    /// bounds every call.
    pub fn new(
        addr: &ControllerAddr,
        tls: Arc<rustls::ClientConfig>,
        call_timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let server_name = ServerName::try_from(addr.name.clone())
            .map_err(|err| ClusterError::Controller(addr.name.clone(), err.to_string()))?;
        let connector = TlsConnector::from(tls);
        let target = addr.address;
        let connect_timeout = CONNECT_TIMEOUT.min(call_timeout);
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .map_err(|err| ClusterError::Controller(addr.name.clone(), err.to_string()))?
            .connect_timeout(connect_timeout)
            .timeout(call_timeout);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, server_name) = (connector.clone(), server_name.clone());
            async move {
                let connect = async {
                    let tcp = tokio::net::TcpStream::connect(target).await?;
                    let _ = tcp.set_nodelay(true);
                    connector.connect(server_name, tcp).await
                };
                let tls = tokio::time::timeout(connect_timeout, connect)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect deadline passed")
                    })??;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }));
        Ok(Self {
            addr: addr.clone(),
            client: ClusterClient::new(channel.clone()).max_decoding_message_size(MAX_REPLY_BYTES),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
        })
    }

    /// `ListServers`.
    pub async fn list_servers(&self) -> Result<ServerOwnership, tonic::Status> {
        Ok(self
            .client
            .clone()
            .list_servers(ListServersRequest {})
            .await?
            .into_inner())
    }

    /// `SubmitApproval`.
    pub async fn submit_approval(
        &self,
        request: FrontRequest,
    ) -> Result<FrontReply, tonic::Status> {
        Ok(self
            .client
            .clone()
            .submit_approval(request)
            .await?
            .into_inner())
    }

    /// `Enroll`.
    pub async fn enroll(&self, request: FrontRequest) -> Result<FrontReply, tonic::Status> {
        Ok(self.client.clone().enroll(request).await?.into_inner())
    }

    /// The standard health check of the whole server (`""`): `SERVING` or not.
    pub async fn health(&self) -> Result<String, tonic::Status> {
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let reply = self.health.clone().check(request).await?.into_inner();
        Ok(format!("{:?}", reply.status()).to_uppercase())
    }
}
