//! Prometheus metrics of the controller: the process-wide latency histograms and the
//! scrape-time snapshot of kernel counters. The `GET /metrics` listener and the web front's
//! registry are `xdpgate_web::metrics` (re-exported here).
//!
//! Counters kept by the kernel or by other modules are read when scraped (no second copy to
//! drift); what only exists as an event (a latency, a refused connection) is recorded here.
use std::{
    sync::{OnceLock, atomic::AtomicU64},
    time::Instant,
};

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
pub use xdpgate_web::metrics::{MetricsError, Scrape, scrape, serve, web_registry};

/// Latency histograms of the controller (seconds).
#[derive(Debug)]
pub struct Latencies {
    /// One approval request, from its body to its answer.
    pub approval: Histogram,
    /// One durable commit of openings (with the nonces riding along).
    pub commit: Histogram,
    /// One sweep of the openings.
    pub sweep: Histogram,
}

impl Latencies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "xdpgate_approval_duration_seconds",
            "Approval requests, body to answer",
            self.approval.clone(),
        );
        registry.register(
            "xdpgate_commit_duration_seconds",
            "Durable commits of openings",
            self.commit.clone(),
        );
        registry.register(
            "xdpgate_sweep_duration_seconds",
            "Sweeps of the openings",
            self.sweep.clone(),
        );
    }
}

fn buckets() -> impl Iterator<Item = f64> {
    // 50 µs .. about 1.6 s.
    exponential_buckets(0.000_05, 2.0, 16)
}

/// The process-wide latency histograms.
pub fn latencies() -> &'static Latencies {
    static LATENCIES: OnceLock<Latencies> = OnceLock::new();
    LATENCIES.get_or_init(|| Latencies {
        approval: Histogram::new(buckets()),
        commit: Histogram::new(buckets()),
        sweep: Histogram::new(buckets()),
    })
}

/// Records the seconds since `start` into `histogram`.
pub fn observe_since(histogram: &Histogram, start: Instant) {
    histogram.observe(start.elapsed().as_secs_f64());
}

