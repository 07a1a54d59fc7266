//! The follower of one OpenVPN server's management interface (`--management-client-auth`):
//! a `CONNECT` is accepted only with the one-time token of an approval of that client, from
//! an address that approval opened; `ESTABLISHED` turns the opening into a session opening
//! (held while the tunnel carries traffic: idle timeout after its last packet, never past the
//! server's max lifetime); `DISCONNECT` releases it after a
//! short grace unless the client is back, or another holder keeps it. A client disabled or
//! removed by the operator has its live sessions cut (`client-kill`).
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    task::JoinHandle,
};
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{
    management::{self, ClientEvent, ClientEventKind, Parser},
    redemption::{Redemption, VpnTokens},
    tun::{self, TunError},
};
use crate::{config::ServerConfig, openings::Openings};

/// Pause between attempts to reach the management socket.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A client known to this follower (accepted by it in this connection's lifetime).
#[derive(Clone, Debug)]
struct Session {
    client_id: String,
    addr: IpAddr,
}

#[derive(Default)]
struct Sessions {
    by_cid: HashMap<u64, Session>,
    /// Bumped at each `ESTABLISHED` of (client, address): a pending release checks it.
    epoch: HashMap<(String, IpAddr), u64>,
}

impl Sessions {
    fn live(&self, client_id: &str, addr: IpAddr) -> bool {
        self.by_cid
            .values()
            .any(|s| s.client_id == client_id && s.addr == addr)
    }

    fn epoch(&self, client_id: &str, addr: IpAddr) -> u64 {
        self.epoch
            .get(&(client_id.to_owned(), addr))
            .copied()
            .unwrap_or(0)
    }
}

/// Follows one server's OpenVPN. Cheap to clone.
#[derive(Clone)]
pub struct Follower {
    server: ServerConfig,
    socket: PathBuf,
    /// The one non-root user trusted to answer on the socket: the tun interface's owner.
    vpn_user: Option<String>,
    grace: Duration,
    openings: Arc<Openings>,
    tokens: Arc<VpnTokens>,
    sessions: Arc<Mutex<Sessions>>,
}

/// Starts following `server`'s OpenVPN server, if it has `[server.openvpn]` (making its
/// persistent tun first); `None` when it has none.
pub fn start(
    server: &ServerConfig,
    openings: &Arc<Openings>,
    tokens: &Arc<VpnTokens>,
) -> Result<Option<JoinHandle<()>>, TunError> {
    let Some(vpn) = &server.openvpn else {
        return Ok(None);
    };
    if let Some(tun_config) = &vpn.tun {
        tun::ensure_persistent(tun_config)?;
    }
    let follower = Follower {
        server: server.clone(),
        socket: vpn.management_socket.clone(),
        vpn_user: vpn.tun.as_ref().map(|t| t.owner.clone()),
        grace: vpn.disconnect_grace,
        openings: openings.clone(),
        tokens: tokens.clone(),
        sessions: Arc::default(),
    };
    let span =
        info_span!("openvpn", server = %server.name, socket = %vpn.management_socket.display());
    Ok(Some(tokio::spawn(follower.run().instrument(span))))
}

