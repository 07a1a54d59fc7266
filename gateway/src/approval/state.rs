//! What the validation pipeline asks of its caller: clients, servers, the seen-nonce store and
//! the client-to-server permissions, through [`ApprovalState`]; plus [`MemoryState`], an
//! in-memory implementation for tests and development.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::address::AddressPolicy;
use super::error::Stage;
use super::keys::{ClientRsaPublicKey, HmacSecret};
use super::wire::NONCE_LEN;

/// An enrolled client, as the server knows it.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// The client id.
    pub client_id: String,
    /// Disabled clients are denied.
    pub enabled: bool,
    /// The shared HMAC-SHA512 secret.
    pub hmac_secret: HmacSecret,
    /// The enrolled RSA public key.
    pub rsa_public_key: ClientRsaPublicKey,
}

/// How a server is configured, when this gateway serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerPolicy {
    /// Which addresses to open.
    pub address_policy: AddressPolicy,
}

/// The answer to "which server is this name?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLookup {
    /// No server has this name.
    Unknown,
    /// The server exists but another gateway serves it.
    NotHere,
    /// This gateway serves the server.
    Here(ServerPolicy),
}

/// Which nonce a record is about. Stores keep the scopes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NonceScope {
    /// The envelope's request nonce.
    Request,
    /// The nonce inside the boxed payload.
    Payload,
}

/// The outcome of recording a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// The nonce was not known; it is now recorded.
    Fresh,
    /// The nonce was already recorded: a replay.
    Replayed,
}

/// The state the pipeline reads and the one thing it writes (seen nonces). Implementations
/// use interior mutability and must be safe to share between concurrent validations.
pub trait ApprovalState {
    /// The client with this id, if any (enabled or not).
    fn client(&self, client_id: &str) -> Option<ClientRecord>;

    /// Which server this name is, and whether this gateway serves it.
    fn server(&self, name: &str) -> ServerLookup;

    /// Atomically records `nonce` under `scope`, to be kept at least until `keep_until_unix`,
    /// and says whether it was already there.
    fn record_nonce(
        &self,
        scope: NonceScope,
        nonce: &[u8; NONCE_LEN],
        keep_until_unix: u64,
    ) -> NonceCheck;

    /// Whether the client may use the server.
    fn client_allowed(&self, client_id: &str, server: &str) -> bool;

    /// Whether `addr` belongs to the gateway itself (an address of one of its interfaces, or a
    /// configured public address): such an address is never opened (`docs/PROTOCOL.md` §7).
    fn is_gateway_address(&self, addr: IpAddr) -> bool;

    /// Whether the server wants a device signature (`docs/PROTOCOL.md` §15). The default:
    /// no server does.
    fn device_auth(&self, server: &str) -> crate::device::DeviceAuth {
        let _ = server;
        crate::device::DeviceAuth::Off
    }

    /// Called as the pipeline enters each stage, before its work. For metrics and tests; the
    /// default does nothing.
    fn entering(&self, stage: Stage) {
        let _ = stage;
    }
}

/// An in-memory [`ApprovalState`] that also counts what the pipeline asked of it.
#[derive(Debug, Default)]
pub struct MemoryState {
    clients: HashMap<String, ClientRecord>,
    servers: HashMap<String, ServerLookup>,
    allowed: HashSet<(String, String)>,
    nonces: Mutex<HashMap<(NonceScope, [u8; NONCE_LEN]), u64>>,
    trace: Mutex<Vec<Stage>>,
    nonce_calls: Mutex<usize>,
    gateway_addresses: HashSet<IpAddr>,
    device_servers: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a client.
    pub fn add_client(&mut self, record: ClientRecord) {
        self.clients.insert(record.client_id.clone(), record);
    }

    /// Adds a server served here.
    pub fn add_server_here(&mut self, name: &str, policy: ServerPolicy) {
        self.servers
            .insert(name.to_owned(), ServerLookup::Here(policy));
    }

    /// Adds a server served by another gateway.
    pub fn add_server_elsewhere(&mut self, name: &str) {
        self.servers.insert(name.to_owned(), ServerLookup::NotHere);
    }

    /// Lets a client use a server.
    pub fn allow(&mut self, client_id: &str, server: &str) {
        self.allowed
            .insert((client_id.to_owned(), server.to_owned()));
    }

    /// Declares an address as the gateway's own (never opened).
    pub fn add_gateway_address(&mut self, addr: IpAddr) {
        self.gateway_addresses.insert(addr.to_canonical());
    }

    /// Makes a server want device signatures (`device_auth = "required"`).
    pub fn require_device(&mut self, server: &str) {
        self.device_servers.insert(server.to_owned());
    }

    /// Forgets nonces whose keep-until time is before `now_unix`.
    pub fn purge_expired_nonces(&self, now_unix: u64) {
        lock(&self.nonces).retain(|_, keep_until| *keep_until >= now_unix);
    }

    /// Number of recorded nonces.
    pub fn nonce_count(&self) -> usize {
        lock(&self.nonces).len()
    }

    /// The keep-until time recorded for a nonce.
    pub fn nonce_keep_until(&self, scope: NonceScope, nonce: &[u8; NONCE_LEN]) -> Option<u64> {
        lock(&self.nonces).get(&(scope, *nonce)).copied()
    }

    /// How many times [`ApprovalState::record_nonce`] was called.
    pub fn record_nonce_calls(&self) -> usize {
        *lock(&self.nonce_calls)
    }

    /// The stages entered since the last [`MemoryState::take_trace`], in order.
    pub fn take_trace(&self) -> Vec<Stage> {
        std::mem::take(&mut *lock(&self.trace))
    }
}

impl ApprovalState for MemoryState {
    fn client(&self, client_id: &str) -> Option<ClientRecord> {
        self.clients.get(client_id).cloned()
    }

    fn server(&self, name: &str) -> ServerLookup {
        self.servers
            .get(name)
            .cloned()
            .unwrap_or(ServerLookup::Unknown)
    }

    fn record_nonce(
        &self,
        scope: NonceScope,
        nonce: &[u8; NONCE_LEN],
        keep_until_unix: u64,
    ) -> NonceCheck {
        *lock(&self.nonce_calls) += 1;
        match lock(&self.nonces).entry((scope, *nonce)) {
            std::collections::hash_map::Entry::Occupied(_) => NonceCheck::Replayed,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(keep_until_unix);
                NonceCheck::Fresh
            }
        }
    }

    fn client_allowed(&self, client_id: &str, server: &str) -> bool {
        self.allowed
            .contains(&(client_id.to_owned(), server.to_owned()))
    }

    fn is_gateway_address(&self, addr: IpAddr) -> bool {
        self.gateway_addresses.contains(&addr.to_canonical())
    }

    fn device_auth(&self, server: &str) -> crate::device::DeviceAuth {
        if self.device_servers.contains(server) {
            crate::device::DeviceAuth::Required
        } else {
            crate::device::DeviceAuth::Off
        }
    }

    fn entering(&self, stage: Stage) {
        lock(&self.trace).push(stage);
    }
}
