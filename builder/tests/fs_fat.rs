//! The FAT32 writer checked against dosfstools (`fsck.vfat`) and mtools.

mod fs_sample;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use labimg_builder::fs::fat::write_fat32;
use labimg_builder::tool::{require, run};
use labimg_builder::tree::{Kind, Tree};

fn boot_tree() -> Tree {
    let mut t = Tree::new();
    t.insert_file("EFI/BOOT/BOOTX64.EFI", fs_sample::noise(150_000, 1), 0o644)
        .unwrap();
    t.insert_file(
        "EFI/systemd/systemd-bootx64.efi",
        fs_sample::noise(90_000, 2),
        0o644,
    )
    .unwrap();
    t.insert_file(
        "loader/entries/labimg-a.conf",
        b"title labimg A\n".to_vec(),
        0o644,
    )
    .unwrap();
    t.insert_file("loader/loader.conf", b"timeout 3\n".to_vec(), 0o644)
        .unwrap();
    t.insert_file("config.txt", b"kernel=kernel_2712.img\n".to_vec(), 0o644)
        .unwrap();
    t.insert_file(
        "cmdline.txt",
        b"console=ttyAMA10 root=LABEL=x\n".to_vec(),
        0o644,
    )
    .unwrap();
    t.insert_file("bcm2712-rpi-5-b.dtb", fs_sample::noise(80_000, 3), 0o644)
        .unwrap();
    t.insert_file("kernel_2712.img", fs_sample::noise(1_000_000, 4), 0o644)
        .unwrap();
    t.insert_file("empty.txt", Vec::new(), 0o644).unwrap();
    t.insert_file(
        "a very long name with spaces and more than 26 chars.txt",
        b"x".to_vec(),
        0o644,
    )
    .unwrap();
    for i in 0..130 {
        t.insert_file(
            format!("overlays/overlay-number-{i:03}.dtbo"),
            format!("{i}"),
            0o644,
        )
        .unwrap();
    }
    t.set_all_mtimes(1_700_000_000);
    t
}

#[test]
fn fsck_is_clean_and_mtools_reads_every_file() {
    let tree = boot_tree();
    let img = write_fat32(&tree, 64 << 20, "ESP", 0x1234_abcd).unwrap();
    assert_eq!(img.len(), 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esp.img");
    std::fs::write(&path, &img).unwrap();

    let fsck = run(Command::new(require("fsck.vfat").unwrap())
        .arg("-n")
        .arg(&path))
    .unwrap();
    let report = String::from_utf8_lossy(&fsck.stdout).into_owned();
    let report = report + &String::from_utf8_lossy(&fsck.stderr);
    // A clean check prints the version banner and one summary line only.
    let lines: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() <= 3, "fsck.vfat complained:\n{report}");
    // fsck.vfat counts every file and directory, the root included.
    assert!(
        report.contains(&format!(": {} files, ", tree.len())),
        "{report}"
    );

    let mdir = run(Command::new(require("mdir").unwrap())
        .args(["-i"])
        .arg(&path)
        .arg("::/"))
    .unwrap();
    let listing = String::from_utf8_lossy(&mdir.stdout);
    assert!(listing.contains("Volume in drive : is ESP"), "{listing}");
    assert!(listing.contains("1234-ABCD"), "{listing}");
    assert!(listing.contains("kernel_2712.img"), "{listing}");

    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    run(Command::new(require("mcopy").unwrap())
        .args(["-s", "-m", "-n", "-i"])
        .arg(&path)
        .arg("::/*")
        .arg(&out))
    .unwrap();
    let mut files = 0;
    for (p, e) in tree.iter() {
        let host = out.join(p);
        let md = std::fs::metadata(&host).unwrap_or_else(|_| panic!("/{} missing", p.display()));
        match &e.kind {
            Kind::File(d) => {
                files += 1;
                assert!(
                    std::fs::read(&host).unwrap() == **d,
                    "bytes of /{}",
                    p.display()
                );
                assert_eq!(md.mtime(), 1_700_000_000, "mtime of /{}", p.display());
            }
            _ => assert!(md.is_dir()),
        }
    }
    assert_eq!(files, 140);
    let copied = std::fs::read_dir(out.join("overlays")).unwrap().count();
    assert_eq!(copied, 130);
}

#[test]
fn same_tree_same_bytes_and_bad_input_is_refused() {
    let a = write_fat32(&boot_tree(), 40 << 20, "BOOT", 1).unwrap();
    let b = write_fat32(&boot_tree(), 40 << 20, "BOOT", 1).unwrap();
    assert!(a == b);
    assert!(write_fat32(&boot_tree(), 8 << 20, "BOOT", 1).is_err());
    let mut t = Tree::new();
    t.insert_symlink("link", "target").unwrap();
    assert!(write_fat32(&t, 40 << 20, "BOOT", 1).is_err());
    let mut t = Tree::new();
    t.insert_file("big", vec![1u8; 40 << 20], 0o644).unwrap();
    assert!(write_fat32(&t, 40 << 20, "BOOT", 1).is_err());
}
