//! Unpacking a `.deb` (an `ar` archive of `control.tar.*` and `data.tar.*`)
//! into the staging [`Tree`], without dpkg and without root: owners, modes,
//! set-uid bits and device nodes become tree metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::control::{self, Stanza};
use crate::tree::{self, Entry, Kind, Tree};

/// Opens the member of a `.deb` whose name starts with `prefix` (`data.tar`)
/// and returns a decompressing reader over it.
fn member(path: &Path, prefix: &str) -> Result<Box<dyn Read>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = ar::Archive::new(f);
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.with_context(|| format!("reading ar archive {}", path.display()))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let mut raw = Vec::new();
        entry
            .read_to_end(&mut raw)
            .with_context(|| format!("reading {name} from {}", path.display()))?;
        let cursor = std::io::Cursor::new(raw);
        let reader: Box<dyn Read> = match name.rsplit('.').next() {
            Some("xz") => Box::new(liblzma::read::XzDecoder::new(cursor)),
            Some("zst") => Box::new(zstd::stream::read::Decoder::new(cursor)?),
            Some("gz") => Box::new(flate2::read::GzDecoder::new(cursor)),
            Some("tar") => Box::new(cursor),
            _ => bail!("{}: unsupported compression of {name}", path.display()),
        };
        return Ok(reader);
    }
    bail!(
        "{}: no {prefix}.* member; not a Debian package?",
        path.display()
    )
}

/// The `control` stanza of a `.deb` (Package, Version, Depends, ...).
pub fn deb_control(path: &Path) -> Result<Stanza> {
    let mut tar = tar::Archive::new(member(path, "control.tar")?);
    for e in tar.entries()? {
        let mut e = e?;
        if tree::normalize(e.path()?)? == Path::new("control") {
            let mut text = String::new();
            e.read_to_string(&mut text)?;
            let mut st = control::parse(&text).map_err(anyhow::Error::msg)?;
            return st.pop().context("empty control file");
        }
    }
    bail!("{}: control.tar has no control file", path.display())
}

