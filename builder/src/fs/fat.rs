//! FAT32 with long file names, for the UEFI system partition and the Pi's boot
//! partition.
//!
//! Written by hand (≈400 lines) rather than through a crate: the layout is
//! simple, the crates either produce images `fsck.vfat` rejects or pull in a lot,
//! and a hand writer is trivially deterministic. Files and directories are laid
//! out contiguously in tree order, every name that is not already an uppercase
//! 8.3 name gets VFAT long-name entries, and every timestamp is the entry's
//! mtime. Only FAT32 is written (at least 65 525 clusters): both UEFI and the
//! Pi firmware read it, which keeps one code path; that sets the minimum size
//! to [`MIN_FAT32_BYTES`].

use std::collections::{BTreeMap, HashSet};

use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::tree::{Entry, Kind, Tree};

mod names;
use names::{file_name, lfn_count, lfn_entries, short_entry, short_name};

const SECTOR: u64 = 512;
const RESERVED_SECTORS: u64 = 32;
const DIRENT: usize = 32;
/// FAT32 is defined by its cluster count, not by its size.
const MIN_CLUSTERS: u64 = 65_525;
/// The smallest filesystem [`write_fat32`] accepts (33 MiB, 512-byte clusters).
pub const MIN_FAT32_BYTES: u64 = 33 << 20;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_LFN: u8 = 0x0f;
const END_OF_CHAIN: u32 = 0x0fff_ffff;

/// Builds a FAT32 filesystem of `size_bytes` holding `tree`'s directories and
/// regular files. `label` is the volume label (up to 11 characters), `volume_id`
/// the serial number shown as `XXXX-XXXX`.
pub fn write_fat32(tree: &Tree, size_bytes: u64, label: &str, volume_id: u32) -> Result<Vec<u8>> {
    let len = usize::try_from(size_bytes).context("FAT image too large for memory")?;
    let mut buf = vec![0u8; len];
    write_fat32_at(
        tree,
        &mut Cursor::new(&mut buf[..]),
        0,
        size_bytes,
        label,
        volume_id,
    )?;
    Ok(buf)
}

/// Like [`write_fat32`] but writes into `w` at byte `offset` (for example a
/// partition inside a disk image). The region must already read as zeros (a
/// freshly extended file): only used sectors are written, so sparse files stay sparse.
pub fn write_fat32_at<W: Write + Seek>(
    tree: &Tree,
    w: &mut W,
    offset: u64,
    size_bytes: u64,
    label: &str,
    volume_id: u32,
) -> Result<()> {
    let g = Geometry::new(size_bytes)?;
    let label = volume_label(label)?;
    let layout = Layout::plan(tree, &g, label.is_some())?;
    ensure!(
        layout.next_free - 2 <= g.clusters,
        "{} bytes of files do not fit in a {size_bytes}-byte FAT filesystem",
        tree.file_bytes()
    );

    let boot = boot_sector(&g, label.unwrap_or(*b"NO NAME    "), volume_id);
    let free = g.clusters - (layout.next_free - 2);
    let info = fs_info(free as u32, layout.next_free as u32);
    for (sector, data) in [(0, &boot), (1, &info), (6, &boot), (7, &info)] {
        put(w, offset + sector * SECTOR, data)?;
    }

    let mut fat = Vec::with_capacity(layout.next_free as usize * 4);
    fat.extend_from_slice(&0x0fff_fff8u32.to_le_bytes());
    fat.extend_from_slice(&END_OF_CHAIN.to_le_bytes());
    for (first, n) in layout.chains() {
        for c in first..first + n {
            let next = if c + 1 == first + n {
                END_OF_CHAIN
            } else {
                c as u32 + 1
            };
            fat.extend_from_slice(&next.to_le_bytes());
        }
    }
    for copy in 0..2 {
        put(
            w,
            offset + (RESERVED_SECTORS + copy * g.fat_sectors) * SECTOR,
            &fat,
        )?;
    }

    for (path, e) in tree.iter() {
        let n = &layout.nodes[path];
        let data = match &e.kind {
            Kind::Dir => layout.dir_bytes(tree, path, label)?,
            Kind::File(d) => d.to_vec(),
            _ => continue,
        };
        if n.first != 0 {
            put(w, offset + g.cluster_offset(n.first), &data)?;
        }
    }
    Ok(())
}

