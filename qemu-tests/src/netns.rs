//! A throw-away network namespace holding a bridge (the lab's L2 segment, with the
//! server's address on it) and tap devices for QEMU guests. Everything lives inside
//! the namespace, so deleting it on drop removes the bridge and taps too and no
//! test traffic (DHCP broadcasts included) ever reaches the host's network.

use std::process::Command;

use anyhow::{Context, Result};

use crate::run;

/// A network namespace with one bridge; deleted on drop.
pub struct Netns {
    name: String,
    bridge: String,
}

impl Netns {
    /// Creates namespace `name` (a stale one of that name is deleted first) with
    /// loopback up and bridge `br0` holding `cidr` (e.g. `10.77.0.1/24`).
    pub fn create(name: &str, cidr: &str) -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name} (needs root)"))?;
        // From here on the guard deletes the namespace if a later step fails.
        let ns = Netns {
            name: name.to_owned(),
            bridge: "br0".to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // STP off and no forward delay: a tap port forwards the firmware's first
        // DHCPDISCOVER instead of dropping it while the port learns.
        ns.ip(&[
            "link",
            "add",
            &ns.bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ns.ip(&["addr", "add", cidr, "dev", &ns.bridge])?;
        ns.ip(&["link", "set", &ns.bridge, "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bridge's interface name inside the namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Adds tap device `tap`, enslaved to the bridge and up; QEMU attaches to it with
    /// `-netdev tap,ifname=<tap>,script=no,downscript=no` run inside the namespace.
    pub fn add_tap(&self, tap: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", &self.bridge])?;
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace takes its bridge and taps with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
