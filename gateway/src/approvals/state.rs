//! The approval pipeline's view of the controller: clients from redb, servers from the
//! configuration, nonces recorded durably in redb.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tracing::error;

use crate::{
    approval::{
        AddressPolicy, ApprovalState, ClientRecord, ClientRsaPublicKey, HmacSecret, NONCE_LEN, NonceCheck,
        NonceScope, ServerLookup, ServerPolicy,
    },
    config::{AddressPolicySetting, ServerConfig},
    store::Store,
};

/// [`ApprovalState`] backed by the store and the configured servers.
pub struct StoreState {
    store: Arc<Store>,
    servers: HashMap<String, ServerPolicy>,
    /// Parsed RSA keys by client id, with the PEM they were parsed from: parsing a 4096-bit
    /// key costs more than verifying with it. A re-enrolled client has a new PEM, so a stale
    /// entry is never used.
    parsed_keys: Mutex<HashMap<String, (String, ClientRsaPublicKey)>>,
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
        let servers = servers
            .iter()
            .map(|s| (s.name.clone(), ServerPolicy { address_policy: policy(s.address_policy) }))
            .collect();
        Self { store, servers, parsed_keys: Mutex::new(HashMap::new()) }
    }

    /// The client's RSA key parsed from `pem`, from the cache when it holds that PEM.
    fn rsa_key(&self, client_id: &str, pem: &str) -> Option<ClientRsaPublicKey> {
        let mut cache = self.parsed_keys.lock().unwrap_or_else(PoisonError::into_inner);
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
        Some(ClientRecord { client_id: stored.client_id, enabled: stored.enabled, hmac_secret, rsa_public_key })
    }

    fn server(&self, name: &str) -> ServerLookup {
        self.servers.get(name).map_or(ServerLookup::Unknown, |policy| ServerLookup::Here(*policy))
    }

    fn record_nonce(&self, scope: NonceScope, nonce: &[u8; NONCE_LEN], keep_until_unix: u64) -> NonceCheck {
        let mut key = [0u8; NONCE_LEN + 1];
        key[0] = match scope {
            NonceScope::Request => b'r',
            NonceScope::Payload => b'p',
        };
        key[1..].copy_from_slice(nonce);
        match self.store.record_nonce(&key, crate::clock::unix_secs(), keep_until_unix) {
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
}
