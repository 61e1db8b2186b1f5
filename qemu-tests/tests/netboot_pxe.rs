//! Netboot end to end: QEMU machines PXE boot from the labimg appliance (the same
//! `serve_async` that `labimg serve` runs, with full DHCP, TFTP on 69 and HTTP) on
//! an isolated bridge inside a network namespace, and reach the k3s STAND-IN with
//! the identity the server's per-node config gave them. Flows: x86_64 BIOS with
//! QEMU's iPXE ROM in proxy DHCP mode beside a separate DHCP server (dnsmasq as the
//! home router: the default deployment), x86_64 UEFI (OVMF's own PXE client → `ipxe.efi` over TFTP →
//! `boot.ipxe`), x86_64 UEFI HTTP boot (OVMF's HttpBootDxe, its PXE turned off →
//! `ipxe.efi` over HTTP from the URL in our offer → `boot.ipxe`), arm64 UEFI
//! (AAVMF → `ipxe-arm64.efi` → `boot.ipxe`). The iPXE binaries come from Debian
//! trixie through the verified Debian source.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labimg_qemu_tests::netns::Netns;
use labimg_qemu_tests::{SerialLog, Vm, build_once, run, target_dir};

const SERVER_IP: &str = "10.77.0.1";
const HTTP: &str = "10.77.0.1:8080";
const HELPER_DIR: &str = "LABIMG_PXE_HELPER_DIR";
const HELPER_IPXE: &str = "LABIMG_PXE_HELPER_IPXE";
const HELPER_IF: &str = "LABIMG_PXE_HELPER_IF";
const HELPER_DHCP: &str = "LABIMG_PXE_HELPER_DHCP";
const HELPER_RA: &str = "LABIMG_PXE_HELPER_RA";
/// A whole PXE boot under TCG, with other VMs sharing the 2 cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The proxmox profile with the PXE test node (its bundle under `nodes/pxe-cp-1/`).
/// The BIOS and UEFI tests boot it from two MACs: the appliance's inventory, not
/// the image's embedded node table, maps each MAC to this bundle.
const PROXMOX: &str = r#"
extends = "proxmox.toml"

[[nodes]]
hostname = "pxe-cp-1"
mac = "52:54:00:77:00:01"
role = "server"
# The lab's DHCP (labimg serve) hands each MAC the same address.
dhcp-reservation = true

# Netbooted, it keeps STATE on its local disk (the blank disk each VM gets).
[netboot]
state-disk = "vda"

[outputs]
formats = ["qcow2"]
"#;

/// The pi5 profile (arm64 artifacts) with the arm64 UEFI test node.
const PI5: &str = r#"
extends = "pi5.toml"

[[nodes]]
hostname = "pxe-arm64-1"
mac = "52:54:00:77:00:03"
role = "server"
dhcp-reservation = true

[outputs]
formats = ["qcow2"]
"#;

/// The iPXE binaries, fetched once for all tests from Debian (outside any namespace:
/// the appliance inside the isolated namespace cannot reach the mirror).
fn ipxe_dir() -> PathBuf {
    let dir = target_dir().join("qemu-tests/ipxe");
    let cache = labimg_builder::debian::Cache::open_default().expect("opening the Debian cache");
    labimg_netboot::ipxe::ensure(&dir, cache).expect("fetching Debian's iPXE binaries");
    dir
}

/// A namespace with the appliance running on its bridge; stops the server and
/// deletes the namespace (bridge and taps with it) on drop, also when a test fails.
struct Lab {
    server: Child,
    server_log: PathBuf,
    // Dropped after `server` is killed (see Drop), so the namespace goes last.
    ns: Netns,
    _dir: tempfile::TempDir,
}

impl Lab {
    /// Serves `build` (a `build_once` output) as `<images>/<profile>/` with an
    /// inventory holding one node, on a fresh namespace with tap `tap0`.
    fn start(flow: &str, build: &Path, profile: &str, node: &str) -> Lab {
        Self::start_with(flow, build, profile, node, "full", "auto")
    }

