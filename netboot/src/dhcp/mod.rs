//! DHCP: proxyDHCP (boot parameters only, for PXE clients, on 67 and 4011) or a
//! full server (addresses from a pool and inventory reservations, persisted leases).

pub mod classify;
pub mod leases;
pub mod reply;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use tokio::net::UdpSocket;

use crate::inventory::{Decision, Mac};
use crate::{ServeOptions, Shared};
use classify::{Client, Firmware, Reject, classify};

/// Most packets answered per lease-file write: a burst of clients (fifty nodes powered
/// on at once) waits for one fsync per batch, not one per REQUEST.
const BATCH: usize = 64;
use leases::{LeaseStore, Reservations};

/// DHCP mode of the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhcpMode {
    /// Answer PXE clients with boot parameters only; another server hands out addresses.
    #[default]
    Proxy,
    /// Be the network's DHCP server.
    Full,
    /// No DHCP.
    Off,
}

impl FromStr for DhcpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "proxy" => Ok(Self::Proxy),
            "full" => Ok(Self::Full),
            "off" => Ok(Self::Off),
            _ => Err(format!(
                "unknown DHCP mode {s:?}: expected proxy, full or off"
            )),
        }
    }
}

impl std::fmt::Display for DhcpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Proxy => "proxy",
            Self::Full => "full",
            Self::Off => "off",
        })
    }
}

/// The DHCP service. It reads its settings (mode, pool, router, DNS, lease time and
/// file, ports) from [`ServeOptions`] directly: they are declared once, there.
#[derive(Debug)]
pub struct DhcpServer {
    opts: ServeOptions,
    shared: Arc<Shared>,
    leases: Option<Mutex<LeaseStore>>,
    sockets: Vec<(Arc<UdpSocket>, bool)>,
}

fn udp_socket(ip: Ipv4Addr, port: u16, interface: Option<&str>) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("creating UDP socket")?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes()))
            .with_context(|| format!("binding to interface {i}"))?;
    }
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    s.bind(&addr.into())
        .with_context(|| format!("binding DHCP to {addr}"))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into()).context("registering DHCP socket")
}

impl DhcpServer {
    /// A server without sockets (for [`DhcpServer::respond`] in tests, and by `bind`).
    /// Full mode opens the lease file: `lease_file`, by default `<state-dir>/leases.json`.
    pub fn new(opts: &ServeOptions, shared: Arc<Shared>) -> Result<Self> {
        let leases = if opts.dhcp == DhcpMode::Full {
            let (Some(s), Some(e)) = (opts.pool_start, opts.pool_end) else {
                bail!("full DHCP mode needs a pool (--pool-start and --pool-end)");
            };
            let lease_file = opts
                .lease_file
                .clone()
                .unwrap_or_else(|| opts.state_dir.join("leases.json"));
            Some(Mutex::new(LeaseStore::open(
                lease_file,
                s,
                e,
                opts.lease_secs,
            )?))
        } else {
            None
        };
        Ok(Self {
            opts: opts.clone(),
            shared,
            leases,
            sockets: Vec::new(),
        })
    }

    /// Binds the DHCP port and the PXE port (4011) as configured.
    pub async fn bind(o: &ServeOptions, shared: Arc<Shared>) -> Result<Self> {
        let mut s = Self::new(o, shared)?;
        let iface = o.interface.as_deref();
        s.sockets.push((
            Arc::new(udp_socket(o.dhcp_bind, o.dhcp_port, iface)?),
            false,
        ));
        if o.pxe_port != 0 {
            s.sockets
                .push((Arc::new(udp_socket(o.dhcp_bind, o.pxe_port, iface)?), true));
        }
        tracing::info!(mode = %o.dhcp, "DHCP on {}:{} and {}", o.dhcp_bind, o.dhcp_port, o.pxe_port);
        Ok(s)
    }

    /// Bound socket addresses (DHCP first, then PXE).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    }

