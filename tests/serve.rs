//! `labimg serve` as the binary on loopback: log lines (text with RFC 3339 timestamps,
//! `--log-format json` one object per line), and, as root, serving from a read-only
//! bind mount of the images folder with the iPXE binaries fetched into the state
//! folder and handed to a TFTP client (curl) and over HTTP.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_labimg");
const IPXE_FILES: [&str; 4] = ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"];

/// A tiny images folder, an inventory and a state folder.
fn layout(root: &Path) {
    let nb = root.join("images/proxmox/netboot");
    std::fs::create_dir_all(&nb).unwrap();
    std::fs::write(nb.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(
        root.join("inventory.toml"),
        "[default]\naction = \"ignore\"\n",
    )
    .unwrap();
}

fn free_ports() -> (u16, u16) {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let tftp = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        http.local_addr().unwrap().port(),
        tftp.local_addr().unwrap().port(),
    )
}

/// `serve` arguments for loopback, DHCP off.
fn serve_args(root: &Path, http: u16, tftp: u16) -> Vec<String> {
    let p = |s: &str| root.join(s).to_str().unwrap().to_string();
    [
        "serve",
        "--images",
        &p("images"),
        "--inventory",
        &p("inventory.toml"),
        "--state-dir",
        &p("state"),
        "--advertise",
        "127.0.0.1",
        "--http-addr",
        &format!("127.0.0.1:{http}"),
        "--tftp-addr",
        &format!("127.0.0.1:{tftp}"),
        "--dhcp",
        "off",
    ]
    .map(String::from)
    .to_vec()
}

/// A running server whose stderr lines arrive on a channel; SIGTERMed on drop.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .env_remove("LABIMG_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting labimg serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; panics with everything seen on timeout
    /// or exit.
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(e) => panic!(
                    "no {needle:?} from labimg serve ({e}); it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, wait for the exit, and return every stderr line.
    fn stop(mut self) -> Vec<String> {
        self.term();
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        assert!(
            status.success(),
            "labimg serve exited with {status} after SIGTERM:\n{}",
            self.seen.join("\n")
        );
        std::mem::take(&mut self.seen)
    }

    fn term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.term();
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs serve with a prepared `--ipxe-dir` (no network) until it listens, then
/// stops it; returns its stderr lines.
fn serve_lines(extra: &[&str]) -> Vec<String> {
    let t = tempfile::tempdir().unwrap();
    layout(t.path());
    let ipxe = t.path().join("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    for f in IPXE_FILES {
        std::fs::write(ipxe.join(f), b"stand-in").unwrap();
    }
    let (http, tftp) = free_ports();
    let mut cmd = Command::new(BIN);
    cmd.args(serve_args(t.path(), http, tftp))
        .arg("--ipxe-dir")
        .arg(&ipxe)
        .args(extra);
    let mut srv = Server::start(cmd);
    srv.wait_for("TFTP on", Duration::from_secs(30));
    let lines = srv.stop();
    assert!(lines.len() >= 4, "too few lines: {lines:?}");
    lines
}

fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let d = s.get(..n)?;
    d.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| (d.parse().unwrap(), &s[n..]))
}

