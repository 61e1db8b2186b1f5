//! `labimg serve` as the binary on loopback: log lines (text with RFC 3339 timestamps,
//! `--log-format json` one object per line), node logs shipped by the node's own
//! shipper (`builder/node/logship.sh` under busybox) and read with `labimg logs`, and,
//! as root, serving from a read-only bind mount of the images folder with the iPXE
//! binaries fetched into the state folder and handed to a TFTP client (curl) and over
//! HTTP.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, IPXE_FILES, Server, free_ports};

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

/// `labimg serve` on the layout under `root` at `http`/`tftp`, with stand-in iPXE
/// binaries written to `root/ipxe` (nothing fetched).
fn serve_command(root: &Path, http: u16, tftp: u16) -> Command {
    let ipxe = root.join("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    for f in IPXE_FILES {
        std::fs::write(ipxe.join(f), b"stand-in").unwrap();
    }
    let mut cmd = Command::new(BIN);
    cmd.args(serve_args(root, http, tftp))
        .arg("--ipxe-dir")
        .arg(&ipxe);
    cmd
}

/// Runs serve with a prepared `--ipxe-dir` (no network) until it listens, then
/// stops it; returns its stderr lines.
fn serve_lines(extra: &[&str]) -> Vec<String> {
    let t = tempfile::tempdir().unwrap();
    layout(t.path());
    let (http, tftp) = free_ports();
    let mut cmd = serve_command(t.path(), http, tftp);
    cmd.args(extra);
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

/// A `busybox sh` with only busybox's applets on `PATH` (as on a node) that sources
/// the node's common.sh and logship.sh, then runs `script`; `warn` goes to stderr.
fn node_sh(dir: &Path, cmdline: &str, script: &str) -> std::process::Output {
    node_cmd(dir, cmdline, script).output().unwrap()
}

/// [`node_sh`]'s command, not yet run.
fn node_cmd(dir: &Path, cmdline: &str, script: &str) -> Command {
    let bin = dir.join("bin");
    if !bin.exists() {
        std::fs::create_dir_all(&bin).unwrap();
        let busybox = which("busybox");
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            std::os::unix::fs::symlink(&busybox, bin.join(applet)).unwrap();
        }
    }
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("builder/node");
    let mut cmd = Command::new(bin.join("sh"));
    cmd.env_clear()
        .env("PATH", &bin)
        .env("LB_CMDLINE", cmdline)
        .arg("-c")
        .arg(format!(
            ". '{c}'\n. '{l}'\nwarn() {{ echo \"WARNING: $*\" >&2; }}\nLOGSHIP_DIR='{d}'\n{script}",
            c = node.join("common.sh").display(),
            l = node.join("logship.sh").display(),
            d = dir.display(),
        ));
    cmd
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found on PATH"))
}

