//! `xdpgate devices …` (the operator) and `xdpgate client device …` (the user's device):
//! device authentication, `docs/PROTOCOL.md` §15.
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Subcommand;
use xdpgate_proto::control::v1 as pb;

use std::path::Path;

use xdpgate::{clock::unix_ms, control};

/// `xdpgate devices …`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Devices waiting for approval (every client), with the override window.
    Pending,
    /// Every device (of one client, or of all), with its state.
    List {
        /// Only this client's devices.
        client: Option<String>,
    },
    /// Approve a pending (or removed) device: the PIN its user sees must match.
    Approve {
        /// Client name.
        client: String,
        /// Device name, or fingerprint (a prefix of at least 8 hex digits will do).
        device: String,
        /// The 4-digit PIN the device's user reads you.
        #[arg(long)]
        pin: String,
    },
    /// Remove a device: an approved one is refused from now on and its openings close at once.
    Remove {
        /// Client name.
        client: String,
        /// Device name, or fingerprint (prefix of at least 8 hex digits).
        device: String,
    },
    /// Approve every new device without a PIN for some hours (each automatic approval is
    /// audited); `devices require` ends it sooner.
    Override {
        /// How long, 1 to 168.
        #[arg(long, default_value_t = 8)]
        hours: u32,
    },
    /// End the override window: new devices need a PIN approval again.
    Require,
}

/// `xdpgate client device …`
#[derive(Debug, Subcommand)]
pub enum ClientDeviceCommand {
    /// Print this device's key fingerprint and PIN (the key is made in the TPM).
    Show {
        /// A profile whose TPM to use (its `device_tcti`).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// The TPM's TCTI (default: the profile's, `XDPGATE_TCTI`, or `device:/dev/tpmrm0`).
        #[arg(long)]
        tcti: Option<String>,
    },
    /// Make a profile sign every approval request with this device's TPM key.
    Enable {
        /// The profile written by `client enroll`.
        #[arg(long)]
        profile: PathBuf,
        /// The TPM's TCTI (default: `XDPGATE_TCTI`, or `device:/dev/tpmrm0`).
        #[arg(long)]
        tcti: Option<String>,
    },
}

/// Runs `xdpgate client device …`.
pub fn run_client(command: ClientDeviceCommand) -> anyhow::Result<String> {
    Ok(match command {
        ClientDeviceCommand::Show { profile, tcti } => {
            xdpgate::client::device::show(profile.as_deref(), tcti.as_deref())?
        }
        ClientDeviceCommand::Enable { profile, tcti } => {
            xdpgate::client::device::enable(&profile, tcti.as_deref())?
        }
    })
}

/// Runs `xdpgate devices …`.
pub async fn run(socket: &Path, command: DevicesCommand) -> anyhow::Result<String> {
    let pending_only = matches!(command, DevicesCommand::Pending);
    let request = match command {
        DevicesCommand::Pending => action("list"),
        DevicesCommand::List { client } => pb::DevicesRequest {
            client: client.unwrap_or_default(),
            ..action("list")
        },
        DevicesCommand::Approve {
            client,
            device,
            pin,
        } => pb::DevicesRequest {
            client,
            device,
            pin,
            ..action("approve")
        },
        DevicesCommand::Remove { client, device } => pb::DevicesRequest {
            client,
            device,
            ..action("remove")
        },
        DevicesCommand::Override { hours } => pb::DevicesRequest {
            hours,
            ..action("override")
        },
        DevicesCommand::Require => action("require"),
    };
    let kind = request.action.clone();
    let mut client = control::connect(socket).await?;
    let answer = client.devices(request).await?.into_inner();
    Ok(render(&kind, pending_only, &answer))
}

fn action(name: &str) -> pb::DevicesRequest {
    pb::DevicesRequest {
        action: name.to_owned(),
        ..Default::default()
    }
}

fn render(kind: &str, pending_only: bool, answer: &pb::DevicesResponse) -> String {
    let now = unix_ms();
    let mut out = String::new();
    match kind {
        "approve" => {
            for d in &answer.devices {
                let _ = writeln!(
                    out,
                    "approved device {:?} of {} ({})",
                    d.name, d.client, d.fingerprint
                );
            }
        }
        "remove" => {
            for d in &answer.devices {
                let _ = writeln!(
                    out,
                    "removed device {:?} of {} ({}); {} opening(s) closed",
                    d.name, d.client, d.fingerprint, answer.openings_closed
                );
            }
        }
        "override" | "require" => {
            out.push_str(&override_line(answer.override_until_unix_ms, now));
        }
        _ => {
            out.push_str(&override_line(answer.override_until_unix_ms, now));
            let rows: Vec<&pb::Device> = answer
                .devices
                .iter()
                .filter(|d| !pending_only || d.state == "pending")
                .collect();
            if rows.is_empty() {
                out.push_str(if pending_only {
                    "no device is pending\n"
                } else {
                    "no devices\n"
                });
            }
            for d in rows {
                let pin_note = if d.state == "pending" {
                    " (approve with the PIN its user sees)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "{client}\t{name:?}\t{state}{by}\t{fp}\tfirst seen {first}s ago, last seen {last}s ago from {source}{pin_note}",
                    client = d.client,
                    name = d.name,
                    state = d.state,
                    by = if d.approved_by.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.approved_by)
                    },
                    fp = d.fingerprint,
                    first = now.saturating_sub(d.first_seen_unix_ms) / 1000,
                    last = now.saturating_sub(d.last_seen_unix_ms) / 1000,
                    source = d.source,
                );
            }
        }
    }
    out
}

fn override_line(until_ms: u64, now_ms: u64) -> String {
    if until_ms > now_ms {
        format!(
            "override: ON, new devices are approved without a PIN for {} more minute(s) (unix {})\n",
            (until_ms - now_ms).div_ceil(60_000),
            until_ms / 1000
        )
    } else {
        "override: off (new devices need a PIN approval)\n".to_owned()
    }
}
