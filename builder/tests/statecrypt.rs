//! `builder/node/statecrypt.sh` (STATE sealed to the TPM) on the host, under
//! `busybox sh` with busybox's applets first on `PATH` as on a node, against a real
//! TPM 2.0 (`swtpm`, reached by tpm2-tools through its TCP TCTI instead of
//! /dev/tpmrm0), real `cryptsetup` on a file standing for the STATE partition, and a
//! folder standing for efivarfs. The host has no device-mapper, so `cryptsetup open`
//! is the one step replaced: the script's `statecrypt_open` checks the key with
//! `--test-passphrase` and keeps a copy of it for the test to compare. The mapping,
//! mkfs and /var are covered by the QEMU test (`qemu-tests/tests/tpm_state.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

#[path = "common/assemble.rs"]
mod assemble;

const SECUREBOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// A swtpm TPM 2.0 on two free TCP ports, stopped on drop; its state in `dir`.
struct Tpm {
    child: Child,
    port: u16,
}

/// Two free ports P and P+1: the swtpm TCTI finds the control port at P+1.
fn free_ports() -> (u16, u16) {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return (p, p + 1);
        }
    }
}

impl Tpm {
    fn start(state: &Path) -> Tpm {
        std::fs::create_dir_all(state).unwrap();
        let (port, ctrl) = free_ports();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .args([
                "--server",
                &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            ])
            .args([
                "--ctrl",
                &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("swtpm (Debian's swtpm; bash .ci/install-deps)");
        let tpm = Tpm { child, port };
        let start = Instant::now();
        loop {
            let probe = tpm.tool(&["tpm2_getrandom", "-o", "/dev/null", "1"]);
            if probe.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "swtpm did not answer: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tpm
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn tool(&self, args: &[&str]) -> std::process::Output {
        Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .expect("tpm2-tools (bash .ci/install-deps)")
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch node: busybox applets in `bin/`, the fake efivarfs, STATE files.
struct Node {
    dir: tempfile::TempDir,
}

/// What a run printed and whether it exited 0 (a FATAL exits 1 here).
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let busybox = which("busybox");
        let out = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8(out.stdout).unwrap().lines() {
            std::os::unix::fs::symlink(&busybox, bin.join(applet)).unwrap();
        }
        std::fs::create_dir(dir.path().join("efivars")).unwrap();
        let node = Node { dir };
        node.secure_boot(true);
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The SecureBoot variable as efivarfs shows it: 4 bytes of attributes, the value.
    fn secure_boot(&self, on: bool) {
        let var = [0x06, 0, 0, 0, u8::from(on)];
        std::fs::write(self.path("efivars").join(SECUREBOOT_VAR), var).unwrap();
    }

    /// A blank file of `mib` MiB standing for a new STATE partition.
    fn blank(&self, name: &str, mib: u64) -> PathBuf {
        let p = self.path(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(mib << 20).unwrap();
        p
    }

    /// Sources common.sh and statecrypt.sh (console lines to stderr, FATAL exits 1),
    /// then runs `script`; `tcti` is the TPM the node talks to.
    fn run(&self, tcti: &str, script: &str) -> Ran {
        let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
        let preamble = format!(
            r#". '{node}/common.sh'
labimg_say() {{ printf '%s\n' "$*" >&2; }}
fatal() {{ labimg_say "labimg: FATAL: $*"; exit 1; }}
STATECRYPT_TCTI='{tcti}'
STATECRYPT_RUN=$T/run
STATECRYPT_EFIVARS=$T/efivars
. '{node}/statecrypt.sh'
statecrypt_open() {{
	cryptsetup open --test-passphrase --type luks2 --key-file "$2" "$1" >"$STATECRYPT_RUN/open.log" 2>&1
	st=$?
	cp "$2" "$T/opened.key"
	rm -f "$2"
	return $st
}}
"#,
            node = node.display()
        );
        let out = Command::new("busybox")
            .args(["sh", "-c"])
            .arg(format!("{preamble}{script}"))
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.path("bin").display()
                ),
            )
            .env("T", self.dir.path())
            .output()
            .unwrap();
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn seal(&self, tcti: &str, dev: &Path) -> Ran {
        self.run(
            tcti,
            &format!(
                "statecrypt_check seal && statecrypt_seal_new '{}' && echo \"fs=$LB_STATE_FS $LB_STATE_FIELDS\"",
                dev.display()
            ),
        )
    }

    fn unlock(&self, tcti: &str, dev: &Path) -> Ran {
        self.run(
            tcti,
            &format!(
                "statecrypt_check unlock && statecrypt_unlock '{}' && echo \"fs=$LB_STATE_FS $LB_STATE_FIELDS\"",
                dev.display()
            ),
        )
    }
}

fn which(prog: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{prog} not found (bash .ci/install-deps)"))
}

fn fatal_of(r: &Ran) -> &str {
    assert!(
        !r.ok,
        "expected a FATAL\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r.stderr
        .lines()
        .find(|l| l.starts_with("labimg: FATAL: "))
        .unwrap_or_else(|| panic!("no FATAL line in: {}", r.stderr))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The policy digest of TPM2_PolicyPCR over sha256 PCR 7 holding `pcr7` (TPM 2.0
/// Part 3, 23.7): H(0…0 ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(pcr7)).
fn pcr7_policy(pcr7: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(0x0000_017Fu32.to_be_bytes());
    // count 1; TPM_ALG_SHA256; sizeofSelect 3; PCR 7 is bit 7 of the first byte.
    h.update([0, 0, 0, 1, 0x00, 0x0B, 3, 0x80, 0, 0]);
    h.update(Sha256::digest(pcr7));
    hex::encode(h.finalize())
}

/// First boot seals, the next boots unlock with the same key and no prompt; the
/// sealed object is policy-only and bound to PCR 7; a changed PCR 7 and another TPM
/// are refused with their reasons, and nothing is ever reformatted.
#[test]
fn state_is_sealed_to_pcr7_and_unlocks_only_with_the_same_tpm_and_pcr7() {
    let node = Node::new();
    let tpm = Tpm::start(&node.path("tpm"));
    let state = node.blank("state.img", 32);

    let r = node.seal(&tpm.tcti(), &state);
    assert!(r.ok, "seal failed\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "fs=/dev/mapper/state state=luks2 tpm=sealed\n");
    assert!(
        r.stderr.contains(&format!(
            "labimg: state sealed dev={} luks=2 tpm=sealed pcrs=sha256:7\n",
            state.display()
        )),
        "{}",
        r.stderr
    );
    let key = std::fs::read(node.path("opened.key")).unwrap();
    assert_eq!(key.len(), 32);
    assert!(!node.path("run/key").exists(), "the key stayed on /run");

    // LUKS2, pbkdf2 keyslot, our token; the key itself is nowhere on the disk.
    let dump = Command::new("cryptsetup")
        .args(["luksDump"])
        .arg(&state)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("PBKDF:      pbkdf2"), "{dump}");
    assert!(dump.contains("labimg-tpm2"), "{dump}");
    let disk = std::fs::read(&state).unwrap();
    assert!(!contains(&disk, &key), "the raw key is on the disk");

    // The sealed object: only its policy unseals it, and the policy is PolicyPCR on
    // sha256 PCR 7 as it was (swtpm's PCR 7 is all zeros after startup).
    let token = Command::new("cryptsetup")
        .args(["token", "export", "--token-id", "0"])
        .arg(&state)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&token.stdout).into_owned();
    let pub_b64 = token
        .split("\"tpm2-blob-pub\"")
        .nth(1)
        .and_then(|s| s.split('"').nth(1))
        .unwrap_or_else(|| panic!("no tpm2-blob-pub in {token}"))
        .replace("\\/", "/");
    let blob = node.path("seal.pub");
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pub_b64.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    std::fs::write(&blob, decoded.stdout).unwrap();
    let printed = tpm.tool(&["tpm2_print", "-t", "TPM2B_PUBLIC", blob.to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(printed.contains("fixedtpm|fixedparent|noda"), "{printed}");
    assert!(!printed.contains("userwithauth"), "{printed}");
    assert!(printed.contains("keyedhash"), "{printed}");
    assert!(
        printed.contains(&pcr7_policy(&[0; 32])),
        "policy is not PolicyPCR(sha256:7 = 0…0):\n{printed}"
    );

    // Next boot: the same key, no prompt (stdin is not a terminal and nothing asks).
    std::fs::remove_file(node.path("opened.key")).unwrap();
    let r = node.unlock(&tpm.tcti(), &state);
    assert!(r.ok, "unlock failed\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "fs=/dev/mapper/state state=luks2 tpm=unsealed\n");
    assert!(
        r.stderr.contains("tpm=unsealed pcrs=sha256:7\n"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(node.path("opened.key")).unwrap(), key);
    std::fs::remove_file(node.path("opened.key")).unwrap();

    // Secure Boot off: refused before the TPM is asked.
    node.secure_boot(false);
    let f = node.unlock(&tpm.tcti(), &state);
    assert!(
        fatal_of(&f).contains(
            "STATE is sealed to Secure Boot (PCR 7); Secure Boot is off: STATE stays locked"
        ),
        "{}",
        f.stderr
    );
    node.secure_boot(true);

    // PCR 7 changes (other keys enrolled): the policy check fails, saying both values.
    let ext = tpm.tool(&["tpm2_pcrextend", &format!("7:sha256={}", "ab".repeat(32))]);
    assert!(ext.status.success(), "{ext:?}");
    let f = node.unlock(&tpm.tcti(), &state);
    let msg = fatal_of(&f);
    assert!(msg.contains("PCR 7 policy check failed"), "{msg}");
    assert!(
        msg.contains(&format!("it was {} when STATE was sealed", "0".repeat(64))),
        "{msg}"
    );
    assert!(!node.path("opened.key").exists() && !node.path("run/key").exists());
    drop(tpm);

    // The same disk with another TPM (a fresh vTPM, or this one cleared).
    let other = Tpm::start(&node.path("other-tpm"));
    let f = node.unlock(&other.tcti(), &state);
    assert!(
        fatal_of(&f).contains("STATE's sealed key does not load into this TPM")
            && fatal_of(&f).contains("integrity check failed"),
        "{}",
        f.stderr
    );
    // Refusals never touch the disk.
    assert_eq!(std::fs::read(&state).unwrap(), disk);
}

/// Refused before anything is written: sealing with Secure Boot off or without a
/// TPM leaves the new partition blank; a plain (unencrypted) STATE is not unlocked
/// and not reformatted.
#[test]
fn refusals_leave_state_as_it_was() {
    let node = Node::new();
    let tpm = Tpm::start(&node.path("tpm"));
    let blank = node.blank("new.img", 20);

    node.secure_boot(false);
    let f = node.seal(&tpm.tcti(), &blank);
    assert!(
        fatal_of(&f).contains("STATE is sealed to Secure Boot (PCR 7); Secure Boot is off: refusing to create and seal STATE"),
        "{}",
        f.stderr
    );
    std::fs::remove_file(node.path("efivars").join(SECUREBOOT_VAR)).unwrap();
    let f = node.seal(&tpm.tcti(), &blank);
    assert!(
        fatal_of(&f).contains("Secure Boot is unknown"),
        "{}",
        f.stderr
    );
    node.secure_boot(true);

    let f = node.seal(&format!("device:{}", node.path("tpmrm0").display()), &blank);
    assert!(
        fatal_of(&f).contains("this machine has no TPM 2.0"),
        "{}",
        f.stderr
    );
    assert!(
        std::fs::read(&blank).unwrap().iter().all(|&b| b == 0),
        "a refused seal wrote to STATE"
    );

    let plain = node.blank("plain.img", 20);
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "STATE"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "{mkfs:?}");
    let before = std::fs::read(&plain).unwrap();
    let f = node.unlock(&tpm.tcti(), &plain);
    assert!(
        fatal_of(&f).contains("is not LUKS2-encrypted, but this image seals STATE to the TPM"),
        "{}",
        f.stderr
    );
    assert_eq!(std::fs::read(&plain).unwrap(), before);
}

/// The shipped proxmox profile's root with `sets`: the root packages' names and the tree.
fn root_tree(sets: &[&str]) -> (Vec<String>, labimg_builder::tree::Tree) {
    let a = assemble::shipped("proxmox", sets);
    (a.root_packages, a.rootfs.tree)
}

/// Only `tpm-seal-state` brings statecrypt.sh, cryptsetup, tpm2-tools (with the
/// dlopen'd device TCTI) and the dm-crypt modules; busybox's mount stays; an image
/// without it has none of them.
#[test]
fn the_image_carries_state_encryption_only_with_tpm_seal_state() {
    use labimg_builder::rootfs::{STATECRYPT_FILES, STATECRYPT_PACKAGES, STATECRYPT_SCRIPT};
    let modules_load = |tree: &labimg_builder::tree::Tree| {
        let data = tree
            .get("usr/lib/labimg/modules-load")
            .unwrap()
            .data()
            .unwrap();
        String::from_utf8_lossy(data).into_owned()
    };
    let (names, tree) = root_tree(&[]);
    for p in STATECRYPT_PACKAGES
        .iter()
        .chain(&["libtss2-tcti-device0t64", "udev"])
    {
        assert!(!names.iter().any(|n| n == p), "{p} in a plain image");
    }
    for p in STATECRYPT_FILES.iter().chain([&STATECRYPT_SCRIPT]) {
        assert!(tree.get_follow(p).is_none(), "{p} in a plain image");
    }
    let plain_modules = modules_load(&tree);
    assert!(!plain_modules.contains("dm_crypt"), "{plain_modules}");

    let (names, tree) = root_tree(&[
        "secure-boot.enabled=true",
        "secure-boot.tpm-seal-state=true",
    ]);
    for p in ["cryptsetup-bin", "tpm2-tools", "libtss2-tcti-device0t64"] {
        assert!(names.iter().any(|n| n == p), "{p} missing: {names:?}");
    }
    for p in ["systemd", "mount"] {
        assert!(!names.iter().any(|n| n == p), "{p} pulled in: {names:?}");
    }
    for p in STATECRYPT_FILES {
        let e = tree.get_follow(p).unwrap_or_else(|| panic!("no {p}"));
        assert!(e.data().is_some_and(|d| d.starts_with(b"\x7fELF")), "{p}");
    }
    assert!(tree.contains(STATECRYPT_SCRIPT));
    assert!(
        matches!(
            tree.get("usr/bin/mount").map(|e| &e.kind),
            Some(labimg_builder::tree::Kind::Symlink(t)) if t == Path::new("busybox")
        ),
        "mount is not busybox's"
    );
    let sealed_modules = modules_load(&tree);
    let extra: Vec<&str> = sealed_modules
        .lines()
        .filter(|m| !plain_modules.lines().any(|p| p == *m))
        .collect();
    assert_eq!(extra, ["dm_crypt", "xts", "algif_skcipher", "efivarfs"]);
}
