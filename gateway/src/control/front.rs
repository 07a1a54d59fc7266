//! The front API served to the web front on a Unix socket (mode 0600, owned by the web
//! front's user): approval requests and enrollments go in, finished answers come out.
use std::{net::IpAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info, info_span, warn};
use xdpgate_proto::front::v1::{self as pb, front_server::FrontServer};

use crate::decisions::{Approvals, FrontAnswer};

/// Implementation of `xdpgate.front.v1.Front`.
pub struct FrontService {
    approvals: Arc<Approvals>,
}

/// Serves the front API on `socket` until `shutdown` resolves; `owner` (a user name) is
/// made the socket's owner so an unprivileged web front can connect.
pub async fn serve_front(
    approvals: Arc<Approvals>,
    socket: &Path,
    owner: Option<&str>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), std::io::Error> {
    let listener = super::server::bind_private(socket)?;
    let mut web_uid = None;
    if let Some(owner) = owner {
        let user = nix::unistd::User::from_name(owner)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other(format!("no user named {owner:?}")))?;
        nix::unistd::chown(socket, Some(user.uid), Some(user.gid))
            .map_err(std::io::Error::other)?;
        web_uid = Some(user.uid.as_raw());
        if let Some(parent) = socket.parent() {
            // The web user must be able to reach the socket inside the folder.
            let mode = std::fs::metadata(parent)?.permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o711))?;
            }
        }
    }
    info!(socket = %socket.display(), owner, "front API listening");
    // Beyond the file mode: only the web user (or root) is served (`SO_PEERCRED`).
    let incoming = UnixListenerStream::new(listener).filter(move |conn| match conn {
        Ok(stream) => peer_allowed(stream, web_uid),
        Err(_) => true,
    });
    tonic::transport::Server::builder()
        .add_service(FrontServer::new(FrontService { approvals }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// Whether the connecting process is root or the web front's user.
fn peer_allowed(stream: &tokio::net::UnixStream, web_uid: Option<u32>) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || Some(cred.uid()) == web_uid => true,
        Ok(cred) => {
            warn!(peer_uid = cred.uid(), pid = ?cred.pid(), "front socket connection from a user other than the web front's; closed");
            false
        }
        Err(err) => {
            warn!(error = %err, "cannot read a front socket peer's credentials; closed");
            false
        }
    }
}

fn remote_of(request: &pb::FrontRequest) -> Result<IpAddr, Status> {
    request
        .remote_address
        .parse()
        .map_err(|_| Status::invalid_argument("remote_address is not an IP address"))
}

fn reply(answer: FrontAnswer) -> Response<pb::FrontReply> {
    Response::new(pb::FrontReply {
        http_status: u32::from(answer.status),
        body: answer.body,
    })
}

#[tonic::async_trait]
impl pb::front_server::Front for FrontService {
    async fn submit_approval(
        &self,
        request: Request<pb::FrontRequest>,
    ) -> Result<Response<pb::FrontReply>, Status> {
        let request = request.into_inner();
        let remote = remote_of(&request)?;
        let span = info_span!("approval", request_id = %request.request_id, client_ip = %remote);
        let answer = self
            .approvals
            .submit(request.body, remote, &request.request_id)
            .instrument(span)
            .await;
        Ok(reply(answer))
    }

    async fn notices(
        &self,
        _request: Request<pb::NoticesRequest>,
    ) -> Result<Response<pb::NoticesReply>, Status> {
        let state = self.approvals.notice_state();
        Ok(Response::new(pb::NoticesReply {
            www_shutdown: state.www.shutdown,
            www_message: state.www.message,
            web_shutdown: state.web.shutdown,
            web_message: state.web.message,
        }))
    }

    async fn enroll(
        &self,
        request: Request<pb::FrontRequest>,
    ) -> Result<Response<pb::FrontReply>, Status> {
        let request = request.into_inner();
        let remote = remote_of(&request)?;
        let span = info_span!("enrollment", request_id = %request.request_id, client_ip = %remote);
        let answer = self
            .approvals
            .enroll(request.body, remote, &request.request_id)
            .instrument(span)
            .await;
        Ok(reply(answer))
    }
}
