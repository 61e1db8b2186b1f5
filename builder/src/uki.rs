//! Unified Kernel Images: systemd's EFI stub (`linuxx64.efi.stub` from Debian's
//! `systemd-boot-efi`) with the kernel, the initramfs, the kernel command line and
//! the OS identity appended as PE sections, so that one Authenticode signature
//! covers all of them (UAPI "Unified Kernel Image" specification; systemd-stub(7)).
//!
//! The sections are appended after the stub's own, in the order `.osrel`,
//! `.cmdline`, `.uname`, `.initrd`, `.linux`: `.linux` last, as systemd's `ukify`
//! does, so the kernel has room to decompress after the image. The stub's `.sbat`
//! (its SBAT generation data) stays as it is; none is added. The order in the file
//! does not change what systemd-stub measures into PCR 11: it measures the
//! sections it knows in its own fixed order.
//!
//! Pure Rust and deterministic: the same inputs give the same bytes.

use anyhow::{Context, Result, bail, ensure};

/// Where the stub is in the unpacked `systemd-boot-efi` package.
pub const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// What goes into one UKI.
#[derive(Debug, Clone)]
pub struct UkiParts<'a> {
    /// os-release text for `.osrel` (see [`osrel`]).
    pub osrel: &'a str,
    /// The full kernel command line for `.cmdline`.
    pub cmdline: &'a str,
    /// The kernel release (`uname -r`) for `.uname`.
    pub uname: &'a str,
    /// The initramfs for `.initrd`.
    pub initrd: &'a [u8],
    /// The kernel image for `.linux`.
    pub linux: &'a [u8],
}

/// The `.osrel` text. systemd-boot 257 orders type 2 entries (UKIs under
/// `/EFI/Linux/`) like type 1 entries: bad entries (no tries left) last, then by
/// sort key (`IMAGE_ID`, else `ID`), then by version (`IMAGE_VERSION`, else
/// `VERSION_ID`), newest first; the menu title is `PRETTY_NAME`. Every labimg UKI
/// has `IMAGE_ID=labimg`, so `version` alone orders the slots.
pub fn osrel(profile: &str, slot: &str, version: &str) -> String {
    format!(
        "NAME=\"labimg\"\nID=labimg\nPRETTY_NAME=\"labimg {profile} (slot {slot}, {version})\"\n\
         IMAGE_ID=labimg\nIMAGE_VERSION={version}\n"
    )
}

/// The version a UKI carries in `IMAGE_VERSION`: `<SOURCE_DATE_EPOCH>-<root sha256
/// prefix>`. A type 1 entry's `<generation>` is counted by the node when it stages
/// an upgrade, but a UKI's `.osrel` is signed at build time, so the build time takes
/// its place: it grows with every build a node accepts (the upgrade agent refuses
/// a bundle built before the image it runs), so the ordering is the same.
pub fn image_version(epoch: u64, root_sha256: &str) -> String {
    format!("{epoch}-{}", root_sha256.get(..12).unwrap_or(root_sha256))
}

/// Builds a UKI from `stub` and `parts`.
pub fn build(stub: &[u8], parts: &UkiParts) -> Result<Vec<u8>> {
    add_sections(
        stub,
        &[
            (".osrel", parts.osrel.as_bytes()),
            (".cmdline", parts.cmdline.as_bytes()),
            (".uname", parts.uname.as_bytes()),
            (".initrd", parts.initrd),
            (".linux", parts.linux),
        ],
    )
    .context("building the unified kernel image from systemd's EFI stub")
}

