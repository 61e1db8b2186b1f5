//! The image directory written by the builder: `<dir>/<profile>/netboot/netboot.json`
//! and the artifacts beside it, the per-node config directories, and the Raspberry
//! Pi Imager lists (`<dir>/<profile>/os_list.json`) with the disk images they name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use labimg_builder::artifact::sign;

/// `netboot.json`: the type the builder writes it through.
pub use labimg_builder::artifact::NetbootInfo;
use labimg_builder::artifact::imager::{self, OsEntry, OsList};

/// True for a single safe path component (no separators, no dot-dot, no hidden names).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.contains('/')
        && !s.contains('\\')
        && !s.contains('\0')
}

/// Accessor for the builder's output directory.
#[derive(Debug, Clone)]
pub struct Images {
    /// The `--images` directory.
    pub dir: PathBuf,
    /// With `--public-key`: a profile is served only while its signature and files check out.
    pub verifier: Option<std::sync::Arc<crate::verify::Verifier>>,
}

impl Images {
    /// `<dir>/<profile>/netboot`; an error when the profile's signature or files
    /// do not verify. Everything served from a profile comes through here.
    pub fn netboot_dir(&self, profile: &str) -> Result<PathBuf> {
        if !is_plain_name(profile) {
            bail!("invalid profile name {profile:?}");
        }
        let dir = self.dir.join(profile);
        if let Some(v) = &self.verifier {
            v.check(&dir)?;
        }
        Ok(dir.join("netboot"))
    }

    /// Where `path` of `<profile>`'s upgrade bundle is: the folder to serve it under
    /// and its path relative to that folder. The bundle is `upgrade.json`,
    /// `upgrade.env` (what the node's upgrade agent reads), `SHA256SUMS`, its
    /// signature and the files under `netboot/`; everything else (`nodes/`,
    /// `manifest.json`, disk images) is an error. With a verifier, `upgrade.json`
    /// and `upgrade.env` must also match the signed `SHA256SUMS`.
    pub fn bundle_file<'a>(&self, profile: &str, path: &'a str) -> Result<(PathBuf, &'a str)> {
        let netboot = self.netboot_dir(profile)?;
        if let Some(rel) = path.strip_prefix("netboot/") {
            return Ok((netboot, rel));
        }
        const INDEXES: [&str; 2] = ["upgrade.json", "upgrade.env"];
        if !(INDEXES.contains(&path) || [sign::SUMS_FILE, sign::SIGNATURE_FILE].contains(&path)) {
            bail!("{path:?} is not part of an upgrade bundle");
        }
        let dir = self.dir.join(profile);
        // A regular file, not a symlink: one could lead to a node's secrets in `nodes/`.
        if !std::fs::symlink_metadata(dir.join(path)).is_ok_and(|m| m.is_file()) {
            bail!("{path} is not a regular file");
        }
        if INDEXES.contains(&path)
            && let Some(v) = &self.verifier
        {
            v.check_file(&dir, path)?;
        }
        Ok((dir, path))
    }

    /// Reads `<profile>/netboot/netboot.json`.
    pub fn info(&self, profile: &str) -> Result<NetbootInfo> {
        let p = self.netboot_dir(profile)?.join("netboot.json");
        let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))
    }

    /// Every profile's Imager entries in one list, their `url` and `icon` made
    /// absolute under `<base>/imager/<profile>/`. A profile is left out (with a
    /// warning) when its list does not verify or names a file that is missing or not
    /// world-readable: a private build's disk image holds secrets.
    pub fn imager_list(&self, base: &str) -> OsList {
        let mut profiles: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| is_plain_name(n))
                    .collect()
            })
            .unwrap_or_default();
        profiles.sort();
        let mut all = OsList::default();
        for p in profiles {
            if !self.dir.join(&p).join(imager::FILE).is_file() {
                continue;
            }
            match self.imager_entries(&p) {
                Ok(entries) => all.os_list.extend(entries.into_iter().map(|mut e| {
                    e.url = format!("{base}/imager/{p}/{}", e.url);
                    e.icon = format!("{base}/imager/{p}/{}", e.icon);
                    e
                })),
                Err(e) => tracing::warn!("Imager list: leaving out profile {p}: {e:#}"),
            }
        }
        all
    }

    /// `<profile>`'s `os_list.json` entries whose files can be published.
    fn imager_entries(&self, profile: &str) -> Result<Vec<OsEntry>> {
        let dir = self.dir.join(profile);
        if let Some(v) = &self.verifier {
            v.check_file(&dir, imager::FILE)?;
        }
        let list = OsList::read(&dir)?;
        for e in &list.os_list {
            for name in [&e.url, &e.icon] {
                public_file(&dir, name)?;
            }
        }
        Ok(list.os_list)
    }

    /// The path of `file` of `<profile>`'s Imager list: only a disk image or icon
    /// its `os_list.json` names, world-readable. With a verifier the list must
    /// match the signed `SHA256SUMS`; the image is then checked by Imager against
    /// the list's sha256 (hashing gigabytes per request is left to the client).
    pub fn imager_file(&self, profile: &str, file: &str) -> Result<PathBuf> {
        if !is_plain_name(profile) || !is_plain_name(file) {
            bail!("invalid name");
        }
        let entries = self.imager_entries(profile)?;
        if !entries.iter().any(|e| e.url == file || e.icon == file) {
            bail!("{file} is not named by {profile}/{}", imager::FILE);
        }
        public_file(&self.dir.join(profile), file)
    }

    /// `<dir>/<profile>/nodes/<hostname>`: the node's private config directory.
    pub fn node_dir(&self, profile: &str, hostname: &str) -> Result<PathBuf> {
        if !is_plain_name(hostname) {
            bail!("invalid host name {hostname:?}");
        }
        Ok(self.dir.join(profile).join("nodes").join(hostname))
    }
}

