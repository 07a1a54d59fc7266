//! The web front's side of the front API: a lazily connected tonic channel to the
//! controller's Unix socket, with connect and call deadlines so an absent or stuck controller
//! costs a quick 503, never a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use xdpgate_proto::front::v1::front_client::FrontClient;
use xdpgate_proto::front::v1::{FrontReply, FrontRequest};

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
    client: FrontClient<Channel>,
    socket: PathBuf,
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
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            }));
        let client = FrontClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES);
        Self { client, socket: socket.to_owned() }
    }

    /// Forwards a re-serialized body; the reply is the controller's verbatim.
    pub async fn call(
        &self,
        call: FrontCall,
        body: Vec<u8>,
        remote_address: String,
        request_id: String,
    ) -> Result<FrontReply, tonic::Status> {
        let request = FrontRequest { body, remote_address, request_id };
        let mut client = self.client.clone();
        let reply = match call {
            FrontCall::Approval => client.submit_approval(request).await?,
            FrontCall::Enroll => client.enroll(request).await?,
        };
        Ok(reply.into_inner())
    }

    /// Whether the controller accepts connections on its socket within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&self.socket)).await, Ok(Ok(_)))
    }
}
