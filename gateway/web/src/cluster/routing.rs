//! Which controller owns which server, as a web node knows it: learned from the controllers
//! themselves with `ListServers`, refreshed every `refresh` and cached, so a controller that
//! is down keeps its servers (requests for them fail fast with `unavailable` instead of
//! being sent elsewhere).
//!
//! Enrollment rule: an enrollment names its issuing controller (the link's `controller=`,
//! copied into the sealed envelope's clear `controller` field), and goes to that controller
//! only. An enrollment without it (a controller outside a cluster issued the link) is offered
//! to each controller in configuration order until one accepts it (2xx); the box opens only at
//! the issuer, so offering it elsewhere changes nothing there.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tonic::Status;
use tracing::{Instrument as _, debug, info, warn};
use xdpgate_proto::cluster::v1::ServerOwnership;
use xdpgate_proto::front::v1::{FrontReply, FrontRequest};

use super::client::ControllerClient;
use super::{ClusterError, WebClusterConfig, mtls};

/// What the last refresh learned about one controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The configured node name.
    pub name: String,
    /// Its cluster API address.
    pub address: String,
    /// Whether the last `ListServers` succeeded.
    pub reachable: bool,
    /// The version it reported.
    pub version: String,
    /// The servers it owns (as last reported).
    pub servers: Vec<String>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
}

/// The routing table of a web node.
#[derive(Debug)]
pub struct ClusterRoutes {
    controllers: Vec<ControllerClient>,
    /// Server name → index in `controllers`.
    owners: RwLock<HashMap<String, usize>>,
    status: RwLock<Vec<NodeStatus>>,
    last_refresh: RwLock<Option<Instant>>,
}

/// Shortest time between two refreshes triggered by an unknown server name.
const MIN_ON_DEMAND_REFRESH: Duration = Duration::from_millis(500);

