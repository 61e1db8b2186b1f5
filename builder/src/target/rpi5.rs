//! Raspberry Pi 5 (aarch64): a GPT disk whose first FAT partition holds only
//! `autoboot.txt`, which sends the EEPROM bootloader to one of two per-slot
//! FAT boot partitions (`tryboot_a_b`), followed by root slots A and B. STATE
//! is created by the node on first boot in the space left after slot B.
//! See `RPI5.md` beside this file for the layout, the upgrade flow and what
//! was verified where.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use super::{DiskInputs, Target, common_cmdline};
use crate::artifact::Cmdline;
use crate::disk::{self, DiskLayout, Guid, PartitionSpec};
use crate::fs::fat;
use crate::profile::{Profile, Rpi};
use crate::rootimg::RootImage;
use crate::tree::Tree;

/// The Raspberry Pi 5 target.
#[derive(Debug)]
pub struct Rpi5;

/// The name the Pi 5 firmware loads by default; `config.txt` names it too.
pub const KERNEL_FILE: &str = "kernel_2712.img";
/// The initramfs on the boot partition (`initramfs <file> followkernel`).
pub const INITRAMFS_FILE: &str = "initramfs.img";
/// The device tree the firmware picks for a Pi 5.
pub const DTB_FILE: &str = "bcm2712-rpi-5-b.dtb";

/// `autoboot.txt` on partition 1: boot partition 2 (slot A) normally, 3
/// (slot B) when the one-shot tryboot flag is set. An upgrade that commits
/// slot B swaps the two numbers.
pub const AUTOBOOT_TXT: &str =
    "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

/// GPT partition numbers of each slot's boot partition (as in `autoboot.txt`).
pub const BOOT_PARTITION: [(&str, u32); 2] = [("a", 2), ("b", 3)];

/// The autoboot partition only holds a 90-byte file but must still be FAT32
/// for our writer (rpi-image-gen uses 32 MiB); 64 MiB keeps it MiB-aligned.
const AUTOBOOT_SIZE: u64 = 64 << 20;

/// Microsoft basic data: what rpi-image-gen's GPT layouts use for the Pi's FAT
/// partitions (the bootloader reads FAT from any partition number it is sent to).
const BASIC_DATA_TYPE: Guid = disk::parse_guid("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");

/// Offset and value of the arm64 `Image` header magic ("ARM\x64").
const ARM64_MAGIC_OFFSET: usize = 0x38;
const ARM64_MAGIC: &[u8] = b"ARM\x64";
/// The two bytes every gzip member starts with (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// RFC 1952 OS byte for Unix, what `gzip -n` writes.
const GZIP_OS_UNIX: u8 = 3;

