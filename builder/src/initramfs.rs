//! Step 3: the initramfs — busybox, stage 1 of the node init, and the kernel
//! modules the boot needs (dependency-resolved, decompressed) — as a newc
//! cpio compressed with zstd, which every kernel labimg ships decodes.
//! Stage 1 opens the root with dm-verity, so `dmsetup` comes along with the
//! shared libraries it needs, found by reading the ELF dynamic sections.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};

use crate::compress;
use crate::fs::cpio;
use crate::kmod::KernelModules;
use crate::rootfs::node_files;
use crate::tree::{Entry, Kind, Tree};

/// The compressed initramfs and what went into it.
#[derive(Debug)]
pub struct Initramfs {
    pub data: Vec<u8>,
    pub modules: Vec<String>,
}

/// Builds the initramfs from the assembled root tree.
pub fn make_initramfs(root: &Tree, wanted_modules: &[String], epoch: u64) -> Result<Initramfs> {
    let mut t = Tree::new();
    let busybox = root
        .get("usr/bin/busybox")
        .and_then(|e| e.data())
        .context("the root tree has no /usr/bin/busybox")?;
    t.insert_file("bin/busybox", busybox.to_vec(), 0o755)?;
    t.insert_symlink("bin/sh", "busybox")?;
    t.insert_file("init", node_files::INIT, 0o755)?;
    t.insert_file("lib/labimg/common.sh", node_files::COMMON, 0o644)?;
    t.insert_file("lib/labimg/udhcpc.script", node_files::UDHCPC_SCRIPT, 0o755)?;
    // build() insists on dmsetup; a bare tree (tests of other steps) gets an
    // initramfs that can only boot command lines without dm-verity.
    if root.get_follow(DMSETUP).is_some() {
        copy_with_libraries(root, &mut t, DMSETUP)?;
    } else {
        tracing::warn!(
            "the root tree has no /{DMSETUP}: the initramfs cannot open a dm-verity root"
        );
    }
    // The kernel opens /dev/console before devtmpfs is mounted.
    t.insert(
        "dev/console",
        Entry::new(Kind::CharDevice { major: 5, minor: 1 }, 0o600),
    )?;
    for d in ["proc", "sys", "run", "tmp", "newroot"] {
        t.mkdir_all(d)?;
    }

    let kmods = KernelModules::find(root)?;
    let chosen = kmods
        .closure(root, wanted_modules)
        .context("resolving boot modules")?;
    let mut list = String::new();
    for m in &chosen {
        let rel = m.path.to_string_lossy();
        t.insert_file(
            format!("lib/modules/{}/{rel}", kmods.version),
            m.data.clone(),
            0o644,
        )?;
        list.push_str(&rel);
        list.push('\n');
    }
    t.insert_file("etc/labimg/modules", list, 0o644)?;
    t.set_all_mtimes(epoch);

    let mut raw = Vec::new();
    cpio::write_newc(&t, &mut raw).context("writing the initramfs cpio")?;
    let data = compress::zstd_bytes(&raw, 19).context("compressing the initramfs")?;
    tracing::info!(
        "initramfs: {} modules, {} KiB cpio, {} KiB compressed",
        chosen.len(),
        raw.len() >> 10,
        data.len() >> 10
    );
    Ok(Initramfs {
        data,
        modules: chosen.into_iter().map(|m| m.name).collect(),
    })
}

/// Where Debian's `dmsetup` package puts the tool stage 1 maps the root with.
pub const DMSETUP: &str = "usr/sbin/dmsetup";

/// Directories the dynamic loader searches (Debian's multiarch paths are
/// compiled into its ld.so, so no ld.so.cache is needed).
const LIB_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "lib",
];

