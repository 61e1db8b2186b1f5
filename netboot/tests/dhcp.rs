//! DHCP from hand-built wire-format packets: classification and replies for every
//! client type (proxy mode), the full-mode lease lifecycle across a restart, and
//! hostile packets over UDP on loopback.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::{CP_MAC, fixture};
use dhcproto::Encodable;
use labimg_netboot::ServeOptions;
use labimg_netboot::dhcp::{DhcpMode, DhcpServer};

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// A BOOTREQUEST exactly as on the wire (RFC 2131 fixed header, cookie, TLVs).
fn packet(kind: u8, chaddr: [u8; 6], ciaddr: Ipv4Addr, opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut p = vec![1, 1, 6, 0];
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x80, 0]); // secs, broadcast flag
    p.extend_from_slice(&ciaddr.octets());
    p.extend_from_slice(&[0; 12]); // yiaddr, siaddr, giaddr
    p.extend_from_slice(&chaddr);
    p.extend_from_slice(&[0; 10 + 64 + 128]);
    p.extend_from_slice(&[99, 130, 83, 99, 53, 1, kind]);
    for (code, data) in opts {
        p.push(*code);
        p.push(data.len() as u8);
        p.extend_from_slice(data);
    }
    p.push(255);
    p
}

/// The fields of a reply, parsed by hand.
#[derive(Debug)]
struct Reply {
    op: u8,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    file: String,
    opts: BTreeMap<u8, Vec<u8>>,
}

impl Reply {
    fn kind(&self) -> u8 {
        self.opts[&53][0]
    }
    fn text(&self, code: u8) -> String {
        String::from_utf8_lossy(&self.opts[&code]).into_owned()
    }
}

