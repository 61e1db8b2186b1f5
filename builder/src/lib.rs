//! labimg's image builder.
//!
//! The build reads as its pipeline: a profile is loaded and validated
//! ([`profile`]), its inputs are resolved from a verified Debian mirror
//! ([`debian`]), unpacked into a staging [`tree`], and written out as
//! filesystems, disks and netboot artifacts.

pub mod artifact;
pub mod build;
pub mod cli;
pub mod compress;
pub mod date;
pub mod debian;
pub mod disk;
pub mod fs;
pub mod initramfs;
pub mod inputs;
pub mod kconfig;
pub mod kmod;
pub mod manifest;
pub mod nodecfg;
pub mod plan;
pub mod preseed;
pub mod profile;
pub mod rootfs;
pub mod rootimg;
pub mod sbom;
pub mod secureboot;
pub mod target;
pub mod tool;
pub mod tree;
pub mod uki;
pub mod upgrade;
pub mod verity;
