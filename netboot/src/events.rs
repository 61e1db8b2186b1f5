//! Boot events reported by nodes (`POST /v1/events`): validated, the last few kept
//! per MAC, and logged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::inventory::Mac;

/// Stages a node may report, in boot order.
pub const STAGES: &[&str] = &[
    "booted",
    "root-verified",
    "network-up",
    "config-fetched",
    "k3s-started",
];

/// How many events are kept per node.
pub const KEEP_PER_NODE: usize = 32;

/// An event as posted by a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// One of [`STAGES`].
    pub stage: String,
    /// The node's boot MAC.
    pub mac: String,
    /// The node's host name, if it knows it.
    #[serde(default)]
    pub hostname: String,
    /// Free text.
    #[serde(default)]
    pub detail: String,
    /// How many seconds before this post the milestone happened, by the node's uptime
    /// (stage 1's milestones are posted from stage 2). 0 to [`MAX_AGO`].
    #[serde(default)]
    pub ago: Option<f64>,
}

/// The longest an event's `ago` may reach back.
pub const MAX_AGO: f64 = 3600.0;

/// A validated, time-stamped event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Boot stage.
    pub stage: String,
    /// Node MAC.
    pub mac: Mac,
    /// Host name as reported.
    pub hostname: String,
    /// Detail text.
    pub detail: String,
    /// Seconds since the Unix epoch when received.
    pub time: u64,
    /// Seconds before `time` that the milestone happened, as the node reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ago: Option<f64>,
}

impl EventIn {
    /// Checks the event and stamps it; the error says which field is wrong.
    pub fn validate(self) -> Result<Event, String> {
        if !STAGES.contains(&self.stage.as_str()) {
            return Err(format!(
                "unknown stage {:?}; expected one of {}",
                self.stage,
                STAGES.join(", ")
            ));
        }
        let mac = self.mac.parse::<Mac>()?;
        if self.hostname.len() > 64 || self.hostname.chars().any(|c| c.is_control()) {
            return Err("hostname too long or has control characters".into());
        }
        if self.detail.len() > 1024 {
            return Err("detail longer than 1024 bytes".into());
        }
        if let Some(ago) = self.ago
            && !(0.0..=MAX_AGO).contains(&ago)
        {
            return Err(format!("ago must be 0 to {MAX_AGO} seconds, not {ago}"));
        }
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Event {
            stage: self.stage,
            mac,
            hostname: self.hostname,
            detail: self.detail,
            time,
            ago: self.ago,
        })
    }
}

/// The last [`KEEP_PER_NODE`] events of each MAC.
#[derive(Debug, Default)]
pub struct EventLog {
    by_mac: Mutex<BTreeMap<Mac, VecDeque<Event>>>,
}

impl EventLog {
    /// Records (and logs) an event.
    pub fn record(&self, e: Event) {
        tracing::info!(stage = %e.stage, mac = %e.mac, hostname = %e.hostname, "node event: {}", e.detail);
        if let Ok(mut m) = self.by_mac.lock() {
            let q = m.entry(e.mac).or_default();
            if q.len() == KEEP_PER_NODE {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    /// Events of one MAC, oldest first.
    pub fn of(&self, mac: &Mac) -> Vec<Event> {
        self.by_mac
            .lock()
            .map(|m| {
                m.get(mac)
                    .map(|q| q.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// All MACs that reported something.
    pub fn macs(&self) -> Vec<Mac> {
        self.by_mac
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_n_and_validates() {
        let log = EventLog::default();
        for i in 0..40 {
            let e = EventIn {
                stage: "booted".into(),
                mac: "02:00:00:00:00:01".into(),
                hostname: "n".into(),
                detail: i.to_string(),
                ago: None,
            };
            log.record(e.validate().unwrap());
        }
        let ev = log.of(&"02:00:00:00:00:01".parse().unwrap());
        assert_eq!(ev.len(), KEEP_PER_NODE);
        assert_eq!(ev[0].detail, "8");
        let bad = EventIn {
            stage: "exploded".into(),
            mac: "02:00:00:00:00:01".into(),
            hostname: String::new(),
            detail: String::new(),
            ago: None,
        };
        assert!(bad.validate().unwrap_err().contains("unknown stage"));
    }

    #[test]
    fn ago_is_bounded() {
        let with = |ago: f64| {
            EventIn {
                stage: "booted".into(),
                mac: "02:00:00:00:00:01".into(),
                hostname: String::new(),
                detail: String::new(),
                ago: Some(ago),
            }
            .validate()
        };
        assert_eq!(with(12.5).unwrap().ago, Some(12.5));
        for bad in [-1.0, MAX_AGO + 1.0, f64::NAN, f64::INFINITY] {
            assert!(with(bad).unwrap_err().contains("ago must be"), "{bad}");
        }
        // Older nodes send no `ago`.
        let e: EventIn =
            serde_json::from_str(r#"{"stage":"booted","mac":"02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(e.ago, None);
    }
}
