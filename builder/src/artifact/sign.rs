//! Signed releases: a minisign signature over a build's `SHA256SUMS`
//! (`SHA256SUMS.minisig`), and the check that a folder holds exactly what its
//! signer published.
//!
//! One signature covers every public output because `SHA256SUMS` lists them
//! all with their sha256; the per-node `nodes/` folders (secrets, rendered per
//! node) and `manifest.json` are not listed and so not covered.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use labimg_builder::artifact::sign;
//! let dir = std::path::Path::new("images/proxmox");
//! let key = sign::load_secret_key(std::path::Path::new("keys/labimg.key"))?;
//! sign::sign_sums(dir, &key)?;
//! let public = sign::load_public_key(std::path::Path::new("keys/labimg.pub"))?;
//! let files = sign::verify_dir(dir, &public)?;
//! println!("{} files match the signed SHA256SUMS", files.len());
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::io::{Cursor, IsTerminal, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use minisign::{KeyPair, SecretKeyBox, SignatureBox};
pub use minisign::{PublicKey, SecretKey};

use super::hash_file;

/// The signed file: the build's checksums.
pub const SUMS_FILE: &str = "SHA256SUMS";
/// The detached minisign signature beside it.
pub const SIGNATURE_FILE: &str = "SHA256SUMS.minisig";
/// Environment variable holding the password of an encrypted secret key.
pub const PASSWORD_ENV: &str = "LABIMG_SIGN_PASSWORD";
/// File names `labimg keygen` writes.
pub const SECRET_KEY_FILE: &str = "labimg.key";
/// See [`SECRET_KEY_FILE`].
pub const PUBLIC_KEY_FILE: &str = "labimg.pub";

/// Why a folder is not what its signer published. Callers branch on it: the
/// netboot server refuses the profile and says why, `inspect` fails.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No `SHA256SUMS.minisig` although a public key was given.
    #[error("{0} is missing: the folder is not signed")]
    MissingSignature(PathBuf),
    /// The signature does not verify (other key, edited `SHA256SUMS`, corrupt file).
    #[error("the signature {sig} is not valid for {sums} with key {key_id}: {reason}")]
    BadSignature {
        sig: PathBuf,
        sums: PathBuf,
        key_id: String,
        reason: String,
    },
    /// `SHA256SUMS` could not be read or has a line that is not `<sha256>  <path>`.
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// Files that differ from the signed list (content, missing, or not listed).
    #[error("{} file(s) do not match the signed SHA256SUMS: {}", .0.len(), FileProblem::join(.0))]
    Files(Vec<FileProblem>),
}

/// One file that is not as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Path relative to the folder, as in `SHA256SUMS`.
    pub file: String,
    /// What is wrong, e.g. `sha256 ab12…, signed cd34…`.
    pub problem: String,
}