    /// [`Lab::start`] with the appliance in DHCP mode `dhcp` (full, proxy or off) and
    /// `--router-advert ra`.
    fn start_with(
        flow: &str,
        build: &Path,
        profile: &str,
        node: &str,
        dhcp: &str,
        ra: &str,
    ) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images").join(profile);
        std::fs::create_dir_all(&images).unwrap();
        // A copy, not a symlink: the servers refuse paths that resolve outside their root.
        for sub in ["netboot", "nodes"] {
            run(Command::new("cp")
                .arg("-a")
                .arg(build.join(sub))
                .arg(&images))
            .unwrap();
        }
        std::fs::write(
            dir.path().join("inventory.toml"),
            format!("[default]\naction = \"ignore\"\n\n{node}"),
        )
        .unwrap();
        let ipxe = ipxe_dir();
        let ns = Netns::create(
            &format!("labimg-{flow}-{}", std::process::id()),
            &format!("{SERVER_IP}/24"),
        )
        .unwrap();
        ns.add_tap("tap0").unwrap();
        let server_log = dir.path().join("server.log");
        let log = File::create(&server_log).unwrap();
        let exe = std::env::current_exe().unwrap();
        let server = ns
            .command(exe.to_str().unwrap())
            .args(["netns_server_helper", "--exact", "--ignored", "--nocapture"])
            .env(HELPER_DIR, dir.path())
            .env(HELPER_IPXE, &ipxe)
            .env(HELPER_IF, ns.bridge())
            .env(HELPER_DHCP, dhcp)
            .env(HELPER_RA, ra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the appliance in the namespace");
        let mut lab = Lab {
            server,
            server_log,
            ns,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if lab.curl("/healthz").is_ok() {
                break;
            }
            if let Ok(Some(st)) = lab.server.try_wait() {
                panic!("the appliance exited ({st}): {}", lab.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the appliance did not come up: {}",
                lab.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        lab
    }

    /// GET `path` from the appliance with curl, inside the namespace.
    fn curl(&self, path: &str) -> anyhow::Result<String> {
        run(self
            .ns
            .command("curl")
            .args(["-sSf", "--max-time", "10"])
            .arg(format!("http://{HTTP}{path}")))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.server_log).unwrap_or_default()
    }

    /// The events the appliance holds for `hostname`, by stage.
    fn stages_of(&self, hostname: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.curl("/v1/nodes").unwrap()).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["node"]["hostname"] == hostname)
            .flat_map(|n| n["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["stage"].as_str().map(str::to_owned))
            .collect()
    }

    /// Keeps the server log beside the serial logs and returns its path.
    fn keep_log(&self, name: &str) -> PathBuf {
        let path = target_dir()
            .join("qemu-logs")
            .join(format!("{name}.server.log"));
        let _ = std::fs::create_dir_all(path.parent().unwrap());
        let _ = std::fs::write(&path, self.log());
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Boots `vm` on the lab's tap and checks the whole path: the node reaches the k3s
/// stand-in with the identity from the server (`source=url`), and the server saw
/// its events through `k3s-started`. Returns the serial log for further checks.
fn pxe_boot(
    lab: &Lab,
    vm: Vm,
    hostname: &str,
    role: &str,
    firmware_milestones: &[&str],
) -> SerialLog {
    let name = vm.name().to_owned();
    let log: SerialLog = vm.in_netns(lab.ns.name()).boot(None, BOOT_TIMEOUT).unwrap();
    let server_log = lab.keep_log(&name);
    let identity = format!("labimg: identity hostname={hostname} role={role} source=url");
    let mut want: Vec<&str> = firmware_milestones.to_vec();
    want.extend([
        "labimg: stage1 start",
        "labimg: root verified",
        "labimg: stage2 start",
        // Stage 2 keeps the lease stage 1 got for the root image: no second DHCP.
        "labimg: network up",
        "lease=stage1",
        // A netbooted server keeps its STATE on its local disk (netboot.state-disk or
        // labimg.state-disk=vda), made on the blank disk at first boot.
        "labimg: state created dev=/dev/vda1 disk=/dev/vda",
        "labimg: state mounted dev=/dev/vda1 persistent=yes reason=state-disk",
        identity.as_str(),
        "labimg: config written",
        "k3s-stand-in: done, powering off",
    ]);
    log.assert_absent("labimg: FATAL");
    log.assert_in_order(&want);
    // Its k3s node password came with its config bundle (kept by the server), and
    // is kept on that STATE from then on.
    let contract = log.assert_host_contract(&[]);
    assert!(
        contract["node-password"].contains("created=no"),
        "{name}: {contract:?}"
    );
    assert!(
        log.powered_off,
        "{name}: the VM did not power off by itself; serial log {}, server log {}",
        log.keep().display(),
        server_log.display()
    );
    // Events are posted in the background: give the last one a moment.
    let start = Instant::now();
    let mut stages = lab.stages_of(hostname);
    while !stages.iter().any(|s| s == "k3s-started") && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(500));
        stages = lab.stages_of(hostname);
    }
    assert_eq!(
        stages,
        [
            "booted",
            "root-verified",
            "network-up",
            "config-fetched",
            "k3s-started"
        ],
        "{name}: events on the server; serial log {}, server log {}",
        log.keep().display(),
        server_log.display()
    );
    eprintln!(
        "{name}: PXE boot to the k3s stand-in in {:.0?}",
        log.elapsed
    );
    log
}

/// Where the arm64 netbooted server keeps its STATE, given on its command line by the
/// inventory (the proxmox profile names it with `netboot.state-disk` instead).
const STATE_DISK: &str = "labimg.state-disk=vda";

fn inventory_node(hostname: &str, mac: &str, role: &str, profile: &str, args: &str) -> String {
    format!(
        "[[node]]\nhostname = \"{hostname}\"\nmac = \"{mac}\"\nrole = \"{role}\"\nprofile = \"{profile}\"\nkernel-args = \"{args}\"\n"
    )
}

/// The proxmox build served by a lab for `flow`, with one server `host` at `mac`.
fn proxmox_lab(flow: &str, host: &str, mac: &str) -> Lab {
    let out = build_once("proxmox-pxe", PROXMOX).expect("building the proxmox profile");
    Lab::start(
        flow,
        &out,
        "proxmox",
        &inventory_node(host, mac, "server", "proxmox", ""),
    )
}

/// The default deployment: a home router leases the addresses (dnsmasq, DHCP only)
/// and `labimg serve --dhcp proxy` answers only the PXE client, here with
/// `--router-advert on` (the router sends no IPv6 advertisement). The same boot checks
/// the server's view of it: the boot timeline in `/v1/nodes`, from the firmware's
/// DHCP DISCOVER to `k3s-started`, and its power-on → k3s time in `/metrics`; and that
/// the advertisement ends iPXE's IPv6 wait (16 s without it, on this flow).
#[test]
fn x86_64_bios_pxe_in_proxy_mode_beside_a_router_boots_to_the_k3s_stand_in() {
    let (host, mac) = ("pxe-cp-1", "52:54:00:77:00:01");
    let out = build_once("proxmox-pxe", PROXMOX).expect("building the proxmox profile");
    let node = inventory_node(host, mac, "server", "proxmox", "");
    let lab = Lab::start_with("proxy", &out, "proxmox", &node, "proxy", "on");
    let router = lab.ns.dnsmasq_dhcp("10.77.0.160", "10.77.0.200").unwrap();
    let vm = Vm::x86_64_bios("netboot-bios-proxy")
        .unwrap()
        .blank_virtio_disk("2G")
        .unwrap()
        .tap_net("tap0", mac, None)
        .extra_args(&["-boot", "n"]);
    let log = pxe_boot(&lab, vm, host, "server", &[]);
    // The address is the router's, the boot parameters labimg's.
    let router_log = router.log();
    assert!(
        router_log.contains("DHCPACK(") && router_log.contains(mac),
        "the router leased nothing to {mac}: {router_log}"
    );
    log.assert_in_order(&[
        "labimg: network up if=eth0 ip=10.77.0.1",
        "labimg: stage2 start",
    ]);
    assert!(
        !lab.log().contains("lease granted"),
        "proxy mode leases nothing: {}",
        lab.log()
    );

    let nodes: serde_json::Value = serde_json::from_str(&lab.curl("/v1/nodes").unwrap()).unwrap();
    let boot = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"]["hostname"] == host)
        .map(|n| n["boot"].clone())
        .unwrap();
    assert_eq!(boot["from_power_on"], true, "{boot}");
    let marks: Vec<(String, f64)> = boot["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["milestone"].as_str().unwrap().to_owned(),
                m["seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = marks.iter().map(|(n, _)| n.as_str()).collect();
    // Every milestone, in boot order. The node posts `booted` (stage 1's start) only
    // from stage 2, after the root image was fetched; its `ago` puts it back before
    // the `root-image` fetch, where it happened.
    assert_eq!(
        names,
        labimg_netboot::timeline::MILESTONES,
        "the server's timeline of the boot: {boot}"
    );
    assert!(
        marks.windows(2).all(|w| w[0].1 <= w[1].1),
        "milestones in time order: {boot}"
    );
    let to_script = marks[2].1;
    assert!(
        to_script < 10.0,
        "iPXE fetched its boot script {to_script} s after its DHCP DISCOVER: the router \
         advertisement should have ended its IPv6 wait (16 s without): {boot}"
    );
    let to_k3s = marks.last().unwrap().1;
    assert!(
        to_k3s > 1.0 && to_k3s < log.elapsed.as_secs_f64(),
        "power-on → k3s {to_k3s} s within the VM's {:?}",
        log.elapsed
    );
    let metrics = lab.curl("/metrics").unwrap();
    for want in [
        "labimg_boot_seconds_count 1\n",
        "labimg_dhcp_replies_total{type=\"offer\"}",
        "# HELP labimg_boot_seconds ",
    ] {
        assert!(
            metrics.contains(want),
            "{want:?} not in /metrics:\n{metrics}"
        );
    }
    eprintln!("server timeline: {marks:?}");
}

#[test]
fn x86_64_uefi_pxe_chains_debian_ipxe_efi_to_the_k3s_stand_in() {
    let (host, mac) = ("pxe-cp-1", "52:54:00:77:00:02");
    let lab = proxmox_lab("uefi", host, mac);
    // No option ROM: OVMF's own virtio-net driver and PXE client must fetch
    // `ipxe.efi` from our TFTP, which then loads `boot.ipxe` over HTTP.
    let vm = Vm::x86_64_uefi("netboot-uefi")
        .unwrap()
        .blank_virtio_disk("2G")
        .unwrap()
        .tap_net("tap0", mac, Some(""));
    pxe_boot(
        &lab,
        vm,
        host,
        "server",
        &["iPXE", "labimg: booting pxe-cp-1"],
    );
}

#[test]
fn x86_64_uefi_http_boot_fetches_ipxe_over_http_to_the_k3s_stand_in() {
    let (host, mac) = ("pxe-cp-1", "52:54:00:77:00:04");
    let lab = proxmox_lab("http", host, mac);
    // No option ROM, and OVMF's PXE (and IPv6) boot options turned off through
    // fw_cfg: the only network boot option left is "UEFI HTTPv4", so OVMF's
    // HttpBootDxe sends option 93 = 16 with `HTTPClient`, and must fetch
    // `ipxe.efi` from the URL in our offer, not over TFTP.
    let vm = Vm::x86_64_uefi("netboot-http")
        .unwrap()
        .blank_virtio_disk("2G")
        .unwrap()
        .extra_args(&[
            "-fw_cfg",
            "name=opt/org.tianocore/IPv4PXESupport,string=n",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6PXESupport,string=n",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6Support,string=n",
        ])
        .tap_net("tap0", mac, Some(""));
    // The URI OVMF prints is option 67 of our offer, which only a client
    // classified as HTTP boot gets; OVMF's PXE client must never have run.
    let uri = format!("URI: http://{HTTP}/ipxe/ipxe.efi");
    let option = format!("UEFI HTTPv4 (MAC:{})", mac.replace(':', "").to_uppercase());
    let log = pxe_boot(
        &lab,
        vm,
        host,
        "server",
        &[
            ">>Start HTTP Boot over IPv4",
            uri.as_str(),
            option.as_str(),
            "iPXE",
            "labimg: booting pxe-cp-1",
        ],
    );
    log.assert_absent(">>Start PXE over IPv");
    // And the server saw `ipxe.efi` fetched over HTTP (the PXE flows fetch it over TFTP).
    let metrics = lab.curl("/metrics").unwrap();
    let served = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"labimg_http_requests_total{route="/ipxe/{file}",status="200"} "#)
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        served >= 1,
        "ipxe.efi was never served over HTTP; metrics:\n{metrics}\nserial log {}",
        log.keep().display()
    );
}

#[test]
fn arm64_uefi_pxe_chains_debian_ipxe_arm64_to_the_k3s_stand_in() {
    let out = build_once("pi5-pxe", PI5).expect("building the pi5 profile");
    let (host, mac) = ("pxe-arm64-1", "52:54:00:77:00:03");
    // The pi5 cmdline names the Pi's console (ttyAMA10); virt's PL011 is ttyAMA0,
    // and the last console= wins /dev/console.
    let lab = Lab::start(
        "arm64",
        &out,
        "pi5",
        &inventory_node(
            host,
            mac,
            "server",
            "pi5",
            &format!("console=ttyAMA0 {STATE_DISK}"),
        ),
    );
    // Without ACPI the firmware hands the kernel QEMU's device tree: a Pi boots
    // with a device tree too, so the kernel takes the same hardware-description path.
    let vm = Vm::aarch64_uefi("netboot-arm64")
        .unwrap()
        .blank_virtio_disk("2G")
        .unwrap()
        .extra_args(&["-machine", "acpi=off"])
        .tap_net("tap0", mac, Some(""));
    pxe_boot(
        &lab,
        vm,
        host,
        "server",
        &["iPXE", "labimg: booting pxe-arm64-1"],
    );
}

/// Not a test on its own: the appliance of the tests above, started by them inside
/// their namespace (`ip netns exec`), so it binds the namespace's bridge.
#[test]
#[ignore = "helper process for the netboot PXE tests"]
fn netns_server_helper() {
    let dir = PathBuf::from(std::env::var(HELPER_DIR).expect("run by a netboot PXE test"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .try_init();
    let opts = labimg_netboot::ServeOptions {
        images: dir.join("images"),
        inventory: dir.join("inventory.toml"),
        interface: Some(std::env::var(HELPER_IF).unwrap()),
        dhcp: std::env::var(HELPER_DHCP)
            .unwrap_or_else(|_| "full".into())
            .parse()
            .unwrap(),
        router_advert: std::env::var(HELPER_RA)
            .unwrap_or_else(|_| "auto".into())
            .parse()
            .unwrap(),
        http_addr: HTTP.parse().unwrap(),
        tftp_addr: format!("{SERVER_IP}:69").parse().unwrap(),
        pool_start: Some("10.77.0.100".parse().unwrap()),
        pool_end: Some("10.77.0.150".parse().unwrap()),
        // A LAN's DHCP names its DNS server: the node's resolv.conf is part of the
        // host contract the stand-in checks.
        dns: vec![SERVER_IP.parse().unwrap()],
        state_dir: dir.join("state"),
        ipxe_dir: Some(PathBuf::from(std::env::var(HELPER_IPXE).unwrap())),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Bounded even if the test dies without killing us.
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1800), labimg_netboot::serve_async(opts)).await
    });
    if let Ok(Err(e)) = r {
        panic!("server failed: {e:#}");
    }
}

/// Issue #17's "`labimg logs` shows a netbooted node's lines": the node ships its log
/// to the appliance (`builder/node/logship.sh`, to the URL derived from its
/// `labimg.config=`, with its token) and the route `labimg logs` reads shows its
/// milestones and k3s's output (the stand-in's, through syslogd), by host name and by
/// MAC. The stand-in runs 15 s (`poweroff` mode), then the node stops through PID 1.
#[test]
fn x86_64_bios_pxe_node_ships_its_log_to_labimg_logs() {
    let (host, mac) = ("pxe-cp-1", "52:54:00:77:00:05");
    let lab = proxmox_lab("logs", host, mac);
    let vm = Vm::x86_64_bios("netboot-logs")
        .unwrap()
        .blank_virtio_disk("2G")
        .unwrap()
        .tap_net("tap0", mac, None)
        .extra_args(&["-boot", "n"])
        .stand_in_mode("poweroff");
    let name = vm.name().to_owned();
    let log = vm.in_netns(lab.ns.name()).boot(None, BOOT_TIMEOUT).unwrap();
    let server_log = lab.keep_log(&name);
    log.assert_absent("labimg: FATAL");
    log.assert_in_order(&[
        &format!("labimg: logs shipping url=http://{HTTP}/v1/nodes/{mac}/logs"),
        "labimg: k3s starting role=server",
        "k3s-stand-in: ready mode=poweroff",
        "labimg: stopping action=poweroff",
    ]);
    let shipped = lab.curl(&format!("/v1/nodes/{host}/logs")).unwrap();
    let keep = target_dir()
        .join("qemu-logs")
        .join(format!("{name}.shipped.log"));
    let _ = std::fs::write(&keep, &shipped);
    for want in [
        // Said before syslogd ran (stage 1, early stage 2): replayed into the log.
        "labimg: stage1 start",
        "labimg: root verified",
        "labimg: stage2 start",
        "labimg: logs persisted",
        "labimg: config written",
        "labimg: k3s starting role=server",
        "k3s-stand-in: ready mode=poweroff",
    ] {
        assert!(
            shipped.contains(want),
            "{name}: {want:?} not shipped; shipped log {}, serial log {}, server log {}",
            keep.display(),
            log.keep().display(),
            server_log.display()
        );
    }
    assert!(
        !shipped.contains("Authorization") && !log.text.contains("Bearer"),
        "{name}: the token shows nowhere"
    );
    assert_eq!(
        lab.curl(&format!("/v1/nodes/{mac}/logs")).unwrap(),
        shipped,
        "{name}: by MAC the same lines"
    );
    let metrics = lab.curl("/metrics").unwrap();
    assert!(
        metrics.contains(&format!("labimg_log_lines_total{{hostname=\"{host}\"}}")),
        "{name}: {metrics}"
    );
    eprintln!(
        "{name}: {} lines shipped ({} bytes)",
        shipped.lines().count(),
        shipped.len()
    );
}
