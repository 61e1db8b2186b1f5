//! Authenticode signatures on PE/COFF images (EFI applications: systemd-boot,
//! UKIs), as UEFI firmware checks them against `db`.
//!
//! The image hash follows the PE/COFF specification and EDK2's
//! `DxeImageVerificationLib`: SHA-256 over the headers except the optional
//! header's CheckSum and the Certificate Table directory entry, then the sections
//! in file order, then whatever follows the hashed bytes up to the certificate
//! table. Before signing, the image is padded with zeros to a multiple of 8 (the
//! padding is hashed, as `sbsign` does) and the WIN_CERTIFICATE is appended.
//!
//! Signing an image that is already signed replaces its signature: the old
//! certificate table (which must be at the end of the file) is dropped first. So
//! `sign_pe(sign_pe(x, a), b) == sign_pe(x, b)`.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::der::{self, BIT_STRING, OCTET_STRING, SEQUENCE, ctx, seq, tlv};
use super::keys::{self, Cert, SHA256, Signer};
use super::pkcs7::{self, Signed};

const SPC_INDIRECT_DATA: &str = "1.3.6.1.4.1.311.2.1.4";
const SPC_PE_IMAGE_DATA: &str = "1.3.6.1.4.1.311.2.1.15";
const SPC_SP_OPUS_INFO: &str = "1.3.6.1.4.1.311.2.1.12";
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;
const CERT_TABLE_INDEX: usize = 4;

/// Why an image does not verify; carried inside the returned `anyhow::Error`
/// (`err.downcast_ref::<VerifyError>()`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("not signed (the PE image has no Authenticode signature)")]
    NotSigned,
    #[error("signed, but the image was changed after signing (digest mismatch)")]
    DigestMismatch,
    #[error(
        "signed by another key ({subject}, certificate sha256 {fingerprint}), not by the given one ({expected})"
    )]
    OtherSigner {
        subject: String,
        fingerprint: String,
        expected: String,
    },
    #[error("the Authenticode signature is malformed: {0}")]
    Malformed(String),
}

/// Where the parts of a PE image are.
#[derive(Debug)]
struct Layout {
    checksum_off: usize,
    cert_dir_off: usize,
    size_of_headers: usize,
    /// (PointerToRawData, SizeOfRawData) of each section with data, in file order.
    sections: Vec<(usize, usize)>,
    /// The certificate table (file offset, size) if the directory names one.
    cert_table: Option<(usize, usize)>,
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(o..o + 2).context("truncated PE")?.try_into()?,
    ))
}

fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(o..o + 4).context("truncated PE")?.try_into()?,
    ))
}

fn layout(pe: &[u8]) -> Result<Layout> {
    if pe.get(..2) != Some(b"MZ") {
        bail!("not a PE image (no MZ header)");
    }
    let nt = u32_at(pe, 0x3c)? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        bail!("not a PE image (no PE signature)");
    }
    let coff = nt + 4;
    let nsections = u16_at(pe, coff + 2)? as usize;
    let opt_size = u16_at(pe, coff + 16)? as usize;
    let opt = coff + 20;
    let (dirs, ndirs_off) = match u16_at(pe, opt)? {
        0x10b => (opt + 96, opt + 92),
        0x20b => (opt + 112, opt + 108),
        m => bail!("unknown PE optional header magic {m:#x}"),
    };
    let ndirs = u32_at(pe, ndirs_off)? as usize;
    if ndirs <= CERT_TABLE_INDEX || dirs + 8 * (CERT_TABLE_INDEX + 1) > opt + opt_size {
        bail!("the PE image has no Certificate Table directory entry");
    }
    let cert_dir_off = dirs + 8 * CERT_TABLE_INDEX;
    let size_of_headers = u32_at(pe, opt + 60)? as usize;
    let cert_off = u32_at(pe, cert_dir_off)? as usize;
    let cert_size = u32_at(pe, cert_dir_off + 4)? as usize;
    let cert_table = (cert_size > 0).then_some((cert_off, cert_size));
    if let Some((o, s)) = cert_table
        && o.checked_add(s).is_none_or(|end| end > pe.len())
    {
        bail!("the PE certificate table lies outside the file");
    }
    if size_of_headers > pe.len() || size_of_headers < cert_dir_off + 8 {
        bail!("bad SizeOfHeaders in the PE image");
    }
    let sh = opt + opt_size;
    let mut sections = Vec::new();
    for i in 0..nsections {
        let s = sh + 40 * i;
        let size = u32_at(pe, s + 16)? as usize;
        let ptr = u32_at(pe, s + 20)? as usize;
        if size == 0 {
            continue;
        }
        if ptr.checked_add(size).is_none_or(|end| end > pe.len()) {
            bail!("PE section {i} lies outside the file");
        }
        sections.push((ptr, size));
    }
    sections.sort();
    Ok(Layout {
        checksum_off: opt + 64,
        cert_dir_off,
        size_of_headers,
        sections,
        cert_table,
    })
}

