//! RSA-2048 keys and self-signed X.509 v3 certificates: reading the forms users
//! have (PEM or DER certificates; PKCS#8 or PKCS#1 PEM keys) and making new ones.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::der::pem::{self, LineEnding};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::{OsRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use super::der::{self, GENERALIZED_TIME, SEQUENCE, UTC_TIME, ctx, seq, tlv};

pub(crate) const SHA256: &str = "2.16.840.1.101.3.4.2.1";
pub(crate) const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const COMMON_NAME: &str = "2.5.4.3";

/// RSA modulus size for new keys: what OVMF and every firmware accept.
pub const KEY_BITS: usize = 2048;

/// A certificate and its private key: what signs UKIs, boot loaders and
/// authenticated variables.
pub struct Signer {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    key: RsaPrivateKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field(
                "subject",
                &Cert::parse(&self.cert_der).map(|c| c.subject()).ok(),
            )
            .field("fingerprint_sha256", &self.fingerprint_sha256())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads a certificate (PEM or DER) and its RSA private key (PEM PKCS#8
    /// `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; DER PKCS#8 too), and checks that
    /// they belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Signer> {
        let cert_bytes =
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let cert_der = cert_from_bytes(&cert_bytes)
            .with_context(|| format!("{} is not an X.509 certificate", cert.display()))?;
        let key_bytes = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        let key_rsa =
            key_from_bytes(&key_bytes).with_context(|| format!("reading {}", key.display()))?;
        let signer = Signer::new(cert_der, key_rsa)?;
        signer.check_pair().with_context(|| {
            format!(
                "{} and {} do not belong together",
                cert.display(),
                key.display()
            )
        })?;
        Ok(signer)
    }

    pub(crate) fn new(cert_der: Vec<u8>, key: RsaPrivateKey) -> Result<Signer> {
        Ok(Signer { cert_der, key })
    }

    fn check_pair(&self) -> Result<()> {
        let public = Cert::parse(&self.cert_der)?.public_key()?;
        if public != RsaPublicKey::from(&self.key) {
            bail!("the certificate's public key is not the private key's");
        }
        Ok(())
    }

    /// Lower-case hex of SHA-256 over the certificate's DER: the fingerprint
    /// `openssl x509 -fingerprint -sha256` shows (without colons).
    pub fn fingerprint_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// PKCS#1 v1.5 signature (SHA-256) over `data`.
    pub(crate) fn sign_sha256(&self, data: &[u8]) -> Result<Vec<u8>> {
        let digest = Sha256::digest(data);
        self.key
            .sign(Pkcs1v15Sign::new::<Sha256>(), &digest)
            .context("RSA signing")
    }

    pub(crate) fn cert(&self) -> Result<Cert<'_>> {
        Cert::parse(&self.cert_der)
    }

    /// The private key as PEM PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub(crate) fn key_pem(&self) -> Result<String> {
        Ok(self.key.to_pkcs8_pem(LineEnding::LF)?.to_string())
    }
}

/// Accepts a DER certificate or a PEM `CERTIFICATE` block.
pub(crate) fn cert_from_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    let der = if bytes.starts_with(b"-----BEGIN") || !bytes.starts_with(&[SEQUENCE]) {
        let text = std::str::from_utf8(bytes).context("neither DER nor PEM")?;
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .context("no PEM CERTIFICATE block")?;
        let (label, der) = pem::decode_vec(text[start..].trim_end().as_bytes())
            .map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
        if label != "CERTIFICATE" {
            bail!("PEM block is {label}, not CERTIFICATE");
        }
        der
    } else {
        bytes.to_vec()
    };
    Cert::parse(&der)?;
    Ok(der)
}

