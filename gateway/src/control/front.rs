//! The front API served to the web front on a Unix socket (mode 0600, owned by the web
//! front's user): approval requests and enrollments go in, finished answers come out.
use std::{net::IpAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use std::time::Duration;

use tracing::{Instrument as _, debug, info, info_span, warn};
use xdpgate_proto::front::v1 as pb;
use xdpgate_proto::front::wire::{self, Connection};

use crate::decisions::{Approvals, FrontAnswer};

/// Most web front connections served at once (a web front opens at most 64).
const MAX_CONNECTIONS: usize = 1024;
/// Pause after a failed accept (e.g. out of descriptors), so it is not retried in a spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long calls being served at shutdown may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The front API's calls, served to the web front.
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
    let service = Arc::new(FrontService { approvals });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "front socket accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Beyond the file mode: only the web user (or root) is served (`SO_PEERCRED`).
        if !peer_allowed(&stream, web_uid) {
            continue;
        }
        if connections.len() >= MAX_CONNECTIONS {
            warn!(
                max = MAX_CONNECTIONS,
                "front socket connection over the limit; closed"
            );
            continue;
        }
        let (service, mut stop) = (service.clone(), stop_rx.clone());
        connections.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            if let Err(err) =
                wire::serve_connection(Connection::new(stream), &*service, stopped).await
            {
                debug!(error = %err, "front socket connection closed");
            }
        });
    }
    // Calls being served finish and are answered; idle connections close.
    let _ = stop_tx.send(true);
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("front socket calls still running after {DRAIN_TIMEOUT:?}; aborted");
        connections.abort_all();
    }
    Ok(())
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

fn remote_of(request: &pb::FrontRequest) -> Result<IpAddr, String> {
    request
        .remote_address
        .parse()
        .map_err(|_| "remote_address is not an IP address".to_owned())
}

fn reply(answer: FrontAnswer) -> pb::FrontReply {
    pb::FrontReply {
        http_status: u32::from(answer.status),
        body: answer.body,
    }
}

impl wire::FrontService for FrontService {
    async fn submit_approval(&self, request: pb::FrontRequest) -> Result<pb::FrontReply, String> {
        let remote = remote_of(&request)?;
        let answer = self
            .approvals
            .submit(request.body, remote, &request.request_id)
            .await;
        Ok(reply(answer))
    }

    fn notices(&self) -> pb::NoticesReply {
        let state = self.approvals.notice_state();
        pb::NoticesReply {
            www_shutdown: state.www.shutdown,
            www_message: state.www.message,
            web_shutdown: state.web.shutdown,
            web_message: state.web.message,
        }
    }

    async fn enroll(&self, request: pb::FrontRequest) -> Result<pb::FrontReply, String> {
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
