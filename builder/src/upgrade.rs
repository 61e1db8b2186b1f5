//! The upgrade bundle: `upgrade.json` in the output folder tells a running
//! node's upgrade agent (`builder/node/upgrade`) what to write into its
//! inactive slot — root image, kernel and initramfs with their sha256 and
//! size, and the kernel command line for each slot. The files themselves are
//! the `netboot/` artifacts, so the output folder served over HTTP (or copied
//! to the node) is the bundle. For the Raspberry Pi 5 it also lists the boot
//! partition files under `netboot/rpi/` (`rpi_boot`), which the agent copies
//! to the inactive slot's boot partition.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::debian::cache::hash_file;
use crate::rootimg::RootImage;

/// One file of the bundle, relative to the output folder.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BundleFile {
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// `upgrade.json`. The node agent parses it with awk, one key per line, so it
/// is always written pretty-printed and holds only strings and numbers.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Bundle {
    /// The first 12 hex digits of the root image's sha256: what the node
    /// compares with the root it runs to decide whether there is anything new.
    pub version: String,
    /// The profile it was built from: a node stages only its own profile's bundles.
    pub profile: String,
    /// When it was built (SOURCE_DATE_EPOCH): a node refuses an older build than
    /// the one it runs, so a replayed old (but signed) bundle cannot downgrade it.
    pub source_date_epoch: u64,
    pub root: BundleFile,
    pub kernel: BundleFile,
    pub initrd: BundleFile,
    /// The kernel command line per slot ("a", "b"), as the target renders it.
    pub cmdline: BTreeMap<String, String>,
    /// Raspberry Pi 5 only: every file of a boot partition under
    /// `netboot/rpi/` (path relative to it → sha256) except `cmdline.txt`,
    /// which the agent writes from `cmdline.<slot>`. The files are the same
    /// for both slots: only the command line names the slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpi_boot: Option<BTreeMap<String, String>>,
}

/// Where the rpi5 target publishes its boot partition files (slot A's tree).
pub const RPI_BOOT_DIR: &str = "netboot/rpi";

/// The files under `out_dir/netboot/rpi/` (recursively) with their sha256,
/// minus `cmdline.txt`; `None` when the build has no such folder (not a Pi).
fn rpi_boot_files(out_dir: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let dir = out_dir.join(RPI_BOOT_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.clone()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry
                .with_context(|| format!("listing {}", d.display()))?
                .path();
            if path.is_dir() {
                todo.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&dir)
                .context("a boot file outside netboot/rpi")?
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?
                .to_owned();
            if rel == "cmdline.txt" {
                continue;
            }
            // The node reads keys line by line with awk and uses them as paths.
            anyhow::ensure!(
                !rel.contains(['\n', '"', '\\', ' ']) && !rel.split('/').any(|c| c == ".."),
                "boot file name {rel:?} cannot go into upgrade.json"
            );
            let (sha256, _) =
                hash_file(&path).with_context(|| format!("hashing {}", path.display()))?;
            files.insert(rel, sha256);
        }
    }
    Ok(Some(files))
}

fn bundle_file(out_dir: &Path, rel: &str) -> Result<BundleFile> {
    let path = out_dir.join(rel);
    let (sha256, size) = hash_file(&path).with_context(|| format!("hashing {}", path.display()))?;
    Ok(BundleFile {
        file: rel.to_owned(),
        sha256,
        size,
    })
}

