//! The shipped `proxmox` and `pi5` profiles, built as they are (no `[[nodes]]`, no
//! edits; only the k3s STAND-IN baked in, since the real k3s cannot be downloaded
//! here), boot on a machine they have never heard of into a single-node k3s server:
//! address from a real DHCP server (Debian's dnsmasq, the "home router") on a
//! bridge inside a network namespace, hostname derived from the MAC. Two machines
//! with two MACs get two names; the first machine booted again keeps its name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use labimg_qemu_tests::netns::{Daemon, Netns};
use labimg_qemu_tests::{
    SerialLog, Vm, build_profile_file_once, pi5_boot_files, qcow2_overlay, raw_image,
    workspace_root,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// The short-lease LAN's lease time, and how many renewals the proxmox VM must show
/// (udhcpc renews at half the lease) before it is shut down.
const LEASE_SECS: u32 = 20;
const RENEWALS: usize = 3;

/// The LAN's DHCP server: dnsmasq (hour-long leases), or busybox udhcpd with
/// 20-second leases, which a node must keep renewing.
enum Dhcp {
    Dnsmasq(Daemon),
    ShortLeases(Daemon),
}

/// A namespace with a bridge, a DHCP server handing out 10.x.0.100–150 and an NTP
/// server (chrony) on 10.x.0.1, which the DHCP server names in option 42.
struct Lan {
    dhcp: Dhcp,
    ntp: Daemon,
    ns: Netns,
}

impl Lan {
    fn start(name: &str, net: u8, short_leases: bool) -> Lan {
        let ns = Netns::create(
            &format!("labimg-{name}-{}", std::process::id()),
            &format!("10.{net}.0.1/24"),
        )
        .unwrap();
        for tap in ["tap0", "tap1"] {
            ns.add_tap(tap).unwrap();
        }
        let ntp = ns.chrony_server(&format!("10.{net}.0.1")).unwrap();
        let (first, last) = (format!("10.{net}.0.100"), format!("10.{net}.0.150"));
        let dhcp = if short_leases {
            let router = format!("10.{net}.0.1");
            Dhcp::ShortLeases(ns.udhcpd(&first, &last, &router, LEASE_SECS).unwrap())
        } else {
            Dhcp::Dnsmasq(ns.dnsmasq_dhcp(&first, &last).unwrap())
        };
        Lan { dhcp, ntp, ns }
    }

    /// Whether the DHCP server leased an address of 10.`net`.0.x to `mac`.
    fn leased(&self, net: u8, mac: &str) -> (bool, String) {
        match &self.dhcp {
            Dhcp::Dnsmasq(d) => {
                let log = d.log();
                let ok = log.contains(&format!("DHCPACK(br0) 10.{net}.0.")) && log.contains(mac);
                (ok, log)
            }
            Dhcp::ShortLeases(d) => {
                let leases = d.leases();
                let ok = leases
                    .lines()
                    .any(|l| l.contains(mac) && l.contains(&format!("10.{net}.0.")));
                (ok, leases)
            }
        }
    }
}

fn shipped(name: &str) -> PathBuf {
    let path = workspace_root().join(format!("profiles/{name}.toml"));
    build_profile_file_once(&format!("{name}-shipped"), &path, &[])
        .unwrap_or_else(|e| panic!("building the shipped {name} profile: {e:#}"))
}

/// How the stand-in ended a boot: at once (no fw_cfg mode), or through the node's
/// stop sequence, asked for by the power button or by busybox `reboot`.
const POWERED_OFF_AT_ONCE: &str = "k3s-stand-in: done, powering off";
const POWER_BUTTON: &str = "labimg: powering off";
const REBOOTED: &str = "labimg: rebooting";

/// Checks one boot of a shipped image on an unlisted machine with `mac`, on `net`,
/// that ended with `end`. Returns the host contract's details (machine-id, node
/// password digest).
fn assert_default_server(
    log: &SerialLog,
    lan: &Lan,
    net: u8,
    mac: &str,
    end: &str,
) -> std::collections::BTreeMap<String, String> {
    let host = format!("homelab-{}", mac.replace(':', "")[6..].to_owned());
    log.assert_absent("labimg: FATAL");
    log.assert_in_order(&[
        "labimg: stage2 start",
        "labimg: state mounted",
        &format!("labimg: network up if=eth0 ip=10.{net}.0."),
        &format!("labimg: identity hostname={host} role=server source=default"),
        "labimg: config written",
        "labimg: k3s binary source=baked",
        "labimg: k3s starting role=server",
        "k3s-stand-in: argv: server --config /etc/rancher/k3s/config.yaml",
        &format!("k3s-stand-in: hostname={host}"),
        end,
    ]);
    let config: Vec<String> = log
        .lines_with("k3s-stand-in: config| ")
        .iter()
        .map(|l| l["k3s-stand-in: config| ".len()..].to_owned())
        .collect();
    for key in ["node-name:", "server:", "token-file:", "cluster-init:"] {
        assert!(
            !config.iter().any(|l| l.starts_with(key)),
            "a single-node server without {key}: {config:#?}; log: {}",
            log.keep().display()
        );
    }
    assert!(config.iter().any(|l| l == "flannel-backend: none"));
    assert_eq!(
        log.lines_with("k3s-stand-in: manifest cilium.yaml").len(),
        1,
        "Cilium manifest; log: {}",
        log.keep().display()
    );
    let (leased, leases) = lan.leased(net, mac);
    assert!(
        leased,
        "the DHCP server did not lease an address to {mac}: {leases}"
    );
    assert!(
        log.powered_off,
        "no power-off; log: {}",
        log.keep().display()
    );
    log.assert_host_contract(&[])
}

/// Where every first boot's RTC starts: long before the image was built.
const RTC_IN_THE_PAST: &[&str] = &["-rtc", "base=2001-01-01T00:00:00"];

/// The node's clock as the k3s stand-in saw it (seconds since the epoch).
fn stand_in_clock(log: &SerialLog) -> u64 {
    let line = log.lines_with("k3s-stand-in: clock ");
    line.first()
        .and_then(|l| l.split("epoch=").nth(1))
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("no clock line; log: {}", log.keep().display()))
}

