//! Disk images: GPT (UEFI machines) and MBR (the Raspberry Pi boot ROM's
//! favourite), assembled from partition contents without root or loop devices.
//!
//! Partitions start on 1 MiB boundaries, GUIDs come from the caller (see
//! [`guid_from`] for reproducible ones), the output file is sparse (extended
//! with `set_len`, all-zero chunks of contents skipped) and appears under its
//! final name only once complete.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

mod mbr;
pub use mbr::{MBR_FAT32_LBA, MBR_LINUX, MbrLayout, MbrPartitionSpec, write_mbr_disk};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const GPT_ENTRIES: u64 = 128;
const GPT_ENTRY_SIZE: u64 = 128;
/// Sectors taken by the partition entry array (128 × 128 bytes).
const GPT_ARRAY_SECTORS: u64 = GPT_ENTRIES * GPT_ENTRY_SIZE / SECTOR;

/// A GUID in its textual byte order (`C12A7328-F81F-…` is `[0xC1, 0x2A, …]`).
pub type Guid = [u8; 16];

/// EFI system partition.
pub const ESP_TYPE: Guid = parse_guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Generic Linux filesystem data.
pub const LINUX_FS_TYPE: Guid = parse_guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
/// Discoverable Partitions Specification: root for x86-64.
pub const LINUX_ROOT_X86_64_TYPE: Guid = parse_guid("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
/// Discoverable Partitions Specification: root for arm64.
pub const LINUX_ROOT_ARM64_TYPE: Guid = parse_guid("B921B045-1DF0-41C3-AF44-4C6F280D3FAE");

/// Parses `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX` at compile time; panics
/// (a compile error in a `const`) on anything else.
pub const fn parse_guid(s: &str) -> Guid {
    let b = s.as_bytes();
    assert!(b.len() == 36, "a GUID has 36 characters");
    let mut out = [0u8; 16];
    let (mut i, mut o) = (0, 0);
    while i < 36 {
        if b[i] == b'-' {
            i += 1;
            continue;
        }
        out[o] = hex_val(b[i]) << 4 | hex_val(b[i + 1]);
        o += 1;
        i += 2;
    }
    assert!(o == 16, "a GUID has 32 hex digits");
    out
}

const fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

/// Formats a GUID the way `sfdisk`/`blkid` print it (uppercase).
pub fn guid_string(g: &Guid) -> String {
    let h = hex::encode_upper(g);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A stable GUID derived from `seed` (SHA-256, first 16 bytes, with the RFC 4122
/// version-5 and variant bits set): the same seed always gives the same GUID,
/// which keeps disk images reproducible.
pub fn guid_from(seed: &str) -> Guid {
    let d = Sha256::digest(seed.as_bytes());
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    g[6] = (g[6] & 0x0f) | 0x50;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// GPT stores the first three GUID fields little-endian.
fn guid_on_disk(g: &Guid) -> [u8; 16] {
    let mut d = *g;
    d[0..4].reverse();
    d[4..6].reverse();
    d[6..8].reverse();
    d
}

/// What goes into a partition; `None` in a spec leaves it zeroed.
#[derive(Clone, Debug)]
pub enum Content {
    /// Copied from a file (for example a squashfs image).
    File(PathBuf),
    /// Bytes built in memory (for example a FAT image).
    Bytes(Vec<u8>),
}

/// One GPT partition.
#[derive(Clone, Debug)]
pub struct PartitionSpec {
    /// GPT partition name (label), e.g. `ESP`, `root-a`; at most 36 UTF-16 units.
    pub name: String,
    pub type_guid: Guid,
    pub part_guid: Guid,
    /// Size, rounded up to whole MiB; 0 on the last partition means "the rest of the disk".
    pub size_bytes: u64,
    pub content: Option<Content>,
}

/// A whole GPT disk.
#[derive(Clone, Debug)]
pub struct DiskLayout {
    /// Disk size; rounded down to whole sectors.
    pub size_bytes: u64,
    pub disk_guid: Guid,
    pub partitions: Vec<PartitionSpec>,
}

/// Where a partition landed, in bytes from the start of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub size: u64,
}

/// Places partitions one after the other from 1 MiB, each on a MiB boundary,
/// all before `end_lba` (exclusive).
fn place(sizes: &[u64], end_lba: u64) -> Result<Vec<Placement>> {
    let mut at = MIB;
    let end = end_lba * SECTOR;
    let mut out = Vec::with_capacity(sizes.len());
    for (i, &size) in sizes.iter().enumerate() {
        let size = if size == 0 {
            ensure!(
                i + 1 == sizes.len(),
                "only the last partition may have size 0"
            );
            (end.saturating_sub(at)) / MIB * MIB
        } else {
            size.div_ceil(MIB) * MIB
        };
        ensure!(
            size > 0 && at + size <= end,
            "partition {} ({} MiB at {} MiB) does not fit on the disk",
            i + 1,
            size / MIB,
            at / MIB
        );
        out.push(Placement { offset: at, size });
        at += size;
    }
    Ok(out)
}

/// The partition placements [`write_disk`] will use for `layout`.
pub fn gpt_placements(layout: &DiskLayout) -> Result<Vec<Placement>> {
    let total = layout.size_bytes / SECTOR;
    ensure!(
        total >= 2 * MIB / SECTOR,
        "disk of {} bytes is too small",
        layout.size_bytes
    );
    let sizes: Vec<u64> = layout.partitions.iter().map(|p| p.size_bytes).collect();
    place(&sizes, total - 1 - GPT_ARRAY_SECTORS)
}

/// Writes a GPT disk image to `dst`: protective MBR, primary and backup
/// headers and entry arrays, and the partition contents.
pub fn write_disk(layout: &DiskLayout, dst: &Path) -> Result<Vec<Placement>> {
    ensure!(
        layout.partitions.len() as u64 <= GPT_ENTRIES,
        "too many partitions"
    );
    let total = layout.size_bytes / SECTOR;
    let placed = gpt_placements(layout)?;

    let mut entries = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_SIZE) as usize];
    for (i, (p, at)) in layout.partitions.iter().zip(&placed).enumerate() {
        let e = &mut entries[i * GPT_ENTRY_SIZE as usize..][..GPT_ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_on_disk(&p.type_guid));
        e[16..32].copy_from_slice(&guid_on_disk(&p.part_guid));
        e[32..40].copy_from_slice(&(at.offset / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&((at.offset + at.size) / SECTOR - 1).to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        ensure!(
            name.len() <= 36,
            "GPT name {:?} is longer than 36 characters",
            p.name
        );
        for (j, u) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |mine: u64, alt: u64, array: u64| {
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&mine.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + GPT_ARRAY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(total - 2 - GPT_ARRAY_SECTORS).to_le_bytes());
        h[56..72].copy_from_slice(&guid_on_disk(&layout.disk_guid));
        h[72..80].copy_from_slice(&array.to_le_bytes());
        h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let backup_array = total - 1 - GPT_ARRAY_SECTORS;
    let primary = header(1, total - 1, 2);
    let backup = header(total - 1, 1, backup_array);
    let pmbr = mbr::mbr_sector(0, &[(0, 0xee, 1, (total - 1).min(u32::MAX as u64))]);

    write_image(dst, total * SECTOR, |f| {
        put(f, 0, &pmbr)?;
        put(f, SECTOR, &primary)?;
        put(f, 2 * SECTOR, &entries)?;
        put(f, backup_array * SECTOR, &entries)?;
        put(f, (total - 1) * SECTOR, &backup)?;
        for (p, at) in layout.partitions.iter().zip(&placed) {
            write_content(f, p.content.as_ref(), *at)
                .with_context(|| format!("writing partition {}", p.name))?;
        }
        Ok(())
    })?;
    Ok(placed)
}

fn put(f: &mut File, at: u64, data: &[u8]) -> Result<()> {
    f.seek(SeekFrom::Start(at))?;
    f.write_all(data)
        .with_context(|| format!("writing at byte {at}"))
}

/// Creates a sparse image of `size` bytes at `dst` atomically.
fn write_image(dst: &Path, size: u64, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    crate::fs::write_atomic(dst, |f| {
        f.set_len(size)
            .with_context(|| format!("sizing {} to {size} bytes", dst.display()))?;
        fill(f)
    })
    .with_context(|| format!("writing disk image {}", dst.display()))
}

/// Copies `content` into the partition at `at`, seeking over all-zero chunks so
/// the image stays sparse.
fn write_content(f: &mut File, content: Option<&Content>, at: Placement) -> Result<()> {
    let mut reader: Box<dyn Read> = match content {
        None => return Ok(()),
        Some(Content::Bytes(b)) => Box::new(&b[..]),
        Some(Content::File(p)) => {
            Box::new(File::open(p).with_context(|| format!("opening {}", p.display()))?)
        }
    };
    let mut buf = vec![0u8; MIB as usize];
    let mut written = 0u64;
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if written + n as u64 > at.size {
            bail!("content is larger than the partition ({} bytes)", at.size);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            put(f, at.offset + written, &buf[..n])?;
        }
        written += n as u64;
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Converts a raw disk image to qcow2 (for Proxmox) with `qemu-img`, atomically.
pub fn qcow2_from_raw(src: &Path, dst: &Path) -> Result<()> {
    let qemu_img = crate::tool::require("qemu-img")?;
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".labimg-tmp-")
        .suffix(".qcow2")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    crate::tool::run(
        Command::new(qemu_img)
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(src)
            .arg(tmp.path()),
    )?;
    tmp.persist(dst)
        .with_context(|| format!("renaming into {}", dst.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_parse_format_and_derive() {
        assert_eq!(
            guid_string(&ESP_TYPE),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        let a = guid_from("labimg/pi5/root-a");
        assert_eq!(a, guid_from("labimg/pi5/root-a"));
        assert_ne!(a, guid_from("labimg/pi5/root-b"));
        assert_eq!(a[6] >> 4, 5);
        assert_eq!(a[8] & 0xc0, 0x80);
        assert_eq!(&guid_on_disk(&ESP_TYPE)[..4], &[0x28, 0x73, 0x2a, 0xc1]);
    }

    #[test]
    fn placement_aligns_and_fills() {
        let p = place(&[MIB + 1, 0], 10 * MIB / SECTOR).unwrap();
        assert_eq!(
            p[0],
            Placement {
                offset: MIB,
                size: 2 * MIB
            }
        );
        assert_eq!(
            p[1],
            Placement {
                offset: 3 * MIB,
                size: 7 * MIB
            }
        );
        assert!(place(&[0, MIB], 10 * MIB / SECTOR).is_err());
        assert!(place(&[20 * MIB], 10 * MIB / SECTOR).is_err());
    }
}
