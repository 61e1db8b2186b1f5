//! GPT and MBR disk images checked with sfdisk, mtools and qemu-img.

mod fs_sample;

use std::process::Command;

use labimg_builder::disk::{
    Content, DiskLayout, ESP_TYPE, LINUX_ROOT_X86_64_TYPE, MBR_FAT32_LBA, MBR_LINUX, MbrLayout,
    MbrPartitionSpec, PartitionSpec, guid_from, guid_string, qcow2_from_raw, write_disk,
    write_mbr_disk,
};
use labimg_builder::fs::fat::write_fat32;
use labimg_builder::tool::{require, run};
use labimg_builder::tree::Tree;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn sfdisk_json(img: &std::path::Path) -> Value {
    let sfdisk = require("sfdisk").unwrap();
    let verify = run(Command::new(&sfdisk).arg("--verify").arg(img)).unwrap();
    let verify = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(verify.contains("No errors detected."), "{verify}");
    assert!(!verify.to_lowercase().contains("warn"), "{verify}");
    let out = run(Command::new(&sfdisk).arg("--json").arg(img)).unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["partitiontable"].clone()
}

fn esp_bytes() -> Vec<u8> {
    let mut t = Tree::new();
    t.insert_file("EFI/BOOT/BOOTX64.EFI", fs_sample::noise(5000, 9), 0o644)
        .unwrap();
    write_fat32(&t, 34 * MIB, "ESP", 7).unwrap()
}

#[test]
fn gpt_layout_reads_back_with_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let root_img = dir.path().join("root.img");
    let root_bytes = fs_sample::noise(3 * MIB as usize + 123, 5);
    std::fs::write(&root_img, &root_bytes).unwrap();
    let esp = esp_bytes();
    let layout = DiskLayout {
        size_bytes: 64 * MIB,
        disk_guid: guid_from("test/disk"),
        partitions: vec![
            PartitionSpec {
                name: "ESP".into(),
                type_guid: ESP_TYPE,
                part_guid: guid_from("test/esp"),
                size_bytes: 34 * MIB,
                content: Some(Content::Bytes(esp.clone())),
            },
            PartitionSpec {
                name: "root-a".into(),
                type_guid: LINUX_ROOT_X86_64_TYPE,
                part_guid: guid_from("test/root-a"),
                size_bytes: 10 * MIB,
                content: Some(Content::File(root_img.clone())),
            },
            PartitionSpec {
                name: "root-b".into(),
                type_guid: LINUX_ROOT_X86_64_TYPE,
                part_guid: guid_from("test/root-b"),
                size_bytes: 0,
                content: None,
            },
        ],
    };
    let img = dir.path().join("disk.raw");
    let placed = write_disk(&layout, &img).unwrap();
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(md.len(), 64 * MIB);
    // Sparse: the zero-filled parts of the ESP and root-b take no space.
    assert!(std::os::unix::fs::MetadataExt::blocks(&md) * 512 < 16 * MIB);

    let t = sfdisk_json(&img);
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["id"], guid_string(&guid_from("test/disk")));
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    let expect = [
        ("ESP", ESP_TYPE, "test/esp", 2048, 34 * 2048),
        (
            "root-a",
            LINUX_ROOT_X86_64_TYPE,
            "test/root-a",
            35 * 2048,
            10 * 2048,
        ),
        (
            "root-b",
            LINUX_ROOT_X86_64_TYPE,
            "test/root-b",
            45 * 2048,
            18 * 2048,
        ),
    ];
    for (p, (name, ty, seed, start, size)) in parts.iter().zip(expect) {
        assert_eq!(p["name"], name);
        assert_eq!(p["type"], guid_string(&ty));
        assert_eq!(p["uuid"], guid_string(&guid_from(seed)));
        assert_eq!(p["start"], start, "{name}");
        assert_eq!(p["size"], size, "{name}");
    }

    let disk = std::fs::read(&img).unwrap();
    let esp_at = placed[0].offset as usize;
    assert!(disk[esp_at..esp_at + esp.len()] == esp[..]);
    let root_at = placed[1].offset as usize;
    assert!(disk[root_at..root_at + root_bytes.len()] == root_bytes[..]);
    // The ESP is a working filesystem in place: mtools reads it at its offset.
    let out = run(Command::new(require("mcopy").unwrap())
        .arg("-i")
        .arg(format!("{}@@{}", img.display(), placed[0].offset))
        .args(["::/EFI/BOOT/BOOTX64.EFI", "-"]))
    .unwrap();
    assert!(out.stdout == fs_sample::noise(5000, 9));

    // Oversized content fails and leaves nothing behind.
    let mut bad = layout.clone();
    bad.partitions[1].size_bytes = MIB;
    let bad_img = dir.path().join("bad.raw");
    assert!(write_disk(&bad, &bad_img).is_err());
    assert!(!bad_img.exists());

    // qcow2 conversion keeps every byte.
    let qcow = dir.path().join("disk.qcow2");
    qcow2_from_raw(&img, &qcow).unwrap();
    let qemu_img = require("qemu-img").unwrap();
    let info = run(Command::new(&qemu_img)
        .args(["info", "--output=json"])
        .arg(&qcow))
    .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 64 * MIB);
    run(Command::new(&qemu_img)
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(&img)
        .arg(&qcow))
    .unwrap();
}

#[test]
fn mbr_layout_for_the_pi() {
    let dir = tempfile::tempdir().unwrap();
    let esp = esp_bytes();
    let layout = MbrLayout {
        size_bytes: 48 * MIB,
        disk_id: 0x5eed_1234,
        partitions: vec![
            MbrPartitionSpec {
                kind: MBR_FAT32_LBA,
                bootable: true,
                size_bytes: 34 * MIB,
                content: Some(Content::Bytes(esp.clone())),
            },
            MbrPartitionSpec {
                kind: MBR_LINUX,
                bootable: false,
                size_bytes: 0,
                content: None,
            },
        ],
    };
    let img = dir.path().join("pi.img");
    let placed = write_mbr_disk(&layout, &img).unwrap();
    let t = sfdisk_json(&img);
    assert_eq!(t["label"], "dos");
    assert_eq!(t["id"], "0x5eed1234");
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "c");
    assert_eq!(parts[0]["bootable"], true);
    assert_eq!(
        (&parts[0]["start"], &parts[0]["size"]),
        (&2048.into(), &(34 * 2048).into())
    );
    assert_eq!(parts[1]["type"], "83");
    assert_eq!(
        (&parts[1]["start"], &parts[1]["size"]),
        (&(35 * 2048).into(), &(13 * 2048).into())
    );
    let disk = std::fs::read(&img).unwrap();
    let at = placed[0].offset as usize;
    assert!(disk[at..at + esp.len()] == esp[..]);
}
