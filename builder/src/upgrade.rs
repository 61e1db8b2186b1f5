//! The upgrade bundle: `upgrade.env` in the output folder tells a running
//! node's upgrade agent (`builder/node/upgrade`) what to write into its
//! inactive slot — root image, kernel and initramfs with their sha256 and
//! size, and the kernel command line for each slot. The files themselves are
//! the `netboot/` artifacts, so the output folder served over HTTP (or copied
//! to the node) is the bundle. For the Raspberry Pi 5 it also lists the boot
//! partition files under `netboot/rpi/` (`rpi_boot`), which the agent copies
//! to the inactive slot's boot partition. With `secure-boot.enabled` it also
//! lists the signed Unified Kernel Image of each slot under `netboot/uki/`
//! (`uki`), which the agent stages instead of a kernel, an initramfs and a boot
//! entry. `upgrade.json` says the same for people and tools; both are rendered
//! from one [`Bundle`] by [`Bundle::render`], so they cannot disagree.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::artifact::hash_file;
use crate::rootimg::RootImage;

/// One file of the bundle, relative to the output folder.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BundleFile {
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// The bundle's index, written as `upgrade.json` (pretty-printed, for people,
/// `labimg inspect` and tests) and as `upgrade.env` (`KEY='value'` lines, what
/// the node agent reads with `kv_get` from `common.sh`).
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
    /// The k3s release the image runs (`k3s.version`, for example
    /// `v1.36.4+k3s1`): an agent refuses a bundle whose k3s is newer than its
    /// server's (Kubernetes' skew policy: no kubelet newer than the API server).
    pub k3s_version: String,
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
    /// Secure Boot (`secure-boot.enabled`) only: the signed Unified Kernel Image of
    /// each slot ("a", "b") under `netboot/uki/`, `labimg-<slot>.efi`. The agent
    /// stages the target slot's UKI as `EFI/Linux/labimg-<slot>+<tries>.efi` instead
    /// of a kernel, an initramfs and a boot entry (upgrade.env: `UKI_<SLOT>_FILE`,
    /// `_SHA256`, `_SIZE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uki: Option<BTreeMap<String, BundleFile>>,
}

/// Where a Secure Boot build publishes its signed UKIs, `labimg-<slot>.efi`.
pub const UKI_DIR: &str = "netboot/uki";

/// The signed UKIs under `out_dir/netboot/uki/` by slot; `None` without that folder.
fn uki_files(out_dir: &Path) -> Result<Option<BTreeMap<String, BundleFile>>> {
    let dir = out_dir.join(UKI_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        let slot = name
            .strip_prefix("labimg-")
            .and_then(|s| s.strip_suffix(".efi"))
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase()))
            .with_context(|| format!("{UKI_DIR}/{name} is not labimg-<slot>.efi"))?;
        files.insert(
            slot.to_owned(),
            bundle_file(out_dir, &format!("{UKI_DIR}/{name}"))?,
        );
    }
    Ok(Some(files))
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
            anyhow::ensure!(
                is_plain_path(&rel),
                "boot file name {rel:?} cannot go into upgrade.env: the node splits its list \
                 of boot files at spaces and uses each as a path, so only letters, digits \
                 and ._+,@- are allowed, and no empty or .. component"
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

/// A relative path the node can take as one word of `LABIMG_BUNDLE_RPI_FILES`
/// (split at spaces, unquoted, with globbing off) and use under its work folder.
fn is_plain_path(rel: &str) -> bool {
    !rel.is_empty()
        && rel.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "._+,@-".contains(ch))
        })
}

/// The prefix of every `upgrade.env` key.
pub const ENV_PREFIX: &str = "LABIMG_BUNDLE_";

