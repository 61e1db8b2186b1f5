//! The squashfs writer checked against squashfs-tools' unsquashfs.

mod fs_sample;

use std::process::Command;

use labimg_builder::fs::squashfs::{Compression, SquashOpts, write_squashfs};
use labimg_builder::tool::{require, run};

fn check_with_unsquashfs(compression: Compression) {
    let tree = fs_sample::sample_tree();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("root.sqfs");
    let opts = SquashOpts {
        compression,
        block_size: 64 * 1024,
        mtime: 1_700_000_000,
    };
    let size = write_squashfs(&tree, &img, &opts).unwrap();
    assert_eq!(size, std::fs::metadata(&img).unwrap().len());

    let unsquashfs = require("unsquashfs").unwrap();
    let stat = run(Command::new(&unsquashfs).arg("-s").arg(&img)).unwrap();
    let stat = String::from_utf8(stat.stdout).unwrap();
    let want = match compression {
        Compression::Xz => "Compression xz",
        Compression::Zstd => "Compression zstd",
        Compression::Gzip => "Compression gzip",
    };
    assert!(stat.contains(want), "{stat}");
    assert!(stat.contains("Block size 65536"), "{stat}");

    let listing = run(Command::new(&unsquashfs)
        .env("TZ", "UTC")
        .arg("-lln")
        .arg(&img))
    .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let line = |name: &str| {
        let suffix = format!("squashfs-root/{name}");
        listing
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.ends_with(&suffix) || l.contains(&format!("{suffix} -> ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"))
    };
    assert_eq!(
        line("usr/bin/busybox"),
        "-rwsr-xr-x 0/0 300000 2023-11-14 22:13 squashfs-root/usr/bin/busybox"
    );
    assert!(line("etc/rancher/k3s/token").starts_with("-rw-r----- 1000/42 6 "));
    assert!(line("bin").ends_with("squashfs-root/bin -> usr/bin"));
    assert!(line("usr/bin/sh").ends_with("squashfs-root/usr/bin/sh -> /usr/bin/busybox"));
    assert!(line("dev/null").starts_with("crw-rw-rw- 0/0 1, 3 "));
    assert!(line("dev/vda").starts_with("brw-rw---- 0/0 254, 0 "));
    assert!(line("run/initctl").starts_with("prw------- 0/0 "));
    assert!(line("tmp").starts_with("drwxrwxrwt 0/0 "));
    // Every entry listed once, plus the root line.
    let entries = listing
        .lines()
        .filter(|l| l.contains("squashfs-root"))
        .count();
    assert_eq!(entries, tree.len(), "{listing}");

    let out = dir.path().join("x");
    run(Command::new(&unsquashfs)
        .args(["-q", "-n", "-d"])
        .arg(&out)
        .arg(&img))
    .unwrap();
    fs_sample::assert_dir_matches(&tree, &out, fs_sample::is_root(), true);
}

#[test]
fn unsquashfs_reads_xz_image() {
    check_with_unsquashfs(Compression::Xz);
}

#[test]
fn unsquashfs_reads_zstd_image() {
    check_with_unsquashfs(Compression::Zstd);
}

#[test]
fn unsquashfs_reads_gzip_image() {
    check_with_unsquashfs(Compression::Gzip);
}

#[test]
fn same_tree_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let opts = SquashOpts::default();
    write_squashfs(&fs_sample::sample_tree(), &a, &opts).unwrap();
    write_squashfs(&fs_sample::sample_tree(), &b, &opts).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}