fn put<W: Write + Seek>(w: &mut W, at: u64, data: &[u8]) -> Result<()> {
    w.seek(SeekFrom::Start(at))?;
    w.write_all(data)
        .with_context(|| format!("writing FAT data at byte {at}"))
}

/// Sizes of the regions of the filesystem.
struct Geometry {
    total_sectors: u64,
    sectors_per_cluster: u64,
    fat_sectors: u64,
    clusters: u64,
}

impl Geometry {
    fn new(size_bytes: u64) -> Result<Self> {
        ensure!(
            size_bytes >= MIN_FAT32_BYTES,
            "a FAT32 filesystem needs at least {} MiB, got {size_bytes} bytes",
            MIN_FAT32_BYTES >> 20
        );
        let total_sectors = (size_bytes / SECTOR).min(u32::MAX as u64);
        // Cluster sizes as mkfs.fat picks them for FAT32.
        let sectors_per_cluster = match size_bytes {
            s if s <= 260 << 20 => 1,
            s if s <= 8 << 30 => 8,
            s if s <= 16 << 30 => 16,
            s if s <= 32 << 30 => 32,
            _ => 64,
        };
        let mut fat_sectors = 1;
        loop {
            let data = total_sectors - RESERVED_SECTORS - 2 * fat_sectors;
            let clusters = data / sectors_per_cluster;
            let need = ((clusters + 2) * 4).div_ceil(SECTOR);
            if need <= fat_sectors {
                ensure!(
                    clusters >= MIN_CLUSTERS,
                    "{size_bytes} bytes is too small for FAT32"
                );
                return Ok(Self {
                    total_sectors,
                    sectors_per_cluster,
                    fat_sectors,
                    clusters,
                });
            }
            fat_sectors = need;
        }
    }

    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    fn cluster_offset(&self, cluster: u64) -> u64 {
        (RESERVED_SECTORS + 2 * self.fat_sectors + (cluster - 2) * self.sectors_per_cluster)
            * SECTOR
    }
}

