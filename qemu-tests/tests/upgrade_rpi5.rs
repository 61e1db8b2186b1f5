//! A/B upgrade of the Raspberry Pi 5 image on QEMU's aarch64 `virt` machine
//! (TCG), with the k3s stand-in. One qcow2 overlay of the v1 disk persists
//! across boots, like the Pi's SD card.
//!
//! Boot 1 runs v1 from slot A (kernel, initramfs and `cmdline.txt` of the
//! build's `netboot/rpi/`, the same files as on boot-a); stage 2 pulls
//! `labimg.upgrade=http://10.0.2.100`, which QEMU's user network forwards
//! (bash `/dev/tcp` relay per connection) to an HTTP server in this test
//! serving v2's output folder. Booting slot A again (what the firmware does
//! on a reset without the tryboot flag) keeps v1 and does not stage v2 again.
//! The test then reads the disk from the host:
//! boot-b holds v2's boot files and a `cmdline.txt` for root-b, root-b holds
//! v2's root image, `autoboot.txt` is untouched. Boot 2 plays the firmware's
//! `tryboot` (which QEMU cannot emulate): v2's kernel, initramfs and
//! `cmdline.txt` are taken from boot-b on the disk; the trial boot must start
//! k3s, be reported Ready (the stand-in runs, `Vm::stand_in_mode("run")`, and
//! answers the agent's readiness question) and commit slot B in `autoboot.txt`. A second test serves a root image
//! that does not match its sha256: the agent refuses it and leaves boot-b
//! empty, so no tryboot could start the half-written slot.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use labimg_qemu_tests::{
    RawDisk, SerialLog, Vm, build_once, mcopy, pi5_cmdline_on_virt, qcow2_overlay, run,
    serve_dir_http,
};

const MAC: &str = "52:54:00:12:34:58";
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// What the agent appends to a trial slot's command line (and removes when
/// it blesses the slot).
const TRIAL_ARGS: &str = " labimg.trial=1 labimg.on-fatal=reboot";

/// The shipped pi5 profile, one node keyed by the VM's MAC, pointed at the
/// test's bundle server; `version` becomes a node label so v1 and v2 differ
/// in their root image.
fn profile(version: &str) -> String {
    format!(
        r#"
extends = "pi5.toml"

[kernel]
cmdline = ["labimg.upgrade=http://10.0.2.100"]

[[nodes]]
hostname = "pi-up-1"
mac = "{MAC}"
role = "server"
dhcp-reservation = true
labels = {{ "labimg.test/version" = "{version}" }}

[outputs]
formats = ["qcow2"]
"#
    )
}

fn upgrade_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("upgrade.json")).unwrap()).unwrap()
}

