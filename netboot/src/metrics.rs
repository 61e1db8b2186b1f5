//! Prometheus counters for `/metrics`: a small labelled-counter map rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Labelled counters keyed by metric name and label set.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

impl Metrics {
    /// Adds `by` to `name{labels}`.
    pub fn add(&self, name: &str, labels: &[(&str, &str)], by: u64) {
        let l = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(mut m) = self.counters.lock() {
            *m.entry(name.to_string()).or_default().entry(l).or_default() += by;
        }
    }

    /// Adds one to `name{labels}`.
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Current value of a counter (0 if never touched).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let l = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",");
        self.counters
            .lock()
            .map(|m| m.get(name).and_then(|s| s.get(&l)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(m) = self.counters.lock() else {
            return out;
        };
        for (name, series) in m.iter() {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, v) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}
