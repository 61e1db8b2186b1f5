//! A small read-only TFTP server (RFC 1350) with options (RFC 2347), blksize
//! (2348), tsize and timeout (2349) and windowsize (7440); one task and one socket
//! per transfer, bounded in number. A request beyond the bound waits in a queue (up to
//! [`QUEUE_WAIT`]) for a running transfer to end, instead of being refused: a Pi 5 that
//! gets an error for its kernel does not come back for minutes. On a stop signal it
//! takes no more requests and waits for the running transfers ([`Tftp::run_until`]).

pub mod files;
pub mod packet;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::Shared;
use files::Source;
use packet::Packet;

/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: usize = 65464;
/// Largest window we agree to.
pub const MAX_WINDOW: u16 = 64;
/// Retransmissions before a transfer is abandoned.
const MAX_RETRIES: u32 = 5;
/// How long a read request waits for a free transfer slot before it gets
/// `server busy`. Clients retransmit an unanswered request (the Pi 5 after about a
/// second, curl after its timeout); those copies are dropped while the first one
/// waits, so one transfer starts per request however long it waited.
pub const QUEUE_WAIT: Duration = Duration::from_secs(20);

/// Requests waiting for a slot: (client address, file name).
type Queue = Arc<Mutex<HashSet<(SocketAddr, String)>>>;

/// The TFTP service.
#[derive(Debug)]
pub struct Tftp {
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    queue: Queue,
    max_transfers: usize,
    max_blksize: usize,
}

/// Transfer parameters after negotiation.
#[derive(Debug, Clone, Copy)]
struct Params {
    blksize: usize,
    window: u16,
    timeout: Duration,
}

impl Tftp {
    /// Binds the TFTP socket; `mtu` (the interface's) caps blksize.
    pub async fn bind(
        addr: SocketAddr,
        shared: Arc<Shared>,
        max_transfers: usize,
        mtu: Option<u32>,
    ) -> Result<Self> {
        let sock = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding TFTP to {addr}"))?;
        // IPv4 (20) + UDP (8) + TFTP DATA header (4) must fit in one frame.
        let max_blksize = mtu
            .map(|m| (m as usize).saturating_sub(32).clamp(8, MAX_BLKSIZE))
            .unwrap_or(MAX_BLKSIZE);
        Ok(Self {
            sock: Arc::new(sock),
            shared,
            slots: Arc::new(Semaphore::new(max_transfers.max(1))),
            queue: Queue::default(),
            max_transfers: max_transfers.max(1),
            max_blksize,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.sock.local_addr().context("TFTP socket address")
    }

    /// Serves requests until aborted.
    pub async fn run(self) -> Result<()> {
        let (_never_stops, stop) = tokio::sync::watch::channel(false);
        self.run_until(stop).await
    }

    /// Serves requests until `stop` turns true, then closes the server socket (a new
    /// request gets ICMP port unreachable) and returns once every running transfer
    /// has ended: finished, failed, or given up after its retries.
    pub async fn run_until(self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        let mut buf = vec![0u8; 2048];
        loop {
            let received = tokio::select! {
                r = self.sock.recv_from(&mut buf) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (n, peer) = match received {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("TFTP receive: {e}");
                    continue;
                }
            };
            let m = &self.shared.metrics;
            let reply_err = |code, msg: &str| packet::error(code, msg);
            match packet::parse(&buf[..n]) {
                Some(Packet::Request {
                    opcode: packet::RRQ,
                    file,
                    mode,
                    options,
                }) => {
                    if mode != "octet" && mode != "netascii" {
                        let _ = self
                            .sock
                            .send_to(&reply_err(packet::E_ILLEGAL, "mode not supported"), peer)
                            .await;
                        continue;
                    }
                    let shared = self.shared.clone();
                    let local = self.sock.local_addr()?;
                    let max_blksize = self.max_blksize;
                    let permit = match self.slots.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            let key = (peer, file.clone());
                            if !self.queue.lock().unwrap().insert(key.clone()) {
                                // A retransmission of a request that is already waiting.
                                m.inc("labimg_tftp_requests_total", &[("result", "repeat")]);
                                continue;
                            }
                            m.inc("labimg_tftp_requests_total", &[("result", "queued")]);
                            let (slots, queue, sock) =
                                (self.slots.clone(), self.queue.clone(), self.sock.clone());
                            let mut stop = stop.clone();
                            tokio::spawn(async move {
                                let permit = tokio::select! {
                                    p = slots.acquire_owned() => p.ok(),
                                    _ = tokio::time::sleep(QUEUE_WAIT) => None,
                                    _ = stopped(&mut stop) => None,
                                };
                                queue.lock().unwrap().remove(&key);
                                let Some(permit) = permit else {
                                    shared
                                        .metrics
                                        .inc("labimg_tftp_requests_total", &[("result", "busy")]);
                                    let busy = packet::error(
                                        packet::E_UNDEFINED,
                                        "server busy, retry later",
                                    );
                                    let _ = sock.send_to(&busy, peer).await;
                                    return;
                                };
                                transfer(shared, local, peer, file, options, max_blksize, permit)
                                    .await;
                            });
                            continue;
                        }
                    };
                    tokio::spawn(transfer(
                        shared,
                        local,
                        peer,
                        file,
                        options,
                        max_blksize,
                        permit,
                    ));
                }
                Some(Packet::Request { .. }) => {
                    m.inc("labimg_tftp_requests_total", &[("result", "write-refused")]);
                    let _ = self
                        .sock
                        .send_to(&reply_err(packet::E_ACCESS, "read-only server"), peer)
                        .await;
                }
                Some(_) => {
                    let _ = self
                        .sock
                        .send_to(
                            &reply_err(packet::E_ILLEGAL, "expected a read request"),
                            peer,
                        )
                        .await;
                }
                None => m.inc("labimg_tftp_requests_total", &[("result", "malformed")]),
            }
        }
        let Tftp {
            sock,
            slots,
            max_transfers,
            ..
        } = self;
        // Queued requests hold a clone until they start or give up (they see `stop`).
        drop(sock);
        let running = max_transfers - slots.available_permits();
        tracing::info!("TFTP: no new requests; waiting for {running} running transfer(s)");
        // Every permit back means every transfer task has ended.
        let _ = slots.acquire_many(max_transfers as u32).await;
        Ok(())
    }
}

