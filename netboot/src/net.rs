//! Interface facts from the kernel: the IPv4 address (via `ip`) and the MTU (sysfs).

use std::process::Command;

use anyhow::{Context, Result, bail};

/// What the appliance needs to know about its interface.
#[derive(Debug, Clone)]
pub struct InterfaceInfo {
    /// First IPv4 address.
    pub ipv4: std::net::Ipv4Addr,
    /// Link MTU.
    pub mtu: u32,
}

/// Reads the IPv4 address and MTU of `name`.
pub fn interface_info(name: &str) -> Result<InterfaceInfo> {
    let mtu_path = format!("/sys/class/net/{name}/mtu");
    let mtu = std::fs::read_to_string(&mtu_path)
        .with_context(|| format!("reading {mtu_path} (does interface {name} exist?)"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {mtu_path}"))?;
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", name])
        .output()
        .with_context(|| format!("running ip -4 -o addr show dev {name}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ipv4 = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok());
    match ipv4 {
        Some(ipv4) => Ok(InterfaceInfo { ipv4, mtu }),
        None => bail!(
            "interface {name} has no IPv4 address (ip -4 -o addr show dev {name} printed {text:?})"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_info() {
        let i = super::interface_info("lo").unwrap();
        assert_eq!(i.ipv4, std::net::Ipv4Addr::LOCALHOST);
        assert!(i.mtu >= 1500);
    }
}
