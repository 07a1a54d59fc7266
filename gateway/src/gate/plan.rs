//! The kernel services of a configuration: each guarded (protocol, port, address) of each
//! server as `SERVICES` keys with its counter slot in `SVC_STATS`.
use std::net::IpAddr;

use gateway_common::{ServiceKey, ServiceValue};

use super::KernelService;
use crate::config::{Config, ServiceConfig};

/// A guarded service as planned for the kernel.
#[derive(Clone, Debug)]
pub struct PlannedService {
    /// Owning server id.
    pub server_id: u32,
    /// The configured service.
    pub service: ServiceConfig,
    /// Its counter slot in `SVC_STATS`.
    pub stats_index: u32,
    /// Its kernel keys: one, or two (IPv4 and IPv6) for an any-address service.
    pub keys: Vec<ServiceKey>,
}

impl PlannedService {
    /// The kernel entries of this service.
    pub fn kernel_entries(&self) -> impl Iterator<Item = KernelService> + '_ {
        let value = ServiceValue {
            server_id: self.server_id,
            stats_index: self.stats_index,
        };
        self.keys
            .iter()
            .map(move |key| KernelService { key: *key, value })
    }
}

/// The kernel services for a configuration: counter slots in configuration order.
pub fn plan_services(config: &Config) -> Vec<PlannedService> {
    let mut planned = Vec::new();
    for server in &config.servers {
        for service in &server.services {
            let proto = service.protocol.number();
            let keys = match service.address {
                None => vec![
                    ServiceKey::v4(proto, service.port, [0; 4]),
                    ServiceKey::v6(proto, service.port, [0; 16]),
                ],
                Some(IpAddr::V4(v4)) => vec![ServiceKey::v4(proto, service.port, v4.octets())],
                Some(IpAddr::V6(v6)) => vec![ServiceKey::v6(proto, service.port, v6.octets())],
            };
            let stats_index = u32::try_from(planned.len()).unwrap_or(u32::MAX);
            planned.push(PlannedService {
                server_id: server.id,
                service: *service,
                stats_index,
                keys,
            });
        }
    }
    planned
}
