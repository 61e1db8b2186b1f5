//! Cluster-wide consistency the profile loader does not check: address ranges
//! that must not collide, and a join story every node can follow.
//!
//! The loader (`profile/semantic.rs`) already checks that each CIDR parses, that
//! there is at least one server and that a server count above one is odd, and
//! that a token source exists when nodes join; those are not repeated here.

use std::net::IpAddr;

use crate::profile::{CniKind, Profile, Role};

use super::PreseedError;

/// An address range, `addr/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address as written (host bits may be set).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Parses `addr/len`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = s.split_once('/')?;
        let addr: IpAddr = addr.trim().parse().ok()?;
        let len: u8 = len.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Cidr { addr, len })
    }

    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn prefix_of(addr: IpAddr, len: u8) -> (u128, u8) {
        let (v, width) = Cidr::bits(addr);
        let host = u32::from(width - len);
        let masked = if host >= 128 { 0 } else { (v >> host) << host };
        (masked, width)
    }

    /// Whether `ip` lies inside this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && Cidr::prefix_of(ip, self.len) == Cidr::prefix_of(self.addr, self.len)
    }

    /// Whether the two ranges share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let len = self.len.min(other.len);
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && Cidr::prefix_of(self.addr, len) == Cidr::prefix_of(other.addr, len)
    }
}

fn cidr(what: &str, s: &str) -> Result<Cidr, PreseedError> {
    Cidr::parse(s).ok_or_else(|| PreseedError::Topology(format!("{what} '{s}' is not a CIDR")))
}

/// Checks address ranges and the join story of the whole profile.
pub fn check(profile: &Profile) -> Result<(), PreseedError> {
    let k = &profile.k3s;
    let pods = cidr("k3s.cluster-cidr", &k.cluster_cidr)?;
    let services = cidr("k3s.service-cidr", &k.service_cidr)?;
    if pods.overlaps(&services) {
        return Err(PreseedError::Topology(format!(
            "k3s.cluster-cidr {} overlaps k3s.service-cidr {}: pods and services need separate ranges",
            k.cluster_cidr, k.service_cidr
        )));
    }
    let ranges = [("k3s.cluster-cidr", pods), ("k3s.service-cidr", services)];
    for node in &profile.nodes {
        let Some(ip) = node.ip.as_deref().and_then(Cidr::parse) else {
            continue;
        };
        for (what, range) in &ranges {
            if range.contains(ip.addr) {
                return Err(PreseedError::Topology(format!(
                    "node {}: ip {} lies inside {what} {}/{}: the node network must be outside the cluster's ranges",
                    node.hostname, ip.addr, range.addr, range.len
                )));
            }
        }
    }
    if let Some(vip) = profile.cluster.vip.as_deref()
        && let Ok(vip) = vip.parse::<IpAddr>()
    {
        for (what, range) in &ranges {
            if range.contains(vip) {
                return Err(PreseedError::Topology(format!(
                    "cluster.vip {vip} lies inside {what}"
                )));
            }
        }
    }
    if profile.cni.kind == CniKind::Cilium {
        for pool in &profile.cni.lb_ip_pools {
            let p = cidr("cni.lb-ip-pools", pool)?;
            for (what, range) in &ranges {
                if p.overlaps(range) {
                    return Err(PreseedError::Topology(format!(
                        "cni.lb-ip-pools {pool} overlaps {what}"
                    )));
                }
            }
        }
        if profile.cni.l2_announcements && !profile.cni.kube_proxy_replacement {
            return Err(PreseedError::Topology(
                "cni.l2-announcements needs cni.kube-proxy-replacement = true (Cilium answers ARP from its kube-proxy replacement)".into(),
            ));
        }
    }
    check_joins(profile)
}

/// Every node other than the first server must know where to join.
fn check_joins(profile: &Profile) -> Result<(), PreseedError> {
    let first = profile.nodes.iter().find(|n| n.role == Role::Server);
    let joiners: Vec<&str> = profile
        .nodes
        .iter()
        .filter(|n| Some(&n.hostname) != first.map(|f| &f.hostname))
        .map(|n| n.hostname.as_str())
        .collect();
    if joiners.is_empty() {
        return Ok(());
    }
    if first.is_none() {
        return Err(PreseedError::Topology(format!(
            "nodes {} need a server to join, and the profile has none",
            joiners.join(", ")
        )));
    }
    if crate::nodecfg::server_url(profile).is_none() {
        return Err(PreseedError::Topology(format!(
            "nodes {} join the cluster but no server URL is known: set cluster.server-url or give the first server a static ip",
            joiners.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let p = Cidr::parse("10.42.0.0/16").unwrap();
        let s = Cidr::parse("10.43.0.0/16").unwrap();
        assert!(!p.overlaps(&s) && p.overlaps(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(
            p.contains("10.42.7.1".parse().unwrap()) && !p.contains("10.43.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(!p.overlaps(&Cidr::parse("fd00::/8").unwrap()));
        assert!(Cidr::parse("10.0.0.1/33").is_none() && Cidr::parse("10.0.0.1").is_none());
    }
}