fn parse(b: &[u8]) -> Reply {
    let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
    let file = String::from_utf8_lossy(&b[108..236])
        .trim_end_matches('\0')
        .to_string();
    assert_eq!(&b[236..240], &[99, 130, 83, 99]);
    let mut opts = BTreeMap::new();
    let mut i = 240;
    while i < b.len() && b[i] != 255 {
        if b[i] == 0 {
            i += 1;
            continue;
        }
        let (code, len) = (b[i], b[i + 1] as usize);
        opts.entry(code)
            .or_insert_with(Vec::new)
            .extend_from_slice(&b[i + 2..i + 2 + len]);
        i += 2 + len;
    }
    Reply {
        op: b[0],
        yiaddr: ip(16),
        siaddr: ip(20),
        file,
        opts,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn settings(mode: DhcpMode, lease_file: std::path::PathBuf) -> ServeOptions {
    ServeOptions {
        dhcp: mode,
        pool_start: Some(Ipv4Addr::new(10, 9, 0, 100)),
        pool_end: Some(Ipv4Addr::new(10, 9, 0, 102)),
        subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(Ipv4Addr::new(10, 9, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 9, 0, 1)],
        lease_secs: 600,
        lease_file: Some(lease_file),
        ..Default::default()
    }
}

fn ask(s: &DhcpServer, bytes: &[u8], pxe_port: bool) -> Option<Reply> {
    s.handle_bytes(bytes, pxe_port)
        .map(|m| parse(&m.to_vec().unwrap()))
}

fn pxe(arch: u16, class: &str) -> Vec<(u8, Vec<u8>)> {
    vec![
        (60, class.as_bytes().to_vec()),
        (93, arch.to_be_bytes().to_vec()),
        (55, vec![1, 3, 43, 60, 66, 67]),
    ]
}

/// Option 97 as a Pi 5 bootloader sends it: type 0, FourCC, board revision, low 4
/// MAC bytes, serial (little endian).
fn pi_guid(fourcc: &[u8; 4], serial: u32) -> Vec<u8> {
    let mut g = vec![0];
    g.extend_from_slice(fourcc);
    g.extend_from_slice(&0x00d0_4170u32.to_le_bytes());
    g.extend_from_slice(&[0xdd, 0x00, 0x00, 0x01]);
    g.extend_from_slice(&serial.to_le_bytes());
    g
}

/// Proxy mode over the fixture's images and inventory.
fn proxy_server(f: &common::Fixture) -> DhcpServer {
    DhcpServer::new(
        &settings(DhcpMode::Proxy, f.dir.path().join("unused")),
        f.shared.clone(),
    )
    .unwrap()
}

/// Asks `s` with a Pi 5 bootloader's DISCOVER from `mac`; the reply must be an OFFER.
fn pi5_offer(s: &DhcpServer, mac: [u8; 6], serial: u32) -> Reply {
    let r = ask(
        s,
        &packet(DISCOVER, mac, Ipv4Addr::UNSPECIFIED, &pi5_discover(serial)),
        false,
    )
    .expect("a reply to the Pi");
    assert_eq!(r.kind(), OFFER);
    r
}

/// The options of a Pi 5 bootloader's DISCOVER, board serial `serial`.
fn pi5_discover(serial: u32) -> Vec<(u8, Vec<u8>)> {
    let mut opts = pxe(0, "PXEClient:Arch:00000:UNDI:002001");
    opts.push((97, pi_guid(b"RPi5", serial)));
    opts
}

#[test]
fn proxy_replies_per_client_type() {
    let f = fixture(8080);
    let s = proxy_server(&f);
    let cp = mac(CP_MAC);
    let lo = Ipv4Addr::LOCALHOST;
    let check_pxe = |r: &Reply, file: &str, class: &str| {
        assert_eq!(r.op, 2);
        assert_eq!(r.kind(), OFFER);
        assert_eq!(
            r.yiaddr,
            Ipv4Addr::UNSPECIFIED,
            "proxyDHCP hands out no address"
        );
        assert_eq!(r.siaddr, lo);
        assert_eq!(r.text(67), file);
        assert_eq!(r.text(60), class);
        assert_eq!(r.text(66), "127.0.0.1");
        assert_eq!(r.opts[&54], lo.octets());
    };
    let bios = ask(
        &s,
        &packet(
            DISCOVER,
            cp,
            Ipv4Addr::UNSPECIFIED,
            &pxe(0, "PXEClient:Arch:00000:UNDI:002001"),
        ),
        false,
    )
    .unwrap();
    check_pxe(&bios, "undionly.kpxe", "PXEClient");
    assert_eq!(bios.file, "undionly.kpxe");
    assert_eq!(bios.opts[&43], vec![6, 1, 8, 255]);
    for arch in [7u16, 9] {
        let r = ask(
            &s,
            &packet(
                DISCOVER,
                cp,
                Ipv4Addr::UNSPECIFIED,
                &pxe(arch, "PXEClient:Arch:00007:UNDI:003016"),
            ),
            false,
        )
        .unwrap();
        check_pxe(&r, "ipxe.efi", "PXEClient");
    }
    let arm = ask(
        &s,
        &packet(
            DISCOVER,
            cp,
            Ipv4Addr::UNSPECIFIED,
            &pxe(11, "PXEClient:Arch:00011:UNDI:003000"),
        ),
        false,
    )
    .unwrap();
    check_pxe(&arm, "ipxe-arm64.efi", "PXEClient");
    let http = ask(
        &s,
        &packet(
            DISCOVER,
            cp,
            Ipv4Addr::UNSPECIFIED,
            &pxe(16, "HTTPClient:Arch:00016:UNDI:003001"),
        ),
        false,
    )
    .unwrap();
    check_pxe(&http, "http://127.0.0.1:8080/ipxe/ipxe.efi", "HTTPClient");
    let mut ipxe_opts = pxe(0, "PXEClient:Arch:00000:UNDI:002001");
    ipxe_opts.push((77, b"iPXE".to_vec()));
    ipxe_opts.push((175, vec![0xb1, 1, 1, 0x13, 1, 1]));
    let ipxe = ask(
        &s,
        &packet(DISCOVER, cp, Ipv4Addr::UNSPECIFIED, &ipxe_opts),
        false,
    )
    .unwrap();
    check_pxe(
        &ipxe,
        "http://127.0.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56",
        "PXEClient",
    );
    // Option 175 alone also means iPXE.
    let mut only175 = pxe(7, "PXEClient:Arch:00007:UNDI:003016");
    only175.push((175, vec![0xb1, 1, 1]));
    let r = ask(
        &s,
        &packet(DISCOVER, cp, Ipv4Addr::UNSPECIFIED, &only175),
        false,
    )
    .unwrap();
    assert!(r.text(67).ends_with("/boot.ipxe?mac=52:54:00:12:34:56"));

    // A Pi 5 whose MAC is not in the inventory, recognised by the serial in its GUID.
    let pi_mac = mac("d8:3a:dd:00:00:01");
    let r = pi5_offer(&s, pi_mac, 0xdc4a_8f1b);
    assert_eq!(r.siaddr, lo);
    assert_eq!(r.text(66), "127.0.0.1");
    assert_eq!(r.text(60), "PXEClient");
    assert!(
        r.opts[&43].windows(17).any(|w| w == b"Raspberry Pi Boot"),
        "{:?}",
        r.opts[&43]
    );
    // Byte for byte what dnsmasq 2.90 sends for `pxe-service=0,"Raspberry Pi Boot"`
    // in proxy mode (captured from a live dnsmasq in a network namespace).
    let dnsmasq_43 = "0601030a0400505845091400001152617370626572727920506920426f6f74ff";
    assert_eq!(hex(&r.opts[&43]), dnsmasq_43);
    assert_eq!(r.opts[&97], pi_guid(b"RPi5", 0xdc4a_8f1b), "GUID echoed");
    assert!(!r.opts.contains_key(&67));
    // Same Pi, unknown serial: the default is ignore, so silence.
    let stranger = pi5_discover(0x1111_2222);
    assert!(
        ask(
            &s,
            &packet(DISCOVER, pi_mac, Ipv4Addr::UNSPECIFIED, &stranger),
            false
        )
        .is_none()
    );
    // Unknown PC and non-PXE clients get nothing from a proxy.
    assert!(
        ask(
            &s,
            &packet(
                DISCOVER,
                mac("02:00:00:00:00:99"),
                Ipv4Addr::UNSPECIFIED,
                &pxe(0, "PXEClient")
            ),
            false
        )
        .is_none()
    );
    assert!(ask(&s, &packet(DISCOVER, cp, Ipv4Addr::UNSPECIFIED, &[]), false).is_none());
    // PXE boot-server request on 4011 gets an ACK with the boot file.
    let r = ask(
        &s,
        &packet(
            REQUEST,
            cp,
            Ipv4Addr::new(10, 9, 0, 50),
            &pxe(0, "PXEClient:Arch:00000:UNDI:002001"),
        ),
        true,
    )
    .unwrap();
    assert_eq!(r.kind(), ACK);
    assert_eq!(r.text(67), "undionly.kpxe");
    // A REQUEST on 67 belongs to the real DHCP server.
    assert!(
        ask(
            &s,
            &packet(REQUEST, cp, Ipv4Addr::UNSPECIFIED, &pxe(0, "PXEClient")),
            false
        )
        .is_none()
    );
}

#[test]
fn full_mode_lease_lifecycle_survives_restart() {
    let f = fixture(8080);
    let leases = f.dir.path().join("state/leases.json");
    let server_id = (54u8, Ipv4Addr::LOCALHOST.octets().to_vec());
    let none = Ipv4Addr::UNSPECIFIED;
    let (a, b, c) = (
        mac("02:00:00:00:00:0a"),
        mac("02:00:00:00:00:0b"),
        mac("02:00:00:00:00:0c"),
    );
    let req = |ip: Ipv4Addr| vec![(50u8, ip.octets().to_vec()), server_id.clone()];
    let (p100, p101, p102) = (
        Ipv4Addr::new(10, 9, 0, 100),
        Ipv4Addr::new(10, 9, 0, 101),
        Ipv4Addr::new(10, 9, 0, 102),
    );
    {
        let s =
            DhcpServer::new(&settings(DhcpMode::Full, leases.clone()), f.shared.clone()).unwrap();
        let o = ask(&s, &packet(DISCOVER, a, none, &[]), false).unwrap();
        assert_eq!((o.kind(), o.yiaddr), (OFFER, p100));
        assert_eq!(o.opts[&1], [255, 255, 255, 0]);
        assert_eq!(o.opts[&3], [10, 9, 0, 1]);
        assert_eq!(o.opts[&51], 600u32.to_be_bytes());
        assert!(
            !o.opts.contains_key(&67),
            "no boot file for a non-PXE client"
        );
        let ack = ask(&s, &packet(REQUEST, a, none, &req(p100)), false).unwrap();
        assert_eq!((ack.kind(), ack.yiaddr), (ACK, p100));
        // Reservation from the inventory, plus boot parameters for a PXE client.
        let cp = ask(
            &s,
            &packet(
                DISCOVER,
                mac(CP_MAC),
                none,
                &pxe(0, "PXEClient:Arch:00000:UNDI:002001"),
            ),
            false,
        )
        .unwrap();
        assert_eq!(cp.yiaddr, Ipv4Addr::new(10, 9, 0, 10));
        assert_eq!(cp.text(67), "undionly.kpxe");
        assert_eq!(cp.text(12), "cp1");
        // Another client cannot take a's address nor the reserved one.
        assert_eq!(
            ask(&s, &packet(REQUEST, b, none, &req(p100)), false)
                .unwrap()
                .kind(),
            NAK
        );
        assert_eq!(
            ask(
                &s,
                &packet(REQUEST, b, none, &req(Ipv4Addr::new(10, 9, 0, 10))),
                false
            )
            .unwrap()
            .kind(),
            NAK
        );
        assert_eq!(
            ask(
                &s,
                &packet(REQUEST, b, none, &req(Ipv4Addr::new(10, 9, 0, 200))),
                false
            )
            .unwrap()
            .kind(),
            NAK
        );
        // A REQUEST naming another server is the client turning us down: silence.
        assert!(
            ask(
                &s,
                &packet(
                    REQUEST,
                    b,
                    none,
                    &[(50, p101.octets().to_vec()), (54, vec![10, 9, 0, 254])]
                ),
                false
            )
            .is_none()
        );
    }
    let text = std::fs::read_to_string(&leases).unwrap();
    assert!(
        text.contains("02:00:00:00:00:0a") && text.contains("10.9.0.100"),
        "{text}"
    );
    // Restart: a new server on the same lease file still knows a's lease.
    let s = DhcpServer::new(&settings(DhcpMode::Full, leases.clone()), f.shared.clone()).unwrap();
    assert_eq!(
        ask(&s, &packet(DISCOVER, a, none, &[]), false)
            .unwrap()
            .yiaddr,
        p100
    );
    assert_eq!(
        ask(&s, &packet(REQUEST, b, none, &req(p100)), false)
            .unwrap()
            .kind(),
        NAK
    );
    // Renewal from ciaddr without option 50.
    let renew = ask(&s, &packet(REQUEST, a, p100, &[]), false).unwrap();
    assert_eq!((renew.kind(), renew.yiaddr), (ACK, p100));
    // b declines 10.9.0.101 (someone else uses it); c must not be offered it.
    assert_eq!(
        ask(&s, &packet(DISCOVER, b, none, &[]), false)
            .unwrap()
            .yiaddr,
        p101
    );
    assert!(ask(&s, &packet(DECLINE, b, none, &req(p101)), false).is_none());
    assert_eq!(
        ask(&s, &packet(DISCOVER, c, none, &[]), false)
            .unwrap()
            .yiaddr,
        p102
    );
    assert_eq!(
        ask(&s, &packet(REQUEST, c, none, &req(p102)), false)
            .unwrap()
            .kind(),
        ACK
    );
    // Pool exhausted for b; after a releases, b gets 10.9.0.100.
    assert!(ask(&s, &packet(DISCOVER, b, none, &[]), false).is_none());
    assert!(
        ask(
            &s,
            &packet(RELEASE, a, p100, std::slice::from_ref(&server_id)),
            false
        )
        .is_none()
    );
    assert_eq!(
        ask(&s, &packet(DISCOVER, b, none, &[]), false)
            .unwrap()
            .yiaddr,
        p100
    );
    let text = std::fs::read_to_string(&leases).unwrap();
    assert!(
        !text.contains("02:00:00:00:00:0a") && text.contains("02:00:00:00:00:0c"),
        "{text}"
    );
}

#[test]
fn hostile_packets_are_dropped_and_counted_over_udp() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = fixture(8080);
    let opts = ServeOptions {
        dhcp_bind: Ipv4Addr::LOCALHOST,
        dhcp_port: 0,
        pxe_port: 0,
        ..Default::default()
    };
    let server = rt
        .block_on(DhcpServer::bind(&opts, f.shared.clone()))
        .unwrap();
    let addr = server.local_addrs()[0];
    rt.spawn(server.run());
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let good = packet(
        DISCOVER,
        mac(CP_MAC),
        Ipv4Addr::UNSPECIFIED,
        &pxe(0, "PXEClient:Arch:00000:UNDI:002001"),
    );
    let mut wrong_op = good.clone();
    wrong_op[0] = 2;
    let mut bad_hlen = good.clone();
    bad_hlen[2] = 16;
    let mut huge = good[..240].to_vec();
    for _ in 0..30 {
        huge.extend_from_slice(&[224, 255]);
        huge.extend_from_slice(&[0x41; 255]);
    }
    let mut lying_len = good[..240].to_vec();
    lying_len.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        good[..100].to_vec(),
        good[..239].to_vec(),
        common::noise(300, 42),
        common::noise(1500, 43),
        wrong_op,
        bad_hlen,
        huge,
        lying_len,
    ];
    for j in &junk {
        c.send_to(j, addr).unwrap();
    }
    c.send_to(&good, addr).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = c
        .recv_from(&mut buf)
        .expect("valid DISCOVER after junk must be answered");
    let r = parse(&buf[..n]);
    assert_eq!(r.kind(), OFFER);
    assert_eq!(r.text(67), "undionly.kpxe");
    let m = &f.shared.metrics;
    let dropped: u64 = [
        "malformed",
        "not-a-request",
        "bad-hardware-address",
        "no-message-type",
    ]
    .iter()
    .map(|r| m.get("labimg_dhcp_dropped_total", &[("reason", r)]))
    .sum();
    assert_eq!(dropped, junk.len() as u64, "{}", m.render());
    // Everything but the wrong op and the bad hardware length fails framing (the huge
    // one is cut at the server's 4 KiB buffer, so its last option overruns).
    assert_eq!(
        m.get("labimg_dhcp_dropped_total", &[("reason", "malformed")]),
        8,
        "{}",
        m.render()
    );
    assert_eq!(
        m.get("labimg_dhcp_packets_total", &[("type", "discover")]),
        1,
        "{}",
        m.render()
    );
    assert!(
        m.get("labimg_dhcp_dropped_total", &[("reason", "not-a-request")]) >= 1,
        "{}",
        m.render()
    );
    assert_eq!(
        m.get("labimg_dhcp_replies_total", &[("type", "offer")]),
        1,
        "{}",
        m.render()
    );
}

