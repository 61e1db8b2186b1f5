//! Full DHCP mode against the real busybox `udhcpc`: two network namespaces joined
//! by a veth pair, the appliance (this test binary re-run as a helper) in one, the
//! client in the other. Checks a reservation with PXE boot parameters, pool
//! addresses, and that leases survive a server restart (killed with SIGKILL); and the
//! IPv6 router advertisement against the real `rdisc6` (Debian's ndisc6): sent in full
//! mode, not in proxy mode unless asked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HELPER_ENV: &str = "LABIMG_NETNS_HELPER_DIR";

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces, veth and the server process; all removed on drop, even on panic.
struct Lab {
    srv_ns: String,
    cli_ns: String,
    srv_if: String,
    cli_if: String,
    server: Option<Child>,
    dir: PathBuf,
}

impl Lab {
    fn new(dir: &Path) -> Self {
        let id = std::process::id();
        let lab = Lab {
            srv_ns: format!("lbnb-s-{id}"),
            cli_ns: format!("lbnb-c-{id}"),
            srv_if: format!("lbs{id}"),
            cli_if: format!("lbc{id}"),
            server: None,
            dir: dir.to_path_buf(),
        };
        run(&["ip", "netns", "add", &lab.srv_ns]);
        run(&["ip", "netns", "add", &lab.cli_ns]);
        run(&[
            "ip",
            "link",
            "add",
            &lab.srv_if,
            "type",
            "veth",
            "peer",
            "name",
            &lab.cli_if,
        ]);
        run(&["ip", "link", "set", &lab.srv_if, "netns", &lab.srv_ns]);
        run(&["ip", "link", "set", &lab.cli_if, "netns", &lab.cli_ns]);
        run(&[
            "ip",
            "-n",
            &lab.srv_ns,
            "addr",
            "add",
            "10.9.0.1/24",
            "dev",
            &lab.srv_if,
        ]);
        for (ns, ifc) in [(&lab.srv_ns, &lab.srv_if), (&lab.cli_ns, &lab.cli_if)] {
            // Link-local addresses usable at once: no duplicate address detection wait.
            let dad = format!("net.ipv6.conf.{ifc}.accept_dad=0");
            run(&["ip", "netns", "exec", ns, "sysctl", "-qw", &dad]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", ifc, "up"]);
        }
        lab
    }

    fn start_server(&mut self) {
        self.start_server_with(&[]);
    }

    /// Starts the server with `env` (`LABIMG_NETNS_HELPER_DHCP`, `…_RA`) on top.
    fn start_server_with(&mut self, env: &[(&str, &str)]) {
        self.stop_server();
        let exe = std::env::current_exe().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv_ns])
            .arg(exe)
            .args(["--exact", "netns_server_helper", "--ignored", "--nocapture"])
            .env(HELPER_ENV, &self.dir)
            .env("LABIMG_NETNS_HELPER_IF", &self.srv_if)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the server helper");
        self.server = Some(child);
    }

    fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs udhcpc with `mac` and extra args; returns the variables of the `bound` event.
    fn udhcpc(&self, mac: &str, extra: &[&str]) -> std::collections::BTreeMap<String, String> {
        let (ns, ifc) = (&self.cli_ns, &self.cli_if);
        run(&["ip", "-n", ns, "link", "set", ifc, "down"]);
        run(&["ip", "-n", ns, "link", "set", ifc, "address", mac]);
        run(&["ip", "-n", ns, "link", "set", ifc, "up"]);
        let out = self.dir.join("bound.env");
        let _ = std::fs::remove_file(&out);
        let script = self.dir.join("udhcpc.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nif [ \"$1\" = bound ]; then\n  env > {}\n  ip addr flush dev \"$interface\"\n  ip addr add \"$ip/$mask\" dev \"$interface\"\nfi\nexit 0\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let status = Command::new("ip")
            .args([
                "netns", "exec", ns, "timeout", "30", "udhcpc", "-f", "-q", "-n", "-t", "10", "-T",
                "1", "-i", ifc,
            ])
            .arg("-s")
            .arg(&script)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running udhcpc");
        assert!(status.success(), "udhcpc got no lease for {mac}");
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

impl Lab {
    /// `curl -sf --max-time SECS URL` from the client namespace.
    fn client_curl(&self, secs: &str, url: &str) -> std::process::Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.cli_ns,
                "curl",
                "-sf",
                "--max-time",
                secs,
                url,
            ])
            .output()
            .expect("running curl")
    }

    /// Fetches a URL with curl from the client namespace.
    fn curl(&self, url: &str) -> Vec<u8> {
        let out = self.client_curl("20", url);
        assert!(out.status.success(), "curl {url}: {:?}", out.status);
        out.stdout
    }
}

impl Lab {
    /// Solicits routers with `rdisc6` from the client side: its output when an
    /// advertisement came, None when none did within three tries.
    fn rdisc6(&self) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.cli_ns, "timeout", "20", "rdisc6"])
            .args(["-1", "-n", "-r", "4", "-w", "1500", &self.cli_if])
            .output()
            .expect("running rdisc6");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the server answers HTTP, so it has bound every socket.
    fn wait_for_server(&self) {
        for _ in 0..100 {
            let ok = self
                .client_curl("1", "http://10.9.0.1:8080/healthz")
                .status
                .success();
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server never answered /healthz");
    }
}