fn labimg_logs(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("logs")
        .args(args)
        .env_remove("LABIMG_SERVER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The node's log shipper (builder/node/logship.sh under busybox, with busybox wget)
/// posts to a running `labimg serve` with the node's token, in batches, and `labimg
/// logs` prints the lines by host name and by MAC; a wrong token stores nothing and
/// stops the shipper; an unknown node or an unreachable server is a clear error.
#[test]
fn shipped_node_lines_show_in_labimg_logs() {
    let t = tempfile::tempdir().unwrap();
    layout(t.path());
    std::fs::write(
        t.path().join("inventory.toml"),
        "[default]\naction = \"ignore\"\n\n[[node]]\nhostname = \"cp1\"\n\
         mac = \"52:54:00:12:34:56\"\nrole = \"server\"\nprofile = \"proxmox\"\n\
         token = \"cp1-token-0123456789abcdef\"\n",
    )
    .unwrap();
    let (http, tftp) = free_ports();
    let mut srv = Server::start(serve_command(t.path(), http, tftp));
    srv.wait_for("HTTP on", Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{http}");
    let config = format!("labimg.config={base}/v1/nodes/52:54:00:12:34:56/config");
    let node = t.path().join("node");
    std::fs::create_dir_all(&node).unwrap();

    // The URL comes from labimg.config; labimg.logs= overrides it or turns it off;
    // without a token there is none.
    let urls = node_sh(
        &node,
        &format!("{config} labimg.token=cp1-token-0123456789abcdef"),
        "logship_url; echo; LB_CMDLINE=\"$LB_CMDLINE labimg.logs=http://x/y\" logship_url; echo; \
         LB_CMDLINE=\"$LB_CMDLINE labimg.logs=0\" logship_url; echo; \
         LB_CMDLINE=labimg.config=http://x/v1/nodes/a/config logship_url; echo",
    );
    assert_eq!(
        String::from_utf8(urls.stdout).unwrap(),
        format!("{base}/v1/nodes/52:54:00:12:34:56/logs\nhttp://x/y\n\n\n")
    );

    // 250 lines: batches of at most 100, all delivered, in order.
    let out = node_sh(
        &node,
        &format!("{config} labimg.token=cp1-token-0123456789abcdef"),
        "i=1; while [ $i -le 250 ]; do echo \"Nov 29 00:00:00 cp1 user.notice labimg: line $i\"; \
         i=$((i + 1)); done | logship_loop \"$(logship_url)\" \"$(cmdline_get labimg.token)\"",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, all, err) = labimg_logs(&["cp1", "--server", &base, "--tail", "0"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 250, "{all}");
    for (i, l) in lines.iter().enumerate() {
        let stamp = rfc3339_utc_prefix(l).expect("arrival time first");
        assert_eq!(
            &l[stamp..],
            format!(" Nov 29 00:00:00 cp1 user.notice labimg: line {}", i + 1)
        );
    }
    // Default: the last 100; --tail; by MAC the same lines.
    let (_, last, _) = labimg_logs(&["cp1", "--server", &base]);
    assert_eq!(last.lines().count(), 100);
    assert!(last.ends_with("labimg: line 250\n"));
    let (ok, two, _) = labimg_logs(&["52:54:00:12:34:56", "--server", &base, "--tail", "2"]);
    assert!(ok);
    assert_eq!(two, lines[248..].join("\n") + "\n");
    let m = curl(&["-sf", &format!("{base}/metrics")]);
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("labimg_log_lines_total{hostname=\"cp1\"} 250\n"),
        "{m}"
    );
    assert!(
        m.contains("labimg_http_requests_total{route=\"/v1/nodes/{id}/logs\",status=\"204\"} 3\n"),
        "three batches: {m}"
    );

    // The stop sequence's TERM (as log_ship_start sets it up): what is waiting, well
    // before its 5 s, is sent at once.
    let out = node_sh(
        &node,
        &format!("{config} labimg.token=cp1-token-0123456789abcdef"),
        "f=$LOGSHIP_DIR/t.fifo; mkfifo \"$f\"\n\
         { printf 'at stop 1\\nat stop 2\\n'; exec sleep 30; } >\"$f\" 2>/dev/null & w=$!\n\
         ( u=$(logship_url); tok=$(cmdline_get labimg.token)\n\
           trap 'logship_last \"$u\" \"$tok\"' TERM; logship_loop \"$u\" \"$tok\" <\"$f\" ) & p=$!\n\
         sleep 1; kill -TERM $p; wait $p; echo \"rc=$?\"; kill $w",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rc=0\n", "{out:?}");
    let (_, last2, _) = labimg_logs(&["cp1", "--server", &base, "--tail", "2"]);
    assert!(
        last2.contains(" at stop 1\n") && last2.ends_with(" at stop 2\n"),
        "{last2}"
    );
    let (_, all, _) = labimg_logs(&["cp1", "--server", &base, "--tail", "0"]);

    // A wrong token: refused, the shipper says so and stops; nothing stored.
    let out = node_sh(
        &node,
        &format!("{config} labimg.token=wrong"),
        "echo stolen | logship_loop \"$(logship_url)\" \"$(cmdline_get labimg.token)\"",
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("refused this node's token"), "{err}");
    let (_, after, _) = labimg_logs(&["cp1", "--server", &base, "--tail", "0"]);
    assert_eq!(after, all);

    // Unknown node; no server there.
    let (ok, _, err) = labimg_logs(&["nobody", "--server", &base]);
    assert!(
        !ok && err.contains("does not know node \"nobody\""),
        "{err}"
    );
    srv.stop();
    let (ok, _, err) = labimg_logs(&["cp1", "--server", &base]);
    assert!(!ok && err.contains("cannot reach labimg serve at"), "{err}");

    // Lines sent while the server is down are kept and sent once it is back (here
    // after 5 s, then retries 1 s and 2 s later); what it kept survived its restart.
    let mut shipper = node_cmd(
        &node,
        &format!("{config} labimg.token=cp1-token-0123456789abcdef"),
        "LOGSHIP_RETRY=1; { echo 'while down 1'; echo 'while down 2'; sleep 10; } | \
         logship_loop \"$(logship_url)\" \"$(cmdline_get labimg.token)\"",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(7));
    let mut srv = Server::start(serve_command(t.path(), http, tftp));
    srv.wait_for("HTTP on", Duration::from_secs(30));
    assert!(shipper.wait().unwrap().success());
    let (ok, back, err) = labimg_logs(&["cp1", "--server", &base, "--tail", "0"]);
    assert!(ok, "{err}");
    assert!(back.starts_with(&all), "kept across the restart");
    assert!(back[all.len()..].contains(" while down 1\n"), "{back}");
    assert!(back.ends_with(" while down 2\n"), "{back}");
    let m = String::from_utf8(curl(&["-sf", &format!("{base}/metrics")])).unwrap();
    assert!(
        m.contains("labimg_log_lines_total{hostname=\"cp1\"} 2\n"),
        "one batch after the restart: {m}"
    );
    srv.stop();
}
