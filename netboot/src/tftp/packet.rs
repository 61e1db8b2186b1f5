//! TFTP wire format (RFC 1350) with the option extension (RFC 2347).

/// Read request.
pub const RRQ: u16 = 1;
/// Write request.
pub const WRQ: u16 = 2;
/// Data block.
pub const DATA: u16 = 3;
/// Acknowledgement.
pub const ACK: u16 = 4;
/// Error.
pub const ERROR: u16 = 5;
/// Option acknowledgement.
pub const OACK: u16 = 6;

/// Error code: not defined, see message.
pub const E_UNDEFINED: u16 = 0;
/// Error code: file not found.
pub const E_NOT_FOUND: u16 = 1;
/// Error code: access violation.
pub const E_ACCESS: u16 = 2;
/// Error code: illegal TFTP operation.
pub const E_ILLEGAL: u16 = 4;

/// A parsed packet the server cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Read or write request: opcode, file name, mode, options (names lowercased).
    Request {
        /// RRQ or WRQ.
        opcode: u16,
        /// Requested file name.
        file: String,
        /// Transfer mode (lowercased).
        mode: String,
        /// Options, in order.
        options: Vec<(String, String)>,
    },
    /// ACK of a block.
    Ack(u16),
    /// ERROR from the peer.
    Error(u16, String),
    /// Anything else with a known opcode (DATA, OACK).
    Other(u16),
}

/// Parses a datagram; `None` if it is not TFTP at all.
pub fn parse(b: &[u8]) -> Option<Packet> {
    let op = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    let rest = &b[2..];
    match op {
        RRQ | WRQ => {
            let mut fields = rest
                .split(|c| *c == 0)
                .map(|f| String::from_utf8_lossy(f).into_owned());
            let file = fields.next()?;
            let mode = fields.next()?.to_ascii_lowercase();
            if rest.last() != Some(&0) {
                return None;
            }
            let mut options = Vec::new();
            let rem: Vec<String> = fields.filter(|f| !f.is_empty()).collect();
            for pair in rem.chunks(2) {
                if let [k, v] = pair {
                    options.push((k.to_ascii_lowercase(), v.clone()));
                }
            }
            Some(Packet::Request {
                opcode: op,
                file,
                mode,
                options,
            })
        }
        ACK => Some(Packet::Ack(u16::from_be_bytes([
            *rest.first()?,
            *rest.get(1)?,
        ]))),
        ERROR => {
            let code = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
            let msg =
                String::from_utf8_lossy(rest.get(2..)?.split(|c| *c == 0).next()?).into_owned();
            Some(Packet::Error(code, msg))
        }
        DATA | OACK => Some(Packet::Other(op)),
        _ => None,
    }
}

/// An ERROR packet.
pub fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(msg.len() + 5);
    v.extend_from_slice(&ERROR.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v.push(0);
    v
}

/// An OACK packet.
pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut v = OACK.to_be_bytes().to_vec();
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// The header of a DATA packet (payload appended by the caller).
pub fn data_header(block: u16) -> [u8; 4] {
    let [a, b] = DATA.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options() {
        let p = parse(b"\x00\x01dir/f.txt\0octet\0tsize\x000\0BLKSIZE\x001468\0").unwrap();
        assert_eq!(
            p,
            Packet::Request {
                opcode: RRQ,
                file: "dir/f.txt".into(),
                mode: "octet".into(),
                options: vec![
                    ("tsize".into(), "0".into()),
                    ("blksize".into(), "1468".into())
                ],
            }
        );
        assert_eq!(parse(b"\x00\x01no-terminator"), None);
        assert_eq!(parse(b"\x00"), None);
        assert_eq!(parse(b"\x00\x04\x01\x02"), Some(Packet::Ack(0x0102)));
    }
}
