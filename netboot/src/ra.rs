//! IPv6 router advertisements that configure nothing.
//!
//! iPXE (and UEFI firmware's network stack) send IPv6 router solicitations when a link
//! comes up and wait for an answer before they use the DHCPv4 lease they already have:
//! on a LAN without an IPv6 router that wait was 16 of a 27 s PXE boot (issue #15). An
//! advertisement with router lifetime 0, no options but the source link-layer address,
//! and the M and O flags off ends that wait without making this server anybody's
//! router, handing out an address or announcing DHCPv6 (RFC 4861 §4.2, §6.3.4: a
//! lifetime of 0 means "not a default router").
//!
//! It is on by default only in full DHCP mode, where labimg is the LAN's DHCP server.
//! In proxy mode the home router usually sends its own advertisements, and hosts that
//! merge the M/O flags of every router they hear may be confused by a second one that
//! says "no DHCPv6", so there it is opt-in (`--router-advert on`).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::DhcpMode;

/// ICMPv6 type of a router solicitation.
const SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
const ADVERTISEMENT: u8 = 134;
/// At most one advertisement per interval; solicitations in between are answered by
/// one advertisement at its end (it is multicast, so it reaches every solicitor).
/// Deliberately shorter than RFC 4861's 3 s MIN_DELAY_BETWEEN_RAS: firmware that
/// solicits just after an answer would wait up to 3 s more, the delay this module
/// exists to remove; one small packet a second at most stays negligible.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// When `labimg serve` sends router advertisements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterAdvert {
    /// In full DHCP mode only.
    Auto,
    /// Always (needs an interface).
    On,
    /// Never.
    Off,
}

impl FromStr for RouterAdvert {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => bail!("unknown router-advert setting {s:?}: expected auto, on or off"),
        }
    }
}

impl RouterAdvert {
    /// Whether advertisements are sent in DHCP mode `dhcp`.
    pub fn enabled(self, dhcp: DhcpMode) -> bool {
        match self {
            Self::Auto => dhcp == DhcpMode::Full,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// The advertisement: 16 bytes of header (type, code, checksum left 0 for the kernel
/// to fill in, hop limit 0 = unspecified, flags 0, router lifetime 0, reachable time 0,
/// retransmit timer 0) and the source link-layer address option when the MAC is known.
pub fn advertisement(mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = ADVERTISEMENT;
    if let Some(mac) = mac {
        p.extend_from_slice(&[1, 1]); // option 1 (source link-layer address), 8 bytes
        p.extend_from_slice(&mac);
    }
    p
}

/// Whether `packet` (an ICMPv6 message, as a raw socket returns it) is a well-formed
/// router solicitation: type 133, code 0, at least 8 bytes (RFC 4861 §6.1.1).
pub fn is_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == SOLICITATION && packet[1] == 0
}

/// A raw ICMPv6 socket on one interface that answers router solicitations. Tokio's
/// datagram socket drives it: `send_to`/`recv` are the same system calls for a raw
/// socket, and the conversion needs no `unsafe`.
#[derive(Debug)]
pub struct Advertiser {
    socket: UdpSocket,
    interface: String,
    ifindex: u32,
    packet: Vec<u8>,
}

impl Advertiser {
    /// Opens the socket on `interface`, joins all-routers (ff02::2) there.
    pub fn bind(interface: &str) -> Result<Self> {
        let sys = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{interface}/{f}"));
        let ifindex: u32 = sys("ifindex")
            .with_context(|| format!("reading the index of interface {interface}"))?
            .trim()
            .parse()
            .with_context(|| format!("parsing the index of interface {interface}"))?;
        let mac = sys("address").ok().and_then(|a| parse_mac(a.trim()));
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .context("opening a raw ICMPv6 socket for router advertisements (needs CAP_NET_RAW)")?;
        socket
            .bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("binding the ICMPv6 socket to {interface}"))?;
        socket
            .join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), ifindex)
            .with_context(|| format!("joining ff02::2 on {interface}"))?;
        // RFC 4861 §6.1.2: hosts drop neighbour discovery packets whose hop limit is not 255.
        socket.set_multicast_hops_v6(255)?;
        socket.set_unicast_hops_v6(255)?;
        socket.set_multicast_if_v6(ifindex)?;
        socket.set_multicast_loop_v6(false)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: UdpSocket::from_std(std::net::UdpSocket::from(socket))
                .context("registering the ICMPv6 socket")?,
            interface: interface.to_string(),
            ifindex,
            packet: advertisement(mac),
        })
    }

    fn send(&self) {
        let all_nodes = SocketAddrV6::new(
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            0,
            0,
            self.ifindex,
        );
        match self.socket.try_send_to(&self.packet, all_nodes.into()) {
            Ok(_) => tracing::debug!(interface = %self.interface, "router advertisement sent"),
            Err(e) => {
                tracing::warn!(interface = %self.interface, "router advertisement not sent: {e}")
            }
        }
    }

    /// Sends one advertisement now, then answers solicitations until the task is dropped.
    pub async fn run(self) -> Result<()> {
        tracing::info!(
            interface = %self.interface,
            "IPv6 router advertisements (lifetime 0, no prefix) answer router solicitations"
        );
        self.send();
        let mut last = Instant::now();
        let mut due: Option<Instant> = None;
        let mut buf = [0u8; 1500];
        loop {
            let wait = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = self.socket.recv(&mut buf) => {
                    let n = match got {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::debug!("ICMPv6 receive: {e}");
                            continue;
                        }
                    };
                    if !is_solicitation(&buf[..n]) {
                        continue;
                    }
                    let next = last + MIN_INTERVAL;
                    if Instant::now() >= next {
                        self.send();
                        last = Instant::now();
                    } else if due.is_none() {
                        due = Some(next);
                    }
                }
                () = wait => {
                    self.send();
                    last = Instant::now();
                    due = None;
                }
            }
        }
    }
}

