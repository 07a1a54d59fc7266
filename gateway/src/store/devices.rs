//! The device registry (`docs/PROTOCOL.md` §15): every device key a client signed with on a
//! server with `device_auth = "required"`, pending, approved or removed; and the operator's
//! override window. Every change is one durable transaction.
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};
use crate::device::{DevicePublicKey, MAX_PENDING_PER_CLIENT};

/// Devices by `client_id 0x00 fingerprint-hex`, JSON values.
pub(super) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// The override window and the device sequence counter.
pub(super) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("device_settings");
const OVERRIDE_KEY: &str = "override";
const SEQUENCE_KEY: &str = "sequence";

/// Where a device stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Waiting for an operator's approval.
    Pending,
    /// Approved: its signatures are accepted.
    Approved,
    /// Removed by the operator: refused, never pending again, never auto-approved.
    Removed,
}

impl DeviceState {
    /// `pending`, `approved` or `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Approved => "approved",
            DeviceState::Removed => "removed",
        }
    }
}

/// One device of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The client id.
    pub client_id: String,
    /// Lower-case hex SHA-256 of the 65-byte public key.
    pub fingerprint: String,
    /// The public key, hex of the 65-byte SEC1 form.
    pub public_key_hex: String,
    /// The device name the client sent (first seen; kept once approved).
    pub name: String,
    /// Where it stands.
    pub state: DeviceState,
    /// First request, ms since the epoch.
    pub first_seen_unix_ms: u64,
    /// Latest request, ms since the epoch.
    pub last_seen_unix_ms: u64,
    /// Source address of the latest request.
    pub source: String,
    /// Order of creation (breaks ties of `first_seen_unix_ms`).
    pub sequence: u64,
    /// When it was approved or removed, ms since the epoch (0: never).
    #[serde(default)]
    pub changed_unix_ms: u64,
    /// `pin`, `override` (automatic), or empty.
    #[serde(default)]
    pub approved_by: String,
}

impl DeviceRecord {
    /// The device's PIN (`docs/PROTOCOL.md` §15.5).
    pub fn pin(&self) -> String {
        crate::device::Fingerprint::from_hex(&self.fingerprint)
            .map(|f| f.pin())
            .unwrap_or_default()
    }
}

/// The operator's override: registrations are approved without a PIN until `until_unix_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOverride {
    /// End of the window, ms since the epoch (0: off).
    pub until_unix_ms: u64,
    /// When it was set, ms since the epoch.
    pub set_unix_ms: u64,
}

impl DeviceOverride {
    /// Whether the window is open at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        now_ms < self.until_unix_ms
    }
}

/// What a request's device is, once recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSighting {
    /// Approved (its last-seen time and source were updated).
    Approved(DeviceRecord),
    /// Unknown while the override window was open: approved now, without a PIN.
    AutoApproved(DeviceRecord),
    /// Pending: `new` when this request created the entry; `evicted`, the oldest pending
    /// device removed to keep at most [`MAX_PENDING_PER_CLIENT`].
    Pending {
        /// The pending entry.
        device: DeviceRecord,
        /// Whether this request created it.
        new: bool,
        /// The pending device it pushed out, if any.
        evicted: Option<DeviceRecord>,
    },
    /// Removed by the operator.
    Removed(DeviceRecord),
}

fn key(client_id: &str, fingerprint: &str) -> String {
    format!("{client_id}\0{fingerprint}")
}

fn prefix_range(client_id: &str) -> (String, String) {
    (format!("{client_id}\0"), format!("{client_id}\u{1}"))
}

