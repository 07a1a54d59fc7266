//! What a configuration reload (`SIGHUP`, `xdpgate reload`) may change, and the plan that
//! applies it: which settings need a restart instead, which servers come and go, and the
//! kernel services of the new configuration with every kept service in its old counter slot.
use std::collections::{BTreeSet, HashMap};

use gateway_common::ServiceKey;

use crate::{
    config::{Config, ConfigError, ServerConfig, ServiceConfig},
    gate::plan::{PlannedService, plan_services},
};

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The controller was started without a configuration file to read again.
    #[error("this controller was started without a configuration file; nothing to reload")]
    NoFile,
    /// The file is invalid (the message names its line and reason).
    #[error("the new configuration is invalid, nothing changed: {0}")]
    Invalid(#[from] ConfigError),
    /// Settings that only a restart applies were changed.
    #[error(
        "{} changed; these need a restart (`systemctl restart xdpgate`), nothing changed",
        .0.join(", ")
    )]
    NeedsRestart(Vec<String>),
    /// Applying the new services to the kernel failed (the old ones may be partly replaced;
    /// the next reload or restart writes them all again).
    #[error("writing the new services to the gate failed: {0}")]
    Gate(String),
}

/// What a reload did, for the operator and the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Servers that are new.
    pub added: Vec<String>,
    /// Servers that are gone (their openings are closed).
    pub removed: Vec<String>,
    /// Servers whose settings or services changed (their openings are kept).
    pub changed: Vec<String>,
    /// Guarded services after the reload.
    pub services: usize,
    /// Openings closed because their server is gone.
    pub closed_openings: usize,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "reloaded: {} service(s); servers added: {}; removed: {}; changed: {}; openings closed: {}",
            self.services,
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.closed_openings
        )
    }
}

/// The settings that differ between `old` and `new` and that only a restart applies: the
/// interfaces and attach mode, where state, pins and sockets live, map capacity, listeners,
/// the cluster API, notices, the audit retention and a server id given to another name.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    check("interfaces", old.interfaces != new.interfaces);
    check("xdp_mode", old.xdp_mode != new.xdp_mode);
    check("state_dir", old.state_dir != new.state_dir);
    check("bpffs_dir", old.bpffs_dir != new.bpffs_dir);
    check("control_socket", old.control_socket != new.control_socket);
    check(
        "sweep_interval_ms",
        old.sweep_interval != new.sweep_interval,
    );
    check("max_openings", old.max_openings != new.max_openings);
    check("metrics_listen", old.metrics_listen != new.metrics_listen);
    check(
        "approvals.front_socket",
        old.approvals.front_socket != new.approvals.front_socket,
    );
    check(
        "approvals.front_socket_user",
        old.approvals.front_socket_user != new.approvals.front_socket_user,
    );
    check(
        "approvals.audit_retention",
        old.approvals.audit_retention != new.approvals.audit_retention,
    );
    check("[cluster]", old.cluster != new.cluster);
    check("[notices]", old.notices != new.notices);
    for server in &new.servers {
        if let Some(before) = old.server_by_id(server.id)
            && before.name != server.name
        {
            changed.push(format!(
                "server id {} (was {:?}, now {:?}: an id is never given to another server)",
                server.id, before.name, server.name
            ));
        }
    }
    changed
}

