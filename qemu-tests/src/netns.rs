//! A throw-away network namespace holding a bridge (the lab's L2 segment, with the
//! server's address on it) and tap devices for QEMU guests. Everything lives inside
//! the namespace, so deleting it on drop removes the bridge and taps too and no
//! test traffic (DHCP broadcasts included) ever reaches the host's network.

use std::process::Command;

use anyhow::{Context, Result};

use crate::run;

/// A network namespace with one bridge; deleted on drop.
#[derive(Debug)]
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

/// Debian's dnsmasq as the LAN's DHCP server (no DNS, no TFTP) inside a
/// namespace: the "home router" a node gets its address from. Stopped on drop.
#[derive(Debug)]
pub struct DhcpServer {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Netns {
    /// Starts dnsmasq on the bridge, leasing `first`..`last` (a /24) for an hour.
    pub fn dnsmasq_dhcp(&self, first: &str, last: &str) -> Result<DhcpServer> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("dnsmasq.log");
        let child = self
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--log-dhcp",
                "--log-facility=-",
                "--bind-interfaces",
            ])
            .arg(format!("--interface={}", self.bridge))
            .arg(format!("--dhcp-range={first},{last},255.255.255.0,1h"))
            // A home router names itself as DNS server (dnsmasq's DNS is off here).
            .arg("--dhcp-option=option:dns-server,0.0.0.0")
            // And itself as NTP server (option 42), as many home routers do.
            .arg("--dhcp-option=option:ntp-server,0.0.0.0")
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path().join("leases").display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting dnsmasq (Debian package dnsmasq)")?;
        Ok(DhcpServer {
            child,
            log,
            _dir: dir,
        })
    }
}

/// busybox's udhcpd as a LAN's DHCP server with short leases (dnsmasq will not lease
/// for less than two minutes): what renewals are tested against. Stopped on drop.
#[derive(Debug)]
pub struct ShortLeaseDhcp {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Netns {
    /// Starts `busybox udhcpd` on the bridge, leasing `first`..`last` (a /24, router
    /// and DNS at `router`) for `lease_secs` seconds.
    pub fn udhcpd(
        &self,
        first: &str,
        last: &str,
        router: &str,
        lease_secs: u32,
    ) -> Result<ShortLeaseDhcp> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("udhcpd.conf");
        let leases = dir.path().join("leases");
        std::fs::write(
            &conf,
            format!(
                "start {first}\nend {last}\ninterface {}\nlease_file {}\npidfile {}\n\
                 auto_time 5\nmin_lease {lease_secs}\noption subnet 255.255.255.0\n\
                 option router {router}\noption dns {router}\noption ntpsrv {router}\n\
                 option lease {lease_secs}\n",
                self.bridge,
                leases.display(),
                dir.path().join("pid").display(),
            ),
        )?;
        std::fs::write(&leases, b"")?;
        let child = self
            .command("busybox")
            .args(["udhcpd", "-f"])
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("udhcpd.log"))?)
            .spawn()
            .context("starting busybox udhcpd")?;
        Ok(ShortLeaseDhcp { child, dir })
    }
}

impl ShortLeaseDhcp {
    /// The current leases as `busybox dumpleases` prints them (MAC, IP, expiry).
    pub fn leases(&self) -> String {
        let out = Command::new("busybox")
            .args(["dumpleases", "-f"])
            .arg(self.dir.path().join("leases"))
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for ShortLeaseDhcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's chrony as the LAN's NTP server (`chronyd -x`: it serves its own clock,
/// the host's, and never changes it), on `addr` port 123. Stopped on drop.
#[derive(Debug)]
pub struct NtpServer {
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Netns {
    /// Starts chronyd serving time on `addr` (an address of the bridge).
    pub fn chrony_server(&self, addr: &str) -> Result<NtpServer> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "local stratum 8\nallow all\nbindaddress {addr}\nport 123\ncmdport 0\n\
                 pidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )?;
        let child = self
            .command("chronyd")
            .args(["-x", "-d", "-f"])
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("chronyd.log"))?)
            .spawn()
            .context("starting chronyd (Debian package chrony)")?;
        Ok(NtpServer {
            child: Some(child),
            _dir: dir,
        })
    }
}

impl NtpServer {
    /// Stops the server (a node booted afterwards finds no NTP).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl DhcpServer {
    /// What dnsmasq logged so far (its DHCP exchanges, with --log-dhcp).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
