//! Each node's boot as the server saw it: seconds from the firmware's first DHCP
//! DISCOVER ("power-on", the earliest moment the network sees a machine) to every
//! milestone the server witnesses: its DHCP offer, the boot script, kernel, initrd and
//! root image fetched over HTTP, and the stages the node reports as events. Shown per
//! node in `/v1/nodes`; power-on → `k3s-started` feeds the `labimg_boot_seconds`
//! histogram of `/metrics`.
//!
//! A node's events may say how long ago, by its own uptime, the milestone happened
//! (`ago`): stage 1's milestones are only posted from stage 2, once the node has its
//! config, and are placed back where they happened. Marks are kept in time order.
//!
//! A firmware DISCOVER starts a new boot unless the current one has not reached its
//! boot script yet (a chain-loaded iPXE does its own DHCP within the same boot) and is
//! younger than [`SAME_BOOT`]. HTTP fetches carry no MAC: they are attributed through
//! the address that fetched the node's boot script (`?mac=`). A Raspberry Pi's TFTP
//! fetches are attributed through the serial its firmware's DHCP carried: it names
//! its TFTP folder.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::inventory::Mac;

/// Milestones in boot order; node events use their stage names.
pub const MILESTONES: &[&str] = &[
    "dhcp-discover",
    "dhcp-offer",
    "boot-script",
    "kernel",
    "initrd",
    "booted",
    "root-image",
    "root-verified",
    "network-up",
    "config-fetched",
    "k3s-started",
];

/// A firmware DISCOVER this soon after the last one, before any boot script, is the
/// same boot (iPXE chain-loaded by a PXE ROM asks again).
pub const SAME_BOOT: Duration = Duration::from_secs(120);

/// Most nodes tracked; the oldest boot is forgotten beyond it.
const MAX_NODES: usize = 4096;

/// One milestone of a boot.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mark {
    /// One of [`MILESTONES`].
    pub milestone: &'static str,
    /// Seconds since the boot's first mark, millisecond resolution.
    pub seconds: f64,
}

/// One boot of one node.
#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    /// Unix time of the first mark, in seconds with millisecond resolution.
    pub started: f64,
    /// Whether the first mark is the firmware's DHCP DISCOVER (else the server saw
    /// the boot start later, for example when another DHCP server answered).
    pub from_power_on: bool,
    /// Milestones in time order, each at most once.
    pub marks: Vec<Mark>,
    #[serde(skip)]
    start: Option<Instant>,
}

impl Boot {
    /// A boot whose first mark, `first`, happened `ago` seconds before now.
    fn new(first: &'static str, ago: f64) -> Self {
        let ago = if ago.is_finite() {
            ago.clamp(0.0, crate::events::MAX_AGO)
        } else {
            0.0
        };
        let ago = Duration::from_secs_f64(ago);
        let now = SystemTime::now();
        Self {
            started: now
                .checked_sub(ago)
                .unwrap_or(now)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as f64 / 1000.0)
                .unwrap_or(0.0),
            from_power_on: first == "dhcp-discover",
            marks: Vec::new(),
            start: Instant::now()
                .checked_sub(ago)
                .or_else(|| Some(Instant::now())),
        }
    }

    fn has(&self, milestone: &str) -> bool {
        self.marks.iter().any(|m| m.milestone == milestone)
    }

    fn age(&self) -> Duration {
        self.start.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// Seconds to `milestone`, if reached.
    pub fn seconds_to(&self, milestone: &str) -> Option<f64> {
        self.marks
            .iter()
            .find(|m| m.milestone == milestone)
            .map(|m| m.seconds)
    }
}

/// Boots by MAC, and which MAC each address fetched a boot script for.
#[derive(Debug, Default)]
pub struct Timeline {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    boots: BTreeMap<Mac, Boot>,
    by_ip: BTreeMap<IpAddr, Mac>,
    by_serial: BTreeMap<String, Mac>,
}

impl Timeline {
    /// Records `milestone` for `mac`. Returns the seconds from power-on to it when it
    /// completes a boot seen from power-on (`k3s-started`), for the histogram.
    pub fn mark(&self, mac: Mac, milestone: &'static str) -> Option<f64> {
        self.mark_ago(mac, milestone, 0.0)
    }