/// Boots `overlay` (kept across boots) with a direct kernel and the bundle
/// server reachable as 10.0.2.100, until QEMU exits.
fn boot(
    name: &str,
    overlay: &Path,
    port: u16,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> SerialLog {
    boot_with(name, overlay, port, (kernel, initrd, cmdline), None, None)
}

/// [`boot`] with the stand-in in `mode`, until QEMU exits or `stop_at` appears.
fn boot_with(
    name: &str,
    overlay: &Path,
    port: u16,
    (kernel, initrd, cmdline): (&Path, &Path, &str),
    mode: Option<&str>,
    stop_at: Option<&str>,
) -> SerialLog {
    let append = pi5_cmdline_on_virt(cmdline);
    let drive = format!("file={},if=none,id=hd0,format=qcow2", overlay.display());
    let mut vm = Vm::aarch64_virt(name)
        .unwrap()
        .direct_kernel(kernel, initrd, &append)
        .extra_args(&["-drive", &drive, "-device", "virtio-blk-pci,drive=hd0"])
        .bundle_net(MAC, port);
    if let Some(mode) = mode {
        vm = vm.stand_in_mode(mode);
    }
    let log = vm.boot(stop_at, BOOT_TIMEOUT).unwrap();
    eprintln!("{name}: {:.0?}", log.elapsed);
    log
}

fn sha256_prefix(path: &Path, bytes: u64) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap().take(bytes);
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

#[test]
fn upgrade_rpi5_stages_slot_b_and_a_tryboot_of_it_blesses_it() {
    let started = Instant::now();
    let v1 = build_once("upgrade-pi-v1", &profile("v1")).expect("building v1");
    let v2 = build_once("upgrade-pi-v2", &profile("v2")).expect("building v2");
    eprintln!("builds: {:.0?}", started.elapsed());
    let meta = upgrade_json(&v2);
    let v2_version = meta["version"].as_str().unwrap().to_owned();
    assert_ne!(upgrade_json(&v1)["version"], meta["version"]);

    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let overlay = dir.join("disk.qcow2");
    qcow2_overlay(&v1.join("pi5.qcow2"), "qcow2", &overlay, None).unwrap();
    let port = serve_dir_http(v2.clone());

    // Boot 1: v1 from slot A (netboot/rpi/ is boot-a's content) stages v2 into slot B.
    let rpi1 = v1.join("netboot/rpi");
    let cmdline1 = std::fs::read_to_string(rpi1.join("cmdline.txt")).unwrap();
    assert!(cmdline1.contains("labimg.slot=a"), "{cmdline1}");
    let log = boot(
        "upgrade-rpi5-boot1",
        &overlay,
        port,
        &rpi1.join("kernel_2712.img"),
        &rpi1.join("initramfs.img"),
        &cmdline1,
    );
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: upgrade refused");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/vda4",
        "labimg: state created",
        "labimg: network up",
        &format!("labimg: upgrade started slot=b version={v2_version}"),
        "labimg: upgrade root written dev=/dev/vda5",
        &format!("labimg: upgrade staged slot=b version={v2_version} boot_partition=3"),
        "labimg: WARNING: upgrade staged but not tried",
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);

    // A reset without the tryboot flag (or a failed trial) boots the committed
    // slot A again: it runs v1 and does not download the staged version again.
    let log = boot(
        "upgrade-rpi5-boot1b",
        &overlay,
        port,
        &rpi1.join("kernel_2712.img"),
        &rpi1.join("initramfs.img"),
        &cmdline1,
    );
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: upgrade started");
    log.assert_absent("labimg: boot trial");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/vda4",
        "labimg: state mounted dev=/dev/vda6",
        &format!("labimg: upgrade skipped version={v2_version} reason=staged-not-tried"),
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);

    // The disk as the firmware would find it.
    let t = Instant::now();
    let disk = RawDisk::from_image(&overlay, dir).unwrap();
    let names: Vec<&str> = disk.parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        ["autoboot", "boot-a", "boot-b", "root-a", "root-b", "STATE"]
    );
    let autoboot = disk.extract("autoboot", &dir.join("autoboot.img")).unwrap();
    assert_eq!(
        std::fs::read_to_string(mcopy(&autoboot, "autoboot.txt", dir).unwrap()).unwrap(),
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n",
        "staging must not touch autoboot.txt"
    );
    let boot_b = disk.extract("boot-b", &dir.join("boot-b.img")).unwrap();
    let rpi2 = v2.join("netboot/rpi");
    let listed = meta["rpi_boot"]
        .as_object()
        .expect("rpi_boot in upgrade.json");
    for f in [
        "config.txt",
        "kernel_2712.img",
        "initramfs.img",
        "bcm2712-rpi-5-b.dtb",
    ] {
        assert!(listed.contains_key(f), "{f} not in rpi_boot: {listed:?}");
    }
    // What the agent read: upgrade.env's `path sha256 …` list, the same files.
    let env = std::fs::read_to_string(v2.join("upgrade.env")).unwrap();
    let words: Vec<String> = listed
        .iter()
        .flat_map(|(f, h)| [f.clone(), h.as_str().unwrap().to_owned()])
        .collect();
    let want = format!("LABIMG_BUNDLE_RPI_FILES='{}'", words.join(" "));
    assert!(env.lines().any(|l| l == want), "{want} not in {env}");
    for f in listed.keys() {
        let got = std::fs::read(mcopy(&boot_b, f, dir).unwrap()).unwrap();
        assert!(
            got == std::fs::read(rpi2.join(f)).unwrap(),
            "boot-b/{f} differs from v2's"
        );
    }
    let cmdline_b = std::fs::read_to_string(mcopy(&boot_b, "cmdline.txt", dir).unwrap()).unwrap();
    assert_eq!(
        cmdline_b,
        format!("{}{TRIAL_ARGS}\n", meta["cmdline"]["b"].as_str().unwrap())
    );
    assert!(
        cmdline_b.contains("labimg.root=PARTLABEL=root-b"),
        "{cmdline_b}"
    );
    let root_b = disk.extract("root-b", &dir.join("root-b.img")).unwrap();
    assert_eq!(
        sha256_prefix(&root_b, meta["root"]["size"].as_u64().unwrap()),
        meta["root"]["sha256"].as_str().unwrap()
    );
    let kernel = mcopy(&boot_b, "kernel_2712.img", dir).unwrap();
    let initrd = mcopy(&boot_b, "initramfs.img", dir).unwrap();
    for p in [&autoboot, &boot_b, &root_b, &disk.raw] {
        std::fs::remove_file(p).unwrap();
    }
    eprintln!("disk checks: {:.0?}", t.elapsed());

    // Boot 2: what the firmware does after `reboot "0 tryboot"`: boot partition 3.
    // The stand-in keeps running and reports the node Ready; the boot ends once
    // the slot is blessed (bless syncs its writes before it says so).
    let log = boot_with(
        "upgrade-rpi5-boot2",
        &overlay,
        port,
        (&kernel, &initrd, &cmdline_b),
        Some("run"),
        Some("labimg: boot blessed"),
    );
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: state created");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/vda5",
        "labimg: root verified",
        "labimg: boot trial slot=b deadline=600s",
        "labimg: state mounted dev=/dev/vda6",
        &format!("labimg: upgrade check version={v2_version} up-to-date"),
        "labimg: k3s starting role=server",
        "labimg: boot trial waiting node=pi-up-1 for=Ready",
        "labimg: boot blessed slot=b boot_partition=3 ready-s=",
    ]);
    log.assert_host_contract_without_dns();
    let config = log.lines_with("k3s-stand-in: config| ");
    assert!(
        config
            .iter()
            .any(|l| l.ends_with("- labimg.test/version=v2")),
        "slot B does not run v2's config: {config:#?}; log: {}",
        log.keep().display()
    );

    // Committed: slot B is the default, slot A the tryboot one; no trial arguments.
    let disk = RawDisk::from_image(&overlay, dir).unwrap();
    let autoboot = disk.extract("autoboot", &dir.join("autoboot.img")).unwrap();
    assert_eq!(
        std::fs::read_to_string(mcopy(&autoboot, "autoboot.txt", dir).unwrap()).unwrap(),
        "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n"
    );
    let boot_b = disk.extract("boot-b", &dir.join("boot-b.img")).unwrap();
    assert_eq!(
        std::fs::read_to_string(mcopy(&boot_b, "cmdline.txt", dir).unwrap()).unwrap(),
        format!("{}\n", meta["cmdline"]["b"].as_str().unwrap())
    );
    run(Command::new("fsck.vfat").arg("-n").arg(&autoboot)).unwrap();
    run(Command::new("fsck.vfat").arg("-n").arg(&boot_b)).unwrap();
    eprintln!("rpi5 upgrade: {:.0?} in all", started.elapsed());
}

