//! Step 4: the read-only root image — a squashfs of the root tree — and the
//! digest the node checks before it mounts it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::debian::cache::hash_file;
use crate::fs::squashfs::{self, Compression, SquashOpts};
use crate::tree::Tree;

/// The root filesystem image as written.
#[derive(Clone, Debug)]
pub struct RootImage {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Writes the squashfs to `dst` and hashes it.
pub fn make_root_image(tree: &Tree, dst: &Path, epoch: u64) -> Result<RootImage> {
    let opts = SquashOpts {
        compression: Compression::Zstd,
        block_size: 128 * 1024,
        mtime: epoch as u32,
    };
    squashfs::write_squashfs(tree, dst, &opts)
        .with_context(|| format!("writing {}", dst.display()))?;
    let (sha256, size) = hash_file(dst)?;
    tracing::info!("root image: {} MiB, sha256 {sha256}", size >> 20);
    Ok(RootImage {
        path: dst.to_path_buf(),
        size,
        sha256,
    })
}
