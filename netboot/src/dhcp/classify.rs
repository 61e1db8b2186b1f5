//! Who is asking: classify a DHCP request by its PXE options (93 architecture,
//! 60 vendor class, 77/175 iPXE, 97 client GUID for the Raspberry Pi).

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};

use crate::inventory::Mac;

/// Firmware that wants to network boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// x86 BIOS PXE ROM (arch 0).
    Bios,
    /// x86-64 UEFI PXE (arch 7 or 9).
    UefiX64,
    /// arm64 UEFI PXE (arch 11).
    UefiArm64,
    /// UEFI HTTP boot (arch 16 x64, 19 arm64).
    HttpBoot {
        /// True for arm64 (arch 19).
        arm64: bool,
    },
    /// iPXE already running (user class `iPXE` or option 175).
    Ipxe,
    /// Raspberry Pi bootloader.
    RaspberryPi {
        /// 4 or 5, from the GUID FourCC.
        model: u8,
        /// Serial (8 lowercase hex digits) from the GUID.
        serial: Option<String>,
    },
}

/// A classified request.
#[derive(Debug, Clone)]
pub struct Client {
    /// Client hardware address.
    pub mac: Mac,
    /// DHCP message type.
    pub msg_type: MessageType,
    /// Network-boot firmware, `None` for an ordinary DHCP client.
    pub firmware: Option<Firmware>,
}

/// Why a packet was dropped (the label of the drop metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Could not be decoded at all.
    #[error("malformed")]
    Malformed,
    /// A BOOTREPLY or other non-request.
    #[error("not-a-request")]
    NotRequest,
    /// Not Ethernet or not a 6-byte hardware address.
    #[error("bad-hardware-address")]
    BadHardware,
    /// No option 53.
    #[error("no-message-type")]
    NoMessageType,
}

impl Reject {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::NotRequest => "not-a-request",
            Reject::BadHardware => "bad-hardware-address",
            Reject::NoMessageType => "no-message-type",
        }
    }
}

/// Option 175 (iPXE encapsulated options): only iPXE sends it.
pub const OPT_IPXE: u8 = 175;

fn bytes_of(msg: &Message, code: OptionCode) -> Option<Vec<u8>> {
    match msg.opts().get(code)? {
        DhcpOption::ClassIdentifier(b)
        | DhcpOption::UserClass(b)
        | DhcpOption::ClientMachineIdentifier(b)
        | DhcpOption::VendorExtensions(b) => Some(b.clone()),
        DhcpOption::Unknown(u) => Some(u.data().to_vec()),
        _ => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Raspberry Pi model and serial from option 97: a type byte, then the FourCC
/// `RPi4`/`RPi5`, board revision, low MAC bytes and the 4-byte serial (little endian).
fn pi_from_guid(guid: &[u8]) -> Option<(u8, Option<String>)> {
    let model = if contains(guid, b"RPi5") {
        5
    } else if contains(guid, b"RPi4") {
        4
    } else {
        return None;
    };
    let body = guid.strip_prefix(&[0]).unwrap_or(guid);
    let serial = body
        .get(12..16)
        .map(|s| format!("{:08x}", u32::from_le_bytes([s[0], s[1], s[2], s[3]])));
    Some((model, serial))
}

/// Checks the raw framing that the decoder is lenient about: the fixed header and
/// magic cookie are complete and no option runs past the end of the datagram.
pub fn well_formed(buf: &[u8]) -> bool {
    if buf.len() < 240 || buf[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = 240;
    while i < buf.len() {
        match buf[i] {
            0 => i += 1,
            255 => return true,
            _ => {
                let Some(len) = buf.get(i + 1) else {
                    return false;
                };
                i += 2 + usize::from(*len);
                if i > buf.len() {
                    return false;
                }
            }
        }
    }
    // Reached the end without an end option: accepted, as many firmwares omit it.
    true
}

/// Classifies a decoded request.
pub fn classify(msg: &Message) -> Result<Client, Reject> {
    if msg.opcode() != Opcode::BootRequest {
        return Err(Reject::NotRequest);
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(Reject::BadHardware);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(msg.chaddr().get(..6).ok_or(Reject::BadHardware)?);
    let msg_type = msg.opts().msg_type().ok_or(Reject::NoMessageType)?;
    let vendor = bytes_of(msg, OptionCode::ClassIdentifier).unwrap_or_default();
    let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    let user_class = bytes_of(msg, OptionCode::UserClass).unwrap_or_default();
    let is_ipxe = contains(&user_class, b"iPXE") || msg.opts().contains(OptionCode::from(OPT_IPXE));
    let pxe = vendor.starts_with(b"PXEClient");
    let http = vendor.starts_with(b"HTTPClient");
    let pi = bytes_of(msg, OptionCode::ClientMachineIdentifier).and_then(|g| pi_from_guid(&g));
    let firmware = if !pxe && !http && !is_ipxe {
        None
    } else if let (true, Some((model, serial))) = (pxe, pi) {
        Some(Firmware::RaspberryPi { model, serial })
    } else if is_ipxe {
        Some(Firmware::Ipxe)
    } else if http || matches!(arch, Some(16) | Some(19)) {
        Some(Firmware::HttpBoot {
            arm64: arch == Some(19),
        })
    } else {
        match arch {
            Some(0) | None => Some(Firmware::Bios),
            Some(7) | Some(9) => Some(Firmware::UefiX64),
            Some(11) => Some(Firmware::UefiArm64),
            Some(_) => None,
        }
    };
    Ok(Client {
        mac: Mac(mac),
        msg_type,
        firmware,
    })
}
