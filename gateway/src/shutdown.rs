//! Self-shutdown: polls the notice server for signed notices, keeps the durable shutdown
//! state of the `www`, `web` and `vpn` parts, and enforces `vpn` (every opening closed,
//! grants refused, live OpenVPN tunnels cut). The web front and the approval service read
//! the state through a watch channel.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::{
    client::https::{self, Endpoint, HttpsRequest},
    clock::unix_ms,
    config::NoticesConfig,
    decisions::AuditLog,
    openings::Openings,
    signed_notice::{self, MAX_NOTICE_BYTES, Notice, Version},
    store::{AuditEvent, AuditKind, NoticeRecord, Store, StoreError},
    tls::{self, TlsError},
    vpn::VpnTokens,
};

/// Errors of the shutdown state.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task failed.
    #[error("task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The notice server's TLS trust could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Closing openings failed.
    #[error(transparent)]
    Openings(#[from] crate::openings::OpeningsError),
}

/// This build's version, sent to the notice server and matched against notices.
pub const OWN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The shutdown state and what acts on it.
pub struct Shutdown {
    store: Arc<Store>,
    state: watch::Sender<NoticeRecord>,
    openings: Arc<Openings>,
    vpn_tokens: Arc<VpnTokens>,
    audit: AuditLog,
    version: Version,
    counters: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Serializes changes of the state.
    changing: tokio::sync::Mutex<()>,
}

/// The state as stored, and a channel others watch it on.
pub fn load(store: &Store) -> Result<(NoticeRecord, watch::Sender<NoticeRecord>), StoreError> {
    let record = store.notice_state()?;
    let (sender, _) = watch::channel(record.clone());
    Ok((record, sender))
}