    /// Serves until the task is aborted; a bad packet never stops it.
    pub async fn run(self) -> Result<()> {
        let me = Arc::new(self);
        let mut set = tokio::task::JoinSet::new();
        for (sock, pxe_port) in me.sockets.clone() {
            let me = me.clone();
            set.spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (n, src) = match sock.recv_from(&mut buf).await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("DHCP receive: {e}");
                            continue;
                        }
                    };
                    // Whatever else already waits joins this packet's batch: its
                    // leases reach the disk in one write before any ACK goes out.
                    let mut replies = Vec::new();
                    let mut next = Some((n, src));
                    while let Some((n, src)) = next.take() {
                        if let Some(reply) = me.answer(&buf[..n], pxe_port) {
                            replies.push((me.destination(&reply, src), reply));
                        }
                        if replies.len() < BATCH {
                            next = sock.try_recv_from(&mut buf).ok();
                        }
                    }
                    if !me.flush_leases() {
                        continue; // no ACK for a lease that is not on disk; clients retry
                    }
                    for (dest, reply) in replies {
                        match reply.to_vec() {
                            Ok(bytes) => {
                                if let Err(e) = sock.send_to(&bytes, dest).await {
                                    tracing::warn!("DHCP send to {dest}: {e}");
                                }
                            }
                            Err(e) => tracing::warn!("encoding DHCP reply: {e}"),
                        }
                    }
                }
            });
        }
        // The socket loops never return; getting here means one panicked.
        if let Some(r) = set.join_next().await {
            r.context("DHCP task panicked")?;
        }
        bail!("DHCP service stopped")
    }

    /// Where a reply goes: back to a non-zero source (relay, port 4011, renewing
    /// client), else broadcast to the client port since the client has no address.
    fn destination(&self, _reply: &Message, src: SocketAddr) -> SocketAddr {
        match src {
            SocketAddr::V4(v4) if !v4.ip().is_unspecified() => src,
            _ => SocketAddr::from((Ipv4Addr::BROADCAST, self.opts.dhcp_client_port)),
        }
    }

    /// Decodes, counts and answers one datagram, its lease written to disk before
    /// the reply is returned; `None` means no reply.
    pub fn handle_bytes(&self, buf: &[u8], pxe_port: bool) -> Option<Message> {
        let reply = self.answer(buf, pxe_port)?;
        self.flush_leases().then_some(reply)
    }

    /// Writes changed leases to the lease file; false (logged) if that failed.
    fn flush_leases(&self) -> bool {
        let Some(store) = &self.leases else {
            return true;
        };
        let Ok(mut store) = store.lock() else {
            return false;
        };
        match store.flush() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("lease file: {e:#}");
                false
            }
        }
    }

    /// [`DhcpServer::handle_bytes`] without writing the lease file: the caller flushes.
    fn answer(&self, buf: &[u8], pxe_port: bool) -> Option<Message> {
        let m = &self.shared.metrics;
        let decoded = if classify::well_formed(buf) {
            Message::decode(&mut Decoder::new(buf)).ok()
        } else {
            None
        };
        let msg = match decoded {
            Some(msg) => msg,
            None => {
                m.inc(
                    "labimg_dhcp_dropped_total",
                    &[("reason", Reject::Malformed.label())],
                );
                return None;
            }
        };
        let reply = self.respond(&msg, pxe_port);
        if let Some(r) = &reply {
            let t = r
                .opts()
                .msg_type()
                .map(|t| format!("{t:?}").to_lowercase())
                .unwrap_or_default();
            m.inc("labimg_dhcp_replies_total", &[("type", &t)]);
        }
        reply
    }

    /// Answers a decoded request (counts it, or counts why it was dropped).
    pub fn respond(&self, msg: &Message, pxe_port: bool) -> Option<Message> {
        let m = &self.shared.metrics;
        let client = match classify(msg) {
            Ok(c) => c,
            Err(r) => {
                m.inc("labimg_dhcp_dropped_total", &[("reason", r.label())]);
                return None;
            }
        };
        let t = format!("{:?}", client.msg_type).to_lowercase();
        m.inc("labimg_dhcp_packets_total", &[("type", &t)]);
        let firmware = client.firmware.is_some();
        if firmware && client.msg_type == MessageType::Discover {
            self.shared.timeline.mark(client.mac, "dhcp-discover");
            // A Pi's TFTP folder is its serial: how its file fetches find its boot.
            if let Some(Firmware::RaspberryPi {
                serial: Some(serial),
                ..
            }) = &client.firmware
            {
                self.shared.timeline.bind_serial(serial, client.mac);
            }
        }
        let reply = match &self.leases {
            Some(l) => {
                let r = self.respond_full(msg, &client, l);
                if let Ok(store) = l.lock() {
                    m.gauge_set("labimg_dhcp_leases", &[], store.active() as i64);
                }
                r
            }
            None => self.respond_proxy(msg, &client, pxe_port),
        };
        if firmware && reply.as_ref().and_then(|r| r.opts().msg_type()) == Some(MessageType::Offer)
        {
            self.shared.timeline.mark(client.mac, "dhcp-offer");
        }
        reply
    }

    fn decision(&self, c: &Client) -> Decision {
        let serial = match &c.firmware {
            Some(Firmware::RaspberryPi { serial, .. }) => serial.as_deref(),
            _ => None,
        };
        self.shared.inventory().decide(Some(&c.mac), serial)
    }

    fn boot_params(&self, c: &Client) -> Option<reply::BootParams> {
        let fw = c.firmware.as_ref()?;
        if matches!(self.decision(c), Decision::Ignore) {
            return None;
        }
        Some(reply::boot_params(fw, &c.mac, &self.shared.http_base()))
    }

    fn respond_proxy(&self, req: &Message, c: &Client, pxe_port: bool) -> Option<Message> {
        let kind = match (c.msg_type, pxe_port) {
            (MessageType::Discover, false) => MessageType::Offer,
            (MessageType::Request, true) | (MessageType::Inform, _) => MessageType::Ack,
            _ => return None,
        };
        let params = self.boot_params(c)?;
        let server = self.shared.cfg.advertise;
        let mut r = reply::reply_to(req, kind, server, Ipv4Addr::UNSPECIFIED);
        reply::add_boot(&mut r, req, &params, server);
        Some(r)
    }

    fn reservations(&self) -> Reservations {
        self.shared
            .inventory()
            .nodes
            .iter()
            .filter_map(|n| Some((n.mac?, n.ip?)))
            .collect()
    }

    fn respond_full(
        &self,
        req: &Message,
        c: &Client,
        leases: &Mutex<LeaseStore>,
    ) -> Option<Message> {
        let server = self.shared.cfg.advertise;
        let res = self.reservations();
        let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let mut store = leases.lock().ok()?;
        let log_err = |r: Result<()>| {
            if let Err(e) = r {
                tracing::error!("lease file: {e:#}");
            }
        };
        let (kind, ip) = match c.msg_type {
            MessageType::Discover => (MessageType::Offer, store.offer(&c.mac, requested, &res)?),
            MessageType::Request => {
                if server_id.is_some_and(|s| s != server) {
                    return None; // the client chose another server
                }
                let ip = requested.or(Some(req.ciaddr()).filter(|ip| !ip.is_unspecified()))?;
                match store.request(&c.mac, ip, &res) {
                    Ok(Ok(lease)) => {
                        tracing::info!(mac = %c.mac, ip = %lease.ip, "lease granted");
                        (MessageType::Ack, lease.ip)
                    }
                    Ok(Err(nak)) => {
                        tracing::info!(mac = %c.mac, %ip, "NAK: {nak}");
                        let mut r =
                            reply::reply_to(req, MessageType::Nak, server, Ipv4Addr::UNSPECIFIED);
                        r.set_flags(r.flags().set_broadcast());
                        return Some(r);
                    }
                    Err(e) => {
                        tracing::error!("lease file: {e:#}");
                        return None;
                    }
                }
            }
            MessageType::Release => {
                log_err(store.release(&c.mac, req.ciaddr()));
                return None;
            }
            MessageType::Decline => {
                if let Some(ip) = requested {
                    tracing::warn!(mac = %c.mac, %ip, "client declined an address: in use elsewhere");
                    log_err(store.decline(&c.mac, ip));
                }
                return None;
            }
            MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            _ => return None,
        };
        let lease_secs = store.lease_secs();
        drop(store);
        let mut r = reply::reply_to(req, kind, server, ip);
        let o = r.opts_mut();
        o.insert(DhcpOption::SubnetMask(self.opts.subnet_mask));
        if let Some(gw) = self.opts.router {
            o.insert(DhcpOption::Router(vec![gw]));
        }
        if !self.opts.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServer(self.opts.dns.clone()));
        }
        if c.msg_type != MessageType::Inform {
            o.insert(DhcpOption::AddressLeaseTime(lease_secs));
            o.insert(DhcpOption::Renewal(lease_secs / 2));
            o.insert(DhcpOption::Rebinding(lease_secs / 8 * 7));
        }
        if let Decision::Known(n) = self.decision(c) {
            o.insert(DhcpOption::Hostname(n.hostname));
        }
        if let Some(p) = self.boot_params(c) {
            reply::add_boot(&mut r, req, &p, server);
        }
        Some(r)
    }
}

/// The MAC of a message (for tests and logs).
pub fn mac_of(msg: &Message) -> Option<Mac> {
    msg.chaddr()
        .get(..6)
        .and_then(|b| b.try_into().ok())
        .map(Mac)
}
