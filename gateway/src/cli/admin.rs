//! Admin CLI commands: talk to the controller's control API and print the answers.
use std::{
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Context as _;
use xdpgate_proto::control::v1 as pb;

use xdpgate::{clock::unix_ms, control};

/// `xdpgate servers list`.
pub async fn servers_list(socket: &Path) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let servers = client
        .list_servers(pb::ListServersRequest {})
        .await?
        .into_inner()
        .servers;
    Ok(render_servers(&servers))
}

/// `xdpgate reload`.
pub async fn reload(socket: &Path) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let report = client
        .reload(pb::ReloadRequest {})
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    Ok(format!("{}\n", report.summary))
}

/// `xdpgate keys rotate`.
pub async fn keys_rotate(socket: &Path, overlap_secs: u64) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let rotated = client
        .rotate_box_key(pb::RotateBoxKeyRequest { overlap_secs })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    Ok(format!(
        "new box public key {}\nthe previous key opens requests until {} (Unix seconds); clients that ask before then learn the new key from their answer\n",
        rotated.public_key, rotated.previous_until
    ))
}

/// `xdpgate openings add`.
pub async fn openings_add(
    socket: &Path,
    server: &str,
    ip: IpAddr,
    ttl_secs: u32,
) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let request = pb::AddOpeningRequest {
        server: server.to_owned(),
        address: ip.to_string(),
        ttl_secs,
        origin: "admin".to_owned(),
    };
    let opening = client
        .add_opening(request)
        .await?
        .into_inner()
        .opening
        .context("controller answered without the opening")?;
    Ok(format!(
        "opened {} on {} until {} ({} holder(s))\n",
        opening.address,
        opening.server,
        format_unix_ms(opening.expires_unix_ms),
        opening.holders
    ))
}

/// `xdpgate openings revoke`.
pub async fn openings_revoke(
    socket: &Path,
    server: Option<&str>,
    ip: IpAddr,
) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let request = pb::RevokeOpeningRequest {
        server: server.unwrap_or_default().to_owned(),
        address: ip.to_string(),
    };
    let revoked = client.revoke_opening(request).await?.into_inner().revoked;
    Ok(format!("revoked {revoked} opening(s) of {ip}\n"))
}

/// `xdpgate openings list`.
pub async fn openings_list(socket: &Path, server: Option<&str>) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let request = pb::ListOpeningsRequest {
        server: server.unwrap_or_default().to_owned(),
    };
    let openings = client.list_openings(request).await?.into_inner().openings;
    Ok(render_openings(&openings, unix_ms()))
}

/// `xdpgate status`.
pub async fn status(socket: &Path) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let status = client.status(pb::StatusRequest {}).await?.into_inner();
    let mut out = String::new();
    for interface in &status.interfaces {
        let state = if interface.serving {
            "serving"
        } else {
            "NOT SERVING"
        };
        let _ = write!(
            out,
            "interface {} ({}): {state}; kernel: {}",
            interface.name, interface.mode, interface.kernel
        );
        let _ = if interface.note.is_empty() {
            writeln!(out)
        } else {
            writeln!(out, "; {}", interface.note)
        };
    }
    let _ = writeln!(
        out,
        "openings: {} IPv4, {} IPv6",
        status.openings_v4, status.openings_v6
    );
    out.push_str(&render_servers(&status.servers));
    let _ = writeln!(out, "parse counters:");
    for counter in &status.parse_counters {
        let _ = writeln!(out, "  {:<26} {}", counter.name, counter.value);
    }
    if !status.approval_counters.is_empty() {
        let _ = writeln!(out, "approvals since start:");
        for counter in &status.approval_counters {
            let _ = writeln!(out, "  {:<26} {}", counter.name, counter.value);
        }
    }
    Ok(out)
}

/// What `xdpgate health` found: its line and its exit code.
pub struct Health {
    /// The line to print.
    pub line: String,
    /// 0 serving, 1 not serving, 2 the controller cannot be reached.
    pub code: u8,
}

