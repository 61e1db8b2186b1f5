//! The artifact contract: what a build publishes and what `labimg serve`, `labimg
//! inspect`, the tests and the node read back. Each file has one type here; the
//! builder writes through it and every reader parses through it, so a field cannot
//! be renamed on one side only.
//!
//! - the kernel command line, one value for disk slots and netboot: [`Cmdline`];
//! - `netboot/netboot.json`: [`NetbootInfo`];
//! - `manifest.json`: [`crate::manifest::Manifest`]; `upgrade.json` and the
//!   `upgrade.env` the node reads: [`crate::upgrade::Bundle`]; `SHA256SUMS` and its minisign signature: [`sign`];
//!   the sha256 every one of them is checked by: [`hash_file`];
//! - `os_list.json`, the Raspberry Pi Imager list beside a Pi disk image: [`imager`].

pub mod imager;
pub mod sign;

use std::fmt;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The sha256 (hex) and size of a file, read in one pass.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok((hex::encode(h.finalize()), n))
}

/// A kernel command line as its arguments in order (`key=value` or a bare `flag`).
///
/// Targets build one per root slot; the netboot form is the same line without the
/// arguments that name a disk slot ([`Cmdline::netboot`]), and the netboot server
/// puts its own arguments in front and the inventory's after it ([`Cmdline::extend_with`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline(Vec<String>);

/// The arguments that say which disk slot holds the root: a netbooted node has
/// none (its root comes over HTTP).
pub const SLOT_KEYS: [&str; 2] = ["labimg.root", "labimg.slot"];

impl Cmdline {
    /// An empty line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits a rendered line at whitespace.
    pub fn parse(line: &str) -> Self {
        Cmdline(line.split_whitespace().map(str::to_owned).collect())
    }

    /// Appends `arg` (`key=value` or `flag`).
    pub fn push(&mut self, arg: impl Into<String>) {
        self.0.push(arg.into());
    }

    /// Appends `key=value`.
    pub fn set(&mut self, key: &str, value: impl fmt::Display) {
        self.0.push(format!("{key}={value}"));
    }

    /// Inserts `arg` at position `at` (0 is the front).
    pub fn insert(&mut self, at: usize, arg: impl Into<String>) {
        self.0.insert(at, arg.into());
    }

    /// The arguments in order.
    pub fn args(&self) -> &[String] {
        &self.0
    }

    /// The key of an argument: everything before the first `=`.
    pub fn key(arg: &str) -> &str {
        arg.split_once('=').map_or(arg, |(k, _)| k)
    }

    /// The value of the first `key=` argument.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find_map(|a| a.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }

    /// The line without any argument whose key is in `keys`.
    pub fn without(&self, keys: &[&str]) -> Cmdline {
        Cmdline(
            self.0
                .iter()
                .filter(|a| !keys.contains(&Cmdline::key(a)))
                .cloned()
                .collect(),
        )
    }

    /// The netboot form of a slot's line: the same arguments without [`SLOT_KEYS`].
    pub fn netboot(&self) -> Cmdline {
        self.without(&SLOT_KEYS)
    }

    /// Appends `later`; when `later` sets a `console=`, this line's consoles are
    /// dropped first. Linux sends nothing to a later `console=` when an earlier one
    /// names a port the machine lacks (the Pi's ttyAMA10 on another arm64 board), so
    /// appending alone would leave the console silent.
    pub fn extend_with(&mut self, later: &Cmdline) {
        if later.0.iter().any(|a| Cmdline::key(a) == "console") {
            self.0.retain(|a| Cmdline::key(a) != "console");
        }
        self.0.extend(later.0.iter().cloned());
    }
}

impl fmt::Display for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// `netboot/netboot.json`: a profile's netboot artifacts, for `labimg serve`.
///
/// Fields are in the order they are written (alphabetical, as the file has always
/// been), so the bytes stay the same for the same build.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NetbootInfo {
    /// `amd64` or `arm64`.
    pub arch: String,
    /// `proxmox` or `rpi5`.
    pub board: String,
    /// The kernel command line without the slot arguments ([`Cmdline::netboot`]).
    pub cmdline: String,
    /// Initramfs file name in `netboot/`.
    pub initrd: String,
    /// Kernel file name in `netboot/`.
    pub kernel: String,
    /// Profile name.
    pub profile: String,
    /// Root image file name in `netboot/`.
    pub root: String,
    /// SHA-256 of the root image, hex.
    pub root_sha256: String,
    /// Size of the root image in bytes.
    pub root_size: u64,
}

impl NetbootInfo {
    /// The file's text: pretty JSON and a final newline.
    pub fn to_json(&self) -> String {
        // Strings and a number: serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keys_netboot_form_and_console_override() {
        let line = Cmdline::parse(
            "console=tty0 console=ttyS0,115200 labimg.root=PARTLABEL=root-a panic=10 quiet labimg.slot=a",
        );
        assert_eq!(line.get("labimg.root"), Some("PARTLABEL=root-a"));
        assert_eq!(line.get("labimg"), None);
        assert_eq!(
            line.netboot().to_string(),
            "console=tty0 console=ttyS0,115200 panic=10 quiet"
        );
        let mut served = Cmdline::parse("labimg.root.url=http://x/r");
        served.extend_with(&line.netboot());
        served.extend_with(&Cmdline::parse("console=ttyAMA0 foo=1"));
        assert_eq!(
            served.to_string(),
            "labimg.root.url=http://x/r panic=10 quiet console=ttyAMA0 foo=1"
        );
        let mut kept = Cmdline::parse("console=ttyS0 a=1");
        kept.extend_with(&Cmdline::parse("b=2"));
        assert_eq!(kept.to_string(), "console=ttyS0 a=1 b=2");
    }

    #[test]
    fn netboot_json_keeps_its_field_order() {
        let info = NetbootInfo {
            arch: "amd64".into(),
            board: "proxmox".into(),
            cmdline: "panic=10".into(),
            initrd: "initrd.img".into(),
            kernel: "vmlinuz".into(),
            profile: "p".into(),
            root: "root.squashfs".into(),
            root_sha256: "00".into(),
            root_size: 1,
        };
        let text = info.to_json();
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(serde_json::from_str::<NetbootInfo>(&text).unwrap(), info);
    }
}
