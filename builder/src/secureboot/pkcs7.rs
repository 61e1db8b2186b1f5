//! PKCS#7 (RFC 2315) SignedData version 1 with one RSA/SHA-256 signer: the
//! envelope of Authenticode signatures and of authenticated EFI variables.

use anyhow::{Context, Result, bail};

use super::der::{self, NULL, OCTET_STRING, SEQUENCE, SET, ctx, seq, tlv};
use super::keys::{Cert, RSA_ENCRYPTION, SHA256, Signer};

pub const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
pub const DATA: &str = "1.2.840.113549.1.7.1";
pub const CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
pub const MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";

/// What a signer signs: either authenticated attributes (signed as a DER SET),
/// or, with none, the bytes themselves.
#[derive(Debug)]
pub enum Signed<'a> {
    /// Attributes, each an encoded `Attribute` SEQUENCE.
    Attributes(Vec<Vec<u8>>),
    /// No authenticated attributes; the signature is over these bytes.
    Bytes(&'a [u8]),
}

/// One `Attribute` with a single value.
pub fn attribute(oid: &str, value: &[u8]) -> Vec<u8> {
    seq(&[&der::oid(oid), &der::set_of(vec![value.to_vec()])])
}

/// The SignedData SEQUENCE (not wrapped in a ContentInfo). `content` is the
/// encapsulated content's DER (placed under `[0]`), or `None` for a detached
/// signature.
pub fn signed_data(
    signer: &Signer,
    content_type: &str,
    content: Option<&[u8]>,
    signed: Signed<'_>,
) -> Result<Vec<u8>> {
    let cert = signer.cert()?;
    let digest_alg = der::alg_null(SHA256);
    let (attrs_field, signature) = match signed {
        Signed::Attributes(attrs) => {
            let set = der::set_of(attrs);
            let sig = signer.sign_sha256(&set)?;
            // Stored as [0] IMPLICIT: the same encoding with the tag changed.
            let mut implicit = set;
            implicit[0] = ctx(0);
            (implicit, sig)
        }
        Signed::Bytes(bytes) => (Vec::new(), signer.sign_sha256(bytes)?),
    };
    let signer_info = seq(&[
        &der::uint(&[1]),
        &seq(&[cert.issuer, cert.serial]),
        &digest_alg,
        &attrs_field,
        &der::alg_null(RSA_ENCRYPTION),
        &tlv(OCTET_STRING, &signature),
    ]);
    let encap = match content {
        Some(c) => seq(&[&der::oid(content_type), &tlv(ctx(0), c)]),
        None => seq(&[&der::oid(content_type)]),
    };
    Ok(seq(&[
        &der::uint(&[1]),
        &tlv(SET, &digest_alg),
        &encap,
        &tlv(ctx(0), &signer.cert_der),
        &tlv(SET, &signer_info),
    ]))
}

/// `ContentInfo { signedData, [0] SignedData }`.
pub fn content_info(signed_data: &[u8]) -> Vec<u8> {
    seq(&[&der::oid(SIGNED_DATA), &tlv(ctx(0), signed_data)])
}

/// The parts of a parsed SignedData verification needs.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The encapsulated content type's OID content bytes.
    pub content_type: &'a [u8],
    /// The encapsulated content (inside `[0]`), whole encoding.
    pub content: Option<&'a [u8]>,
    /// Embedded certificates, DER.
    pub certs: Vec<&'a [u8]>,
    pub signers: Vec<SignerInfo<'a>>,
}

#[derive(Debug)]
pub struct SignerInfo<'a> {
    pub issuer: &'a [u8],
    pub serial: &'a [u8],
    pub digest_alg: &'a [u8],
    /// Authenticated attributes as `[0]` (whole encoding), if any.
    pub attrs: Option<&'a [u8]>,
    pub signature: &'a [u8],
}

