//! UEFI signature lists and time-based authenticated variables (UEFI 2.10
//! §32.4 and §8.2.2): what firmware, `efi-updatevar`, systemd-boot's automatic
//! enrolment and OVMF's setup accept for PK, KEK and db.

use anyhow::{Context, Result, bail};

use super::keys::Signer;
use super::pkcs7::{self, Signed};

/// A GUID in the byte order UEFI stores it (the first three fields little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn parse(s: &str) -> Result<Guid> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            bail!("{s:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        }
        let hex_ = hex::decode(parts.concat()).with_context(|| format!("{s:?} is not a GUID"))?;
        let mut b = [0u8; 16];
        b.copy_from_slice(&hex_);
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Ok(Guid(b))
    }

    /// A random (version 4) GUID.
    pub fn random() -> Guid {
        let mut b = super::keys::random_bytes::<16>();
        // Version 4 in the big-endian time_hi field (stored little-endian).
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{}-{}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            hex::encode(&b[8..10]),
            hex::encode(&b[10..16])
        )
    }
}

/// EFI_CERT_X509_GUID: a signature list entry holding a DER certificate.
pub const EFI_CERT_X509: &str = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
/// EFI_CERT_TYPE_PKCS7_GUID: WIN_CERTIFICATE_UEFI_GUID's type for PKCS#7.
pub const EFI_CERT_TYPE_PKCS7: &str = "4aafd29d-68df-49ee-8aa9-347d375665a7";
/// EFI_GLOBAL_VARIABLE: the vendor GUID of PK and KEK.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// EFI_IMAGE_SECURITY_DATABASE_GUID: the vendor GUID of db and dbx.
pub const EFI_IMAGE_SECURITY_DATABASE: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS |
/// TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
pub const AUTH_ATTRIBUTES: u32 = 0x27;

/// One Secure Boot variable labimg writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Pk,
    Kek,
    Db,
}

impl Var {
    pub fn name(self) -> &'static str {
        match self {
            Var::Pk => "PK",
            Var::Kek => "KEK",
            Var::Db => "db",
        }
    }

    pub fn vendor(self) -> Guid {
        let g = match self {
            Var::Pk | Var::Kek => EFI_GLOBAL_VARIABLE,
            Var::Db => EFI_IMAGE_SECURITY_DATABASE,
        };
        Guid::parse(g).expect("constant GUID")
    }
}

/// EFI_SIGNATURE_LIST of type X.509 with one entry: `owner` and the DER
/// certificate.
pub fn x509_signature_list(owner: Guid, cert_der: &[u8]) -> Vec<u8> {
    let sig_size = 16 + cert_der.len();
    let list_size = 28 + sig_size;
    let mut out = Vec::with_capacity(list_size);
    out.extend_from_slice(&Guid::parse(EFI_CERT_X509).expect("constant").0);
    out.extend_from_slice(&(list_size as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(sig_size as u32).to_le_bytes());
    out.extend_from_slice(&owner.0);
    out.extend_from_slice(cert_der);
    out
}

/// EFI_TIME (16 bytes) for a Unix time in UTC: date and time set, nanoseconds,
/// time zone and daylight zero.
pub fn efi_time(epoch: u64) -> [u8; 16] {
    let (y, m, d, s) = crate::date::civil(epoch);
    let mut t = [0u8; 16];
    t[0..2].copy_from_slice(&(y as u16).to_le_bytes());
    t[2] = m as u8;
    t[3] = d as u8;
    t[4] = (s / 3600) as u8;
    t[5] = (s / 60 % 60) as u8;
    t[6] = (s % 60) as u8;
    t
}

/// EFI_VARIABLE_AUTHENTICATION_2 followed by `data`: a time-based authenticated
/// write of `var` (attributes [`AUTH_ATTRIBUTES`]) with timestamp `epoch`, signed
/// by `signer` (a detached PKCS#7 SignedData without authenticated attributes
/// over name ‖ vendor GUID ‖ attributes ‖ EFI_TIME ‖ data).
pub fn authenticated_write(var: Var, data: &[u8], epoch: u64, signer: &Signer) -> Result<Vec<u8>> {
    let time = efi_time(epoch);
    let mut signed = Vec::new();
    for u in var.name().encode_utf16() {
        signed.extend_from_slice(&u.to_le_bytes());
    }
    signed.extend_from_slice(&var.vendor().0);
    signed.extend_from_slice(&AUTH_ATTRIBUTES.to_le_bytes());
    signed.extend_from_slice(&time);
    signed.extend_from_slice(data);
    let sd = pkcs7::signed_data(signer, pkcs7::DATA, None, Signed::Bytes(&signed))?;
    let mut out = Vec::with_capacity(16 + 24 + sd.len() + data.len());
    out.extend_from_slice(&time);
    out.extend_from_slice(&((24 + sd.len()) as u32).to_le_bytes());
    out.extend_from_slice(&0x0200u16.to_le_bytes());
    out.extend_from_slice(&0x0ef1u16.to_le_bytes());
    out.extend_from_slice(&Guid::parse(EFI_CERT_TYPE_PKCS7).expect("constant").0);
    out.extend_from_slice(&sd);
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trip_and_byte_order() {
        let g = Guid::parse(EFI_CERT_X509).unwrap();
        assert_eq!(g.0[..4], [0xa1, 0x59, 0xc0, 0xa5]);
        assert_eq!(g.to_string(), EFI_CERT_X509);
        let r = Guid::random();
        assert_eq!(Guid::parse(&r.to_string()).unwrap(), r);
        assert_eq!(r.to_string().as_bytes()[14], b'4');
    }

    #[test]
    fn efi_time_fields() {
        // 2026-11-29 07:25:00 UTC
        let t = efi_time(1_795_937_100);
        assert_eq!(&t[..7], &[0xea, 0x07, 11, 29, 7, 25, 0]);
        assert!(t[7..].iter().all(|b| *b == 0));
    }
}
