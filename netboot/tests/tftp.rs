//! TFTP on loopback: the real curl client for the Pi 5 per-serial layout and the iPXE
//! binaries, a hand-written client for windowsize, oversized blksize, refused paths
//! and write requests.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{PI_SERIAL, fixture};
use labimg_netboot::tftp::Tftp;

async fn start(f: &common::Fixture) -> SocketAddr {
    let t = Tftp::bind("127.0.0.1:0".parse().unwrap(), f.shared.clone(), 8, None)
        .await
        .unwrap();
    let addr = t.local_addr().unwrap();
    tokio::spawn(t.run());
    addr
}

/// Fetches with curl in a blocking thread; returns the bytes or curl's exit code.
async fn curl(addr: SocketAddr, path: &str, extra: &[&str]) -> Result<Vec<u8>, i32> {
    let url = format!("tftp://{addr}/{path}");
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "30", "--tftp-blksize", "1468"])
            .args(&extra)
            .arg(&url)
            .output()
            .expect("running curl");
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(out.status.code().unwrap_or(-1))
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_pi5_files_and_ipxe_binaries() {
    let f = fixture(8080);
    let addr = start(&f).await;
    let images = f.shared.cfg.images.dir.join("pi5/netboot");
    let cfg = curl(addr, &format!("{PI_SERIAL}/config.txt"), &[])
        .await
        .unwrap();
    assert_eq!(cfg, std::fs::read(images.join("rpi/config.txt")).unwrap());
    let kernel = curl(addr, &format!("{PI_SERIAL}/vmlinuz"), &[])
        .await
        .unwrap();
    assert_eq!(kernel.len(), f.pi_kernel.len());
    assert!(kernel == f.pi_kernel, "kernel differs");
    let dtb = curl(addr, &format!("{PI_SERIAL}/bcm2712-rpi-5-b.dtb"), &[])
        .await
        .unwrap();
    assert_eq!(
        dtb,
        std::fs::read(images.join("rpi/bcm2712-rpi-5-b.dtb")).unwrap()
    );
    let ovl = curl(addr, &format!("{PI_SERIAL}/overlays/vc4-kms-v3d.dtbo"), &[])
        .await
        .unwrap();
    assert_eq!(
        ovl,
        std::fs::read(images.join("rpi/overlays/vc4-kms-v3d.dtbo")).unwrap()
    );
    let cmdline = String::from_utf8(
        curl(addr, &format!("{PI_SERIAL}/cmdline.txt"), &[])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cmdline.lines().count(), 1, "{cmdline}");
    assert!(
        cmdline.contains("labimg.config=http://127.0.0.1:8080/v1/nodes/d8:3a:dd:e8:27:1e/config "),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("labimg.token=pi1-fixed-token-0123456789 "),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("labimg.root.url=http://127.0.0.1:8080/images/pi5/root.squashfs "),
        "{cmdline}"
    );
    let undi = curl(addr, "undionly.kpxe", &[]).await.unwrap();
    assert_eq!(undi, std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap());
    // A serial nobody knows gets nothing (default action is ignore).
    assert!(curl(addr, "00000001/config.txt", &[]).await.is_err());
    // The server counts a transfer when the last ACK arrives, which may trail curl's exit.
    for _ in 0..50 {
        if f.shared
            .metrics
            .get("labimg_tftp_transfers_total", &[("result", "ok")])
            == 6
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = f.shared.metrics.render();
    assert!(
        m.contains("labimg_tftp_transfers_total{result=\"ok\"} 6"),
        "{m}"
    );
    assert!(
        m.contains("labimg_tftp_requests_total{result=\"not-found\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_is_refused_and_service_continues() {
    let f = fixture(8080);
    let addr = start(&f).await;
    for bad in [
        format!("{PI_SERIAL}/../../../../etc/passwd"),
        "/etc/passwd".into(),
        format!("{PI_SERIAL}/evil"),
        "../etc/passwd".into(),
    ] {
        let c = client();
        c.send_to(&rrq(&bad, &[]), addr).unwrap();
        let (pkt, _) = recv(&c);
        assert_eq!(&pkt[..2], &[0, 5], "{bad}: expected an ERROR packet");
        let code = u16::from_be_bytes([pkt[2], pkt[3]]);
        assert!(code == 2 || code == 1, "{bad}: code {code}");
        if bad.contains("evil") || bad.starts_with('/') || bad.contains("..") {
            assert_eq!(code, 2, "{bad}: access violation expected");
        }
    }
    // curl too: --path-as-is keeps the dot-dot segments in the request.
    assert!(
        curl(addr, "../../etc/passwd", &["--path-as-is"])
            .await
            .is_err()
    );
    let ok = curl(addr, &format!("{PI_SERIAL}/config.txt"), &[])
        .await
        .unwrap();
    assert!(ok.starts_with(b"arm_64bit=1"));
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

fn recv(c: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70000];
    let (n, from) = c
        .recv_from(&mut buf)
        .expect("no answer from the TFTP server");
    buf.truncate(n);
    (buf, from)
}

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut v = vec![0, 1];
    for s in [name, "octet"]
        .into_iter()
        .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
    {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

fn ack(b: u16) -> Vec<u8> {
    let [x, y] = b.to_be_bytes();
    vec![0, 4, x, y]
}

/// A minimal RFC 7440 client: returns (OACK options, file bytes, data packets seen
/// before each ACK it sent).
fn fetch(
    addr: SocketAddr,
    name: &str,
    opts: &[(&str, &str)],
    window: usize,
) -> (Vec<(String, String)>, Vec<u8>) {
    let c = client();
    c.send_to(&rrq(name, opts), addr).unwrap();
    let (oack, peer) = recv(&c);
    assert_eq!(&oack[..2], &[0, 6], "expected OACK, got {oack:?}");
    let fields: Vec<String> = oack[2..]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let options = fields
        .chunks(2)
        .filter(|p| p.len() == 2 && !p[0].is_empty())
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect::<Vec<_>>();
    let blksize: usize = options
        .iter()
        .find(|(k, _)| k == "blksize")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(512);
    c.send_to(&ack(0), peer).unwrap();
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        let mut last = false;
        for _ in 0..window {
            let (p, _) = recv(&c);
            assert_eq!(&p[..2], &[0, 3]);
            assert_eq!(
                u16::from_be_bytes([p[2], p[3]]),
                expect,
                "blocks arrive in order within a window"
            );
            data.extend_from_slice(&p[4..]);
            expect = expect.wrapping_add(1);
            if p.len() - 4 < blksize {
                last = true;
                break;
            }
        }
        c.send_to(&ack(expect.wrapping_sub(1)), peer).unwrap();
        if last {
            return (options, data);
        }
    }
}

#[test]
fn windowsize_and_oversized_blksize() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = fixture(8080);
    let addr = rt.block_on(start(&f));
    let name = format!("{PI_SERIAL}/vmlinuz");
    let (opts, data) = fetch(
        addr,
        &name,
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "8")],
        8,
    );
    assert!(
        opts.contains(&("windowsize".into(), "8".into())),
        "{opts:?}"
    );
    assert!(
        opts.contains(&("tsize".into(), f.pi_kernel.len().to_string())),
        "{opts:?}"
    );
    assert!(data == f.pi_kernel);
    let (opts, data) = fetch(addr, &name, &[("blksize", "65535")], 1);
    assert_eq!(opts, vec![("blksize".to_string(), "65464".to_string())]);
    assert!(data == f.pi_kernel);
}

