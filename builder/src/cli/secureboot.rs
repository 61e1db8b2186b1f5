//! `labimg secureboot keygen|sign|verify`: make a Secure Boot key set, sign an EFI
//! binary with a db key, check an EFI binary's signature
//! ([`crate::secureboot`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::output::{print_json, stdout};
use crate::secureboot::{self, Signer};

/// `labimg secureboot …`.
#[derive(Debug, clap::Subcommand)]
pub enum SecurebootCommand {
    /// Create a Secure Boot key set (PK, KEK, db) and its enrolment files in a folder.
    ///
    /// Writes {PK,KEK,db}.key (RSA-2048, PEM PKCS#8, mode 0600), .crt (PEM), .cer
    /// (DER), .esl (EFI signature list) and .auth (signed update: PK by PK, KEK by
    /// PK, db by KEK), GUID (the owner GUID) and ENROLL.md. Existing key sets are
    /// never overwritten. The .auth timestamp is SOURCE_DATE_EPOCH, else now.
    Keygen {
        /// Folder for the keys (created if missing).
        dir: PathBuf,
        /// Certificate subject prefix: the subjects are `CN=<NAME> PK`, `… KEK`, `… db`.
        #[arg(long, default_value = secureboot::DEFAULT_NAME)]
        name: String,
    },
    /// Sign an EFI binary (PE/COFF: a UKI, systemd-boot) with a db key (Authenticode, SHA-256).
    ///
    /// The output is the same for the same input and key. A signature already on
    /// the input is replaced.
    Sign {
        #[command(flatten)]
        key: SignerArgs,
        /// The EFI binary to sign.
        input: PathBuf,
        /// Where to write the signed binary (may be the input).
        output: PathBuf,
    },
    /// Check that an EFI binary is signed by a certificate's key and unchanged since.
    ///
    /// Exits 4 with the reason (not signed; changed after signing; signed by another key).
    Verify {
        /// The certificate (PEM or DER), e.g. db.crt.
        #[arg(long, value_name = "CRT")]
        cert: PathBuf,
        /// EFI binaries to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object: {ok, cert_subject, cert_sha256, files: [{file, ok, error}]}.
        #[arg(long)]
        json: bool,
    },
}

/// Which db key signs: a key folder, or a certificate and key pair.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
pub struct SignerArgs {
    /// Key folder from `labimg secureboot keygen` (uses db.crt and db.key).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cert", "key"])]
    pub keys: Option<PathBuf>,
    /// Certificate (PEM or DER) of the signing key; with --key.
    #[arg(long, value_name = "CRT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// RSA private key (PEM PKCS#8 or PKCS#1); with --cert.
    #[arg(long, value_name = "KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl SignerArgs {
    pub fn load(&self) -> Result<Signer> {
        match (&self.keys, &self.cert, &self.key) {
            (Some(dir), _, _) => secureboot::load_db(dir),
            (None, Some(cert), Some(key)) => Signer::load(cert, key),
            _ => anyhow::bail!("give --keys DIR, or --cert CRT and --key KEY"),
        }
    }
}

impl SecurebootCommand {
    pub fn run(&self) -> Result<()> {
        match self {
            Self::Keygen { dir, name } => keygen(dir, name),
            Self::Sign { key, input, output } => sign(&key.load()?, input, output),
            Self::Verify { cert, files, json } => verify(cert, files, *json),
        }
    }
}

fn keygen(dir: &Path, name: &str) -> Result<()> {
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    let ks = secureboot::keygen(dir, name, epoch)?;
    let mut out = stdout();
    writeln!(out, "key set    {}", ks.dir.display())?;
    writeln!(out, "owner GUID {}", ks.owner)?;
    for (var, subject, fp) in &ks.certs {
        writeln!(out, "{:<10} {subject}, sha256 {fp}", var.name())?;
    }
    let d = ks.dir.display();
    writeln!(out)?;
    writeln!(out, "Next:")?;
    writeln!(
        out,
        "  build:  labimg build --profile <p> --secure-boot-keys {d}   (needs only db.crt and db.key)"
    )?;
    writeln!(
        out,
        "  enrol:  firmware in setup mode (Proxmox: qm set <vmid> --efidisk0 <storage>:1,efitype=4m,pre-enrolled-keys=0),"
    )?;
    writeln!(
        out,
        "          then the image's systemd-boot enrols {d}/{{PK,KEK,db}}.auth, or see {d}/{}",
        secureboot::ENROLL_FILE
    )?;
    writeln!(
        out,
        "  keep PK.key and KEK.key offline; db.key signs everything that boots."
    )?;
    Ok(())
}

fn sign(signer: &Signer, input: &Path, output: &Path) -> Result<()> {
    let pe = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let signed =
        secureboot::sign_pe(&pe, signer).with_context(|| format!("signing {}", input.display()))?;
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))
        .with_context(|| format!("writing {}", output.display()))?;
    tmp.write_all(&signed)?;
    // The input's permissions (a temporary file is 0600): an EFI binary is not secret.
    let mode = std::fs::metadata(input).map(|m| m.permissions())?;
    tmp.as_file().set_permissions(mode)?;
    tmp.persist(output)
        .with_context(|| format!("writing {}", output.display()))?;
    let (subject, fp) = secureboot::describe_cert(&signer.cert_der)?;
    writeln!(
        stdout(),
        "signed {} → {} ({subject}, sha256 {fp})",
        input.display(),
        output.display()
    )?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    ok: bool,
    cert_subject: String,
    cert_sha256: String,
    files: Vec<FileVerdict>,
}

#[derive(Debug, Serialize)]
struct FileVerdict {
    file: String,
    ok: bool,
    error: Option<String>,
}

fn verify(cert: &Path, files: &[PathBuf], json: bool) -> Result<()> {
    let cert_der = secureboot::read_cert(cert)?;
    let (subject, fp) = secureboot::describe_cert(&cert_der)?;
    let mut verdicts = Vec::new();
    let mut first_err = None;
    let mut out = stdout();
    for f in files {
        let r = std::fs::read(f)
            .with_context(|| format!("reading {}", f.display()))
            .and_then(|pe| secureboot::verify_pe(&pe, &cert_der))
            .with_context(|| f.display().to_string());
        if !json {
            match &r {
                Ok(()) => writeln!(out, "ok   {} (signed by {subject})", f.display())?,
                Err(e) => writeln!(out, "FAIL {e:#}")?,
            }
        }
        verdicts.push(FileVerdict {
            file: f.display().to_string(),
            ok: r.is_ok(),
            error: r.as_ref().err().map(|e| format!("{e:#}")),
        });
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    let failed = verdicts.iter().filter(|v| !v.ok).count();
    if json {
        print_json(&VerifyReport {
            ok: failed == 0,
            cert_subject: subject,
            cert_sha256: fp,
            files: verdicts,
        })?;
    }
    match first_err {
        None => Ok(()),
        Some(e) if files.len() == 1 => Err(e),
        Some(first) => {
            Err(first.context(format!("{failed} of {} files do not verify", files.len())))
        }
    }
}
