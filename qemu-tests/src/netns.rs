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

/// A server process a test runs inside a namespace, with its own scratch folder
/// (config, leases, log: its stderr goes to `<dir>/<name>.log`). Stopped on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Netns {
    /// Starts `program args…` in the namespace. `setup` writes what it needs into the
    /// daemon's folder first and returns the arguments (which may name those files).
    fn daemon(
        &self,
        program: &str,
        what: &str,
        setup: impl FnOnce(&std::path::Path) -> Result<Vec<String>>,
    ) -> Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let args = setup(dir.path())?;
        let mut cmd = self.command(program);
        cmd.args(&args);
        Daemon::spawn(cmd, program, what, dir)
    }

    /// Debian's dnsmasq as the LAN's DHCP server (no DNS, no TFTP): the "home router" a
    /// node gets its address from, leasing `first`..`last` (a /24) for an hour, naming
    /// itself DNS and NTP server (options 6 and 42).
    pub fn dnsmasq_dhcp(&self, first: &str, last: &str) -> Result<Daemon> {
        let bridge = self.bridge.clone();
        self.daemon("dnsmasq", "dnsmasq (Debian package dnsmasq)", |dir| {
            Ok(vec![
                "--keep-in-foreground".into(),
                "--conf-file=/dev/null".into(),
                "--port=0".into(),
                "--user=root".into(),
                "--log-dhcp".into(),
                "--log-facility=-".into(),
                "--bind-interfaces".into(),
                format!("--interface={bridge}"),
                format!("--dhcp-range={first},{last},255.255.255.0,1h"),
                // A home router names itself as DNS server (dnsmasq's DNS is off here)
                // and as NTP server (option 42), as many do.
                "--dhcp-option=option:dns-server,0.0.0.0".into(),
                "--dhcp-option=option:ntp-server,0.0.0.0".into(),
                format!("--dhcp-leasefile={}", dir.join("leases").display()),
            ])
        })
    }

    /// busybox's udhcpd as a LAN's DHCP server with short leases (dnsmasq will not
    /// lease for less than two minutes): leasing `first`..`last` (a /24, router, DNS
    /// and NTP at `router`) for `lease_secs` seconds. [`Daemon::leases`] reads them.
    pub fn udhcpd(&self, first: &str, last: &str, router: &str, lease_secs: u32) -> Result<Daemon> {
        let bridge = self.bridge.clone();
        self.daemon("busybox", "busybox udhcpd", |dir| {
            let conf = dir.join("udhcpd.conf");
            std::fs::write(
                &conf,
                format!(
                    "start {first}\nend {last}\ninterface {bridge}\nlease_file {}\npidfile {}\n\
                     auto_time 5\nmin_lease {lease_secs}\noption subnet 255.255.255.0\n\
                     option router {router}\noption dns {router}\noption ntpsrv {router}\n\
                     option lease {lease_secs}\n",
                    dir.join("leases").display(),
                    dir.join("pid").display(),
                ),
            )?;
            std::fs::write(dir.join("leases"), b"")?;
            Ok(vec![
                "udhcpd".into(),
                "-f".into(),
                conf.display().to_string(),
            ])
        })
    }

    /// Debian's chrony as the LAN's NTP server on `addr` (an address of the bridge),
    /// port 123: `chronyd -x` serves its own clock, the host's, and never changes it.
    pub fn chrony_server(&self, addr: &str) -> Result<Daemon> {
        self.daemon("chronyd", "chronyd (Debian package chrony)", |dir| {
            let conf = dir.join("chrony.conf");
            std::fs::write(
                &conf,
                format!(
                    "local stratum 8\nallow all\nbindaddress {addr}\nport 123\ncmdport 0\n\
                     pidfile {}\n",
                    dir.join("chronyd.pid").display()
                ),
            )?;
            Ok(vec![
                "-x".into(),
                "-d".into(),
                "-f".into(),
                conf.display().to_string(),
            ])
        })
    }
}

impl Daemon {
    /// Starts `cmd` (stdin and stdout closed, stderr into `<dir>/<name>.log`) as a
    /// daemon owning the scratch folder `dir`: the namespace servers above, and
    /// [`crate::secureboot::Swtpm`].
    pub(crate) fn spawn(
        mut cmd: Command,
        name: &str,
        what: &str,
        dir: tempfile::TempDir,
    ) -> Result<Daemon> {
        let log = dir.path().join(format!("{name}.log"));
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Daemon {
            child: Some(child),
            dir,
            log,
        })
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// What the daemon wrote to stderr so far (dnsmasq: its DHCP exchanges).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// udhcpd's current leases as `busybox dumpleases` prints them (MAC, IP, expiry).
    pub fn leases(&self) -> String {
        let out = Command::new("busybox")
            .args(["dumpleases", "-f"])
            .arg(self.dir.path().join("leases"))
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Stops it (a node booted afterwards finds no such server).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
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

/// A boot test's home LAN: namespace `<prefix>-<pid>` whose bridge is 10.`net`.0.1/24
/// with tap `tap0`, chrony serving time on 10.`net`.0.1, and dnsmasq leasing
/// 10.`net`.0.100–150 (naming itself DNS and NTP server). Fields drop in order:
/// the servers stop before the namespace goes.
#[derive(Debug)]
pub struct HomeLan {
    pub dhcp: Daemon,
    pub ntp: Daemon,
    pub ns: Netns,
}

impl HomeLan {
    pub fn start(prefix: &str, net: u8) -> Result<HomeLan> {
        let ns = Netns::create(
            &format!("{prefix}-{}", std::process::id()),
            &format!("10.{net}.0.1/24"),
        )?;
        ns.add_tap("tap0")?;
        let ntp = ns.chrony_server(&format!("10.{net}.0.1"))?;
        let dhcp = ns.dnsmasq_dhcp(&format!("10.{net}.0.100"), &format!("10.{net}.0.150"))?;
        Ok(HomeLan { dhcp, ntp, ns })
    }
}
