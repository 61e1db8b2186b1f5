//! The iPXE binaries the appliance hands to PXE firmware, taken from Debian trixie's
//! `ipxe` package through the builder's verified Debian source (signed `InRelease` →
//! `Packages` → `.deb` SHA-256), so nothing unverified is ever chained to by a node.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use labimg_builder::debian::{Archive, Cache, DEFAULT_MIRROR, extract_deb};
use labimg_builder::tree::{Kind, Tree};

/// Suite the `ipxe` package comes from.
pub const SUITE: &str = "trixie";

/// The files written into the iPXE directory and where they live in the package,
/// first candidate preferred. `ipxe.efi` is the amd64 EFI build; Debian ships it as
/// `ipxe-amd64.efi` (trixie) or as `/usr/lib/ipxe/ipxe.efi`, a symlink into `/boot`
/// (bookworm): the symlink is followed inside the package, so the real bytes land here.
pub const FILES: &[(&str, &[&str])] = &[
    ("undionly.kpxe", &["usr/lib/ipxe/undionly.kpxe"]),
    (
        "ipxe.efi",
        &[
            "usr/lib/ipxe/ipxe-amd64.efi",
            "usr/lib/ipxe/ipxe.efi",
            "boot/ipxe-amd64.efi",
            "boot/ipxe.efi",
        ],
    ),
    ("snponly.efi", &["usr/lib/ipxe/snponly.efi"]),
    (
        "ipxe-arm64.efi",
        &["usr/lib/ipxe/ipxe-arm64.efi", "boot/ipxe-arm64.efi"],
    ),
];

/// Where `labimg serve` takes the iPXE binaries from, and whether it may write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The folder TFTP and HTTP serve the binaries from.
    pub dir: PathBuf,
    /// False for a complete `<images>/ipxe`: the images folder may be mounted
    /// read-only, so serve never writes into it.
    pub fetch: bool,
}

/// Chooses the iPXE folder: `--ipxe-dir` when given (filled if incomplete); else
/// `<images>/ipxe` as it is when it already holds every file of [`FILES`] (an
/// operator's copy, or one an older labimg wrote there); else `<state-dir>/ipxe`,
/// filled from Debian. The images folder is never written to, so read-only images
/// (the shipped systemd unit, the container) still get their binaries.
pub fn locate(explicit: Option<&Path>, images: &Path, state_dir: &Path) -> Location {
    if let Some(dir) = explicit {
        return Location {
            dir: dir.to_path_buf(),
            fetch: true,
        };
    }
    let legacy = images.join("ipxe");
    if present(&legacy) {
        return Location {
            dir: legacy,
            fetch: false,
        };
    }
    if legacy.exists() {
        tracing::warn!(
            "{} lacks some of the iPXE binaries and is ignored (it is never written to); \
             using {}",
            legacy.display(),
            state_dir.join("ipxe").display()
        );
    }
    Location {
        dir: state_dir.join("ipxe"),
        fetch: true,
    }
}

/// True when every file of [`FILES`] is a regular, non-empty file in `dir`.
pub fn present(dir: &Path) -> bool {
    FILES.iter().all(|(name, _)| {
        std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() > 0)
    })
}

/// Fills `dir` with the iPXE binaries of [`FILES`] unless they are all there already.
/// Each file is written to a temp file in `dir` and renamed, so a concurrent reader
/// (the TFTP server, another `ensure`) never sees a partial binary.
pub fn ensure(dir: &Path, cache: Cache) -> Result<()> {
    if present(dir) {
        return Ok(());
    }
    tracing::info!(
        "fetching the iPXE binaries from Debian {SUITE} into {}",
        dir.display()
    );
    // `ipxe` is arch all: any architecture's index lists it.
    let archive = Archive::open(DEFAULT_MIRROR, &[SUITE.to_string()], "amd64", cache)
        .context("opening the Debian archive for the ipxe package")?;
    let res = archive
        .resolve(&["ipxe".to_string()])
        .context("resolving the ipxe package")?;
    let pkg = res
        .get("ipxe")
        .context("the resolution lacks the ipxe package")?
        .clone();
    let only = labimg_builder::debian::Resolution {
        arch: res.arch.clone(),
        packages: vec![pkg],
    };
    let fetched = archive
        .fetch(&only)
        .context("downloading the ipxe package")?;
    let mut tree = Tree::new();
    for f in &fetched {
        extract_deb(&f.path, &mut tree)
            .with_context(|| format!("extracting {}", f.path.display()))?;
    }
    write_files(&tree, dir)
}

