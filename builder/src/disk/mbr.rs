//! MBR (DOS) partition tables: the Raspberry Pi's disk format, and the
//! protective MBR in front of every GPT.

use std::path::Path;

use anyhow::{Context, Result, ensure};

use super::{Content, Placement, SECTOR, place, put, write_content, write_image};

/// MBR type of a FAT32 partition addressed by LBA (what the Pi boot ROM expects).
pub const MBR_FAT32_LBA: u8 = 0x0c;
/// MBR type of a Linux partition.
pub const MBR_LINUX: u8 = 0x83;

/// One MBR (DOS) partition.
#[derive(Clone, Debug)]
pub struct MbrPartitionSpec {
    /// Partition type byte, e.g. [`MBR_FAT32_LBA`] or [`MBR_LINUX`].
    pub kind: u8,
    pub bootable: bool,
    /// Size, rounded up to whole MiB; 0 on the last partition means "the rest of the disk".
    pub size_bytes: u64,
    pub content: Option<Content>,
}

/// A whole MBR disk (at most four primary partitions).
#[derive(Clone, Debug)]
pub struct MbrLayout {
    pub size_bytes: u64,
    /// The 32-bit disk identifier (Linux shows it as `PARTUUID=xxxxxxxx-NN`).
    pub disk_id: u32,
    pub partitions: Vec<MbrPartitionSpec>,
}

/// Writes an MBR disk image to `dst` (for the Raspberry Pi: a FAT32 boot
/// partition of type 0x0c first).
pub fn write_mbr_disk(layout: &MbrLayout, dst: &Path) -> Result<Vec<Placement>> {
    ensure!(
        layout.partitions.len() <= 4,
        "MBR holds at most 4 primary partitions"
    );
    let total = layout.size_bytes / SECTOR;
    ensure!(total <= u32::MAX as u64, "MBR disks are limited to 2 TiB");
    let sizes: Vec<u64> = layout.partitions.iter().map(|p| p.size_bytes).collect();
    let placed = place(&sizes, total)?;
    let parts: Vec<(u8, u8, u64, u64)> = layout
        .partitions
        .iter()
        .zip(&placed)
        .map(|(p, at)| {
            let status = if p.bootable { 0x80 } else { 0 };
            (status, p.kind, at.offset / SECTOR, at.size / SECTOR)
        })
        .collect();
    let table = mbr_sector(layout.disk_id, &parts);
    write_image(dst, total * SECTOR, |f| {
        put(f, 0, &table)?;
        for (i, (p, at)) in layout.partitions.iter().zip(&placed).enumerate() {
            write_content(f, p.content.as_ref(), *at)
                .with_context(|| format!("writing partition {}", i + 1))?;
        }
        Ok(())
    })?;
    Ok(placed)
}

/// An MBR sector with up to four `(status, type, first LBA, sectors)` entries.
pub(super) fn mbr_sector(disk_id: u32, parts: &[(u8, u8, u64, u64)]) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    for (i, &(status, kind, start, len)) in parts.iter().enumerate() {
        let e = &mut m[446 + 16 * i..462 + 16 * i];
        e[0] = status;
        e[1..4].copy_from_slice(&chs(start));
        e[4] = kind;
        e[5..8].copy_from_slice(&chs(start + len - 1));
        e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(len.min(u32::MAX as u64) as u32).to_le_bytes());
    }
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// Cylinder/head/sector address with the usual 255 heads × 63 sectors geometry,
/// saturated at 1023/254/63 like every modern partitioner.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, secs) = (255, 63);
    let c = lba / (heads * secs);
    if c > 1023 {
        return [254, 0xff, 0xff];
    }
    let h = (lba / secs) % heads;
    let s = lba % secs + 1;
    [h as u8, ((c >> 2) & 0xc0) as u8 | s as u8, c as u8]
}
