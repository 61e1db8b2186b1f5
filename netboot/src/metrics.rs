//! `/metrics`: counters, gauges and the power-on → k3s histogram, encoded by the
//! `prometheus-client` crate in the OpenMetrics text format (Prometheus reads it).
//!
//! Services count by name and labels ([`Metrics::inc`], [`Metrics::gauge_add`]);
//! every name has its `# HELP` text in [`help`], which a test checks for each name the
//! sources use. Counter names end in `_total`, gauges and the histogram name their
//! unit, as the Prometheus naming conventions ask.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(String, String)>;

/// Name of the power-on → k3s histogram (the `_seconds` unit suffix is part of it).
pub const BOOT_SECONDS: &str = "labimg_boot_seconds";

/// Bucket bounds of [`BOOT_SECONDS`]: a TCG VM in CI takes 10–60 s, a Pi 5 netboot
/// around 30 s, a slow disk boot minutes.
const BOOT_BUCKETS: [f64; 11] = [
    5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0,
];

/// The `# HELP` text of each metric (without the final full stop the encoder adds).
pub fn help(name: &str) -> Option<&'static str> {
    Some(match name {
        "labimg_http_requests_total" => "HTTP requests answered, by route and status code",
        "labimg_http_bytes_total" => {
            "HTTP body bytes sent: netboot artifacts, node config bundles, Imager images"
        }
        "labimg_config_denied_total" => {
            "Config bundle requests refused for a missing or wrong token"
        }
        "labimg_logs_denied_total" => "Log uploads or reads refused for a missing or wrong token",
        "labimg_logs_rejected_total" => "Log uploads refused as malformed",
        "labimg_log_lines_total" => "Log lines nodes shipped, by host name",
        "labimg_events_total" => "Boot events nodes reported, by stage",
        "labimg_dhcp_packets_total" => "DHCP requests classified, by message type",
        "labimg_dhcp_replies_total" => "DHCP replies sent, by message type",
        "labimg_dhcp_dropped_total" => "DHCP packets dropped, by reason",
        "labimg_tftp_transfers_total" => "TFTP transfers finished, by result",
        "labimg_tftp_bytes_total" => "TFTP payload bytes sent",
        "labimg_tftp_requests_total" => "TFTP read requests, by result",
        "labimg_dhcp_leases" => "Full DHCP mode: addresses leased now",
        "labimg_tftp_active_transfers" => "TFTP transfers running now",
        "labimg_http_active_transfers" => {
            "HTTP downloads of netboot artifacts and Imager disk images running now"
        }
        BOOT_SECONDS => {
            "Seconds from a node's first firmware DHCP DISCOVER to its k3s-started event"
        }
        _ => return None,
    })
}

