//! labimg's image builder.
//!
//! The build reads as its pipeline: a profile is loaded and validated
//! ([`profile`]), its inputs are resolved from a verified Debian mirror
//! ([`debian`]), unpacked into a staging [`tree`], and written out as
//! filesystems, disks and netboot artifacts.

pub mod debian;
pub mod profile;
pub mod tree;
