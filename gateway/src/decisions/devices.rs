//! Device authentication on the controller (`docs/PROTOCOL.md` §15): the registry check of
//! an approval whose device signature verified (approved, auto-approved in the override
//! window, pending, removed), and the operator's commands (`xdpgate devices …`), each
//! audited and counted.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use super::{Approvals, Origin};
use crate::{
    approval::{ApprovedRequest, Reason},
    clock::unix_ms,
    config::ServerConfig,
    device::{DeviceAuth, Fingerprint, pin_matches},
    openings::OpeningsError,
    store::{
        AuditEvent, AuditKind, Journal, StoreError,
        devices::{DeviceOverride, DeviceRecord, DeviceSighting, DeviceState},
    },
};

/// Wrong PINs one client's devices may get per [`PIN_WINDOW`] before `approve` is refused.
pub const PIN_MAX_WRONG: u32 = 5;
/// See [`PIN_MAX_WRONG`].
pub const PIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest override window (`devices override --hours`).
pub const MAX_OVERRIDE_HOURS: u32 = 7 * 24;
/// Shortest fingerprint prefix accepted to name a device.
const MIN_FINGERPRINT_PREFIX: usize = 8;

/// Errors of the operator's device commands.
#[derive(Debug, thiserror::Error)]
pub enum DeviceAdminError {
    /// Bad input from the operator.
    #[error("{0}")]
    Invalid(String),
    /// No such client or device.
    #[error("{0}")]
    NotFound(String),
    /// The PIN is not the device's: nothing was approved.
    #[error(
        "wrong PIN for device {device:?} of {client}: nothing approved ({left} attempt(s) left)"
    )]
    WrongPin {
        /// The client id.
        client: String,
        /// The device name.
        device: String,
        /// Wrong PINs left before approvals of this client's devices are refused for a while.
        left: u32,
    },
    /// Too many wrong PINs for this client lately.
    #[error("too many wrong PINs for {client}: try again in {seconds_left} s")]
    PinLocked {
        /// The client id.
        client: String,
        /// Seconds until approvals are accepted again.
        seconds_left: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Closing the device's openings failed.
    #[error(transparent)]
    Openings(#[from] OpeningsError),
    /// A blocking task failed.
    #[error("task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Wrong PINs per client, in memory (a restart forgets them; each one is in the audit log).
#[derive(Debug, Default)]
pub(super) struct PinGuesses(Mutex<HashMap<String, (Instant, u32)>>);

impl PinGuesses {
    fn locked(&self, client: &str, now: Instant) -> Option<Duration> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, count) = map.get(client)?;
        let elapsed = now.saturating_duration_since(*start);
        (*count >= PIN_MAX_WRONG && elapsed < PIN_WINDOW).then(|| PIN_WINDOW - elapsed)
    }

    /// Counts a wrong PIN; returns how many are left in the window.
    fn failed(&self, client: &str, now: Instant) -> u32 {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = map.entry(client.to_owned()).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= PIN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        PIN_MAX_WRONG.saturating_sub(entry.1)
    }
}

impl Approvals {
    /// The first check of the grant stage on a server with `device_auth = "required"`: the
    /// device whose signature verified must be approved. An unknown device becomes pending
    /// (or, in the override window, approved at once), a pending one stays pending, a
    /// removed one is refused. `Ok(Some(fingerprint))` to attribute the openings;
    /// `Err(None)`: the store failed.
    pub(super) async fn check_device(
        &self,
        origin: &Origin<'_>,
        approved: &ApprovedRequest,
        server: &ServerConfig,
    ) -> Result<Option<String>, Option<Reason>> {
        if server.device_auth == DeviceAuth::Off {
            return Ok(None);
        }
        let client_id = approved.client_id.clone();
        let Some(key) = approved.device.clone() else {
            // The device stage refuses this already; kept so a gap fails closed.
            return Err(Some(Reason::DeviceMissing {
                client_id,
                missing: "a device key and signature",
            }));
        };
        let store = self.store.clone();
        let (id, name, source) = (
            client_id.clone(),
            approved.device_name.clone(),
            origin.remote.to_string(),
        );
        let sighted = tokio::task::spawn_blocking(move || {
            store.sight_device(&id, &key, &name, &source, unix_ms())
        })
        .await;
        let sighting = match sighted {
            Ok(Ok(sighting)) => sighting,
            Ok(Err(err)) => {
                error!(error = %err, "recording a device failed");
                return Err(None);
            }
            Err(err) => {
                error!(error = %err, "device task failed");
                return Err(None);
            }
        };
        let remote = origin.remote.to_string();
        match sighting {
            DeviceSighting::Approved(device) => Ok(Some(device.fingerprint)),
            DeviceSighting::AutoApproved(device) => {
                self.metrics.count("device.auto_approved");
                info!(client_id, fingerprint = %device.fingerprint, "device approved automatically (override window)");
                self.device_audit(
                    &device,
                    "auto_approved",
                    &remote,
                    "approved automatically: the override window is open",
                )
                .await;
                Ok(Some(device.fingerprint))
            }
            DeviceSighting::Pending {
                device,
                new,
                evicted,
            } => {
                if let Some(gone) = &evicted {
                    self.metrics.count("device.evicted");
                    self.device_audit(
                        gone,
                        "evicted",
                        &gone.source,
                        &format!(
                            "pending registration removed: {} newer device(s) are pending",
                            crate::device::MAX_PENDING_PER_CLIENT
                        ),
                    )
                    .await;
                }
                let (verdict, detail) = if new {
                    self.metrics.count("device.pending");
                    ("pending", " (new)".to_owned())
                } else {
                    self.metrics.count("device.pending_again");
                    ("pending_again", " (asked again; same entry)".to_owned())
                };
                self.device_audit(&device, verdict, &remote, "waiting for an operator")
                    .await;
                Err(Some(Reason::DevicePending {
                    client_id,
                    device: device.name,
                    fingerprint: device.fingerprint,
                    detail,
                }))
            }
            DeviceSighting::Removed(device) => {
                self.metrics.count("device.removed_refused");
                Err(Some(Reason::DeviceRemoved {
                    client_id,
                    device: device.name,
                    fingerprint: device.fingerprint,
                }))
            }
        }
    }