impl FileProblem {
    fn join(v: &[Self]) -> String {
        v.iter()
            .map(|p| format!("{} ({})", p.file, p.problem))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The signed checksums: relative path → sha256 (hex).
pub type Sums = BTreeMap<String, String>;

/// A key's id as minisign prints it (16 hex digits).
pub fn key_id(pk: &PublicKey) -> String {
    id_hex(pk.keynum())
}

fn id_hex(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    let n = keynum.len().min(8);
    b[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// Reads a public key: a minisign `.pub` file (comment line + base64) or the
/// bare base64 line (`minisign -P` form).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public key {}", path.display()))?;
    let trimmed = text.trim();
    let key = if trimmed.lines().count() == 1 {
        PublicKey::from_base64(trimmed)
    } else {
        PublicKey::from_box(text.clone().into())
    };
    key.with_context(|| format!("parsing minisign public key {}", path.display()))
}

/// Reads a secret key. Unencrypted keys (`minisign -G -W`, `labimg keygen`)
/// load as they are; an encrypted key is decrypted with `$LABIMG_SIGN_PASSWORD`,
/// else with a password typed on the terminal.
pub fn load_secret_key(path: &Path) -> Result<SecretKey> {
    load_secret_key_with(path, std::env::var(PASSWORD_ENV).ok())
}

/// [`load_secret_key`] with the password of an encrypted key given
/// (`None`: typed on the terminal); unencrypted keys ignore it.
pub fn load_secret_key_with(path: &Path, password: Option<String>) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret key {}", path.display()))?;
    let sk_box = SecretKeyBox::from_string(&text)
        .with_context(|| format!("parsing minisign secret key {}", path.display()))?;
    let plain_err = match sk_box.clone().into_unencrypted_secret_key() {
        Ok(sk) => return Ok(sk),
        Err(e) => e,
    };
    if let Some(sk) = unencrypted_without_checksum(&text) {
        return Ok(sk);
    }
    // minisign reports an encrypted key as an I/O-kind error ("key might be
    // encrypted"); anything else (bad checksum) is a broken key, not a password matter.
    if !matches!(plain_err.kind(), minisign::ErrorKind::Io) {
        return Err(anyhow::Error::new(plain_err))
            .with_context(|| format!("loading secret key {}", path.display()));
    }
    let password = match password {
        Some(p) => Some(p),
        None if std::io::stdin().is_terminal() => None, // minisign prompts
        None => bail!(
            "secret key {} is encrypted: set {PASSWORD_ENV} or run on a terminal to type its password",
            path.display()
        ),
    };
    if password.is_none() {
        eprintln!("password for {}:", path.display());
    }
    sk_box
        .into_secret_key(password)
        .with_context(|| format!("decrypting secret key {}", path.display()))
}

/// The reference minisign tool (0.11) writes `-W` keys with an all-zero checksum,
/// which the minisign crate calls corrupted. Such a key is accepted when it is
/// unencrypted and signs something that its own public half verifies, which is
/// what the checksum would have guarded.
fn unencrypted_without_checksum(text: &str) -> Option<SecretKey> {
    use base64::Engine;
    let line = text.lines().nth(1)?.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    let sk = SecretKey::from_bytes(&bytes).ok()?;
    if sk.is_encrypted() {
        return None;
    }
    let pk = PublicKey::from_secret_key(&sk).ok()?;
    minisign::sign(Some(&pk), &sk, Cursor::new(b"probe"), None, None).ok()?;
    Some(sk)
}

/// Where [`generate_keypair`] wrote the keys.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The secret key (mode 0600).
    pub secret: PathBuf,
    /// The public key to give `inspect --public-key` and `serve --public-key`.
    pub public: PathBuf,
    /// The key id.
    pub id: String,
}

/// How [`generate_keypair`] protects the secret key.
#[derive(Debug, Clone)]
pub enum KeyProtection {
    /// Unencrypted (`minisign -G -W`): for unattended builds; protect the file instead.
    None,
    /// Encrypted with this password (scrypt, as minisign does).
    Password(String),
    /// Encrypted with a password typed twice on the terminal (not echoed).
    Prompt,
}

/// Creates `labimg.key` and `labimg.pub` in `dir`, never overwriting a key.
pub fn generate_keypair(dir: &Path, protection: KeyProtection) -> Result<KeyFiles> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    for p in [&secret, &public] {
        if p.exists() {
            bail!("{} exists: not overwriting a key", p.display());
        }
    }
    let KeyPair { pk, sk } = match protection {
        KeyProtection::None => KeyPair::generate_unencrypted_keypair(),
        KeyProtection::Password(p) => KeyPair::generate_encrypted_keypair(Some(p)),
        KeyProtection::Prompt => KeyPair::generate_encrypted_keypair(None),
    }
    .context("generating a minisign key pair")?;
    let id = key_id(&pk);
    let comment = format!("labimg secret key {id}");
    let sk_text = sk.to_box(Some(&comment))?.into_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("creating {}", secret.display()))?;
    f.write_all(sk_text.as_bytes())
        .with_context(|| format!("writing {}", secret.display()))?;
    std::fs::write(&public, pk.to_box()?.into_string())
        .with_context(|| format!("writing {}", public.display()))?;
    Ok(KeyFiles { secret, public, id })
}

/// Signs `<dir>/SHA256SUMS`, writing `<dir>/SHA256SUMS.minisig` (replaced
/// atomically). Returns the signature's path.
pub fn sign_sums(dir: &Path, sk: &SecretKey) -> Result<PathBuf> {
    let sums_path = dir.join(SUMS_FILE);
    let sums =
        std::fs::read(&sums_path).with_context(|| format!("reading {}", sums_path.display()))?;
    let pk = PublicKey::from_secret_key(sk).context("deriving the public key")?;
    // The trusted comment is signed too; it carries no timestamp so the
    // signature says only what the checksums say.
    let trusted = format!("labimg {SUMS_FILE}, key {}", key_id(&pk));
    let sig = minisign::sign(
        Some(&pk),
        sk,
        Cursor::new(&sums),
        Some(&trusted),
        Some("labimg signature over SHA256SUMS"),
    )
    .with_context(|| format!("signing {}", sums_path.display()))?;
    let out = dir.join(SIGNATURE_FILE);
    let tmp = dir.join(format!(".{SIGNATURE_FILE}.tmp"));
    std::fs::write(&tmp, sig.into_string())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(out)
}