/// How long `health` waits for the controller before calling it unreachable.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `xdpgate health`: exit 0 only when serving, 1 when not serving, 2 when unreachable.
pub async fn health(socket: &Path) -> Health {
    let asked = tokio::time::timeout(HEALTH_TIMEOUT, async {
        let mut client = control::connect(socket).await?;
        anyhow::Ok(client.health(pb::HealthRequest {}).await?.into_inner())
    })
    .await;
    match asked {
        Ok(Ok(health)) if health.status == "serving" => Health {
            line: format!(
                "serving (version {}, up {}s)\n",
                health.version, health.uptime_secs
            ),
            code: 0,
        },
        Ok(Ok(health)) => Health {
            line: format!(
                "{}: {} (version {}, up {}s)\n",
                health.status,
                if health.reason.is_empty() {
                    "no reason given"
                } else {
                    &health.reason
                },
                health.version,
                health.uptime_secs
            ),
            code: 1,
        },
        Ok(Err(err)) => Health {
            line: format!("unreachable: {err:#}\n"),
            code: 2,
        },
        Err(_) => Health {
            line: format!(
                "unreachable: {} did not answer within {}s\n",
                socket.display(),
                HEALTH_TIMEOUT.as_secs()
            ),
            code: 2,
        },
    }
}

/// `xdpgate clients add`.
pub async fn clients_add(socket: &Path, name: &str, servers: &[String]) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let request = pb::AddClientRequest {
        name: name.to_owned(),
        servers: servers.to_vec(),
    };
    let answer = client.add_client(request).await?.into_inner();
    Ok(format!(
        "client {name} added. Give this single-use link to the client's owner (expires {}):\n{}\n",
        format_unix_ms(answer.expires_unix.saturating_mul(1000)),
        answer.enrollment_link
    ))
}

/// `xdpgate clients reenroll`.
pub async fn clients_reenroll(socket: &Path, name: &str) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let request = pb::ReenrollClientRequest {
        name: name.to_owned(),
    };
    let answer = client.reenroll_client(request).await?.into_inner();
    Ok(format!(
        "re-enrollment link for client {name} (single use, expires {}; redeeming it replaces the \
         client's keys and the old ones stop at once):\n{}\n",
        format_unix_ms(answer.expires_unix.saturating_mul(1000)),
        answer.enrollment_link
    ))
}

/// `xdpgate clients list`.
pub async fn clients_list(socket: &Path) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let clients = client
        .list_clients(pb::ListClientsRequest {})
        .await?
        .into_inner()
        .clients;
    if clients.is_empty() {
        return Ok("no clients\n".to_owned());
    }
    let mut out = format!(
        "{:<20} {:<8} {:<9} {:<20} {}\n",
        "NAME", "ENABLED", "ENROLLED", "DEVICE", "SERVERS"
    );
    for c in clients {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<9} {:<20} {}",
            c.name,
            if c.enabled { "yes" } else { "NO" },
            if c.enrolled { "yes" } else { "pending" },
            c.device_name,
            c.servers.join(",")
        );
    }
    Ok(out)
}

/// `xdpgate clients enable|disable`.
pub async fn clients_set_enabled(
    socket: &Path,
    name: &str,
    enabled: bool,
) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let request = pb::SetClientEnabledRequest {
        name: name.to_owned(),
        enabled,
    };
    let closed = client
        .set_client_enabled(request)
        .await?
        .into_inner()
        .openings_closed;
    let verb = if enabled { "enabled" } else { "disabled" };
    Ok(format!(
        "client {name} {verb}; {closed} opening(s) closed\n"
    ))
}

/// `xdpgate clients remove`.
pub async fn clients_remove(socket: &Path, name: &str) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let closed = client
        .remove_client(pb::RemoveClientRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .openings_closed;
    Ok(format!(
        "client {name} removed; {closed} opening(s) closed\n"
    ))
}

