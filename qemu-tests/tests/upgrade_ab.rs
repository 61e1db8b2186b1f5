//! A/B upgrades on the Proxmox image under OVMF (TCG), with the k3s stand-in:
//! one qcow2 overlay is booted several times, so the ESP's boot entries and the
//! STATE partition carry over from boot to boot as on a real disk.
//!
//! The node pulls `labimg.upgrade=http://10.0.2.100` (a profile kernel
//! argument); QEMU's user network forwards that address (through `bash`'s
//! `/dev/tcp`, one relay per connection) to an HTTP server in this test on
//! 127.0.0.1 serving a second build's output folder. `-no-reboot`
//! makes every guest reboot end QEMU, and the test boots the same disk again.
//! The agent reboots through PID 1's stop sequence (busybox `reboot`). A trial
//! boot is blessed only once k3s reports the node Ready: there the stand-in runs
//! (`Vm::stand_in_mode("run")`) and answers the agent's readiness question, and
//! the boot ends at the `boot blessed` milestone.
//!
//! The images trust the committed test key (`qemu-tests/test-key/`) through
//! `[upgrade] public-key`, and v2 is signed with it: a node stages only a bundle
//! whose signed `SHA256SUMS` vouches for its `upgrade.env`, the file the agent
//! reads (tampering tests edit that one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use labimg_qemu_tests::{
    SerialLog, Vm, assert_node_identity_kept, build_text_once, qcow2_overlay, serve_dir_http,
    test_signing_key,
};

const MAC: &str = "52:54:00:12:34:57";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The shipped proxmox profile, one node, pointed at the test's bundle server;
/// `version` becomes a node label so that v1 and v2 differ in their root.
fn profile(version: &str) -> String {
    let (_, public_key) = test_signing_key();
    format!(
        r#"
extends = "proxmox.toml"

[upgrade]
url = "http://10.0.2.100"
public-key = "{public_key}"

[[nodes]]
hostname = "pve-up-1"
mac = "{MAC}"
role = "server"
dhcp-reservation = true
labels = {{ "labimg.test/version" = "{version}" }}

[outputs]
formats = ["qcow2"]
"#
    )
}

/// The bundle a node downloads: `upgrade.env` (and `upgrade.json`, which the
/// node does not read), the signed `SHA256SUMS` and the netboot files, copied so that a test can tamper with them.
fn copy_bundle(out: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.join("netboot")).unwrap();
    for f in [
        "upgrade.env",
        "upgrade.json",
        "SHA256SUMS",
        "SHA256SUMS.minisig",
    ] {
        std::fs::copy(out.join(f), dst.join(f)).unwrap();
    }
    for f in ["vmlinuz", "initrd.img", "root.squashfs"] {
        std::fs::copy(out.join("netboot").join(f), dst.join("netboot").join(f)).unwrap();
    }
}

/// A test machine: the v1 image behind one persistent overlay, the bundle
/// server, and a boot counter for log names.
struct Node {
    name: &'static str,
    overlay: PathBuf,
    port: u16,
    boots: u32,
    _scratch: tempfile::TempDir,
}

impl Node {
    fn new(name: &'static str, v1: &Path, bundle: PathBuf, scratch: tempfile::TempDir) -> Node {
        let overlay = scratch.path().join("disk.qcow2");
        qcow2_overlay(&v1.join("proxmox.qcow2"), "qcow2", &overlay, Some("4G")).unwrap();
        Node {
            name,
            overlay,
            port: serve_dir_http(bundle),
            boots: 0,
            _scratch: scratch,
        }
    }

    /// Boots until QEMU exits (the stand-in powers off once started).
    fn boot(&mut self) -> SerialLog {
        self.boot_with(None, None)
    }

    /// Boots with the stand-in in `mode` (`Vm::stand_in_mode`), until QEMU exits
    /// or `stop_at` appears on the console.
    fn boot_with(&mut self, mode: Option<&str>, stop_at: Option<&str>) -> SerialLog {
        self.boots += 1;
        let log_name = format!("{}-boot{}", self.name, self.boots);
        let mut vm = Vm::x86_64_uefi(&log_name)
            .unwrap()
            .scsi_existing_overlay(&self.overlay)
            .bundle_net(MAC, self.port);
        if let Some(mode) = mode {
            vm = vm.stand_in_mode(mode);
        }
        let log = vm.boot(stop_at, BOOT_TIMEOUT).unwrap();
        eprintln!("{log_name}: {:.0?}", log.elapsed);
        log
    }
}

fn builds() -> (PathBuf, PathBuf) {
    let (key, _) = test_signing_key();
    let v1 = build_text_once("upgrade-v1", &profile("v1"), None).expect("building v1");
    let v2 = build_text_once("upgrade-v2", &profile("v2"), Some(&key)).expect("building v2");
    (v1, v2)
}

