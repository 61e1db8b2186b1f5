//! Step 3: the initramfs — busybox, stage 1 of the node init, and the kernel
//! modules the boot needs (dependency-resolved, decompressed) — as a newc
//! cpio compressed with zstd, which every kernel labimg ships decodes.

use anyhow::{Context, Result};

use crate::compress;
use crate::fs::cpio;
use crate::kmod::KernelModules;
use crate::rootfs::node_files;
use crate::tree::{Entry, Kind, Tree};

/// The compressed initramfs and what went into it.
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