/// A first boot with the RTC in 2001 and the LAN's NTP server up: the clock was raised
/// to the image's build time, then set by NTP (the server DHCP named) before k3s
/// started, so the stand-in sees the host's time.
fn assert_time_synced(log: &SerialLog, net: u8) {
    log.assert_in_order(&[
        "labimg: clock raised from=",
        &format!("labimg: time synced source=dhcp servers=10.{net}.0.1 offset="),
        "k3s-stand-in: clock ",
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let seen = stand_in_clock(log);
    assert!(
        seen.abs_diff(now) < 600,
        "k3s started at {seen}, the host says {now}; log: {}",
        log.keep().display()
    );
}

/// A boot with the RTC in 2001 and no NTP server: the clock starts at the time saved
/// on STATE at the last shutdown, not before what an earlier boot already saw.
fn assert_clock_from_saved(log: &SerialLog, earlier: &SerialLog) {
    log.assert_in_order(&[
        "labimg: clock raised from=",
        "source=saved",
        "labimg: WARNING: time not synced",
        "k3s-stand-in: clock ",
    ]);
    assert!(
        stand_in_clock(log) >= stand_in_clock(earlier),
        "the clock went back across a reboot; logs: {} {}",
        log.keep().display(),
        earlier.keep().display()
    );
}

/// What must survive a reboot (k3s's node password, the machine-id) did, and two
/// machines do not share them.
fn assert_kept_across_reboot(
    first: &std::collections::BTreeMap<String, String>,
    again: &std::collections::BTreeMap<String, String>,
    other: &std::collections::BTreeMap<String, String>,
) {
    let pw = |c: &std::collections::BTreeMap<String, String>| {
        c["node-password"]
            .split(' ')
            .find(|w| w.starts_with("sha256="))
            .unwrap()
            .to_owned()
    };
    labimg_qemu_tests::assert_node_identity_kept(first, again);
    assert_ne!(pw(first), pw(other), "two machines share a node password");
    assert_ne!(
        first["machine-id"], other["machine-id"],
        "two machines share a machine-id"
    );
}

/// The stop sequence ran in order (pods, k3s, shims, the pod's mounts and /var) and
/// ended with `end`.
fn assert_stop_sequence(log: &SerialLog, action: &str, end: &str) {
    log.assert_absent("labimg: WARNING: /var busy");
    log.assert_in_order(&[
        "k3s-stand-in: pod standin0pod started",
        "k3s-stand-in: ready",
        &format!("labimg: stopping action={action}"),
        "k3s-stand-in: pod standin0pod got SIGTERM",
        "labimg: stop pods stopped=1",
        "k3s-stand-in: SIGTERM, stopping",
        "labimg: stop k3s stopped",
        "labimg: stop shims killed=",
        // The pod's volume and its sandbox's /dev/shm.
        "labimg: stop unmounted /var submounts=2",
        end,
    ]);
    assert!(
        log.powered_off,
        "QEMU did not exit; log: {}",
        log.keep().display()
    );
}

/// The proxmox image on three boots: VM 1 runs on 20-second DHCP leases until it
/// renewed three times and is shut down with the power button (ACPI, as Proxmox's
/// Shutdown does);
/// VM 2 is another machine; VM 1 boots again and is rebooted with busybox `reboot`.
#[test]
fn shipped_proxmox_image_boots_any_vm_into_a_single_node_server() {
    let out = shipped("proxmox");
    let mut lan = Lan::start("shipped-pve", 78, true);
    let qcow2 = out.join("proxmox.qcow2");
    let work = tempfile::tempdir().unwrap();
    let vm = |disk: &Path, tap: &str, mac: &str, name: &str| {
        Vm::x86_64_uefi(name)
            .unwrap()
            .scsi_existing_overlay(disk)
            .tap_nic(tap, mac)
            .in_netns(lan.ns.name())
    };
    let (disk1, disk2) = (work.path().join("vm1.qcow2"), work.path().join("vm2.qcow2"));
    for d in [&disk1, &disk2] {
        qcow2_overlay(&qcow2, "qcow2", d, Some("4G")).unwrap();
    }
    // Three renewals of a 20-second lease (one every ~10 s), then the power button.
    let first = vm(&disk1, "tap0", "52:54:00:78:00:01", "shipped-pve-1")
        .extra_args(RTC_IN_THE_PAST)
        .stand_in_mode("run")
        .boot_with(
            None,
            BOOT_TIMEOUT + Duration::from_secs(60),
            &[("labimg: dhcp renewed", RENEWALS, "system_powerdown")],
        )
        .unwrap();
    let c1 = assert_default_server(&first, &lan, 78, "52:54:00:78:00:01", POWER_BUTTON);
    first.assert_in_order(&["labimg: power button acpid", "labimg: state created"]);
    first.assert_absent("dhcp address of");
    let renewals = first.lines_with("labimg: dhcp renewed if=eth0 ");
    let up = first.lines_with("labimg: network up if=eth0 ip=");
    let ip = up[0].split("ip=").nth(1).unwrap().trim();
    assert!(
        renewals.len() >= RENEWALS
            && renewals
                .iter()
                .all(|l| l.contains(&format!("ip={ip} lease={LEASE_SECS}s unchanged"))),
        "the {LEASE_SECS}-second lease of {ip} was not kept renewed: {renewals:#?}; log: {}",
        first.keep().display()
    );
    assert_stop_sequence(&first, "poweroff", POWER_BUTTON);
    assert!(first.lines_with("k3s-stand-in: data boots=1").len() == 1);
    assert_time_synced(&first, 78);

    let second = vm(&disk2, "tap1", "52:54:00:78:00:02", "shipped-pve-2")
        .boot(None, BOOT_TIMEOUT)
        .unwrap();
    let c2 = assert_default_server(&second, &lan, 78, "52:54:00:78:00:02", POWERED_OFF_AT_ONCE);
    // The first VM again, its RTC in 2001 and the NTP server gone: same name, its STATE
    // and saved time kept; busybox reboot ends it.
    lan.ntp.stop();
    let again = vm(&disk1, "tap0", "52:54:00:78:00:01", "shipped-pve-1-again")
        .extra_args(RTC_IN_THE_PAST)
        .stand_in_mode("reboot")
        .boot(None, BOOT_TIMEOUT)
        .unwrap();
    let c3 = assert_default_server(&again, &lan, 78, "52:54:00:78:00:01", REBOOTED);
    again.assert_absent("labimg: state created");
    // The log on STATE (syslogd) still holds what k3s wrote on the first boot.
    again.assert_in_order(&[
        "labimg: logs persisted file=/var/log/labimg/messages",
        "k3s-stand-in: data boots=2",
        "k3s-stand-in: persisted-log previous-boot=found",
        "k3s-stand-in: running busybox reboot",
    ]);
    assert_stop_sequence(&again, "reboot", REBOOTED);
    assert_clock_from_saved(&again, &first);
    assert_kept_across_reboot(&c1, &c3, &c2);
}

#[test]
fn shipped_pi5_image_boots_any_board_into_a_single_node_server() {
    let out = shipped("pi5");
    let scratch = tempfile::tempdir().unwrap();
    let raw = raw_image(&out, scratch.path());
    let (kernel, initrd, append) = pi5_boot_files(&raw, scratch.path());
    let mut lan = Lan::start("shipped-pi5", 79, false);
    let vm = |disk: &Path, tap: &str, mac: &str, name: &str| {
        Vm::aarch64_virt(name)
            .unwrap()
            .direct_kernel(&kernel, &initrd, &append)
            .virtio_existing_overlay(disk)
            .tap_nic(tap, mac)
            .in_netns(lan.ns.name())
    };
    let boot = |disk: &Path, tap: &str, mac: &str, name: &str| {
        vm(disk, tap, mac, name).boot(None, BOOT_TIMEOUT).unwrap()
    };
    let (disk1, disk2) = (
        scratch.path().join("pi1.qcow2"),
        scratch.path().join("pi2.qcow2"),
    );
    for d in [&disk1, &disk2] {
        qcow2_overlay(&raw, "raw", d, None).unwrap();
    }
    // A Pi 5 has no battery for its RTC: it may start in any past.
    let first = vm(&disk1, "tap0", "52:54:00:79:00:01", "shipped-pi5-1")
        .extra_args(RTC_IN_THE_PAST)
        .boot(None, BOOT_TIMEOUT)
        .unwrap();
    let c1 = assert_default_server(&first, &lan, 79, "52:54:00:79:00:01", POWERED_OFF_AT_ONCE);
    let second = boot(&disk2, "tap1", "52:54:00:79:00:02", "shipped-pi5-2");
    let c2 = assert_default_server(&second, &lan, 79, "52:54:00:79:00:02", POWERED_OFF_AT_ONCE);
    // Booted again, running until the power button (gpio-keys on QEMU's virt board,
    // like the Pi 5's own button) is pressed.
    lan.ntp.stop();
    let again = vm(&disk1, "tap0", "52:54:00:79:00:01", "shipped-pi5-1-again")
        .extra_args(RTC_IN_THE_PAST)
        .stand_in_mode("run")
        .boot_with(
            None,
            BOOT_TIMEOUT,
            &[("k3s-stand-in: ready", 1, "system_powerdown")],
        )
        .unwrap();
    let c3 = assert_default_server(&again, &lan, 79, "52:54:00:79:00:01", POWER_BUTTON);
    again.assert_absent("labimg: state created");
    again.assert_in_order(&["labimg: power button acpid"]);
    assert_stop_sequence(&again, "poweroff", POWER_BUTTON);
    assert_time_synced(&first, 79);
    assert_clock_from_saved(&again, &first);
    assert_kept_across_reboot(&c1, &c3, &c2);
}