impl SignerInfo<'_> {
    /// The bytes the signature covers: the attributes re-tagged as SET, or `None`
    /// when there are no attributes (then the content itself is signed).
    pub fn signed_attrs(&self) -> Option<Vec<u8>> {
        self.attrs.map(|a| {
            let mut v = a.to_vec();
            v[0] = SET;
            v
        })
    }

    /// The value of the authenticated attribute `oid_content` (OID body bytes).
    pub fn attr(&self, oid_body: &[u8]) -> Result<Option<&[u8]>> {
        let Some(attrs) = self.attrs else {
            return Ok(None);
        };
        let (a, _) = der::read(attrs)?;
        for attr in der::children(a.content)? {
            let kids = der::children(attr.content)?;
            if kids.first().is_some_and(|k| k.content == oid_body) {
                let set = kids.get(1).context("attribute without values")?;
                let first = der::children(set.content)?;
                return Ok(first.first().map(|v| v.raw));
            }
        }
        Ok(None)
    }
}

/// OID body (content bytes) of a dotted OID.
pub fn oid_body(dotted: &str) -> Vec<u8> {
    der::oid(dotted)[2..].to_vec()
}

/// Parses a ContentInfo(signedData) or a bare SignedData.
pub fn parse(data: &[u8]) -> Result<Parsed<'_>> {
    let (outer, _) = der::expect(data, SEQUENCE)?;
    let kids = der::children(outer.content)?;
    let sd = if kids.first().is_some_and(|k| k.tag == der::OID) {
        if kids[0].content != oid_body(SIGNED_DATA) {
            bail!("PKCS#7 content is not signedData");
        }
        let wrapped = kids.get(1).context("ContentInfo without content")?;
        der::expect(wrapped.content, SEQUENCE)?.0
    } else {
        outer
    };
    let mut it = der::children(sd.content)?.into_iter();
    let mut next = || it.next().context("truncated SignedData");
    let _version = next()?;
    let _digest_algs = next()?;
    let encap = next()?;
    let encap_kids = der::children(encap.content)?;
    let content_type = encap_kids.first().context("empty contentInfo")?.content;
    let content = match encap_kids.get(1) {
        Some(c) if c.tag == ctx(0) => Some(c.content),
        _ => None,
    };
    let mut certs = Vec::new();
    let mut signers = Vec::new();
    for field in it {
        match field.tag {
            t if t == ctx(0) => {
                certs = der::children(field.content)?
                    .iter()
                    .map(|c| c.raw)
                    .collect()
            }
            t if t == ctx(1) => {}
            SET => {
                for si in der::children(field.content)? {
                    let f = der::children(si.content)?;
                    let ias = der::children(f.get(1).context("SignerInfo")?.content)?;
                    let (issuer, serial) = (
                        ias.first().context("issuerAndSerialNumber")?.raw,
                        ias.get(1).context("issuerAndSerialNumber")?.raw,
                    );
                    let digest_alg = f.get(2).context("SignerInfo")?.raw;
                    let mut i = 3;
                    let attrs = match f.get(3) {
                        Some(a) if a.tag == ctx(0) => {
                            i += 1;
                            Some(a.raw)
                        }
                        _ => None,
                    };
                    let sig = f.get(i + 1).context("SignerInfo without signature")?;
                    if sig.tag != OCTET_STRING {
                        bail!("SignerInfo signature is not an OCTET STRING");
                    }
                    signers.push(SignerInfo {
                        issuer,
                        serial,
                        digest_alg,
                        attrs,
                        signature: sig.content,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(Parsed {
        content_type,
        content,
        certs,
        signers,
    })
}

/// The embedded certificate a signer names, if present.
pub fn signer_cert<'a>(p: &Parsed<'a>, si: &SignerInfo<'_>) -> Option<Cert<'a>> {
    p.certs
        .iter()
        .filter_map(|c| Cert::parse(c).ok())
        .find(|c| c.issuer == si.issuer && c.serial == si.serial)
}

/// Whether `alg` (an AlgorithmIdentifier encoding) is SHA-256 (with or without
/// NULL parameters).
pub fn is_sha256(alg: &[u8]) -> bool {
    let Ok((a, _)) = der::read(alg) else {
        return false;
    };
    let Ok(kids) = der::children(a.content) else {
        return false;
    };
    kids.first().is_some_and(|o| o.content == oid_body(SHA256))
        && kids.get(1).is_none_or(|p| p.tag == NULL)
}
