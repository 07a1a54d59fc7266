//! The privileged controller process: loads and owns the gate, keeps openings in line with
//! the store, and serves the control API.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Instant,
};

use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::{
    config::{Config, ServerConfig},
    control,
    decisions::{
        Approvals,
        box_key::{self, BoxKeyError},
    },
    gate::{self, GateError, GateHandle, GateMaps, KernelService, guard::LinkGuard, loader},
    openings::{Openings, OpeningsError},
    reload::{self, ReloadError, ReloadReport},
    shutdown::{self, Shutdown},
    store::{Store, StoreError},
};

/// Errors that stop the controller from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// State store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Gate failure.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// Opening management failure.
    #[error(transparent)]
    Openings(#[from] OpeningsError),
    /// Control API failure.
    #[error("control API: {0}")]
    Control(std::io::Error),
    /// Front API failure.
    #[error("front API: {0}")]
    Front(std::io::Error),
    /// The box key could not be loaded or created.
    #[error(transparent)]
    BoxKey(#[from] BoxKeyError),
    /// The cluster API could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A VPN server's persistent tun interface could not be made.
    #[error(transparent)]
    Tun(#[from] crate::vpn::tun::TunError),
}

pub use crate::gate::plan::{PlannedService, plan_services};

/// The configuration in force and the kernel services planned from it, replaced as a whole
/// by a reload.
pub struct Live {
    /// Validated configuration.
    pub config: Config,
    /// Services written to the kernel, with their counter slots.
    pub services: Vec<PlannedService>,
}

/// Everything the running controller shares with its API handlers.
pub struct Controller {
    live: RwLock<Arc<Live>>,
    /// The file the configuration came from (read again on reload).
    config_path: Option<PathBuf>,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// The OpenVPN follower of each server that has one, by server id.
    followers: Mutex<HashMap<u32, (ServerConfig, tokio::task::JoinHandle<()>)>>,
    /// Opening manager.
    pub openings: Arc<Openings>,
    /// Approval service (front API and client administration).
    pub approvals: Arc<Approvals>,
    /// Map owner.
    pub gate: GateHandle,
    /// Self-shutdown state (signed notices).
    pub shutdown: Arc<Shutdown>,
    /// The gate's links: what the kernel has attached now, repaired when removed from outside.
    pub links: LinkGuard,
    /// Start time, for uptime.
    pub started: Instant,
}

impl Controller {
    /// The configuration and services in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the configuration file again and applies it (`SIGHUP`, `xdpgate reload`).
    ///
    /// Refused, changing nothing: an invalid file, or a change to a setting only a restart
    /// applies. Otherwise, in this order: the new services are written to the kernel (a new
    /// port is guarded before anything else happens; a removed one is unguarded last), the
    /// approval settings are swapped (new approvals use the new servers, timings, limits and
    /// address policies), openings of removed servers are closed, and OpenVPN followers of
    /// added, changed or removed servers are started, restarted or stopped. Openings of the
    /// servers that remain are untouched.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Config::load(path)?;
        let old = self.live();
        let refused = reload::restart_needed(&old.config, &new);
        if !refused.is_empty() {
            return Err(ReloadError::NeedsRestart(refused));
        }
        let (added, removed, changed) = reload::server_changes(&old.config.servers, &new.servers);
        let services = reload::plan_services_keeping(&new, &old.services);
        let reassigned = reload::reassigned_slots(&old.services, &services);
        let kernel_services: Vec<KernelService> = services
            .iter()
            .flat_map(PlannedService::kernel_entries)
            .collect();
        self.gate
            .run(move |maps| -> Result<(), GateError> {
                for slot in reassigned {
                    maps.reset_service_stats(slot)?;
                }
                maps.sync_services(&kernel_services)
            })
            .await
            .and_then(|written| written)
            .map_err(|err| ReloadError::Gate(err.to_string()))?;
        self.approvals.reconfigure(&new);
        let mut closed_openings = 0;
        for server in old
            .config
            .servers
            .iter()
            .filter(|s| new.server_by_id(s.id).is_none())
        {
            match self.openings.revoke_server(server.id).await {
                Ok(closed) => closed_openings += closed,
                Err(err) => {
                    error!(server = %server.name, error = %err, "closing the openings of a removed server failed; they expire on their own");
                }
            }
        }
        self.follow_vpns(&new.servers);
        for warning in new.warnings() {
            warn!("{warning}");
        }
        let report = ReloadReport {
            added,
            removed,
            changed,
            services: services.len(),
            closed_openings,
        };
        debug!(keys = ?reload::keys(&services), "services after reload");
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Live {
            config: new,
            services,
        });
        info!(%report, "configuration reloaded");
        Ok(report)
    }

    /// Makes the OpenVPN followers match `servers`: one per server with `[server.openvpn]`,
    /// restarted when its server's settings changed, stopped when the server is gone.
    fn follow_vpns(&self, servers: &[ServerConfig]) {
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        followers.retain(|id, (config, task)| {
            let keep = servers.iter().any(|s| s.id == *id && s == config);
            if !keep {
                task.abort();
            }
            keep
        });
        for server in servers {
            if followers.contains_key(&server.id) {
                continue;
            }
            match crate::vpn::openvpn::start(server, &self.openings, &self.approvals.vpn_tokens()) {
                Ok(Some(task)) => {
                    followers.insert(server.id, (server.clone(), task));
                }
                Ok(None) => {}
                Err(err) => {
                    error!(server = %server.name, error = %err, "cannot start following the OpenVPN server");
                }
            }
        }
    }

    fn stop_following(&self) {
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, (_, task)) in followers.drain() {
            task.abort();
        }
    }
}

