//! Step 7: `manifest.json` and `SHA256SUMS` — every input with its version
//! and sha256, every output with its sha256, and the kernel command lines.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifact::hash_file;
use crate::debian::{Release, Resolution};

/// One output file, relative to the output directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Where the image's k3s comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sInfo {
    pub version: String,
    /// The pinned sha256 from the profile for this architecture.
    pub pinned_sha256: Option<String>,
    /// `baked` (in the root image) or `first-boot` (downloaded by the node).
    pub source: String,
    /// sha256 of the baked binary, when baked.
    pub baked_sha256: Option<String>,
    /// False when the baked binary is not the pinned release (a stand-in).
    pub matches_pin: Option<bool>,
}

/// `manifest.json`: written by the build, read by `labimg inspect` and the tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub labimg_version: String,
    pub profile: String,
    pub board: String,
    pub arch: String,
    /// Every timestamp of the build (seconds since 1970), which nodes compare
    /// to refuse older upgrade bundles.
    pub source_date_epoch: u64,
    /// Where `source_date_epoch` came from: `SOURCE_DATE_EPOCH`, or
    /// `InRelease <suite> Date` (the newest signed `InRelease` the build read).
    /// Empty in manifests written before it was recorded.
    #[serde(default)]
    pub epoch_source: String,
    pub kernel_version: String,
    /// Kernel command line per root slot.
    pub cmdline: BTreeMap<String, String>,
    pub initramfs_modules: Vec<String>,
    /// The loadable modules in the root image (`kernel.module-set`). Absent in
    /// manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_modules: Option<RootModules>,
    pub root_image: OutputFile,
    /// dm-verity parameters of the root image (also on the command lines).
    pub root_verity: crate::verity::Verity,
    pub k3s: K3sInfo,
    pub nodes: Vec<String>,
    /// The signed `InRelease` of each suite the build read, and how its
    /// `Valid-Until` was checked. Empty in manifests written before it was recorded.
    #[serde(default)]
    pub releases: Vec<ReleaseRecord>,
    pub inputs: ManifestInputs,
    pub outputs: Vec<OutputFile>,
    /// With `secure-boot.enabled`: the EFI stub the Unified Kernel Images are built
    /// from and the certificate systemd-boot and the UKIs are signed with. Absent
    /// otherwise (and in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootRecord>,
}

/// What `manifest.json` says about the root image's kernel modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RootModules {
    /// `kernel.module-set`: `full` or `node`.
    pub set: String,
    /// How many loadable modules the root image holds.
    pub count: usize,
    /// Their bytes as stored: those stage 2 loads at every boot uncompressed, the
    /// others compressed, as the kernel package ships them.
    pub bytes: u64,
    /// How many of the kernel package's modules the set left out.
    pub dropped: usize,
}

/// What `manifest.json` says about a Secure Boot build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SecureBootRecord {
    /// systemd's EFI stub (`linuxx64.efi.stub`), with its Debian package.
    pub stub: StubRecord,
    /// The db certificate: subject and SHA-256 fingerprint of its DER form.
    pub signing_cert_subject: String,
    pub signing_cert_sha256: String,
}

/// The EFI stub a UKI starts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StubRecord {
    /// Its path in the package (`usr/lib/systemd/boot/efi/linuxx64.efi.stub`).
    pub path: String,
    /// The Debian package and version it comes from (`systemd-boot-efi`).
    pub package: String,
    pub version: String,
    /// sha256 of the stub file itself.
    pub sha256: String,
}

/// One suite's verified `InRelease`, as `manifest.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReleaseRecord {
    /// The suite as the profile names it (`trixie-backports`).
    pub suite: String,
    pub codename: String,
    /// `Date`, seconds since 1970.
    pub date: Option<u64>,
    /// `Valid-Until`, seconds since 1970 (stable releases have none).
    pub valid_until: Option<u64>,
    /// `enforced` (refused once past), or `skipped` (accepted on its
    /// signature alone, see `valid_until_skipped_because`).
    pub valid_until_check: String,
    /// Why the check was skipped; absent when it was enforced. Whether the
    /// release had expired when the build read it is in the build's log
    /// (manifest.json stays reproducible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until_skipped_because: Option<String>,
}

impl ReleaseRecord {
    /// The record of `release`, read for `suite` (see [`Release::valid_until_skipped`]).
    pub fn new(suite: &str, release: &Release) -> ReleaseRecord {
        // Only facts of the signed release and the profile: how long ago it
        // expired depends on when the build ran, and manifest.json must not
        // (the build log's warning says it).
        let because = release.valid_until_skipped.map(|_| {
            "the profile sets debian.check-valid-until = false (apt's Check-Valid-Until=no): \
             accepted on its signature even past Valid-Until"
                .to_owned()
        });
        ReleaseRecord {
            suite: suite.to_owned(),
            codename: release.codename.clone(),
            date: release.date,
            valid_until: release.valid_until,
            valid_until_check: if because.is_some() {
                "skipped"
            } else {
                "enforced"
            }
            .to_owned(),
            valid_until_skipped_because: because,
        }
    }
}

/// The Debian packages of each part of the image, as resolved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestInputs {
    pub kernel: Resolution,
    pub root: Resolution,
    pub boot: Resolution,
}

impl Manifest {
    /// Reads and parses `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Hashes every public output under `dir` (sorted), skipping the private
/// per-node directory and the files this step writes.
pub fn hash_outputs(dir: &Path) -> Result<Vec<OutputFile>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<OutputFile>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
        if rel == "nodes" || rel == "SHA256SUMS" || rel == "manifest.json" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else {
            let (sha256, size) = hash_file(&path)?;
            out.push(OutputFile {
                path: rel,
                size,
                sha256,
            });
        }
    }
    Ok(())
}

/// Writes `SHA256SUMS` (sha256sum's format) and `manifest.json`.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_string_pretty(manifest)? + "\n";
    std::fs::write(dir.join("manifest.json"), &json).context("writing manifest.json")?;
    // The manifest is listed last: it lists every other output, and a signature
    // over SHA256SUMS then vouches for the manifest too.
    let mut sums: String = manifest
        .outputs
        .iter()
        .map(|o| format!("{}  {}\n", o.sha256, o.path))
        .collect();
    sums.push_str(&format!(
        "{}  manifest.json\n",
        hex::encode(Sha256::digest(json.as_bytes()))
    ));
    std::fs::write(dir.join("SHA256SUMS"), sums).context("writing SHA256SUMS")?;
    Ok(())
}
