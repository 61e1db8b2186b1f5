//! `os_list.json`: the Raspberry Pi Imager repository a build writes beside a Pi disk
//! image (`<profile>.raw.xz`), so the image can be hosted anywhere and picked in
//! Imager ("Content Repository" → "Use custom file" or a URL). `labimg serve`
//! publishes the lists of every profile as one, with absolute URLs.
//!
//! The fields are those of Imager's documented OS list (`doc/json-schema/
//! os-list-schema.json` and `doc/schema-notes.md` in github.com/raspberrypi/rpi-imager):
//! name, description, icon, url, sizes and sha256 of the download and of the
//! extracted image, release date and the device tags the entry is shown for.
//! There is no `init_format`: labimg images are pre-seeded, and without it Imager
//! offers no OS customisation that the image would ignore.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The list's file name in the profile's output folder.
pub const FILE: &str = "os_list.json";
/// The icon written beside it (Imager requires an icon for every entry).
pub const ICON_FILE: &str = "labimg-icon.svg";

/// Imager's device tags for a board (`target.name()`), or `None` for a board Imager
/// does not write images for.
pub fn devices_for_board(board: &str) -> Option<&'static [&'static str]> {
    match board {
        // Imager groups the Pi 5, Pi 500 and CM5 under these tags; the image is arm64.
        "rpi5" => Some(&["pi5-64bit"]),
        _ => None,
    }
}

/// The whole file: `{"os_list": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct OsList {
    /// The entries, one per disk image.
    pub os_list: Vec<OsEntry>,
}

/// One operating system entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OsEntry {
    /// Shown in Imager's OS list.
    pub name: String,
    /// Shown under the name.
    pub description: String,
    /// Icon URL; a plain file name (relative to the list) when the build writes it.
    pub icon: String,
    /// Download URL; a plain file name (relative to the list) when the build writes it.
    pub url: String,
    /// Size of the image after decompression (Imager checks the card is big enough).
    pub extract_size: u64,
    /// SHA-256 of the decompressed image (Imager refuses a write that does not match).
    pub extract_sha256: String,
    /// Size of the `.raw.xz` download.
    pub image_download_size: u64,
    /// SHA-256 of the `.raw.xz` download.
    pub image_download_sha256: String,
    /// `YYYY-MM-DD` of the build's timestamp (SOURCE_DATE_EPOCH).
    pub release_date: String,
    /// Imager device tags the entry is shown for ([`devices_for_board`]).
    pub devices: Vec<String>,
}

/// What the entry describes.
#[derive(Debug)]
pub struct ImageFacts<'a> {
    pub profile: &'a str,
    pub k3s_version: &'a str,
    pub devices: &'a [&'a str],
    /// sha256 and size of the raw disk image.
    pub raw: (String, u64),
    /// The `.raw.xz` file, in the folder the list is written to.
    pub raw_xz: &'a Path,
    /// Build timestamp (seconds since the epoch).
    pub epoch: u64,
}

impl OsEntry {
    /// The entry for a built image, with relative `url` and `icon`.
    pub fn for_image(f: &ImageFacts) -> Result<OsEntry> {
        let (xz_sha, xz_size) = super::hash_file(f.raw_xz)?;
        let url = f
            .raw_xz
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", f.raw_xz.display()))?;
        Ok(OsEntry {
            name: format!("labimg {}", f.profile),
            description: format!(
                "K3s node image of profile {}, k3s {}, built by labimg (configured at build \
                 time: no OS customisation)",
                f.profile, f.k3s_version
            ),
            icon: ICON_FILE.to_owned(),
            url: url.to_owned(),
            extract_size: f.raw.1,
            extract_sha256: f.raw.0.clone(),
            image_download_size: xz_size,
            image_download_sha256: xz_sha,
            release_date: crate::date::rfc3339(f.epoch)[..10].to_owned(),
            devices: f.devices.iter().map(|d| (*d).to_owned()).collect(),
        })
    }
}

impl OsList {
    /// Pretty JSON and a final newline.
    pub fn to_json(&self) -> String {
        // Strings and numbers: serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads `dir/os_list.json`.
    pub fn read(dir: &Path) -> Result<OsList> {
        let p = dir.join(FILE);
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))
    }
}

/// Writes `dir/os_list.json` with `entry` and the icon beside it.
pub fn write(dir: &Path, entry: OsEntry) -> Result<()> {
    let list = OsList {
        os_list: vec![entry],
    };
    let p = dir.join(FILE);
    std::fs::write(&p, list.to_json()).with_context(|| format!("writing {}", p.display()))?;
    let icon = dir.join(ICON_FILE);
    std::fs::write(&icon, ICON_SVG).with_context(|| format!("writing {}", icon.display()))
}

/// A plain 64×64 icon: a hexagon (a node) with three links.
pub const ICON_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">
<polygon points="32,4 56,18 56,46 32,60 8,46 8,18" fill="#326ce5"/>
<circle cx="32" cy="32" r="7" fill="#fff"/>
<path d="M32 25V12M26 36l-11 7M38 36l11 7" stroke="#fff" stroke-width="4" stroke-linecap="round"/>
</svg>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_describes_the_files_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let xz = dir.path().join("pi5.raw.xz");
        std::fs::write(&xz, b"compressed").unwrap();
        let e = OsEntry::for_image(&ImageFacts {
            profile: "pi5",
            k3s_version: "v1.33.1+k3s1",
            devices: devices_for_board("rpi5").unwrap(),
            raw: ("ab".repeat(32), 4096),
            raw_xz: &xz,
            epoch: 1_700_000_000,
        })
        .unwrap();
        assert_eq!(e.url, "pi5.raw.xz");
        assert_eq!(e.image_download_size, 10);
        assert_eq!(
            e.image_download_sha256,
            super::super::hash_file(&xz).unwrap().0
        );
        assert_eq!((e.extract_size, e.extract_sha256.len()), (4096, 64));
        assert_eq!(e.release_date, "2023-11-14");
        assert_eq!(e.devices, ["pi5-64bit"]);
        write(dir.path(), e.clone()).unwrap();
        assert_eq!(OsList::read(dir.path()).unwrap().os_list, [e]);
        assert!(dir.path().join(ICON_FILE).is_file());
        assert_eq!(devices_for_board("proxmox"), None);
    }
}
