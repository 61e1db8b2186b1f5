//! What `--json` prints: one JSON document per command, with the fields the
//! README's "Scripting" section lists. Field names are snake_case and stable;
//! new fields may be added.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::build::BuildResult;
use crate::manifest::{K3sInfo, Manifest, OutputFile};
use crate::profile::Problem;

/// `labimg build --json`: one object once the build has succeeded.
#[derive(Debug, Serialize)]
pub struct BuildSummary<'a> {
    pub profile: &'a str,
    pub board: &'a str,
    pub arch: &'a str,
    /// The published output folder.
    pub out_dir: String,
    pub kernel_version: &'a str,
    pub k3s: &'a K3sInfo,
    pub source_date_epoch: u64,
    /// dm-verity root hash of the root image (also on the kernel command lines).
    pub root_hash: &'a str,
    /// Wall-clock seconds the build took.
    pub seconds: f64,
    /// Every public output (as in SHA256SUMS, without manifest.json).
    pub outputs: &'a [OutputFile],
}

impl<'a> BuildSummary<'a> {
    /// The summary of `result`, whose folder holds `manifest`.
    pub fn new(manifest: &'a Manifest, result: &'a BuildResult, took: Duration) -> Self {
        BuildSummary {
            profile: &manifest.profile,
            board: &manifest.board,
            arch: &manifest.arch,
            out_dir: result.out_dir.display().to_string(),
            kernel_version: &manifest.kernel_version,
            k3s: &manifest.k3s,
            source_date_epoch: manifest.source_date_epoch,
            root_hash: &manifest.root_verity.root_hash,
            seconds: (took.as_secs_f64() * 10.0).round() / 10.0,
            outputs: &result.outputs,
        }
    }
}

/// `labimg inspect --json`.
#[derive(Debug, Serialize)]
pub struct Inspection<'a> {
    pub profile: &'a str,
    pub board: &'a str,
    pub arch: &'a str,
    pub labimg_version: &'a str,
    pub kernel_version: &'a str,
    pub source_date_epoch: u64,
    pub k3s: &'a K3sInfo,
    pub root_image: &'a OutputFile,
    pub root_hash: &'a str,
    /// Kernel command line per root slot (`a`, `b`).
    pub cmdline: &'a BTreeMap<String, String>,
    /// Number of Debian packages per part: `kernel`, `root`, `boot`.
    pub packages: BTreeMap<&'static str, usize>,
    /// The SPDX file, when the folder has one.
    pub sbom: Option<String>,
    /// Present when `--public-key` was given and the signature is valid.
    pub signature: Option<Signature>,
    /// Each line of SHA256SUMS and whether the file matches it.
    pub files: Vec<FileCheck>,
    /// Every file matches (the command then exits 0; else 4).
    pub ok: bool,
}

impl<'a> Inspection<'a> {
    /// The manifest's part of the report; the checks are filled in by `inspect`.
    pub fn new(m: &'a Manifest, sbom: Option<&Path>) -> Self {
        Inspection {
            profile: &m.profile,
            board: &m.board,
            arch: &m.arch,
            labimg_version: &m.labimg_version,
            kernel_version: &m.kernel_version,
            source_date_epoch: m.source_date_epoch,
            k3s: &m.k3s,
            root_image: &m.root_image,
            root_hash: &m.root_verity.root_hash,
            cmdline: &m.cmdline,
            packages: BTreeMap::from([
                ("kernel", m.inputs.kernel.packages.len()),
                ("root", m.inputs.root.packages.len()),
                ("boot", m.inputs.boot.packages.len()),
            ]),
            sbom: sbom.map(|p| p.display().to_string()),
            signature: None,
            files: Vec::new(),
            ok: false,
        }
    }
}

/// A valid minisign signature over SHA256SUMS.
#[derive(Debug, Serialize)]
pub struct Signature {
    pub key_id: String,
}

/// One SHA256SUMS line, checked.
#[derive(Debug, Serialize)]
pub struct FileCheck {
    pub path: String,
    pub sha256: String,
    pub ok: bool,
}

/// `labimg profile list --json`: one entry per profile.
#[derive(Debug, Serialize)]
pub struct ListedProfile {
    pub name: String,
    pub description: String,
    pub path: String,
}

/// `labimg profile validate --json`.
#[derive(Debug, Serialize)]
pub struct Validation {
    /// Every profile is valid (the command then exits 0; else 3).
    pub ok: bool,
    pub profiles: Vec<ValidatedProfile>,
}

/// One profile checked by `validate`.
#[derive(Debug, Serialize)]
pub struct ValidatedProfile {
    /// As given on the command line.
    pub profile: String,
    pub path: String,
    pub ok: bool,
    pub problems: Vec<ProblemJson>,
}

/// One validation problem, where it is and what is wrong.
#[derive(Debug, Serialize)]
pub struct ProblemJson {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path (`k3s.version`, `nodes[2].mac`); empty for the whole file.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl From<&Problem> for ProblemJson {
    fn from(p: &Problem) -> Self {
        ProblemJson {
            file: p.location.file.clone(),
            line: p.location.line,
            column: p.location.column,
            key: p.path.clone(),
            message: p.message.clone(),
            hint: p.hint.clone(),
        }
    }
}
