//! The results of one run: dotted keys to numbers (null when a part did not run), machine
//! facts, and the terminal table, `report.json` and `report.svg` made from them.
use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// Every key `report.json` must have; they stay null unless a part sets them.
pub const REQUIRED_KEYS: &[&str] = &[
    "program.v4_drop_ns",
    "program.v4_allow_ns",
    "program.v4_unguarded_ns",
    "program.v6_drop_ns",
    "program.v6_allow_ns",
    "program.cold_v4_drop_ns",
    "program.cold_v4_allow_ns",
    "program.cold_v4_unguarded_ns",
    "program.cold_v6_drop_ns",
    "program.cold_v6_allow_ns",
    "program.cold_v6_unguarded_ns",
    "program.cold_over_hot_v4_drop",
    "program.cold_over_hot_v6_drop",
    "program.v4_drop_over_floor_ns",
    "program.v4_allow_over_floor_ns",
    "program.before.v4_drop_ns",
    "program.before.cold_v4_drop_ns",
    "program.before.cold_over_hot_v4_drop",
    "live.xdp_pps",
    "live.nft_pps",
    "live.iptables_ipset_pps",
    "live.xdp_over_nft",
    "live.random.xdp_pps",
    "live.random.nft_pps",
    "live.random.iptables_ipset_pps",
    "live.random.xdp_over_nft",
    "live.random.xdp_rx_ns_per_packet",
    "live.random.nft_rx_ns_per_packet",
    "approvals.per_sec",
    "approvals.crypto_bound_per_sec",
    "approvals.ratio",
    "approvals.garbage_rejected_per_sec",
    "approvals.open_latency_p99_ms",
    "approvals.p99_during_sweep_ms",
    "approvals.sweep_ms",
    "cluster.forward_p50_ms",
    "cluster.forward_p99_ms",
    "cluster.forward_samples",
    "restart.reconcile_ms",
    "restart.wrongly_passed",
    "restart.wrongly_dropped",
    "memory.controller_rss_mb",
    "memory.web_rss_mb",
];

/// One bar of a chart.
#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub value: f64,
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub struct Report {
    values: BTreeMap<String, Option<f64>>,
    notes: BTreeMap<String, String>,
    /// Program cost per path (ns/packet), for the chart.
    pub program_bars: Vec<Bar>,
    /// Live ladder (packets per second received), for the chart.
    pub ladder_bars: Vec<Bar>,
    /// Receive cost per filter (ns per packet above the floor), for the chart.
    pub rx_bars: Vec<Bar>,
}

impl Report {
    pub fn new() -> Self {
        let mut report = Self::default();
        for key in REQUIRED_KEYS {
            report.values.insert((*key).to_owned(), None);
        }
        report
    }

    /// Sets a dotted key to a number.
    pub fn set(&mut self, key: &str, value: f64) {
        let value = if value.is_finite() { Some(value) } else { None };
        self.values.insert(key.to_owned(), value);
    }

    /// Reads a dotted key.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied().flatten()
    }

    /// A text note kept next to the numbers (method, what was not run and why).
    pub fn note(&mut self, key: &str, text: impl Into<String>) {
        self.notes.insert(key.to_owned(), text.into());
    }

    /// The nested JSON document.
    pub fn to_json(&self, machine: &Machine, quick: bool) -> Value {
        let mut root = Map::new();
        for (key, value) in &self.values {
            insert_dotted(
                &mut root,
                key,
                value.map_or(Value::Null, |v| json!(round(v))),
            );
        }
        root.insert("machine".into(), machine.to_json());
        root.insert("quick".into(), json!(quick));
        root.insert("targets".into(), targets_json());
        root.insert("notes".into(), json!(self.notes));
        Value::Object(root)
    }

    /// Writes `report.json` and `report.svg` into `dir`.
    pub fn write(&self, dir: &Path, machine: &Machine, quick: bool) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_string_pretty(&self.to_json(machine, quick))?;
        fs::write(dir.join("report.json"), text + "\n").context("writing report.json")?;
        fs::write(dir.join("report.svg"), self.svg(machine)).context("writing report.svg")?;
        Ok(())
    }

    /// The terminal table: machine facts, then every result next to its target.
    pub fn table(&self, machine: &Machine) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nmachine: {} ({} cores), kernel {}, BPF JIT {}",
            machine.cpu, machine.cores, machine.kernel, machine.jit
        );
        let _ = writeln!(out, "{:<42} {:>14}  target", "result", "value");
        let _ = writeln!(out, "{}", "-".repeat(96));
        for (key, value) in &self.values {
            let shown = value.map_or_else(|| "—".to_owned(), format_number);
            let (target, verdict) = match target_for(key) {
                Some(t) => (
                    t.text.to_owned(),
                    value
                        .map(|v| if (t.ok)(v) { " ok" } else { " MISSED" })
                        .unwrap_or(""),
                ),
                None => (String::new(), ""),
            };
            let _ = writeln!(out, "{key:<42} {shown:>14}  {target}{verdict}");
        }
        out
    }

    fn svg(&self, machine: &Machine) -> String {
        let mut svg = String::new();
        let width = 900.0;
        let rows = self.ladder_bars.len() + self.rx_bars.len() + self.program_bars.len();
        let height = 160.0 + 26.0 * rows as f64 + 80.0;
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="20" y="28" font-size="18" font-weight="bold">xdpgate benchmark</text>"#
        );
        let _ = writeln!(
            svg,
            r##"<text x="20" y="48" fill="#555">{} ({} cores), kernel {}, JIT {}</text>"##,
            escape(&machine.cpu),
            machine.cores,
            escape(&machine.kernel),
            machine.jit
        );
        let mut y = 80.0;
        y = bar_chart(
            &mut svg,
            y,
            "Live ladder: packets/s dropped on one veth receiver (more is better)",
            &self.ladder_bars,
            |v| format!("{:.2} Mpps", v / 1e6),
            "#2a7ab0",
        );
        y += 20.0;
        y = bar_chart(
            &mut svg,
            y,
            "Receive cost per packet above the bare-XDP_DROP floor, one core (less is better)",
            &self.rx_bars,
            |v| format!("{v:.1} ns"),
            "#6a8f3a",
        );
        y += 20.0;
        let _ = bar_chart(
            &mut svg,
            y,
            "Program cost per packet, BPF_PROG_TEST_RUN, 1M openings: hot = one source, cold = 65,536 rotating sources (less is better)",
            &self.program_bars,
            |v| format!("{v:.1} ns"),
            "#c0562f",
        );
        svg.push_str("</svg>\n");
        svg
    }
}

