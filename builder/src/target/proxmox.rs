//! Proxmox VMs (x86_64, OVMF/UEFI): GPT with an ESP holding systemd-boot and
//! Boot Loader Spec entries, root slots A and B. STATE is created by the node
//! on first boot in the space left after slot B. With `secure-boot.enabled` the
//! ESP holds systemd-boot and one Unified Kernel Image per slot, signed with the
//! db key, instead of type 1 entries with a loose kernel and initramfs.

use std::path::Path;

use anyhow::{Context, Result};

use super::{DiskInputs, SecureBootKeys, Target, common_cmdline};
use crate::artifact::Cmdline;
use crate::disk::{self, DiskLayout, PartitionSpec};
use crate::fs::fat;
use crate::profile::Profile;
use crate::rootimg::RootImage;
use crate::tree::Tree;

/// The Proxmox VE target.
#[derive(Debug)]
pub struct Proxmox;

const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

impl Target for Proxmox {
    fn name(&self) -> &'static str {
        "proxmox"
    }

    fn boot_packages(&self) -> Vec<String> {
        vec!["systemd-boot-efi".into()]
    }

    fn boot_modules(&self) -> Vec<String> {
        // Proxmox defaults to VirtIO SCSI; virtio-blk is the other common choice.
        [
            "virtio_blk",
            "virtio_scsi",
            "sd_mod",
            "virtio_net",
            "squashfs",
            "loop",
        ]
        .into_iter()
        .chain(super::FAT_MODULES)
        .map(String::from)
        .collect()
    }

    fn cmdline(&self, profile: &Profile, root: &RootImage, slot: &str) -> Cmdline {
        let mut args = common_cmdline(profile, root, slot);
        // The VM's display (Proxmox's noVNC console) too, not only the serial
        // port that a VM has only once `qm set --serial0 socket` added it. The
        // last console= is /dev/console, where init's milestones go.
        args.insert(0, "console=tty0");
        args.set("labimg.slot", slot);
        args
    }

    fn write_disk(&self, inputs: &DiskInputs, dst: &Path) -> Result<()> {
        let p = inputs.profile;
        let esp = esp_tree(self, inputs)?;
        let boot_size = p.disk.boot_size.bytes();
        let slot_size = p.disk.root_slot_size.bytes();
        anyhow::ensure!(
            inputs.root.size <= slot_size,
            "the root image ({} bytes) does not fit disk.root-slot-size ({} bytes)",
            inputs.root.size,
            slot_size
        );
        let esp_bytes = fat::write_fat32(&esp, boot_size, "LABIMG-ESP", volume_id(&p.name))
            .context("writing the EFI system partition")?;
        let seed = |what: &str| disk::guid_from(&format!("labimg/{}/{what}", p.name));
        let layout = DiskLayout {
            size_bytes: p.disk.size.bytes(),
            disk_guid: seed("disk"),
            partitions: vec![
                PartitionSpec {
                    name: "ESP".into(),
                    type_guid: disk::ESP_TYPE,
                    part_guid: seed("esp"),
                    size_bytes: boot_size,
                    content: Some(disk::Content::Bytes(esp_bytes)),
                },
                PartitionSpec {
                    name: "root-a".into(),
                    type_guid: disk::LINUX_ROOT_X86_64_TYPE,
                    part_guid: seed("root-a"),
                    size_bytes: slot_size,
                    content: Some(disk::Content::File(inputs.root.path.clone())),
                },
                PartitionSpec {
                    name: "root-b".into(),
                    type_guid: disk::LINUX_ROOT_X86_64_TYPE,
                    part_guid: seed("root-b"),
                    size_bytes: slot_size,
                    content: None,
                },
            ],
        };
        disk::write_disk(&layout, dst).map(|_| ())
    }
}

fn volume_id(name: &str) -> u32 {
    let g = disk::guid_from(&format!("labimg/{name}/esp-volume-id"));
    u32::from_le_bytes([g[0], g[1], g[2], g[3]])
}

/// systemd-boot's configuration. `default` is a glob, and systemd-boot boots
/// the first entry in its sorted list that matches: entries whose boot
/// counter reached zero ("bad", `+0-N`) sort last, then (all entries carry the
/// same `sort-key`) by `version`, newest first. So the newest slot that is not
/// bad boots, a fresh trial entry (`labimg-b+3.conf`, higher version) is tried
/// first, and a trial that used up its tries falls back to the other slot.
/// The node's upgrade agent (`builder/node/upgrade`) writes the same format.
const LOADER_CONF: &str = "default labimg-*\ntimeout 0\neditor no\nconsole-mode keep\n";