    /// [`Self::mark`] for a milestone that happened `ago` seconds before now (a node
    /// event's `ago`): placed that far back, but not before the boot's first mark. A
    /// boot that starts with it (the server did not see the firmware) starts then.
    pub fn mark_ago(&self, mac: Mac, milestone: &'static str, ago: f64) -> Option<f64> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        let new_boot = match inner.boots.get(&mac) {
            None => true,
            // A Pi boots over TFTP, with no boot script: a boot that reached its
            // events is over too.
            Some(b) if milestone == "dhcp-discover" => {
                b.has("boot-script") || b.has("booted") || b.age() > SAME_BOOT
            }
            // A node that reports "booted" again without the server seeing its
            // firmware (another DHCP server, or a disk boot) starts a boot too.
            Some(b) if milestone == "booted" => b.has("booted"),
            Some(_) => false,
        };
        if new_boot {
            if inner.boots.len() >= MAX_NODES && !inner.boots.contains_key(&mac) {
                let oldest = inner
                    .boots
                    .iter()
                    .min_by(|(_, a), (_, b)| a.started.total_cmp(&b.started))
                    .map(|(m, _)| *m);
                if let Some(m) = oldest {
                    inner.boots.remove(&m);
                }
            }
            inner.boots.insert(mac, Boot::new(milestone, ago));
        }
        let boot = inner.boots.get_mut(&mac)?;
        if boot.has(milestone) {
            return None;
        }
        let at = (boot.age().as_secs_f64() - ago.max(0.0)).max(0.0);
        let seconds = (at * 1000.0).round() / 1000.0;
        let i = boot.marks.partition_point(|m| m.seconds <= seconds);
        boot.marks.insert(i, Mark { milestone, seconds });
        (milestone == "k3s-started" && boot.from_power_on).then_some(seconds)
    }

    /// Remembers that `ip` fetched the boot script of `mac`.
    pub fn bind_ip(&self, ip: IpAddr, mac: Mac) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.by_ip.len() >= MAX_NODES && !inner.by_ip.contains_key(&ip) {
                inner.by_ip.clear();
            }
            inner.by_ip.insert(ip, mac);
        }
    }

    /// Remembers that the Raspberry Pi with board serial `serial` (8 hex digits, as in
    /// its TFTP folder) booted with `mac`.
    pub fn bind_serial(&self, serial: &str, mac: Mac) {
        if let Ok(mut inner) = self.inner.lock() {
            let serial = serial.to_ascii_lowercase();
            if inner.by_serial.len() >= MAX_NODES && !inner.by_serial.contains_key(&serial) {
                inner.by_serial.clear();
            }
            inner.by_serial.insert(serial, mac);
        }
    }

    /// Records `milestone` for the Pi with board serial `serial`, if its DHCP was seen.
    pub fn mark_serial(&self, serial: &str, milestone: &'static str) {
        let mac = self
            .inner
            .lock()
            .ok()
            .and_then(|i| i.by_serial.get(&serial.to_ascii_lowercase()).copied());
        if let Some(mac) = mac {
            self.mark(mac, milestone);
        }
    }

    /// Records `milestone` for whichever node `ip` belongs to, if known.
    pub fn mark_ip(&self, ip: IpAddr, milestone: &'static str) {
        let mac = self
            .inner
            .lock()
            .ok()
            .and_then(|i| i.by_ip.get(&ip).copied());
        if let Some(mac) = mac {
            self.mark(mac, milestone);
        }
    }

    /// The current (last) boot of `mac`.
    pub fn of(&self, mac: &Mac) -> Option<Boot> {
        self.inner.lock().ok()?.boots.get(mac).cloned()
    }

    /// Every MAC with a boot.
    pub fn macs(&self) -> Vec<Mac> {
        self.inner
            .lock()
            .map(|i| i.boots.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// The milestone an artifact file of a profile's netboot folder stands for (the Pi's
/// TFTP names included).
pub fn file_milestone(file: &str) -> Option<&'static str> {
    use labimg_builder::target::rpi5::{INITRAMFS_FILE, KERNEL_FILE};
    match file {
        "vmlinuz" | KERNEL_FILE => Some("kernel"),
        "initrd.img" | INITRAMFS_FILE => Some("initrd"),
        "root.squashfs" => Some("root-image"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn a_boot_from_power_on_to_k3s() {
        let t = Timeline::default();
        let m = mac("02:00:00:00:00:01");
        assert_eq!(t.mark(m, "dhcp-discover"), None);
        t.mark(m, "dhcp-offer");
        // iPXE chain-loaded by the ROM asks again: still the same boot.
        t.mark(m, "dhcp-discover");
        t.bind_ip("10.0.0.5".parse().unwrap(), m);
        t.mark(m, "boot-script");
        t.mark_ip("10.0.0.5".parse().unwrap(), "kernel");
        t.mark_ip("10.0.0.9".parse().unwrap(), "initrd"); // an unknown address: nobody's
        t.mark(m, "booted");
        let k3s = t.mark(m, "k3s-started");
        assert!(k3s.is_some_and(|s| s >= 0.0));
        let b = t.of(&m).unwrap();
        assert!(b.from_power_on);
        let names: Vec<_> = b.marks.iter().map(|m| m.milestone).collect();
        assert_eq!(
            names,
            [
                "dhcp-discover",
                "dhcp-offer",
                "boot-script",
                "kernel",
                "booted",
                "k3s-started"
            ]
        );
        assert!(b.marks.windows(2).all(|w| w[0].seconds <= w[1].seconds));
        // The next power-on starts a new boot; a repeated milestone is not re-counted.
        assert_eq!(t.mark(m, "k3s-started"), None);
        t.mark(m, "dhcp-discover");
        assert_eq!(t.of(&m).unwrap().marks.len(), 1);
    }

    /// A Pi (TFTP, no boot script) that reboots quickly gets a new boot, not its
    /// marks dropped onto the finished one.
    #[test]
    fn a_quick_reboot_without_a_boot_script_is_a_new_boot() {
        let t = Timeline::default();
        let m = mac("d8:3a:dd:00:00:01");
        t.mark(m, "dhcp-discover");
        t.mark(m, "booted");
        assert!(t.mark(m, "k3s-started").is_some());
        t.mark(m, "dhcp-discover");
        let b = t.of(&m).unwrap();
        assert_eq!(b.marks.len(), 1, "{b:?}");
        t.mark(m, "booted");
        assert!(
            t.mark(m, "k3s-started").is_some(),
            "the second boot is timed too"
        );
    }

    #[test]
    fn boots_not_seen_from_power_on_are_not_timed() {
        let t = Timeline::default();
        let m = mac("02:00:00:00:00:02");
        t.mark(m, "booted");
        assert_eq!(
            t.mark(m, "k3s-started"),
            None,
            "no power-on: not in the histogram"
        );
        assert!(!t.of(&m).unwrap().from_power_on);
        t.mark(m, "booted"); // a reboot that skipped the server's DHCP
        assert_eq!(t.of(&m).unwrap().marks.len(), 1);
    }

    /// Stage 1's milestones arrive from stage 2 with how long ago they happened.
    #[test]
    fn a_milestone_posted_late_is_placed_when_it_happened() {
        let t = Timeline::default();
        let m = mac("02:00:00:00:00:03");
        t.mark(m, "dhcp-discover");
        std::thread::sleep(Duration::from_millis(300));
        t.mark(m, "root-image");
        std::thread::sleep(Duration::from_millis(300));
        // Posted now, happened 0.5 s ago: before the root image was fetched.
        t.mark_ago(m, "booted", 0.5);
        // An `ago` reaching back past power-on stops at the boot's start.
        t.mark_ago(m, "root-verified", 3600.0);
        t.mark_ago(m, "network-up", f64::NAN); // not from a validated event: now
        let b = t.of(&m).unwrap();
        let names: Vec<_> = b.marks.iter().map(|m| m.milestone).collect();
        assert_eq!(
            names,
            [
                "dhcp-discover",
                "root-verified",
                "booted",
                "root-image",
                "network-up"
            ]
        );
        let at = |n: &str| b.seconds_to(n).unwrap();
        assert_eq!(at("root-verified"), 0.0);
        assert!(
            at("booted") > 0.0 && at("booted") < at("root-image"),
            "{b:?}"
        );
        assert!((at("booted") - 0.1).abs() < 0.1, "{b:?}");
    }

    /// A boot the server did not see from power-on (another DHCP server answered)
    /// starts when its first event's milestone happened, not when it arrived.
    #[test]
    fn a_boot_first_seen_through_a_late_event_starts_when_it_happened() {
        let t = Timeline::default();
        let m = mac("02:00:00:00:00:04");
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        t.mark_ago(m, "booted", 20.0);
        t.mark_ago(m, "root-verified", 15.0);
        t.mark(m, "network-up");
        let b = t.of(&m).unwrap();
        assert!(!b.from_power_on);
        assert!((before - 20.0 - b.started).abs() < 1.0, "{b:?}");
        assert_eq!(b.seconds_to("booted"), Some(0.0));
        let at = |n: &str| b.seconds_to(n).unwrap();
        assert!((at("root-verified") - 5.0).abs() < 0.5, "{b:?}");
        assert!((at("network-up") - 20.0).abs() < 0.5, "{b:?}");
    }

    /// A Pi's TFTP kernel and initramfs count for the MAC its DHCP came from.
    #[test]
    fn a_pi_is_followed_from_its_dhcp_to_its_tftp_files_by_serial() {
        let t = Timeline::default();
        let m = mac("d8:3a:dd:00:00:01");
        t.mark(m, "dhcp-discover");
        t.bind_serial("DC4A8F1B", m);
        t.mark_serial("dc4a8f1b", "kernel");
        t.mark_serial("0badc0de", "initrd"); // nobody's
        t.mark_serial("dc4a8f1b", "initrd");
        let names: Vec<_> = t
            .of(&m)
            .unwrap()
            .marks
            .iter()
            .map(|m| m.milestone)
            .collect();
        assert_eq!(names, ["dhcp-discover", "kernel", "initrd"]);
        assert_eq!(t.macs(), [m]);
    }

    #[test]
    fn every_milestone_is_named() {
        for f in [
            "vmlinuz",
            "initrd.img",
            "root.squashfs",
            "kernel_2712.img",
            "initramfs.img",
        ] {
            assert!(MILESTONES.contains(&file_milestone(f).unwrap()));
        }
        assert_eq!(file_milestone("SHA256SUMS"), None);
        for s in crate::events::STAGES {
            assert!(MILESTONES.contains(s), "{s}");
        }
    }
}