/// The appliance's metrics.
#[derive(Debug)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, Family<Labels, Counter>>>,
    gauges: Mutex<BTreeMap<String, Family<Labels, Gauge>>>,
    boot_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            counters: Mutex::default(),
            gauges: Mutex::default(),
            boot_seconds: Histogram::new(BOOT_BUCKETS),
        }
    }
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    /// Adds `by` to the counter `name{labels}` (`name` ends in `_total`).
    pub fn add(&self, name: &str, l: &[(&str, &str)], by: u64) {
        if let Ok(mut m) = self.counters.lock() {
            m.entry(name.to_string())
                .or_default()
                .get_or_create(&labels(l))
                .inc_by(by);
        }
    }

    /// Adds one to the counter `name{labels}`.
    pub fn inc(&self, name: &str, l: &[(&str, &str)]) {
        self.add(name, l, 1);
    }

    /// Current value of a counter (0 if never touched).
    pub fn get(&self, name: &str, l: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|m| m.get(name).map(|f| f.get_or_create(&labels(l)).get()))
            .unwrap_or(0)
    }

    /// Sets the gauge `name{labels}`.
    pub fn gauge_set(&self, name: &str, l: &[(&str, &str)], v: i64) {
        if let Ok(mut m) = self.gauges.lock() {
            m.entry(name.to_string())
                .or_default()
                .get_or_create(&labels(l))
                .set(v);
        }
    }

    /// Adds `delta` (may be negative) to the gauge `name{labels}`.
    pub fn gauge_add(&self, name: &str, l: &[(&str, &str)], delta: i64) {
        if let Ok(mut m) = self.gauges.lock() {
            m.entry(name.to_string())
                .or_default()
                .get_or_create(&labels(l))
                .inc_by(delta);
        }
    }

    /// Current value of a gauge (0 if never set).
    pub fn gauge(&self, name: &str, l: &[(&str, &str)]) -> i64 {
        self.gauges
            .lock()
            .ok()
            .and_then(|m| m.get(name).map(|f| f.get_or_create(&labels(l)).get()))
            .unwrap_or(0)
    }

    /// Records one boot's power-on → k3s seconds.
    pub fn observe_boot(&self, seconds: f64) {
        self.boot_seconds.observe(seconds);
    }

    /// OpenMetrics text exposition, `# HELP` and `# TYPE` for every metric.
    pub fn render(&self) -> String {
        let mut reg = Registry::default();
        let help_of = |name: &str| help(name).unwrap_or("labimg metric");
        if let Ok(m) = self.counters.lock() {
            for (name, family) in m.iter() {
                // The encoder appends `_total` to counters itself.
                let base = name.strip_suffix("_total").unwrap_or(name);
                reg.register(base, help_of(name), family.clone());
            }
        }
        if let Ok(m) = self.gauges.lock() {
            for (name, family) in m.iter() {
                reg.register(name, help_of(name), family.clone());
            }
        }
        let base = BOOT_SECONDS
            .strip_suffix("_seconds")
            .unwrap_or(BOOT_SECONDS);
        reg.register_with_unit(
            base,
            help_of(BOOT_SECONDS),
            Unit::Seconds,
            self.boot_seconds.clone(),
        );
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &reg) {
            tracing::error!("encoding metrics: {e}");
        }
        out
    }
}

/// Holds one unit of a gauge while alive: `Active::new(m, "…_active_transfers")`
/// at the start of a transfer, dropped at its end, whichever way it ends.
#[derive(Debug)]
pub struct Active<'a> {
    metrics: &'a Metrics,
    name: &'static str,
}

impl<'a> Active<'a> {
    /// Adds one to the gauge `name` until the value is dropped.
    pub fn new(metrics: &'a Metrics, name: &'static str) -> Self {
        metrics.gauge_add(name, &[], 1);
        Self { metrics, name }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.metrics.gauge_add(self.name, &[], -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_types_and_values() {
        let m = Metrics::default();
        m.inc(
            "labimg_http_requests_total",
            &[("route", "/healthz"), ("status", "200")],
        );
        m.add("labimg_tftp_bytes_total", &[], 1468);
        m.gauge_add("labimg_tftp_active_transfers", &[], 2);
        m.gauge_add("labimg_tftp_active_transfers", &[], -1);
        m.observe_boot(12.5);
        let t = m.render();
        for want in [
            "# HELP labimg_http_requests HTTP requests answered, by route and status code.",
            "# TYPE labimg_http_requests counter",
            "labimg_http_requests_total{route=\"/healthz\",status=\"200\"} 1",
            "labimg_tftp_bytes_total 1468",
            "# TYPE labimg_tftp_active_transfers gauge",
            "labimg_tftp_active_transfers 1",
            "# TYPE labimg_boot_seconds histogram",
            "# UNIT labimg_boot_seconds seconds",
            "labimg_boot_seconds_bucket{le=\"15.0\"} 1",
            "labimg_boot_seconds_bucket{le=\"10.0\"} 0",
            "labimg_boot_seconds_count 1",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert_eq!(m.get("labimg_tftp_bytes_total", &[]), 1468);
        assert_eq!(m.gauge("labimg_tftp_active_transfers", &[]), 1);
    }

    /// Every metric name a source file of this crate uses has its own help text.
    #[test]
    fn every_metric_in_the_sources_has_help() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut names = std::collections::BTreeSet::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for piece in text.split('"').skip(1).step_by(2) {
                        if piece.len() > "labimg_".len()
                            && piece.starts_with("labimg_")
                            && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        {
                            names.insert(piece.to_string());
                        }
                    }
                }
            }
        }
        assert!(names.contains("labimg_http_requests_total"), "{names:?}");
        let missing: Vec<_> = names.iter().filter(|n| help(n).is_none()).collect();
        assert!(
            missing.is_empty(),
            "metrics without # HELP text: {missing:?}"
        );
    }
}
