//! One-time OpenVPN tokens waiting to be redeemed: recorded when an approval opens the gate,
//! redeemed (and forgotten) when the OpenVPN server checks the client's password, forgotten
//! unused when the connect window ends. Kept in memory only: after a controller restart a
//! client asks for a new approval.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// Pending tokens kept per client (the oldest is dropped beyond this).
const MAX_PENDING_PER_CLIENT: usize = 8;

/// What a redemption attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redemption {
    /// The token matched and is now used up.
    Accepted,
    /// No pending token of this client matches the password, server and address.
    Refused,
}

struct Pending {
    server_id: u32,
    token: Zeroizing<String>,
    addrs: Vec<IpAddr>,
    expires: Instant,
}

/// The cut notice meaning every client (no client id can be `*`).
pub const EVERY_CLIENT: &str = "*";

/// Cut notices a slow follower may fall behind by before it misses some (it then logs it).
const CUT_BACKLOG: usize = 256;

/// The pending tokens of every client, and the notices that cut a client's live tunnels.
/// Cheap to share behind an `Arc`.
pub struct VpnTokens {
    pending: Mutex<HashMap<String, Vec<Pending>>>,
    cuts: tokio::sync::broadcast::Sender<String>,
}

impl Default for VpnTokens {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            cuts: tokio::sync::broadcast::channel(CUT_BACKLOG).0,
        }
    }
}

impl VpnTokens {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends everything `client_id` has on the VPN servers (disabled or removed): its pending
    /// tokens are forgotten and every OpenVPN follower cuts its live tunnels.
    pub fn revoke_client(&self, client_id: &str) {
        self.forget_client(client_id);
        // No receiver means no follower is running: nothing to cut.
        let _ = self.cuts.send(client_id.to_owned());
    }

    /// Ends everything every client has on the VPN servers (a `vpn` self-shutdown): all
    /// pending tokens are forgotten and every follower cuts every live tunnel.
    pub fn revoke_everyone(&self) {
        self.lock().clear();
        let _ = self.cuts.send(EVERY_CLIENT.to_owned());
    }

    /// Notices of clients whose live tunnels must be cut (see [`VpnTokens::revoke_client`]).
    pub fn cuts(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cuts.subscribe()
    }

    /// Records the token of an approval of `client_id` on `server_id` for `addrs`, valid for
    /// `ttl` (the connect window).
    pub fn record(
        &self,
        client_id: &str,
        server_id: u32,
        token: Zeroizing<String>,
        addrs: Vec<IpAddr>,
        ttl: Duration,
    ) {
        let now = Instant::now();
        let mut pending = self.lock();
        let list = pending.entry(client_id.to_owned()).or_default();
        list.retain(|p| p.expires > now);
        if list.len() >= MAX_PENDING_PER_CLIENT {
            list.remove(0);
        }
        list.push(Pending {
            server_id,
            token,
            addrs,
            expires: now + ttl,
        });
    }

    /// Redeems `password` for `client_id` connecting to `server_id` from `addr`: accepted only
    /// once, before it expires, from an address its approval opened.
    pub fn redeem(
        &self,
        client_id: &str,
        server_id: u32,
        password: &str,
        addr: IpAddr,
    ) -> Redemption {
        let now = Instant::now();
        let mut pending = self.lock();
        let Some(list) = pending.get_mut(client_id) else {
            return Redemption::Refused;
        };
        list.retain(|p| p.expires > now);
        let found = list.iter().position(|p| {
            let same_token: bool = p.token.as_bytes().ct_eq(password.as_bytes()).into();
            same_token && p.server_id == server_id && p.addrs.contains(&addr)
        });
        let outcome = match found {
            Some(index) => {
                list.remove(index);
                Redemption::Accepted
            }
            None => Redemption::Refused,
        };
        if list.is_empty() {
            pending.remove(client_id);
        }
        outcome
    }

    /// Forgets every pending token of `client_id` (disabled or removed).
    pub fn forget_client(&self, client_id: &str) {
        self.lock().remove(client_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Pending>>> {
        // A panic while holding the lock leaves the map consistent (every edit is one call).
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str) -> Zeroizing<String> {
        Zeroizing::new(text.to_owned())
    }

    #[test]
    fn a_token_is_redeemed_once_by_its_client_server_and_address() {
        let tokens = VpnTokens::new();
        let addr: IpAddr = "10.0.0.2".parse().unwrap();
        tokens.record(
            "alice",
            1,
            tok("secret-a"),
            vec![addr],
            Duration::from_secs(60),
        );
        assert_eq!(
            tokens.redeem("bob", 1, "secret-a", addr),
            Redemption::Refused,
            "another client"
        );
        assert_eq!(
            tokens.redeem("alice", 2, "secret-a", addr),
            Redemption::Refused,
            "another server"
        );
        assert_eq!(
            tokens.redeem("alice", 1, "secret-b", addr),
            Redemption::Refused,
            "wrong password"
        );
        assert_eq!(
            tokens.redeem("alice", 1, "secret-a", "10.0.0.3".parse().unwrap()),
            Redemption::Refused,
            "another address"
        );
        assert_eq!(
            tokens.redeem("alice", 1, "secret-a", addr),
            Redemption::Accepted
        );
        assert_eq!(
            tokens.redeem("alice", 1, "secret-a", addr),
            Redemption::Refused,
            "one time"
        );
    }

    #[test]
    fn expired_and_forgotten_tokens_are_refused() {
        let tokens = VpnTokens::new();
        let addr: IpAddr = "fd00::2".parse().unwrap();
        tokens.record("alice", 1, tok("t1"), vec![addr], Duration::ZERO);
        assert_eq!(tokens.redeem("alice", 1, "t1", addr), Redemption::Refused);
        tokens.record("alice", 1, tok("t2"), vec![addr], Duration::from_secs(60));
        tokens.forget_client("alice");
        assert_eq!(tokens.redeem("alice", 1, "t2", addr), Redemption::Refused);
    }

    #[test]
    fn revoking_a_client_forgets_its_tokens_and_notifies_followers() {
        let tokens = VpnTokens::new();
        let addr: IpAddr = "10.0.0.2".parse().unwrap();
        let mut cuts = tokens.cuts();
        tokens.record("alice", 1, tok("t1"), vec![addr], Duration::from_secs(60));
        tokens.revoke_client("alice");
        assert_eq!(tokens.redeem("alice", 1, "t1", addr), Redemption::Refused);
        assert_eq!(cuts.try_recv().unwrap(), "alice");
        assert!(cuts.try_recv().is_err(), "one notice");
    }

    #[test]
    fn pending_tokens_per_client_are_bounded() {
        let tokens = VpnTokens::new();
        let addr: IpAddr = "10.0.0.2".parse().unwrap();
        for i in 0..=MAX_PENDING_PER_CLIENT {
            tokens.record(
                "alice",
                1,
                tok(&format!("t{i}")),
                vec![addr],
                Duration::from_secs(60),
            );
        }
        assert_eq!(
            tokens.redeem("alice", 1, "t0", addr),
            Redemption::Refused,
            "oldest dropped"
        );
        assert_eq!(
            tokens.redeem("alice", 1, &format!("t{MAX_PENDING_PER_CLIENT}"), addr),
            Redemption::Accepted
        );
    }
}
