//! The newc ("070701") cpio archive the Linux kernel unpacks as an initramfs.
//!
//! Written by hand because the format is tiny and full control is what makes
//! it reproducible: inode numbers follow tree order, times come from the
//! entries, and nothing from the host (device of origin, real inode) leaks in.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result, bail};

use crate::tree::{Kind, Tree};

/// One newc header's fields, in on-disk order after the magic.
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

/// Writes `tree` as a newc archive, root directory first as `.`, ending with
/// the `TRAILER!!!` record. The output is not compressed (see
/// [`crate::compress::xz_kernel`]).
pub fn write_newc(tree: &Tree, mut w: impl Write) -> Result<()> {
    let mut pos = 0u64;
    for (i, (path, entry)) in tree.iter().enumerate() {
        let name = if path.as_os_str().is_empty() {
            b".".to_vec()
        } else {
            path.as_os_str().as_bytes().to_vec()
        };
        let data: &[u8] = match &entry.kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_os_str().as_bytes(),
            _ => &[],
        };
        let (rdev_major, rdev_minor) = match entry.kind {
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                (major, minor)
            }
            _ => (0, 0),
        };
        let Ok(filesize) = u32::try_from(data.len()) else {
            bail!("/{} is too large for a cpio archive", path.display());
        };
        let header = Header {
            // Inode 0 is treated specially by some readers; start at 1.
            ino: u32::try_from(i + 1).context("too many entries for a cpio archive")?,
            mode: entry.file_type_bits() | (entry.mode & 0o7777),
            uid: entry.uid,
            gid: entry.gid,
            nlink: if entry.is_dir() { 2 } else { 1 },
            mtime: u32::try_from(entry.mtime).unwrap_or(u32::MAX),
            filesize,
            rdev_major,
            rdev_minor,
        };
        write_record(&mut w, &mut pos, &header, &name, data)
            .with_context(|| format!("writing /{} to the cpio archive", path.display()))?;
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        filesize: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    write_record(&mut w, &mut pos, &trailer, b"TRAILER!!!", &[])?;
    w.flush()?;
    Ok(())
}

fn write_record(
    w: &mut impl Write,
    pos: &mut u64,
    h: &Header,
    name: &[u8],
    data: &[u8],
) -> Result<()> {
    let namesize = name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.filesize,
        0, // devmajor: of the filesystem the file came from; none here
        0, // devminor
        h.rdev_major,
        h.rdev_minor,
        u32::try_from(namesize).context("file name too long")?,
        0, // check: only used by the "070702" crc variant
    ];
    let mut head = String::with_capacity(110);
    head.push_str("070701");
    for f in fields {
        head.push_str(&format!("{f:08X}"));
    }
    w.write_all(head.as_bytes())?;
    w.write_all(name)?;
    w.write_all(&[0])?;
    *pos += (head.len() + namesize) as u64;
    pad4(w, pos)?;
    w.write_all(data)?;
    *pos += data.len() as u64;
    pad4(w, pos)?;
    Ok(())
}

fn pad4(w: &mut impl Write, pos: &mut u64) -> Result<()> {
    let pad = (4 - (*pos % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    *pos += pad as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_aligned_and_trailer_ends() {
        let mut t = Tree::new();
        t.insert_file("a", b"12345".to_vec(), 0o644).unwrap();
        let mut out = Vec::new();
        write_newc(&t, &mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // Second record: header(110) + ".\0"(2) padded to 112.
        assert_eq!(&out[112..118], b"070701");
        assert!(out.windows(11).any(|w| w == b"TRAILER!!!\0"));
    }
}
