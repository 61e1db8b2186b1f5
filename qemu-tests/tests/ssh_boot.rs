//! Optional SSH (#17) on a booted node: the shipped proxmox profile with one
//! `[ssh] authorized-keys` entry boots on a LAN (a bridge in a network namespace,
//! Debian's dnsmasq as DHCP server) with the k3s stand-in kept running. A real client
//! (Debian's openssh-client, from the namespace) checks the host key against the
//! fingerprints the console printed, logs in as root with the profile's key, and is
//! refused with another key; `poweroff` over SSH ends the boot through the node's stop
//! sequence. The same disk boots again: the host keys were kept on STATE.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use labimg_qemu_tests::netns::Netns;
use labimg_qemu_tests::{SerialLog, Vm, build_once, qcow2_overlay, target_dir};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const NET: u8 = 79;
const MAC: &str = "52:54:00:79:00:01";

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`), no passphrase.
fn keygen(path: &Path, comment: &str) {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen (Debian package openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// The key the profile authorizes: made once with ssh-keygen and kept under
/// `target/`, so that the image (whose profile names it) is built once, not per run.
fn profile_key() -> PathBuf {
    let dir = target_dir().join("qemu-test-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("ssh_boot_ed25519");
    if !key.exists() || !key.with_extension("pub").exists() {
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        keygen(&key, "labimg-ssh-boot-test");
    }
    key
}

/// `<type>=<fingerprint>` pairs of the console's `labimg: ssh ready` line.
fn milestone_fingerprints(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once("=SHA256:"))
        .map(|(t, fp)| (t.to_owned(), format!("SHA256:{fp}")))
        .collect()
}

/// Waits until the serial log at `path` shows `needle` (or a FATAL, or time is up).
fn wait_for_console(path: &Path, needle: &str, timeout: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.trim().to_owned());
        }
        if text.contains("labimg: FATAL") {
            return Err(format!("the node stopped with a FATAL:\n{text}"));
        }
        if start.elapsed() > timeout {
            return Err(format!("no '{needle}' after {timeout:?}:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Client<'a> {
    ns: &'a Netns,
    dir: &'a Path,
    ip: String,
}

impl Client<'_> {
    /// Runs `ssh` from the namespace as root@node with `key`, checking the host key
    /// against `known_hosts` only (no user or system configuration).
    fn ssh(&self, key: &Path, command: &str) -> Output {
        self.ns
            .command("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
            ])
            .arg(format!("root@{}", self.ip))
            .arg(command)
            .output()
            .expect("running ssh (Debian package openssh-client)")
    }

    /// Scans the node's host keys, checks each one's fingerprint against the
    /// console's milestone, and writes them as `known_hosts`. Returns how many matched.
    fn trust_host_keys(&self, milestone: &[(String, String)]) -> Result<usize, String> {
        let scan = self
            .ns
            .command("ssh-keyscan")
            .args(["-T", "20", "-t", "ed25519,ecdsa"])
            .arg(&self.ip)
            .output()
            .expect("running ssh-keyscan (Debian package openssh-client)");
        let scanned = String::from_utf8_lossy(&scan.stdout).to_string();
        let mut known = String::new();
        let mut matched = 0;
        for line in scanned.lines().filter(|l| !l.starts_with('#')) {
            let file = self.dir.join("scanned.pub");
            // `<host> <type> <base64>` -> a public key file `<type> <base64>`.
            let key = line.split_once(' ').map(|(_, k)| k).unwrap_or_default();
            std::fs::write(&file, format!("{key}\n")).unwrap();
            let fp = std::process::Command::new("ssh-keygen")
                .args(["-l", "-E", "sha256", "-f"])
                .arg(&file)
                .output()
                .expect("running ssh-keygen");
            let fp = String::from_utf8_lossy(&fp.stdout).to_string();
            let fp = fp.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let kind = key.split_whitespace().next().unwrap_or_default();
            match milestone.iter().find(|(t, _)| t == kind) {
                Some((_, want)) if *want == fp => matched += 1,
                other => {
                    return Err(format!(
                        "host key {kind} {fp} from ssh-keyscan is not what the console printed \
                         ({other:?}); scanned:\n{scanned}"
                    ));
                }
            }
            known.push_str(line);
            known.push('\n');
        }
        std::fs::write(self.dir.join("known_hosts"), known).unwrap();
        Ok(matched)
    }
}

/// One boot of `disk`: waits for `labimg: ssh ready`, checks the host keys against it,
/// logs in with `good` and is refused with `wrong`, then powers the node off over SSH.
/// Returns the console and the fingerprints of the milestone.
fn boot_and_log_in(
    ns: &Netns,
    disk: &Path,
    name: &str,
    good: &Path,
    wrong: &Path,
) -> (SerialLog, Vec<(String, String)>) {
    let vm = Vm::x86_64_uefi(name)
        .unwrap()
        .scsi_existing_overlay(disk)
        .tap_nic("tap0", MAC)
        .in_netns(ns.name())
        .stand_in_mode("run");
    let serial = vm.work_dir().join("serial.log");
    let boot = std::thread::spawn(move || vm.boot(None, BOOT_TIMEOUT));
    let dir = tempfile::tempdir().unwrap();
    let result = log_in(ns, &serial, dir.path(), good, wrong);
    if result.is_err() {
        // Stop the node if SSH got that far; else the boot's timeout stops QEMU.
        if let Ok(ip) = wait_for_console(&serial, "labimg: network up if=eth0", Duration::ZERO) {
            let ip = ip.split("ip=").nth(1).unwrap_or_default();
            let client = Client {
                ns,
                dir: dir.path(),
                ip: ip.split('/').next().unwrap_or_default().to_owned(),
            };
            let _ = client.ssh(good, "poweroff");
        }
    }
    let log = boot.join().unwrap().unwrap();
    for line in log.lines_with("labimg: ssh ") {
        eprintln!("{name}: {line}");
    }
    match result {
        Ok(fps) => (log, fps),
        Err(e) => panic!("{e}\nlog: {}", log.keep().display()),
    }
}

fn log_in(
    ns: &Netns,
    serial: &Path,
    dir: &Path,
    good: &Path,
    wrong: &Path,
) -> Result<Vec<(String, String)>, String> {
    let ready = wait_for_console(serial, "labimg: ssh ready", BOOT_TIMEOUT)?;
    let up = wait_for_console(serial, "labimg: network up if=eth0", Duration::ZERO)?;
    let ip = up
        .split("ip=")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| format!("no address in '{up}'"))?
        .to_owned();
    if !ip.starts_with(&format!("10.{NET}.0.")) {
        return Err(format!(
            "the node's address {ip} is not from the LAN's DHCP server"
        ));
    }
    let fps = milestone_fingerprints(&ready);
    let types: Vec<&str> = fps.iter().map(|(t, _)| t.as_str()).collect();
    if types != ["ssh-ed25519", "ecdsa-sha2-nistp256"] || !ready.contains(" port=22 keys=1 ") {
        return Err(format!("unexpected milestone '{ready}'"));
    }
    let client = Client { ns, dir, ip };
    let matched = client.trust_host_keys(&fps)?;
    if matched != 2 {
        return Err(format!("{matched} of the 2 host keys were scanned"));
    }

    // The profile's key logs in as root, the host key checked strictly.
    let out = client.ssh(good, "cat /etc/hostname; id -u");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let host = format!("homelab-{}", &MAC.replace(':', "")[6..]);
    if !out.status.success() || stdout != format!("{host}\n0\n") {
        return Err(format!(
            "ssh with the profile's key: {:?}, stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // Another key is refused, and no password method is offered.
    let out = client.ssh(wrong, "true");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(255) || !stderr.contains("Permission denied (publickey)") {
        return Err(format!(
            "ssh with a key the profile does not list was not refused as expected: {:?}, \
             stderr {stderr:?}",
            out.status
        ));
    }

    // End the boot through the node's stop sequence; the session may be cut.
    let _ = client.ssh(good, "poweroff");
    Ok(fps)
}

#[test]
fn ssh_logs_in_with_the_profiles_key_only_and_the_host_key_is_kept() {
    let good = profile_key();
    let public = std::fs::read_to_string(good.with_extension("pub")).unwrap();
    let out = build_once(
        "ssh-boot",
        &format!(
            "extends = \"proxmox.toml\"\n[ssh]\nauthorized-keys = [\"{}\"]\n",
            public.trim()
        ),
    )
    .unwrap_or_else(|e| panic!("building the SSH profile: {e:#}"));
    let work = tempfile::tempdir().unwrap();
    let wrong = work.path().join("wrong_ed25519");
    keygen(&wrong, "not-in-the-profile");

    let ns = Netns::create(
        &format!("labimg-ssh-{}", std::process::id()),
        &format!("10.{NET}.0.1/24"),
    )
    .unwrap();
    ns.add_tap("tap0").unwrap();
    let _ntp = ns.chrony_server(&format!("10.{NET}.0.1")).unwrap();
    let _dhcp = ns
        .dnsmasq_dhcp(&format!("10.{NET}.0.100"), &format!("10.{NET}.0.150"))
        .unwrap();
    let disk = work.path().join("disk.qcow2");
    qcow2_overlay(&out.join("proxmox.qcow2"), "qcow2", &disk, Some("4G")).unwrap();

    let (first, fps1) = boot_and_log_in(&ns, &disk, "ssh-boot-1", &good, &wrong);
    first.assert_absent("labimg: FATAL");
    first.assert_absent("labimg: WARNING: ssh");
    // The SSH server and the session that ran poweroff were stopped before /var.
    first.assert_absent("/var busy");
    first.assert_in_order(&[
        "labimg: state created",
        "labimg: network up if=eth0",
        "host-keys=created",
        "labimg: k3s starting role=server",
        "labimg: stopping action=poweroff",
        "labimg: powering off",
    ]);
    assert!(
        first.powered_off,
        "QEMU did not exit after poweroff over SSH; log: {}",
        first.keep().display()
    );

    // The same disk again: the host keys come from STATE.
    let (second, fps2) = boot_and_log_in(&ns, &disk, "ssh-boot-2", &good, &wrong);
    second.assert_absent("labimg: FATAL");
    second.assert_absent("/var busy");
    second.assert_in_order(&[
        "labimg: state mounted",
        "host-keys=kept",
        "labimg: powering off",
    ]);
    assert_eq!(
        fps1,
        fps2,
        "the host keys changed across a reboot; log: {}",
        second.keep().display()
    );
}
