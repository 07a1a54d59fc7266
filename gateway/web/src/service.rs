//! The service manager's side (systemd `Type=notify`): readiness, and watchdog pings sent
//! only while a liveness check passes. Without `NOTIFY_SOCKET` every call does nothing.
use std::{future::Future, time::Duration};

/// Tells the service manager this process is ready (and what it is doing).
pub fn ready(status: &str) {
    if let Err(err) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]) {
        tracing::warn!(error = %err, "telling the service manager we are ready failed");
    }
}

/// Tells the service manager this process is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// When the unit has `WatchdogSec=`, pings at half that interval for as long as `alive`
/// answers true; a stuck or unhealthy process stops pinging and systemd restarts it.
pub fn spawn_watchdog<F, Fut>(alive: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            if alive().await {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("liveness check failed; not pinging the watchdog");
            }
        }
    }))
}
