//! Running external host tools (qemu-img, mkfs.*, …) with errors a person can act on.
//!
//! Every external command goes through [`run`], so a failure always names the full
//! command line, its exit status and the end of its stderr, and [`require`] turns
//! a missing tool into "install Debian package X" instead of a bare ENOENT.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// How much of a failing command's stderr goes into the error message.
const STDERR_TAIL_LINES: usize = 20;

/// Debian packages that provide the tools labimg calls, for the "not found" hint.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-img", "qemu-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mke2fs", "e2fsprogs"),
    ("mkfs.erofs", "erofs-utils"),
    ("mksquashfs", "squashfs-tools"),
    ("unsquashfs", "squashfs-tools"),
    ("mkfs.vfat", "dosfstools"),
    ("fsck.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mdir", "mtools"),
    ("sfdisk", "fdisk"),
    ("veritysetup", "cryptsetup-bin"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
];

/// Renders a command the way a person would type it into a shell.
pub fn command_line(cmd: &Command) -> String {
    let mut parts = vec![shell_quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(shell_quote));
    parts.join(" ")
}

fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion with stdout and stderr captured.
///
/// Fails when the command cannot be started or exits non-zero; the error
/// carries the full command line, the exit status and the stderr tail.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = command_line(cmd);
    tracing::debug!(command = %line, "running");
    let out = cmd.output().with_context(|| format!("starting `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
        bail!("`{line}` failed ({}):\n{tail}", out.status);
    }
    Ok(out)
}

/// Finds `tool` on `PATH` (plus the sbin directories, which non-root `PATH`s
/// often lack), or fails naming the Debian package that provides it.
pub fn require(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    let found = std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p));
    match found {
        Some(p) => Ok(p),
        None => {
            let pkg = PACKAGES
                .iter()
                .find(|(t, _)| *t == tool)
                .map_or("that provides it", |(_, p)| p);
            bail!("{tool} not found: install Debian package {pkg}")
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3", "x y"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c 'echo boom >&2; exit 3' 'x y'"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn success_returns_output() {
        let out = run(Command::new("sh").args(["-c", "printf hi"])).unwrap();
        assert_eq!(out.stdout, b"hi");
    }

    #[test]
    fn missing_tool_names_package() {
        assert!(require("sh").is_ok());
        let err = require("definitely-not-a-tool-labimg")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("definitely-not-a-tool-labimg not found"),
            "{err}"
        );
        let err = run(&mut Command::new("definitely-not-a-tool-labimg")).unwrap_err();
        assert!(format!("{err:#}").contains("starting `definitely-not-a-tool-labimg`"));
    }
}
