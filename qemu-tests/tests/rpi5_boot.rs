//! The Raspberry Pi 5 image boots on QEMU's aarch64 `virt` machine to the k3s
//! stand-in: the kernel, initramfs and command line are taken from the image's
//! own boot-a partition (QEMU's loader plays the Pi firmware, which QEMU does
//! not emulate) and the whole disk is attached as VirtIO block, so root slot A,
//! its verification and STATE are the image's real ones.

use std::time::Duration;

use labimg_qemu_tests::{Vm, build_once, pi5_boot_files, raw_image};

const MAC: &str = "52:54:00:12:34:57";

/// The shipped pi5 profile plus one node keyed by the VM's MAC (`virt` has no
/// Pi serial number in its device tree).
const PROFILE: &str = r#"
extends = "pi5.toml"

[[nodes]]
hostname = "pi-cp-1"
mac = "52:54:00:12:34:57"
role = "server"
# QEMU's user network hands the VM the same address every time.
dhcp-reservation = true
labels = { "topology.kubernetes.io/zone" = "shelf-1" }
"#;

#[test]
fn pi5_image_boots_on_aarch64_virt_to_the_k3s_stand_in() {
    let out = build_once("pi5", PROFILE).expect("building the pi5 profile");
    let scratch = tempfile::tempdir().unwrap();
    let raw = raw_image(&out, scratch.path());
    let (kernel, initrd, append) = pi5_boot_files(&raw, scratch.path());

    let log = Vm::aarch64_virt("rpi5-boot")
        .unwrap()
        .direct_kernel(&kernel, &initrd, &append)
        .virtio_disk(&raw, "raw")
        .unwrap()
        .user_net(MAC)
        .boot(None, Duration::from_secs(300))
        .unwrap();
    log.assert_absent("labimg: FATAL");
    log.assert_host_contract(&[]);
    log.assert_in_order(&[
        "labimg: stage1 start",
        "labimg: modules loaded",
        "labimg: root found dev=/dev/vda4",
        "labimg: root verified",
        "labimg: root mounted",
        "labimg: stage2 start",
        "labimg: kernel ready",
        "labimg: state created",
        "labimg: state mounted",
        "labimg: network up",
        "labimg: identity hostname=pi-cp-1 role=server",
        "labimg: config written",
        "labimg: k3s binary source=baked",
        "labimg: k3s starting role=server",
        "k3s-stand-in: argv: server --config /etc/rancher/k3s/config.yaml",
        "k3s-stand-in: hostname=pi-cp-1",
        "k3s-stand-in: done, powering off",
    ]);
    // The arm64 kernel loads every module k3s and Cilium need, and takes the sysctls.
    log.assert_absent("MISSING");
    log.assert_absent("labimg: WARNING: modules failed");
    for want in [
        "k3s-stand-in: module overlay loaded",
        "k3s-stand-in: module br_netfilter loaded",
        "k3s-stand-in: module vxlan loaded",
        "k3s-stand-in: sysctl net.ipv4.ip_forward=1",
        "k3s-stand-in: sysctl net.bridge.bridge-nf-call-iptables=1",
    ] {
        assert_eq!(log.lines_with(want).len(), 1, "{want:?} missing");
    }
    // The config's keys come in the renderer's order: check them as a set.
    let config: Vec<String> = log.lines_with("k3s-stand-in: config| ");
    for want in [
        "node-name: pi-cp-1",
        "flannel-backend: none",
        "disable-network-policy: true",
        "- topology.kubernetes.io/zone=shelf-1",
    ] {
        assert!(
            config.iter().any(|l| l.ends_with(want)),
            "{want:?} missing from the k3s config: {config:#?}; log: {}",
            log.keep().display()
        );
    }
    // One server: k3s's default SQLite, no embedded etcd (k3s.datastore = "auto").
    assert!(
        !config.iter().any(|l| l.ends_with("cluster-init: true")),
        "a single server must not start embedded etcd: {config:#?}"
    );
    assert!(
        log.powered_off,
        "the VM did not power off by itself; log: {}",
        log.keep().display()
    );
}