/// Unpacks the `data.tar.*` of a `.deb` into `tree` and returns the paths it
/// installed (relative, in archive order). Hard links become copies of their
/// target's bytes; paths with `..` are refused.
pub fn extract_deb(path: &Path, tree: &mut Tree) -> Result<Vec<PathBuf>> {
    let mut tar = tar::Archive::new(member(path, "data.tar")?);
    let mut installed = Vec::new();
    // Hard link targets by archive path, for entries whose target was a file
    // of this package (dpkg requires the target to come first).
    let mut files: HashMap<PathBuf, Arc<Vec<u8>>> = HashMap::new();
    for e in tar
        .entries()
        .with_context(|| format!("reading data.tar of {}", path.display()))?
    {
        let mut e = e.with_context(|| format!("reading data.tar of {}", path.display()))?;
        let raw = e.path()?.into_owned();
        let p = tree::normalize(&raw)
            .with_context(|| format!("{}: unsafe path in data.tar", path.display()))?;
        let h = e.header();
        let mode = h.mode()? & 0o7777;
        let (uid, gid, mtime) = (h.uid()? as u32, h.gid()? as u32, h.mtime()?);
        let etype = h.entry_type();
        let dev = || -> Result<(u32, u32)> {
            Ok((
                h.device_major()?.context("device without major")?,
                h.device_minor()?.context("device without minor")?,
            ))
        };
        let kind = match etype {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(h.size()? as usize);
                e.read_to_end(&mut data)
                    .with_context(|| format!("reading {} from {}", p.display(), path.display()))?;
                let data = Arc::new(data);
                files.insert(p.clone(), data.clone());
                Kind::File(data)
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()?
                    .context("symlink without target")?
                    .into_owned();
                Kind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = e.link_name()?.context("hard link without target")?;
                let target = tree::normalize(&target)?;
                let data = files.get(&target).cloned().with_context(|| {
                    format!(
                        "{}: hard link {} to unknown file {}",
                        path.display(),
                        p.display(),
                        target.display()
                    )
                })?;
                Kind::File(data)
            }
            tar::EntryType::Char => {
                let (major, minor) = dev()?;
                Kind::CharDevice { major, minor }
            }
            tar::EntryType::Block => {
                let (major, minor) = dev()?;
                Kind::BlockDevice { major, minor }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => bail!(
                "{}: unsupported tar entry {other:?} at {}",
                path.display(),
                p.display()
            ),
        };
        if p.as_os_str().is_empty() {
            continue; // "./": the root keeps its own metadata
        }
        if matches!(kind, Kind::Dir)
            && let Some(existing) = tree.get(&p)
            && !existing.is_dir()
        {
            // A directory over an existing symlink (merged /usr: `lib` ->
            // `usr/lib`) means "the directory it points to": keep the link.
            continue;
        }
        let entry = Entry {
            kind,
            mode,
            uid,
            gid,
            mtime,
        };
        tree.insert(&p, entry)
            .with_context(|| format!("{}: installing /{}", path.display(), p.display()))?;
        installed.push(p);
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Raw bytes so that hostile names (`../x`) can be written at all.
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(42);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    /// Builds a `.deb` whose data.tar.gz holds `entries` (header, link, data).
    fn deb(dir: &Path, entries: Vec<(tar::Header, Option<&str>, &[u8])>) -> PathBuf {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            Default::default(),
        ));
        for (mut h, link, data) in entries {
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
                h.set_cksum();
            }
            tar.append(&h, data).unwrap();
        }
        let data = tar.into_inner().unwrap().finish().unwrap();
        let path = dir.join("t.deb");
        let mut ar = ar::Builder::new(File::create(&path).unwrap());
        for (name, bytes) in [("debian-binary", &b"2.0\n"[..]), ("data.tar.gz", &data)] {
            let h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            ar.append(&h, bytes).unwrap();
        }
        path
    }

    #[test]
    fn metadata_devices_links_and_setuid_survive() {
        use tar::EntryType as T;
        let tmp = tempfile::tempdir().unwrap();
        let mut dev = header(b"./dev/console", T::Char, 0o600, 0);
        dev.set_device_major(5).unwrap();
        dev.set_device_minor(1).unwrap();
        dev.set_cksum();
        let path = deb(
            tmp.path(),
            vec![
                (header(b"./", T::Directory, 0o755, 0), None, b""),
                (header(b"./usr/bin/", T::Directory, 0o755, 0), None, b""),
                (header(b"./usr/bin/su", T::Regular, 0o4755, 3), None, b"su!"),
                (
                    header(b"./usr/bin/su2", T::Link, 0o4755, 0),
                    Some("./usr/bin/su"),
                    b"",
                ),
                (header(b"./bin", T::Symlink, 0o777, 0), Some("usr/bin"), b""),
                (dev, None, b""),
            ],
        );
        let mut tree = Tree::new();
        let installed = extract_deb(&path, &mut tree).unwrap();
        assert_eq!(installed.len(), 5, "{installed:?}");
        let su = tree.get("usr/bin/su").unwrap();
        assert_eq!(
            (su.mode, su.uid, su.gid, su.mtime),
            (0o4755, 0, 42, 1_700_000_000)
        );
        assert_eq!(tree.get("usr/bin/su2").unwrap().data(), Some(&b"su!"[..]));
        assert_eq!(
            tree.get("bin").unwrap().kind,
            Kind::Symlink("usr/bin".into())
        );
        assert_eq!(tree.get_follow("bin/su").unwrap().data(), Some(&b"su!"[..]));
        let console = tree.get("dev/console").unwrap();
        assert_eq!(console.kind, Kind::CharDevice { major: 5, minor: 1 });
        assert_eq!(console.mode, 0o600);
    }

    #[test]
    fn dot_dot_paths_are_refused() {
        use tar::EntryType as T;
        let tmp = tempfile::tempdir().unwrap();
        let path = deb(
            tmp.path(),
            vec![(header(b"./../etc/passwd", T::Regular, 0o644, 1), None, b"x")],
        );
        let err = extract_deb(&path, &mut Tree::new()).unwrap_err();
        assert!(format!("{err:#}").contains(".."), "{err:#}");
        let path = deb(
            tmp.path(),
            vec![(
                header(b"./a", T::Link, 0o644, 0),
                Some("../../etc/shadow"),
                b"",
            )],
        );
        assert!(extract_deb(&path, &mut Tree::new()).is_err());
    }
}
