//! Build-time resolution of the profile's secrets (k3s token, Git credentials,
//! SOPS age key), done only when a file that holds them is actually rendered.
//!
//! Sources: `{ file = "…" }` (relative to [`RenderOptions::base_dir`]),
//! `{ env = "VAR" }`, and `{ sops-file = "…" }`, which is decrypted with
//! `sops --decrypt` when the `sops` binary is on `PATH` (with its key material,
//! for example `SOPS_AGE_KEY_FILE`, in the environment as sops expects). The
//! decrypted document is used whole, unless it is a YAML mapping with a single
//! string value (`token: …`), in which case that value is the secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::profile::SecretSource;

use super::RenderOptions;

/// Reads one secret; `what` names the profile key for error messages.
pub fn resolve(src: &SecretSource, opts: &RenderOptions, what: &str) -> Result<String> {
    let value = match src {
        SecretSource::File(p) => {
            let path = opts.base_dir.join(p);
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {what} from {}", path.display()))?
        }
        SecretSource::Env(var) => std::env::var(var)
            .with_context(|| format!("reading {what}: environment variable {var} is not set"))?,
        SecretSource::SopsFile(p) => sops_decrypt(&opts.base_dir.join(p))
            .with_context(|| format!("reading {what} from {}", p.display()))?,
    };
    if value.trim().is_empty() {
        bail!("{what} is empty");
    }
    Ok(value)
}

/// A one-line secret (a token): surrounding whitespace removed.
pub fn resolve_line(src: &SecretSource, opts: &RenderOptions, what: &str) -> Result<String> {
    Ok(resolve(src, opts, what)?.trim().to_owned())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn sops_decrypt(path: &Path) -> Result<String> {
    let Some(sops) = find_on_path("sops") else {
        bail!("sops-file secrets need the `sops` binary on PATH (or use file/env secrets)");
    };
    let out = Command::new(&sops)
        .arg("--decrypt")
        .arg(path)
        .output()
        .with_context(|| format!("running {} --decrypt {}", sops.display(), path.display()))?;
    if !out.status.success() {
        bail!(
            "`{} --decrypt {}` failed ({}): {}",
            sops.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("sops output is not UTF-8")?;
    Ok(single_value(&text).unwrap_or(text))
}

/// The value of a one-entry YAML mapping whose value is a string.
fn single_value(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let map = v.as_object()?;
    match map.values().collect::<Vec<_>>().as_slice() {
        [serde_json::Value::String(s)] => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_value_documents() {
        assert_eq!(single_value("token: abc\n").as_deref(), Some("abc"));
        assert_eq!(single_value("a: 1\nb: 2\n"), None);
        assert_eq!(single_value("-----BEGIN KEY-----"), None);
    }
}