/// Starts the controller and runs until SIGINT/SIGTERM; `SIGHUP` reloads `config_path`. The
/// gate stays attached afterwards.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), ControllerError> {
    let span = info_span!("controller", interfaces = ?config.interfaces);
    async move {
        let controller = Arc::new(start(config, config_path).await?);
        let live = controller.live();
        let sweeper = tokio::spawn(sweep_forever(controller.clone()));
        let reloader = tokio::spawn(reload_on_sighup(controller.clone()));
        let notices = live.config.notices.clone().map(|notices| {
            tokio::spawn(shutdown::poll_forever(controller.shutdown.clone(), notices))
        });
        let link_watch = tokio::spawn(controller.links.clone().watch());
        let metrics_listener = match live.config.metrics_listen {
            Some(addr) => {
                let for_scrape = controller.clone();
                let scrape = crate::metrics::scrape(move || {
                    let controller = for_scrape.clone();
                    async move { metrics_snapshot(&controller).await.registry() }
                });
                Some(crate::metrics::serve(addr, scrape).await?)
            }
            None => None,
        };
        let socket = live.config.control_socket.clone();
        let front_socket = live.config.approvals.front_socket.clone();
        let front_owner = live.config.approvals.front_socket_user.clone();
        let (stop_front, front_stopped) = tokio::sync::oneshot::channel::<()>();
        let front = {
            let approvals = controller.approvals.clone();
            let front_socket = front_socket.clone();
            tokio::spawn(async move {
                let shutdown = async {
                    let _ = front_stopped.await;
                };
                control::serve_front(approvals, &front_socket, front_owner.as_deref(), shutdown)
                    .await
            })
        };
        let cluster = match &live.config.cluster {
            Some(cluster) => {
                Some(crate::cluster::server::spawn(cluster, controller.approvals.clone()).await?)
            }
            None => None,
        };
        drop(live);
        let watchdog = {
            let controller = controller.clone();
            crate::service::spawn_watchdog(move || {
                let gate = controller.gate.clone();
                async move { gate.run(|_| ()).await.is_ok() }
            })
        };
        crate::service::ready("controller serving");
        let served = control::serve(controller.clone(), &socket, shutdown_signal()).await;
        crate::service::stopping();
        watchdog.iter().for_each(tokio::task::JoinHandle::abort);
        cluster.iter().for_each(tokio::task::JoinHandle::abort);
        let _ = stop_front.send(());
        let front_result = front.await;
        sweeper.abort();
        reloader.abort();
        notices.iter().for_each(tokio::task::JoinHandle::abort);
        link_watch.abort();
        metrics_listener
            .iter()
            .for_each(tokio::task::JoinHandle::abort);
        controller.stop_following();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&front_socket);
        info!("controller stopped; the gate stays attached and keeps enforcing");
        served.map_err(ControllerError::Control)?;
        match front_result {
            Ok(result) => result.map_err(ControllerError::Front),
            Err(err) => Err(ControllerError::Front(std::io::Error::other(err))),
        }
    }
    .instrument(span)
    .await
}

