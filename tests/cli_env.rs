//! `labimg serve` takes every setting from a `LABIMG_*` environment variable as well
//! as from its flag (the way a container or a systemd unit configures it), and a
//! flag given on the command line wins over the variable.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Args as _;

const BIN: &str = env!("CARGO_BIN_EXE_labimg");

/// Every `--flag` of `labimg serve` reads `LABIMG_<FLAG>` (dashes as underscores).
#[test]
fn every_serve_flag_has_its_variable() {
    let cmd = labimg_netboot::ServeOptions::augment_args(clap::Command::default());
    let mut flags = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        flags += 1;
        // `LABIMG_<FLAG>`, or a longer name that says more (`LABIMG_TOKEN_KEY_FILE`).
        let want = format!("LABIMG_{}", long.to_uppercase().replace('-', "_"));
        let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
        assert!(
            env.starts_with(&want),
            "--{long} of labimg serve reads {env:?}, not {want}"
        );
    }
    assert!(flags >= 10, "only {flags} flags found");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `labimg serve <args>` configured by `LABIMG_*` variables (loopback, DHCP
/// off, stand-in iPXE binaries, HTTP on `env_http`), waits for its "HTTP on" log
/// line, stops it with SIGTERM and returns that line.
fn http_line(root: &std::path::Path, env_http: u16, args: &[&str]) -> String {
    let ipxe = root.join("ipxe");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(&ipxe).unwrap();
    for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe-arm64.efi"] {
        std::fs::write(ipxe.join(f), b"stand-in").unwrap();
    }
    let inventory = root.join("inventory.toml");
    std::fs::write(&inventory, "[default]\naction = \"ignore\"\n").unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .env("LABIMG_LOG_FORMAT", "text")
        .env("LABIMG_IMAGES", root.join("images"))
        .env("LABIMG_INVENTORY", &inventory)
        .env("LABIMG_STATE_DIR", root.join("state"))
        .env("LABIMG_IPXE_DIR", &ipxe)
        .env("LABIMG_DHCP", "off")
        .env("LABIMG_ADVERTISE", "127.0.0.1")
        .env("LABIMG_HTTP_ADDR", format!("127.0.0.1:{env_http}"))
        .env("LABIMG_TFTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting labimg serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("HTTP on") => break Some(l),
            Ok(l) => seen.push(l),
            Err(_) => break None,
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let line = found.unwrap_or_else(|| {
        panic!(
            "labimg serve never said 'HTTP on' ({status}):\n{}",
            seen.join("\n")
        )
    });
    // It stopped cleanly on TERM: every service bound (a TFTP address from the
    // variables that failed to bind would have ended serve with an error first).
    assert!(status.success(), "labimg serve exited with {status}");
    line
}

#[test]
fn a_variable_sets_a_value_and_the_flag_overrides_it() {
    let t = tempfile::tempdir().unwrap();
    let env_http = free_port();
    let line = http_line(t.path(), env_http, &[]);
    assert!(
        line.ends_with(&format!("HTTP on 127.0.0.1:{env_http}")),
        "{line}"
    );

    let flag_http = free_port();
    let flag = format!("127.0.0.1:{flag_http}");
    let line = http_line(t.path(), env_http, &["--http-addr", &flag]);
    assert!(line.ends_with(&format!("HTTP on {flag}")), "{line}");
}

/// A malformed variable is a usage error that names the flag it stands for.
#[test]
fn a_bad_variable_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["serve", "--inventory", "/nonexistent.toml"])
        .env("LABIMG_HTTP_ADDR", "not-an-address")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not-an-address") && stderr.contains("--http-addr"),
        "{stderr}"
    );
}