/// Resolves once `stop` turns true; never if its sender is gone without saying so.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One transfer, holding its slot until it ends.
async fn transfer(
    shared: Arc<Shared>,
    local: SocketAddr,
    peer: SocketAddr,
    file: String,
    options: Vec<(String, String)>,
    max_blksize: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if let Err(e) = serve_rrq(&shared, local, peer, &file, &options, max_blksize).await {
        tracing::warn!(%peer, "TFTP {file}: {e:#}");
    }
    drop(permit);
}

/// Negotiates options: returns the parameters and the OACK options to send.
fn negotiate(
    options: &[(String, String)],
    size: u64,
    max_blksize: usize,
) -> (Params, Vec<(String, String)>) {
    let mut p = Params {
        blksize: 512,
        window: 1,
        timeout: Duration::from_secs(1),
    };
    let mut ack = Vec::new();
    for (k, v) in options {
        let Ok(n) = v.parse::<u64>() else { continue };
        match k.as_str() {
            "blksize" => {
                // An oversized request is clamped, not refused: the OACK tells the client.
                p.blksize = (n.clamp(8, MAX_BLKSIZE as u64) as usize).min(max_blksize);
                ack.push((k.clone(), p.blksize.to_string()));
            }
            "tsize" => ack.push((k.clone(), size.to_string())),
            "timeout" if (1..=255).contains(&n) => {
                p.timeout = Duration::from_secs(n);
                ack.push((k.clone(), n.to_string()));
            }
            "windowsize" if n >= 1 => {
                p.window = (n.min(u64::from(MAX_WINDOW))) as u16;
                ack.push((k.clone(), p.window.to_string()));
            }
            _ => {}
        }
    }
    (p, ack)
}

