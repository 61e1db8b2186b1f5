//! The newc writer checked against GNU cpio: what cpio extracts is the tree.

mod fs_sample;

use std::process::Command;

use labimg_builder::fs::cpio::write_newc;
use labimg_builder::tool::{require, run};

#[test]
fn gnu_cpio_extracts_the_tree() {
    let tree = fs_sample::sample_tree();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("initrd.cpio");
    let mut bytes = Vec::new();
    write_newc(&tree, &mut bytes).unwrap();
    std::fs::write(&archive, &bytes).unwrap();

    let cpio = require("cpio").unwrap();
    let listing = run(Command::new(&cpio)
        .env("TZ", "UTC")
        .args(["-itvn", "-F"])
        .arg(&archive))
    .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert_eq!(listing.lines().count(), tree.len(), "{listing}");
    // Every entry, directories included, carries the tree's time.
    for l in listing.lines() {
        let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(l.contains(" Nov 14 2023 "), "{l}");
    }
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listing}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(line("usr/bin/busybox").starts_with("-rwsr-xr-x"));
    assert!(line("etc/rancher/k3s/token").starts_with("-rw-r----- 1 1000 42 6 "));
    assert!(line("bin").ends_with("bin -> usr/bin"));
    assert!(line("dev/null").starts_with("crw-rw-rw-"));
    assert!(
        line("dev/null").contains(" 0 0 1, 3 "),
        "{}",
        line("dev/null")
    );
    assert!(line("tmp").starts_with("drwxrwxrwt"));

    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    run(Command::new(&cpio)
        .args(["-idm", "--no-absolute-filenames", "--quiet", "-F"])
        .arg(&archive)
        .current_dir(&out))
    .unwrap();
    fs_sample::assert_dir_matches(&tree, &out, fs_sample::is_root(), false);
}

#[test]
fn same_tree_same_bytes() {
    let mut a = Vec::new();
    let mut b = Vec::new();
    write_newc(&fs_sample::sample_tree(), &mut a).unwrap();
    write_newc(&fs_sample::sample_tree(), &mut b).unwrap();
    assert_eq!(a, b);
}
