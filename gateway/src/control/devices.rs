//! The `Devices` call of the control API: `xdpgate devices …` (`docs/PROTOCOL.md` §15).
use tonic::Status;
use tracing::{info, warn};
use xdpgate_proto::control::v1 as pb;

use crate::{
    controller::Controller, decisions::devices::DeviceAdminError, store::devices::DeviceRecord,
};

/// Maps the device commands' errors to gRPC statuses, in one place.
fn status(err: DeviceAdminError) -> Status {
    match err {
        DeviceAdminError::Invalid(why) => Status::invalid_argument(why),
        DeviceAdminError::NotFound(why) => Status::not_found(why),
        err @ DeviceAdminError::WrongPin { .. } => Status::permission_denied(err.to_string()),
        err @ DeviceAdminError::PinLocked { .. } => Status::resource_exhausted(err.to_string()),
        other => {
            warn!(error = %other, "device administration failed");
            Status::internal(other.to_string())
        }
    }
}

fn device(d: DeviceRecord) -> pb::Device {
    pb::Device {
        client: d.client_id,
        name: d.name,
        fingerprint: d.fingerprint,
        state: d.state.as_str().to_owned(),
        first_seen_unix_ms: d.first_seen_unix_ms,
        last_seen_unix_ms: d.last_seen_unix_ms,
        source: d.source,
        approved_by: d.approved_by,
        changed_unix_ms: d.changed_unix_ms,
    }
}

/// Runs one device command.
pub(super) async fn handle(
    controller: &Controller,
    request: pb::DevicesRequest,
) -> Result<pb::DevicesResponse, Status> {
    let approvals = &controller.approvals;
    let need = |what: &str, value: &str| {
        if value.trim().is_empty() {
            Err(Status::invalid_argument(format!("{what} is required")))
        } else {
            Ok(())
        }
    };
    let mut answer = pb::DevicesResponse::default();
    match request.action.as_str() {
        "list" => {
            let client = Some(request.client.as_str()).filter(|c| !c.is_empty());
            let (devices, over) = approvals.devices_list(client).await.map_err(status)?;
            answer.devices = devices.into_iter().map(device).collect();
            answer.override_until_unix_ms = over.until_unix_ms;
        }
        "approve" => {
            need("client", &request.client)?;
            need("device", &request.device)?;
            need("--pin", &request.pin)?;
            let approved = approvals
                .devices_approve(&request.client, &request.device, &request.pin)
                .await
                .map_err(status)?;
            info!(client_id = %request.client, fingerprint = %approved.fingerprint, "device approved");
            answer.devices = vec![device(approved)];
        }
        "remove" => {
            need("client", &request.client)?;
            need("device", &request.device)?;
            let (removed, closed) = approvals
                .devices_remove(&request.client, &request.device)
                .await
                .map_err(status)?;
            info!(client_id = %request.client, fingerprint = %removed.fingerprint, closed, "device removed");
            answer.devices = vec![device(removed)];
            answer.openings_closed = u32::try_from(closed).unwrap_or(u32::MAX);
        }
        "override" => {
            let over = approvals
                .devices_override(request.hours)
                .await
                .map_err(status)?;
            answer.override_until_unix_ms = over.until_unix_ms;
        }
        "require" => {
            let over = approvals.devices_require().await.map_err(status)?;
            answer.override_until_unix_ms = over.until_unix_ms;
        }
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown device action {other:?}"
            )));
        }
    }
    Ok(answer)
}