/// Loads the secret key at `key` and signs `dir` with it.
pub fn sign_dir(dir: &Path, key: &Path) -> Result<PathBuf> {
    sign_sums(dir, &load_secret_key(key)?)
}

/// Checks `<dir>/SHA256SUMS.minisig` against `pk` and returns the signed
/// checksums. Hashes no files: see [`verify_dir`] and [`check_file`].
pub fn verify_signature(dir: &Path, pk: &PublicKey) -> Result<Sums, VerifyError> {
    let sums_path = dir.join(SUMS_FILE);
    let sig_path = dir.join(SIGNATURE_FILE);
    let unreadable = |path: &Path, e: &dyn std::fmt::Display| VerifyError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let sig_text = match std::fs::read_to_string(&sig_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VerifyError::MissingSignature(sig_path));
        }
        Err(e) => return Err(unreadable(&sig_path, &e)),
    };
    let sums = std::fs::read(&sums_path).map_err(|e| unreadable(&sums_path, &e))?;
    let bad = |reason: String| VerifyError::BadSignature {
        sig: sig_path.clone(),
        sums: sums_path.clone(),
        key_id: key_id(pk),
        reason,
    };
    let sig = SignatureBox::from_string(&sig_text).map_err(|e| bad(e.to_string()))?;
    if sig.keynum() != pk.keynum() {
        return Err(bad(format!("it was made by key {}", id_hex(sig.keynum()))));
    }
    minisign::verify(pk, &sig, Cursor::new(&sums), true, false, false)
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(sums).map_err(|e| unreadable(&sums_path, &e))?;
    parse_sums(&text).map_err(|reason| VerifyError::Unreadable {
        path: sums_path,
        reason,
    })
}

/// Parses sha256sum's format, refusing anything that could point outside the folder.
pub fn parse_sums(text: &str) -> Result<Sums, String> {
    let mut sums = Sums::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let Some((sha, file)) = line.split_once("  ") else {
            return Err(format!("line {}: not `<sha256>  <path>`", n + 1));
        };
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {}: {sha:?} is not a sha256", n + 1));
        }
        let rel = Path::new(file);
        if file.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!(
                "line {}: {file:?} is not a path inside the folder",
                n + 1
            ));
        }
        sums.insert(file.to_owned(), sha.to_ascii_lowercase());
    }
    Ok(sums)
}

/// Hashes `<dir>/<file>` and compares it with `want`.
pub fn check_file(dir: &Path, file: &str, want: &str) -> Result<u64, FileProblem> {
    match hash_file(&dir.join(file)) {
        Ok((got, size)) if got == want => Ok(size),
        Ok((got, _)) => Err(FileProblem {
            file: file.to_owned(),
            problem: format!("sha256 {got}, signed {want}"),
        }),
        Err(e) => Err(FileProblem {
            file: file.to_owned(),
            problem: format!("{:#}", e),
        }),
    }
}

/// A file that matched the signed checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFile {
    /// Path relative to the folder.
    pub file: String,
    /// Its sha256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Verifies the signature, then every file `SHA256SUMS` lists. Every
/// mismatching or unreadable file is reported, not just the first.
pub fn verify_dir(dir: &Path, pk: &PublicKey) -> Result<Vec<VerifiedFile>, VerifyError> {
    let sums = verify_signature(dir, pk)?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (file, sha) in &sums {
        match check_file(dir, file, sha) {
            Ok(size) => ok.push(VerifiedFile {
                file: file.clone(),
                sha256: sha.clone(),
                size,
            }),
            Err(p) => bad.push(p),
        }
    }
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(VerifyError::Files(bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sums_refuses_paths_leading_out() {
        let sha = "a".repeat(64);
        assert!(parse_sums(&format!("{sha}  netboot/vmlinuz\n")).is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "netboot/../../x", "./x"] {
            assert!(parse_sums(&format!("{sha}  {bad}\n")).is_err(), "{bad}");
        }
        assert!(parse_sums("abc  x\n").is_err());
        assert!(parse_sums(&format!("{sha} x\n")).is_err());
    }
}
