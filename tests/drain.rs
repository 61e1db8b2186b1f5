//! Graceful stop of `labimg serve` (the real binary): after SIGTERM a slow HTTP
//! download (curl --limit-rate) and a slow TFTP transfer (a client here that waits
//! before each ACK) that were running finish intact, while new
//! HTTP connections and TFTP requests are refused; the server then exits 0. With a
//! short `--drain-timeout` a transfer that would outlast it is cut and the server
//! still exits 0, on time.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, curl, free_ports, layout, noise, serve_command, write};

/// Bigger than what loopback socket buffers hold (~8 MB here): a smaller file is
/// all written by the server at once, however slowly curl reads it.
const KERNEL: usize = 24 * 1024 * 1024;

/// `curl` writing `url` to `out` at `rate` bytes/s, in the background.
fn slow_curl(url: &str, out: &std::path::Path, rate: &str) -> Child {
    Command::new("curl")
        .args(["-sS", "--fail", "--limit-rate", rate, "-o"])
        .arg(out)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running curl (Debian package curl)")
}

/// A TFTP client (RFC 1350, 512-byte blocks, no options) that waits 20 ms before
/// each ACK: ~200 blocks take ~4 s. Appends each block to `out` as it arrives.
fn slow_tftp_get(port: u16, name: &str, out: &std::path::Path) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let (name, out) = (name.to_string(), out.to_path_buf());
    std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let rrq = [&[0, 1][..], name.as_bytes(), b"\0octet\0"].concat();
        sock.send_to(&rrq, ("127.0.0.1", port)).unwrap();
        let mut file = std::fs::File::create(&out).unwrap();
        let mut buf = [0u8; 600];
        let mut want: u16 = 1;
        loop {
            let (n, from) = sock.recv_from(&mut buf).expect("TFTP DATA");
            assert_eq!(&buf[..2], &[0, 3], "not DATA: {:?}", &buf[..n]);
            let block = u16::from_be_bytes([buf[2], buf[3]]);
            if block == want {
                file.write_all(&buf[4..n]).unwrap();
                file.flush().unwrap();
                want = want.wrapping_add(1);
            }
            std::thread::sleep(Duration::from_millis(20));
            let ack = [0, 4, buf[2], buf[3]];
            sock.send_to(&ack, from).unwrap();
            if n < 4 + 512 && block == want.wrapping_sub(1) {
                return;
            }
        }
    })
}

/// Waits until `path` has some bytes but not all: the transfer is under way.
fn wait_partial(path: &std::path::Path, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = std::fs::metadata(path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        if n > 0 {
            assert!(
                n < total,
                "{} finished before the signal; slow it down",
                path.display()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never started",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn running_transfers_finish_after_sigterm_and_new_ones_are_refused() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path(), KERNEL);
    // TFTP serves iPXE binaries by their plain name.
    let ipxe = noise(200 * 512 + 100, 11);
    write(&t.path().join("ipxe/undionly.kpxe"), &ipxe);
    let (http, tftp) = free_ports();
    let mut srv = Server::start(serve_command(t.path(), "state", http, tftp));
    srv.wait_for("TFTP on", Duration::from_secs(30));

    let (got_http, got_tftp) = (t.path().join("http.out"), t.path().join("tftp.out"));
    let kernel_url = format!("http://127.0.0.1:{http}/images/proxmox/vmlinuz");
    let mut slow_http = slow_curl(&kernel_url, &got_http, "2M");
    let slow_tftp = slow_tftp_get(tftp, "undionly.kpxe", &got_tftp);
    wait_partial(&got_http, KERNEL);
    wait_partial(&got_tftp, ipxe.len());

    let signalled = Instant::now();
    srv.signal("-TERM");
    srv.wait_for("draining", Duration::from_secs(5));
    // A new HTTP request is not served: refused (curl exit 7) once the listener is
    // gone, or cut (52/56) if it raced the listener's close.
    let (rc, _, err) = curl(&[&format!("http://127.0.0.1:{http}/healthz")]);
    assert!(
        matches!(rc, 7 | 52 | 56),
        "a new HTTP request during the drain got through (curl exit {rc}): {err}"
    );
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "the server exited while transfers were running:\n{}",
        srv.seen.join("\n")
    );
    // ... and so is a new TFTP request (nothing listens on the port any more).
    let (rc, _, err) = curl(&[
        "--max-time",
        "3",
        &format!("tftp://127.0.0.1:{tftp}/snponly.efi"),
    ]);
    assert_ne!(
        rc, 0,
        "a new TFTP request during the drain was served: {err}"
    );
    let out = slow_http.wait_with_output_ref();
    assert!(
        out.0.success(),
        "slow HTTP download: curl {}: {}",
        out.0,
        out.1
    );
    assert!(
        std::fs::read(&got_http).unwrap() == noise(KERNEL, 1),
        "the slow HTTP download is not the served file"
    );
    slow_tftp.join().unwrap();
    assert!(
        std::fs::read(&got_tftp).unwrap() == ipxe,
        "the slow TFTP transfer is not the served file"
    );
    let finished = signalled.elapsed();
    let (st, lines) = srv.wait_exit(Duration::from_secs(30));
    assert!(
        st.success(),
        "exit {st} after the drain:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("drained: every transfer finished")),
        "{}",
        lines.join("\n")
    );
    assert!(
        finished > Duration::from_millis(500),
        "the transfers ended {finished:?} after SIGTERM: not a slow transfer"
    );
}

#[test]
fn the_drain_timeout_bounds_the_wait() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path(), KERNEL);
    let (http, tftp) = free_ports();
    let mut cmd = serve_command(t.path(), "state", http, tftp);
    cmd.args(["--drain-timeout", "1"]);
    let mut srv = Server::start(cmd);
    srv.wait_for("TFTP on", Duration::from_secs(30));
    let got = t.path().join("http.out");
    // ~24 s at this rate: far longer than the drain timeout.
    let mut slow = slow_curl(
        &format!("http://127.0.0.1:{http}/images/proxmox/vmlinuz"),
        &got,
        "1M",
    );
    wait_partial(&got, KERNEL);
    let signalled = Instant::now();
    srv.signal("-TERM");
    let (st, lines) = srv.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert!(st.success(), "exit {st}:\n{}", lines.join("\n"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM with --drain-timeout 1"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("drain timeout (1 s) passed")),
        "{}",
        lines.join("\n")
    );
    let (status, err) = slow.wait_with_output_ref();
    assert!(!status.success(), "the cut transfer should fail: {err}");
    assert!(std::fs::metadata(&got).unwrap().len() < KERNEL as u64);
}

/// `wait_with_output` for a borrowed child: exit status and stderr text.
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (self.wait().unwrap(), err)
    }
}