impl Store {
    /// Records that `client_id` signed with `key` from `source` (device name `name`) and says
    /// what the device is: approved, auto-approved (override window), pending (created or
    /// seen again; at most [`MAX_PENDING_PER_CLIENT`] per client, the oldest evicted) or
    /// removed. One transaction.
    pub fn sight_device(
        &self,
        client_id: &str,
        key_bytes: &DevicePublicKey,
        name: &str,
        source: &str,
        now_ms: u64,
    ) -> Result<DeviceSighting, StoreError> {
        let fingerprint = key_bytes.fingerprint().to_hex();
        let k = key(client_id, &fingerprint);
        let txn = self.db.begin_write()?;
        let sighting = {
            let mut table = txn.open_table(TABLE)?;
            let mut settings = txn.open_table(SETTINGS)?;
            let existing: Option<DeviceRecord> = match table.get(k.as_str())? {
                Some(v) => Some(decode(&k, v.value())?),
                None => None,
            };
            let over: DeviceOverride = match settings.get(OVERRIDE_KEY)? {
                Some(v) => decode(OVERRIDE_KEY, v.value())?,
                None => DeviceOverride::default(),
            };
            let auto = over.active(now_ms);
            match existing {
                // A pending registration asking again while the window is open is approved
                // like a new one (a removed device never is).
                Some(mut device) if auto && device.state == DeviceState::Pending => {
                    device.last_seen_unix_ms = now_ms;
                    device.source = source.to_owned();
                    device.state = DeviceState::Approved;
                    device.changed_unix_ms = now_ms;
                    device.approved_by = "override".into();
                    table.insert(k.as_str(), encode(&device)?.as_slice())?;
                    DeviceSighting::AutoApproved(device)
                }
                Some(mut device) => {
                    device.last_seen_unix_ms = now_ms;
                    device.source = source.to_owned();
                    table.insert(k.as_str(), encode(&device)?.as_slice())?;
                    match device.state {
                        DeviceState::Approved => DeviceSighting::Approved(device),
                        DeviceState::Removed => DeviceSighting::Removed(device),
                        DeviceState::Pending => DeviceSighting::Pending {
                            device,
                            new: false,
                            evicted: None,
                        },
                    }
                }
                None => {
                    let sequence = match settings.get(SEQUENCE_KEY)? {
                        Some(v) => decode::<u64>(SEQUENCE_KEY, v.value())?,
                        None => 0,
                    } + 1;
                    settings.insert(SEQUENCE_KEY, encode(&sequence)?.as_slice())?;
                    let device = DeviceRecord {
                        client_id: client_id.to_owned(),
                        fingerprint: fingerprint.clone(),
                        public_key_hex: crate::tls::to_hex(key_bytes.as_bytes()),
                        name: name.to_owned(),
                        state: if auto {
                            DeviceState::Approved
                        } else {
                            DeviceState::Pending
                        },
                        first_seen_unix_ms: now_ms,
                        last_seen_unix_ms: now_ms,
                        source: source.to_owned(),
                        sequence,
                        changed_unix_ms: if auto { now_ms } else { 0 },
                        approved_by: if auto {
                            "override".into()
                        } else {
                            String::new()
                        },
                    };
                    let mut evicted = None;
                    if !auto {
                        let (lo, hi) = prefix_range(client_id);
                        let mut pending: Vec<DeviceRecord> = Vec::new();
                        for entry in table.range(lo.as_str()..hi.as_str())? {
                            let (ek, ev) = entry?;
                            let d: DeviceRecord = decode(ek.value(), ev.value())?;
                            if d.state == DeviceState::Pending {
                                pending.push(d);
                            }
                        }
                        if pending.len() >= MAX_PENDING_PER_CLIENT {
                            pending.sort_by_key(|d| (d.first_seen_unix_ms, d.sequence));
                            if let Some(oldest) = pending.into_iter().next() {
                                table.remove(key(client_id, &oldest.fingerprint).as_str())?;
                                evicted = Some(oldest);
                            }
                        }
                    }
                    table.insert(k.as_str(), encode(&device)?.as_slice())?;
                    if auto {
                        DeviceSighting::AutoApproved(device)
                    } else {
                        DeviceSighting::Pending {
                            device,
                            new: true,
                            evicted,
                        }
                    }
                }
            }
        };
        txn.commit()?;
        Ok(sighting)
    }

