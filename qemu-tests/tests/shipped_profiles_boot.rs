//! The shipped `proxmox` and `pi5` profiles, built as they are (no `[[nodes]]`, no
//! edits; only the k3s STAND-IN baked in, since the real k3s cannot be downloaded
//! here), boot on a machine they have never heard of into a single-node k3s server:
//! address from a real DHCP server (Debian's dnsmasq, the "home router") on a
//! bridge inside a network namespace, hostname derived from the MAC. Two machines
//! with two MACs get two names; the first machine booted again keeps its name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use labimg_qemu_tests::netns::{DhcpServer, Netns};
use labimg_qemu_tests::{
    SerialLog, Vm, build_profile_file_once, pi5_boot_files, qcow2_overlay, raw_image,
    workspace_root,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// A namespace with a bridge and dnsmasq handing out 10.x.0.100–150.
struct Lan {
    dhcp: DhcpServer,
    ns: Netns,
}

impl Lan {
    fn start(name: &str, net: u8) -> Lan {
        let ns = Netns::create(
            &format!("labimg-{name}-{}", std::process::id()),
            &format!("10.{net}.0.1/24"),
        )
        .unwrap();
        for tap in ["tap0", "tap1"] {
            ns.add_tap(tap).unwrap();
        }
        let dhcp = ns
            .dnsmasq_dhcp(&format!("10.{net}.0.100"), &format!("10.{net}.0.150"))
            .unwrap();
        Lan { dhcp, ns }
    }
}

fn shipped(name: &str) -> PathBuf {
    let path = workspace_root().join(format!("profiles/{name}.toml"));
    build_profile_file_once(&format!("{name}-shipped"), &path, &[])
        .unwrap_or_else(|e| panic!("building the shipped {name} profile: {e:#}"))
}

/// Checks one boot of a shipped image on an unlisted machine with `mac`, on `net`.
/// Returns the host contract's details (machine-id, node password digest).
fn assert_default_server(
    log: &SerialLog,
    lan: &Lan,
    net: u8,
    mac: &str,
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
        "k3s-stand-in: done, powering off",
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
    let leases = lan.dhcp.log();
    assert!(
        leases.contains(&format!("DHCPACK(br0) 10.{net}.0.")) && leases.contains(mac),
        "dnsmasq did not lease an address to {mac}: {leases}"
    );
    assert!(
        log.powered_off,
        "no power-off; log: {}",
        log.keep().display()
    );
    log.assert_host_contract(&[])
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
    assert!(first["node-password"].contains("created=yes"), "{first:?}");
    assert!(again["node-password"].contains("created=no"), "{again:?}");
    assert_eq!(
        pw(first),
        pw(again),
        "the node password changed across a reboot"
    );
    assert_eq!(
        first["machine-id"], again["machine-id"],
        "the machine-id changed"
    );
    assert_ne!(pw(first), pw(other), "two machines share a node password");
    assert_ne!(
        first["machine-id"], other["machine-id"],
        "two machines share a machine-id"
    );
}

#[test]
fn shipped_proxmox_image_boots_any_vm_into_a_single_node_server() {
    let out = shipped("proxmox");
    let lan = Lan::start("shipped-pve", 78);
    let qcow2 = out.join("proxmox.qcow2");
    let work = tempfile::tempdir().unwrap();
    let boot = |disk: &Path, tap: &str, mac: &str, name: &str| {
        Vm::x86_64_uefi(name)
            .unwrap()
            .scsi_existing_overlay(disk)
            .tap_nic(tap, mac)
            .in_netns(lan.ns.name())
            .boot(None, BOOT_TIMEOUT)
            .unwrap()
    };
    let (disk1, disk2) = (work.path().join("vm1.qcow2"), work.path().join("vm2.qcow2"));
    for d in [&disk1, &disk2] {
        qcow2_overlay(&qcow2, "qcow2", d, Some("4G")).unwrap();
    }
    let first = boot(&disk1, "tap0", "52:54:00:78:00:01", "shipped-pve-1");
    let c1 = assert_default_server(&first, &lan, 78, "52:54:00:78:00:01");
    first.assert_in_order(&["labimg: state created"]);
    let second = boot(&disk2, "tap1", "52:54:00:78:00:02", "shipped-pve-2");
    let c2 = assert_default_server(&second, &lan, 78, "52:54:00:78:00:02");
    // The first VM again: same name, its STATE kept.
    let again = boot(&disk1, "tap0", "52:54:00:78:00:01", "shipped-pve-1-again");
    let c3 = assert_default_server(&again, &lan, 78, "52:54:00:78:00:01");
    again.assert_absent("labimg: state created");
    assert_kept_across_reboot(&c1, &c3, &c2);
}

#[test]
fn shipped_pi5_image_boots_any_board_into_a_single_node_server() {
    let out = shipped("pi5");
    let scratch = tempfile::tempdir().unwrap();
    let raw = raw_image(&out, scratch.path());
    let (kernel, initrd, append) = pi5_boot_files(&raw, scratch.path());
    let lan = Lan::start("shipped-pi5", 79);
    let boot = |disk: &Path, tap: &str, mac: &str, name: &str| {
        Vm::aarch64_virt(name)
            .unwrap()
            .direct_kernel(&kernel, &initrd, &append)
            .virtio_existing_overlay(disk)
            .tap_nic(tap, mac)
            .in_netns(lan.ns.name())
            .boot(None, BOOT_TIMEOUT)
            .unwrap()
    };
    let (disk1, disk2) = (
        scratch.path().join("pi1.qcow2"),
        scratch.path().join("pi2.qcow2"),
    );
    for d in [&disk1, &disk2] {
        qcow2_overlay(&raw, "raw", d, None).unwrap();
    }
    let first = boot(&disk1, "tap0", "52:54:00:79:00:01", "shipped-pi5-1");
    let c1 = assert_default_server(&first, &lan, 79, "52:54:00:79:00:01");
    let second = boot(&disk2, "tap1", "52:54:00:79:00:02", "shipped-pi5-2");
    let c2 = assert_default_server(&second, &lan, 79, "52:54:00:79:00:02");
    let again = boot(&disk1, "tap0", "52:54:00:79:00:01", "shipped-pi5-1-again");
    let c3 = assert_default_server(&again, &lan, 79, "52:54:00:79:00:01");
    again.assert_absent("labimg: state created");
    assert_kept_across_reboot(&c1, &c3, &c2);
}