    /// The devices of `client` (or of every client), and the override window.
    pub async fn devices_list(
        &self,
        client: Option<&str>,
    ) -> Result<(Vec<DeviceRecord>, DeviceOverride), DeviceAdminError> {
        let store = self.store.clone();
        let client = client.map(str::to_owned);
        Ok(tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.devices(client.as_deref())?, store.device_override()?))
        })
        .await??)
    }

    /// Approves a pending (or removed) device of `client` named by `selector` (its name, or
    /// its fingerprint or a prefix of at least 8 hex digits) when `pin` is its PIN. A wrong
    /// PIN approves nothing, is audited and counts against the client's PIN budget.
    pub async fn devices_approve(
        &self,
        client: &str,
        selector: &str,
        pin: &str,
    ) -> Result<DeviceRecord, DeviceAdminError> {
        let now = Instant::now();
        if let Some(left) = self.device_pins.locked(client, now) {
            self.metrics.count("device.pin_locked");
            self.operator_device_audit(
                client,
                "pin_locked",
                &format!("approve {selector:?} refused: too many wrong PINs"),
            )
            .await;
            return Err(DeviceAdminError::PinLocked {
                client: client.to_owned(),
                seconds_left: left.as_secs().max(1),
            });
        }
        let mut device = self.find_device(client, selector).await?;
        if device.state == DeviceState::Approved {
            return Err(DeviceAdminError::Invalid(format!(
                "device {:?} of {client} is approved already",
                device.name
            )));
        }
        let fingerprint = Fingerprint::from_hex(&device.fingerprint)
            .ok_or_else(|| DeviceAdminError::Invalid("stored fingerprint is corrupt".into()))?;
        if !pin_matches(&fingerprint, pin) {
            let left = self.device_pins.failed(client, now);
            self.metrics.count("device.pin_wrong");
            warn!(client_id = client, fingerprint = %device.fingerprint, "wrong device PIN");
            let source = device.source.clone();
            self.device_audit(
                &device,
                "pin_wrong",
                &source,
                &format!("operator gave a wrong PIN; nothing approved ({left} attempt(s) left)"),
            )
            .await;
            return Err(DeviceAdminError::WrongPin {
                client: client.to_owned(),
                device: device.name,
                left,
            });
        }
        device.state = DeviceState::Approved;
        device.changed_unix_ms = unix_ms();
        device.approved_by = "pin".into();
        let store = self.store.clone();
        let record = device.clone();
        tokio::task::spawn_blocking(move || {
            store.put_device(&record.client_id, &record.fingerprint, Some(&record))
        })
        .await??;
        self.metrics.count("device.approved");
        let source = device.source.clone();
        self.device_audit(
            &device,
            "approved",
            &source,
            "approved by the operator with its PIN",
        )
        .await;
        Ok(device)
    }

    /// Removes a device of `client`: an approved one is kept as `removed` (refused from now
    /// on, never pending or auto-approved again) and its openings close at once; a pending
    /// one is forgotten. Returns the record as it was and the openings closed.
    pub async fn devices_remove(
        &self,
        client: &str,
        selector: &str,
    ) -> Result<(DeviceRecord, usize), DeviceAdminError> {
        let device = self.find_device(client, selector).await?;
        let store = self.store.clone();
        let mut tombstone = device.clone();
        let closed = if device.state == DeviceState::Pending {
            let fp = device.fingerprint.clone();
            let id = client.to_owned();
            tokio::task::spawn_blocking(move || store.put_device(&id, &fp, None)).await??;
            0
        } else {
            tombstone.state = DeviceState::Removed;
            tombstone.changed_unix_ms = unix_ms();
            // Atomic with approvals in flight (see `Openings::revoke_device_with`).
            self.openings
                .revoke_device_with(client, &device.fingerprint, move || {
                    store
                        .put_device(
                            &tombstone.client_id,
                            &tombstone.fingerprint,
                            Some(&tombstone),
                        )
                        .map_err(DeviceAdminError::from)
                })
                .await?
        };
        self.metrics.count("device.removed");
        let source = device.source.clone();
        self.device_audit(
            &device,
            "removed",
            &source,
            &format!(
                "removed by the operator (was {}); {closed} opening(s) closed",
                device.state.as_str()
            ),
        )
        .await;
        Ok((device, closed))
    }

    /// Opens the override window for `hours`: new devices are approved without a PIN until
    /// it ends or [`Approvals::devices_require`] ends it. Durable.
    pub async fn devices_override(&self, hours: u32) -> Result<DeviceOverride, DeviceAdminError> {
        if hours == 0 || hours > MAX_OVERRIDE_HOURS {
            return Err(DeviceAdminError::Invalid(format!(
                "--hours must be 1 to {MAX_OVERRIDE_HOURS}"
            )));
        }
        let now = unix_ms();
        let value = DeviceOverride {
            until_unix_ms: now + u64::from(hours) * 3_600_000,
            set_unix_ms: now,
        };
        self.put_override(value).await?;
        self.metrics.count("device.override_on");
        self.operator_device_audit(
            "",
            "override_on",
            &format!(
                "new devices are approved without a PIN for {hours} h (until {} ms)",
                value.until_unix_ms
            ),
        )
        .await;
        Ok(value)
    }

    /// Ends the override window: new devices need an operator's PIN approval again.
    pub async fn devices_require(&self) -> Result<DeviceOverride, DeviceAdminError> {
        let value = DeviceOverride {
            until_unix_ms: 0,
            set_unix_ms: unix_ms(),
        };
        self.put_override(value).await?;
        self.metrics.count("device.override_off");
        self.operator_device_audit(
            "",
            "override_off",
            "new devices need the operator's approval with their PIN again",
        )
        .await;
        Ok(value)
    }

    async fn put_override(&self, value: DeviceOverride) -> Result<(), DeviceAdminError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_device_override(&value)).await??;
        Ok(())
    }

    /// The one device of `client` that `selector` names.
    async fn find_device(
        &self,
        client: &str,
        selector: &str,
    ) -> Result<DeviceRecord, DeviceAdminError> {
        let (devices, _) = self.devices_list(Some(client)).await?;
        if devices.is_empty() {
            return Err(DeviceAdminError::NotFound(format!(
                "client {client:?} has no devices"
            )));
        }
        let wanted = selector.trim().to_ascii_lowercase();
        let by_print: Vec<&DeviceRecord> = if wanted.len() >= MIN_FINGERPRINT_PREFIX
            && wanted.bytes().all(|b| b.is_ascii_hexdigit())
        {
            devices
                .iter()
                .filter(|d| d.fingerprint.starts_with(&wanted))
                .collect()
        } else {
            Vec::new()
        };
        let matches = if by_print.is_empty() {
            devices
                .iter()
                .filter(|d| d.name == selector)
                .collect::<Vec<_>>()
        } else {
            by_print
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(DeviceAdminError::NotFound(format!(
                "client {client:?} has no device named {selector:?} (give its name or fingerprint)"
            ))),
            many => Err(DeviceAdminError::Invalid(format!(
                "{selector:?} names {} devices of {client}; give the fingerprint instead: {}",
                many.len(),
                many.iter()
                    .map(|d| &d.fingerprint[..16])
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Audits a device event (client, device name, fingerprint and source address), durably:
    /// it is on disk before the request or the command is answered.
    async fn device_audit(&self, device: &DeviceRecord, verdict: &str, source: &str, what: &str) {
        self.commit_events(vec![AuditEvent {
            unix_ms: unix_ms(),
            kind: AuditKind::Device,
            client_id: device.client_id.clone(),
            remote: source.to_owned(),
            server: String::new(),
            verdict: verdict.to_owned(),
            code: String::new(),
            reason: format!(
                "device {:?} fingerprint {} ({}): {what}",
                device.name,
                device.fingerprint,
                device.state.as_str()
            ),
        }])
        .await;
    }

    async fn operator_device_audit(&self, client: &str, verdict: &str, what: &str) {
        self.commit_events(vec![AuditEvent {
            unix_ms: unix_ms(),
            kind: AuditKind::Device,
            client_id: client.to_owned(),
            remote: String::new(),
            server: String::new(),
            verdict: verdict.to_owned(),
            code: String::new(),
            reason: what.to_owned(),
        }])
        .await;
    }

    /// Commits audit events in one durable transaction; a failure is logged (the device
    /// change itself is already committed).
    async fn commit_events(&self, events: Vec<AuditEvent>) {
        for event in &events {
            super::audit::log(event);
        }
        let store = self.store.clone();
        let journal = Journal {
            audit: events,
            answers: Vec::new(),
        };
        match tokio::task::spawn_blocking(move || store.commit_journal(&journal)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(error = %err, "writing a device audit event failed"),
            Err(err) => error!(error = %err, "device audit task failed"),
        }
    }
}