    /// The devices of `client_id`, or of every client; by client, then creation order.
    pub fn devices(&self, client_id: Option<&str>) -> Result<Vec<DeviceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut out = Vec::new();
        let mut push = |entry: Result<
            (redb::AccessGuard<'_, &str>, redb::AccessGuard<'_, &[u8]>),
            redb::StorageError,
        >|
         -> Result<(), StoreError> {
            let (k, v) = entry?;
            out.push(decode::<DeviceRecord>(k.value(), v.value())?);
            Ok(())
        };
        match client_id {
            Some(id) => {
                let (lo, hi) = prefix_range(id);
                for entry in table.range(lo.as_str()..hi.as_str())? {
                    push(entry)?;
                }
            }
            None => {
                for entry in table.iter()? {
                    push(entry)?;
                }
            }
        }
        out.sort_by(|a, b| {
            (a.client_id.as_str(), a.sequence).cmp(&(b.client_id.as_str(), b.sequence))
        });
        Ok(out)
    }

    /// Replaces one device record (state changes by the operator), durably; `None` removes it.
    pub fn put_device(
        &self,
        client_id: &str,
        fingerprint: &str,
        record: Option<&DeviceRecord>,
    ) -> Result<(), StoreError> {
        let k = key(client_id, fingerprint);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            match record {
                Some(record) => {
                    table.insert(k.as_str(), encode(record)?.as_slice())?;
                }
                None => {
                    table.remove(k.as_str())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes every device of `client_id` (the client was removed).
    pub fn remove_devices(&self, client_id: &str) -> Result<usize, StoreError> {
        let (lo, hi) = prefix_range(client_id);
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(TABLE)?;
            let keys: Vec<String> = table
                .range(lo.as_str()..hi.as_str())?
                .map(|e| e.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?;
            for k in &keys {
                table.remove(k.as_str())?;
            }
            keys.len()
        };
        txn.commit()?;
        Ok(removed)
    }

    /// The override window (off when never set).
    pub fn device_override(&self) -> Result<DeviceOverride, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SETTINGS)?;
        match table.get(OVERRIDE_KEY)? {
            Some(v) => decode(OVERRIDE_KEY, v.value()),
            None => Ok(DeviceOverride::default()),
        }
    }

    /// Sets (or, with `until_unix_ms` 0, ends) the override window, durably.
    pub fn put_device_override(&self, value: &DeviceOverride) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SETTINGS)?;
            table.insert(OVERRIDE_KEY, encode(value)?.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceSigner as _, SoftwareDeviceKey};

    fn key_n(n: u8) -> DevicePublicKey {
        let mut scalar = [0u8; 32];
        scalar[31] = n;
        SoftwareDeviceKey::from_scalar(&scalar)
            .unwrap()
            .public_key()
            .clone()
    }

    #[test]
    fn a_new_device_is_pending_and_seen_again_stays_the_same_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = key_n(1);
        let first = store
            .sight_device("c1", &k, "laptop", "10.0.0.1", 1000)
            .unwrap();
        let DeviceSighting::Pending {
            device,
            new: true,
            evicted: None,
        } = first
        else {
            panic!("{first:?}");
        };
        assert_eq!(device.fingerprint, k.fingerprint().to_hex());
        let again = store
            .sight_device("c1", &k, "laptop", "10.0.0.2", 2000)
            .unwrap();
        let DeviceSighting::Pending {
            device: d2,
            new: false,
            evicted: None,
        } = again
        else {
            panic!("{again:?}");
        };
        assert_eq!(d2.first_seen_unix_ms, 1000);
        assert_eq!(d2.last_seen_unix_ms, 2000);
        assert_eq!(d2.source, "10.0.0.2");
        assert_eq!(d2.pin(), device.pin());
        assert_eq!(store.devices(Some("c1")).unwrap().len(), 1);
        assert!(
            store.devices(Some("c")).unwrap().is_empty(),
            "prefix of another id"
        );
    }

    #[test]
    fn a_fourth_pending_device_evicts_the_oldest_and_approved_ones_are_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in 1..=3u8 {
            store
                .sight_device("c1", &key_n(n), "d", "10.0.0.1", 1000)
                .unwrap();
        }
        let fourth = store
            .sight_device("c1", &key_n(4), "d", "10.0.0.1", 1000)
            .unwrap();
        let DeviceSighting::Pending {
            evicted: Some(gone),
            ..
        } = fourth
        else {
            panic!("{fourth:?}");
        };
        assert_eq!(gone.fingerprint, key_n(1).fingerprint().to_hex());
        let pending: Vec<_> = store.devices(Some("c1")).unwrap();
        assert_eq!(pending.len(), 3);
        // Another client's pending devices do not count.
        let other = store
            .sight_device("c2", &key_n(1), "d", "10.0.0.1", 1000)
            .unwrap();
        assert!(matches!(
            other,
            DeviceSighting::Pending { evicted: None, .. }
        ));
        // Approved devices are not limited: approve all three, add three more pending.
        for mut d in store.devices(Some("c1")).unwrap() {
            d.state = DeviceState::Approved;
            store
                .put_device("c1", &d.fingerprint.clone(), Some(&d))
                .unwrap();
        }
        for n in 5..=7u8 {
            let s = store.sight_device("c1", &key_n(n), "d", "x", 2000).unwrap();
            assert!(
                matches!(s, DeviceSighting::Pending { evicted: None, .. }),
                "{s:?}"
            );
        }
        assert_eq!(store.devices(Some("c1")).unwrap().len(), 6);
    }

    #[test]
    fn the_override_window_auto_approves_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put_device_override(&DeviceOverride {
                    until_unix_ms: 5000,
                    set_unix_ms: 1000,
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.device_override().unwrap().until_unix_ms, 5000);
        let s = store.sight_device("c1", &key_n(1), "d", "x", 4999).unwrap();
        assert!(matches!(s, DeviceSighting::AutoApproved(ref d) if d.approved_by == "override"));
        let s = store.sight_device("c1", &key_n(2), "d", "x", 5000).unwrap();
        assert!(
            matches!(s, DeviceSighting::Pending { .. }),
            "expired at 5000: {s:?}"
        );
        // A removed device is never auto-approved.
        let mut d = store.devices(Some("c1")).unwrap().remove(0);
        d.state = DeviceState::Removed;
        store
            .put_device("c1", &d.fingerprint.clone(), Some(&d))
            .unwrap();
        store
            .put_device_override(&DeviceOverride {
                until_unix_ms: 99_999,
                set_unix_ms: 1,
            })
            .unwrap();
        let s = store.sight_device("c1", &key_n(1), "d", "x", 6000).unwrap();
        assert!(matches!(s, DeviceSighting::Removed(_)), "{s:?}");
        assert_eq!(store.remove_devices("c1").unwrap(), 2);
    }
}