/// `SHA256SUMS` of `bundle` with the lines of `upgrade.env` and `upgrade.json`
/// recomputed from the files.
fn rehash_upgrade_files(bundle: &Path) {
    let sums = bundle.join("SHA256SUMS");
    let hash = |f: &str| {
        labimg_builder::artifact::hash_file(&bundle.join(f))
            .unwrap()
            .0
    };
    let text: String = std::fs::read_to_string(&sums)
        .unwrap()
        .lines()
        .map(|l| match l.split_once("  ") {
            Some((_, f @ ("upgrade.env" | "upgrade.json"))) => format!("{}  {f}\n", hash(f)),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&sums, text).unwrap();
}

/// What the publisher does after editing a bundle: new sums, signed again with
/// the test key (a release that is signed but broken).
fn resign(bundle: &Path) {
    rehash_upgrade_files(bundle);
    let (key, _) = test_signing_key();
    let sk = labimg_builder::artifact::sign::load_secret_key_with(&key, None).unwrap();
    labimg_builder::artifact::sign::sign_sums(bundle, &sk).unwrap();
}

/// Slot B's command line in `upgrade.env` (what the node reads) with a
/// dm-verity root hash its image does not have.
fn break_slot_b_root_hash(bundle: &Path) {
    let meta = bundle.join("upgrade.env");
    let text = std::fs::read_to_string(&meta).unwrap();
    let b = text
        .lines()
        .find_map(|l| l.strip_prefix("LABIMG_BUNDLE_CMDLINE_B='"))
        .expect("upgrade.env has LABIMG_BUNDLE_CMDLINE_B");
    let hash = b
        .split([' ', '\''])
        .find_map(|a| a.strip_prefix("labimg.verity.roothash="))
        .expect("slot b's cmdline has a dm-verity root hash");
    let broken = b.replace(hash, &"0".repeat(hash.len()));
    std::fs::write(&meta, text.replace(b, &broken)).unwrap();
}

fn version_of(out: &Path) -> String {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("upgrade.json")).unwrap()).unwrap();
    j["version"].as_str().unwrap().to_owned()
}

fn config_lines(log: &SerialLog) -> Vec<String> {
    log.lines_with("k3s-stand-in: config| ")
        .iter()
        .map(|l| l["k3s-stand-in: config| ".len()..].to_owned())
        .collect()
}

#[test]
fn upgrade_ab_stages_slot_b_boots_it_as_a_trial_and_blesses_it() {
    let started = Instant::now();
    let (v1, v2) = builds();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("bundle");
    copy_bundle(&v2, &bundle);
    let v2_version = version_of(&v2);
    let mut node = Node::new("upgrade-good", &v1, bundle, scratch);

    // Boot 1: v1 from slot A creates STATE, finds v2 and stages it into slot B.
    let log = node.boot();
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: boot trial");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda2",
        "labimg: state created",
        "labimg: network up",
        "labimg: upgrade signature verified",
        &format!("labimg: upgrade started slot=b version={v2_version}"),
        "labimg: upgrade root written dev=/dev/sda3",
        &format!("labimg: upgrade staged slot=b version={v2_version} tries=3"),
        "labimg: rebooting into slot b",
        // The agent asked PID 1 (busybox reboot), which ran its stop sequence.
        "labimg: stopping action=reboot",
        "labimg: rebooting",
    ]);
    log.assert_absent("k3s-stand-in");
    log.assert_absent("did not reboot within");

    // Boot 2: systemd-boot tries the new entry first; the trial starts k3s and is
    // blessed once k3s reports the node Ready; STATE is the one boot 1 created.
    let log = node.boot_with(Some("run"), Some("labimg: boot blessed"));
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: state created");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda3",
        "labimg: root verified",
        "labimg: boot trial slot=b deadline=600s",
        "labimg: state mounted dev=/dev/sda4",
        &format!("labimg: upgrade check version={v2_version} up-to-date"),
        "labimg: k3s starting role=server",
        "labimg: boot trial waiting node=pve-up-1 for=Ready",
        "labimg: boot blessed slot=b ready-s=",
    ]);
    let trial = log.assert_host_contract_without_dns();
    let config = config_lines(&log);
    assert!(
        config.iter().any(|l| l == "- labimg.test/version=v2"),
        "slot B does not run v2's config: {config:#?}; log: {}",
        log.keep().display()
    );

    // Boot 3: the blessed entry has no counter and no trial arguments any more.
    let log = node.boot();
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: boot trial");
    log.assert_absent("labimg: state created");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda3",
        "labimg: state mounted dev=/dev/sda4",
        "k3s-stand-in: done, powering off",
    ]);
    let blessed = log.assert_host_contract_without_dns();
    assert_node_identity_kept(&trial, &blessed);
    eprintln!("good upgrade: {:.0?} in all", started.elapsed());
}

#[test]
fn upgrade_ab_refuses_a_bundle_whose_root_does_not_match_its_sha256() {
    let (v1, v2) = builds();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("bundle");
    copy_bundle(&v2, &bundle);
    // One byte in the middle of the served root image, after its sha256 was recorded.
    let root = bundle.join("netboot/root.squashfs");
    let mut data = std::fs::read(&root).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&root, data).unwrap();
    let mut node = Node::new("upgrade-corrupt", &v1, bundle, scratch);

    let log = node.boot();
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda2",
        "labimg: upgrade started slot=b",
        "labimg: upgrade refused: root image written to /dev/sda3 has sha256",
        // The running system carries on.
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);
    log.assert_absent("labimg: upgrade staged");
    log.assert_absent("labimg: FATAL");
}

