//! Secure Boot on the Proxmox image under Debian's Secure Boot OVMF (TCG, SMM),
//! with labimg's own key set (made once by `labimg secureboot keygen`'s code)
//! enrolled by `virt-fw-vars`: one image (`fixtures/secure-boot.toml`, v1) and its
//! upgrade bundle (v2, a later epoch, signed with the committed minisign test key).
//!
//! - The firmware refuses, in one firmware-only boot with one boot option per
//!   disk, a UKI whose command line has another root hash, an unsigned UKI, a UKI
//!   signed by another key set and a tampered systemd-boot (`Access Denied`), then
//!   starts the genuine systemd-boot, which cannot load a tampered
//!   `EFI/Linux/labimg-a.efi` (`Access denied`). The serial log is kept.
//! - The image boots with Secure Boot enforcing (`secureboot=on`); its agent
//!   refuses a bundle whose UKI is not signed by the image's db key, stages the
//!   signed one, and the trial boot of slot B (known from systemd-boot's
//!   `LoaderBootCountPath`, the UKI's command line being sealed) is blessed.
//! - STATE is sealed to the machine's vTPM (`tpm-seal-state`, one swtpm state for
//!   every boot): the first boot makes it LUKS2 with its key sealed under PCR 7
//!   (`state sealed`), the next boot and the trial boot of slot B after the signed
//!   upgrade unlock it with no prompt and find the same machine-id on it; the same
//!   disk with a fresh vTPM, and with the same keys but Secure Boot off in the
//!   variables, stops with a FATAL that says why (each boot cut at the FATAL).

use std::path::{Path, PathBuf};
use std::time::Duration;

use labimg_qemu_tests::secureboot::{
    FIRMWARE_FAILED_TO_LOAD, FIRMWARE_REFUSED, KeySet, SYSTEMD_BOOT_LOAD_ERROR,
    SYSTEMD_BOOT_REFUSED, SecureBoot, TpmState, fat_disk_path, is_signed, strip_signature,
    tamper_root_hash, test_keys,
};
use labimg_qemu_tests::{
    RawDisk, SerialLog, Vm, assert_node_identity_kept, build_secure_boot_once, mcopy,
    qcow2_overlay, run, serve_dir_http, test_signing_key,
};

const MAC: &str = "52:54:00:12:34:5b";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// v1's epoch; v2 is a day later (systemd-boot orders the slots' UKIs by it).
const EPOCH_V1: u64 = 1_700_000_000;
const EPOCH_V2: u64 = 1_700_086_400;

fn profile(version: &str) -> String {
    let (_, public_key) = test_signing_key();
    include_str!("../fixtures/secure-boot.toml")
        .replace("@PUBLIC_KEY@", &public_key)
        .replace("@VERSION@", version)
}

fn keys() -> PathBuf {
    test_keys("labimg").expect("making the test key set")
}

fn v1() -> PathBuf {
    build_secure_boot_once("secure-boot-v1", &profile("v1"), None, &keys(), EPOCH_V1)
        .expect("building the Secure Boot image")
}

fn v2() -> PathBuf {
    let (sign, _) = test_signing_key();
    build_secure_boot_once(
        "secure-boot-v2",
        &profile("v2"),
        Some(&sign),
        &keys(),
        EPOCH_V2,
    )
    .expect("building the Secure Boot bundle")
}

/// `esp` copied (sparse) to `dst` with `files` (path on the FAT, bytes) replaced.
fn esp_variant(esp: &Path, dst: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    run(std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(esp)
        .arg(dst))
    .unwrap();
    for (i, (path, bytes)) in files.iter().enumerate() {
        let tmp = dst.with_extension(format!("{i}.efi"));
        std::fs::write(&tmp, bytes).unwrap();
        run(std::process::Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(dst)
            .arg(&tmp)
            .arg(format!("::/{path}")))
        .unwrap();
    }
    dst.to_owned()
}

