//! The Raspberry Pi 5 image boots on QEMU's aarch64 `virt` machine to the k3s
//! stand-in: the kernel, initramfs and command line are taken from the image's
//! own boot-a partition (QEMU's loader plays the Pi firmware, which QEMU does
//! not emulate) and the whole disk is attached as VirtIO block, so root slot A,
//! its verification and STATE are the image's real ones.
//!
//! The same boot is the arm64 SSH test (#17): the profile authorizes one key, the
//! node sits on a LAN (a bridge in a network namespace, Debian's dnsmasq as DHCP
//! server, chrony as NTP server) and a real client (Debian's openssh-client) checks
//! the host keys against the console's fingerprints, logs in as root with the key,
//! is refused with another key and with a password, reads the persisted log (the
//! milestones said before syslogd started are in it) and powers the node off, through
//! its stop sequence. The stand-in keeps running until then (`run` mode).
//!
//! The profile takes the small module set (`kernel.module-set = "node"`, #15), so
//! this boot is also its proof: stage 1's boot modules, stage 2's k3s and Cilium
//! modules and the stand-in's host contract (a netfilter chain loaded by alias, a
//! link type the kernel loads on demand) all work with only the kept modules. The
//! shipped pi5 profile keeps `"full"`; `shipped_profiles_boot` boots that one.

use std::time::{Duration, Instant};

use labimg_qemu_tests::netns::HomeLan;
use labimg_qemu_tests::ssh::{Login, boot_and_log_in, keygen, profile_key, profile_ssh_table};
use labimg_qemu_tests::{Vm, build_once, pi5_boot_files, raw_image};

const MAC: &str = "52:54:00:12:34:57";
const NET: u8 = 80;

/// The shipped pi5 profile with the node module set, plus one node keyed by the
/// VM's MAC (`virt` has no Pi serial number in its device tree), and the test's
/// SSH key.
fn profile() -> String {
    format!(
        r#"
extends = "pi5.toml"

[kernel]
module-set = "node"

[[nodes]]
hostname = "pi-cp-1"
mac = "{MAC}"
role = "server"
# The test's dnsmasq leases the VM the same address every time.
dhcp-reservation = true
labels = {{ "topology.kubernetes.io/zone" = "shelf-1" }}

{}"#,
        profile_ssh_table()
    )
}

#[test]
fn pi5_image_boots_on_aarch64_virt_to_the_k3s_stand_in() {
    let started = Instant::now();
    let out = build_once("pi5", &profile()).expect("building the pi5 profile");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let modules = &manifest["root_modules"];
    eprintln!("root image modules: {modules}");
    assert_eq!(modules["set"], "node", "{modules}");
    assert!(
        modules["dropped"].as_u64().unwrap() > 1000,
        "the node set dropped too little: {modules}"
    );
    let scratch = tempfile::tempdir().unwrap();
    let raw = raw_image(&out, scratch.path());
    let (kernel, initrd, append) = pi5_boot_files(&raw, scratch.path());
    eprintln!("build and boot files: {:.0?}", started.elapsed());

    let lan = HomeLan::start("labimg-rpi5", NET).unwrap();
    let ns = &lan.ns;
    let good = profile_key();
    let wrong = scratch.path().join("wrong_ed25519");
    keygen(&wrong, "not-in-the-profile");
    let login = Login {
        net: NET,
        hostname: "pi-cp-1",
        good: &good,
        wrong: &wrong,
    };
    let vm = Vm::aarch64_virt("rpi5-boot")
        .unwrap()
        .direct_kernel(&kernel, &initrd, &append)
        .virtio_disk(&raw, "raw")
        .unwrap()
        .tap_nic("tap0", MAC)
        .in_netns(ns.name())
        .stand_in_mode("run");
    let (log, _) = boot_and_log_in(ns, vm, Duration::from_secs(400), &login, |client| {
        // Stage 1's and early stage 2's milestones (said before syslogd ran) are in
        // the persisted log, replayed in the order they were said.
        let out = client.ssh(
            &good,
            "grep -o 'labimg: stage[12] start' /var/log/labimg/messages",
        );
        let found = String::from_utf8_lossy(&out.stdout);
        if found != "labimg: stage1 start\nlabimg: stage2 start\n" {
            return Err(format!(
                "the early milestones are not in the persisted log once each: {found:?}, {:?}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    });
    eprintln!("boot with SSH: {:.0?}", log.elapsed);
    log.assert_absent("labimg: FATAL");
    log.assert_host_contract(&[]);
    log.assert_in_order(&[
        "labimg: stage1 start",
        "labimg: modules loaded",
        "labimg: root found dev=/dev/vda4",
        "labimg: root verified",
        "labimg: root mounted",
        "labimg: stage2 start",
        "labimg: state created",
        "labimg: state mounted",
        "labimg: network up",
        "labimg: identity hostname=pi-cp-1 role=server",
        "labimg: time synced source=dhcp",
        "host-keys=created",
        // Modules load in the background until the k3s config is written.
        "labimg: kernel ready",
        "labimg: config written",
        "labimg: k3s binary source=baked",
        "labimg: k3s starting role=server",
        "k3s-stand-in: argv: server --config /etc/rancher/k3s/config.yaml",
        "k3s-stand-in: hostname=pi-cp-1",
        "k3s-stand-in: ready mode=run",
        // poweroff over SSH: the stop sequence, as on x86.
        "labimg: stopping action=poweroff",
        "labimg: powering off",
    ]);
    log.assert_absent("labimg: WARNING: ssh");
    log.assert_absent("/var busy");
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
        "the VM did not power off after poweroff over SSH; log: {}",
        log.keep().display()
    );
}