impl Shutdown {
    /// The service over the loaded state `sender`; seals the gate at once when `vpn` is shut.
    pub fn new(
        store: Arc<Store>,
        state: watch::Sender<NoticeRecord>,
        openings: Arc<Openings>,
        vpn_tokens: Arc<VpnTokens>,
        audit: AuditLog,
    ) -> Self {
        openings.set_sealed(state.borrow().vpn.shutdown);
        let version = Version::parse(OWN_VERSION).unwrap_or(Version(0, 0, 0));
        Self {
            store,
            state,
            openings,
            vpn_tokens,
            audit,
            version,
            counters: std::sync::Mutex::default(),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The current state.
    pub fn current(&self) -> NoticeRecord {
        self.state.borrow().clone()
    }

    /// Outcome counters since start (`fetched`, `acted`, `refused.<why>`, `failed.<why>`).
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.lock_counters()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn count(&self, name: &str) {
        *self.lock_counters().entry(name.to_owned()).or_default() += 1;
    }

    fn lock_counters(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `vpn` enforced: while it is shut, no opening survives (called by the sweeper).
    /// It holds the change lock, so it cannot read "shut" just before `clear` or a lifting
    /// notice and then seal the gate again after they unsealed it.
    pub async fn enforce(&self) -> Result<usize, ShutdownError> {
        let _changing = self.changing.lock().await;
        self.enforce_locked().await
    }

    /// [`Self::enforce`] for a caller that holds the change lock.
    async fn enforce_locked(&self) -> Result<usize, ShutdownError> {
        if !self.state.borrow().vpn.shutdown {
            return Ok(0);
        }
        self.openings.set_sealed(true);
        let closed = self.openings.revoke_all().await?;
        if closed > 0 {
            info!(closed, "vpn shut down by notice: closed openings");
        }
        Ok(closed)
    }

    /// Decides what one fetch brought: acts only on a notice that verifies with the pinned
    /// key, covers this version and has a higher sequence than the last one acted on.
    pub async fn on_fetch(
        &self,
        fetched: Result<Vec<u8>, String>,
        public_key: &[u8; 32],
    ) -> String {
        self.count("fetched");
        let outcome = match fetched {
            Err(why) => {
                self.count("failed.fetch");
                warn!(error = %why, "fetching the notice failed; nothing changes");
                "fetch failed".to_owned()
            }
            Ok(body) => self.on_body(&body, public_key).await,
        };
        let _changing = self.changing.lock().await;
        let mut record = self.current();
        record.last_fetch_unix_ms = unix_ms();
        record.last_outcome.clone_from(&outcome);
        if let Err(err) = self.save(record).await {
            error!(error = %err, "recording the notice fetch failed");
        }
        outcome
    }

    async fn on_body(&self, body: &[u8], public_key: &[u8; 32]) -> String {
        let notice = match signed_notice::verify(body, public_key) {
            Ok(notice) => notice,
            Err(err) => {
                self.count(&format!("refused.{}", err.kind()));
                warn!(error = %err, "notice refused; nothing changes");
                return format!("refused: {err}");
            }
        };
        if !notice.covers(self.version) {
            self.count("refused.other_version");
            info!(
                sequence = notice.sequence,
                "notice does not cover this version; nothing changes"
            );
            return format!(
                "refused: notice {} does not cover version {OWN_VERSION}",
                notice.sequence
            );
        }
        let _changing = self.changing.lock().await;
        let last = self.state.borrow().last_sequence;
        if notice.sequence <= last {
            let why = if notice.sequence == last {
                "replayed"
            } else {
                "stale"
            };
            self.count(&format!("refused.{why}"));
            if notice.sequence < last {
                warn!(
                    sequence = notice.sequence,
                    last, "stale notice; nothing changes"
                );
            }
            return format!(
                "refused: {why} notice {} (last acted on {last})",
                notice.sequence
            );
        }
        match self.act(notice).await {
            Ok(text) => {
                self.count("acted");
                text
            }
            Err(err) => {
                self.count("failed.act");
                error!(error = %err, "acting on a verified notice failed");
                format!("failed: {err}")
            }
        }
    }

    async fn act(&self, notice: Notice) -> Result<String, ShutdownError> {
        let mut record = self.current();
        record.www = notice.www.clone();
        record.web = notice.web.clone();
        record.vpn = notice.vpn.clone();
        record.last_sequence = notice.sequence;
        record.changed_unix_ms = unix_ms();
        record.changed_by = "notice".into();
        record.last_notice = Some(notice);
        let summary = summary(&record);
        self.save_sealing(record.clone()).await?;
        self.after_change(&record).await;
        self.record_audit(
            "acted",
            format!("notice {}: {summary}", record.last_sequence),
        );
        Ok(format!(
            "acted on notice {}: {summary}",
            record.last_sequence
        ))
    }

    /// `xdpgate notices clear`: the operator lifts every shutdown (the last sequence is kept,
    /// so replaying the same notice does not shut down again).
    pub async fn clear(&self) -> Result<NoticeRecord, ShutdownError> {
        let _changing = self.changing.lock().await;
        let mut record = self.current();
        let before = summary(&record);
        for part in [&mut record.www, &mut record.web, &mut record.vpn] {
            *part = signed_notice::PartState::default();
        }
        record.changed_unix_ms = unix_ms();
        record.changed_by = "operator".into();
        self.save_sealing(record.clone()).await?;
        self.record_audit(
            "cleared",
            format!("operator cleared the shutdown state (was: {before})"),
        );
        Ok(record)
    }

    async fn after_change(&self, record: &NoticeRecord) {
        if record.vpn.shutdown {
            self.vpn_tokens.revoke_everyone();
            if let Err(err) = self.enforce_locked().await {
                error!(error = %err, "closing openings for a vpn shutdown failed; the sweeper retries");
            }
        }
    }

    /// Saves a changed state and seals the gate to match, in the safe order: a shutdown seals
    /// before it is saved, a lift unseals only once it is saved (a failed save leaves the
    /// gate sealed, as the stored state says). The caller holds the change lock.
    async fn save_sealing(&self, record: NoticeRecord) -> Result<(), ShutdownError> {
        let sealed = record.vpn.shutdown;
        if sealed {
            self.openings.set_sealed(true);
        }
        self.save(record).await?;
        if !sealed {
            self.openings.set_sealed(false);
        }
        Ok(())
    }

    async fn save(&self, record: NoticeRecord) -> Result<(), ShutdownError> {
        let store = self.store.clone();
        let saved = record.clone();
        tokio::task::spawn_blocking(move || store.put_notice_state(&saved)).await??;
        self.state.send_replace(record);
        Ok(())
    }

    fn record_audit(&self, verdict: &str, reason: String) {
        self.audit.record(AuditEvent {
            unix_ms: unix_ms(),
            kind: AuditKind::Notice,
            client_id: String::new(),
            remote: String::new(),
            server: String::new(),
            verdict: verdict.to_owned(),
            code: String::new(),
            reason,
        });
    }
}

/// `www=shutdown web=running vpn=running`.
pub fn summary(record: &NoticeRecord) -> String {
    let word = |shut: bool| if shut { "shutdown" } else { "running" };
    format!(
        "www={} web={} vpn={}",
        word(record.www.shutdown),
        word(record.web.shutdown),
        word(record.vpn.shutdown)
    )
}

/// The TLS client config trusting the certificates of `config.ca_file`.
fn notice_tls(config: &NoticesConfig) -> Result<Arc<rustls::ClientConfig>, ShutdownError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tls::load_certs(&config.ca_file)? {
        // A certificate the parser rejects is skipped, as system bundles carry a few.
        let _ = roots.add(cert);
    }
    let mut client = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::from)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![tls::ALPN_HTTP11.to_vec()];
    Ok(Arc::new(client))
}

/// One fetch: `GET <url>?version=<own version>`, 200 with at most [`MAX_NOTICE_BYTES`].
async fn fetch(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let path = format!("?version={OWN_VERSION}");
    let mut request = HttpsRequest::new(http::Method::GET, &path);
    request
        .headers
        .push(("user-agent", format!("xdpgate/{OWN_VERSION}")));
    // One byte over the limit tells an oversized answer from one of exactly the limit.
    let reply = match https::send(endpoint, tls, request, timeout, MAX_NOTICE_BYTES + 1).await {
        Ok(reply) => reply,
        // Too long: handed on as an over-long body, which verification refuses as
        // `oversized` (without keeping more than the limit in memory).
        Err(https::HttpsError::TooLarge(_)) => return Ok(vec![0; MAX_NOTICE_BYTES + 1]),
        Err(err) => return Err(err.to_string()),
    };
    if reply.status != 200 {
        return Err(format!("notice server answered HTTP {}", reply.status));
    }
    Ok(reply.body.to_vec())
}

/// A random wait of up to `jitter`.
fn jitter(jitter: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return Duration::ZERO;
    }
    let millis = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(
        u64::from_le_bytes(bytes)
            .checked_rem(millis.saturating_add(1))
            .unwrap_or(0),
    )
}

/// Polls the notice server for ever: first after a random part of the jitter, then every
/// interval plus jitter.
pub async fn poll_forever(shutdown: Arc<Shutdown>, config: NoticesConfig) {
    let span = info_span!("notices", url = %config.url);
    async move {
        let (endpoint, tls) = match (Endpoint::parse(&config.url), notice_tls(&config)) {
            (Ok(endpoint), Ok(tls)) => (endpoint, tls),
            (Err(err), _) => return error!(error = %err, "notice URL unusable; not polling"),
            (_, Err(err)) => {
                return error!(error = %err, "notice server trust unusable; not polling");
            }
        };
        info!(
            interval_secs = config.interval.as_secs(),
            jitter_secs = config.jitter.as_secs(),
            "polling for notices"
        );
        tokio::time::sleep(jitter(config.jitter)).await;
        loop {
            let fetched = fetch(&endpoint, tls.clone(), config.timeout).await;
            let outcome = shutdown.on_fetch(fetched, &config.public_key).await;
            info!(outcome = %outcome, "notice polled");
            tokio::time::sleep(config.interval + jitter(config.jitter)).await;
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