/// Loads (or reuses) the gate, syncs services, reconciles openings, then attaches.
async fn start(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<Controller, ControllerError> {
    let started = Instant::now();
    let store = Arc::new(Store::open(&config.state_dir)?);
    let store_ms = started.elapsed().as_millis();
    let pin_dir = loader::pin_folder(&config.bpffs_dir);
    let mut ebpf = loader::load_pinned(&pin_dir, config.max_openings)?;
    debug!(
        store_ms,
        load_ms = started.elapsed().as_millis() - store_ms,
        "store open, program loaded"
    );
    let mut maps = GateMaps::take(&mut ebpf)?;
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let services = plan_services(&config);
    let kernel_services: Vec<KernelService> = services
        .iter()
        .flat_map(PlannedService::kernel_entries)
        .collect();
    maps.sync_services(&kernel_services)?;
    let gate = gate::spawn_owner(maps)?;
    let openings =
        Arc::new(Openings::new(gate.clone(), store.clone()).with_map_capacity(config.max_openings));
    // The maps are right before the program is (re)attached.
    openings.reconcile().await?;
    let box_keys = box_key::load_ring(&config.state_dir, crate::clock::unix_secs())?;
    let (notice_state, notice_sender) = shutdown::load(&store)?;
    let approvals = Arc::new(Approvals::new(
        &config,
        store.clone(),
        openings.clone(),
        box_keys,
        notice_sender.subscribe(),
    ));
    let shutdown = Arc::new(Shutdown::new(
        store,
        notice_sender,
        openings.clone(),
        approvals.vpn_tokens(),
        approvals.audit().clone(),
    ));
    if notice_state.any_shutdown() {
        warn!(state = %shutdown::summary(&notice_state), "a self-shutdown holds (see `xdpgate notices status`)");
    }
    if let Err(err) = shutdown.enforce().await {
        error!(error = %err, "closing openings for the vpn shutdown failed; the sweeper retries");
    }
    let attached = loader::attach_all(&mut ebpf, &pin_dir, &config.interfaces, config.xdp_mode)?;
    let attachments: Vec<_> = attached
        .iter()
        .map(|(attachment, _)| attachment.clone())
        .collect();
    info!(
        ?attachments,
        services = services.len(),
        start_ms = started.elapsed().as_millis(),
        "gate ready"
    );
    let links = LinkGuard::new(ebpf, pin_dir, config.xdp_mode, attached)?;
    let mut followers = HashMap::new();
    for server in &config.servers {
        if let Some(task) = crate::vpn::openvpn::start(server, &openings, &approvals.vpn_tokens())?
        {
            followers.insert(server.id, (server.clone(), task));
        }
    }
    Ok(Controller {
        live: RwLock::new(Arc::new(Live { config, services })),
        config_path,
        reload_lock: tokio::sync::Mutex::new(()),
        followers: Mutex::new(followers),
        openings,
        approvals,
        gate,
        shutdown,
        links,
        started: Instant::now(),
    })
}

/// Reloads the configuration on every `SIGHUP`; a refused reload is logged and changes
/// nothing.
async fn reload_on_sighup(controller: Arc<Controller>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; use `xdpgate reload`");
        return;
    };
    while hangups.recv().await.is_some() {
        info!("SIGHUP received: reloading the configuration");
        if let Err(err) = controller.reload().await {
            error!(error = %err, "reload refused");
        }
    }
}