impl ClusterRoutes {
    /// Clients for every configured controller; nothing is contacted yet.
    pub fn new(
        config: &WebClusterConfig,
        call_timeout: Duration,
    ) -> Result<Arc<Self>, ClusterError> {
        let tls = Arc::new(mtls::client_config(&config.tls)?);
        let controllers = config
            .controllers
            .iter()
            .map(|addr| ControllerClient::new(addr, tls.clone(), call_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let status = controllers
            .iter()
            .map(|c| NodeStatus {
                name: c.addr.name.clone(),
                address: c.addr.address.to_string(),
                ..NodeStatus::default()
            })
            .collect();
        Ok(Arc::new(Self {
            controllers,
            owners: RwLock::new(HashMap::new()),
            status: RwLock::new(status),
            last_refresh: RwLock::new(None),
        }))
    }

    /// Asks every controller (concurrently) which servers it owns. A controller that does not
    /// answer keeps the servers it last reported.
    pub async fn refresh(&self) {
        let answers = futures_join_all(
            self.controllers
                .iter()
                .map(|c| async move { c.list_servers().await }),
        )
        .await;
        let mut owners = self.owners.read().map(|o| o.clone()).unwrap_or_default();
        let mut status = self.status.read().map(|s| s.clone()).unwrap_or_default();
        for (index, answer) in answers.into_iter().enumerate() {
            let Some(entry) = status.get_mut(index) else {
                continue;
            };
            match answer {
                Ok(ownership) => {
                    self.learn(index, &ownership, &mut owners);
                    entry.reachable = true;
                    entry.version = ownership.version;
                    entry.servers = ownership.servers.into_iter().map(|s| s.name).collect();
                    entry.error = None;
                }
                Err(err) => {
                    if entry.reachable || entry.error.is_none() {
                        warn!(controller = %entry.name, "controller unreachable: {} {}", err.code(), err.message());
                    }
                    entry.reachable = false;
                    entry.error = Some(format!("{}: {}", err.code(), err.message()));
                }
            }
        }
        if let Ok(mut slot) = self.owners.write() {
            *slot = owners;
        }
        if let Ok(mut slot) = self.status.write() {
            *slot = status;
        }
        if let Ok(mut slot) = self.last_refresh.write() {
            *slot = Some(Instant::now());
        }
    }

    fn learn(
        &self,
        index: usize,
        ownership: &ServerOwnership,
        owners: &mut HashMap<String, usize>,
    ) {
        let name = self
            .controllers
            .get(index)
            .map(|c| c.addr.name.as_str())
            .unwrap_or_default();
        if ownership.node != name {
            warn!(controller = name, reported = %ownership.node, "controller reports another node name");
        }
        owners.retain(|_, owner| *owner != index);
        for server in &ownership.servers {
            match owners.get(&server.name) {
                Some(&other) if other != index => {
                    warn!(server = %server.name, controller = name, "server claimed by two controllers; keeping the first");
                }
                _ => {
                    owners.insert(server.name.clone(), index);
                }
            }
        }
    }

    /// Refreshes every `period`, forever (spawned by the web front).
    pub fn spawn_refresher(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let routes = self.clone();
        tokio::spawn(
            async move {
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    routes.refresh().await;
                }
            }
            .instrument(tracing::info_span!("cluster_refresh")),
        )
    }

    /// The controller that owns `server`, refreshing once if it is not known yet.
    async fn owner(&self, server: &str) -> Option<&ControllerClient> {
        let lookup = |routes: &Self| {
            routes
                .owners
                .read()
                .ok()
                .and_then(|o| o.get(server).copied())
        };
        let index = match lookup(self) {
            Some(index) => Some(index),
            None => {
                let stale = self
                    .last_refresh
                    .read()
                    .ok()
                    .and_then(|t| *t)
                    .is_none_or(|t| t.elapsed() >= MIN_ON_DEMAND_REFRESH);
                if stale {
                    self.refresh().await;
                }
                lookup(self)
            }
        };
        index.and_then(|i| self.controllers.get(i))
    }

    /// Forwards an approval request to the owner of `server`. No owner known, or the owner
    /// unreachable within the deadline: `unavailable`. Never retried here (the client may
    /// retry; its nonce makes a duplicate harmless).
    pub async fn submit_approval(
        &self,
        server: &str,
        request: FrontRequest,
    ) -> Result<FrontReply, Status> {
        let Some(owner) = self.owner(server).await else {
            info!(server, "no controller owns this server");
            return Err(Status::unavailable("no controller owns this server"));
        };
        let started = Instant::now();
        let result = owner.submit_approval(request).await;
        debug!(server, controller = %owner.addr.name, elapsed_us = started.elapsed().as_micros() as u64, ok = result.is_ok(), "forwarded");
        result
    }

    /// Offers an enrollment to each controller in turn; the first 2xx answer wins. If none
    /// accepts, the first refusal is returned; if none answered, `unavailable`.
    pub async fn enroll(&self, request: FrontRequest) -> Result<FrontReply, Status> {
        let issuer = xdpgate_protocol::enrollment::SealedEnrollRequest::parse(&request.body)
            .ok()
            .and_then(|sealed| sealed.controller);
        if let Some(issuer) = issuer {
            let Some(controller) = self.controllers.iter().find(|c| c.addr.name == issuer) else {
                info!(controller = %issuer, "enrollment names a controller this web node does not know");
                return Ok(FrontReply {
                    http_status: 403,
                    body: br#"{"error":"denied"}"#.to_vec(),
                });
            };
            debug!(controller = %issuer, "enrollment routed to its issuer");
            return controller.enroll(request).await;
        }
        let mut refusal = None;
        let mut last_error = None;
        for controller in &self.controllers {
            match controller.enroll(request.clone()).await {
                Ok(reply) if (200..300).contains(&reply.http_status) => return Ok(reply),
                Ok(reply) => {
                    debug!(controller = %controller.addr.name, status = reply.http_status, "enrollment refused");
                    refusal.get_or_insert(reply);
                }
                Err(err) => {
                    warn!(controller = %controller.addr.name, "enrollment not delivered: {} {}", err.code(), err.message());
                    last_error = Some(err);
                }
            }
        }
        match (refusal, last_error) {
            (Some(reply), None) => Ok(reply),
            // A controller we could not ask may have issued the token: retryable.
            (_, Some(err)) => Err(Status::unavailable(format!(
                "a controller was unreachable: {}",
                err.message()
            ))),
            (None, None) => Err(Status::unavailable("no controllers configured")),
        }
    }

    /// Whether the last refresh reached at least one controller.
    pub fn any_reachable(&self) -> bool {
        self.status
            .read()
            .map(|s| s.iter().any(|n| n.reachable))
            .unwrap_or(false)
    }

    /// What the last refresh learned, per controller.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The controllers.
    pub fn controllers(&self) -> &[ControllerClient] {
        &self.controllers
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs = Vec::with_capacity(set.len());
    // Started together: each call has its own deadline, so the slowest bounds the refresh.
    let mut pending: Vec<_> = set.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(output) => {
                        *result = Some(output);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.extend(results.into_iter().flatten());
    outputs
}
