//! Names and entries of FAT directories: 8.3 aliases, VFAT long names and
//! DOS timestamps.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use super::{ATTR_LFN, DIRENT};

pub(super) fn file_name(p: &Path) -> Result<&str> {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("/{} is not a UTF-8 name", p.display()))?;
    ensure!(
        name.chars().count() <= 255 && !name.chars().any(|c| c < ' ' || "\"*/:<>?\\|".contains(c)),
        "/{} cannot be a FAT file name",
        p.display()
    );
    Ok(name)
}

/// Number of long-name entries `name` needs (0 when its 8.3 form is exact).
pub(super) fn lfn_count(short: &[u8; 11], name: &str) -> usize {
    if display_83(short) == name {
        0
    } else {
        name.encode_utf16().count().div_ceil(13)
    }
}

fn display_83(s: &[u8; 11]) -> String {
    let base = String::from_utf8_lossy(&s[..8]).trim_end().to_owned();
    let ext = String::from_utf8_lossy(&s[8..]).trim_end().to_owned();
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// The 8.3 name for `name`: itself when it already is an uppercase 8.3 name,
/// else a `BASIS~N.EXT` alias unique within `used`.
pub(super) fn short_name(name: &str, used: &mut HashSet<[u8; 11]>) -> [u8; 11] {
    let legal = |c: char| c.is_ascii_alphanumeric() || "$%'-_@~`!(){}^#&".contains(c);
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != ' ' && *c != '.')
            .map(|c| {
                if legal(c) {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let (b, x) = (clean(base), clean(ext));
    let fill = |b: &str, x: &str| {
        let mut s = [b' '; 11];
        for (d, c) in s[..8].iter_mut().zip(b.bytes()) {
            *d = c;
        }
        for (d, c) in s[8..].iter_mut().zip(x.bytes()) {
            *d = c;
        }
        s
    };
    let exact = !b.is_empty()
        && b.len() <= 8
        && x.len() <= 3
        && name
            .chars()
            .all(|c| c == '.' || (legal(c) && !c.is_ascii_lowercase()))
        && name.matches('.').count() <= 1;
    if exact {
        let s = fill(&b, &x);
        if used.insert(s) {
            return s;
        }
    }
    let x: String = x.chars().take(3).collect();
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = 8 - tail.len();
        let s = fill(
            &format!("{}{tail}", &b.chars().take(keep).collect::<String>()),
            &x,
        );
        if used.insert(s) {
            return s;
        }
    }
    unreachable!("the ~N counter is unbounded")
}

fn checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// VFAT long-name entries for `name`, in on-disk order (last part first).
pub(super) fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<u8> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    if !units.len().is_multiple_of(13) {
        units.push(0);
        units.resize(parts * 13, 0xffff);
    }
    let sum = checksum(short);
    let mut out = Vec::with_capacity(parts * DIRENT);
    for i in (0..parts).rev() {
        let mut e = [0u8; DIRENT];
        e[0] = (i + 1) as u8 | if i + 1 == parts { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        let chunk = &units[i * 13..i * 13 + 13];
        let slots = (1..11)
            .step_by(2)
            .chain((14..26).step_by(2))
            .chain((28..32).step_by(2));
        for (at, u) in slots.zip(chunk) {
            e[at..at + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.extend_from_slice(&e);
    }
    out
}

pub(super) fn short_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u64,
    size: u32,
    mtime: u64,
) -> [u8; DIRENT] {
    let mut e = [0u8; DIRENT];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    let (date, time) = dos_datetime(mtime);
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// DOS (date, time) for a Unix time, in UTC, clamped to 1980–2107.
fn dos_datetime(unix: u64) -> (u16, u16) {
    const MIN: u64 = 315_532_800; // 1980-01-01
    let (year, month, day, secs) = crate::date::civil(unix.max(MIN));
    if year > 2107 {
        return (0xff9f, 0xbf7d); // 2107-12-31 23:59:58
    }
    let date = ((year - 1980) << 9 | month << 5 | day) as u16;
    let time = ((secs / 3600) << 11 | (secs / 60 % 60) << 5 | (secs % 60 / 2)) as u16;
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_time_of_a_known_instant() {
        // 2023-11-14 22:13:20 UTC
        let (d, t) = dos_datetime(1_700_000_000);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31), (43, 11, 14));
        assert_eq!((t >> 11, (t >> 5) & 63, (t & 31) * 2), (22, 13, 20));
    }

    #[test]
    fn short_names_are_unique_and_exact_names_kept() {
        let mut used = HashSet::new();
        assert_eq!(&short_name("EFI", &mut used), b"EFI        ");
        assert_eq!(
            &short_name("systemd-bootx64.efi", &mut used),
            b"SYSTEM~1EFI"
        );
        assert_eq!(
            &short_name("systemd-bootaa64.efi", &mut used),
            b"SYSTEM~2EFI"
        );
        assert_eq!(&short_name("config.txt", &mut used), b"CONFIG~1TXT");
        assert_eq!(lfn_count(b"EFI        ", "EFI"), 0);
        assert_eq!(lfn_count(b"SYSTEM~1EFI", "systemd-bootx64.efi"), 2);
    }
}
