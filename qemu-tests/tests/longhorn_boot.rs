//! The Longhorn-ready example (`profiles/examples/proxmox-longhorn.toml`) boots under
//! OVMF with open-iscsi's `iscsid` supervised as a host service, started before the
//! k3s STAND-IN (the real k3s cannot be downloaded here), which finds it running,
//! with a per-node iSCSI initiator name and the storage modules loaded.

use std::time::Duration;

use labimg_qemu_tests::{Vm, build_profile_file_once, workspace_root};

#[test]
fn longhorn_example_runs_iscsid_before_k3s() {
    let path = workspace_root().join("profiles/examples/proxmox-longhorn.toml");
    let out = build_profile_file_once("proxmox-longhorn", &path, &[])
        .unwrap_or_else(|e| panic!("building {}: {e:#}", path.display()));
    let log = Vm::x86_64_uefi("longhorn-boot")
        .unwrap()
        .scsi_disk(&out.join("proxmox-longhorn.qcow2"), "qcow2")
        .unwrap()
        .user_net("52:54:00:12:34:70")
        .boot(None, Duration::from_secs(420))
        .unwrap();
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: service exited");
    log.assert_in_order(&[
        "labimg: host layout ready",
        "labimg: identity hostname=homelab-123470 role=server source=default",
        "labimg: service started name=iscsid",
        "labimg: k3s starting role=server",
        "k3s-stand-in: contract ok service-iscsid",
        "k3s-stand-in: contract ok iscsi-initiator InitiatorName=iqn.1993-08.org.debian:01:",
        "k3s-stand-in: done, powering off",
    ]);
    log.assert_host_contract(&[]);
    for m in ["iscsi_tcp", "dm_crypt", "nfs", "nfsv4"] {
        assert_eq!(
            log.lines_with(&format!("k3s-stand-in: module {m} loaded"))
                .len(),
            1,
            "module {m}; log: {}",
            log.keep().display()
        );
    }
    assert!(log.powered_off, "log: {}", log.keep().display());
}