/// Copies the files of [`FILES`] from an extracted `ipxe` package into `dir`.
pub fn write_files(tree: &Tree, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, candidates) in FILES {
        let data = candidates
            .iter()
            .find_map(|c| match tree.get_follow(c).map(|e| &e.kind) {
                Some(Kind::File(d)) if !d.is_empty() => Some(d.clone()),
                _ => None,
            });
        let Some(data) = data else {
            bail!("the ipxe package has none of {candidates:?} (for {name})");
        };
        let dest = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, data.as_slice())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for n in names {
            std::fs::write(dir.join(n), b"ipxe").unwrap();
        }
    }

    /// The default is the state folder; a complete `<images>/ipxe` is used as it is
    /// (never fetched into); an incomplete one is ignored; `--ipxe-dir` always wins.
    #[test]
    fn locate_prefers_state_dir_and_never_writes_images() {
        let t = tempfile::tempdir().unwrap();
        let (images, state) = (t.path().join("images"), t.path().join("state"));
        let state_default = Location {
            dir: state.join("ipxe"),
            fetch: true,
        };
        assert_eq!(locate(None, &images, &state), state_default);
        fill(&images.join("ipxe"), &["undionly.kpxe", "ipxe.efi"]);
        assert_eq!(locate(None, &images, &state), state_default);
        let all: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        fill(&images.join("ipxe"), &all);
        assert_eq!(
            locate(None, &images, &state),
            Location {
                dir: images.join("ipxe"),
                fetch: false,
            }
        );
        let own = t.path().join("mine");
        assert_eq!(
            locate(Some(&own), &images, &state),
            Location {
                dir: own.clone(),
                fetch: true,
            }
        );
    }

    /// Against the real mirror: the four binaries arrive as regular files with the
    /// formats firmware expects, and a second call leaves them alone.
    #[test]
    fn ensure_fetches_real_ipxe_binaries_from_debian() {
        let dir = tempfile::tempdir().unwrap();
        let ipxe = dir.path().join("ipxe");
        ensure(&ipxe, Cache::open_default().unwrap()).unwrap();
        for (name, _) in FILES {
            let p = ipxe.join(name);
            let meta = std::fs::symlink_metadata(&p).unwrap();
            assert!(meta.is_file(), "{name} is not a regular file");
            assert!(meta.len() > 50_000, "{name} is only {} bytes", meta.len());
        }
        // PE images start with "MZ"; the machine field tells amd64 (0x8664) from arm64 (0xaa64).
        let machine = |name: &str| {
            let b = std::fs::read(ipxe.join(name)).unwrap();
            assert_eq!(&b[..2], b"MZ", "{name} is not a PE image");
            let pe = u32::from_le_bytes(b[0x3c..0x40].try_into().unwrap()) as usize;
            assert_eq!(&b[pe..pe + 4], b"PE\0\0", "{name}: no PE header");
            u16::from_le_bytes([b[pe + 4], b[pe + 5]])
        };
        assert_eq!(machine("ipxe.efi"), 0x8664);
        assert_eq!(machine("snponly.efi"), 0x8664);
        assert_eq!(machine("ipxe-arm64.efi"), 0xaa64);
        // undionly.kpxe is a PXE NBP: real-mode code, not a PE file.
        let undi = std::fs::read(ipxe.join("undionly.kpxe")).unwrap();
        assert_ne!(&undi[..2], b"MZ");
        // Present now: a second call must not touch the files.
        let before = std::fs::metadata(ipxe.join("ipxe.efi"))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        ensure(&ipxe, Cache::open_default().unwrap()).unwrap();
        let after = std::fs::metadata(ipxe.join("ipxe.efi"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
    }
}