/// Length of the RFC 3339 date-time at the start of `s` in UTC ("Z"), if there is one:
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` with fields in range.
fn rfc3339_utc_prefix(s: &str) -> Option<usize> {
    let (y, r) = digits(s, 4)?;
    let (mo, r) = digits(r.strip_prefix('-')?, 2)?;
    let (d, r) = digits(r.strip_prefix('-')?, 2)?;
    let (h, r) = digits(r.strip_prefix('T')?, 2)?;
    let (mi, r) = digits(r.strip_prefix(':')?, 2)?;
    let (sec, mut r) = digits(r.strip_prefix(':')?, 2)?;
    if let Some(frac) = r.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        r = &frac[n..];
    }
    let r = r.strip_prefix('Z')?;
    let ok = y >= 2000 && (1..=12).contains(&mo) && (1..=31).contains(&d);
    (ok && h < 24 && mi < 60 && sec <= 60).then(|| s.len() - r.len())
}

#[test]
fn rfc3339_checker() {
    assert_eq!(
        rfc3339_utc_prefix("2026-11-28T18:02:55.493349Z  INFO x"),
        Some(27)
    );
    assert_eq!(rfc3339_utc_prefix("2026-11-28T18:02:55Z"), Some(20));
    for bad in [
        "2026-11-28 18:02:55Z",
        "2026-13-28T18:02:55Z",
        "2026-11-28T18:02:55",
        "2026-11-28T18:02:55.Z",
        " INFO HTTP on",
    ] {
        assert_eq!(rfc3339_utc_prefix(bad), None, "{bad}");
    }
}

/// Default text format: every line starts with an RFC 3339 UTC timestamp, then the level.
#[test]
fn log_lines_start_with_an_rfc3339_timestamp() {
    let lines = serve_lines(&[]);
    for l in &lines {
        let n = rfc3339_utc_prefix(l).unwrap_or_else(|| panic!("no RFC 3339 timestamp: {l:?}"));
        let rest = l[n..].trim_start();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .iter()
                .any(|lvl| rest.starts_with(lvl)),
            "no level after the timestamp: {l:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("INFO SIGTERM: shutting down"))
    );
}

/// `--log-format json`: each line is one JSON object with an RFC 3339 `timestamp`,
/// a `level` and a `message`.
#[test]
fn log_format_json_gives_one_object_per_line() {
    let lines = serve_lines(&["--log-format", "json"]);
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        let ts = v["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no timestamp: {l}"));
        assert_eq!(rfc3339_utc_prefix(ts), Some(ts.len()), "timestamp {ts:?}");
        assert!(v["level"].is_string(), "no level: {l}");
        assert!(v["message"].is_string(), "no message: {l}");
    }
    assert!(lines.iter().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["message"] == "SIGTERM: shutting down"
    }));
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30"])
        .args(args)
        .output()
        .expect("running curl (install Debian's curl package)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The documented deployment, as root: the images folder is a read-only bind mount
/// (in a private mount namespace; root would write through a mere chmod, and the test
/// checks that it cannot), serve runs with no `--ipxe-dir`, fetches Debian's iPXE
/// binaries into `<state-dir>/ipxe` (network needed, as `ipxe::ensure`'s own test), and
/// a TFTP client and an HTTP client get them. Nothing appears under the images folder.
#[test]
fn read_only_images_serve_ipxe_from_the_state_dir() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path());
    let images = t.path().join("images");
    let before = tree(&images);
    let (http, tftp) = free_ports();
    // `unshare -m` (no --fork) execs sh in a new mount namespace whose mounts are
    // private, so the read-only bind mount is never seen outside; sh then execs serve
    // with the same pid.
    let script = r#"mount --bind -o ro "$0" "$0" || exit 96
if touch "$0/.write-probe" 2>/dev/null; then echo "images still writable" >&2; exit 97; fi
echo "images read-only" >&2
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script])
        .arg(&images)
        .arg(BIN)
        .args(serve_args(t.path(), http, tftp));
    let mut srv = Server::start(cmd);
    srv.wait_for("images read-only", Duration::from_secs(10));
    // The fetch happens before anything listens.
    srv.wait_for("TFTP on", Duration::from_secs(300));

    let state_ipxe = t.path().join("state/ipxe");
    assert!(
        srv.seen
            .iter()
            .any(|l| l.contains(&format!("iPXE binaries from {}", state_ipxe.display()))),
        "{:?}",
        srv.seen
    );
    let undi = std::fs::read(state_ipxe.join("undionly.kpxe")).unwrap();
    assert!(undi.len() > 50_000, "undionly.kpxe is {} bytes", undi.len());
    let got = curl(&[&format!("tftp://127.0.0.1:{tftp}/undionly.kpxe")]);
    assert!(
        got == undi,
        "TFTP undionly.kpxe differs from the state folder's"
    );
    let efi = curl(&[&format!("http://127.0.0.1:{http}/ipxe/ipxe.efi")]);
    assert_eq!(&efi[..2], b"MZ", "ipxe.efi over HTTP is not a PE image");
    assert!(efi == std::fs::read(state_ipxe.join("ipxe.efi")).unwrap());
    srv.stop();

    assert!(!images.join("ipxe").exists(), "serve created <images>/ipxe");
    assert_eq!(tree(&images), before, "serve changed the images folder");
}

/// Every path under `dir` with its size, sorted.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path().display().to_string(), m.len()));
        }
    }
    out.sort();
    out
}