#[test]
fn the_firmware_refuses_tampered_unsigned_and_foreign_images() {
    let out = v1();
    let dir = tempfile::tempdir().unwrap();
    let esp = RawDisk::from_image(&out.join("proxmox.qcow2"), dir.path())
        .unwrap()
        .extract("ESP", &dir.path().join("esp.img"))
        .unwrap();
    let _ = std::fs::remove_file(dir.path().join("disk.raw"));
    let uki = std::fs::read(mcopy(&esp, "EFI/Linux/labimg-a.efi", dir.path()).unwrap()).unwrap();
    let sdboot = std::fs::read(mcopy(&esp, "EFI/BOOT/BOOTX64.EFI", dir.path()).unwrap()).unwrap();
    assert!(is_signed(&uki).unwrap() && is_signed(&sdboot).unwrap());

    let tampered_cmdline = tamper_root_hash(&uki).unwrap();
    assert_eq!(tampered_cmdline.len(), uki.len());
    let unsigned = strip_signature(&uki).unwrap();
    assert!(!is_signed(&unsigned).unwrap());
    let other_keys = test_keys("someone-else").unwrap();
    let other = labimg_builder::secureboot::load_db(&other_keys).unwrap();
    let foreign = labimg_builder::secureboot::sign_pe(&unsigned, &other).unwrap();
    let mut tampered_sdboot = sdboot.clone();
    let mid = tampered_sdboot.len() / 2;
    tampered_sdboot[mid] ^= 0x01;

    // Boot options 1-4: the firmware loads each as EFI/BOOT/BOOTX64.EFI and
    // must refuse it; option 5 is the genuine systemd-boot with a tampered UKI.
    let d = dir.path();
    let disks = [
        esp_variant(
            &esp,
            &d.join("cmdline.img"),
            &[("EFI/BOOT/BOOTX64.EFI", &tampered_cmdline)],
        ),
        esp_variant(
            &esp,
            &d.join("unsigned.img"),
            &[("EFI/BOOT/BOOTX64.EFI", &unsigned)],
        ),
        esp_variant(
            &esp,
            &d.join("foreign.img"),
            &[("EFI/BOOT/BOOTX64.EFI", &foreign)],
        ),
        esp_variant(
            &esp,
            &d.join("sdboot.img"),
            &[("EFI/BOOT/BOOTX64.EFI", &tampered_sdboot)],
        ),
        esp_variant(
            &esp,
            &d.join("uki.img"),
            &[("EFI/Linux/labimg-a.efi", &tampered_cmdline)],
        ),
    ];
    let vars = KeySet::from_dir(&keys())
        .vars(d, SecureBoot::Enforcing)
        .unwrap();
    let mut vm = Vm::x86_64_secure_boot("secure-boot-refused", &vars).unwrap();
    for disk in &disks {
        vm = vm.fat_disk(disk);
    }
    let log = vm
        .boot(Some(SYSTEMD_BOOT_REFUSED), Duration::from_secs(180))
        .unwrap();
    let kept = log.keep();
    eprintln!(
        "firmware-only boot: {:.0?}, serial log kept at {}",
        log.elapsed,
        kept.display()
    );
    for (n, what) in [
        "changed root hash",
        "unsigned UKI",
        "UKI signed by another key set",
        "tampered systemd-boot",
    ]
    .iter()
    .enumerate()
    {
        let refused = log
            .lines_with(FIRMWARE_FAILED_TO_LOAD)
            .into_iter()
            .any(|l| l.contains(&fat_disk_path(n)) && l.ends_with(FIRMWARE_REFUSED));
        assert!(
            refused,
            "the firmware did not refuse the {what} (boot option {}, {}); serial log at {}",
            n + 1,
            fat_disk_path(n),
            kept.display()
        );
    }
    // The same boot started the genuine, signed systemd-boot (labimg's db key is
    // enrolled and accepted) which then could not load the tampered UKI.
    log.assert_in_order(&[
        &format!(
            "BdsDxe: starting Boot0005 \"UEFI Non-Block Boot Device 5\" from {}",
            fat_disk_path(4)
        ),
        &format!("{SYSTEMD_BOOT_LOAD_ERROR}\\EFI\\Linux\\labimg-a.efi{SYSTEMD_BOOT_REFUSED}"),
    ]);
    log.assert_absent("labimg: stage1 start");
}

/// The bundle a node downloads, copied from a build folder so that a test can
/// swap files: `upgrade.env`, `upgrade.json`, the signed sums and `netboot/`.
fn copy_bundle(out: &Path, dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst.join("netboot/uki")).unwrap();
    for f in [
        "upgrade.env",
        "upgrade.json",
        "SHA256SUMS",
        "SHA256SUMS.minisig",
        "netboot/vmlinuz",
        "netboot/initrd.img",
        "netboot/root.squashfs",
        "netboot/uki/labimg-a.efi",
        "netboot/uki/labimg-b.efi",
    ] {
        std::fs::copy(out.join(f), dst.join(f)).unwrap();
    }
}