#[test]
fn upgrade_ab_refuses_a_bundle_its_signature_does_not_vouch_for() {
    let (v1, v2) = builds();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("bundle");
    copy_bundle(&v2, &bundle);
    let original = std::fs::read(bundle.join("upgrade.env")).unwrap();
    // Someone between publisher and node rewrites upgrade.env (here: slot B's
    // root hash) but cannot sign: the signed SHA256SUMS names another sha256.
    break_slot_b_root_hash(&bundle);
    let mut node = Node::new("upgrade-unsigned", &v1, bundle.clone(), scratch);
    let log = node.boot();
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda2",
        "labimg: upgrade refused: upgrade.env of http://10.0.2.100 has sha256",
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);
    log.assert_absent("labimg: upgrade started");
    log.assert_absent("labimg: FATAL");

    // They also rewrite SHA256SUMS to match: now the signature fails.
    rehash_upgrade_files(&bundle);
    let log = node.boot();
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda2",
        "labimg: upgrade refused: SHA256SUMS of http://10.0.2.100 is not signed by this image's upgrade key",
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);
    log.assert_absent("labimg: upgrade started");

    // The intact bundle with its signature removed: unsigned is refused too.
    std::fs::write(bundle.join("upgrade.env"), &original).unwrap();
    std::fs::copy(v2.join("SHA256SUMS"), bundle.join("SHA256SUMS")).unwrap();
    std::fs::remove_file(bundle.join("SHA256SUMS.minisig")).unwrap();
    let log = node.boot();
    log.assert_in_order(&[
        "labimg: upgrade refused: cannot fetch http://10.0.2.100/SHA256SUMS.minisig",
        "labimg: k3s starting role=server",
    ]);
    log.assert_absent("labimg: upgrade started");

    // Validly signed, but the wrong bundle: an older build (a replayed release) is
    // refused, so a signature alone cannot downgrade a node; nor is a signed
    // upgrade.env with a line that is not KEY='value' read (here an unquoted value,
    // which `.` would run). Another profile's bundle is refused by the same
    // check_lineage: builder/tests/node_upgrade.rs runs it without a boot.
    let original = String::from_utf8(original).unwrap();
    for (from, to, refusal) in [
        (
            "LABIMG_BUNDLE_SOURCE_DATE_EPOCH='1700000000'",
            "LABIMG_BUNDLE_SOURCE_DATE_EPOCH='1600000000'",
            "labimg: upgrade refused: the bundle was built at SOURCE_DATE_EPOCH 1600000000, before the running image (1700000000)",
        ),
        (
            "LABIMG_BUNDLE_PROFILE='proxmox'",
            "LABIMG_BUNDLE_PROFILE=proxmox;reboot",
            "labimg: upgrade refused: upgrade.env of http://10.0.2.100 is not KEY='value' lines",
        ),
    ] {
        assert!(original.contains(from), "{from} not in {original}");
        std::fs::write(bundle.join("upgrade.env"), original.replace(from, to)).unwrap();
        resign(&bundle);
        let log = node.boot();
        log.assert_in_order(&[
            "labimg: upgrade signature verified",
            refusal,
            "labimg: k3s starting role=server",
        ]);
        log.assert_absent("labimg: upgrade started");
    }
}

#[test]
fn upgrade_ab_falls_back_to_slot_a_when_the_trial_boot_fails() {
    let started = Instant::now();
    let (v1, v2) = builds();
    let scratch = tempfile::tempdir().unwrap();
    let bundle = scratch.path().join("bundle");
    copy_bundle(&v2, &bundle);
    // Slot B's command line names a root hash its image does not have, in a
    // bundle signed again by the publisher: stage 1 refuses every trial boot of B.
    break_slot_b_root_hash(&bundle);
    resign(&bundle);
    let v2_version = version_of(&v2);
    let mut node = Node::new("upgrade-rollback", &v1, bundle, scratch);

    let log = node.boot();
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda2",
        &format!("labimg: upgrade staged slot=b version={v2_version} tries=3"),
        "labimg: rebooting into slot b",
    ]);

    // Three tries of slot B, each stopped by stage 1 and rebooted.
    for _ in 0..3 {
        let log = node.boot();
        log.assert_in_order(&[
            "labimg: root found dev=/dev/sda3",
            "labimg: FATAL: root verification failed",
        ]);
        log.assert_absent("labimg: root mounted");
    }

    // Tries used up: systemd-boot sorts the bad entry last and boots slot A, which
    // does not stage the same failed version again.
    let log = node.boot();
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: state created");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/sda2",
        "labimg: state mounted dev=/dev/sda4",
        &format!("labimg: upgrade skipped version={v2_version} reason=failed-trial"),
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);
    let config = config_lines(&log);
    assert!(
        config.iter().any(|l| l == "- labimg.test/version=v1"),
        "slot A does not run v1's config: {config:#?}; log: {}",
        log.keep().display()
    );
    eprintln!("rollback: {:.0?} in all", started.elapsed());
}
