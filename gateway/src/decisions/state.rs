//! The approval pipeline's view of the controller: clients from redb, servers from the
//! configuration, nonces recorded durably in redb.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tracing::{error, warn};

use crate::{
    approval::{
        AddressPolicy, ApprovalState, ClientRecord, ClientRsaPublicKey, HmacSecret, NONCE_LEN,
        NonceCheck, NonceScope, ServerLookup, ServerPolicy,
    },
    config::{AddressPolicySetting, ServerConfig},
    store::Store,
};

/// The store key of a nonce: a scope byte (`r` request, `p` payload) and the nonce.
pub fn nonce_key(scope: NonceScope, nonce: &[u8; NONCE_LEN]) -> [u8; NONCE_LEN + 1] {
    let mut key = [0u8; NONCE_LEN + 1];
    key[0] = match scope {
        NonceScope::Request => b'r',
        NonceScope::Payload => b'p',
    };
    key[1..].copy_from_slice(nonce);
    key
}

/// [`ApprovalState`] backed by the store and the configured servers.
pub struct StoreState {
    store: Arc<Store>,
    servers: HashMap<String, ServerPolicy>,
    /// Parsed RSA keys by client id, with the PEM they were parsed from: parsing a 4096-bit
    /// key costs more than verifying with it. A re-enrolled client has a new PEM, so a stale
    /// entry is never used.
    parsed_keys: Mutex<HashMap<String, (String, ClientRsaPublicKey)>>,
    gateway_addresses: GatewayAddresses,
    /// Servers with `device_auth = "required"`.
    device_servers: std::collections::HashSet<String>,
}

/// How long a reading of the interfaces' addresses is used before it is read again.
const INTERFACE_ADDRESSES_TTL: Duration = Duration::from_secs(2);

/// The gateway's own addresses: every configured public address, and every address of every
/// interface in the controller's network namespace (read again every
/// [`INTERFACE_ADDRESSES_TTL`], so an address added later is refused too).
pub struct GatewayAddresses {
    configured: HashSet<IpAddr>,
    interfaces: Mutex<Option<(Instant, HashSet<IpAddr>)>>,
}

impl GatewayAddresses {
    /// The configured public addresses of `servers`, plus the interfaces' addresses.
    pub fn new(servers: &[ServerConfig]) -> Self {
        let configured = servers
            .iter()
            .flat_map(|s| [s.public_ipv4.map(IpAddr::V4), s.public_ipv6.map(IpAddr::V6)])
            .flatten()
            .collect();
        Self {
            configured,
            interfaces: Mutex::new(None),
        }
    }

    /// Whether `addr` is one of the gateway's addresses.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        if self.configured.contains(&addr) {
            return true;
        }
        let mut cache = self
            .interfaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let fresh = matches!(&*cache, Some((read, _)) if read.elapsed() < INTERFACE_ADDRESSES_TTL);
        if !fresh {
            *cache = Some((Instant::now(), interface_addresses()));
        }
        cache.as_ref().is_some_and(|(_, set)| set.contains(&addr))
    }
}

/// Every address of every interface (an empty set, logged, if they cannot be read: the
/// configured public addresses are still refused).
fn interface_addresses() -> HashSet<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| a.address)
            .filter_map(|sa| {
                if let Some(v4) = sa.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    sa.as_sockaddr_in6()
                        .map(|v6| IpAddr::V6(v6.ip()).to_canonical())
                }
            })
            .collect(),
        Err(err) => {
            warn!(error = %err, "reading the interfaces' addresses failed");
            HashSet::new()
        }
    }
}

fn policy(setting: AddressPolicySetting) -> AddressPolicy {
    match setting {
        AddressPolicySetting::OpenAll => AddressPolicy::OpenAll,
        AddressPolicySetting::RequireMatch => AddressPolicy::RequireMatch,
        AddressPolicySetting::IgnoreReported => AddressPolicy::IgnoreReported,
    }
}

impl StoreState {
    /// The state for the servers this controller runs.
    pub fn new(store: Arc<Store>, servers: &[ServerConfig]) -> Self {
        let policies = servers
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    ServerPolicy {
                        address_policy: policy(s.address_policy),
                    },
                )
            })
            .collect();
        let device_servers = servers
            .iter()
            .filter(|s| s.device_auth == crate::device::DeviceAuth::Required)
            .map(|s| s.name.clone())
            .collect();
        Self {
            store,
            servers: policies,
            device_servers,
            parsed_keys: Mutex::new(HashMap::new()),
            gateway_addresses: GatewayAddresses::new(servers),
        }
    }

    /// The client's RSA key parsed from `pem`, from the cache when it holds that PEM.
    fn rsa_key(&self, client_id: &str, pem: &str) -> Option<ClientRsaPublicKey> {
        let mut cache = self
            .parsed_keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((cached_pem, key)) = cache.get(client_id)
            && cached_pem == pem
        {
            return Some(key.clone());
        }
        let key = ClientRsaPublicKey::from_pem(pem).ok()?;
        cache.insert(client_id.to_owned(), (pem.to_owned(), key.clone()));
        Some(key)
    }
}

impl ApprovalState for StoreState {
    fn client(&self, client_id: &str) -> Option<ClientRecord> {
        let stored = match self.store.client(client_id) {
            Ok(stored) => stored?,
            Err(err) => {
                error!(error = %err, "reading client failed; treating as unknown");
                return None;
            }
        };
        let enrollment = stored.enrollment?;
        let hmac_secret = HmacSecret::from_base64(&enrollment.hmac_secret_b64).ok()?;
        let rsa_public_key = self.rsa_key(&stored.client_id, &enrollment.rsa_public_key_pem)?;
        Some(ClientRecord {
            client_id: stored.client_id,
            enabled: stored.enabled,
            hmac_secret,
            rsa_public_key,
        })
    }

    fn server(&self, name: &str) -> ServerLookup {
        self.servers
            .get(name)
            .map_or(ServerLookup::Unknown, |policy| ServerLookup::Here(*policy))
    }

    fn record_nonce(
        &self,
        scope: NonceScope,
        nonce: &[u8; NONCE_LEN],
        keep_until_unix: u64,
    ) -> NonceCheck {
        let key = nonce_key(scope, nonce);
        match self
            .store
            .record_nonce(&key, crate::clock::unix_secs(), keep_until_unix)
        {
            Ok(true) => NonceCheck::Fresh,
            Ok(false) => NonceCheck::Replayed,
            Err(err) => {
                // Fail closed: a nonce we could not record is treated as seen.
                error!(error = %err, "recording a nonce failed; refusing the request");
                NonceCheck::Replayed
            }
        }
    }

    fn client_allowed(&self, client_id: &str, server: &str) -> bool {
        matches!(self.store.client(client_id), Ok(Some(client)) if client.servers.iter().any(|s| s == server))
    }

    fn is_gateway_address(&self, addr: IpAddr) -> bool {
        self.gateway_addresses.contains(addr)
    }

    fn device_auth(&self, server: &str) -> crate::device::DeviceAuth {
        if self.device_servers.contains(server) {
            crate::device::DeviceAuth::Required
        } else {
            crate::device::DeviceAuth::Off
        }
    }
}