/// Label set of a guarded service's packet counter.
pub type ServiceLabels = Vec<(&'static str, String)>;

/// What the controller knows at scrape time.
#[derive(Debug, Default)]
pub struct ControllerSnapshot {
    /// (labels: server, protocol, port, address; passed; dropped) per guarded service.
    pub services: Vec<(ServiceLabels, u64, u64)>,
    /// Parse drops by reason.
    pub parse_drops: Vec<(String, u64)>,
    /// Openings in the kernel by server name.
    pub openings: Vec<(String, i64)>,
    /// Fill of the IPv4 and IPv6 openings maps (0..1).
    pub map_fill: [f64; 2],
    /// Approval and enrollment outcomes, named `approval.CODE` / `enrollment.CODE`.
    pub outcomes: Vec<(String, u64)>,
    /// Whether the gate serves on each interface.
    pub interfaces: Vec<(String, bool)>,
}

impl ControllerSnapshot {
    /// The registry a scrape encodes: this snapshot plus the latency histograms.
    pub fn registry(self) -> Registry {
        let mut registry = Registry::default();
        let packets = Family::<ServiceLabels, Counter>::default();
        for (labels, passed, dropped) in self.services {
            let mut with = labels.clone();
            with.push(("verdict", "passed".to_owned()));
            packets.get_or_create(&with).inc_by(passed);
            let mut with = labels;
            with.push(("verdict", "dropped".to_owned()));
            packets.get_or_create(&with).inc_by(dropped);
        }
        registry.register(
            "xdpgate_gate_packets",
            "Packets to guarded services by verdict (kernel counters)",
            packets,
        );
        let parse = Family::<Vec<(&'static str, String)>, Counter>::default();
        for (reason, value) in self.parse_drops {
            parse.get_or_create(&vec![("reason", reason)]).inc_by(value);
        }
        registry.register(
            "xdpgate_gate_parse",
            "Packets by parse outcome (kernel counters)",
            parse,
        );
        let openings = Family::<Vec<(&'static str, String)>, Gauge>::default();
        for (server, count) in self.openings {
            openings.get_or_create(&vec![("server", server)]).set(count);
        }
        registry.register(
            "xdpgate_openings",
            "Openings in the kernel by server",
            openings,
        );
        let fill = Family::<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>::default();
        for (family, value) in ["ipv4", "ipv6"].into_iter().zip(self.map_fill) {
            fill.get_or_create(&vec![("family", family.to_owned())])
                .set(value);
        }
        registry.register(
            "xdpgate_openings_map_fill_ratio",
            "Fill of the openings maps (0..1)",
            fill,
        );
        let approvals = Family::<Vec<(&'static str, String)>, Counter>::default();
        let enrollments = Family::<Vec<(&'static str, String)>, Counter>::default();
        let devices = Family::<Vec<(&'static str, String)>, Counter>::default();
        for (name, value) in self.outcomes {
            if let Some(code) = name.strip_prefix("approval.") {
                approvals
                    .get_or_create(&vec![("code", code.to_owned())])
                    .inc_by(value);
            } else if let Some(code) = name.strip_prefix("enrollment.") {
                enrollments
                    .get_or_create(&vec![("code", code.to_owned())])
                    .inc_by(value);
            } else if let Some(event) = name.strip_prefix("device.") {
                devices
                    .get_or_create(&vec![("event", event.to_owned())])
                    .inc_by(value);
            }
        }
        registry.register(
            "xdpgate_approvals",
            "Approval requests by outcome code",
            approvals,
        );
        registry.register(
            "xdpgate_enrollments",
            "Enrollments by outcome code",
            enrollments,
        );
        registry.register(
            "xdpgate_devices",
            "Device authentication events (pending, approved, auto_approved, removed, ...)",
            devices,
        );
        let serving = Family::<Vec<(&'static str, String)>, Gauge>::default();
        for (interface, up) in self.interfaces {
            serving
                .get_or_create(&vec![("interface", interface)])
                .set(i64::from(up));
        }
        registry.register(
            "xdpgate_gate_serving",
            "1 when the gate is attached on the interface now",
            serving,
        );
        latencies().register(&mut registry);
        registry
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn a_snapshot_encodes_every_family_with_its_labels() {
        let snapshot = ControllerSnapshot {
            services: vec![(
                vec![("server", "vpn1".to_owned()), ("port", "1194".to_owned())],
                3,
                5,
            )],
            parse_drops: vec![("truncated".to_owned(), 2)],
            openings: vec![("vpn1".to_owned(), 4)],
            map_fill: [0.5, 0.0],
            outcomes: vec![
                ("approval.approved".to_owned(), 7),
                ("enrollment.enrolled".to_owned(), 1),
                ("device.pending".to_owned(), 2),
            ],
            interfaces: vec![("eth0".to_owned(), true)],
        };
        let mut text = String::new();
        encode(&mut text, &snapshot.registry()).unwrap_or_else(|e| panic!("{e}"));
        for line in [
            r#"xdpgate_gate_packets_total{server="vpn1",port="1194",verdict="passed"} 3"#,
            r#"xdpgate_gate_packets_total{server="vpn1",port="1194",verdict="dropped"} 5"#,
            r#"xdpgate_gate_parse_total{reason="truncated"} 2"#,
            r#"xdpgate_openings{server="vpn1"} 4"#,
            r#"xdpgate_openings_map_fill_ratio{family="ipv4"} 0.5"#,
            r#"xdpgate_approvals_total{code="approved"} 7"#,
            r#"xdpgate_enrollments_total{code="enrolled"} 1"#,
            r#"xdpgate_devices_total{event="pending"} 2"#,
            r#"xdpgate_gate_serving{interface="eth0"} 1"#,
            "# TYPE xdpgate_approval_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