/// Starts the advertiser on `opts.interface` when `opts.router_advert` asks for it.
pub fn spawn(
    opts: &crate::ServeOptions,
    tasks: &mut tokio::task::JoinSet<Result<()>>,
) -> Result<()> {
    if !opts.router_advert.enabled(opts.dhcp) {
        return Ok(());
    }
    let Some(interface) = opts.interface.as_deref() else {
        if opts.router_advert == RouterAdvert::On {
            bail!("--router-advert on needs --interface: advertisements go out on one link");
        }
        tracing::info!("no --interface: no IPv6 router advertisements");
        return Ok(());
    };
    match Advertiser::bind(interface) {
        Ok(adv) => {
            tasks.spawn(adv.run());
            Ok(())
        }
        // The default must not stop a server that ran before advertisements existed
        // (a host booted with ipv6.disable=1 has no ICMPv6 socket).
        Err(e) if opts.router_advert == RouterAdvert::Auto => {
            tracing::warn!("no IPv6 router advertisements on {interface}: {e:#}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_configures_nothing() {
        let p = advertisement(Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(p[0], 134);
        assert_eq!(p[1], 0, "code");
        assert_eq!(p[4], 0, "hop limit unspecified");
        assert_eq!(p[5], 0, "M and O flags off");
        assert_eq!(&p[6..8], &[0, 0], "router lifetime 0: not a default router");
        assert_eq!(
            &p[8..16],
            &[0; 8],
            "reachable time and retransmit timer unspecified"
        );
        assert_eq!(
            &p[16..],
            &[1, 1, 2, 0, 0, 0, 0, 1],
            "only the source link-layer option"
        );
        assert_eq!(advertisement(None).len(), 16);
    }

    #[test]
    fn solicitations_are_recognised() {
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0, 0, 0]), "truncated");
        assert!(
            !is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]),
            "code must be 0"
        );
        assert!(
            !is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]),
            "an advertisement"
        );
    }

    #[test]
    fn modes() {
        assert!(RouterAdvert::Auto.enabled(DhcpMode::Full));
        assert!(!RouterAdvert::Auto.enabled(DhcpMode::Proxy));
        assert!(!RouterAdvert::Auto.enabled(DhcpMode::Off));
        assert!(RouterAdvert::On.enabled(DhcpMode::Proxy));
        assert!(!RouterAdvert::Off.enabled(DhcpMode::Full));
        assert!("sometimes".parse::<RouterAdvert>().is_err());
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
    }
}