/// Replaces the bundle's slot-B UKI by `bytes`, fixes its sha256 and size in
/// `upgrade.env` and signs the bundle again with the test key: a publisher's
/// bundle whose minisign signature is good but whose UKI is not signed by db.
fn swap_uki_b(bundle: &Path, bytes: &[u8]) {
    use sha2::Digest;
    let file = bundle.join("netboot/uki/labimg-b.efi");
    let old = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
    let old_len = std::fs::metadata(&file).unwrap().len();
    std::fs::write(&file, bytes).unwrap();
    let new = hex::encode(sha2::Sha256::digest(bytes));
    let meta = bundle.join("upgrade.env");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(text.contains(&old), "upgrade.env does not pin slot B's UKI");
    let text = text.replace(&old, &new).replace(
        &format!("LABIMG_BUNDLE_UKI_B_SIZE='{old_len}'"),
        &format!("LABIMG_BUNDLE_UKI_B_SIZE='{}'", bytes.len()),
    );
    std::fs::write(&meta, text).unwrap();
    // SHA256SUMS: the new lines for upgrade.env and the UKI, then signed again.
    let sums = bundle.join("SHA256SUMS");
    let hash = |f: &str| hex::encode(sha2::Sha256::digest(std::fs::read(bundle.join(f)).unwrap()));
    let text: String = std::fs::read_to_string(&sums)
        .unwrap()
        .lines()
        .map(|l| match l.split_once("  ") {
            Some((_, f @ ("upgrade.env" | "upgrade.json" | "netboot/uki/labimg-b.efi"))) => {
                format!("{}  {f}\n", hash(f))
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&sums, text).unwrap();
    let (key, _) = test_signing_key();
    let sk = labimg_builder::artifact::sign::load_secret_key_with(&key, None).unwrap();
    labimg_builder::artifact::sign::sign_sums(bundle, &sk).unwrap();
}

fn version_of(out: &Path) -> String {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("upgrade.json")).unwrap()).unwrap();
    j["version"].as_str().unwrap().to_owned()
}

/// Stage 2's `labimg: kernel ready …` milestone ends in `secureboot=on`: the
/// firmware's SecureBoot variable says it enforced signatures for this boot.
fn assert_secure_boot_on(log: &SerialLog) {
    let lines = log.lines_with("labimg: kernel ready ");
    if !lines.iter().any(|l| l.ends_with(" secureboot=on")) {
        let kept = log.keep();
        panic!(
            "{}: no 'labimg: kernel ready … secureboot=on' milestone: {lines:?}; serial log kept at {}",
            log.name,
            kept.display()
        );
    }
}

/// One Secure Boot machine: the v1 image behind a persistent overlay, its
/// enrolled variable store (kept across boots), and the bundle server.
struct Node {
    overlay: PathBuf,
    vars: PathBuf,
    port: u16,
    boots: u32,
    /// The machine's vTPM (swtpm state), the same for every boot unless swapped.
    tpm: TpmState,
    _scratch: tempfile::TempDir,
}

impl Node {
    fn boot(&mut self, mode: Option<&str>, stop_at: Option<&str>) -> SerialLog {
        self.boots += 1;
        let name = format!("secure-boot-upgrade-boot{}", self.boots);
        let mut vm = Vm::x86_64_secure_boot(&name, &self.vars)
            .unwrap()
            .tpm(&self.tpm)
            .unwrap()
            .scsi_existing_overlay(&self.overlay)
            .bundle_net(MAC, self.port);
        if let Some(mode) = mode {
            vm = vm.stand_in_mode(mode);
        }
        let log = vm.boot(stop_at, BOOT_TIMEOUT).unwrap();
        eprintln!("{name}: {:.0?}", log.elapsed);
        log
    }
}