/// The server's boot timeline follows a Raspberry Pi from its firmware's DHCP to its
/// TFTP kernel and initramfs: the serial in the DHCP GUID names the TFTP folder. The
/// real TFTP server on loopback and curl, as the firmware asks (blksize 1468).
#[test]
fn a_pi_boot_timeline_runs_from_its_dhcp_to_its_tftp_kernel() {
    let f = fixture(8080);
    let s = proxy_server(&f);
    let serial = u32::from_str_radix(common::PI_SERIAL, 16).unwrap();
    pi5_offer(&s, mac("d8:3a:dd:00:00:09"), serial);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(async {
        let t = labimg_netboot::tftp::Tftp::bind(
            "127.0.0.1:0".parse().unwrap(),
            f.shared.clone(),
            8,
            None,
        )
        .await
        .unwrap();
        let addr = t.local_addr().unwrap();
        tokio::spawn(t.run());
        addr
    });
    for file in ["config.txt", "vmlinuz", "initrd.img"] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "30",
                "--tftp-blksize",
                "1468",
                "-o",
                "/dev/null",
            ])
            .arg(format!("tftp://{addr}/{}/{file}", common::PI_SERIAL))
            .status()
            .unwrap();
        assert!(out.success(), "curl {file}: {out}");
    }
    let mac: labimg_netboot::inventory::Mac = "d8:3a:dd:00:00:09".parse().unwrap();
    let boot = f.shared.timeline.of(&mac).expect("a timeline for the Pi");
    let names: Vec<&str> = boot.marks.iter().map(|m| m.milestone).collect();
    assert_eq!(
        names,
        ["dhcp-discover", "dhcp-offer", "kernel", "initrd"],
        "{boot:?}"
    );
    assert!(boot.from_power_on);
    drop(rt);
}
