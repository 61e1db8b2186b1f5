//! Debian's archive signing keys, embedded in the binary, and verification of
//! clear-signed `InRelease` files against them.
//!
//! Debian signs with subkeys, so a signature's issuer is looked up among the
//! primary keys *and* their subkeys; a subkey is only trusted after its binding
//! signature to the primary (and the subkey's back-signature) verifies, and
//! only if it is signing-capable, not revoked and not expired when it signed.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

/// The archive keyrings shipped in `builder/keys/` (see its README).
const KEYRINGS: &[(&str, &[u8])] = &[
    (
        "debian-archive-trixie-automatic",
        include_bytes!("../../keys/debian-archive-trixie-automatic.gpg"),
    ),
    (
        "debian-archive-trixie-stable",
        include_bytes!("../../keys/debian-archive-trixie-stable.gpg"),
    ),
    (
        "debian-archive-trixie-security-automatic",
        include_bytes!("../../keys/debian-archive-trixie-security-automatic.gpg"),
    ),
    (
        "debian-archive-bookworm-automatic",
        include_bytes!("../../keys/debian-archive-bookworm-automatic.gpg"),
    ),
    (
        "debian-archive-bookworm-stable",
        include_bytes!("../../keys/debian-archive-bookworm-stable.gpg"),
    ),
    (
        "debian-archive-bookworm-security-automatic",
        include_bytes!("../../keys/debian-archive-bookworm-security-automatic.gpg"),
    ),
];

/// Why a clear-signed file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("not a clear-signed OpenPGP message: {0}")]
    Malformed(String),
    #[error("no valid signature from a trusted Debian archive key ({0})")]
    NoValidSignature(String),
}

/// A set of trusted OpenPGP keys.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Debian's archive keys (trixie and bookworm: archive, stable release, security).
    pub fn debian() -> Result<Keyring> {
        let mut keys = Vec::new();
        for (name, bytes) in KEYRINGS {
            keys.extend(Self::parse(bytes).with_context(|| format!("parsing keyring {name}"))?);
        }
        Ok(Keyring { keys })
    }

    /// A keyring from binary OpenPGP key material (a `.gpg` keyring file).
    pub fn from_bytes(bytes: &[u8]) -> Result<Keyring> {
        Ok(Keyring {
            keys: Self::parse(bytes)?,
        })
    }

    fn parse(bytes: &[u8]) -> Result<Vec<SignedPublicKey>> {
        let keys = SignedPublicKey::from_bytes_many(bytes)?
            .collect::<Result<Vec<_>, _>>()
            .context("reading OpenPGP keys")?;
        anyhow::ensure!(!keys.is_empty(), "keyring holds no keys");
        Ok(keys)
    }

    /// Fingerprints of the primary keys, in upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| hex::encode_upper(k.primary_key.fingerprint().as_bytes()))
            .collect()
    }

    /// Verifies a clear-signed message and returns the signed text (LF line
    /// endings, dash-escaping removed) and the fingerprint of the key that
    /// signed it. Only the returned text is covered by the signature: never
    /// parse the input directly.
    pub fn verify_cleartext(&self, armored: &str) -> Result<(String, String), SignatureError> {
        let (msg, _) = CleartextSignedMessage::from_string(armored)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let signed = msg.signed_text();
        let mut problems = Vec::new();
        for sig in msg.signatures() {
            match self.verify_one(sig, signed.as_bytes()) {
                Ok(fpr) => return Ok((signed.replace("\r\n", "\n"), fpr)),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            problems.push("the message carries no signature".into());
        }
        Err(SignatureError::NoValidSignature(problems.join("; ")))
    }

    /// Tries one signature against every matching key or subkey.
    fn verify_one(&self, sig: &Signature, data: &[u8]) -> Result<String, String> {
        let fprs: Vec<Vec<u8>> = sig
            .issuer_fingerprint()
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect();
        let ids: Vec<Vec<u8>> = sig
            .issuer_key_id()
            .iter()
            .map(|k| k.as_ref().to_vec())
            .collect();
        let matches = |k: &dyn KeyDetails| {
            fprs.iter().any(|f| f == k.fingerprint().as_bytes())
                || ids.iter().any(|i| i == k.legacy_key_id().as_ref())
        };
        let issuer = fprs
            .first()
            .or(ids.first())
            .map(hex::encode_upper)
            .unwrap_or_else(|| "unknown issuer".into());
        let signed_at = sig.created().map(SystemTime::from);
        for key in &self.keys {
            let primary_fpr = hex::encode_upper(key.primary_key.fingerprint().as_bytes());
            if matches(&key.primary_key) {
                return sig
                    .verify(&key.primary_key, data)
                    .map(|()| primary_fpr)
                    .map_err(|e| format!("signature by {issuer} does not verify: {e}"));
            }
            for sub in &key.public_subkeys {
                if !matches(&sub.key) {
                    continue;
                }
                sub.verify_bindings(&key.primary_key)
                    .map_err(|e| format!("subkey {issuer} is not bound to its primary: {e}"))?;
                if sub
                    .signatures
                    .iter()
                    .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
                {
                    return Err(format!("subkey {issuer} is revoked"));
                }
                let binding = sub
                    .signatures
                    .iter()
                    .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
                    .max_by_key(|s| s.created().map(|t| t.as_secs()))
                    .ok_or_else(|| format!("subkey {issuer} has no binding signature"))?;
                if !binding.key_flags().sign() {
                    return Err(format!("subkey {issuer} is not a signing key"));
                }
                if let (Some(exp), Some(at)) = (binding.key_expiration_time(), signed_at) {
                    let created = SystemTime::from(sub.key.created_at());
                    if created + Duration::from(exp) < at {
                        return Err(format!("subkey {issuer} had expired when it signed"));
                    }
                }
                return sig
                    .verify(&sub.key, data)
                    .map(|()| primary_fpr)
                    .map_err(|e| format!("signature by subkey {issuer} does not verify: {e}"));
            }
        }
        Err(format!(
            "signature by {issuer}: key not in the trusted keyring"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_keyrings_parse_and_match_the_host_keyrings() {
        let ring = Keyring::debian().unwrap();
        assert!(ring.keys.len() >= 6);
        // The trixie archive key has a signing subkey: that is what signs InRelease.
        assert!(ring.keys.iter().any(|k| !k.public_subkeys.is_empty()));
        // gpg is the oracle for what the shipped files hold.
        let out = std::process::Command::new("gpg")
            .args(["--show-keys", "--with-colons"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/keys/debian-archive-trixie-automatic.gpg"
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let gpg_fpr = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_owned())
            })
            .unwrap();
        assert!(ring.fingerprints().contains(&gpg_fpr), "{gpg_fpr} missing");
    }

    #[test]
    fn garbage_is_not_a_signed_message() {
        let ring = Keyring::debian().unwrap();
        assert!(matches!(
            ring.verify_cleartext("Origin: Debian\n"),
            Err(SignatureError::Malformed(_))
        ));
    }
}
