//! A sample staging tree exercising every entry kind, and a checker that
//! compares a tree with what a host tool extracted from an image of it.

#![allow(dead_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use labimg_builder::tree::{Entry, Kind, Tree};

/// Deterministic pseudo-random bytes (xorshift), so "large file" tests do not
/// compress to nothing.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Dirs, files (empty, small, multi-block, set-uid), owners, times, relative
/// and absolute symlinks, char/block devices and a fifo.
pub fn sample_tree() -> Tree {
    let mut t = Tree::new();
    t.insert_file("usr/bin/busybox", noise(300_000, 7), 0o4755)
        .unwrap();
    t.insert_symlink("bin", "usr/bin").unwrap();
    t.insert_symlink("usr/bin/sh", "/usr/bin/busybox").unwrap();
    t.insert_file("etc/hostname", b"node-1\n".to_vec(), 0o644)
        .unwrap();
    t.insert_file("etc/empty", Vec::new(), 0o600).unwrap();
    let mut secret = Entry::file(b"token\n".to_vec(), 0o640);
    secret.uid = 1000;
    secret.gid = 42;
    t.insert("etc/rancher/k3s/token", secret).unwrap();
    let mut tmp = Entry::dir(0o1777);
    tmp.uid = 0;
    t.insert("tmp", tmp).unwrap();
    t.insert(
        "dev/null",
        Entry::new(Kind::CharDevice { major: 1, minor: 3 }, 0o666),
    )
    .unwrap();
    t.insert(
        "dev/vda",
        Entry::new(
            Kind::BlockDevice {
                major: 254,
                minor: 0,
            },
            0o660,
        ),
    )
    .unwrap();
    t.insert("run/initctl", Entry::new(Kind::Fifo, 0o600))
        .unwrap();
    for i in 0..120 {
        t.insert_file(format!("many/file-{i:03}.txt"), format!("{i}\n"), 0o644)
            .unwrap();
    }
    t.set_all_mtimes(1_700_000_000);
    t
}

/// Checks that `dir` holds exactly the entries of `tree` with the same kinds,
/// permission bits, bytes, symlink targets and device numbers; owners and
/// times too when `owners_and_times` (directory times only with `dir_times`:
/// GNU cpio does not restore them, the kernel does).
pub fn assert_dir_matches(tree: &Tree, dir: &Path, owners_and_times: bool, dir_times: bool) {
    let mut seen = 0;
    for (path, e) in tree.iter() {
        let p = dir.join(path);
        let md = std::fs::symlink_metadata(&p)
            .unwrap_or_else(|err| panic!("{} missing: {err}", p.display()));
        seen += 1;
        let what = format!("/{}", path.display());
        // The root's mode belongs to the extraction dir, not the image.
        if !matches!(e.kind, Kind::Symlink(_)) && !path.as_os_str().is_empty() {
            assert_eq!(md.mode() & 0o7777, e.mode, "mode of {what}");
        }
        assert_eq!(md.mode() & 0o170000, e.file_type_bits(), "type of {what}");
        match &e.kind {
            Kind::File(d) => assert!(std::fs::read(&p).unwrap() == **d, "bytes of {what}"),
            Kind::Symlink(t) => assert_eq!(&std::fs::read_link(&p).unwrap(), t, "{what}"),
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                assert!(md.file_type().is_char_device() || md.file_type().is_block_device());
                let rdev = md.rdev();
                let (ma, mi) = (
                    ((rdev >> 8) & 0xfff) as u32,
                    ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32,
                );
                assert_eq!((ma, mi), (*major, *minor), "device numbers of {what}");
            }
            _ => {}
        }
        if owners_and_times {
            assert_eq!((md.uid(), md.gid()), (e.uid, e.gid), "owner of {what}");
            if !path.as_os_str().is_empty()
                && !matches!(e.kind, Kind::Symlink(_))
                && (dir_times || !e.is_dir())
            {
                assert_eq!(md.mtime() as u64, e.mtime, "mtime of {what}");
            }
        }
    }
    let mut on_disk = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        on_disk += 1;
        for ent in std::fs::read_dir(&d).unwrap() {
            let ent = ent.unwrap();
            if ent.file_type().unwrap().is_dir() {
                stack.push(ent.path());
            } else {
                on_disk += 1;
            }
        }
    }
    assert_eq!(on_disk, seen, "extra entries in {}", dir.display());
}

/// True when running as root (owners and device nodes can be extracted).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
