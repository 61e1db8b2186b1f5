//! The Proxmox image boots under OVMF (UEFI, VirtIO SCSI, TCG) to the k3s
//! stand-in with the configuration the profile asked for, and a tampered
//! root slot stops the boot with a verification message.

use std::time::Duration;

use labimg_qemu_tests::{RawDisk, Vm, build_once};

const MAC: &str = "52:54:00:12:34:56";

/// The shipped proxmox profile plus one node keyed by the VM's MAC.
const PROFILE_TEMPLATE: &str = r#"
extends = "proxmox.toml"

[[nodes]]
hostname = "pve-cp-1"
mac = "52:54:00:12:34:56"
role = "server"
# QEMU's user network hands the VM the same address every time.
dhcp-reservation = true
labels = { "topology.kubernetes.io/zone" = "rack-1" }

# An image archive for k3s's air-gap import (a test fixture holding no image).
[[k3s.airgap-images]]
path = "@FIXTURES@/airgap-test.tar"
sha256 = "bb478cad2675f9ab241cb3390b3da4ea9b62331e10d60ede3b41989f9f8b45b9"

# One extra module (WireGuard, as a VPN operator would want) and two
# parameters: one new, one overriding labimg's default.
[kernel]
load = ["wireguard"]
sysctls = { "vm.max_map_count" = 262144, "kernel.panic" = 30 }

# raw.xz is the slow output and not what this test boots.
[outputs]
formats = ["qcow2"]
"#;

fn profile() -> String {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    PROFILE_TEMPLATE.replace("@FIXTURES@", fixtures)
}

fn image_name(dir: &std::path::Path) -> std::path::PathBuf {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    dir.join(format!("{}.qcow2", manifest["profile"].as_str().unwrap()))
}

#[test]
fn proxmox_image_boots_under_ovmf_to_the_k3s_stand_in() {
    let out = build_once("proxmox", &profile()).expect("building the proxmox profile");
    let log = Vm::x86_64_uefi("proxmox-boot")
        .unwrap()
        .scsi_disk(&image_name(&out), "qcow2")
        .unwrap()
        .user_net(MAC)
        .boot(None, Duration::from_secs(300))
        .unwrap();
    log.assert_absent("labimg: FATAL");
    log.assert_host_contract(&[]);
    log.assert_in_order(&[
        "labimg: stage1 start",
        "labimg: modules loaded",
        "labimg: root found",
        "labimg: root verified",
        "labimg: root mounted",
        "labimg: stage2 start",
        "labimg: state created",
        "labimg: state mounted",
        "labimg: network up",
        "labimg: identity hostname=pve-cp-1 role=server",
        // Modules load in the background until the k3s config is written.
        "labimg: kernel ready",
        "labimg: config written",
        "labimg: airgap images linked count=1",
        "labimg: k3s binary source=baked",
        "labimg: k3s starting role=server",
        "k3s-stand-in: argv: server --config /etc/rancher/k3s/config.yaml",
        "k3s-stand-in: hostname=pve-cp-1",
        "k3s-stand-in: done, powering off",
    ]);
    // The kernel as k3s finds it: the modules k3s and Cilium need plus the
    // profile's, loaded; labimg's parameters with the profile's on top.
    log.assert_absent("labimg: WARNING: modules failed to load");
    log.assert_absent("labimg: WARNING: sysctls not set");
    log.assert_absent("MISSING");
    for want in [
        "k3s-stand-in: module overlay loaded",
        "k3s-stand-in: module br_netfilter loaded",
        "k3s-stand-in: module vxlan loaded",
        "k3s-stand-in: module cls_bpf loaded",
        "k3s-stand-in: module wireguard loaded",
        "k3s-stand-in: sysctl net.ipv4.ip_forward=1",
        "k3s-stand-in: sysctl net.bridge.bridge-nf-call-iptables=1",
        "k3s-stand-in: sysctl vm.overcommit_memory=1",
        "k3s-stand-in: sysctl vm.max_map_count=262144",
        "k3s-stand-in: sysctl kernel.panic=30",
        "k3s-stand-in: agent-image airgap-test.tar \
         sha256=bb478cad2675f9ab241cb3390b3da4ea9b62331e10d60ede3b41989f9f8b45b9",
    ] {
        assert_eq!(
            log.lines_with(want).len(),
            1,
            "{want:?} not on the console; log: {}",
            log.keep().display()
        );
    }
    // The rendered config, line by line (keys are sorted by the renderer).
    let config: Vec<String> = log
        .lines_with("k3s-stand-in: config| ")
        .iter()
        .map(|l| l["k3s-stand-in: config| ".len()..].to_owned())
        .collect();
    for want in [
        "node-name: pve-cp-1",
        "flannel-backend: none",
        "disable-network-policy: true",
        "- topology.kubernetes.io/zone=rack-1",
        "cluster-cidr: 10.42.0.0/16",
        "service-cidr: 10.43.0.0/16",
    ] {
        assert!(
            config.iter().any(|l| l == want),
            "k3s config lacks {want:?}: {config:#?}; log: {}",
            log.keep().display()
        );
    }
    assert!(
        !config.iter().any(|l| l.starts_with("server:")),
        "the first server must not join another: {config:#?}"
    );
    // One server: k3s's default SQLite, no embedded etcd (k3s.datastore = "auto").
    assert!(
        !config.iter().any(|l| l.starts_with("cluster-init:")),
        "a single server must not start embedded etcd: {config:#?}"
    );
    // The server manifests k3s applies at start: Cilium as the CNI.
    assert_eq!(
        log.lines_with("k3s-stand-in: manifest cilium.yaml").len(),
        1,
        "cilium manifest missing; log: {}",
        log.keep().display()
    );
    assert!(
        log.powered_off,
        "the VM did not power off by itself; log: {}",
        log.keep().display()
    );
}

#[test]
fn proxmox_image_with_a_tampered_root_slot_stops_with_a_verification_error() {
    let out = build_once("proxmox", &profile()).expect("building the proxmox profile");
    let scratch = tempfile::tempdir().unwrap();
    let disk = RawDisk::from_image(&image_name(&out), scratch.path()).unwrap();
    let raw = disk.raw.clone();
    let (root_start, _) = disk.part("root-a").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let root_size = manifest["root_image"]["size"].as_u64().unwrap();
    // One byte in the middle of the squashfs: a real bit-rot or tamper.
    let offset = root_start * 512 + root_size / 2;
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&raw)
            .unwrap();
        let mut b = [0u8];
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut b).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&[b[0] ^ 0xff]).unwrap();
    }
    let log = Vm::x86_64_uefi("proxmox-tampered")
        .unwrap()
        .scsi_disk(&raw, "raw")
        .unwrap()
        .user_net(MAC)
        .boot(Some("labimg: FATAL"), Duration::from_secs(300))
        .unwrap();
    log.assert_in_order(&[
        "labimg: root found",
        "labimg: FATAL: root verification failed",
    ]);
    log.assert_absent("labimg: root mounted");
    log.assert_absent("k3s-stand-in");
}