#[test]
fn router_advertisement_in_full_mode_only_unless_asked() {
    let f = common::fixture(8080);
    let mut lab = Lab::new(f.dir.path());
    run(&[
        "ip",
        "-n",
        &lab.cli_ns,
        "addr",
        "add",
        "10.9.0.2/24",
        "dev",
        &lab.cli_if,
    ]);

    lab.start_server();
    lab.wait_for_server();
    let ra = lab
        .rdisc6()
        .expect("full mode answers a router solicitation");
    // rdisc6 prints each field as "name : value"; the advertisement configures nothing.
    let field = |name: &str| {
        ra.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in rdisc6 output:\n{ra}"))
    };
    assert!(field("Router lifetime").starts_with("0 "), "{ra}");
    assert_eq!(field("Stateful address conf."), "No", "{ra}");
    assert_eq!(field("Stateful other conf."), "No", "{ra}");
    assert!(!ra.contains("Prefix"), "no prefix is announced: {ra}");
    assert!(!ra.contains("MTU"), "{ra}");

    lab.start_server_with(&[("LABIMG_NETNS_HELPER_DHCP", "proxy")]);
    lab.wait_for_server();
    assert_eq!(
        lab.rdisc6(),
        None,
        "proxy mode sends no advertisement by default"
    );

    lab.start_server_with(&[
        ("LABIMG_NETNS_HELPER_DHCP", "proxy"),
        ("LABIMG_NETNS_HELPER_RA", "on"),
    ]);
    lab.wait_for_server();
    let ra = lab
        .rdisc6()
        .expect("--router-advert on answers in proxy mode");
    assert!(ra.contains("Router lifetime"), "{ra}");
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_server();
        for ns in [&self.srv_ns, &self.cli_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn full_mode_with_real_udhcpc_in_netns() {
    let f = common::fixture(8080);
    let mut lab = Lab::new(f.dir.path());
    lab.start_server();
    let pxe = ["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"];
    let cp1 = lab.udhcpc(common::CP_MAC, &pxe);
    assert_eq!(cp1["ip"], "10.9.0.10", "{cp1:?}");
    assert_eq!(cp1["subnet"], "255.255.255.0");
    assert_eq!(cp1["router"], "10.9.0.1");
    assert_eq!(cp1["serverid"], "10.9.0.1");
    assert_eq!(cp1["siaddr"], "10.9.0.1");
    assert_eq!(cp1["boot_file"], "undionly.kpxe");
    // With the leased address, the client reaches the appliance's HTTP and TFTP.
    let script = lab.curl(&format!(
        "http://10.9.0.1:8080/boot.ipxe?mac={}",
        common::CP_MAC
    ));
    let script = String::from_utf8(script).unwrap();
    assert!(
        script.contains("\nkernel http://10.9.0.1:8080/images/proxmox/vmlinuz initrd=initrd.img "),
        "{script}"
    );
    let undi = lab.curl("tftp://10.9.0.1/undionly.kpxe");
    assert!(undi == std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap());
    assert_eq!(cp1["hostname"], "cp1");
    let a = lab.udhcpc("02:00:00:00:00:0a", &[]);
    assert_eq!(a["ip"], "10.9.0.100");
    assert!(
        !a.contains_key("boot_file"),
        "a plain client gets no boot file: {a:?}"
    );

    lab.start_server(); // the old one is SIGKILLed: only what was persisted survives
    let b = lab.udhcpc("02:00:00:00:00:0b", &[]);
    assert_eq!(b["ip"], "10.9.0.101", "a's lease must survive the restart");
    let a2 = lab.udhcpc("02:00:00:00:00:0a", &[]);
    assert_eq!(a2["ip"], "10.9.0.100");
    let leases = std::fs::read_to_string(f.dir.path().join("netns-state/leases.json")).unwrap();
    assert!(
        leases.contains("\"02:00:00:00:00:0b\"") && leases.contains("10.9.0.101"),
        "{leases}"
    );
}

/// Not a test on its own: the server side of `full_mode_with_real_udhcpc_in_netns`,
/// started by it inside the server namespace.
#[test]
#[ignore = "helper process for full_mode_with_real_udhcpc_in_netns"]
fn netns_server_helper() {
    let dir = PathBuf::from(
        std::env::var(HELPER_ENV).expect("run by full_mode_with_real_udhcpc_in_netns"),
    );
    let iface = std::env::var("LABIMG_NETNS_HELPER_IF").unwrap();
    let env_or = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let opts = labimg_netboot::ServeOptions {
        images: dir.join("images"),
        inventory: dir.join("inventory.toml"),
        interface: Some(iface),
        dhcp: env_or("LABIMG_NETNS_HELPER_DHCP", "full").parse().unwrap(),
        router_advert: env_or("LABIMG_NETNS_HELPER_RA", "auto").parse().unwrap(),
        http_addr: "10.9.0.1:8080".parse().unwrap(),
        tftp_addr: "10.9.0.1:69".parse().unwrap(),
        pool_start: Some("10.9.0.100".parse().unwrap()),
        pool_end: Some("10.9.0.110".parse().unwrap()),
        router: Some("10.9.0.1".parse().unwrap()),
        state_dir: dir.join("netns-state"),
        ipxe_dir: Some(dir.join("ipxe")),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Bounded even if the parent dies without killing us.
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), labimg_netboot::serve_async(opts)).await
    });
    if let Ok(Err(e)) = r {
        panic!("server failed: {e:#}");
    }
}
