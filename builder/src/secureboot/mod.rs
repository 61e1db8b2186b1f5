//! Secure Boot: the key set (PK, KEK, db), the files firmware enrols them from
//! (EFI signature lists, time-based authenticated variables, DER certificates), and
//! Authenticode signing and checking of EFI binaries. Pure Rust (`rsa`, `sha2`,
//! hand-written DER); `sbverify`, `cert-to-efi-sig-list`, `sign-efi-sig-list` and
//! `openssl` are only the tests' oracles. README.md next to this file says how to
//! enrol the keys.

pub mod authenticode;
mod der;
pub mod esl;
mod keys;
mod pkcs7;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub use self::authenticode::{VerifyError, sign_pe, verify_pe};
pub use self::esl::{Guid, Var};
pub use self::keys::{KEY_BITS, Signer};

/// The files of a key set, per variable: `<name>.<ext>`.
pub const KEY_SET_EXTENSIONS: [&str; 5] = ["key", "crt", "cer", "esl", "auth"];
/// The file holding the owner GUID of every signature list entry.
pub const GUID_FILE: &str = "GUID";
/// The enrolment notes written next to the keys.
pub const ENROLL_FILE: &str = "ENROLL.md";
/// Default common-name prefix of new certificates (`<prefix> PK`, …).
pub const DEFAULT_NAME: &str = "labimg";

/// The db signer of a key folder: `dir/db.crt` and `dir/db.key` (what a build
/// needs; PK and KEK stay offline).
pub fn load_db(dir: &Path) -> Result<Signer> {
    Signer::load(&dir.join("db.crt"), &dir.join("db.key"))
        .with_context(|| format!("loading the Secure Boot db key from {}", dir.display()))
}

/// Reads a certificate file, PEM or DER, as DER.
pub fn read_cert(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    keys::cert_from_bytes(&bytes)
        .with_context(|| format!("{} is not an X.509 certificate", path.display()))
}

/// A certificate's subject (`CN=…`) and SHA-256 fingerprint (lower-case hex), for
/// messages and manifests.
pub fn describe_cert(cert_der: &[u8]) -> Result<(String, String)> {
    let c = keys::Cert::parse(cert_der)?;
    Ok((c.subject(), hex::encode(Sha256::digest(cert_der))))
}

/// What [`keygen`] wrote.
#[derive(Debug)]
pub struct KeySet {
    pub dir: PathBuf,
    /// Owner GUID of the signature list entries.
    pub owner: Guid,
    /// Timestamp of the authenticated variables (Unix seconds).
    pub epoch: u64,
    /// (variable, certificate subject, certificate SHA-256 fingerprint).
    pub certs: Vec<(Var, String, String)>,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
}