const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;
const SECTION_HEADER_SIZE: usize = 40;
/// The certificate table (Authenticode signatures) in the data directories.
const SECURITY_DIRECTORY: usize = 4;

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b
        .get(off..off + 2)
        .with_context(|| format!("PE file truncated at offset {off:#x}"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b
        .get(off..off + 4)
        .with_context(|| format!("PE file truncated at offset {off:#x}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The parsed headers of a PE image that [`add_sections`] needs.
#[derive(Debug, Clone)]
pub struct PeLayout {
    /// Offset of the COFF file header (after `PE\0\0`).
    pub coff: usize,
    /// Offset of the optional header.
    pub opt: usize,
    /// Offset of the first section header.
    pub sections: usize,
    pub number_of_sections: u16,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_headers: u32,
    /// Offset of the data directories in the optional header.
    pub data_dirs: usize,
    pub number_of_rva_and_sizes: u32,
}

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
}

/// Reads the headers of a PE32 or PE32+ image.
pub fn layout(pe: &[u8]) -> Result<PeLayout> {
    ensure!(pe.get(..2) == Some(b"MZ"), "not a PE file (no MZ header)");
    let pe_off = u32_at(pe, 0x3c)? as usize;
    ensure!(
        pe.get(pe_off..pe_off + 4) == Some(b"PE\0\0"),
        "not a PE file (no PE signature at {pe_off:#x})"
    );
    let coff = pe_off + 4;
    let number_of_sections = u16_at(pe, coff + 2)?;
    let size_of_optional = u16_at(pe, coff + 16)? as usize;
    let opt = coff + 20;
    let magic = u16_at(pe, opt)?;
    let data_dirs = match magic {
        0x10b => opt + 96,
        0x20b => opt + 112,
        m => bail!("unknown PE optional header magic {m:#x}"),
    };
    let layout = PeLayout {
        coff,
        opt,
        sections: opt + size_of_optional,
        number_of_sections,
        section_alignment: u32_at(pe, opt + 32)?,
        file_alignment: u32_at(pe, opt + 36)?,
        size_of_headers: u32_at(pe, opt + 60)?,
        data_dirs,
        number_of_rva_and_sizes: u32_at(pe, data_dirs - 4)?,
    };
    ensure!(
        layout.section_alignment.is_power_of_two() && layout.file_alignment.is_power_of_two(),
        "PE alignments are not powers of two (section {:#x}, file {:#x})",
        layout.section_alignment,
        layout.file_alignment
    );
    Ok(layout)
}

/// The section headers of a PE image.
pub fn sections(pe: &[u8]) -> Result<Vec<Section>> {
    let l = layout(pe)?;
    (0..l.number_of_sections as usize)
        .map(|i| {
            let h = l.sections + i * SECTION_HEADER_SIZE;
            let raw_name = pe
                .get(h..h + 8)
                .with_context(|| format!("section header {i} is past the end of the file"))?;
            let end = raw_name.iter().position(|&c| c == 0).unwrap_or(8);
            Ok(Section {
                name: String::from_utf8_lossy(&raw_name[..end]).into_owned(),
                virtual_size: u32_at(pe, h + 8)?,
                virtual_address: u32_at(pe, h + 12)?,
                size_of_raw_data: u32_at(pe, h + 16)?,
                pointer_to_raw_data: u32_at(pe, h + 20)?,
                characteristics: u32_at(pe, h + 36)?,
            })
        })
        .collect()
}

/// The contents of section `name` (its first `VirtualSize` bytes), if present.
pub fn section_data<'a>(pe: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    let Some(s) = sections(pe)?.into_iter().find(|s| s.name == name) else {
        return Ok(None);
    };
    let len = s.virtual_size.min(s.size_of_raw_data) as usize;
    let start = s.pointer_to_raw_data as usize;
    let data = pe
        .get(start..start + len)
        .with_context(|| format!("section {name} is past the end of the file"))?;
    Ok(Some(data))
}

/// Appends `new` (name, contents) as initialized, read-only data sections after
/// the last section of `pe`, and returns the new image: headers fixed up
/// (NumberOfSections, SizeOfImage, SizeOfInitializedData, CheckSum), each section
/// at the next SectionAlignment boundary in memory and FileAlignment boundary in
/// the file. Refuses a signed or overlaid input (data after the last section), a
/// duplicate section name, and headers that would not fit in SizeOfHeaders.
pub fn add_sections(pe: &[u8], new: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let l = layout(pe)?;
    let existing = sections(pe)?;
    if l.number_of_rva_and_sizes as usize > SECURITY_DIRECTORY {
        let dir = l.data_dirs + SECURITY_DIRECTORY * 8;
        ensure!(
            u32_at(pe, dir + 4)? == 0,
            "the PE file is already signed (it has a certificate table): sections cannot \
             be added to a signed binary; start from the unsigned stub"
        );
    }
    let total = existing.len() + new.len();
    let headers_end = l.sections + total * SECTION_HEADER_SIZE;
    let first_raw = existing
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .min()
        .unwrap_or(l.size_of_headers as usize);
    let room = (l.size_of_headers as usize).min(first_raw);
    ensure!(
        headers_end <= room,
        "{total} section headers end at byte {headers_end:#x}, past the {room:#x} bytes the \
         stub reserves for its headers (SizeOfHeaders): this stub has room for {} more \
         section(s), {} are needed",
        (room.saturating_sub(l.sections) / SECTION_HEADER_SIZE).saturating_sub(existing.len()),
        new.len()
    );
    let raw_end = existing
        .iter()
        .map(|s| s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64)
        .max()
        .unwrap_or(l.size_of_headers as u64);
    ensure!(
        pe.len() as u64 <= raw_end,
        "the PE file has {} bytes after its last section (a symbol table or overlay): \
         refusing to append sections after it",
        pe.len() as u64 - raw_end
    );
    for (name, _) in new {
        ensure!(
            name.len() <= 8 && name.is_ascii(),
            "section name {name:?} is not at most 8 ASCII bytes"
        );
        ensure!(
            !existing.iter().any(|s| s.name == *name),
            "the stub already has a {name} section"
        );
    }
    let (salign, falign) = (l.section_alignment as u64, l.file_alignment as u64);
    let mut va = existing
        .iter()
        .map(|s| {
            align_up(
                s.virtual_address as u64 + s.virtual_size.max(1) as u64,
                salign,
            )
        })
        .max()
        .unwrap_or(align_up(l.size_of_headers as u64, salign));
    let mut out = pe.to_vec();
    out.resize(align_up(raw_end, falign) as usize, 0);
    let mut added_init = 0u64;
    for (i, (name, data)) in new.iter().enumerate() {
        let raw_ptr = out.len() as u64;
        let raw_size = align_up(data.len() as u64, falign);
        let fits = |v: u64| u32::try_from(v).is_ok();
        ensure!(
            fits(va + data.len() as u64) && fits(raw_ptr + raw_size),
            "section {name} ({} bytes) does not fit a 32-bit PE image",
            data.len()
        );
        let h = l.sections + (existing.len() + i) * SECTION_HEADER_SIZE;
        let mut header = [0u8; SECTION_HEADER_SIZE];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut header, 8, data.len() as u32);
        put_u32(&mut header, 12, va as u32);
        put_u32(&mut header, 16, raw_size as u32);
        put_u32(&mut header, 20, raw_ptr as u32);
        put_u32(
            &mut header,
            36,
            IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        );
        out[h..h + SECTION_HEADER_SIZE].copy_from_slice(&header);
        out.extend_from_slice(data);
        out.resize((raw_ptr + raw_size) as usize, 0);
        added_init += raw_size;
        va = align_up(va + (data.len() as u64).max(1), salign);
    }
    put_u16(&mut out, l.coff + 2, total as u16);
    let init = u32_at(&out, l.opt + 8)? as u64 + added_init;
    put_u32(
        &mut out,
        l.opt + 8,
        u32::try_from(init).context("SizeOfInitializedData overflows")?,
    );
    put_u32(
        &mut out,
        l.opt + 56,
        u32::try_from(va).context("SizeOfImage overflows")?,
    );
    let sum = checksum(&out, l.opt + 64);
    put_u32(&mut out, l.opt + 64, sum);
    Ok(out)
}

