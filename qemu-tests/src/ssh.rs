//! Logging in to a booted node with SSH (#17), shared by the x86 (`ssh_boot`) and
//! arm64 (`rpi5_boot`) boot tests: a real client (Debian's openssh-client) in the
//! test's namespace checks the host keys against the fingerprints the console printed
//! (`labimg: ssh ready …`), logs in as root with the profile's key, is refused with
//! another key and without a key (the server offers no password method), and powers
//! the node off over SSH, through its stop sequence.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::{SerialLog, Vm, target_dir};

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`), no passphrase.
pub fn keygen(path: &Path, comment: &str) {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen (Debian package openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// The key the test profiles authorize: made once with ssh-keygen and kept under
/// `target/`, so that an image whose profile names it is built once, not per run.
pub fn profile_key() -> PathBuf {
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

/// `[ssh] authorized-keys = ["<profile_key's public key>"]`, for a test profile.
pub fn profile_ssh_table() -> String {
    let public = std::fs::read_to_string(profile_key().with_extension("pub")).unwrap();
    format!("[ssh]\nauthorized-keys = [\"{}\"]\n", public.trim())
}

/// `<type>=<fingerprint>` pairs of the console's `labimg: ssh ready` line.
pub fn milestone_fingerprints(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once("=SHA256:"))
        .map(|(t, fp)| (t.to_owned(), format!("SHA256:{fp}")))
        .collect()
}

/// Waits until the serial log at `path` shows `needle` (or a FATAL, or time is up).
pub fn wait_for_console(path: &Path, needle: &str, timeout: Duration) -> Result<String, String> {
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

/// An SSH client in the test's namespace, talking to the node at `ip`.
#[derive(Debug)]
pub struct Client<'a> {
    pub ns: &'a Netns,
    /// Where `known_hosts` is written.
    pub dir: &'a Path,
    pub ip: String,
}

impl Client<'_> {
    /// Runs `ssh` from the namespace as root@node with `key`, checking the host key
    /// against `known_hosts` only (no user or system configuration).
    pub fn ssh(&self, key: &Path, command: &str) -> Output {
        self.ssh_with(&["-i", &key.display().to_string()], command)
    }

    /// [`Client::ssh`] with `args` in place of the key (`-i …` or `-o …` options).
    fn ssh_with(&self, args: &[&str], command: &str) -> Output {
        self.ns
            .command("ssh")
            .args(["-F", "/dev/null"])
            .args(args)
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
    pub fn trust_host_keys(&self, milestone: &[(String, String)]) -> Result<usize, String> {
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

/// What a login expects of the node.
#[derive(Debug)]
pub struct Login<'a> {
    /// The LAN is 10.`net`.0.0/24; the node's address must come from it.
    pub net: u8,
    /// What `cat /etc/hostname` prints on the node.
    pub hostname: &'a str,
    /// The profile's key, and one it does not list.
    pub good: &'a Path,
    pub wrong: &'a Path,
}

/// Boots `vm` (a node on `ns`'s LAN that keeps running: stand-in mode `run`) and,
/// once the console says `labimg: ssh ready`, logs in as [`log_in`] does, runs `more`
/// with the logged-in client, and once the stand-in is `ready` (its report printed)
/// powers the node off over SSH. Returns the console
/// and the milestone's fingerprints; panics with the kept console on a failure.
pub fn boot_and_log_in(
    ns: &Netns,
    vm: Vm,
    timeout: Duration,
    login: &Login,
    more: impl FnOnce(&Client) -> Result<(), String>,
) -> (SerialLog, Vec<(String, String)>) {
    let name = vm.name().to_owned();
    let serial = vm.work_dir().join("serial.log");
    let boot = std::thread::spawn(move || vm.boot(None, timeout));
    let dir = tempfile::tempdir().unwrap();
    let result = log_in(ns, &serial, dir.path(), login, timeout).and_then(|client| {
        more(&client)?;
        // SSH is up before k3s starts: let the stand-in finish its report first.
        wait_for_console(&serial, "k3s-stand-in: ready mode=run", timeout)?;
        // End the boot through the node's stop sequence; the session may be cut.
        let _ = client.ssh(login.good, "poweroff");
        Ok(())
    });
    if result.is_err() {
        // Stop the node if SSH got that far; else the boot's timeout stops QEMU.
        if let Ok(ip) = wait_for_console(&serial, "labimg: network up if=eth0", Duration::ZERO) {
            let ip = ip.split("ip=").nth(1).unwrap_or_default();
            let client = Client {
                ns,
                dir: dir.path(),
                ip: ip.split('/').next().unwrap_or_default().to_owned(),
            };
            let _ = client.ssh(login.good, "poweroff");
        }
    }
    let log = boot.join().unwrap().unwrap();
    for line in log.lines_with("labimg: ssh ") {
        eprintln!("{name}: {line}");
    }
    let ready = log.lines_with("labimg: ssh ready");
    match (result, ready.first()) {
        (Ok(()), Some(line)) => (log, milestone_fingerprints(line)),
        (Ok(()), None) => panic!("no 'ssh ready' line\nlog: {}", log.keep().display()),
        (Err(e), _) => panic!("{e}\nlog: {}", log.keep().display()),
    }
}

/// Waits for `labimg: ssh ready` on the console at `serial`, checks the two host keys
/// ssh-keyscan sees against its fingerprints (they become the only `known_hosts`),
/// logs in as root with the profile's key (`cat /etc/hostname; id -u`), and checks
/// that another key, and no key at all, are refused with `Permission denied
/// (publickey)`: the server offers no password or keyboard-interactive method.
/// Returns the logged-in client.
pub fn log_in<'a>(
    ns: &'a Netns,
    serial: &Path,
    dir: &'a Path,
    login: &Login,
    timeout: Duration,
) -> Result<Client<'a>, String> {
    let ready = wait_for_console(serial, "labimg: ssh ready", timeout)?;
    let up = wait_for_console(serial, "labimg: network up if=eth0", Duration::ZERO)?;
    let ip = up
        .split("ip=")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| format!("no address in '{up}'"))?
        .to_owned();
    if !ip.starts_with(&format!("10.{}.0.", login.net)) {
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
    let out = client.ssh(login.good, "cat /etc/hostname; id -u");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || stdout != format!("{}\n0\n", login.hostname) {
        return Err(format!(
            "ssh with the profile's key: {:?}, stdout {stdout:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // Another key is refused; without a key, the only method offered is publickey
    // (no password, no keyboard-interactive): a password login is refused.
    let wrong = login.wrong.display().to_string();
    let refusals: [(&str, &[&str]); 2] = [
        ("a key the profile does not list", &["-i", &wrong]),
        (
            "a password",
            &[
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ],
        ),
    ];
    for (what, args) in refusals {
        let out = client.ssh_with(args, "true");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(255) || !stderr.contains("Permission denied (publickey)") {
            return Err(format!(
                "ssh with {what} was not refused as expected: {:?}, stderr {stderr:?}",
                out.status
            ));
        }
    }
    Ok(client)
}
