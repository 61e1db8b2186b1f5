//! dm-verity parity with the host's `veritysetup` (cryptsetup-bin): our hash
//! tree and superblock are what `veritysetup format` writes, `veritysetup
//! verify` accepts our image, and rejects it after one flipped byte.

use std::path::Path;
use std::process::Command;

use labimg_builder::verity::{BLOCK, append_hash_tree, hash_tree};

/// Deterministic, incompressible-looking test data (not all-zero blocks,
/// which would hide ordering mistakes).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn veritysetup(args: &[&str]) -> (bool, String) {
    let out = Command::new("veritysetup")
        .args(args)
        .output()
        .expect("running veritysetup (install cryptsetup-bin)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Sizes around the level boundaries: 1 level, exactly 128 blocks, 2 and 3
/// levels, and a size that is not a multiple of 4 KiB (padded).
const SIZES: &[usize] = &[
    BLOCK,
    128 * BLOCK,
    129 * BLOCK + 1000,
    128 * 128 * BLOCK + 5,
];

#[test]
fn root_hash_and_hash_tree_match_veritysetup_format_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for (i, &size) in SIZES.iter().enumerate() {
        let data = noise(size, i as u64 + 1);
        let ours = dir.path().join(format!("ours-{i}.img"));
        std::fs::write(&ours, &data).unwrap();
        let v = append_hash_tree(&ours).unwrap();
        let padded = size.div_ceil(BLOCK) * BLOCK;
        assert_eq!(v.hash_offset, padded as u64);
        assert_eq!(v.data_blocks, (padded / BLOCK) as u64);

        // veritysetup with the same salt and UUID into a separate hash file.
        let data_file = dir.path().join(format!("data-{i}.img"));
        let mut padded_data = data.clone();
        padded_data.resize(padded, 0);
        std::fs::write(&data_file, &padded_data).unwrap();
        let hash_file = dir.path().join(format!("hash-{i}.img"));
        let (ok, out) = veritysetup(&[
            "format",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            &format!("--salt={}", v.salt),
            &format!("--uuid={}", v.uuid),
            p(&data_file),
            p(&hash_file),
        ]);
        assert!(ok, "veritysetup format failed: {out}");
        assert!(
            out.contains(&format!("Root hash:      \t{}", v.root_hash)),
            "size {size}: veritysetup's root hash differs from ours {}:\n{out}",
            v.root_hash
        );
        let theirs = std::fs::read(&hash_file).unwrap();
        let ours_bytes = std::fs::read(&ours).unwrap();
        assert_eq!(&ours_bytes[..padded], &padded_data[..], "data changed");
        assert!(
            ours_bytes[padded..] == theirs[..],
            "size {size}: superblock + hash tree differ from veritysetup's ({} vs {} bytes)",
            ours_bytes.len() - padded,
            theirs.len()
        );
        // The in-memory tree is the file's tail after the superblock.
        let (tree, root) = hash_tree(&padded_data, &hex::decode(&v.salt).unwrap()).unwrap();
        assert_eq!(hex::encode(root), v.root_hash);
        assert!(ours_bytes[padded + BLOCK..] == tree[..]);
    }
}

#[test]
fn veritysetup_verifies_our_image_and_dump_reads_our_superblock() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.img");
    std::fs::write(&img, noise(300 * BLOCK + 17, 42)).unwrap();
    let v = append_hash_tree(&img).unwrap();
    let offset = format!("--hash-offset={}", v.hash_offset);
    let (ok, out) = veritysetup(&["verify", &offset, p(&img), p(&img), &v.root_hash]);
    assert!(ok, "veritysetup verify rejected our image: {out}");
    let (ok, out) = veritysetup(&["dump", &offset, p(&img)]);
    assert!(ok, "veritysetup dump failed: {out}");
    for want in [
        "Hash type:       \t1".to_owned(),
        format!("Data blocks:     \t{}", v.data_blocks),
        "Hash algorithm:  \tsha256".to_owned(),
        format!("Salt:            \t{}", v.salt),
        format!("UUID:            \t{}", v.uuid),
    ] {
        assert!(out.contains(&want), "dump lacks {want:?}:\n{out}");
    }
    // Deterministic: the same data gives the same salt, UUID and root hash.
    let again = dir.path().join("again.img");
    std::fs::write(&again, noise(300 * BLOCK + 17, 42)).unwrap();
    assert_eq!(append_hash_tree(&again).unwrap(), v);
}

#[test]
fn veritysetup_rejects_a_flipped_byte_anywhere_in_the_data_or_tree() {
    let dir = tempfile::tempdir().unwrap();
    let clean = noise(200 * BLOCK, 9);
    let img = dir.path().join("clean.img");
    std::fs::write(&img, &clean).unwrap();
    let v = append_hash_tree(&img).unwrap();
    let full = std::fs::read(&img).unwrap();
    let offset = format!("--hash-offset={}", v.hash_offset);
    let tree_start = v.hash_offset as usize + BLOCK;
    for at in [
        0,
        100 * BLOCK + 123,
        200 * BLOCK - 1,
        tree_start + 5,
        full.len() - 1,
    ] {
        let mut bad = full.clone();
        bad[at] ^= 0x01;
        let path = dir.path().join("bad.img");
        std::fs::write(&path, &bad).unwrap();
        let (ok, out) = veritysetup(&["verify", &offset, p(&path), p(&path), &v.root_hash]);
        assert!(!ok, "veritysetup accepted a flipped byte at {at}: {out}");
    }
}
