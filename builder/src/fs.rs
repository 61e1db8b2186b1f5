//! Filesystem writers: a staging [`Tree`](crate::tree::Tree) in, an image out.
//!
//! Each writer is pure (no root, no loop devices, no mounts) and deterministic:
//! the same tree gives the same bytes. Files are written under a temporary name
//! next to the destination and renamed at the end ([`write_atomic`]), so a failed
//! build never leaves a partial file under the final name.

pub mod cpio;
pub mod fat;
pub mod squashfs;

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};

/// Creates `dst` atomically: `fill` writes into a temporary file in the same
/// directory, which is renamed to `dst` only when `fill` succeeds.
pub fn write_atomic<T>(dst: &Path, fill: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".labimg-tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let value = fill(tmp.as_file_mut())?;
    // Temporary files are created 0600; outputs get the usual 0644.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("setting permissions on {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(dst)
        .with_context(|| format!("renaming into {}", dst.display()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failure_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.img");
        let r: Result<()> = write_atomic(&dst, |f| {
            f.write_all(b"partial")?;
            anyhow::bail!("boom")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&dst, |f| Ok(f.write_all(b"whole")?)).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"whole");
    }
}
