//! The network values a profile and the netboot inventory are written in: address
//! ranges, MAC addresses, host names and Git URLs. One parser each, shared by the
//! profile checks, the renderers and `labimg serve`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address with a prefix length, `addr/len` (`192.168.1.10/24`, `10.42.0.0/16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address as written (host bits may be set: a node's own address).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Cidr {
    /// Parses `addr/len`; the error says what was expected.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let err = || format!("'{s}' is not an address with prefix length like 192.168.1.10/24");
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let len: u8 = len.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(err());
        }
        Ok(Cidr { addr, len })
    }

    fn prefix_of(addr: IpAddr, len: u8) -> u128 {
        let (v, width) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u8),
            IpAddr::V6(a) => (u128::from(a), 128u8),
        };
        let host = u32::from(width - len);
        if host >= 128 { 0 } else { (v >> host) << host }
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

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An Ethernet MAC address; shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC as 12 lowercase hex digits without separators (used in host names).
    pub fn compact(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabbccddeeff`, any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let groups: Vec<&str> = s.split([':', '-']).collect();
        let grouped_ok = groups.len() == 1 || groups.iter().all(|g| g.len() == 2);
        let bytes = hex::decode(groups.concat())
            .ok()
            .filter(|_| grouped_ok)
            .ok_or_else(|| format!("invalid MAC address {s:?}"))?;
        let arr: [u8; 6] = bytes
            .try_into()
            .map_err(|_| format!("invalid MAC address {s:?}: expected 6 bytes"))?;
        Ok(Mac(arr))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// RFC 1123: dot-separated labels of 1–63 letters, digits and inner hyphens, ≤ 253 in all.
pub fn is_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// An SSH Git URL: `ssh://…` or scp-like `git@host:path` (its credentials are an SSH
/// private key, and Flux checks its host key).
pub fn is_ssh_git_url(repo: &str) -> bool {
    repo.starts_with("ssh://")
        || (!repo.contains("://") && repo.split_once(':').is_some_and(|(h, _)| h.contains('@')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let (p, s) = (c("10.42.0.0/16"), c("10.43.0.0/16"));
        assert!(!p.overlaps(&s) && p.overlaps(&c("10.0.0.0/8")));
        assert!(
            p.contains("10.42.7.1".parse().unwrap()) && !p.contains("10.43.0.1".parse().unwrap())
        );
        assert!(c("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(!p.overlaps(&c("fd00::/8")));
        assert!(Cidr::parse("10.0.0.1/33").is_err() && Cidr::parse("10.0.0.1").is_err());
        assert!(Cidr::parse("fd00::1/64").is_ok());
        assert_eq!(c("192.168.1.10/24").to_string(), "192.168.1.10/24");
    }

    #[test]
    fn macs_in_every_written_form() {
        let want = Mac([0xaa, 0xbb, 0xcc, 0, 0x11, 0x22]);
        for s in ["AA-bb-CC-00-11-22", "aa:bb:cc:00:11:22", "aabbcc001122"] {
            assert_eq!(s.parse::<Mac>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "aa:bb:cc:00:11:22");
        assert_eq!(want.compact(), "aabbcc001122");
        for bad in [
            "aa:bb:cc:00:11",
            "aab:bcc:001:122",
            "52:54:00",
            "zz:bb:cc:00:11:22",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames_and_git_urls() {
        assert!(is_hostname("pi-cp1") && is_hostname("node1.lab.example"));
        assert!(!is_hostname("-bad") && !is_hostname("under_score") && !is_hostname(""));
        assert!(is_ssh_git_url("ssh://git@github.com/example/fleet.git"));
        assert!(is_ssh_git_url("git@github.com:example/fleet.git"));
        assert!(!is_ssh_git_url("https://github.com/example/fleet.git"));
    }
}