impl Target for Rpi5 {
    fn name(&self) -> &'static str {
        "rpi5"
    }

    fn boot_packages(&self) -> Vec<String> {
        // The EEPROM holds the firmware; the kernel package carries the dtbs.
        Vec::new()
    }

    /// Only the Pi 5's own device trees and overlays: the firmware reads them from
    /// the boot partition (or TFTP), which takes its copies from the root tree; the
    /// other boards' are never used (20.5 MB of the shipped pi5 root image).
    fn keeps_dtb(&self, rel: &Path) -> bool {
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match rel
            .parent()
            .and_then(Path::file_name)
            .and_then(|d| d.to_str())
        {
            Some("broadcom") => name.starts_with("bcm2712") && name.ends_with(".dtb"),
            Some("overlays") => name.ends_with(".dtbo"),
            _ => false,
        }
    }

    fn boot_modules(&self) -> Vec<String> {
        // Checked against linux-image-arm64 7.3 from trixie-backports (see
        // tests/rpi5_structure.rs): the rest of the boot path (PCIe host,
        // mmc_block, pl011, virtio_pci) is built in.
        [
            // SD card: the SDHCI controller, its pins, card detect and the
            // switchable I/O voltage regulator of the slot.
            "sdhci-brcmstb",
            "pinctrl-brcmstb-bcm2712",
            "gpio-brcmstb",
            "gpio-regulator",
            "fixed",
            // NVMe on the PCIe connector: MSI controller and the driver.
            "irq-bcm2712-mip",
            "nvme",
            // Ethernet lives in the RP1 south bridge behind PCIe.
            "rp1_pci",
            "clk-rp1",
            "pinctrl-rp1",
            "macb",
            "broadcom",
            // QEMU `virt` (the boot test runs the same image there).
            "virtio_blk",
            "virtio_net",
            "virtio_mmio",
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
        // Keep the profile's own arguments last so they can override ours.
        let at = args.args().len() - profile.kernel.cmdline.len();
        for (i, arg) in [
            format!("labimg.slot={slot}"),
            // k3s refuses to start without the memory cgroup controller,
            // which the Pi firmware's defaults leave disabled.
            "cgroup_enable=memory".to_owned(),
            "cgroup_memory=1".to_owned(),
        ]
        .into_iter()
        .enumerate()
        {
            args.insert(at + i, arg);
        }
        args
    }

    fn netboot_files(&self, inputs: &DiskInputs) -> Result<Option<(&'static str, Tree)>> {
        Ok(Some(("rpi", boot_files(inputs)?)))
    }

    fn write_disk(&self, inputs: &DiskInputs, dst: &Path) -> Result<()> {
        let p = inputs.profile;
        let boot_size = p.disk.boot_size.bytes();
        let slot_size = p.disk.root_slot_size.bytes();
        ensure!(
            inputs.root.size <= slot_size,
            "the root image ({} bytes) does not fit disk.root-slot-size ({} bytes)",
            inputs.root.size,
            slot_size
        );
        ensure!(
            boot_size >= fat::MIN_FAT32_BYTES,
            "disk.boot-size must be at least {} MiB on rpi5 (the boot partitions are FAT32)",
            fat::MIN_FAT32_BYTES >> 20
        );
        let boot_a = boot_tree(self, inputs, "a")?;
        let used = boot_a.file_bytes();
        ensure!(
            used + (4 << 20) <= boot_size,
            "the boot files ({} MiB) do not fit disk.boot-size ({} MiB)",
            used >> 20,
            boot_size >> 20
        );
        let mut autoboot = Tree::new();
        autoboot.insert_file("autoboot.txt", AUTOBOOT_TXT, 0o644)?;
        autoboot.set_all_mtimes(inputs.epoch);
        // Slot B's boot partition is formatted but empty: the first upgrade
        // fills it together with root-b.
        let mut boot_b = Tree::new();
        boot_b.set_all_mtimes(inputs.epoch);

        let seed = |what: &str| disk::guid_from(&format!("labimg/{}/{what}", p.name));
        let fat_part = |name: &str, label: &str, tree: &Tree, size: u64| -> Result<PartitionSpec> {
            let bytes = fat::write_fat32(tree, size, label, volume_id(&p.name, name))
                .with_context(|| format!("writing the {name} FAT partition"))?;
            Ok(PartitionSpec {
                name: name.into(),
                type_guid: BASIC_DATA_TYPE,
                part_guid: seed(name),
                size_bytes: size,
                content: Some(disk::Content::Bytes(bytes)),
            })
        };
        let root_part = |slot: &str, content: Option<disk::Content>| PartitionSpec {
            name: format!("root-{slot}"),
            type_guid: disk::LINUX_ROOT_ARM64_TYPE,
            part_guid: seed(&format!("root-{slot}")),
            size_bytes: slot_size,
            content,
        };
        // The order is the partition numbering autoboot.txt relies on.
        let layout = DiskLayout {
            size_bytes: p.disk.size.bytes(),
            disk_guid: seed("disk"),
            partitions: vec![
                fat_part("autoboot", "AUTOBOOT", &autoboot, AUTOBOOT_SIZE)?,
                fat_part("boot-a", "BOOT-A", &boot_a, boot_size)?,
                fat_part("boot-b", "BOOT-B", &boot_b, boot_size)?,
                root_part("a", Some(disk::Content::File(inputs.root.path.clone()))),
                root_part("b", None),
            ],
        };
        disk::write_disk(&layout, dst).map(|_| ())
    }
}

/// The boot partition of slot A as a tree: `config.txt`, `cmdline.txt`, the
/// kernel, the initramfs and the Pi 5 device trees. The netboot server
/// publishes the same files under `netboot/rpi/` for the Pi's TFTP boot.
pub fn boot_files(inputs: &DiskInputs) -> Result<Tree> {
    boot_tree(&Rpi5, inputs, "a")
}