impl Follower {
    /// Connects to the management socket and follows it, reconnecting for ever.
    pub async fn run(self) {
        let mut reported = false;
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) if !self.trusted_peer(&stream) => {}
                Ok(stream) => {
                    reported = false;
                    info!("following OpenVPN's management interface");
                    match self.follow(stream).await {
                        Ok(()) => warn!("OpenVPN closed the management connection"),
                        Err(err) => warn!(error = %err, "management connection failed"),
                    }
                    self.release_all();
                }
                Err(err) if !reported => {
                    reported = true;
                    warn!(error = %err, "cannot reach OpenVPN's management socket yet; retrying every second");
                }
                Err(err) => debug!(error = %err, "management socket still unreachable"),
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    /// Whether the process answering on the socket is root or the VPN user (`SO_PEERCRED`):
    /// anyone else who managed to bind the path (the web front, say) is not followed.
    fn trusted_peer(&self, stream: &UnixStream) -> bool {
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(err) => {
                warn!(error = %err, "cannot read the management socket's peer credentials; not following it");
                return false;
            }
        };
        let vpn_uid = self
            .vpn_user
            .as_deref()
            .and_then(|name| nix::unistd::User::from_name(name).ok().flatten())
            .map(|user| user.uid.as_raw());
        let trusted = uid == 0 || Some(uid) == vpn_uid;
        if !trusted {
            warn!(peer_uid = uid, vpn_user = ?self.vpn_user, "the management socket is served by an untrusted user; not following it");
        }
        trusted
    }

    async fn follow(&self, stream: UnixStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut parser = Parser::new();
        let mut cuts = self.tokens.cuts();
        let mut cuts_open = true;
        loop {
            let command = tokio::select! {
                line = lines.next_line() => {
                    let Some(line) = line? else { return Ok(()) };
                    if line.starts_with("ERROR:") {
                        warn!(reply = %line, "OpenVPN refused a command");
                    }
                    let Some(event) = parser.feed(&line) else { continue };
                    self.handle(event).await
                }
                cut = cuts.recv(), if cuts_open => match cut {
                    Ok(client_id) => self.cut(&client_id),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "missed notices of revoked clients; their tunnels end at the next renegotiation");
                        None
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        cuts_open = false;
                        None
                    }
                },
            };
            if let Some(command) = command {
                write.write_all(command.as_bytes()).await?;
                write.flush().await?;
            }
        }
    }

    /// The commands cutting every live session of `client_id` (disabled or removed).
    fn cut(&self, client_id: &str) -> Option<String> {
        let cids: Vec<u64> = self
            .lock()
            .by_cid
            .iter()
            .filter(|(_, s)| {
                client_id == super::redemption::EVERY_CLIENT || s.client_id == client_id
            })
            .map(|(cid, _)| *cid)
            .collect();
        if cids.is_empty() {
            return None;
        }
        info!(
            client_id,
            sessions = cids.len(),
            "client revoked; cutting its tunnels"
        );
        Some(cids.into_iter().map(management::kill_command).collect())
    }

    async fn handle(&self, event: ClientEvent) -> Option<String> {
        let client_id = event.username().unwrap_or("").to_owned();
        let client_ip = event.real_address();
        let span = info_span!("client", cid = event.cid, client_id = %client_id, client_ip = ?client_ip, kind = ?event.kind);
        async {
            match event.kind {
                ClientEventKind::Connect => Some(self.authenticate(&event)),
                ClientEventKind::Reauth => Some(self.reauthenticate(&event).await),
                ClientEventKind::Established => {
                    self.established(&event).await;
                    None
                }
                ClientEventKind::Disconnect => {
                    self.disconnected(&event);
                    None
                }
            }
        }
        .instrument(span)
        .await
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `CONNECT`: accept only a fresh token of this client, for this server and address.
    fn authenticate(&self, event: &ClientEvent) -> String {
        let kid = event.kid.unwrap_or(0);
        let (Some(client_id), Some(password), Some(addr)) =
            (event.username(), event.password(), event.real_address())
        else {
            warn!(
                verdict = "deny",
                "client sent no username/password or no address; is auth-user-pass set?"
            );
            return management::deny_command(event.cid, kid, "xdpgate: credentials missing");
        };
        match self
            .tokens
            .redeem(client_id, self.server.id, password, addr)
        {
            Redemption::Accepted => {
                info!(verdict = "accept", "one-time token redeemed");
                self.lock().by_cid.insert(
                    event.cid,
                    Session {
                        client_id: client_id.to_owned(),
                        addr,
                    },
                );
                management::accept_command(event.cid, kid)
            }
            Redemption::Refused => {
                warn!(
                    verdict = "deny",
                    "no unused approval token of this client for this server and address"
                );
                management::deny_command(event.cid, kid, "xdpgate: no approval")
            }
        }
    }

    /// `REAUTH` (renegotiation): the token is spent; accept the session this follower
    /// accepted, if the username is unchanged, or (after a controller restart) a client that
    /// holds the opening of its address.
    async fn reauthenticate(&self, event: &ClientEvent) -> String {
        let kid = event.kid.unwrap_or(0);
        let known = self.lock().by_cid.get(&event.cid).cloned();
        match known {
            Some(session) if event.username().is_none_or(|u| u == session.client_id) => {
                debug!(verdict = "accept", "renegotiation of a known session");
                management::accept_command(event.cid, kid)
            }
            None if self.holds_opening(event).await => {
                info!(
                    verdict = "accept",
                    "renegotiation of a session accepted before a restart"
                );
                if let (Some(client_id), Some(addr)) = (event.username(), event.real_address()) {
                    self.lock().by_cid.insert(
                        event.cid,
                        Session {
                            client_id: client_id.to_owned(),
                            addr,
                        },
                    );
                }
                management::accept_command(event.cid, kid)
            }
            _ => {
                warn!(
                    verdict = "deny",
                    "renegotiation of a session this controller did not accept"
                );
                management::deny_command(event.cid, kid, "xdpgate: unknown session")
            }
        }
    }

    /// Whether the event's username holds the opening of the event's address on this server.
    async fn holds_opening(&self, event: &ClientEvent) -> bool {
        let (Some(client_id), Some(addr)) = (event.username(), event.real_address()) else {
            return false;
        };
        match self.openings.list().await {
            Ok(views) => views.iter().any(|v| {
                v.record.id.server_id == self.server.id
                    && v.record.id.addr == addr
                    && v.record.holders.iter().any(|h| h.origin == client_id)
            }),
            Err(err) => {
                warn!(error = %err, "cannot read openings");
                false
            }
        }
    }

    /// `ESTABLISHED`: hold the opening for the session while it is active (idle timeout), up to
    /// the server's max lifetime.
    async fn established(&self, event: &ClientEvent) {
        let session = {
            let mut sessions = self.lock();
            let Some(session) = sessions.by_cid.get(&event.cid).cloned() else {
                warn!(
                    "tunnel up for a client this controller did not accept (restarted meanwhile?)"
                );
                return;
            };
            *sessions
                .epoch
                .entry((session.client_id.clone(), session.addr))
                .or_default() += 1;
            session
        };
        // The session holds the opening like any grant: for idle_timeout_secs after its last
        // packet (the gate's last-seen time), never past max_lifetime_secs. A session whose
        // DISCONNECT is missed (controller down, client gone without a word) closes when idle.
        let grant = self
            .openings
            .grant(
                &self.server,
                session.addr,
                &session.client_id,
                self.server.idle_timeout,
            )
            .await;
        match grant {
            Ok(_) => info!(
                idle_timeout_secs = self.server.idle_timeout.as_secs(),
                max_lifetime_secs = self.server.max_lifetime.as_secs(),
                "tunnel up; session opening held"
            ),
            Err(err) => warn!(error = %err, "could not hold the session opening"),
        }
    }

    /// `DISCONNECT`: release the client's hold on its address after the grace period.
    fn disconnected(&self, event: &ClientEvent) {
        let session = self.lock().by_cid.remove(&event.cid);
        let session = match (session, event.username(), event.real_address()) {
            (Some(session), _, _) => session,
            // Accepted by an earlier controller: the environment still names it.
            (None, Some(client_id), Some(addr)) if !client_id.is_empty() => Session {
                client_id: client_id.to_owned(),
                addr,
            },
            _ => {
                debug!("disconnect of a client that never authenticated");
                return;
            }
        };
        info!(
            grace_ms = self.grace.as_millis() as u64,
            "client disconnected"
        );
        self.release_later(session);
    }

    fn release_all(&self) {
        let sessions: Vec<Session> = self.lock().by_cid.drain().map(|(_, s)| s).collect();
        for session in sessions {
            self.release_later(session);
        }
    }

    fn release_later(&self, session: Session) {
        let epoch = self.lock().epoch(&session.client_id, session.addr);
        let this = self.clone();
        let span = info_span!("release", client_id = %session.client_id, client_ip = %session.addr);
        tokio::spawn(
            async move {
                tokio::time::sleep(this.grace).await;
                {
                    let sessions = this.lock();
                    if sessions.live(&session.client_id, session.addr)
                        || sessions.epoch(&session.client_id, session.addr) != epoch
                    {
                        debug!("client is back; opening kept");
                        return;
                    }
                }
                match this
                    .openings
                    .release(this.server.id, session.addr, &session.client_id)
                    .await
                {
                    Ok(true) => info!("opening closed after disconnect"),
                    Ok(false) => {
                        info!("client's hold released; the opening stays for its other holders")
                    }
                    Err(err) => warn!(error = %err, "could not release the opening"),
                }
            }
            .instrument(span),
        );
    }
}
