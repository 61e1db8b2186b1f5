//! Building replies: the boot parameters for each kind of firmware (file name,
//! option 43/60/66, siaddr) and the reply message around them.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};

use super::classify::Firmware;
use crate::inventory::Mac;

/// Boot parameters put into an offer or ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Boot file name or URL (option 67 and the `file` field); none for the Pi.
    pub file: Option<String>,
    /// Option 60 to echo: `PXEClient` or `HTTPClient`.
    pub vendor_class: &'static str,
    /// Option 43 payload.
    pub vendor_opts: Option<Vec<u8>>,
}

/// The string the Raspberry Pi bootloader looks for in option 43.
pub const PI_BOOT: &str = "Raspberry Pi Boot";

/// Option 43 as dnsmasq emits it for `pxe-service=0,"Raspberry Pi Boot"`: discovery
/// control 3 (no broadcast/multicast discovery), menu prompt (timeout 0, "PXE") and a
/// one-entry boot menu of type 0 named `Raspberry Pi Boot`, then the end marker.
pub fn pi_vendor_options() -> Vec<u8> {
    let mut v = vec![6, 1, 3];
    v.extend_from_slice(&[10, 4, 0, b'P', b'X', b'E']);
    v.extend_from_slice(&[9, (3 + PI_BOOT.len()) as u8, 0, 0, PI_BOOT.len() as u8]);
    v.extend_from_slice(PI_BOOT.as_bytes());
    v.push(255);
    v
}

/// Option 43 for plain PXE ROMs: discovery control bit 3, "boot the file in this
/// offer", so they neither broadcast nor go to port 4011.
pub fn pxe_direct_boot_options() -> Vec<u8> {
    vec![6, 1, 8, 255]
}

/// Boot parameters for a firmware; `http_base` is `http://ip[:port]`.
pub fn boot_params(fw: &Firmware, mac: &Mac, http_base: &str) -> BootParams {
    let pxe = |file: &str| BootParams {
        file: Some(file.to_string()),
        vendor_class: "PXEClient",
        vendor_opts: Some(pxe_direct_boot_options()),
    };
    match fw {
        Firmware::Bios => pxe("undionly.kpxe"),
        Firmware::UefiX64 => pxe("ipxe.efi"),
        Firmware::UefiArm64 => pxe("ipxe-arm64.efi"),
        Firmware::HttpBoot { arm64 } => BootParams {
            file: Some(format!(
                "{http_base}/ipxe/{}",
                if *arm64 { "ipxe-arm64.efi" } else { "ipxe.efi" }
            )),
            vendor_class: "HTTPClient",
            vendor_opts: None,
        },
        Firmware::Ipxe => BootParams {
            file: Some(format!("{http_base}/boot.ipxe?mac={mac}")),
            vendor_class: "PXEClient",
            vendor_opts: None,
        },
        Firmware::RaspberryPi { .. } => BootParams {
            file: None,
            vendor_class: "PXEClient",
            vendor_opts: Some(pi_vendor_options()),
        },
    }
}

/// A reply skeleton: BOOTREPLY with the request's xid, flags, giaddr and chaddr,
/// message type and server identifier.
pub fn reply_to(req: &Message, kind: MessageType, server: Ipv4Addr, yiaddr: Ipv4Addr) -> Message {
    let chaddr = req.chaddr().get(..6).unwrap_or(req.chaddr());
    let mut r = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        chaddr,
    );
    r.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_flags(req.flags());
    if kind != MessageType::Nak {
        r.set_ciaddr(req.ciaddr());
    }
    r.opts_mut().insert(DhcpOption::MessageType(kind));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    r
}

/// Adds boot parameters: siaddr and option 66 point at the server, option 97 is
/// echoed as the PXE spec asks.
pub fn add_boot(r: &mut Message, req: &Message, p: &BootParams, server: Ipv4Addr) {
    r.set_siaddr(server);
    let o = r.opts_mut();
    o.insert(DhcpOption::ClassIdentifier(
        p.vendor_class.as_bytes().to_vec(),
    ));
    o.insert(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
    if let Some(f) = &p.file {
        o.insert(DhcpOption::BootfileName(f.as_bytes().to_vec()));
    }
    if let Some(v) = &p.vendor_opts {
        o.insert(DhcpOption::VendorExtensions(v.clone()));
    }
    if let Some(g) = req.opts().get(OptionCode::ClientMachineIdentifier) {
        o.insert(g.clone());
    }
    if let Some(f) = &p.file
        && f.len() < 128
    {
        r.set_fname_str(f);
    }
}
