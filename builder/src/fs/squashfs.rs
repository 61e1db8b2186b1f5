//! The read-only root filesystem image: squashfs written with backhand.
//!
//! The kernel mounts it directly (Debian kernels have squashfs with xz and zstd),
//! so the whole node OS is one verifiable file. Owners, modes, times, symlinks
//! and device nodes come from the staging tree, never from the host, and the
//! output is byte-for-byte reproducible.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result, bail};
use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use crate::tree::{Kind, Tree};

/// Block compression for a squashfs image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Best ratio; the usual choice for a root image.
    Xz,
    /// Faster to unpack, slightly larger.
    Zstd,
    Gzip,
}

/// Settings for [`write_squashfs`].
#[derive(Clone, Debug)]
pub struct SquashOpts {
    pub compression: Compression,
    /// Data block size in bytes: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// The superblock's modification time (seconds since the epoch).
    pub mtime: u32,
}

impl Default for SquashOpts {
    /// xz, 128 KiB blocks (mksquashfs's default), time 0.
    fn default() -> Self {
        Self {
            compression: Compression::Xz,
            block_size: 128 * 1024,
            mtime: 0,
        }
    }
}

/// Writes `tree` as a squashfs 4.0 image at `dst` (atomically) and returns
/// the image size in bytes.
pub fn write_squashfs(tree: &Tree, dst: &Path, opts: &SquashOpts) -> Result<u64> {
    let bs = opts.block_size;
    if !(4096..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
        bail!("squashfs block size {bs} is not a power of two between 4 KiB and 1 MiB");
    }
    let mut fs = FilesystemWriter::default();
    fs.set_block_size(bs);
    fs.set_time(opts.mtime);
    let id = match opts.compression {
        Compression::Xz => Compressor::Xz,
        Compression::Zstd => Compressor::Zstd,
        Compression::Gzip => Compressor::Gzip,
    };
    fs.set_compressor(FilesystemCompressor::new(id, None).context("choosing the compressor")?);

    for (path, e) in tree.iter() {
        let header = NodeHeader::new(
            (e.mode & 0o7777) as u16,
            e.uid,
            e.gid,
            u32::try_from(e.mtime).unwrap_or(u32::MAX),
        );
        if path.as_os_str().is_empty() {
            fs.set_root_mode(header.permissions);
            fs.set_root_uid(e.uid);
            fs.set_root_gid(e.gid);
            continue;
        }
        let r = match &e.kind {
            Kind::Dir => fs.push_dir(path, header),
            Kind::File(d) => fs.push_file(Cursor::new(d.as_slice()), path, header),
            Kind::Symlink(t) => fs.push_symlink(t.clone(), path, header),
            Kind::CharDevice { major, minor } => {
                fs.push_char_device(encode_dev(*major, *minor), path, header)
            }
            Kind::BlockDevice { major, minor } => {
                fs.push_block_device(encode_dev(*major, *minor), path, header)
            }
            Kind::Fifo => fs.push_fifo(path, header),
        };
        r.with_context(|| format!("adding /{} to the squashfs image", path.display()))?;
    }

    crate::fs::write_atomic(dst, |f| {
        let (_, size) = fs
            .write(&mut *f)
            .with_context(|| format!("writing squashfs image {}", dst.display()))?;
        Ok(size)
    })
}

/// The kernel's `new_encode_dev`, which squashfs stores in its device inodes.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(259, 0x12345), 0x1231_0345);
    }

    #[test]
    fn bad_block_size_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SquashOpts {
            block_size: 3000,
            ..SquashOpts::default()
        };
        assert!(write_squashfs(&Tree::new(), &dir.path().join("x"), &opts).is_err());
    }
}
