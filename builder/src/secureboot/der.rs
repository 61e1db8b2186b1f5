//! The few DER shapes Secure Boot needs (X.509 certificates, PKCS#7 SignedData,
//! Authenticode's SpcIndirectDataContent): a writer of tag-length-value triples and
//! a reader that walks them. Only low tag numbers (< 31) occur in these formats.

use anyhow::{Result, bail};

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const UTF8_STRING: u8 = 0x0c;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const BOOLEAN: u8 = 0x01;

/// Context-specific constructed tag `[n]` (explicit tagging, or implicit of a
/// constructed type).
pub const fn ctx(n: u8) -> u8 {
    0xa0 | n
}

/// One DER element: `tag`, the definite length, `content`.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A constructed element from already-encoded parts, in the given order.
pub fn cons(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    cons(SEQUENCE, parts)
}

/// A DER `SET OF`: elements sorted by their encodings (X.690 11.6).
pub fn set_of(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.sort();
    tlv(SET, &parts.concat())
}

/// An OBJECT IDENTIFIER from its dotted form.
pub fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u64> = dotted
        .split('.')
        .map(|a| a.parse().expect("OID arcs are numbers"))
        .collect();
    let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut chunk = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            chunk.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        chunk.reverse();
        body.extend(chunk);
    }
    tlv(OID, &body)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(magnitude.len().saturating_sub(1));
    let m = &magnitude[skip..];
    if m.is_empty() {
        return tlv(INTEGER, &[0]);
    }
    if m[0] & 0x80 != 0 {
        tlv(INTEGER, &[&[0u8][..], m].concat())
    } else {
        tlv(INTEGER, m)
    }
}

/// AlgorithmIdentifier with NULL parameters (RSA and SHA-2 identifiers).
pub fn alg_null(dotted: &str) -> Vec<u8> {
    seq(&[&oid(dotted), &[NULL, 0]])
}

/// One parsed element: its tag, its content, and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads the element at the start of `data`; returns it and what follows.
pub fn read(data: &[u8]) -> Result<(Tlv<'_>, &[u8])> {
    if data.len() < 2 {
        bail!("truncated DER element");
    }
    let tag = data[0];
    if tag & 0x1f == 0x1f {
        bail!("DER tag number 31 or above is not used here");
    }
    let (len, hdr) = match data[1] {
        n if n < 0x80 => (n as usize, 2),
        0x80 => bail!("indefinite-length encoding is not DER"),
        n => {
            let k = (n & 0x7f) as usize;
            if k > 4 || data.len() < 2 + k {
                bail!("bad DER length");
            }
            let len = data[2..2 + k]
                .iter()
                .fold(0usize, |a, b| (a << 8) | *b as usize);
            (len, 2 + k)
        }
    };
    if data.len() - hdr < len {
        bail!("truncated DER element (tag {tag:#04x}, length {len})");
    }
    let t = Tlv {
        tag,
        content: &data[hdr..hdr + len],
        raw: &data[..hdr + len],
    };
    Ok((t, &data[hdr + len..]))
}

/// Reads the element at the start of `data`, which must have tag `tag`.
pub fn expect(data: &[u8], tag: u8) -> Result<(Tlv<'_>, &[u8])> {
    let (t, rest) = read(data)?;
    if t.tag != tag {
        bail!("expected DER tag {tag:#04x}, found {:#04x}", t.tag);
    }
    Ok((t, rest))
}

/// The elements inside a constructed element's content.
pub fn children(content: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let (t, r) = read(rest)?;
        out.push(t);
        rest = r;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_and_lengths() {
        assert_eq!(
            oid("1.2.840.113549.1.7.2"),
            [6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 7, 2]
        );
        assert_eq!(
            oid("1.3.6.1.4.1.311.2.1.4"),
            [6, 10, 0x2b, 6, 1, 4, 1, 0x82, 0x37, 2, 1, 4]
        );
        assert_eq!(tlv(4, &[0; 200])[..3], [4, 0x81, 200]);
        assert_eq!(tlv(4, &[0; 300])[..4], [4, 0x82, 1, 44]);
        assert_eq!(uint(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(uint(&[0, 0, 5]), [2, 1, 5]);
        let big = tlv(SEQUENCE, &[1; 300]);
        let (t, rest) = read(&big).unwrap();
        assert_eq!((t.tag, t.content.len(), rest.len()), (SEQUENCE, 300, 0));
    }
}