/// How often expired nonces are deleted from the store.
const NONCE_PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

async fn sweep_forever(controller: Arc<Controller>) {
    let mut ticker = tokio::time::interval(controller.live().config.sweep_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = Instant::now();
    loop {
        ticker.tick().await;
        if last_purge.elapsed() >= NONCE_PURGE_INTERVAL {
            last_purge = Instant::now();
            match controller.approvals.purge_nonces().await {
                Ok(purged) if purged > 0 => info!(purged, "forgot expired nonces"),
                Ok(_) => {}
                Err(err) => error!(error = %err, "purging nonces failed"),
            }
        }
        if let Err(err) = controller.shutdown.enforce().await {
            error!(error = %err, "enforcing the vpn shutdown failed");
        }
        let sweep_started = Instant::now();
        let swept = controller.openings.sweep().await;
        crate::metrics::observe_since(&crate::metrics::latencies().sweep, sweep_started);
        match swept {
            Ok(report) if report.closed + report.stale_removed > 0 => {
                info!(?report, "sweep closed openings");
            }
            Ok(_) => {}
            Err(err) => error!(error = %err, "sweep failed"),
        }
    }
}

/// What a metrics scrape reports: kernel counters read now, openings, outcomes, interfaces.
pub async fn metrics_snapshot(controller: &Controller) -> crate::metrics::ControllerSnapshot {
    let live = controller.live();
    let indexes: Vec<u32> = live.services.iter().map(|s| s.stats_index).collect();
    let kernel = controller
        .gate
        .run(move |maps| -> Result<_, GateError> {
            let stats = indexes
                .into_iter()
                .map(|i| maps.service_stats(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((stats, maps.global_counters()?, maps.openings()?))
        })
        .await;
    let mut snapshot = crate::metrics::ControllerSnapshot::default();
    match kernel {
        Ok(Ok((stats, counters, openings))) => {
            for (planned, stat) in live.services.iter().zip(stats) {
                let server = live
                    .config
                    .servers
                    .iter()
                    .find(|s| s.id == planned.server_id);
                let labels = vec![
                    ("server", server.map(|s| s.name.clone()).unwrap_or_default()),
                    ("protocol", planned.service.protocol.name().to_owned()),
                    ("port", planned.service.port.to_string()),
                    (
                        "address",
                        planned
                            .service
                            .address
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                    ),
                ];
                snapshot.services.push((labels, stat.passed, stat.dropped));
            }
            snapshot.parse_drops = counters
                .into_iter()
                .map(|(c, v)| (c.name().to_owned(), v))
                .collect();
            for server in &live.config.servers {
                let count = openings.iter().filter(|o| o.server_id == server.id).count();
                snapshot.openings.push((
                    server.name.clone(),
                    i64::try_from(count).unwrap_or(i64::MAX),
                ));
            }
            let v4 = openings.iter().filter(|o| o.addr.is_ipv4()).count();
            let max = f64::from(live.config.max_openings.max(1));
            #[allow(clippy::cast_precision_loss)]
            let fill = |n: usize| n as f64 / max;
            snapshot.map_fill = [fill(v4), fill(openings.len() - v4)];
        }
        Ok(Err(err)) | Err(err) => {
            warn!(error = %err, "metrics: reading the kernel counters failed")
        }
    }
    snapshot.outcomes = controller.approvals.metrics();
    let links = controller.links.clone();
    let interfaces = tokio::task::spawn_blocking(move || links.check())
        .await
        .unwrap_or_default();
    snapshot.interfaces = interfaces
        .into_iter()
        .map(|i| (i.interface, i.serving))
        .collect();
    snapshot
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the controller with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
