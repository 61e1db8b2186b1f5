//! What a TFTP name maps to: the iPXE binaries, and the Raspberry Pi's per-serial
//! directory (`<serial>/config.txt`, a generated `cmdline.txt`, kernel, initramfs,
//! dtbs, overlays). Nothing outside those roots is ever reachable.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use super::packet::{E_ACCESS, E_NOT_FOUND};
use crate::Shared;
use crate::boot;

/// Bytes to send.
#[derive(Debug)]
pub enum Source {
    /// Generated in memory.
    Mem(Vec<u8>),
    /// A file on disk and its length.
    File(File, u64),
}

impl Source {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Source::Mem(v) => v.len() as u64,
            Source::File(_, n) => *n,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        match self {
            Source::Mem(v) => {
                let start = (offset as usize).min(v.len());
                let n = buf.len().min(v.len() - start);
                buf[..n].copy_from_slice(&v[start..start + n]);
                Ok(n)
            }
            Source::File(f, len) => {
                let want = buf.len().min(len.saturating_sub(offset) as usize);
                let mut done = 0;
                while done < want {
                    let n = f.read_at(&mut buf[done..want], offset + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok(done)
            }
        }
    }
}

/// A refusal: TFTP error code and message.
pub type Refusal = (u16, String);

fn not_found(name: &str) -> Refusal {
    (E_NOT_FOUND, format!("{name}: not found"))
}

/// Opens `rel` under `root`, refusing anything whose real path leaves `root`.
fn open_under(root: &Path, rel: &Path, name: &str) -> Result<Source, Refusal> {
    let root = root.canonicalize().map_err(|_| not_found(name))?;
    let real = root.join(rel).canonicalize().map_err(|_| not_found(name))?;
    if !real.starts_with(&root) {
        return Err((E_ACCESS, format!("{name}: outside the TFTP root")));
    }
    let f = File::open(&real).map_err(|_| not_found(name))?;
    let meta = f.metadata().map_err(|_| not_found(name))?;
    if !meta.is_file() {
        return Err(not_found(name));
    }
    Ok(Source::File(f, meta.len()))
}

fn is_serial(s: &str) -> bool {
    s.len() == 8 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Resolves a requested name.
pub fn resolve(shared: &Shared, name: &str) -> Result<Source, Refusal> {
    let p = Path::new(name);
    let parts: Vec<&str> = p
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().ok_or(()),
            _ => Err(()),
        })
        .collect::<Result<_, _>>()
        .map_err(|_| {
            (
                E_ACCESS,
                format!("{name}: only relative paths without '..' are served"),
            )
        })?;
    if name.contains('\\') || parts.is_empty() {
        return Err((E_ACCESS, format!("{name}: invalid name")));
    }
    if parts.len() == 1 {
        let ipxe = &shared.cfg.ipxe_dir;
        return open_under(ipxe, Path::new(parts[0]), name).or_else(|e| match parts[0] {
            "ipxe.efi" => open_under(ipxe, Path::new("ipxe-amd64.efi"), name),
            _ => Err(e),
        });
    }
    if !is_serial(parts[0]) {
        return Err(not_found(name));
    }
    let serial = parts[0].to_ascii_lowercase();
    let decision = shared.inventory().decide(None, Some(&serial));
    let target = boot::target(shared, &decision, None)
        .map_err(|e| (E_NOT_FOUND, format!("{name}: {e:#}")))?
        .ok_or_else(|| not_found(name))?;
    let rest: PathBuf = parts[1..].iter().collect();
    if let (2, Some(milestone)) = (parts.len(), crate::timeline::file_milestone(parts[1])) {
        shared.timeline.mark_serial(&serial, milestone);
    }
    if rest == Path::new("cmdline.txt") {
        return Ok(Source::Mem(
            format!("{}\n", boot::kernel_cmdline(shared, &target)).into_bytes(),
        ));
    }
    let netboot = shared
        .cfg
        .images
        .netboot_dir(&target.profile)
        .map_err(|_| not_found(name))?;
    match open_under(&netboot.join("rpi"), &rest, name) {
        Err((E_NOT_FOUND, _))
            if rest == Path::new(&target.info.kernel) || rest == Path::new(&target.info.initrd) =>
        {
            open_under(&netboot, &rest, name)
        }
        other => other,
    }
}