/// `dir/name` when it is a plain name of a regular, world-readable file.
fn public_file(dir: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if !is_plain_name(name) {
        bail!("{name:?} is not a file name in {}", dir.display());
    }
    let p = dir.join(name);
    let meta = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", p.display());
    }
    if meta.permissions().mode() & 0o004 == 0 {
        bail!(
            "{} is not world-readable (a private build): not published",
            p.display()
        );
    }
    Ok(p)
}

/// Packs a directory as an uncompressed, reproducible tar (sorted, mtime 0, root-owned).
pub fn tar_dir(dir: &Path) -> Result<Vec<u8>> {
    tar_dir_with(dir, &[])
}

/// [`tar_dir`] with `extra` files (relative path, contents; mode 0600) appended, in
/// folders the directory already has.
pub fn tar_dir_with(dir: &Path, extra: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let here = base.join(rel);
        let mut entries: Vec<_> = std::fs::read_dir(&here)
            .with_context(|| format!("reading {}", here.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            out.push(r.clone());
            if e.file_type()?.is_dir() {
                walk(base, &r, out)?;
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)?;
    let mut b = tar::Builder::new(Vec::new());
    for rel in paths {
        let full = dir.join(&rel);
        let meta =
            std::fs::symlink_metadata(&full).with_context(|| format!("stat {}", full.display()))?;
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        if meta.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            // A trailing slash marks directories the way GNU tar writes them.
            h.set_path(format!("{}/", rel.display()))?;
            h.set_cksum();
            b.append(&h, std::io::empty())?;
        } else if meta.is_file() {
            let data =
                std::fs::read(&full).with_context(|| format!("reading {}", full.display()))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, &rel, data.as_slice())?;
        }
        // Symlinks are skipped: a bundle must not point anywhere on the node.
    }
    for (rel, data) in extra {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o600);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, rel, *data)?;
    }
    b.into_inner().context("finishing tar")
}