fn boot_sector(g: &Geometry, label: [u8; 11], volume_id: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"labimg  ");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = 2; // FAT copies
    b[21] = 0xf8; // fixed disk
    b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads
    b[32..36].copy_from_slice(&(g.total_sectors as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(g.fat_sectors as u32).to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80;
    b[66] = 0x29;
    b[67..71].copy_from_slice(&volume_id.to_le_bytes());
    b[71..82].copy_from_slice(&label);
    b[82..90].copy_from_slice(b"FAT32   ");
    // Not bootable: `int 0x18` hands control back to the BIOS if anyone tries.
    b[90..92].copy_from_slice(&[0xcd, 0x18]);
    b[510] = 0x55;
    b[511] = 0xaa;
    b
}

fn fs_info(free: u32, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    b[488..492].copy_from_slice(&free.to_le_bytes());
    b[492..496].copy_from_slice(&next_free.to_le_bytes());
    b[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
    b
}

/// An uppercase, space-padded volume label; `None` for an empty one.
fn volume_label(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    ensure!(
        label.len() <= 11 && label.bytes().all(|c| c.is_ascii_graphic() || c == b' '),
        "FAT label {label:?} must be at most 11 printable ASCII characters"
    );
    let mut l = [b' '; 11];
    for (d, s) in l.iter_mut().zip(label.bytes()) {
        *d = s.to_ascii_uppercase();
    }
    Ok(Some(l))
}

/// Where each entry lives: first cluster and cluster count.
#[derive(Clone, Copy)]
struct Node {
    first: u64,
    clusters: u64,
}

struct Layout {
    nodes: BTreeMap<PathBuf, Node>,
    /// Short names per path, decided once so directory sizes and contents agree.
    short: BTreeMap<PathBuf, [u8; 11]>,
    next_free: u64,
    cluster_bytes: u64,
}

impl Layout {
    fn plan(tree: &Tree, g: &Geometry, has_label: bool) -> Result<Self> {
        let mut short = BTreeMap::new();
        for (path, e) in tree.iter() {
            if !e.is_dir() {
                continue;
            }
            let mut used = HashSet::new();
            for (child, ce) in tree.children(path) {
                if !matches!(ce.kind, Kind::Dir | Kind::File(_)) {
                    bail!(
                        "FAT cannot hold /{}: only files and directories",
                        child.display()
                    );
                }
                let name = file_name(child)?;
                let sn = short_name(name, &mut used);
                short.insert(child.to_path_buf(), sn);
            }
        }
        let mut layout = Self {
            nodes: BTreeMap::new(),
            short,
            next_free: 2,
            cluster_bytes: g.cluster_bytes(),
        };
        for (path, e) in tree.iter() {
            let bytes = match &e.kind {
                Kind::Dir => {
                    let root = path.as_os_str().is_empty();
                    let mut n = if root { usize::from(has_label) } else { 2 };
                    for (child, _) in tree.children(path) {
                        n += 1 + lfn_count(&layout.short[child], file_name(child)?);
                    }
                    (n * DIRENT).max(1) as u64
                }
                Kind::File(d) => {
                    ensure!(
                        u32::try_from(d.len()).is_ok(),
                        "/{} is larger than FAT's 4 GiB file limit",
                        path.display()
                    );
                    d.len() as u64
                }
                _ => continue,
            };
            let clusters = bytes.div_ceil(layout.cluster_bytes);
            let first = if clusters == 0 { 0 } else { layout.next_free };
            layout.next_free += clusters;
            layout
                .nodes
                .insert(path.to_path_buf(), Node { first, clusters });
        }
        Ok(layout)
    }

    /// (first cluster, count) of every allocated chain, in cluster order.
    fn chains(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self
            .nodes
            .values()
            .filter(|n| n.clusters > 0)
            .map(|n| (n.first, n.clusters))
            .collect();
        v.sort_unstable();
        v
    }

    /// The cluster-padded contents of directory `dir`.
    fn dir_bytes(&self, tree: &Tree, dir: &Path, label: Option<[u8; 11]>) -> Result<Vec<u8>> {
        let me = self.nodes[dir];
        let mut out = Vec::with_capacity((me.clusters * self.cluster_bytes) as usize);
        let Some(e) = tree.get(dir) else {
            bail!("/{} vanished from the tree", dir.display())
        };
        if dir.as_os_str().is_empty() {
            if let Some(l) = label {
                out.extend(short_entry(&l, ATTR_VOLUME_ID, 0, 0, e.mtime));
            }
        } else {
            let parent = dir.parent().unwrap_or(Path::new(""));
            // ".." of a top-level directory points at cluster 0, by convention.
            let up = if parent.as_os_str().is_empty() {
                0
            } else {
                self.nodes[parent].first
            };
            out.extend(short_entry(b".          ", ATTR_DIR, me.first, 0, e.mtime));
            out.extend(short_entry(b"..         ", ATTR_DIR, up, 0, e.mtime));
        }
        for (child, ce) in tree.children(dir) {
            let sn = self.short[child];
            let name = file_name(child)?;
            if lfn_count(&sn, name) > 0 {
                out.extend(lfn_entries(name, &sn));
            }
            let n = self.nodes[child];
            let (attr, size) = match &ce.kind {
                Kind::File(d) => (ATTR_ARCHIVE, d.len() as u32),
                _ => (ATTR_DIR, 0),
            };
            out.extend(short_entry(&sn, attr, n.first, size, ce.mtime));
        }
        out.resize((me.clusters * self.cluster_bytes) as usize, 0);
        Ok(out)
    }
}

/// Entries FAT can store (so callers can filter a tree before writing it).
pub fn is_representable(e: &Entry) -> bool {
    matches!(e.kind, Kind::Dir | Kind::File(_))
}
