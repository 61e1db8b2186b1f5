//! Reproducible builds: the proxmox profile built twice, into two folders,
//! without SOURCE_DATE_EPOCH (the timestamp is then the newest `Date:` of the
//! signed `InRelease` files read, plan.rs) and with the same (stand-in) k3s
//! binary, gives byte-identical outputs — raw.xz, qcow2, netboot artifacts,
//! SBOM, manifest.
//!
//! Uses the real Debian mirror (through the verified download cache, so the
//! second build fetches nothing).

use std::path::{Path, PathBuf};

use labimg_builder::artifact::hash_file;
use labimg_builder::build::{BuildOptions, build};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_into(out: &Path) {
    // A smaller disk than the shipped 2.5 GiB (same layout and contents): the
    // raw.xz of the full size alone takes minutes on two shared cores.
    let sets = [
        "disk.size=\"640MiB\"".to_owned(),
        "disk.root-slot-size=\"160MiB\"".to_owned(),
    ];
    let profile =
        labimg_builder::profile::load("proxmox", &workspace().join("profiles"), &sets).unwrap();
    let opts = BuildOptions {
        out_dir: Some(out.to_path_buf()),
        k3s_binary: Some(workspace().join("qemu-tests/stand-in/k3s")),
        cache_dir: std::env::var_os("LABIMG_CACHE").map(PathBuf::from),
        // None, and SOURCE_DATE_EPOCH unset (checked below): the default epoch.
        source_date_epoch: None,
        embed_secrets: false,
        ..Default::default()
    };
    build(&profile, &opts).unwrap();
}

#[test]
fn the_proxmox_profile_builds_bit_for_bit_identical_twice() {
    assert!(
        std::env::var_os("SOURCE_DATE_EPOCH").is_none(),
        "this test checks the epoch derived from the inputs: unset SOURCE_DATE_EPOCH"
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build_into(&a);
    build_into(&b);

    let sums_a = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    let sums_b = std::fs::read_to_string(b.join("SHA256SUMS")).unwrap();
    let listed: Vec<&str> = sums_a
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(_, f)| f)
        .collect();
    for want in [
        "proxmox.raw.xz",
        "proxmox.qcow2",
        "proxmox.spdx.json",
        "netboot/root.squashfs",
        "netboot/initrd.img",
        "netboot/vmlinuz",
        "netboot/netboot.json",
        "manifest.json",
    ] {
        assert!(
            listed.contains(&want),
            "{want} is not in SHA256SUMS:\n{sums_a}"
        );
    }
    // Name every differing file, not just "SHA256SUMS differ".
    let differing: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|f| hash_file(&a.join(f)).unwrap().0 != hash_file(&b.join(f)).unwrap().0)
        .collect();
    assert!(differing.is_empty(), "not reproducible: {differing:?}");
    assert_eq!(sums_a, sums_b, "SHA256SUMS differ");
    assert!(
        std::fs::read(a.join("manifest.json")).unwrap()
            == std::fs::read(b.join("manifest.json")).unwrap(),
        "manifest.json differs"
    );
    // The timestamp came from the archive, not 1970 nor the clock.
    let manifest = labimg_builder::manifest::Manifest::read(&a).unwrap();
    assert!(
        manifest.epoch_source.starts_with("InRelease ") && manifest.epoch_source.ends_with(" Date"),
        "{}",
        manifest.epoch_source
    );
    assert!(
        manifest.source_date_epoch > 1_700_000_000,
        "{}",
        manifest.source_date_epoch
    );
    let env = std::fs::read_to_string(a.join("upgrade.env")).unwrap();
    let want = format!(
        "LABIMG_BUNDLE_SOURCE_DATE_EPOCH='{}'",
        manifest.source_date_epoch
    );
    assert!(env.lines().any(|l| l == want), "{want} not in {env}");
    // The per-node configs (not in SHA256SUMS: private) are reproducible too.
    let nodes = |d: &Path| {
        let mut v: Vec<(String, String)> = Vec::new();
        let mut stack = vec![d.join("nodes")];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(d).unwrap().display().to_string();
                    v.push((rel, hash_file(&e.path()).unwrap().0));
                }
            }
        }
        v.sort();
        v
    };
    assert_eq!(nodes(&a), nodes(&b), "nodes/ differs");
}

/// liblzma's multi-threaded encoder cuts the input into fixed-size blocks, so
/// the raw.xz must not depend on how many cores the build machine has.
#[test]
fn raw_xz_does_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    // 10 MiB: two blocks of DISK_XZ_BLOCK (the last one short), part text,
    // part noise, part zeros.
    let mut data = Vec::new();
    let mut x: u32 = 1;
    while data.len() < 10 << 20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        match (data.len() >> 20) % 3 {
            0 => data.extend_from_slice(format!("line {x}\n").as_bytes()),
            1 => data.extend_from_slice(&x.to_le_bytes()),
            _ => data.extend_from_slice(&[0; 4096]),
        }
    }
    std::fs::write(&src, &data).unwrap();
    let mut digests = Vec::new();
    for threads in [1, 3] {
        let dst = dir.path().join(format!("disk-{threads}.raw.xz"));
        labimg_builder::compress::xz_file_parallel(&src, &dst, threads).unwrap();
        digests.push(hash_file(&dst).unwrap().0);
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "xz output depends on the thread count: {digests:?}"
    );
}
