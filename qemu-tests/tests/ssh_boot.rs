//! Optional SSH (#17) on a booted node: the shipped proxmox profile with one
//! `[ssh] authorized-keys` entry boots on a LAN (a bridge in a network namespace,
//! Debian's dnsmasq as DHCP server) with the k3s stand-in kept running. A real client
//! (Debian's openssh-client, from the namespace) checks the host key against the
//! fingerprints the console printed, logs in as root with the profile's key, and is
//! refused with another key and with a password (the checks are shared with the arm64
//! `rpi5_boot`: `labimg_qemu_tests::ssh`); `poweroff` over SSH ends the boot through
//! the node's stop sequence. The same disk boots again: the host keys were kept on STATE.

use std::path::Path;
use std::time::Duration;

use labimg_qemu_tests::netns::{HomeLan, Netns};
use labimg_qemu_tests::ssh::{Login, boot_and_log_in, keygen, profile_key, profile_ssh_table};
use labimg_qemu_tests::{SerialLog, Vm, build_once, qcow2_overlay};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const NET: u8 = 79;
const MAC: &str = "52:54:00:79:00:01";

/// One boot of `disk`: logs in once the node says `labimg: ssh ready` (the checks of
/// `labimg_qemu_tests::ssh::log_in`), then powers it off over SSH. Returns the
/// console and the fingerprints of the milestone.
fn boot(ns: &Netns, disk: &Path, name: &str, login: &Login) -> (SerialLog, Vec<(String, String)>) {
    let vm = Vm::x86_64_uefi(name)
        .unwrap()
        .scsi_existing_overlay(disk)
        .tap_nic("tap0", MAC)
        .in_netns(ns.name())
        .stand_in_mode("run");
    boot_and_log_in(ns, vm, BOOT_TIMEOUT, login, |_| Ok(()))
}

#[test]
fn ssh_logs_in_with_the_profiles_key_only_and_the_host_key_is_kept() {
    let good = profile_key();
    let out = build_once(
        "ssh-boot",
        &format!("extends = \"proxmox.toml\"\n{}", profile_ssh_table()),
    )
    .unwrap_or_else(|e| panic!("building the SSH profile: {e:#}"));
    let work = tempfile::tempdir().unwrap();
    let wrong = work.path().join("wrong_ed25519");
    keygen(&wrong, "not-in-the-profile");
    let hostname = format!("homelab-{}", &MAC.replace(':', "")[6..]);
    let login = Login {
        net: NET,
        hostname: &hostname,
        good: &good,
        wrong: &wrong,
    };

    let lan = HomeLan::start("labimg-ssh", NET).unwrap();
    let ns = &lan.ns;
    let disk = work.path().join("disk.qcow2");
    qcow2_overlay(&out.join("proxmox.qcow2"), "qcow2", &disk, Some("4G")).unwrap();

    let (first, fps1) = boot(ns, &disk, "ssh-boot-1", &login);
    first.assert_absent("labimg: FATAL");
    first.assert_absent("labimg: WARNING: ssh");
    first.assert_host_contract(&[]);
    // The SSH server and the session that ran poweroff were stopped before /var.
    first.assert_absent("/var busy");
    first.assert_in_order(&[
        "labimg: state created",
        "labimg: network up if=eth0",
        "host-keys=created",
        "labimg: k3s starting role=server",
        "labimg: stopping action=poweroff",
        "labimg: powering off",
    ]);
    assert!(
        first.powered_off,
        "QEMU did not exit after poweroff over SSH; log: {}",
        first.keep().display()
    );

    // The same disk again: the host keys come from STATE.
    let (second, fps2) = boot(ns, &disk, "ssh-boot-2", &login);
    second.assert_absent("labimg: FATAL");
    second.assert_absent("/var busy");
    second.assert_host_contract(&[]);
    second.assert_in_order(&[
        "labimg: state mounted",
        "host-keys=kept",
        "labimg: powering off",
    ]);
    assert_eq!(
        fps1,
        fps2,
        "the host keys changed across a reboot; log: {}",
        second.keep().display()
    );
}
