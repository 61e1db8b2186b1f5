//! Step 4: the read-only root image — a squashfs of the root tree followed by
//! its dm-verity hash tree ([`crate::verity`]) — and the digests the node
//! checks before it mounts it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::artifact::hash_file;
use crate::fs::squashfs::{self, Compression, SquashOpts};
use crate::tree::Tree;
use crate::verity::{self, Verity};

/// The root filesystem image as written: squashfs, zero padding to 4 KiB,
/// verity superblock and hash tree.
#[derive(Clone, Debug)]
pub struct RootImage {
    pub path: PathBuf,
    /// Size of the whole file (data and hash tree).
    pub size: u64,
    /// sha256 of the whole file.
    pub sha256: String,
    /// How to open it with dm-verity.
    pub verity: Verity,
}

/// Writes the squashfs to `dst`, appends its hash tree and hashes the result.
pub fn make_root_image(tree: &Tree, dst: &Path, epoch: u64) -> Result<RootImage> {
    let opts = SquashOpts {
        compression: Compression::Zstd,
        block_size: 128 * 1024,
        mtime: epoch as u32,
    };
    squashfs::write_squashfs(tree, dst, &opts)
        .with_context(|| format!("writing {}", dst.display()))?;
    let verity = verity::append_hash_tree(dst)?;
    let (sha256, size) = hash_file(dst)?;
    tracing::info!(
        "root image: {} MiB, sha256 {sha256}, dm-verity root hash {}",
        size >> 20,
        verity.root_hash
    );
    Ok(RootImage {
        path: dst.to_path_buf(),
        size,
        sha256,
        verity,
    })
}