/// Servers of `new` that `old` lacks, servers of `old` that `new` lacks, and servers in both
/// whose settings differ, by name.
pub fn server_changes(
    old: &[ServerConfig],
    new: &[ServerConfig],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let old_by_id: HashMap<u32, &ServerConfig> = old.iter().map(|s| (s.id, s)).collect();
    let new_ids: BTreeSet<u32> = new.iter().map(|s| s.id).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for server in new {
        match old_by_id.get(&server.id) {
            None => added.push(server.name.clone()),
            Some(before) if *before != server => changed.push(server.name.clone()),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|s| !new_ids.contains(&s.id))
        .map(|s| s.name.clone())
        .collect();
    (added, removed, changed)
}

/// The kernel services of `config`, each (server, service) that `previous` had keeping its
/// counter slot (so its counters go on), new ones in the lowest free slots.
pub fn plan_services_keeping(config: &Config, previous: &[PlannedService]) -> Vec<PlannedService> {
    let fresh = plan_services(config);
    let kept: HashMap<(u32, ServiceConfig), u32> = previous
        .iter()
        .map(|p| ((p.server_id, p.service), p.stats_index))
        .collect();
    let mut used: BTreeSet<u32> = fresh
        .iter()
        .filter_map(|p| kept.get(&(p.server_id, p.service)).copied())
        .collect();
    let mut next_free = 0u32;
    fresh
        .into_iter()
        .map(|mut planned| {
            if let Some(slot) = kept.get(&(planned.server_id, planned.service)) {
                planned.stats_index = *slot;
            } else {
                while used.contains(&next_free) {
                    next_free += 1;
                }
                planned.stats_index = next_free;
                used.insert(next_free);
            }
            planned
        })
        .collect()
}

/// The slots `new` uses that `previous` used for another service (or not at all): their
/// counters start from zero.
pub fn reassigned_slots(previous: &[PlannedService], new: &[PlannedService]) -> Vec<u32> {
    let before: HashMap<u32, (u32, ServiceConfig)> = previous
        .iter()
        .map(|p| (p.stats_index, (p.server_id, p.service)))
        .collect();
    new.iter()
        .filter(|p| before.get(&p.stats_index) != Some(&(p.server_id, p.service)))
        .map(|p| p.stats_index)
        .collect()
}

/// The kernel keys of `planned`, for logs.
pub fn keys(planned: &[PlannedService]) -> Vec<ServiceKey> {
    planned
        .iter()
        .flat_map(|p| p.keys.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(servers: &str) -> Config {
        let text =
            format!("[controller]\ninterfaces = [\"eth0\"]\nstate_dir = \"/tmp/s\"\n\n{servers}");
        Config::parse(&text, Path::new("test.toml")).expect("test config is valid")
    }

    const A: &str =
        "[[server]]\nname = \"a\"\nid = 1\n[[server.service]]\nprotocol = \"udp\"\nport = 1194\n";
    const B: &str =
        "[[server]]\nname = \"b\"\nid = 2\n[[server.service]]\nprotocol = \"udp\"\nport = 1195\n";
    const C: &str =
        "[[server]]\nname = \"c\"\nid = 3\n[[server.service]]\nprotocol = \"tcp\"\nport = 443\n";

    #[test]
    fn kept_services_keep_their_slots_and_new_ones_take_free_ones() {
        let old = config(&format!("{A}{B}"));
        let before = plan_services(&old);
        let new = config(&format!("{B}{C}"));
        let after = plan_services_keeping(&new, &before);
        let slot = |plan: &[PlannedService], id: u32| {
            plan.iter()
                .find(|p| p.server_id == id)
                .map(|p| p.stats_index)
        };
        assert_eq!(slot(&after, 2), slot(&before, 2), "b keeps its slot");
        assert_eq!(slot(&after, 3), slot(&before, 1), "c takes a's freed slot");
        assert_eq!(reassigned_slots(&before, &after), vec![0]);
        let (added, removed, changed) = server_changes(&old.servers, &new.servers);
        assert_eq!(
            (added, removed, changed),
            (vec!["c".into()], vec!["a".into()], vec![])
        );
    }

    #[test]
    fn fixed_settings_and_reused_ids_need_a_restart() {
        let old = config(A);
        let mut new = config(A);
        assert!(restart_needed(&old, &new).is_empty());
        new.interfaces = vec!["eth1".into()];
        new.bpffs_dir = "/sys/fs/bpf/other".into();
        assert_eq!(restart_needed(&old, &new), vec!["interfaces", "bpffs_dir"]);
        let renamed = config(&A.replace("\"a\"", "\"z\""));
        let refused = restart_needed(&old, &renamed);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("server id 1"), "{refused:?}");
    }

    #[test]
    fn a_changed_timing_is_a_changed_server() {
        let old = config(A);
        let new = config(&A.replace("id = 1\n", "id = 1\nidle_timeout_secs = 30\n"));
        let (added, removed, changed) = server_changes(&old.servers, &new.servers);
        assert!(added.is_empty() && removed.is_empty());
        assert_eq!(changed, vec!["a".to_owned()]);
    }
}
