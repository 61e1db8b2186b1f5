//! Full-mode address management: a pool, static reservations from the inventory,
//! tentative offers, and leases persisted (temp file + rename) on every change.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::inventory::Mac;

/// How long an offered address is held for the client that was offered it.
const OFFER_HOLD: Duration = Duration::from_secs(60);

/// A committed lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// Leased address.
    pub ip: Ipv4Addr,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

/// Why a REQUEST is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Nak {
    /// The address belongs to someone else or is not ours to give.
    #[error("address not available for this client")]
    Unavailable,
}

/// Leases of the full-mode server.
#[derive(Debug)]
pub struct LeaseStore {
    path: PathBuf,
    start: u32,
    end: u32,
    lease_secs: u32,
    leases: BTreeMap<String, Lease>,
    offers: HashMap<Mac, (Ipv4Addr, Instant)>,
    declined: HashMap<Ipv4Addr, Instant>,
    /// Leases changed since the file was last written ([`LeaseStore::flush`]).
    dirty: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reservations: MAC → static IP, from the inventory.
pub type Reservations = HashMap<Mac, Ipv4Addr>;

impl LeaseStore {
    /// Opens the lease file (missing = no leases) for a pool `start..=end`.
    pub fn open(path: PathBuf, start: Ipv4Addr, end: Ipv4Addr, lease_secs: u32) -> Result<Self> {
        let leases = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("parsing lease file {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading lease file {}", path.display()));
            }
        };
        Ok(Self {
            path,
            start: start.into(),
            end: end.into(),
            lease_secs,
            leases,
            offers: HashMap::new(),
            declined: HashMap::new(),
            dirty: false,
        })
    }

    /// Writes the lease file (fsync'd, then renamed into place) if a lease changed
    /// since the last write. The server calls it once per batch of packets, before
    /// it sends their ACKs: a lease is on disk before its client hears of it, and a
    /// burst of clients costs one write instead of one each.
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.save()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::tokens::write_private(&self.path, &serde_json::to_vec_pretty(&self.leases)?)
    }

    /// Leases not yet expired.
    pub fn active(&self) -> usize {
        let t = now();
        self.leases.values().filter(|l| l.expires > t).count()
    }

    /// Lease time handed out, in seconds.
    pub fn lease_secs(&self) -> u32 {
        self.lease_secs
    }

    /// The client's current (unexpired) lease.
    pub fn lease_of(&self, mac: &Mac) -> Option<&Lease> {
        self.leases
            .get(&mac.to_string())
            .filter(|l| l.expires > now())
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&u32::from(ip))
    }

    /// True if `ip` may be given to `mac`.
    fn usable(&self, ip: Ipv4Addr, mac: &Mac, res: &Reservations) -> bool {
        if let Some(mine) = res.get(mac) {
            return *mine == ip;
        }
        let t = now();
        self.in_pool(ip)
            && !res.values().any(|r| *r == ip)
            && !self
                .leases
                .iter()
                .any(|(m, l)| l.ip == ip && l.expires > t && *m != mac.to_string())
            && !self
                .offers
                .iter()
                .any(|(m, (o, at))| *o == ip && m != mac && at.elapsed() < OFFER_HOLD)
            && self
                .declined
                .get(&ip)
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(self.lease_secs.into()))
    }

    /// Picks an address for a DISCOVER: the reservation, the current lease, the
    /// requested address, or the first free one; held for a minute.
    pub fn offer(
        &mut self,
        mac: &Mac,
        requested: Option<Ipv4Addr>,
        res: &Reservations,
    ) -> Option<Ipv4Addr> {
        let current = self.leases.get(&mac.to_string()).map(|l| l.ip);
        let pick = res
            .get(mac)
            .copied()
            .or(current.filter(|ip| self.usable(*ip, mac, res)))
            .or(requested.filter(|ip| self.usable(*ip, mac, res)))
            .or_else(|| {
                (self.start..=self.end)
                    .map(Ipv4Addr::from)
                    .find(|ip| self.usable(*ip, mac, res))
            })?;
        self.offers.insert(*mac, (pick, Instant::now()));
        Some(pick)
    }

    /// Commits a REQUEST for `ip`; [`LeaseStore::flush`] persists it.
    pub fn request(
        &mut self,
        mac: &Mac,
        ip: Ipv4Addr,
        res: &Reservations,
    ) -> Result<Result<Lease, Nak>> {
        if !self.usable(ip, mac, res) {
            return Ok(Err(Nak::Unavailable));
        }
        self.offers.remove(mac);
        let lease = Lease {
            ip,
            expires: now() + u64::from(self.lease_secs),
        };
        self.leases.insert(mac.to_string(), lease.clone());
        self.dirty = true;
        Ok(Ok(lease))
    }

    /// RELEASE: forgets the lease if `ip` is the client's (persisted by `flush`).
    pub fn release(&mut self, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
        if self
            .leases
            .get(&mac.to_string())
            .is_some_and(|l| l.ip == ip)
        {
            self.leases.remove(&mac.to_string());
            self.dirty = true;
        }
        Ok(())
    }

    /// DECLINE: the address is in use by someone we do not know; quarantine it.
    pub fn decline(&mut self, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
        self.declined.insert(ip, Instant::now());
        self.offers.remove(mac);
        if self
            .leases
            .get(&mac.to_string())
            .is_some_and(|l| l.ip == ip)
        {
            self.leases.remove(&mac.to_string());
            self.dirty = true;
        }
        Ok(())
    }
}