/// The PE image checksum: the 16-bit one's-complement-style sum of the file
/// (with the CheckSum field itself read as zero), folded, plus the file length.
pub fn checksum(pe: &[u8], checksum_off: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        let off = i * 2;
        if off == checksum_off || off == checksum_off + 2 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ EFI application: headers in 0x200 bytes, one `.text`
    /// section of 0x10 bytes, SectionAlignment 0x1000, FileAlignment 0x200.
    fn tiny_pe(size_of_headers: u32) -> Vec<u8> {
        let mut pe = vec![0u8; size_of_headers as usize];
        pe[..2].copy_from_slice(b"MZ");
        put_u32(&mut pe, 0x3c, 0x40);
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        put_u16(&mut pe, coff, 0x8664);
        put_u16(&mut pe, coff + 2, 1);
        put_u16(&mut pe, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut pe, opt, 0x20b);
        put_u32(&mut pe, opt + 4, 0x200); // SizeOfCode
        put_u32(&mut pe, opt + 32, 0x1000);
        put_u32(&mut pe, opt + 36, 0x200);
        put_u32(&mut pe, opt + 56, 0x2000);
        put_u32(&mut pe, opt + 60, size_of_headers);
        put_u16(&mut pe, opt + 68, 10);
        put_u32(&mut pe, opt + 108, 16);
        let s = opt + 240;
        pe[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut pe, s + 8, 0x10);
        put_u32(&mut pe, s + 12, 0x1000);
        put_u32(&mut pe, s + 16, 0x200);
        put_u32(&mut pe, s + 20, size_of_headers);
        put_u32(&mut pe, s + 36, 0x6000_0020);
        pe.resize(size_of_headers as usize + 0x200, 0xcc);
        pe
    }

    #[test]
    fn appends_aligned_sections_and_fixes_headers() {
        let pe = tiny_pe(0x400);
        let big = vec![7u8; 0x1234];
        let out = add_sections(&pe, &[(".osrel", b"ID=labimg\n"), (".linux", &big)]).unwrap();
        let s = sections(&out).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].name, ".osrel");
        assert_eq!(s[1].virtual_address, 0x2000);
        assert_eq!(s[1].virtual_size, 10);
        assert_eq!(s[1].pointer_to_raw_data, 0x600);
        assert_eq!(s[1].size_of_raw_data, 0x200);
        assert_eq!(s[2].name, ".linux");
        assert_eq!(s[2].virtual_address, 0x3000);
        assert_eq!(s[2].pointer_to_raw_data, 0x800);
        assert_eq!(s[2].size_of_raw_data, 0x1400);
        assert_eq!(out.len(), 0x800 + 0x1400);
        let l = layout(&out).unwrap();
        assert_eq!(u32_at(&out, l.opt + 56).unwrap(), 0x5000, "SizeOfImage");
        assert_eq!(u32_at(&out, l.opt + 8).unwrap(), 0x200 + 0x1400);
        assert_eq!(
            u32_at(&out, l.opt + 64).unwrap(),
            checksum(&out, l.opt + 64)
        );
        assert_eq!(section_data(&out, ".linux").unwrap(), Some(&big[..]));
        assert_eq!(
            section_data(&out, ".osrel").unwrap(),
            Some(&b"ID=labimg\n"[..])
        );
        // Deterministic.
        let again = add_sections(&pe, &[(".osrel", b"ID=labimg\n"), (".linux", &big)]).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn refuses_headers_past_size_of_headers() {
        // 0x200 bytes of headers: room for (0x200 - 0x148) / 40 = 4 headers, 1 used.
        let pe = tiny_pe(0x200);
        let many: Vec<(&str, &[u8])> = [".a", ".b", ".c", ".d"]
            .iter()
            .map(|n| (*n, &b"x"[..]))
            .collect();
        let e = add_sections(&pe, &many).unwrap_err().to_string();
        assert!(e.contains("SizeOfHeaders"), "{e}");
        assert!(e.contains("room for 3 more"), "{e}");
        assert!(add_sections(&pe, &many[..3]).is_ok());
    }

    #[test]
    fn refuses_signed_overlaid_and_duplicate() {
        let mut pe = tiny_pe(0x400);
        let l = layout(&pe).unwrap();
        let e = add_sections(&pe, &[(".text", b"x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has a .text"), "{e}");
        pe.extend_from_slice(&[1, 2, 3]);
        let e = add_sections(&pe, &[(".x", b"x")]).unwrap_err().to_string();
        assert!(e.contains("after its last section"), "{e}");
        put_u32(&mut pe, l.data_dirs + 4 * 8 + 4, 3);
        let e = add_sections(&pe, &[(".x", b"x")]).unwrap_err().to_string();
        assert!(e.contains("already signed"), "{e}");
        assert!(add_sections(b"not a pe", &[]).is_err());
    }

    #[test]
    fn checksum_matches_a_known_value() {
        // Words 0x0201, 0x0403 (the checksum field at 4..8 skipped), length 8.
        let b = [1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(checksum(&b, 4), 0x0201 + 0x0403 + 8);
        // Carries fold: 0xffff + 0x0002 = 0x1_0001 -> 0x0002.
        let c = [0xff, 0xff, 2, 0, 0, 0, 0, 0];
        assert_eq!(checksum(&c, 4), 2 + 8);
    }

    #[test]
    fn osrel_and_version() {
        let v = image_version(1_700_000_000, "0123456789abcdef");
        assert_eq!(v, "1700000000-0123456789ab");
        let o = osrel("px", "a", &v);
        assert!(o.contains("\nIMAGE_ID=labimg\n"));
        assert!(o.contains("\nIMAGE_VERSION=1700000000-0123456789ab\n"));
        assert!(o.contains("ID=labimg\n"));
    }
}