/// What `xdpgate audit tail` asks for.
#[derive(Clone, Copy, Debug)]
pub struct AuditQuery {
    /// Events wanted at most (`u64::MAX`: all).
    pub count: u64,
    /// Only events older than this sequence number.
    pub before: Option<u64>,
    /// The sampled unauthenticated failures instead of the decisions.
    pub samples: bool,
    /// JSON output.
    pub json: bool,
}

/// Events fetched per call.
const AUDIT_PAGE: u64 = 5_000;

/// `xdpgate audit tail`: pages through the log until `count` events or the oldest one.
pub async fn audit_tail(socket: &Path, query: &AuditQuery) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let (mut events, mut before, mut failures) =
        (Vec::new(), query.before.unwrap_or(0), Vec::new());
    loop {
        let wanted = query
            .count
            .saturating_sub(events.len() as u64)
            .min(AUDIT_PAGE);
        if wanted == 0 {
            break;
        }
        let page = client
            .audit_tail(pb::AuditTailRequest {
                count: u32::try_from(wanted).unwrap_or(u32::MAX),
                before,
                samples: query.samples,
            })
            .await?
            .into_inner();
        failures = page.failures;
        events.extend(page.events);
        before = page.next_before;
        if before == 0 {
            break;
        }
    }
    events.reverse();
    if query.json {
        let json = serde_json::json!({
            "events": events.iter().map(|e| serde_json::json!({
                "seq": e.seq, "unix_ms": e.unix_ms, "kind": e.kind, "client_id": e.client_id, "remote": e.remote,
                "server": e.server, "verdict": e.verdict, "code": e.code, "reason": e.reason,
            })).collect::<Vec<_>>(),
            "next_before": (before > 0).then_some(before),
            "unauthenticated_failures": failures.iter().map(|f| serde_json::json!({
                "reason": f.reason, "prefix": f.prefix, "count": f.count,
            })).collect::<Vec<_>>(),
        });
        return Ok(format!("{json}\n"));
    }
    let mut out = String::new();
    for e in &events {
        let _ = writeln!(
            out,
            "{} {} client={:?} ip={} server={:?} {} {} {}",
            e.unix_ms / 1000,
            e.kind,
            e.client_id,
            if e.remote.is_empty() {
                "-"
            } else {
                e.remote.as_str()
            },
            e.server,
            e.verdict,
            if e.code.is_empty() {
                "-"
            } else {
                e.code.as_str()
            },
            e.reason
        );
    }
    if before > 0 {
        let _ = writeln!(
            out,
            "-- stopped after {} events; older ones remain: add --before {before} (or use --all)",
            events.len()
        );
    }
    if !failures.is_empty() {
        let total: u64 = failures.iter().map(|f| f.count).sum();
        let _ = writeln!(
            out,
            "-- {total} unauthenticated failure(s) since start (counted, sampled with --unauthenticated):"
        );
        for f in failures.iter().take(20) {
            let _ = writeln!(out, "   {} from {}: {}", f.reason, f.prefix, f.count);
        }
    }
    Ok(out)
}