fn key_from_bytes(bytes: &[u8]) -> Result<RsaPrivateKey> {
    if bytes.starts_with(&[SEQUENCE]) {
        return RsaPrivateKey::from_pkcs8_der(bytes)
            .or_else(|_| RsaPrivateKey::from_pkcs1_der(bytes))
            .map_err(|e| anyhow::anyhow!("not a DER PKCS#8 or PKCS#1 RSA key: {e}"));
    }
    let text = std::str::from_utf8(bytes).context("neither DER nor PEM")?;
    let start = text
        .find("-----BEGIN ")
        .context("no PEM block (expected PRIVATE KEY or RSA PRIVATE KEY)")?;
    let (label, der) = pem::decode_vec(text[start..].trim_end().as_bytes())
        .map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
    match label {
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| {
            anyhow::anyhow!("PKCS#8 key is not an RSA key ({e}); labimg signs with RSA")
        }),
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(&der)
            .map_err(|e| anyhow::anyhow!("bad PKCS#1 RSA key: {e}")),
        "ENCRYPTED PRIVATE KEY" => {
            bail!("the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN.key)")
        }
        "EC PRIVATE KEY" => bail!("EC keys are not supported; labimg signs with RSA"),
        other => bail!("PEM block is {other}, expected PRIVATE KEY or RSA PRIVATE KEY"),
    }
}

/// The parts of an X.509 certificate signing and verifying need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cert<'a> {
    /// The serial number INTEGER, whole encoding.
    pub serial: &'a [u8],
    /// The issuer Name, whole encoding.
    pub issuer: &'a [u8],
    /// The subject Name, whole encoding.
    pub subject_raw: &'a [u8],
    /// SubjectPublicKeyInfo, whole encoding.
    pub spki: &'a [u8],
}