/// Copies the executable `exe` from `root` into `t` with its ELF interpreter
/// and, recursively, every `DT_NEEDED` library (as regular files at the paths
/// the loader looks at, so symlinks need not be reproduced).
fn copy_with_libraries(root: &Tree, t: &mut Tree, exe: &str) -> Result<()> {
    let mut todo = vec![exe.to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let data = root
            .get_follow(&path)
            .and_then(|e| e.data())
            .with_context(|| format!("the root tree has no /{path} for the initramfs"))?;
        let deps = elf_dependencies(data).with_context(|| format!("reading ELF /{path}"))?;
        t.insert_file(&path, data.to_vec(), 0o755)?;
        if let Some(interp) = deps.interpreter {
            todo.push(interp.trim_start_matches('/').to_owned());
        }
        for lib in deps.needed {
            let found = LIB_DIRS
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| root.get_follow(p).is_some_and(|e| e.data().is_some()))
                .with_context(|| format!("/{path} needs {lib}, which is not in the root tree"))?;
            todo.push(found);
        }
    }
    Ok(())
}

/// What an ELF file needs at run time.
#[derive(Debug, Default, PartialEq)]
struct ElfDependencies {
    interpreter: Option<String>,
    needed: Vec<String>,
}

/// Reads `PT_INTERP` and the `DT_NEEDED` entries of a 64-bit little-endian
/// ELF (x86_64 and aarch64, all labimg builds for).
fn elf_dependencies(elf: &[u8]) -> Result<ElfDependencies> {
    let u16_at = |o: usize| -> Result<u64> {
        Ok(u16::from_le_bytes(elf.get(o..o + 2).context("truncated ELF")?.try_into()?) as u64)
    };
    let u32_at = |o: usize| -> Result<u64> {
        Ok(u32::from_le_bytes(elf.get(o..o + 4).context("truncated ELF")?.try_into()?) as u64)
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            elf.get(o..o + 8).context("truncated ELF")?.try_into()?,
        ))
    };
    let cstr = |o: usize| -> Result<String> {
        let rest = elf.get(o..).context("string outside the ELF file")?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .context("unterminated string")?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    ensure!(elf.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4..6) == Some(&[2, 1][..]),
        "not a 64-bit little-endian ELF"
    );
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    let mut deps = ElfDependencies::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = usize::try_from(phoff + i * phentsize)?;
        let (kind, offset, vaddr, filesz) = (
            u32_at(ph)?,
            u64_at(ph + 8)?,
            u64_at(ph + 16)?,
            u64_at(ph + 32)?,
        );
        match kind {
            1 => loads.push((vaddr, offset, filesz)),
            2 => dynamic = Some((offset, filesz)),
            3 => {
                deps.interpreter = Some(cstr(usize::try_from(offset)?)?);
            }
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(deps); // statically linked
    };
    let (mut strtab, mut needed) = (None, Vec::new());
    for i in 0..dyn_size / 16 {
        let e = usize::try_from(dyn_off + i * 16)?;
        match u64_at(e)? {
            0 => break,
            1 => needed.push(u64_at(e + 8)?),
            5 => strtab = Some(u64_at(e + 8)?),
            _ => {}
        }
    }
    let Some(strtab) = strtab else {
        bail!("dynamic section without DT_STRTAB");
    };
    // DT_STRTAB is an address: map it to a file offset through PT_LOAD.
    let (vaddr, offset, _) = loads
        .iter()
        .find(|(v, _, sz)| (*v..v + sz).contains(&strtab))
        .context("DT_STRTAB outside every PT_LOAD segment")?;
    let strtab = strtab - vaddr + offset;
    for n in needed {
        deps.needed.push(cstr(usize::try_from(strtab + n)?)?);
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hosts_own_dynamic_executable() {
        // The host's /bin/sh (dash or bash on Debian) is dynamically linked to libc.
        let sh = std::fs::read("/bin/sh").unwrap();
        let deps = elf_dependencies(&sh).unwrap();
        assert!(deps.interpreter.unwrap().contains("ld-linux"));
        assert!(
            deps.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            deps.needed
        );
    }

    #[test]
    fn rejects_non_elf() {
        assert!(elf_dependencies(b"#!/bin/sh\n").is_err());
    }
}