/// Describes the netboot artifacts already written under `out_dir/netboot/`
/// as an upgrade bundle and writes `out_dir/upgrade.json`.
pub fn write_upgrade_json(
    out_dir: &Path,
    profile: &str,
    epoch: u64,
    root: &RootImage,
    cmdline: &BTreeMap<String, String>,
) -> Result<Bundle> {
    let bundle = Bundle {
        version: root
            .sha256
            .get(..12)
            .context("the root image's sha256 is shorter than 12 digits")?
            .to_owned(),
        profile: profile.to_owned(),
        source_date_epoch: epoch,
        root: BundleFile {
            file: "netboot/root.squashfs".into(),
            sha256: root.sha256.clone(),
            size: root.size,
        },
        kernel: bundle_file(out_dir, "netboot/vmlinuz")?,
        initrd: bundle_file(out_dir, "netboot/initrd.img")?,
        cmdline: cmdline.clone(),
        rpi_boot: rpi_boot_files(out_dir)?,
    };
    for (slot, line) in &bundle.cmdline {
        // The node reads values line by line; a newline or quote would break it.
        anyhow::ensure!(
            !line.contains(['\n', '"', '\\']),
            "the kernel command line for slot {slot} contains a newline, quote or backslash"
        );
    }
    let path = out_dir.join("upgrade.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bundle)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verity::Verity;

    fn verity() -> Verity {
        Verity {
            root_hash: "00".repeat(32),
            salt: String::new(),
            uuid: String::new(),
            data_blocks: 1,
            hash_offset: 4096,
        }
    }

    #[test]
    fn writes_one_key_per_line_with_the_hashes_of_the_netboot_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("netboot")).unwrap();
        std::fs::write(dir.path().join("netboot/vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.path().join("netboot/initrd.img"), b"").unwrap();
        let root = RootImage {
            path: dir.path().join("netboot/root.squashfs"),
            size: 4096,
            sha256: "ab".repeat(32),
            verity: verity(),
        };
        let cmdline = BTreeMap::from([
            ("a".to_owned(), "console=ttyS0 labimg.slot=a".to_owned()),
            ("b".to_owned(), "console=ttyS0 labimg.slot=b".to_owned()),
        ]);
        let b = write_upgrade_json(dir.path(), "p", 1, &root, &cmdline).unwrap();
        assert_eq!(b.version, "abababababab");
        // sha256("kernel") and sha256(""), as sha256sum prints them.
        assert_eq!(
            b.kernel.sha256,
            "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c"
        );
        assert_eq!(b.kernel.size, 6);
        assert_eq!(
            b.initrd,
            BundleFile {
                file: "netboot/initrd.img".into(),
                sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                size: 0,
            }
        );
        let text = std::fs::read_to_string(dir.path().join("upgrade.json")).unwrap();
        for line in [
            "  \"version\": \"abababababab\",",
            "    \"b\": \"console=ttyS0 labimg.slot=b\"",
            "    \"file\": \"netboot/root.squashfs\",",
            "    \"size\": 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in {text}");
        }
    }

    #[test]
    fn lists_the_rpi_boot_files_except_cmdline_txt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("netboot/rpi/overlays")).unwrap();
        std::fs::write(dir.path().join("netboot/vmlinuz"), b"kernel").unwrap();
        std::fs::write(dir.path().join("netboot/initrd.img"), b"").unwrap();
        for (f, data) in [
            ("config.txt", "kernel"),
            ("cmdline.txt", "slot a"),
            ("overlays/x.dtbo", ""),
        ] {
            std::fs::write(dir.path().join("netboot/rpi").join(f), data).unwrap();
        }
        let root = RootImage {
            path: dir.path().join("netboot/root.squashfs"),
            size: 1,
            sha256: "00".repeat(32),
            verity: verity(),
        };
        let b = write_upgrade_json(dir.path(), "p", 1, &root, &BTreeMap::new()).unwrap();
        let kernel = "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c";
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            b.rpi_boot,
            Some(BTreeMap::from([
                ("config.txt".to_owned(), kernel.to_owned()),
                ("overlays/x.dtbo".to_owned(), empty.to_owned()),
            ]))
        );
        let text = std::fs::read_to_string(dir.path().join("upgrade.json")).unwrap();
        assert!(
            text.lines()
                .any(|l| l == format!("    \"overlays/x.dtbo\": \"{empty}\"")),
            "{text}"
        );

        // Without netboot/rpi (Proxmox) there is no rpi_boot key at all.
        std::fs::remove_dir_all(dir.path().join("netboot/rpi")).unwrap();
        let b = write_upgrade_json(dir.path(), "p", 1, &root, &BTreeMap::new()).unwrap();
        assert_eq!(b.rpi_boot, None);
        let text = std::fs::read_to_string(dir.path().join("upgrade.json")).unwrap();
        assert!(!text.contains("rpi_boot"), "{text}");
    }

    #[test]
    fn refuses_a_cmdline_the_node_cannot_parse() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("netboot")).unwrap();
        std::fs::write(dir.path().join("netboot/vmlinuz"), b"k").unwrap();
        std::fs::write(dir.path().join("netboot/initrd.img"), b"i").unwrap();
        let root = RootImage {
            path: dir.path().join("netboot/root.squashfs"),
            size: 1,
            sha256: "00".repeat(32),
            verity: verity(),
        };
        let cmdline = BTreeMap::from([("a".to_owned(), "x=\"y z\"".to_owned())]);
        let err = write_upgrade_json(dir.path(), "p", 1, &root, &cmdline).unwrap_err();
        assert!(format!("{err:#}").contains("slot a"), "{err:#}");
    }
}