/// The Authenticode SHA-256 of the image.
fn image_digest(pe: &[u8], l: &Layout) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&pe[..l.checksum_off]);
    h.update(&pe[l.checksum_off + 4..l.cert_dir_off]);
    h.update(&pe[l.cert_dir_off + 8..l.size_of_headers]);
    let mut hashed = l.size_of_headers;
    for &(ptr, size) in &l.sections {
        h.update(&pe[ptr..ptr + size]);
        hashed += size;
    }
    let cert_size = l.cert_table.map_or(0, |(_, s)| s);
    if pe.len() > hashed + cert_size {
        h.update(&pe[hashed..pe.len() - cert_size]);
    }
    h.finalize().into()
}

/// The PE checksum (the optional header's CheckSum field) of `pe`.
fn pe_checksum(pe: &[u8], checksum_off: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        let o = 2 * i;
        if o >= checksum_off && o < checksum_off + 4 {
            continue;
        }
        let w = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u64::from(w);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

/// `SpcIndirectDataContent` for a SHA-256 image digest.
fn indirect_data(digest: &[u8; 32]) -> Vec<u8> {
    let obsolete: Vec<u8> = "<<<Obsolete>>>"
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    // SpcLink.file [2] -> SpcString.unicode [0] IMPLICIT BMPString.
    let link = tlv(ctx(2), &tlv(0x80, &obsolete));
    let pe_image_data = seq(&[&[BIT_STRING, 1, 0], &tlv(ctx(0), &link)]);
    seq(&[
        &seq(&[&der::oid(SPC_PE_IMAGE_DATA), &pe_image_data]),
        &seq(&[&der::alg_null(SHA256), &tlv(OCTET_STRING, digest)]),
    ])
}

/// Signs a PE image (Authenticode, SHA-256, RSA PKCS#1 v1.5) with `signer`. The
/// output is the same for the same image and key (no signing time). An existing
/// signature is replaced.
pub fn sign_pe(pe: &[u8], signer: &Signer) -> Result<Vec<u8>> {
    let l = layout(pe)?;
    let mut out = match l.cert_table {
        Some((off, size)) => {
            if off + size != pe.len() {
                bail!(
                    "the PE image's certificate table (offset {off}, {size} bytes) is not at the end of the file; cannot replace its signature"
                );
            }
            pe[..off].to_vec()
        }
        None => pe.to_vec(),
    };
    out[l.cert_dir_off..l.cert_dir_off + 8].fill(0);
    out.resize(out.len().next_multiple_of(8), 0);
    let l = layout(&out)?;
    let digest = image_digest(&out, &l);

    let content = indirect_data(&digest);
    let (inner, _) = der::expect(&content, SEQUENCE)?;
    let attrs = vec![
        pkcs7::attribute(pkcs7::CONTENT_TYPE, &der::oid(SPC_INDIRECT_DATA)),
        pkcs7::attribute(
            pkcs7::MESSAGE_DIGEST,
            &tlv(OCTET_STRING, &Sha256::digest(inner.content)),
        ),
        pkcs7::attribute(SPC_SP_OPUS_INFO, &seq(&[])),
    ];
    let sd = pkcs7::signed_data(
        signer,
        SPC_INDIRECT_DATA,
        Some(&content),
        Signed::Attributes(attrs),
    )?;
    let pkcs7 = pkcs7::content_info(&sd);

    let cert_len = (8 + pkcs7.len()).next_multiple_of(8);
    let cert_off = out.len();
    out.extend_from_slice(&(cert_len as u32).to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(&pkcs7);
    out.resize(cert_off + cert_len, 0);
    let size_u32 = |n: usize| u32::try_from(n).context("PE image larger than 4 GiB");
    out[l.cert_dir_off..l.cert_dir_off + 4].copy_from_slice(&size_u32(cert_off)?.to_le_bytes());
    out[l.cert_dir_off + 4..l.cert_dir_off + 8].copy_from_slice(&size_u32(cert_len)?.to_le_bytes());
    let sum = pe_checksum(&out, l.checksum_off);
    out[l.checksum_off..l.checksum_off + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Whether `pe` carries an Authenticode signature by `cert_der`'s key over its
/// current contents. The error says which of [`VerifyError`] applies (or that the
/// file is not a PE image / the certificate unreadable).
pub fn verify_pe(pe: &[u8], cert_der: &[u8]) -> Result<()> {
    let l = layout(pe)?;
    let cert = Cert::parse(cert_der).context("reading the certificate to verify with")?;
    let Some((off, size)) = l.cert_table else {
        return Err(VerifyError::NotSigned.into());
    };
    let digest = image_digest(pe, &l);
    let table = &pe[off..off + size];
    let mut pos = 0;
    let mut found = 0;
    let mut last_err = VerifyError::NotSigned;
    while pos + 8 <= table.len() {
        let len = u32_at(table, pos)? as usize;
        let kind = u16_at(table, pos + 6)?;
        if len < 8 || pos + len > table.len() {
            return Err(VerifyError::Malformed(format!(
                "WIN_CERTIFICATE at {pos} has length {len}"
            ))
            .into());
        }
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            found += 1;
            match verify_one(&table[pos + 8..pos + len], &digest, &cert, cert_der) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Report the most telling failure: a digest mismatch beats
                    // another signer, which beats malformed.
                    let rank = |e: &VerifyError| match e {
                        VerifyError::DigestMismatch => 3,
                        VerifyError::OtherSigner { .. } => 2,
                        VerifyError::Malformed(_) => 1,
                        VerifyError::NotSigned => 0,
                    };
                    if rank(&e) >= rank(&last_err) {
                        last_err = e;
                    }
                }
            }
        }
        pos += len.next_multiple_of(8);
    }
    if found == 0 {
        return Err(VerifyError::NotSigned.into());
    }
    Err(last_err.into())
}

fn verify_one(
    data: &[u8],
    digest: &[u8; 32],
    cert: &Cert<'_>,
    cert_der: &[u8],
) -> Result<(), VerifyError> {
    let bad = |e: anyhow::Error| VerifyError::Malformed(format!("{e:#}"));
    let p = pkcs7::parse(data).map_err(bad)?;
    if p.content_type != pkcs7::oid_body(SPC_INDIRECT_DATA) {
        return Err(VerifyError::Malformed(
            "content is not SpcIndirectDataContent".into(),
        ));
    }
    let content = p
        .content
        .ok_or_else(|| VerifyError::Malformed("no SpcIndirectDataContent".into()))?;
    let (spc, _) = der::expect(content, SEQUENCE).map_err(bad)?;
    let kids = der::children(spc.content).map_err(bad)?;
    let digest_info = kids
        .get(1)
        .ok_or_else(|| VerifyError::Malformed("no DigestInfo".into()))?;
    let di = der::children(digest_info.content).map_err(bad)?;
    let (alg, signed_digest) = match (di.first(), di.get(1)) {
        (Some(a), Some(d)) => (a, d),
        _ => return Err(VerifyError::Malformed("bad DigestInfo".into())),
    };
    if !pkcs7::is_sha256(alg.raw) {
        return Err(VerifyError::Malformed(
            "the image digest is not SHA-256 (labimg checks SHA-256 signatures only)".into(),
        ));
    }
    if signed_digest.content != digest {
        return Err(VerifyError::DigestMismatch);
    }
    let content_hash = Sha256::digest(spc.content);
    let md_body = pkcs7::oid_body(pkcs7::MESSAGE_DIGEST);
    let mut other = None;
    for si in &p.signers {
        if !pkcs7::is_sha256(si.digest_alg) {
            continue;
        }
        let Some(signed) = si.signed_attrs() else {
            continue;
        };
        let md = si.attr(&md_body).map_err(bad)?;
        let md_ok = md
            .and_then(|m| der::expect(m, OCTET_STRING).ok())
            .is_some_and(|(m, _)| m.content == content_hash.as_slice());
        if !md_ok {
            return Err(VerifyError::Malformed(
                "the messageDigest attribute does not match the signed content".into(),
            ));
        }
        if keys::verify_sha256(cert, &signed, si.signature).map_err(bad)? {
            return Ok(());
        }
        other = Some(match pkcs7::signer_cert(&p, si) {
            Some(c) => {
                let der_ = p
                    .certs
                    .iter()
                    .find(|d| Cert::parse(d).is_ok_and(|x| x.serial == c.serial))
                    .copied()
                    .unwrap_or_default();
                (c.subject(), hex::encode(Sha256::digest(der_)))
            }
            None => ("signer certificate not embedded".into(), "unknown".into()),
        });
    }
    match other {
        Some((subject, fingerprint)) => Err(VerifyError::OtherSigner {
            subject,
            fingerprint,
            expected: format!(
                "{}, certificate sha256 {}",
                cert.subject(),
                hex::encode(Sha256::digest(cert_der))
            ),
        }),
        None => Err(VerifyError::Malformed(
            "no SHA-256 signer with authenticated attributes".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_skips_its_field_and_adds_length() {
        let mut b = vec![1u8, 0, 2, 0, 0xff, 0xff, 0xff, 0xff, 3];
        // words: 1 + 2 + (checksum skipped) + 3 = 6, plus length 9.
        assert_eq!(pe_checksum(&b, 4), 15);
        b[4] = 0;
        assert_eq!(pe_checksum(&b, 4), 15);
    }

    #[test]
    fn obsolete_link_has_the_well_known_encoding() {
        let d = indirect_data(&[0; 32]);
        let needle = [0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0x00, 0x3c];
        assert!(d.windows(needle.len()).any(|w| w == needle));
    }
}