impl Bundle {
    /// `upgrade.json` and `upgrade.env`, in that order: the only place either
    /// is rendered. Refuses a value `upgrade.env` cannot carry as `KEY='value'`
    /// (a single quote, backslash, newline or carriage return).
    pub fn render(&self) -> Result<(String, String)> {
        let json = serde_json::to_string_pretty(self)? + "\n";
        let mut pairs: Vec<(String, String)> = vec![
            ("VERSION".into(), self.version.clone()),
            ("PROFILE".into(), self.profile.clone()),
            (
                "SOURCE_DATE_EPOCH".into(),
                self.source_date_epoch.to_string(),
            ),
            ("K3S_VERSION".into(), self.k3s_version.clone()),
        ];
        for (name, f) in [
            ("ROOT", &self.root),
            ("KERNEL", &self.kernel),
            ("INITRD", &self.initrd),
        ] {
            pairs.push((format!("{name}_FILE"), f.file.clone()));
            pairs.push((format!("{name}_SHA256"), f.sha256.clone()));
            pairs.push((format!("{name}_SIZE"), f.size.to_string()));
        }
        for (slot, line) in &self.cmdline {
            anyhow::ensure!(
                !slot.is_empty() && slot.chars().all(|c| c.is_ascii_lowercase()),
                "slot name {slot:?} cannot be an upgrade.env key"
            );
            // Also no double quote: the line goes verbatim into a boot entry's
            // `options` and the Pi's cmdline.txt.
            anyhow::ensure!(
                !line.contains('"'),
                "the kernel command line for slot {slot} contains a double quote"
            );
            pairs.push((
                format!("CMDLINE_{}", slot.to_ascii_uppercase()),
                line.clone(),
            ));
        }
        if let Some(files) = &self.rpi_boot {
            for path in files.keys() {
                anyhow::ensure!(
                    is_plain_path(path),
                    "boot file name {path:?} cannot go into upgrade.env"
                );
            }
            let words: Vec<&str> = files
                .iter()
                .flat_map(|(p, h)| [p.as_str(), h.as_str()])
                .collect();
            pairs.push(("RPI_FILES".into(), words.join(" ")));
        }
        for (slot, f) in self.uki.iter().flatten() {
            anyhow::ensure!(
                !slot.is_empty() && slot.chars().all(|c| c.is_ascii_lowercase()),
                "slot name {slot:?} cannot be an upgrade.env key"
            );
            let key = format!("UKI_{}", slot.to_ascii_uppercase());
            pairs.push((format!("{key}_FILE"), f.file.clone()));
            pairs.push((format!("{key}_SHA256"), f.sha256.clone()));
            pairs.push((format!("{key}_SIZE"), f.size.to_string()));
        }
        let mut env = String::from(
            "# labimg upgrade bundle (builder/src/upgrade.rs); the node agent reads it\n\
             # with kv_get (builder/node/common.sh): KEY='value' lines only.\n",
        );
        for (key, value) in pairs {
            anyhow::ensure!(
                !value.contains(['\'', '\\', '\n', '\r']),
                "{ENV_PREFIX}{key} {value:?} contains a quote, backslash or newline, \
                 which upgrade.env cannot carry"
            );
            env.push_str(&format!("{ENV_PREFIX}{key}='{value}'\n"));
        }
        Ok((json, env))
    }
}

