//! Targets: what differs between boards — boot packages, boot modules,
//! kernel command line and disk layout. One trait, one implementation per
//! board; nothing else in the builder asks which board it is building for.

use std::path::Path;

use anyhow::Result;

use crate::artifact::{Cmdline, NetbootInfo};
use crate::profile::{Board, Profile};
use crate::rootimg::RootImage;
use crate::tree::Tree;

mod proxmox;
pub mod rpi5;

pub use proxmox::Proxmox;
pub use rpi5::Rpi5;

/// Everything a target needs to lay out its disk.
#[derive(Debug)]
pub struct DiskInputs<'a> {
    pub profile: &'a Profile,
    /// The kernel image (`vmlinuz`).
    pub kernel: &'a [u8],
    /// The compressed initramfs.
    pub initramfs: &'a [u8],
    pub root: &'a RootImage,
    /// The unpacked boot packages (for example systemd-boot's EFI binaries).
    pub boot_tree: &'a Tree,
    /// The root tree (for files the boot partition copies, like dtbs).
    pub root_tree: &'a Tree,
    /// Seconds since the epoch used for every timestamp.
    pub epoch: u64,
}

/// A board labimg builds images for.
pub trait Target {
    /// Short name used in logs and the manifest.
    fn name(&self) -> &'static str;
    /// Debian packages unpacked only for the boot partition, not the root.
    fn boot_packages(&self) -> Vec<String>;
    /// Modules the initramfs always carries for this board (the profile's
    /// `kernel.modules` are added to these).
    fn boot_modules(&self) -> Vec<String>;
    /// The kernel command line for root slot `slot` ("a" or "b").
    fn cmdline(&self, profile: &Profile, root: &RootImage, slot: &str) -> Cmdline;
    /// Writes the raw disk image to `dst`.
    fn write_disk(&self, inputs: &DiskInputs, dst: &Path) -> Result<()>;
    /// Board files the netboot server hands out besides kernel, initramfs and
    /// root image (published as `netboot/<board dir>/`), if the board needs any.
    fn netboot_files(&self, _inputs: &DiskInputs) -> Result<Option<(&'static str, Tree)>> {
        Ok(None)
    }
}

/// Modules to mount the FAT boot partitions (the ESP, the Pi's boot and
/// autoboot partitions), which the upgrade agent and boot blessing write:
/// Debian's kernel mounts FAT with codepage 437 and ASCII/UTF-8 names.
pub const FAT_MODULES: [&str; 4] = ["vfat", "nls_cp437", "nls_ascii", "nls_utf8"];

/// The target for a profile's `target.board`.
pub fn for_profile(profile: &Profile) -> Result<Box<dyn Target>> {
    match profile.target.board {
        Board::Proxmox => Ok(Box::new(Proxmox)),
        Board::Rpi5 => Ok(Box::new(Rpi5)),
    }
}

/// Kernel arguments every target shares: where root is and how to check it.
/// The dm-verity parameters are the trust anchor stage 1 uses; the file's
/// sha256 and size stay for stage 1s without dm-verity and for the record.
pub fn common_cmdline(profile: &Profile, root: &RootImage, slot: &str) -> Cmdline {
    let v = &root.verity;
    let mut args = Cmdline::new();
    args.set("console", profile.console());
    args.set("labimg.root", format!("PARTLABEL=root-{slot}"));
    args.set("labimg.root.sha256", &root.sha256);
    args.set("labimg.root.size", root.size);
    args.set("labimg.verity.roothash", &v.root_hash);
    args.set("labimg.verity.salt", &v.salt);
    args.set("labimg.verity.data-blocks", v.data_blocks);
    args.set("labimg.verity.hash-offset", v.hash_offset);
    args.push("panic=10");
    if let Some(url) = &profile.upgrade.url {
        args.set("labimg.upgrade", url);
    }
    for a in &profile.kernel.cmdline {
        args.push(a.clone());
    }
    args
}

/// `netboot/netboot.json` for a build: the artifacts' names, the root image's hash
/// and size, and slot A's command line in its netboot form.
pub fn netboot_info(profile: &Profile, root: &RootImage, slot_a: &Cmdline) -> NetbootInfo {
    NetbootInfo {
        arch: profile.target.arch.as_str().to_owned(),
        board: format!("{:?}", profile.target.board).to_lowercase(),
        // Netboot nodes fetch the root over HTTP instead of a disk slot.
        cmdline: slot_a.netboot().to_string(),
        initrd: "initrd.img".into(),
        kernel: "vmlinuz".into(),
        profile: profile.name.clone(),
        root: "root.squashfs".into(),
        root_sha256: root.sha256.clone(),
        root_size: root.size,
    }
}
