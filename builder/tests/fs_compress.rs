//! The xz and zstd helpers checked with the host's `xz` and `zstd`.

mod fs_sample;

use std::process::Command;

use labimg_builder::compress::{DISK_XZ_BLOCK, xz_file_parallel, xz_kernel, zstd_bytes};
use labimg_builder::tool::{require, run};

/// `xz --robot -l` lines: (number of blocks, check name).
fn xz_list(path: &std::path::Path) -> (u64, String) {
    let out = run(Command::new(require("xz").unwrap())
        .args(["--robot", "--list"])
        .arg(path))
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let totals = text
        .lines()
        .find(|l| l.starts_with("totals\t"))
        .unwrap_or_else(|| panic!("{text}"));
    let f: Vec<&str> = totals.split('\t').collect();
    (f[2].parse().unwrap(), f[6].to_owned())
}

#[test]
fn kernel_xz_is_crc32_and_host_xz_round_trips() {
    let data = fs_sample::noise(500_000, 11);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("initrd.xz");
    std::fs::write(&p, xz_kernel(&data).unwrap()).unwrap();
    run(Command::new("xz").arg("-t").arg(&p)).unwrap();
    assert_eq!(xz_list(&p), (1, "CRC32".to_owned()));
    let back = run(Command::new("xz").arg("-dc").arg(&p)).unwrap();
    assert!(back.stdout == data);
}

#[test]
fn parallel_xz_makes_blocks_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("disk.raw");
    // Mostly zeros like a real disk image, with some incompressible data.
    let mut data = vec![0u8; 3 * DISK_XZ_BLOCK as usize + 4096];
    data[1000..1_001_000].copy_from_slice(&fs_sample::noise(1_000_000, 3));
    std::fs::write(&src, &data).unwrap();
    let dst = dir.path().join("disk.raw.xz");
    let size = xz_file_parallel(&src, &dst, 2).unwrap();
    assert_eq!(size, std::fs::metadata(&dst).unwrap().len());
    run(Command::new("xz").arg("-t").arg(&dst)).unwrap();
    assert_eq!(xz_list(&dst), (4, "CRC64".to_owned()));
    let back = run(Command::new("xz").arg("-dc").arg(&dst)).unwrap();
    assert!(back.stdout == data);
    // No temporary files are left next to the output.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // A missing source fails without creating the output.
    let missing = dir.path().join("nope.xz");
    assert!(xz_file_parallel(&dir.path().join("nope"), &missing, 2).is_err());
    assert!(!missing.exists());
}

#[test]
fn zstd_round_trips_with_host_zstd() {
    let data = b"labimg zstd ".repeat(10_000);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.zst");
    std::fs::write(&p, zstd_bytes(&data, 19).unwrap()).unwrap();
    let Ok(zstd) = require("zstd") else {
        // zstd(1) is not one of the CI's host packages; the in-crate decoder checks instead.
        let back = zstd::stream::decode_all(&std::fs::read(&p).unwrap()[..]).unwrap();
        assert!(back == data);
        return;
    };
    let back = run(Command::new(zstd).arg("-dc").arg(&p)).unwrap();
    assert!(back.stdout == data);
}