/// `xdpgate notices status` and `xdpgate notices clear`.
pub async fn notices(socket: &Path, clear: bool) -> anyhow::Result<String> {
    let mut client = control::connect(socket).await?;
    let answer = if clear {
        client.notices_clear(pb::NoticesClearRequest {}).await?
    } else {
        client.notices_status(pb::NoticesStatusRequest {}).await?
    }
    .into_inner();
    let record: xdpgate::store::NoticeRecord = serde_json::from_str(&answer.state_json)
        .context("controller sent an unreadable notice state")?;
    let mut out = String::new();
    if clear {
        out.push_str("cleared by the operator\n");
    }
    let url = if answer.url.is_empty() {
        "(not configured: no [notices] section)"
    } else {
        answer.url.as_str()
    };
    let _ = writeln!(out, "notice server: {url}");
    for (name, part) in [
        ("www", &record.www),
        ("web", &record.web),
        ("vpn", &record.vpn),
    ] {
        let state = if part.shutdown { "shutdown" } else { "running" };
        let _ = writeln!(
            out,
            "{name}: {state}{}",
            if part.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", part.message)
            }
        );
    }
    let when = |ms: u64| {
        if ms == 0 {
            "never".to_owned()
        } else {
            format_unix_ms(ms)
        }
    };
    let _ = writeln!(
        out,
        "changed: {} by {}",
        when(record.changed_unix_ms),
        if record.changed_by.is_empty() {
            "-"
        } else {
            &record.changed_by
        }
    );
    let _ = writeln!(out, "last sequence acted on: {}", record.last_sequence);
    if let Some(notice) = &record.last_notice {
        let _ = writeln!(
            out,
            "last notice: sequence {} issued {} for versions {}..={}",
            notice.sequence, notice.issued_unix, notice.affected.from, notice.affected.to
        );
    }
    let _ = writeln!(
        out,
        "last fetched: {} ({})",
        when(record.last_fetch_unix_ms),
        if record.last_outcome.is_empty() {
            "-"
        } else {
            &record.last_outcome
        }
    );
    for counter in &answer.counters {
        let _ = writeln!(out, "  {:<26} {}", counter.name, counter.value);
    }
    Ok(out)
}

fn render_servers(servers: &[pb::Server]) -> String {
    let mut out = String::new();
    for server in servers {
        let _ = writeln!(
            out,
            "server {} (id {}): connect window {}s, idle {}s, max {}s",
            server.name,
            server.id,
            server.connect_window_secs,
            server.idle_timeout_secs,
            server.max_lifetime_secs
        );
        for service in &server.services {
            let address = if service.address.is_empty() {
                "*"
            } else {
                service.address.as_str()
            };
            let _ = writeln!(
                out,
                "  {}/{} on {}: passed {} dropped {}",
                service.protocol, service.port, address, service.passed, service.dropped
            );
        }
    }
    out
}

fn render_openings(openings: &[pb::Opening], now_ms: u64) -> String {
    if openings.is_empty() {
        return "no openings\n".to_owned();
    }
    let mut out = format!(
        "{:<12} {:<40} {:>9} {:>10} {:>7} {}\n",
        "SERVER", "ADDRESS", "EXPIRES", "LAST SEEN", "HOLDERS", "KERNEL"
    );
    for o in openings {
        let expires = format!("{}s", o.expires_unix_ms.saturating_sub(now_ms) / 1000);
        let seen = if o.last_seen_unix_ms == 0 {
            "never".to_owned()
        } else {
            format!("{}s ago", now_ms.saturating_sub(o.last_seen_unix_ms) / 1000)
        };
        let kernel = if o.in_kernel { "yes" } else { "NO" };
        let _ = writeln!(
            out,
            "{:<12} {:<40} {:>9} {:>10} {:>7} {}",
            o.server, o.address, expires, seen, o.holders, kernel
        );
    }
    out
}

fn format_unix_ms(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let in_secs = at
        .duration_since(std::time::SystemTime::now())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix {} (in {in_secs}s)", ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_table_shows_relative_times_and_kernel_presence() {
        let opening = pb::Opening {
            server: "vpn1".into(),
            address: "10.0.0.2".into(),
            created_unix_ms: 1_000,
            expires_unix_ms: 61_000,
            deadline_unix_ms: 100_000,
            last_seen_unix_ms: 0,
            holders: 2,
            in_kernel: false,
        };
        let table = render_openings(&[opening], 1_000);
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("vpn1") && row.contains("10.0.0.2"), "{row}");
        assert!(
            row.contains("60s") && row.contains("never") && row.ends_with("NO"),
            "{row}"
        );
        assert_eq!(render_openings(&[], 0), "no openings\n");
    }
}
