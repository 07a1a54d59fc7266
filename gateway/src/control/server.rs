//! The control API served by the controller on a Unix socket (mode 0600).
use std::{net::IpAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use xdpgate_proto::control::v1::{self as pb, control_server::ControlServer};

use crate::{
    controller::Controller,
    decisions::ClientAdminError,
    gate::GateError,
    openings::{OpeningView, OpeningsError},
    store::{AuditKind, AuditTable, StoreError},
};

/// The most audit events one call returns.
const MAX_AUDIT_TAIL: u32 = 10_000;

/// The longest connect window an admin may grant in one call (7 days).
const MAX_ADMIN_TTL_SECS: u32 = 7 * 86_400;

/// Implementation of `xdpgate.control.v1.Control`.
pub struct ControlService {
    controller: Arc<Controller>,
}

/// Serves the control API on `socket` until `shutdown` resolves.
pub async fn serve(
    controller: Arc<Controller>,
    socket: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), std::io::Error> {
    let listener = bind_private(socket)?;
    info!(socket = %socket.display(), "control API listening");
    tonic::transport::Server::builder()
        .add_service(ControlServer::new(ControlService { controller }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(std::io::Error::other)
}

/// Binds a Unix socket that only its owner (root) can use: parent folder 0700 if we create
/// it, socket 0600 from the start (umask), a stale socket file replaced.
pub(crate) fn bind_private(socket: &Path) -> Result<tokio::net::UnixListener, std::io::Error> {
    if let Some(parent) = socket.parent().filter(|p| !p.exists()) {
        std::fs::create_dir_all(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running controller", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    let listener = bound?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Maps internal errors to gRPC statuses, in one place.
fn status_of(err: OpeningsError) -> Status {
    match err {
        OpeningsError::BadAddress(_) => Status::invalid_argument(err.to_string()),
        OpeningsError::Sealed => Status::failed_precondition(err.to_string()),
        OpeningsError::Gate(GateError::OpeningsFull(_)) => {
            Status::resource_exhausted(err.to_string())
        }
        other => {
            warn!(error = %other, "control request failed");
            Status::internal(other.to_string())
        }
    }
}

fn admin_status(err: ClientAdminError) -> Status {
    match err {
        ClientAdminError::Invalid(reason) => Status::invalid_argument(reason),
        ClientAdminError::Store(StoreError::NotFound(what)) => {
            Status::not_found(format!("{what} not found"))
        }
        ClientAdminError::Store(StoreError::Exists(what)) => {
            Status::already_exists(format!("{what} exists already"))
        }
        other => {
            warn!(error = %other, "client administration failed");
            Status::internal(other.to_string())
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn gate_status(err: GateError) -> Status {
    status_of(OpeningsError::Gate(err))
}

fn parse_ip(text: &str) -> Result<IpAddr, Status> {
    text.trim()
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{text:?} is not an IP address")))
}

impl ControlService {
    fn notices_response(
        &self,
        record: &crate::store::NoticeRecord,
    ) -> Result<pb::NoticesStatusResponse, Status> {
        let state_json =
            serde_json::to_string(record).map_err(|err| Status::internal(err.to_string()))?;
        let counters = self
            .controller
            .shutdown
            .counters()
            .into_iter()
            .map(|(name, value)| pb::Counter { name, value })
            .collect();
        let url = self
            .controller
            .live()
            .config
            .notices
            .as_ref()
            .map(|n| n.url.clone())
            .unwrap_or_default();
        Ok(pb::NoticesStatusResponse {
            url,
            state_json,
            counters,
        })
    }

    fn server_id(&self, name: &str) -> Result<Option<u32>, Status> {
        if name.is_empty() {
            return Ok(None);
        }
        self.controller
            .live()
            .config
            .server(name)
            .map(|s| Some(s.id))
            .ok_or_else(|| Status::not_found(format!("no server named {name:?}")))
    }

    fn opening_message(&self, view: &OpeningView) -> pb::Opening {
        let record = &view.record;
        let server = self
            .controller
            .live()
            .config
            .server_by_id(record.id.server_id)
            .map_or_else(|| format!("#{}", record.id.server_id), |s| s.name.clone());
        let last_seen = view.kernel.filter(|k| k.last_seen_ns != 0).map_or_else(
            || {
                if record.last_seen_ms == 0 {
                    0
                } else {
                    view.clocks.boot_ms_to_unix_ms(record.last_seen_ms)
                }
            },
            |k| view.clocks.mono_ns_to_unix_ms(k.last_seen_ns),
        );
        pb::Opening {
            server,
            address: record.id.addr.to_string(),
            created_unix_ms: record.created_unix_ms,
            expires_unix_ms: view.kernel.map_or_else(
                || view.clocks.boot_ms_to_unix_ms(record.expiry_ms()),
                |k| view.clocks.mono_ns_to_unix_ms(k.expires_at_ns),
            ),
            deadline_unix_ms: view.clocks.boot_ms_to_unix_ms(record.deadline_ms()),
            last_seen_unix_ms: last_seen,
            holders: u32::try_from(record.holders.len()).unwrap_or(u32::MAX),
            in_kernel: view.kernel.is_some(),
        }
    }

    async fn servers_with_stats(&self) -> Result<Vec<pb::Server>, Status> {
        let live = self.controller.live();
        let indexes: Vec<u32> = live.services.iter().map(|s| s.stats_index).collect();
        let stats = self
            .controller
            .gate
            .run(move |maps| {
                indexes
                    .into_iter()
                    .map(|i| maps.service_stats(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(gate_status)?
            .map_err(gate_status)?;
        let mut servers = Vec::new();
        for server in &live.config.servers {
            let services = live
                .services
                .iter()
                .zip(&stats)
                .filter(|(planned, _)| planned.server_id == server.id)
                .map(|(planned, stat)| pb::Service {
                    protocol: planned.service.protocol.name().to_owned(),
                    port: u32::from(planned.service.port),
                    address: planned
                        .service
                        .address
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    passed: stat.passed,
                    dropped: stat.dropped,
                })
                .collect();
            servers.push(pb::Server {
                name: server.name.clone(),
                id: server.id,
                services,
                connect_window_secs: secs(server.connect_window),
                idle_timeout_secs: secs(server.idle_timeout),
                max_lifetime_secs: secs(server.max_lifetime),
            });
        }
        Ok(servers)
    }
}

impl ControlService {
    /// Every guarded interface as the kernel has it now (checked and repaired first).
    async fn interfaces_now(&self) -> Vec<pb::Interface> {
        let links = self.controller.links.clone();
        let statuses = tokio::task::spawn_blocking(move || links.check())
            .await
            .unwrap_or_default();
        statuses
            .into_iter()
            .map(|s| pb::Interface {
                name: s.interface,
                mode: s.mode,
                serving: s.serving,
                kernel: s.kernel.to_string(),
                note: s.note,
            })
            .collect()
    }
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn add_opening(
        &self,
        request: Request<pb::AddOpeningRequest>,
    ) -> Result<Response<pb::AddOpeningResponse>, Status> {
        let request = request.into_inner();
        let live = self.controller.live();
        let server = live
            .config
            .server(&request.server)
            .ok_or_else(|| Status::not_found(format!("no server named {:?}", request.server)))?;
        let addr = parse_ip(&request.address)?;
        if request.ttl_secs == 0 || request.ttl_secs > MAX_ADMIN_TTL_SECS {
            return Err(Status::invalid_argument(format!(
                "ttl must be between 1 and {MAX_ADMIN_TTL_SECS} seconds"
            )));
        }
        let origin = if request.origin.is_empty() {
            "admin"
        } else {
            request.origin.as_str()
        };
        let ttl = Duration::from_secs(u64::from(request.ttl_secs));
        let record = self
            .controller
            .openings
            .grant(server, addr, origin, ttl)
            .await
            .map_err(status_of)?;
        let view = OpeningView {
            record,
            kernel: None,
            clocks: crate::clock::ClockPair::now(),
        };
        Ok(Response::new(pb::AddOpeningResponse {
            opening: Some(self.opening_message(&view)),
        }))
    }

    async fn revoke_opening(
        &self,
        request: Request<pb::RevokeOpeningRequest>,
    ) -> Result<Response<pb::RevokeOpeningResponse>, Status> {
        let request = request.into_inner();
        let server_id = self.server_id(&request.server)?;
        let addr = parse_ip(&request.address)?;
        let revoked = self
            .controller
            .openings
            .revoke_address(server_id, addr)
            .await
            .map_err(status_of)?;
        info!(client_ip = %addr, revoked, "openings revoked by admin");
        Ok(Response::new(pb::RevokeOpeningResponse {
            revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn list_openings(
        &self,
        request: Request<pb::ListOpeningsRequest>,
    ) -> Result<Response<pb::ListOpeningsResponse>, Status> {
        let server_id = self.server_id(&request.into_inner().server)?;
        let views = self.controller.openings.list().await.map_err(status_of)?;
        let openings = views
            .iter()
            .filter(|v| server_id.is_none_or(|id| id == v.record.id.server_id))
            .map(|v| self.opening_message(v))
            .collect();
        Ok(Response::new(pb::ListOpeningsResponse { openings }))
    }

    async fn list_servers(
        &self,
        _request: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        Ok(Response::new(pb::ListServersResponse {
            servers: self.servers_with_stats().await?,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let servers = self.servers_with_stats().await?;
        let (counters, openings) = self
            .controller
            .gate
            .run(|maps| Ok::<_, GateError>((maps.global_counters()?, maps.openings()?)))
            .await
            .map_err(gate_status)?
            .map_err(gate_status)?;
        let openings_v4 = openings.iter().filter(|o| o.addr.is_ipv4()).count();
        Ok(Response::new(pb::StatusResponse {
            servers,
            parse_counters: counters
                .into_iter()
                .map(|(counter, value)| pb::Counter {
                    name: counter.name().to_owned(),
                    value,
                })
                .collect(),
            interfaces: self.interfaces_now().await,
            openings_v4: u32::try_from(openings_v4).unwrap_or(u32::MAX),
            openings_v6: u32::try_from(openings.len() - openings_v4).unwrap_or(u32::MAX),
            approval_counters: self
                .controller
                .approvals
                .metrics()
                .into_iter()
                .map(|(name, value)| pb::Counter { name, value })
                .collect(),
        }))
    }

    async fn reload(
        &self,
        _request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        match self.controller.reload().await {
            Ok(report) => Ok(Response::new(pb::ReloadResponse {
                summary: report.to_string(),
                services: u32::try_from(report.services).unwrap_or(u32::MAX),
                closed_openings: u32::try_from(report.closed_openings).unwrap_or(u32::MAX),
                added_servers: report.added,
                removed_servers: report.removed,
                changed_servers: report.changed,
            })),
            Err(err) => {
                warn!(error = %err, "reload refused");
                Err(Status::failed_precondition(err.to_string()))
            }
        }
    }

    async fn rotate_box_key(
        &self,
        request: Request<pb::RotateBoxKeyRequest>,
    ) -> Result<Response<pb::RotateBoxKeyResponse>, Status> {
        let overlap = std::time::Duration::from_secs(request.into_inner().overlap_secs);
        let approvals = self.controller.approvals.clone();
        let rotated = tokio::task::spawn_blocking(move || approvals.rotate_box_key(overlap))
            .await
            .map_err(|err| Status::internal(err.to_string()))?;
        match rotated {
            Ok((public, until)) => Ok(Response::new(pb::RotateBoxKeyResponse {
                public_key: public.to_base64(),
                previous_until: until,
            })),
            Err(err @ crate::decisions::box_key::BoxKeyError::Overlap) => {
                Err(Status::invalid_argument(err.to_string()))
            }
            Err(err @ crate::decisions::box_key::BoxKeyError::RotationInProgress { .. }) => {
                Err(Status::failed_precondition(err.to_string()))
            }
            Err(err) => {
                warn!(error = %err, "box key rotation failed");
                Err(Status::internal(err.to_string()))
            }
        }
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let owner_ok = self.controller.gate.run(|_| ()).await.is_ok();
        let mut reasons: Vec<String> = self
            .interfaces_now()
            .await
            .into_iter()
            .filter(|i| !i.serving)
            .map(|i| {
                format!(
                    "{}: {}",
                    i.name,
                    if i.note.is_empty() {
                        &i.kernel
                    } else {
                        &i.note
                    }
                )
            })
            .collect();
        if !owner_ok {
            reasons.push("the map owner does not answer".to_owned());
        }
        Ok(Response::new(pb::HealthResponse {
            status: if reasons.is_empty() {
                "serving"
            } else {
                "not_serving"
            }
            .to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.controller.started.elapsed().as_secs(),
            reason: reasons.join("; "),
        }))
    }

    async fn add_client(
        &self,
        request: Request<pb::AddClientRequest>,
    ) -> Result<Response<pb::AddClientResponse>, Status> {
        let request = request.into_inner();
        let (link, expires_unix) = self
            .controller
            .approvals
            .add_client(&request.name, &request.servers)
            .await
            .map_err(admin_status)?;
        info!(client_id = %request.name, servers = ?request.servers, "client added; enrollment link issued");
        Ok(Response::new(pb::AddClientResponse {
            enrollment_link: link.to_string(),
            expires_unix,
        }))
    }

    async fn reenroll_client(
        &self,
        request: Request<pb::ReenrollClientRequest>,
    ) -> Result<Response<pb::AddClientResponse>, Status> {
        let request = request.into_inner();
        let (link, expires_unix) = self
            .controller
            .approvals
            .reenroll_client(&request.name)
            .await
            .map_err(admin_status)?;
        info!(client_id = %request.name, "re-enrollment link issued");
        Ok(Response::new(pb::AddClientResponse {
            enrollment_link: link.to_string(),
            expires_unix,
        }))
    }

    async fn list_clients(
        &self,
        _request: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let clients = self
            .controller
            .approvals
            .list_clients()
            .await
            .map_err(admin_status)?;
        let clients = clients
            .into_iter()
            .map(|c| pb::Client {
                name: c.client_id,
                servers: c.servers,
                enabled: c.enabled,
                enrolled: c.enrollment.is_some(),
                device_name: c
                    .enrollment
                    .as_ref()
                    .map(|e| e.device_name.clone())
                    .unwrap_or_default(),
                created_unix: c.created_unix,
                enrolled_unix: c.enrollment.as_ref().map_or(0, |e| e.enrolled_unix),
            })
            .collect();
        Ok(Response::new(pb::ListClientsResponse { clients }))
    }

    async fn set_client_enabled(
        &self,
        request: Request<pb::SetClientEnabledRequest>,
    ) -> Result<Response<pb::ClientChangeResponse>, Status> {
        let request = request.into_inner();
        let closed = self
            .controller
            .approvals
            .set_enabled(&request.name, request.enabled)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::ClientChangeResponse {
            openings_closed: count(closed),
        }))
    }

    async fn remove_client(
        &self,
        request: Request<pb::RemoveClientRequest>,
    ) -> Result<Response<pb::ClientChangeResponse>, Status> {
        let closed = self
            .controller
            .approvals
            .remove_client(&request.into_inner().name)
            .await
            .map_err(admin_status)?;
        Ok(Response::new(pb::ClientChangeResponse {
            openings_closed: count(closed),
        }))
    }

    async fn audit_tail(
        &self,
        request: Request<pb::AuditTailRequest>,
    ) -> Result<Response<pb::AuditTailResponse>, Status> {
        let request = request.into_inner();
        let wanted = request.count.clamp(1, MAX_AUDIT_TAIL);
        let table = if request.samples {
            AuditTable::Samples
        } else {
            AuditTable::Decisions
        };
        let before = (request.before > 0).then_some(request.before);
        let page = self
            .controller
            .approvals
            .audit_page(table, before, usize::try_from(wanted).unwrap_or(usize::MAX))
            .await
            .map_err(admin_status)?;
        let events = page
            .events
            .into_iter()
            .map(|(seq, e)| pb::AuditEvent {
                unix_ms: e.unix_ms,
                kind: match e.kind {
                    AuditKind::Approval => "approval",
                    AuditKind::Enrollment => "enrollment",
                    AuditKind::Client => "client",
                    AuditKind::Notice => "notice",
                    AuditKind::Device => "device",
                }
                .to_owned(),
                client_id: e.client_id,
                remote: e.remote,
                server: e.server,
                verdict: e.verdict,
                code: e.code,
                reason: e.reason,
                seq,
            })
            .collect();
        let failures = self
            .controller
            .approvals
            .audit()
            .failure_counts()
            .into_iter()
            .map(|f| pb::FailureCount {
                reason: f.reason.to_owned(),
                prefix: f.prefix,
                count: f.count,
            })
            .collect();
        Ok(Response::new(pb::AuditTailResponse {
            events,
            next_before: page.next_before.unwrap_or(0),
            failures,
        }))
    }

    async fn notices_status(
        &self,
        _request: Request<pb::NoticesStatusRequest>,
    ) -> Result<Response<pb::NoticesStatusResponse>, Status> {
        Ok(Response::new(
            self.notices_response(&self.controller.shutdown.current())?,
        ))
    }

    async fn notices_clear(
        &self,
        _request: Request<pb::NoticesClearRequest>,
    ) -> Result<Response<pb::NoticesStatusResponse>, Status> {
        let record = self.controller.shutdown.clear().await.map_err(|err| {
            warn!(error = %err, "clearing the shutdown state failed");
            Status::internal(err.to_string())
        })?;
        info!("operator cleared the self-shutdown state");
        Ok(Response::new(self.notices_response(&record)?))
    }

    async fn devices(
        &self,
        request: Request<pb::DevicesRequest>,
    ) -> Result<Response<pb::DevicesResponse>, Status> {
        super::devices::handle(&self.controller, request.into_inner())
            .await
            .map(Response::new)
    }
}