fn boot_tree(target: &Rpi5, i: &DiskInputs, slot: &str) -> Result<Tree> {
    let p = i.profile;
    let rpi = p.rpi.clone().unwrap_or_default();
    let mut t = Tree::new();
    t.insert_file("config.txt", config_txt(p, &rpi), 0o644)?;
    let cmdline = target.cmdline(p, i.root, slot).to_string();
    t.insert_file("cmdline.txt", format!("{cmdline}\n"), 0o644)?;
    t.insert_file(KERNEL_FILE, firmware_kernel(i.kernel)?, 0o644)?;
    t.insert_file(INITRAMFS_FILE, i.initramfs.to_vec(), 0o644)?;
    let dtbs = bcm2712_dtbs(i.root_tree);
    ensure!(
        dtbs.iter().any(|(name, _)| name == DTB_FILE),
        "the kernel package has no broadcom/{DTB_FILE}: it cannot boot a Raspberry Pi 5"
    );
    for (name, data) in dtbs {
        t.insert_file(name, data.to_vec(), 0o644)?;
    }
    if rpi.overlays {
        let overlays = rpi_overlays(i.root_tree);
        if overlays.is_empty() {
            bail!(
                "[rpi] overlays = true, but the kernel package ships no Raspberry Pi overlays \
                 (no overlays/*.dtbo beside its broadcom device trees): Debian's kernel uses the \
                 upstream device trees. Set `overlays = false` in [rpi]"
            );
        }
        for (name, data) in overlays {
            t.insert_file(format!("overlays/{name}"), data.to_vec(), 0o644)?;
        }
    }
    for o in &rpi.dtoverlays {
        ensure!(
            t.contains(format!("overlays/{o}.dtbo")),
            "[rpi] dtoverlays names {o:?}, but overlays/{o}.dtbo is not on the boot partition \
             (the kernel package does not ship it, or [rpi] overlays = false)"
        );
    }
    t.set_all_mtimes(i.epoch);
    Ok(t)
}

/// `config.txt` for the firmware: 64-bit kernel and initramfs by name, the
/// debug UART on, and the profile's overlays, parameters and extra lines.
pub fn config_txt(profile: &Profile, rpi: &Rpi) -> String {
    let mut lines = vec![
        format!(
            "# labimg {}: generated by labimg; do not edit",
            profile.name
        ),
        "[all]".to_owned(),
        "arm_64bit=1".to_owned(),
        format!("kernel={KERNEL_FILE}"),
        format!("initramfs {INITRAMFS_FILE} followkernel"),
        "enable_uart=1".to_owned(),
        // The kernel is Debian's, not Raspberry Pi OS's: skip the firmware's
        // check that it was built for this board's OS.
        "os_check=0".to_owned(),
    ];
    lines.extend(rpi.dtoverlays.iter().map(|o| format!("dtoverlay={o}")));
    if rpi.nvme_boot {
        lines.push("dtparam=pciex1".to_owned());
    }
    if rpi.pcie_gen3 {
        lines.push("dtparam=pciex1_gen=3".to_owned());
    }
    lines.extend(rpi.config_txt.iter().cloned());
    lines.join("\n") + "\n"
}

/// The kernel as the firmware loads it: the arm64 `Image` (Debian's `vmlinuz`
/// already is one; a gzip'd one is unpacked to check it), gzip'd again. The
/// firmware recognises gzip by its magic bytes under the same file name (see
/// `RPI5.md`, "Compressed kernel and HTTP boot"), and the Pi reads it over
/// lock-step TFTP when netbooting, where a third of the bytes is a third of
/// the blocks. Memoised for the last kernel: the disk and the netboot tree
/// carry the same file, and compressing it takes seconds.
fn firmware_kernel(kernel: &[u8]) -> Result<Vec<u8>> {
    static LAST: Mutex<Option<([u8; 32], Vec<u8>)>> = Mutex::new(None);
    let key: [u8; 32] = Sha256::digest(kernel).into();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, gz)) = last.as_ref()
        && *k == key
    {
        return Ok(gz.clone());
    }
    let gz = gzip_reproducibly(&arm64_image(kernel)?).context("compressing the kernel")?;
    *last = Some((key, gz.clone()));
    Ok(gz)
}

