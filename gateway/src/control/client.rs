//! Connecting the admin CLI to the controller's Unix socket.
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use xdpgate_proto::control::v1::control_client::ControlClient;

/// Failure to reach the controller.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the controller at {path}: {source} (is `xdpgate controller` running?)")]
pub struct ConnectError {
    path: PathBuf,
    source: tonic::transport::Error,
}

/// Opens a control client on the Unix socket at `path`.
pub async fn connect(path: &Path) -> Result<ControlClient<Channel>, ConnectError> {
    let socket = path.to_owned();
    // The URI is required by the API but unused: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://controller.local");
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .map_err(|source| ConnectError {
            path: path.to_owned(),
            source,
        })?;
    Ok(ControlClient::new(channel))
}