#[test]
fn write_requests_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = fixture(8080);
    let addr = rt.block_on(start(&f));
    let c = client();
    let mut w = rrq("upload.bin", &[]);
    w[1] = 2;
    c.send_to(&w, addr).unwrap();
    let (pkt, _) = recv(&c);
    assert_eq!(&pkt[..4], &[0, 5, 0, 2]);
    assert!(!f.shared.cfg.ipxe_dir.join("upload.bin").exists());
}

/// Beyond the transfer bound a request waits for a slot instead of being refused, and
/// its retransmissions while it waits start no second transfer.
#[test]
fn a_request_beyond_the_bound_waits_for_a_slot() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let f = fixture(8080);
    let t = rt
        .block_on(Tftp::bind(
            "127.0.0.1:0".parse().unwrap(),
            f.shared.clone(),
            1,
            None,
        ))
        .unwrap();
    let addr = t.local_addr().unwrap();
    rt.spawn(t.run());
    let name = format!("{PI_SERIAL}/vmlinuz");
    // A holds the only slot: its OACK is not acknowledged yet.
    let a = client();
    a.send_to(&rrq(&name, &[("blksize", "1468")]), addr)
        .unwrap();
    let (oack, a_peer) = recv(&a);
    assert_eq!(&oack[..2], &[0, 6]);
    // B asks, and asks again as a client whose request went unanswered does.
    let b = client();
    b.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let request = rrq(&name, &[("blksize", "1468")]);
    b.send_to(&request, addr).unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        b.recv_from(&mut buf).is_err(),
        "B is answered (refused?) while A holds the only slot"
    );
    b.send_to(&request, addr).unwrap();
    // A finishes; B's transfer starts and completes.
    a.send_to(&ack(0), a_peer).unwrap();
    let mut expect: u16 = 1;
    loop {
        let (p, _) = recv(&a);
        a.send_to(&ack(expect), a_peer).unwrap();
        expect += 1;
        if p.len() - 4 < 1468 {
            break;
        }
    }
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (oack, b_peer) = recv(&b);
    assert_eq!(&oack[..2], &[0, 6], "B got {oack:?} instead of its OACK");
    b.send_to(&ack(0), b_peer).unwrap();
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        let (p, from) = recv(&b);
        assert_eq!(
            from, b_peer,
            "a second transfer answered B's repeated request"
        );
        data.extend_from_slice(&p[4..]);
        b.send_to(&ack(expect), b_peer).unwrap();
        expect += 1;
        if p.len() - 4 < 1468 {
            break;
        }
    }
    assert!(data == f.pi_kernel);
    b.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        b.recv_from(&mut buf).is_err(),
        "B's repeated request started a second transfer"
    );
    let m = &f.shared.metrics;
    let count = |result| m.get("labimg_tftp_requests_total", &[("result", result)]);
    assert_eq!((count("queued"), count("repeat"), count("busy")), (1, 1, 0));
}