/// `data` as one gzip member whose bytes depend on `data` alone: no file
/// name, mtime 0, OS "Unix" (as `gzip -n`), best compression.
fn gzip_reproducibly(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNIX)
        .write(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::best(),
        );
    gz.write_all(data)?;
    gz.finish()
}

/// The kernel unpacked and checked: an arm64 `Image` (a gzip'd one is unpacked).
fn arm64_image(kernel: &[u8]) -> Result<Vec<u8>> {
    let image = if kernel.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(kernel)
            .read_to_end(&mut out)
            .context("decompressing the gzip'd kernel")?;
        out
    } else {
        kernel.to_vec()
    };
    ensure!(
        image.get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + ARM64_MAGIC.len()) == Some(ARM64_MAGIC),
        "the kernel is not an arm64 Image (no ARM\\x64 magic at 0x38)"
    );
    Ok(image)
}

/// Every `broadcom/bcm2712*.dtb` the kernel package installed, by file name
/// (the same files may be reachable under two paths).
pub fn bcm2712_dtbs(root: &Tree) -> Vec<(String, &[u8])> {
    files_in(root, "broadcom", |n| {
        n.starts_with("bcm2712") && n.ends_with(".dtb")
    })
}

/// Raspberry Pi overlays (`overlays/*.dtbo`) shipped beside the dtbs, if any.
fn rpi_overlays(root: &Tree) -> Vec<(String, &[u8])> {
    files_in(root, "overlays", |n| n.ends_with(".dtbo"))
}

fn files_in<'t>(root: &'t Tree, dir: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, &'t [u8])> {
    let mut found: Vec<(String, &[u8])> = root
        .iter()
        .filter(|(path, _)| path.starts_with("usr/lib") || path.starts_with("lib"))
        .filter(|(path, _)| {
            path.parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == dir)
        })
        .filter_map(|(path, e)| {
            let name = path.file_name()?.to_str()?;
            if !keep(name) {
                return None;
            }
            Some((name.to_owned(), e.data()?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

fn volume_id(profile: &str, part: &str) -> u32 {
    let g = disk::guid_from(&format!("labimg/{profile}/{part}-volume-id"));
    u32::from_le_bytes([g[0], g[1], g[2], g[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_image() -> Vec<u8> {
        let mut image: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        image[ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4].copy_from_slice(ARM64_MAGIC);
        image
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_kernels_are_unpacked_and_non_arm64_images_rejected() {
        let image = tiny_image();
        assert_eq!(arm64_image(&image).unwrap(), image);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&image).unwrap();
        assert_eq!(arm64_image(&gz.finish().unwrap()).unwrap(), image);
        let err = arm64_image(b"MZ not a kernel at all, just some bytes of junk here....... ")
            .unwrap_err();
        assert!(format!("{err:#}").contains("not an arm64 Image"), "{err:#}");
        let err = firmware_kernel(&[0x1f, 0x8b, 8, 0, 0, 0]).unwrap_err();
        assert!(format!("{err:#}").contains("decompressing"), "{err:#}");
    }

    #[test]
    fn the_firmware_kernel_is_a_reproducible_gzip_of_the_image() {
        let image = tiny_image();
        let gz = firmware_kernel(&image).unwrap();
        // RFC 1952 header: deflate, no flags (no name), mtime 0, XFL 2 (best), OS 3.
        assert_eq!(gz[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]);
        assert_eq!(gunzip(&gz), image);
        assert!(gz.len() < image.len(), "{} bytes", gz.len());
        // The same bytes whether the package's kernel was gzip'd or not, and
        // from a fresh compression (not only the memo).
        let mut other = flate2::GzBuilder::new()
            .filename("Image")
            .mtime(1_700_000_000)
            .write(Vec::new(), flate2::Compression::fast());
        other.write_all(&image).unwrap();
        assert_eq!(firmware_kernel(&other.finish().unwrap()).unwrap(), gz);
        assert_eq!(gzip_reproducibly(&image).unwrap(), gz);
        // A different kernel is not answered from the memo.
        let mut changed = image.clone();
        changed[100] ^= 1;
        assert_eq!(gunzip(&firmware_kernel(&changed).unwrap()), changed);
    }
}