impl<'a> Cert<'a> {
    pub fn parse(der: &'a [u8]) -> Result<Cert<'a>> {
        let (cert, _) = der::expect(der, SEQUENCE)?;
        let (tbs, _) = der::expect(cert.content, SEQUENCE)?;
        let mut fields = der::children(tbs.content)?.into_iter().peekable();
        if fields.peek().is_some_and(|f| f.tag == ctx(0)) {
            fields.next();
        }
        let mut next = || fields.next().context("truncated TBSCertificate");
        let serial = next()?;
        let _sig_alg = next()?;
        let issuer = next()?;
        let _validity = next()?;
        let subject = next()?;
        let spki = next()?;
        if serial.tag != der::INTEGER || issuer.tag != SEQUENCE || subject.tag != SEQUENCE {
            bail!("not an X.509 certificate");
        }
        Ok(Cert {
            serial: serial.raw,
            issuer: issuer.raw,
            subject_raw: subject.raw,
            spki: spki.raw,
        })
    }

    pub fn public_key(&self) -> Result<RsaPublicKey> {
        RsaPublicKey::from_public_key_der(self.spki)
            .map_err(|e| anyhow::anyhow!("the certificate's key is not an RSA key: {e}"))
    }

    /// The subject as `CN=…` (other attributes as their OIDs), for messages.
    pub fn subject(&self) -> String {
        name_to_string(self.subject_raw)
    }
}

fn name_to_string(name: &[u8]) -> String {
    let parse = || -> Result<String> {
        let (seq_, _) = der::expect(name, SEQUENCE)?;
        let mut parts = Vec::new();
        for rdn in der::children(seq_.content)? {
            for atv in der::children(rdn.content)? {
                let kids = der::children(atv.content)?;
                let (k, v) = (
                    kids.first().context("empty")?,
                    kids.get(1).context("empty")?,
                );
                let key = match k.content {
                    [0x55, 4, 3] => "CN".to_owned(),
                    [0x55, 4, 10] => "O".to_owned(),
                    [0x55, 4, 11] => "OU".to_owned(),
                    [0x55, 4, 6] => "C".to_owned(),
                    other => format!("oid:{}", hex::encode(other)),
                };
                let val = if v.tag == 0x1e {
                    // BMPString
                    let units: Vec<u16> = v
                        .content
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                        .collect();
                    String::from_utf16_lossy(&units)
                } else {
                    String::from_utf8_lossy(v.content).into_owned()
                };
                parts.push(format!("{key}={val}"));
            }
        }
        Ok(parts.join(", "))
    };
    parse().unwrap_or_else(|_| "(unreadable name)".to_owned())
}

/// A new RSA-2048 key.
pub(crate) fn generate_key() -> Result<RsaPrivateKey> {
    RsaPrivateKey::new(&mut OsRng, KEY_BITS).context("generating an RSA key")
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// A self-signed X.509 v3 certificate for `key` with subject `CN=<common_name>`,
/// valid from `not_before` (Unix seconds) with no expiry (RFC 5280's
/// 99991231235959Z; firmware does not check dates), shaped like `openssl req
/// -x509`'s default: subject and authority key identifiers, basicConstraints
/// CA:TRUE (critical).
pub(crate) fn self_signed(
    key: RsaPrivateKey,
    common_name: &str,
    not_before: u64,
) -> Result<Signer> {
    let public = RsaPublicKey::from(&key);
    let spki = public
        .to_public_key_der()
        .context("encoding the public key")?
        .into_vec();
    let mut serial = random_bytes::<16>();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let name = seq(&[&der::set_of(vec![seq(&[
        &der::oid(COMMON_NAME),
        &tlv(der::UTF8_STRING, common_name.as_bytes()),
    ])])]);
    let (y, m, d, s) = crate::date::civil(not_before);
    let time = format!(
        "{:02}{m:02}{d:02}{:02}{:02}{:02}Z",
        y % 100,
        s / 3600,
        s / 60 % 60,
        s % 60
    );
    let not_before = if (1950..2050).contains(&y) {
        tlv(UTC_TIME, time.as_bytes())
    } else {
        tlv(GENERALIZED_TIME, format!("{y:04}{}", &time[2..]).as_bytes())
    };
    let validity = seq(&[&not_before, &tlv(GENERALIZED_TIME, b"99991231235959Z")]);
    // Key identifier: the first 20 bytes of SHA-256 over the key's BIT STRING
    // content (RFC 7093 method 1).
    let key_bits = {
        let (s, _) = der::expect(&spki, SEQUENCE)?;
        let kids = der::children(s.content)?;
        kids.get(1).context("SPKI without key")?.content[1..].to_vec()
    };
    let key_id = Sha256::digest(&key_bits)[..20].to_vec();
    let ext = |oid: &str, critical: bool, value: Vec<u8>| {
        let crit: &[u8] = if critical {
            &[der::BOOLEAN, 1, 0xff]
        } else {
            &[]
        };
        seq(&[&der::oid(oid), crit, &tlv(der::OCTET_STRING, &value)])
    };
    let extensions = tlv(
        ctx(3),
        &seq(&[
            &ext("2.5.29.14", false, tlv(der::OCTET_STRING, &key_id)),
            &ext("2.5.29.35", false, seq(&[&tlv(0x80, &key_id)])),
            &ext("2.5.29.19", true, seq(&[&[der::BOOLEAN, 1, 0xff]])),
        ]),
    );
    let sig_alg = der::alg_null(SHA256_WITH_RSA);
    let tbs = seq(&[
        &tlv(ctx(0), &der::uint(&[2])),
        &der::uint(&serial),
        &sig_alg,
        &name,
        &validity,
        &name,
        &spki,
        &extensions,
    ]);
    let signer = Signer::new(Vec::new(), key)?;
    let signature = signer.sign_sha256(&tbs)?;
    let cert_der = seq(&[
        &tbs,
        &sig_alg,
        &tlv(der::BIT_STRING, &[&[0u8][..], &signature].concat()),
    ]);
    debug_assert_eq!(public.size(), KEY_BITS / 8);
    Signer::new(cert_der, signer.key)
}

/// PEM text of a DER certificate.
pub(crate) fn cert_pem(der: &[u8]) -> Result<String> {
    pem::encode_string("CERTIFICATE", LineEnding::LF, der).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Checks `signature` (PKCS#1 v1.5, SHA-256) over `data` with `cert`'s key.
pub(crate) fn verify_sha256(cert: &Cert<'_>, data: &[u8], signature: &[u8]) -> Result<bool> {
    let public = cert.public_key()?;
    let digest = Sha256::digest(data);
    Ok(public
        .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
        .is_ok())
}