/// A Boot Loader Spec entry for `slot`. `version` is `<generation>-<root
/// sha256 prefix>`: the generation (1 for the factory image, +1 per upgrade)
/// orders the entries, the hash names the root image.
pub fn boot_entry(name: &str, slot: &str, version: &str, options: &str) -> String {
    format!(
        "title labimg {name} (slot {slot})\nsort-key labimg\nversion {version}\nlinux /labimg/{slot}/vmlinuz\ninitrd /labimg/{slot}/initrd.img\noptions {options}\n"
    )
}

/// The ESP: systemd-boot as the removable-media default loader, one Boot
/// Loader Spec entry per slot (slot B's entry is added by an upgrade).
fn esp_tree(target: &Proxmox, i: &DiskInputs) -> Result<Tree> {
    let p = i.profile;
    let sdboot = i
        .boot_tree
        .get(SYSTEMD_BOOT)
        .and_then(|e| e.data())
        .with_context(|| format!("systemd-boot-efi did not provide /{SYSTEMD_BOOT}"))?;
    if let Some(keys) = i.secure_boot {
        return secure_boot_esp_tree(target, i, keys, sdboot);
    }
    let mut t = Tree::new();
    t.insert_file("EFI/BOOT/BOOTX64.EFI", sdboot.to_vec(), 0o644)?;
    t.insert_file("EFI/systemd/systemd-bootx64.efi", sdboot.to_vec(), 0o644)?;
    t.insert_file("loader/loader.conf", LOADER_CONF, 0o644)?;
    let entry = boot_entry(
        &p.name,
        "a",
        &format!("1-{}", i.root.sha256.get(..12).unwrap_or_default()),
        &target.cmdline(p, i.root, "a").to_string(),
    );
    t.insert_file("loader/entries/labimg-a.conf", entry, 0o644)?;
    t.insert_file("labimg/a/vmlinuz", i.kernel.to_vec(), 0o644)?;
    t.insert_file("labimg/a/initrd.img", i.initramfs.to_vec(), 0o644)?;
    t.set_all_mtimes(i.epoch);
    Ok(t)
}

/// systemd-boot's configuration with Secure Boot: the same ordering and rollback
/// (`default labimg-*` matches the UKIs' ids `labimg-<slot>.efi`), and
/// `secure-boot-enroll if-safe`: in a firmware in setup mode systemd-boot enrols the
/// keys of `loader/keys/auto/` by itself when it runs in a virtual machine (where a
/// wrong key cannot brick the hardware: systemd-boot's notion of "safe"); on bare
/// metal they are a menu entry ("Enroll Secure Boot keys: auto").
const LOADER_CONF_SECURE_BOOT: &str =
    "default labimg-*\ntimeout 0\neditor no\nconsole-mode keep\nsecure-boot-enroll if-safe\n";

/// The ESP with `secure-boot.enabled`: systemd-boot signed with the db key (as the
/// removable-media default loader and at its own path), one signed UKI per slot
/// under `EFI/Linux/` (type 2 entries; slot B's is added by an upgrade as
/// `labimg-b+<tries>.efi`), the enrolment files in `loader/keys/auto/`, and no type
/// 1 entries, kernels or initramfs images.
fn secure_boot_esp_tree(
    target: &Proxmox,
    i: &DiskInputs,
    keys: &SecureBootKeys,
    sdboot: &[u8],
) -> Result<Tree> {
    let signed = crate::secureboot::sign_pe(sdboot, &keys.db)
        .context("signing systemd-boot with the db key")?;
    let mut t = Tree::new();
    t.insert_file("EFI/BOOT/BOOTX64.EFI", signed.clone(), 0o644)?;
    t.insert_file("EFI/systemd/systemd-bootx64.efi", signed, 0o644)?;
    // Without enrolment files there is nothing to enrol: no enrol option either.
    let loader_conf = if keys.auth.is_empty() {
        LOADER_CONF_SECURE_BOOT.replace("secure-boot-enroll if-safe\n", "")
    } else {
        LOADER_CONF_SECURE_BOOT.to_owned()
    };
    t.insert_file("loader/loader.conf", loader_conf, 0o644)?;
    for (name, data) in &keys.auth {
        t.insert_file(format!("loader/keys/auto/{name}"), data.clone(), 0o644)?;
    }
    let uki = super::signed_uki(target, i, keys, "a")?;
    t.insert_file("EFI/Linux/labimg-a.efi", uki, 0o644)?;
    t.set_all_mtimes(i.epoch);
    Ok(t)
}