/// Describes the netboot artifacts already written under `out_dir/netboot/`
/// as an upgrade bundle and writes `out_dir/upgrade.json` and
/// `out_dir/upgrade.env` (nothing if either cannot be rendered).
pub fn write_upgrade_json(
    out_dir: &Path,
    profile: &str,
    k3s_version: &str,
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
        k3s_version: k3s_version.to_owned(),
        root: BundleFile {
            file: "netboot/root.squashfs".into(),
            sha256: root.sha256.clone(),
            size: root.size,
        },
        kernel: bundle_file(out_dir, "netboot/vmlinuz")?,
        initrd: bundle_file(out_dir, "netboot/initrd.img")?,
        cmdline: cmdline.clone(),
        rpi_boot: rpi_boot_files(out_dir)?,
        uki: uki_files(out_dir)?,
    };
    let (json, env) = bundle.render()?;
    for (name, text) in [("upgrade.json", json), ("upgrade.env", env)] {
        let path = out_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
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

    /// A build folder with `files` (paths relative to it) and a root image
    /// described as `size` bytes with sha256 `sha256`.
    fn build_dir(
        files: &[(&str, &[u8])],
        size: u64,
        sha256: &str,
    ) -> (tempfile::TempDir, RootImage) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, data) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        let root = RootImage {
            path: dir.path().join("netboot/root.squashfs"),
            size,
            sha256: sha256.to_owned(),
            verity: verity(),
        };
        (dir, root)
    }

    #[test]
    fn writes_one_key_per_line_with_the_hashes_of_the_netboot_files() {
        let (dir, root) = build_dir(
            &[("netboot/vmlinuz", b"kernel"), ("netboot/initrd.img", b"")],
            4096,
            &"ab".repeat(32),
        );
        let cmdline = BTreeMap::from([
            ("a".to_owned(), "console=ttyS0 labimg.slot=a".to_owned()),
            ("b".to_owned(), "console=ttyS0 labimg.slot=b".to_owned()),
        ]);
        let b = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &cmdline).unwrap();
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
        let env = std::fs::read_to_string(dir.path().join("upgrade.env")).unwrap();
        for line in [
            "LABIMG_BUNDLE_VERSION='abababababab'",
            "LABIMG_BUNDLE_SOURCE_DATE_EPOCH='1'",
            "LABIMG_BUNDLE_K3S_VERSION='v1.36.4+k3s1'",
            "LABIMG_BUNDLE_ROOT_FILE='netboot/root.squashfs'",
            "LABIMG_BUNDLE_ROOT_SIZE='4096'",
            "LABIMG_BUNDLE_KERNEL_SHA256='6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c'",
            "LABIMG_BUNDLE_INITRD_SIZE='0'",
            "LABIMG_BUNDLE_CMDLINE_B='console=ttyS0 labimg.slot=b'",
        ] {
            assert!(env.lines().any(|l| l == line), "{line:?} not in {env}");
        }
        assert!(!env.contains("RPI_FILES"), "{env}");
    }

    #[test]
    fn lists_the_rpi_boot_files_except_cmdline_txt() {
        let (dir, root) = build_dir(
            &[
                ("netboot/vmlinuz", b"kernel"),
                ("netboot/initrd.img", b""),
                ("netboot/rpi/config.txt", b"kernel"),
                ("netboot/rpi/cmdline.txt", b"slot a"),
                ("netboot/rpi/overlays/x.dtbo", b""),
            ],
            1,
            &"00".repeat(32),
        );
        let b = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &BTreeMap::new())
            .unwrap();
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
        let b = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &BTreeMap::new())
            .unwrap();
        assert_eq!(b.rpi_boot, None);
        let text = std::fs::read_to_string(dir.path().join("upgrade.json")).unwrap();
        assert!(!text.contains("rpi_boot"), "{text}");
    }

    #[test]
    fn upgrade_env_lists_the_rpi_boot_files_as_path_sha256_words() {
        let (dir, root) = build_dir(
            &[
                ("netboot/vmlinuz", b"kernel"),
                ("netboot/initrd.img", b""),
                ("netboot/rpi/config.txt", b"kernel"),
                ("netboot/rpi/overlays/x.dtbo", b""),
            ],
            1,
            &"00".repeat(32),
        );
        write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &BTreeMap::new()).unwrap();
        let env = std::fs::read_to_string(dir.path().join("upgrade.env")).unwrap();
        let kernel = "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c";
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let want = format!("LABIMG_BUNDLE_RPI_FILES='config.txt {kernel} overlays/x.dtbo {empty}'");
        assert!(env.lines().any(|l| l == want), "{want} not in {env}");

        // A name the node would split or glob is refused, and nothing is written.
        std::fs::remove_file(dir.path().join("upgrade.env")).unwrap();
        std::fs::write(dir.path().join("netboot/rpi/a b.txt"), b"").unwrap();
        let err = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &BTreeMap::new())
            .unwrap_err();
        assert!(format!("{err:#}").contains("\"a b.txt\""), "{err:#}");
        assert!(!dir.path().join("upgrade.env").exists());
        for bad in ["a*b", "a'b", "a\\b", "", "../x", "a//b", "./a"] {
            assert!(!is_plain_path(bad), "{bad:?}");
        }
        assert!(is_plain_path("overlays/vc4-kms-v3d-pi5.dtbo"));
    }

    #[test]
    fn refuses_a_cmdline_the_node_cannot_parse() {
        let (dir, root) = build_dir(
            &[("netboot/vmlinuz", b"k"), ("netboot/initrd.img", b"i")],
            1,
            &"00".repeat(32),
        );
        let cmdline = BTreeMap::from([("a".to_owned(), "x=\"y z\"".to_owned())]);
        let err =
            write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &cmdline).unwrap_err();
        assert!(format!("{err:#}").contains("slot a"), "{err:#}");
        for line in ["x='y'", "x=a\\b", "x\ny"] {
            let cmdline = BTreeMap::from([("b".to_owned(), line.to_owned())]);
            let err = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &cmdline)
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("LABIMG_BUNDLE_CMDLINE_B"),
                "{line:?}: {err:#}"
            );
        }
        assert!(!dir.path().join("upgrade.env").exists());
        assert!(!dir.path().join("upgrade.json").exists());
    }

    #[test]
    fn lists_the_signed_ukis_of_a_secure_boot_build() {
        let files: [(&str, &[u8]); 4] = [
            ("netboot/vmlinuz", b"k"),
            ("netboot/initrd.img", b"i"),
            ("netboot/uki/labimg-a.efi", b"uki a"),
            ("netboot/uki/labimg-b.efi", b"uki-b"),
        ];
        let (dir, root) = build_dir(&files, 4096, &"ab".repeat(32));
        let b = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &BTreeMap::new())
            .unwrap();
        let uki = b.uki.as_ref().unwrap();
        assert_eq!(uki.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(uki["b"].file, "netboot/uki/labimg-b.efi");
        assert_eq!(uki["b"].size, 5);
        let env = std::fs::read_to_string(dir.path().join("upgrade.env")).unwrap();
        assert!(env.contains("\nLABIMG_BUNDLE_UKI_A_FILE='netboot/uki/labimg-a.efi'\n"));
        assert!(env.contains(&format!(
            "\nLABIMG_BUNDLE_UKI_B_SHA256='{}'\n",
            uki["b"].sha256
        )));
        assert!(env.contains("\nLABIMG_BUNDLE_UKI_B_SIZE='5'\n"));
        let json = std::fs::read_to_string(dir.path().join("upgrade.json")).unwrap();
        assert!(json.contains("\"uki\""), "{json}");
        // A stray file in the folder is an error, not silently left out.
        std::fs::write(dir.path().join("netboot/uki/other.efi"), b"x").unwrap();
        let err = write_upgrade_json(dir.path(), "p", "v1.36.4+k3s1", 1, &root, &BTreeMap::new())
            .unwrap_err();
        assert!(format!("{err:#}").contains("labimg-<slot>.efi"), "{err:#}");
        // Without the folder (every build without Secure Boot): no uki key at all.
        let (plain, root) = build_dir(&files[..2], 4096, &"ab".repeat(32));
        write_upgrade_json(
            plain.path(),
            "p",
            "v1.36.4+k3s1",
            1,
            &root,
            &BTreeMap::new(),
        )
        .unwrap();
        let env = std::fs::read_to_string(plain.path().join("upgrade.env")).unwrap();
        assert!(!env.contains("UKI_"), "{env}");
    }
}
