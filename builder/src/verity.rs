//! dm-verity for the root image: the hash tree and superblock that
//! `veritysetup format` writes (format 1, sha256, 4 KiB blocks), computed in
//! Rust and appended to the image, so one file (one partition per slot, one
//! download for netboot) carries data and hash tree.
//!
//! Layout of the finished image: the data padded with zeros to 4 KiB, then at
//! `hash_offset` the 4 KiB verity superblock, then the hash levels, top level
//! first. The salt and superblock UUID are derived from the data's sha256, so
//! the same data always gives the same root hash (reproducible builds).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Data and hash block size.
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
/// sha256 digests per hash block (a power of two, as the kernel requires).
const PER_BLOCK: usize = BLOCK / DIGEST;

/// What the node needs to open the image with dm-verity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    /// Root hash, hex.
    pub root_hash: String,
    /// Salt, hex.
    pub salt: String,
    /// Superblock UUID (derived from the data, like the salt).
    pub uuid: String,
    /// Number of 4 KiB data blocks.
    pub data_blocks: u64,
    /// Byte offset of the verity superblock (= padded data size).
    pub hash_offset: u64,
}

impl Verity {
    /// The dm table's `<hash_start_block>`: the hash tree starts one block
    /// after the superblock.
    pub fn hash_start_block(&self) -> u64 {
        self.hash_offset / BLOCK as u64 + 1
    }
}

/// A label-separated sha256 of `data_sha256`: deterministic, but unrelated to
/// anything an attacker could precompute for another image.
fn derive(label: &str, data_sha256: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"labimg dm-verity ")
        .chain_update(label)
        .chain_update([0])
        .chain_update(data_sha256)
        .finalize()
        .into()
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    // Format 1 hashes salt || block (format 0, Chrome OS, puts the salt last).
    Sha256::new()
        .chain_update(salt)
        .chain_update(block)
        .finalize()
        .into()
}

/// Hash tree of `data` (a multiple of 4 KiB): the levels as they lie on disk
/// (top level first, each block zero-padded) and the root hash.
pub fn hash_tree(data: &[u8], salt: &[u8]) -> Result<(Vec<u8>, [u8; DIGEST])> {
    ensure!(
        !data.is_empty() && data.len().is_multiple_of(BLOCK),
        "dm-verity data must be a non-empty multiple of {BLOCK} bytes"
    );
    // levels[0] hashes the data blocks, levels[i] the blocks of levels[i-1],
    // until one block is left; the root hash is that block's hash (for a
    // single data block there is no tree at all, as in veritysetup).
    let mut levels: Vec<Vec<u8>> = Vec::new();
    loop {
        let below = levels.last().map_or(data, Vec::as_slice);
        if below.len() == BLOCK {
            break;
        }
        let mut level = Vec::with_capacity(below.len() / PER_BLOCK + BLOCK);
        for block in below.chunks(BLOCK) {
            level.extend_from_slice(&hash_block(salt, block));
        }
        level.resize(level.len().div_ceil(BLOCK) * BLOCK, 0);
        levels.push(level);
    }
    let root = hash_block(salt, levels.last().map_or(data, Vec::as_slice));
    Ok((levels.into_iter().rev().flatten().collect(), root))
}

/// The 4 KiB superblock `veritysetup format` writes (struct verity_sb).
fn superblock(uuid: &[u8; 16], salt: &[u8], data_blocks: u64) -> Vec<u8> {
    let mut sb = Vec::with_capacity(BLOCK);
    sb.extend_from_slice(b"verity\0\0");
    sb.extend_from_slice(&1u32.to_le_bytes()); // superblock version
    sb.extend_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb.extend_from_slice(uuid);
    let mut alg = [0u8; 32];
    alg[..6].copy_from_slice(b"sha256");
    sb.extend_from_slice(&alg);
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    sb.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    sb.extend_from_slice(&data_blocks.to_le_bytes());
    sb.extend_from_slice(&(salt.len() as u16).to_le_bytes());
    sb.extend_from_slice(&[0; 6]);
    let mut s = [0u8; 256];
    s[..salt.len()].copy_from_slice(salt);
    sb.extend_from_slice(&s);
    sb.resize(BLOCK, 0);
    sb
}

/// veritysetup prints the superblock UUID in lowercase.
fn uuid_string(u: &[u8; 16]) -> String {
    crate::disk::guid_string(u).to_lowercase()
}

/// Pads the image at `path` to 4 KiB and appends superblock and hash tree.
pub fn append_hash_tree(path: &Path) -> Result<Verity> {
    let mut data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    let data_sha256 = Sha256::digest(&data);
    let salt = derive("salt", &data_sha256);
    let mut uuid: [u8; 16] = derive("uuid", &data_sha256)[..16]
        .try_into()
        .context("uuid length")?;
    // A well-formed random (version 4, RFC 4122 variant) UUID.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let (tree, root) = hash_tree(&data, &salt)?;
    let data_blocks = (data.len() / BLOCK) as u64;
    let hash_offset = data.len() as u64;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&data)
        .and_then(|()| f.write_all(&superblock(&uuid, &salt, data_blocks)))
        .and_then(|()| f.write_all(&tree))
        .with_context(|| format!("writing the dm-verity hash tree to {}", path.display()))?;
    Ok(Verity {
        root_hash: hex::encode(root),
        salt: hex::encode(salt),
        uuid: uuid_string(&uuid),
        data_blocks,
        hash_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_level_for_up_to_128_blocks_two_above() {
        let salt = [7u8; 32];
        let (tree, _) = hash_tree(&vec![1u8; BLOCK * 128], &salt).unwrap();
        assert_eq!(tree.len(), BLOCK);
        let (tree, root) = hash_tree(&vec![1u8; BLOCK * 129], &salt).unwrap();
        // Top level (1 block) first, then the 2 blocks hashing the data.
        assert_eq!(tree.len(), 3 * BLOCK);
        assert_eq!(root, hash_block(&salt, &tree[..BLOCK]));
        assert_eq!(&tree[..DIGEST], &hash_block(&salt, &tree[BLOCK..2 * BLOCK]));
    }

    #[test]
    fn superblock_layout() {
        let sb = superblock(&[9; 16], &[5; 32], 77);
        assert_eq!(sb.len(), BLOCK);
        assert_eq!(&sb[..8], b"verity\0\0");
        assert_eq!(&sb[64..72], &[0, 16, 0, 0, 0, 16, 0, 0]);
        assert_eq!(u64::from_le_bytes(sb[72..80].try_into().unwrap()), 77);
        assert_eq!(u16::from_le_bytes(sb[80..82].try_into().unwrap()), 32);
        assert_eq!(&sb[88..120], &[5; 32]);
    }
}