/// Makes a new key set in `dir` (created if missing): for PK, KEK and db an
/// RSA-2048 key (`.key`, PEM PKCS#8, mode 0600), a self-signed certificate
/// (`.crt` PEM, `.cer` DER) with subject `CN=<name> <var>`, its signature list
/// (`.esl`) and a time-based authenticated write of it (`.auth`: PK signed by PK,
/// KEK by PK, db by KEK) stamped `epoch`; plus [`GUID_FILE`] and
/// [`ENROLL_FILE`]. Refuses when any of these files exists.
pub fn keygen(dir: &Path, name: &str, epoch: u64) -> Result<KeySet> {
    let vars = [Var::Pk, Var::Kek, Var::Db];
    let mut paths: Vec<PathBuf> = vars
        .iter()
        .flat_map(|v| KEY_SET_EXTENSIONS.map(|e| dir.join(format!("{}.{e}", v.name()))))
        .collect();
    paths.push(dir.join(GUID_FILE));
    paths.push(dir.join(ENROLL_FILE));
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists: refusing to overwrite a key set (move it away or pick another folder)",
            p.display()
        );
    }
    if name.trim().is_empty() {
        bail!("the certificate name prefix is empty");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let owner = Guid::random();
    let signers: Vec<Signer> = vars
        .iter()
        .map(|v| {
            keys::self_signed(
                keys::generate_key()?,
                &format!("{name} {}", v.name()),
                epoch,
            )
        })
        .collect::<Result<_>>()?;
    let mut files = Vec::new();
    let mut write = |file: &str, data: &[u8], mode: u32| -> Result<()> {
        let path = dir.join(file);
        write_new(&path, data, mode)?;
        files.push(path);
        Ok(())
    };
    let mut certs = Vec::new();
    for (var, signer) in vars.iter().zip(&signers) {
        let n = var.name();
        let esl = esl::x509_signature_list(owner, &signer.cert_der);
        // PK signs itself and KEK; KEK signs db.
        let auth_signer = match var {
            Var::Pk | Var::Kek => &signers[0],
            Var::Db => &signers[1],
        };
        let auth = esl::authenticated_write(*var, &esl, epoch, auth_signer)?;
        write(&format!("{n}.key"), signer.key_pem()?.as_bytes(), 0o600)?;
        write(
            &format!("{n}.crt"),
            keys::cert_pem(&signer.cert_der)?.as_bytes(),
            0o644,
        )?;
        write(&format!("{n}.cer"), &signer.cert_der, 0o644)?;
        write(&format!("{n}.esl"), &esl, 0o644)?;
        write(&format!("{n}.auth"), &auth, 0o644)?;
        let (subject, fp) = describe_cert(&signer.cert_der)?;
        certs.push((*var, subject, fp));
    }
    write(GUID_FILE, format!("{owner}\n").as_bytes(), 0o644)?;
    write(ENROLL_FILE, enroll_notes(owner).as_bytes(), 0o644)?;
    Ok(KeySet {
        dir: dir.to_owned(),
        owner,
        epoch,
        certs,
        files,
    })
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn enroll_notes(owner: Guid) -> String {
    format!(
        "# labimg Secure Boot keys\n\
\n\
Owner GUID: {owner}\n\
\n\
- `db.key` + `db.crt` sign what boots (`labimg build --secure-boot-keys DIR`,\n  \
`labimg secureboot sign`). `PK.key` and `KEK.key` only sign changes to the key\n  \
databases: keep them offline. Anyone with `db.key` can boot their code here.\n\
- Enrol (firmware in setup mode), one of:\n  \
- systemd-boot: a Secure Boot image's ESP carries `loader/keys/auto/{{PK,KEK,db}}.auth`;\n    \
systemd-boot enrols them on the first boot in setup mode (`secure-boot-enroll` in loader.conf).\n  \
- OVMF / Proxmox setup UI (Device Manager > Secure Boot Configuration > Custom\n    \
mode): db.cer, KEK.cer, then PK.cer.\n  \
- Offline into an OVMF vars file:\n    \
`virt-fw-vars --input OVMF_VARS_4M.fd --output vars.fd --set-pk {owner} PK.crt \\\n     \
--add-kek {owner} KEK.crt --add-db {owner} db.crt --secure-boot`\n  \
- From a running Linux in setup mode: `efi-updatevar -f db.auth db`,\n    \
`efi-updatevar -f KEK.auth KEK`, then `efi-updatevar -f PK.auth PK`.\n\
- Proxmox: `qm set <vmid> --bios ovmf --efidisk0 <storage>:1,efitype=4m,pre-enrolled-keys=0`\n  \
(setup mode) and `--tpmstate0 <storage>:1,version=v2.0` for the vTPM.\n\
\n\
See labimg's builder/src/secureboot/README.md for the details.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_refuses_to_overwrite_and_keys_load() {
        let t = tempfile::tempdir().unwrap();
        let ks = keygen(t.path(), "test", 1_795_937_100).unwrap();
        assert_eq!(ks.files.len(), 17);
        let db = load_db(t.path()).unwrap();
        assert_eq!(db.fingerprint_sha256(), ks.certs[2].2);
        assert_eq!(ks.certs[2].1, "CN=test db");
        let err = keygen(t.path(), "test", 0).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join("db.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A key that is not the certificate's is refused.
        let e = Signer::load(&t.path().join("db.crt"), &t.path().join("KEK.key")).unwrap_err();
        assert!(format!("{e:#}").contains("do not belong together"), "{e:#}");
    }
}