#[test]
fn secure_boot_image_boots_enforcing_and_upgrades_only_to_signed_ukis() {
    let (v1, v2) = (v1(), v2());
    let scratch = tempfile::tempdir().unwrap();
    let overlay = scratch.path().join("disk.qcow2");
    qcow2_overlay(&v1.join("proxmox.qcow2"), "qcow2", &overlay, Some("4G")).unwrap();
    let vars = KeySet::from_dir(&keys())
        .vars(scratch.path(), SecureBoot::Enforcing)
        .unwrap();
    // The same keys with Secure Boot turned off, for the last boot.
    let vars_off = KeySet::from_dir(&keys())
        .vars(scratch.path(), SecureBoot::Disabled)
        .unwrap();
    let bundle = scratch.path().join("bundle");
    copy_bundle(&v2, &bundle);
    let signed_b = std::fs::read(bundle.join("netboot/uki/labimg-b.efi")).unwrap();
    swap_uki_b(&bundle, &strip_signature(&signed_b).unwrap());
    let mut node = Node {
        overlay,
        vars,
        port: serve_dir_http(bundle.clone()),
        boots: 0,
        tpm: TpmState::new().unwrap(),
        _scratch: scratch,
    };
    let v2_version = version_of(&v2);

    // Boot 1: enforcing, slot A; the bundle's UKI is unsigned: refused, and the
    // node carries on to k3s.
    let log = node.boot(None, None);
    log.assert_absent("labimg: FATAL");
    assert_secure_boot_on(&log);
    log.assert_in_order(&[
        "labimg: stage1 start",
        "labimg: upgrade signature verified",
        "labimg: upgrade refused: UKI netboot/uki/labimg-b.efi is not signed by this image's Secure Boot db key (",
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);
    log.assert_absent("labimg: upgrade started");
    assert!(log.powered_off, "boot 1 did not power off");
    // First boot: STATE made LUKS2, its key sealed to the vTPM under PCR 7.
    log.assert_in_order(&[
        "labimg: state sealed dev=/dev/sda4 luks=2 tpm=sealed pcrs=sha256:7",
        "labimg: state created dev=/dev/sda4",
        "labimg: state mounted dev=/dev/sda4 state=luks2 tpm=sealed",
    ]);
    log.assert_absent("labimg: state unlocked");
    let first_id = machine_id(&log);
    let first = log.assert_host_contract_without_dns();

    // Boot 2: the publisher's signed bundle: verified by sbverify, staged, reboot.
    copy_bundle(&v2, &bundle);
    let log = node.boot(None, None);
    log.assert_absent("labimg: FATAL");
    // (It reboots from `pull`, before stage 2 prints `kernel ready … secureboot=`.)
    log.assert_in_order(&[
        "labimg: upgrade uki verified file=netboot/uki/labimg-b.efi",
        &format!("labimg: upgrade started slot=b version={v2_version}"),
        "labimg: upgrade root written dev=",
        &format!(
            "labimg: upgrade staged slot=b version={v2_version} tries=3 uki=EFI/Linux/labimg-b+3.efi"
        ),
        "labimg: rebooting into slot b",
    ]);
    // The next boot unlocks STATE with no prompt; what boot 1 wrote is there.
    log.assert_in_order(&[
        "labimg: state unlocked dev=/dev/sda4 luks=2 tpm=unsealed pcrs=sha256:7",
        "labimg: state mounted dev=/dev/sda4 state=luks2 tpm=unsealed",
    ]);
    log.assert_absent("labimg: state created");
    assert_eq!(machine_id(&log), first_id, "boot 2 has another machine-id");

    // Boot 3: systemd-boot picks slot B's counted UKI (newer epoch); the node
    // knows the trial from LoaderBootCountPath and blesses it once Ready.
    let log = node.boot(Some("run"), Some("labimg: boot blessed"));
    log.assert_absent("labimg: FATAL");
    assert_secure_boot_on(&log);
    log.assert_in_order(&[
        "labimg: boot trial slot=b deadline=600s",
        &format!("labimg: upgrade check version={v2_version} up-to-date"),
        "labimg: boot trial waiting node=pve-sb-1 for=Ready",
        "labimg: boot blessed slot=b",
    ]);
    // The signed A/B upgrade kept PCR 7 (same db key): slot B unlocks STATE too.
    log.assert_in_order(&[
        "labimg: state unlocked dev=/dev/sda4 luks=2 tpm=unsealed pcrs=sha256:7",
        "labimg: state mounted dev=/dev/sda4 state=luks2 tpm=unsealed",
    ]);
    assert_eq!(machine_id(&log), first_id, "slot B has another machine-id");
    // k3s's node password survived the upgrade on sealed STATE.
    assert_node_identity_kept(&first, &log.assert_host_contract_without_dns());

    // On the disk: slot B's UKI lost its counter, slot A's is untouched.
    let dir = tempfile::tempdir().unwrap();
    let esp = RawDisk::from_image(&node.overlay, dir.path())
        .unwrap()
        .extract("ESP", &dir.path().join("esp.img"))
        .unwrap();
    let listing = run(std::process::Command::new("mdir")
        .args(["-b", "-i"])
        .arg(&esp)
        .arg("::/EFI/Linux"))
    .unwrap();
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    assert_eq!(names, ["labimg-a.efi", "labimg-b.efi"], "{listing}");

    // The same disk in a machine with another (fresh) vTPM: the sealed key does not
    // load; nothing is formatted.
    let own_tpm = std::mem::replace(&mut node.tpm, TpmState::new().unwrap());
    let log = node.boot(None, Some("labimg: FATAL"));
    log.assert_in_order(&[
        "labimg: FATAL: STATE's sealed key does not load into this TPM (",
        "the disk was sealed by another machine's TPM, or this TPM was cleared or replaced",
    ]);
    log.assert_absent("labimg: state mounted");
    log.keep();

    // The same disk and vTPM, the same keys enrolled but Secure Boot off.
    node.tpm = own_tpm;
    node.vars = vars_off;
    let log = node.boot(None, Some("labimg: FATAL"));
    log.assert_in_order(&[
        "labimg: FATAL: STATE is sealed to Secure Boot (PCR 7); Secure Boot is off: STATE stays locked",
    ]);
    log.assert_absent("labimg: state mounted");
    log.keep();
}

/// The machine-id a boot's `host layout ready` milestone shows.
fn machine_id(log: &SerialLog) -> String {
    log.lines_with("labimg: host layout ready machine-id=")
        .first()
        .and_then(|l| l.split('=').nth(1))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("{}: no host layout ready milestone", log.name))
}