fn bar_chart(
    svg: &mut String,
    mut y: f64,
    title: &str,
    bars: &[Bar],
    label: impl Fn(f64) -> String,
    color: &str,
) -> f64 {
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{y}" font-weight="bold">{}</text>"#,
        escape(title)
    );
    y += 12.0;
    if bars.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="30" y="{}" fill="#999">not run</text>"##,
            y + 14.0
        );
        return y + 26.0;
    }
    let max = bars
        .iter()
        .map(|b| b.value)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let (left, span) = (300.0, 460.0);
    for bar in bars {
        let w = (bar.value / max * span).max(1.0);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 14.0,
            escape(&bar.label)
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{left}" y="{y}" width="{w:.1}" height="18" fill="{color}"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            left + w + 6.0,
            y + 14.0,
            escape(&label(bar.value))
        );
        y += 26.0;
    }
    y
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 100.0).round() / 100.0
    }
}

fn format_number(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn insert_dotted(root: &mut Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let child = root
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = child {
                insert_dotted(map, rest, value);
            }
        }
        None => {
            root.insert(key.to_owned(), value);
        }
    }
}

/// A target of issue 6.
pub struct Target {
    pub text: &'static str,
    pub ok: fn(f64) -> bool,
}

fn target_for(key: &str) -> Option<Target> {
    let t = |text, ok| Some(Target { text, ok });
    match key {
        "program.cold_over_hot_v4_drop" | "program.cold_over_hot_v6_drop" => {
            t("≤ 1.5× hot (1M openings, ≥ 65,536 sources)", |v| {
                v <= 1.5
            })
        }
        "program.v4_drop_over_floor_ns" | "program.v6_drop_over_floor_ns" => {
            t("≤ 15 ns above the empty program", |v| v <= 15.0)
        }
        "program.v4_allow_over_floor_ns" | "program.v6_allow_over_floor_ns" => {
            t("≤ 30 ns above the empty program", |v| v <= 30.0)
        }
        "live.random.xdp_over_nft" => {
            t("≥ 4× nftables (full sets, random sources)", |v| v >= 4.0)
        }
        k if k.starts_with("program.")
            && !k.starts_with("program.before.")
            && !k.contains("cold")
            && !k.contains("over_floor")
            && k.ends_with("_ns")
            && k != "program.empty_program_ns" =>
        {
            t("≤ 25 ns/packet (1M openings)", |v| v <= 25.0)
        }
        "live.xdp_over_nft" => t("≥ 4× nftables", |v| v >= 4.0),
        "approvals.ratio" => t("≥ 0.7 of crypto bound", |v| v >= 0.7),
        "approvals.garbage_rejected_per_sec" => t("≥ 50k/s/core", |v| v >= 50_000.0),
        "approvals.open_latency_p99_ms" => t("≤ 2 ms", |v| v <= 2.0),
        "approvals.p99_during_sweep_ms" => t("≤ 5 ms (100k openings)", |v| v <= 5.0),
        "restart.reconcile_ms" => t("≤ 1000 ms (100k openings)", |v| v <= 1000.0),
        "restart.wrongly_passed" | "restart.wrongly_dropped" => t("0", |v| v == 0.0),
        "memory.controller_rss_mb" => t("≤ 100 MB (100k openings)", |v| v <= 100.0),
        _ => None,
    }
}

fn targets_json() -> Value {
    json!({
        "program_ns_max": 25,
        "program_cold_over_hot_max": 1.5,
        "program_drop_over_floor_ns_max": 15,
        "program_allow_over_floor_ns_max": 30,
        "live_random_xdp_over_nft_min": 4,
        "xdp_over_nft_min": 4,
        "approvals_ratio_min": 0.7,
        "garbage_rejected_per_sec_per_core_min": 50000,
        "open_latency_p99_ms_max": 2,
        "p99_during_sweep_ms_max": 5,
        "restart_reconcile_ms_max": 1000,
        "restart_wrong_packets_max": 0,
        "controller_rss_mb_max": 100
    })
}

/// Facts about the machine the run measured.
#[derive(Debug)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub jit: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let read = |p: &str| {
            fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".into())
        };
        let jit = match read("/proc/sys/net/core/bpf_jit_enable").as_str() {
            "1" => "on".to_owned(),
            "2" => "on (debug)".to_owned(),
            "0" => "OFF".to_owned(),
            other => other.to_owned(),
        };
        Self {
            cpu,
            cores,
            kernel: read("/proc/sys/kernel/osrelease"),
            jit,
        }
    }

    fn to_json(&self) -> Value {
        json!({"cpu": self.cpu, "cores": self.cores, "kernel": self.kernel, "bpf_jit": self.jit})
    }
}