#[test]
fn upgrade_rpi5_refuses_a_corrupt_root_and_leaves_boot_b_unbootable() {
    let v1 = build_once("upgrade-pi-v1", &profile("v1")).expect("building v1");
    let v2 = build_once("upgrade-pi-v2", &profile("v2")).expect("building v2");
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    // v2's bundle with one byte of the root image flipped after it was hashed.
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("netboot/rpi")).unwrap();
    for f in ["upgrade.json", "upgrade.env"] {
        std::fs::copy(v2.join(f), bundle.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(v2.join("netboot/rpi")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            bundle.join("netboot/rpi").join(entry.file_name()),
        )
        .unwrap();
    }
    let mut root = std::fs::read(v2.join("netboot/root.squashfs")).unwrap();
    let mid = root.len() / 2;
    root[mid] ^= 0xff;
    std::fs::write(bundle.join("netboot/root.squashfs"), root).unwrap();

    let overlay = dir.join("disk.qcow2");
    qcow2_overlay(&v1.join("pi5.qcow2"), "qcow2", &overlay, None).unwrap();
    let rpi1 = v1.join("netboot/rpi");
    let log = boot(
        "upgrade-rpi5-corrupt",
        &overlay,
        serve_dir_http(bundle),
        &rpi1.join("kernel_2712.img"),
        &rpi1.join("initramfs.img"),
        &std::fs::read_to_string(rpi1.join("cmdline.txt")).unwrap(),
    );
    log.assert_absent("labimg: FATAL");
    log.assert_absent("labimg: upgrade staged");
    log.assert_in_order(&[
        "labimg: root found dev=/dev/vda4",
        "labimg: upgrade started slot=b",
        "labimg: upgrade refused: root image written to /dev/vda5 has sha256",
        // The running system carries on.
        "labimg: k3s starting role=server",
        "k3s-stand-in: done, powering off",
    ]);

    // boot-b has no config.txt (a tryboot would not start a half-written slot),
    // and autoboot.txt is as built.
    let disk = RawDisk::from_image(&overlay, dir).unwrap();
    let boot_b = disk.extract("boot-b", &dir.join("boot-b.img")).unwrap();
    let listing = run(Command::new("mdir")
        .args(["-b", "-i"])
        .arg(&boot_b)
        .arg("::/"))
    .unwrap();
    assert!(listing.trim().is_empty(), "boot-b is not empty: {listing}");
    let autoboot = disk.extract("autoboot", &dir.join("autoboot.img")).unwrap();
    assert_eq!(
        std::fs::read_to_string(mcopy(&autoboot, "autoboot.txt", dir).unwrap()).unwrap(),
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    );
}
