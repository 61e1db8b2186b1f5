//! `labimg serve` as the real binary for the multi-process tests (replicas, drain):
//! a small images folder, free loopback ports, and a running server whose stderr
//! lines can be waited for.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_labimg");
pub const CP_MAC: &str = "52:54:00:12:34:56";
/// The iPXE binaries serve hands out (stand-ins in these tests: nothing fetched).
pub const IPXE_FILES: [&str; 4] = ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"];

/// Deterministic pseudo-random bytes (xorshift), so a byte-compare means something.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// `root/images/proxmox` as a build leaves it (netboot files of `kernel_len`
/// bytes, node `cp1`'s config folder), an inventory naming cp1 by MAC, and stand-in
/// iPXE binaries in `root/ipxe` (nothing fetched).
pub fn layout(root: &Path, kernel_len: usize) {
    let nb = root.join("images/proxmox/netboot");
    write(&nb.join("vmlinuz"), &noise(kernel_len, 1));
    write(&nb.join("initrd.img"), &noise(50_000, 2));
    write(&nb.join("root.squashfs"), &noise(4096, 3));
    write(
        &nb.join("netboot.json"),
        br#"{"arch":"amd64","board":"proxmox","cmdline":"console=ttyS0","initrd":"initrd.img","kernel":"vmlinuz","profile":"proxmox","root":"root.squashfs","root_sha256":"00","root_size":4096}"#,
    );
    let node = root.join("images/proxmox/nodes/cp1");
    write(&node.join("node.env"), b"ROLE=server\n");
    write(
        &root.join("inventory.toml"),
        format!(
            "[default]\naction = \"ignore\"\n\n[[node]]\nhostname = \"cp1\"\nmac = \"{CP_MAC}\"\nrole = \"server\"\nprofile = \"proxmox\"\n"
        )
        .as_bytes(),
    );
    for f in IPXE_FILES {
        write(&root.join("ipxe").join(f), b"stand-in");
    }
}

/// A free loopback TCP port and a free UDP port.
pub fn free_ports() -> (u16, u16) {
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let tftp = UdpSocket::bind("127.0.0.1:0").unwrap();
    (
        http.local_addr().unwrap().port(),
        tftp.local_addr().unwrap().port(),
    )
}

/// `labimg serve` on `root`'s layout at loopback `http`/`tftp`, DHCP off, with its
/// own state folder `state`.
pub fn serve_command(root: &Path, state: &str, http: u16, tftp: u16) -> Command {
    let p = |s: &str| root.join(s);
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--images")
        .arg(p("images"))
        .arg("--inventory")
        .arg(p("inventory.toml"))
        .arg("--state-dir")
        .arg(p(state))
        .arg("--ipxe-dir")
        .arg(p("ipxe"))
        .args(["--advertise", "127.0.0.1", "--dhcp", "off"])
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--tftp-addr")
        .arg(format!("127.0.0.1:{tftp}"));
    // The environment must not set what the test passes (or leaves out) as flags.
    for (k, _) in std::env::vars() {
        if k.starts_with("LABIMG_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A running server whose stderr lines arrive on a channel; SIGTERMed, then killed,
/// on drop.
pub struct Server {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Server {
    /// Starts `cmd` (the log settings of the test's environment removed: tests read
    /// serve's default text lines).
    pub fn start(mut cmd: Command) -> Self {
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

    /// Waits for a line containing `needle`; panics with everything seen on timeout.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
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

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGTERM, wait for the exit (which must be clean), and return every stderr line.
    pub fn stop(mut self) -> Vec<String> {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        assert!(
            status.success(),
            "labimg serve exited with {status} after SIGTERM:\n{}",
            self.seen.join("\n")
        );
        std::mem::take(&mut self.seen)
    }

    /// Waits up to `timeout` for the exit; its status and every stderr line.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.iter());
                return (st, self.seen.clone());
            }
            assert!(
                Instant::now() < deadline,
                "labimg serve still running after {timeout:?}:\n{}",
                self.seen.join("\n")
            );
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `curl -sS` with `args`; (exit code, stdout bytes, stderr text).
pub fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("running curl (Debian package curl)");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The files of an uncompressed tar, by path.
pub fn untar(data: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let tar_path: PathBuf = dir.path().join("b.tar");
    std::fs::write(&tar_path, data).unwrap();
    let out = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "not a tar: {out:?}");
    let mut files = std::collections::BTreeMap::new();
    for name in String::from_utf8(out.stdout).unwrap().lines() {
        if name.ends_with('/') {
            continue;
        }
        let o = Command::new("tar")
            .arg("-xOf")
            .arg(&tar_path)
            .arg(name)
            .output()
            .unwrap();
        files.insert(name.to_string(), o.stdout);
    }
    files
}