async fn serve_rrq(
    shared: &Shared,
    local: SocketAddr,
    peer: SocketAddr,
    file: &str,
    options: &[(String, String)],
    max_blksize: usize,
) -> Result<()> {
    let m = &shared.metrics;
    let sock = UdpSocket::bind(SocketAddr::new(local.ip(), 0))
        .await
        .context("binding transfer socket")?;
    sock.connect(peer)
        .await
        .context("connecting transfer socket")?;
    let source = match files::resolve(shared, file) {
        Ok(s) => s,
        Err((code, msg)) => {
            let label = if code == packet::E_ACCESS {
                "refused"
            } else {
                "not-found"
            };
            m.inc("labimg_tftp_requests_total", &[("result", label)]);
            tracing::info!(%peer, "TFTP refused {file:?}: {msg}");
            sock.send(&packet::error(code, &msg)).await?;
            return Ok(());
        }
    };
    m.inc("labimg_tftp_requests_total", &[("result", "ok")]);
    let _active = crate::metrics::Active::new(m, "labimg_tftp_active_transfers");
    let (params, oack) = negotiate(options, source.len(), max_blksize);
    tracing::debug!(%peer, file, ?params, "TFTP transfer");
    match send_file(
        &sock,
        &source,
        params,
        (!oack.is_empty()).then(|| packet::oack(&oack)),
    )
    .await
    {
        Ok(()) => {
            m.inc("labimg_tftp_transfers_total", &[("result", "ok")]);
            m.add("labimg_tftp_bytes_total", &[], source.len());
            Ok(())
        }
        Err(e) => {
            m.inc("labimg_tftp_transfers_total", &[("result", "failed")]);
            Err(e)
        }
    }
}

/// Waits for an ACK; `Ok(None)` on timeout.
async fn recv_ack(sock: &UdpSocket, buf: &mut [u8], t: Duration) -> Result<Option<u16>> {
    let deadline = tokio::time::Instant::now() + t;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return Ok(None),
            Ok(r) => r.context("receiving ACK")?,
        };
        match packet::parse(&buf[..n]) {
            Some(Packet::Ack(b)) => return Ok(Some(b)),
            Some(Packet::Error(code, msg)) => {
                anyhow::bail!("client aborted with error {code}: {msg}")
            }
            _ => continue,
        }
    }
}

async fn send_file(sock: &UdpSocket, src: &Source, p: Params, oack: Option<Vec<u8>>) -> Result<()> {
    let mut buf = vec![0u8; 512];
    if let Some(o) = oack {
        let mut tries = 0;
        loop {
            sock.send(&o).await.context("sending OACK")?;
            match recv_ack(sock, &mut buf, p.timeout).await? {
                Some(0) => break,
                Some(_) => continue,
                None if tries < MAX_RETRIES => tries += 1,
                None => anyhow::bail!("no ACK of the OACK"),
            }
        }
    }
    let size = src.len();
    let bs = p.blksize as u64;
    // The last block is shorter than blksize, possibly empty.
    let total = size / bs + 1;
    let mut pkt = vec![0u8; 4 + p.blksize];
    let mut base: u64 = 1;
    let mut tries = 0;
    while base <= total {
        let end = (base + u64::from(p.window) - 1).min(total);
        for b in base..=end {
            let n = src
                .read_at(&mut pkt[4..], (b - 1) * bs)
                .context("reading file")?;
            pkt[..4].copy_from_slice(&packet::data_header(b as u16));
            sock.send(&pkt[..4 + n]).await.context("sending DATA")?;
        }
        loop {
            match recv_ack(sock, &mut buf, p.timeout).await? {
                None => {
                    tries += 1;
                    if tries > MAX_RETRIES {
                        anyhow::bail!("client stopped acknowledging at block {base}");
                    }
                    break;
                }
                Some(a) => {
                    // Block numbers wrap at 16 bits: measure the ACK from the last acked block.
                    let delta = u64::from(a.wrapping_sub((base - 1) as u16));
                    if delta >= 1 && delta <= end - base + 1 {
                        base += delta;
                        tries = 0;
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_clamps_and_reports() {
        let opts = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let (p, ack) = negotiate(
            &opts(&[("blksize", "70000"), ("tsize", "0"), ("windowsize", "500")]),
            1234,
            MAX_BLKSIZE,
        );
        assert_eq!(p.blksize, MAX_BLKSIZE);
        assert_eq!(p.window, MAX_WINDOW);
        assert_eq!(
            ack,
            opts(&[
                ("blksize", "65464"),
                ("tsize", "1234"),
                ("windowsize", "64")
            ])
        );
        let (p, _) = negotiate(&opts(&[("blksize", "4")]), 0, 1468);
        assert_eq!(p.blksize, 8);
        let (p, _) = negotiate(&opts(&[("blksize", "9000")]), 0, 1468);
        assert_eq!(p.blksize, 1468);
    }
}
