//! Secure Boot builds (`[secure-boot] enabled = true`), without QEMU: the proxmox
//! profile built twice with one key folder from `labimg secureboot keygen` gives
//! bit-for-bit identical outputs, and its ESP (read back from the qcow2 with
//! qemu-img and mtools) holds systemd-boot and slot A's Unified Kernel Image signed
//! with the db key (`sbverify --cert db.crt` passes; with another key set's
//! certificate it fails), the enrolment files, and no type 1 entries, kernels or
//! initramfs images. The UKI's sections (`objdump -h`) are the stub's plus `.osrel`,
//! `.cmdline`, `.uname`, `.initrd`, `.linux` with the right sizes, and its command
//! line carries the root hash. The bundle lists a signed UKI per slot; the root image
//! holds the db certificate; manifest and SBOM name the stub and the certificate.
//! A profile asking for Secure Boot without keys, or on the Pi, fails clearly.
//!
//! Uses the real Debian mirror through the verified download cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use labimg_builder::build::{BuildOptions, build};
use labimg_builder::manifest::Manifest;
use labimg_builder::tool::{require, run};
use labimg_builder::uki;
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn profile(extra: &[&str]) -> labimg_builder::profile::Profile {
    // A smaller disk than the shipped one (same layout), qcow2 only: the ESP is
    // what this test reads, and raw.xz of a disk is slow on two shared cores.
    let mut sets = vec![
        "disk.size=\"640MiB\"".to_owned(),
        "disk.root-slot-size=\"160MiB\"".to_owned(),
        "outputs.formats=[\"qcow2\"]".to_owned(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    labimg_builder::profile::load("proxmox", &workspace().join("profiles"), &sets).unwrap()
}

fn opts(out: &Path, keys: Option<&Path>) -> BuildOptions {
    BuildOptions {
        out_dir: Some(out.to_path_buf()),
        k3s_binary: Some(workspace().join("qemu-tests/stand-in/k3s")),
        cache_dir: std::env::var_os("LABIMG_CACHE").map(PathBuf::from),
        source_date_epoch: Some(1_700_000_000),
        secure_boot_keys: keys.map(Path::to_path_buf),
        ..Default::default()
    }
}

/// `sbverify --cert cert file`: whether the signature verifies.
fn sbverify(cert: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(require("sbverify").unwrap())
        .arg("--cert")
        .arg(cert)
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The byte offset of the first GPT partition (the ESP) of a raw disk image.
fn esp_offset(raw: &Path) -> u64 {
    let disk = std::fs::read(raw).unwrap();
    assert_eq!(&disk[512..520], b"EFI PART", "no GPT header at LBA 1");
    let entries_lba = u64::from_le_bytes(disk[512 + 72..512 + 80].try_into().unwrap());
    let e = (entries_lba * 512) as usize;
    u64::from_le_bytes(disk[e + 32..e + 40].try_into().unwrap()) * 512
}

/// The ESP's file `path` (mcopy), or `None` when mtools cannot find it.
fn esp_file(raw: &Path, offset: u64, path: &str) -> Option<Vec<u8>> {
    let out = Command::new(require("mcopy").unwrap())
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{offset}", raw.display()))
        .arg(format!("::/{path}"))
        .arg("-")
        .output()
        .unwrap();
    out.status.success().then_some(out.stdout)
}

/// `mdir -/ -b` of the whole ESP: every path, one a line.
fn esp_listing(raw: &Path, offset: u64) -> String {
    let out = run(Command::new(require("mdir").unwrap())
        .args(["-/", "-b", "-i"])
        .arg(format!("{}@@{offset}", raw.display()))
        .arg("::/"))
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `objdump -h`'s sections as (name, size).
fn objdump_sections(file: &Path) -> Vec<(String, u64)> {
    let out = run(Command::new(require("objdump").unwrap())
        .arg("-h")
        .arg(file))
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 7 && w[0].parse::<u32>().is_ok())
                .then(|| (w[1].to_owned(), u64::from_str_radix(w[2], 16).unwrap()))
        })
        .collect()
}

fn keygen(dir: &Path, name: &str) {
    labimg_builder::secureboot::keygen(dir, name, 1_700_000_000).unwrap();
}

#[test]
fn a_secure_boot_build_signs_systemd_boot_and_the_ukis_and_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let (keys, other) = (tmp.path().join("keys"), tmp.path().join("other"));
    keygen(&keys, "labimg-test");
    keygen(&other, "someone-else");
    let p = profile(&["secure-boot.enabled=true"]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&p, &opts(&a, Some(&keys))).unwrap();
    build(&p, &opts(&b, Some(&keys))).unwrap();

    // Reproducible for the same keys: every listed file, the manifest included.
    let sums = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        std::fs::read_to_string(b.join("SHA256SUMS")).unwrap(),
        "two Secure Boot builds differ"
    );
    for want in [
        "netboot/uki/labimg-a.efi",
        "netboot/uki/labimg-b.efi",
        "proxmox.qcow2",
        "upgrade.env",
    ] {
        assert!(
            sums.lines().any(|l| l.ends_with(&format!("  {want}"))),
            "{want} not in SHA256SUMS:\n{sums}"
        );
    }

    // The ESP, from the qcow2.
    let raw = tmp.path().join("esp.raw");
    run(Command::new(require("qemu-img").unwrap())
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(a.join("proxmox.qcow2"))
        .arg(&raw))
    .unwrap();
    let off = esp_offset(&raw);
    let listing = esp_listing(&raw, off);
    let esp = tmp.path().join("esp");
    std::fs::create_dir_all(&esp).unwrap();
    for f in [
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/systemd/systemd-bootx64.efi",
        "EFI/Linux/labimg-a.efi",
        "loader/loader.conf",
        "loader/keys/auto/PK.auth",
        "loader/keys/auto/KEK.auth",
        "loader/keys/auto/db.auth",
    ] {
        let data = esp_file(&raw, off, f).unwrap_or_else(|| panic!("ESP has no {f}:\n{listing}"));
        let local = esp.join(f.replace('/', "_"));
        std::fs::write(&local, data).unwrap();
    }
    for absent in ["loader/entries", "labimg/a/vmlinuz", "labimg/a/initrd.img"] {
        assert!(
            esp_file(&raw, off, absent).is_none() && !listing.contains(absent),
            "a Secure Boot ESP must not have {absent}:\n{listing}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(esp.join("loader_loader.conf")).unwrap(),
        "default labimg-*\ntimeout 0\neditor no\nconsole-mode keep\nsecure-boot-enroll if-safe\n"
    );
    for var in ["PK", "KEK", "db"] {
        assert_eq!(
            std::fs::read(esp.join(format!("loader_keys_auto_{var}.auth"))).unwrap(),
            std::fs::read(keys.join(format!("{var}.auth"))).unwrap(),
            "{var}.auth on the ESP is not the key folder's"
        );
    }

    // Signed with db: sbverify (the oracle) accepts them with db.crt, not with another cert.
    let signed = [
        esp.join("EFI_BOOT_BOOTX64.EFI"),
        esp.join("EFI_systemd_systemd-bootx64.efi"),
        esp.join("EFI_Linux_labimg-a.efi"),
        a.join("netboot/uki/labimg-a.efi"),
        a.join("netboot/uki/labimg-b.efi"),
    ];
    for f in &signed {
        let (ok, text) = sbverify(&keys.join("db.crt"), f);
        assert!(ok, "sbverify --cert db.crt {}: {text}", f.display());
        let (ok, text) = sbverify(&other.join("db.crt"), f);
        assert!(
            !ok,
            "sbverify accepted {} with another key set's db.crt: {text}",
            f.display()
        );
    }
    // The ESP's UKI is the bundle's slot A UKI.
    assert_eq!(
        std::fs::read(esp.join("EFI_Linux_labimg-a.efi")).unwrap(),
        std::fs::read(a.join("netboot/uki/labimg-a.efi")).unwrap()
    );

    // The UKI's sections: objdump reads what labimg wrote.
    let manifest = Manifest::read(&a).unwrap();
    let uki_path = a.join("netboot/uki/labimg-a.efi");
    let uki_bytes = std::fs::read(&uki_path).unwrap();
    let kernel = std::fs::read(a.join("netboot/vmlinuz")).unwrap();
    let initrd = std::fs::read(a.join("netboot/initrd.img")).unwrap();
    let cmdline = std::str::from_utf8(uki::section_data(&uki_bytes, ".cmdline").unwrap().unwrap())
        .unwrap()
        .to_owned();
    let osrel = std::str::from_utf8(uki::section_data(&uki_bytes, ".osrel").unwrap().unwrap())
        .unwrap()
        .to_owned();
    let sections = objdump_sections(&uki_path);
    let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == ".sbat").count(),
        1,
        "one .sbat (the stub's): {names:?}"
    );
    let tail = &names[names.len() - 5..];
    assert_eq!(
        tail,
        [".osrel", ".cmdline", ".uname", ".initrd", ".linux"],
        "{names:?}"
    );
    let size = |n: &str| sections.iter().find(|(s, _)| s == n).unwrap().1;
    assert_eq!(size(".linux"), kernel.len() as u64);
    assert_eq!(size(".initrd"), initrd.len() as u64);
    assert_eq!(size(".cmdline"), cmdline.len() as u64);
    assert_eq!(size(".uname"), manifest.kernel_version.len() as u64);
    assert_eq!(
        uki::section_data(&uki_bytes, ".linux").unwrap().unwrap(),
        &kernel[..]
    );
    assert_eq!(
        uki::section_data(&uki_bytes, ".initrd").unwrap().unwrap(),
        &initrd[..]
    );
    assert_eq!(cmdline, manifest.cmdline["a"]);
    assert!(
        cmdline.contains(&format!(
            "labimg.verity.roothash={}",
            manifest.root_verity.root_hash
        )),
        "{cmdline}"
    );
    assert!(cmdline.contains("labimg.slot=a"), "{cmdline}");
    let version = uki::image_version(1_700_000_000, &manifest.root_image.sha256);
    assert!(osrel.contains("\nIMAGE_ID=labimg\n"), "{osrel}");
    assert!(
        osrel.contains(&format!("\nIMAGE_VERSION={version}\n")),
        "{osrel}"
    );
    let uki_b = std::fs::read(a.join("netboot/uki/labimg-b.efi")).unwrap();
    let cmdline_b =
        std::str::from_utf8(uki::section_data(&uki_b, ".cmdline").unwrap().unwrap()).unwrap();
    assert_eq!(cmdline_b, manifest.cmdline["b"]);

    // The bundle names both UKIs with their sha256 and size.
    let env = std::fs::read_to_string(a.join("upgrade.env")).unwrap();
    for slot in ["A", "B"] {
        let f = format!("netboot/uki/labimg-{}.efi", slot.to_lowercase());
        let (sha, size) = labimg_builder::artifact::hash_file(&a.join(&f)).unwrap();
        for line in [
            format!("LABIMG_BUNDLE_UKI_{slot}_FILE='{f}'"),
            format!("LABIMG_BUNDLE_UKI_{slot}_SHA256='{sha}'"),
            format!("LABIMG_BUNDLE_UKI_{slot}_SIZE='{size}'"),
        ] {
            assert!(env.lines().any(|l| l == line), "{line} not in:\n{env}");
        }
    }

    // Manifest and SBOM: the stub and the signing certificate.
    let sb = manifest.secure_boot.as_ref().expect("manifest secure-boot");
    assert_eq!(sb.stub.package, "systemd-boot-efi");
    assert_eq!(sb.stub.path, uki::STUB);
    let boot = manifest.inputs.boot.get("systemd-boot-efi").unwrap();
    assert_eq!(sb.stub.version, boot.version);
    let der = std::fs::read(keys.join("db.cer")).unwrap();
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&der))
    };
    assert_eq!(sb.signing_cert_sha256, fingerprint);
    assert!(
        sb.signing_cert_subject.contains("labimg-test"),
        "{}",
        sb.signing_cert_subject
    );
    let sbom: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("proxmox.spdx.json")).unwrap())
            .unwrap();
    let pkgs = sbom["packages"].as_array().unwrap();
    let by_id = |id: &str| pkgs.iter().find(|p| p["SPDXID"] == id).unwrap();
    assert_eq!(
        by_id("SPDXRef-efi-stub")["checksums"][0]["checksumValue"],
        sb.stub.sha256
    );
    assert_eq!(
        by_id("SPDXRef-secure-boot-db-cert")["checksums"][0]["checksumValue"],
        fingerprint
    );
    assert!(
        manifest.inputs.root.get("sbsigntool").is_some(),
        "the image lacks sbsigntool"
    );
    // Stage 1 reads LoaderBootCountPath (a trial boot reboots on a FATAL) from efivarfs.
    assert!(
        manifest.initramfs_modules.iter().any(|m| m == "efivarfs"),
        "the initramfs cannot mount efivarfs: {:?}",
        manifest.initramfs_modules
    );

    // The root image holds the public db certificate and says Secure Boot is on.
    let cat = |path: &str| {
        let out = run(Command::new(require("unsquashfs").unwrap())
            .arg("-cat")
            .arg(a.join("netboot/root.squashfs"))
            .arg(path))
        .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        cat("usr/lib/labimg/secureboot/db.crt"),
        std::fs::read_to_string(keys.join("db.crt")).unwrap()
    );
    let release = cat("usr/lib/labimg/release");
    assert!(release.contains("\nSECURE_BOOT=1\n"), "{release}");
    assert!(!release.contains("TPM_SEAL_STATE"), "{release}");

    // No private key anywhere in the outputs (the disk's ESP included).
    let key_pem = std::fs::read_to_string(keys.join("db.key")).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap().as_bytes().to_vec();
    let mut small: Vec<PathBuf> = sums
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(_, f)| a.join(f))
        .filter(|p| !p.ends_with("proxmox.qcow2") && !p.ends_with("root.squashfs"))
        .collect();
    small.extend(std::fs::read_dir(&esp).unwrap().map(|e| e.unwrap().path()));
    for f in small {
        let data = std::fs::read(&f).unwrap();
        assert!(
            !data.windows(11).any(|w| w == b"PRIVATE KEY")
                && !data.windows(key_line.len()).any(|w| w == key_line),
            "{} holds private key material",
            f.display()
        );
    }
}

#[test]
fn secure_boot_without_keys_fails_before_building_and_says_how_to_make_them() {
    let tmp = tempfile::tempdir().unwrap();
    let p = profile(&["secure-boot.enabled=true"]);
    let err = format!(
        "{:#}",
        build(&p, &opts(&tmp.path().join("o"), None)).unwrap_err()
    );
    assert!(
        err.contains("labimg secureboot keygen DIR") && err.contains("--secure-boot-keys"),
        "{err}"
    );
    assert!(!tmp.path().join("o").exists());
    // A folder without db.key is refused too, naming it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = format!(
        "{:#}",
        build(&p, &opts(&tmp.path().join("o"), Some(&empty))).unwrap_err()
    );
    assert!(err.contains(&empty.display().to_string()), "{err}");
}

#[test]
fn secure_boot_is_refused_on_the_pi_and_sealing_needs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let pi = tmp.path().join("pi-sb.toml");
    std::fs::write(
        &pi,
        format!(
            "extends = \"{}\"\nname = \"pi-sb\"\n\n[secure-boot]\nenabled = true\n",
            workspace().join("profiles/pi5.toml").display()
        ),
    )
    .unwrap();
    let err = labimg_builder::profile::load(pi.to_str().unwrap(), tmp.path(), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:5:", pi.display()))
            && err.contains("secure-boot.enabled")
            && err.contains("proxmox"),
        "{err}"
    );
    let px = tmp.path().join("px-seal.toml");
    std::fs::write(
        &px,
        format!(
            "extends = \"{}\"\nname = \"px-seal\"\n\n[secure-boot]\ntpm-seal-state = true\n",
            workspace().join("profiles/proxmox.toml").display()
        ),
    )
    .unwrap();
    let err = labimg_builder::profile::load(px.to_str().unwrap(), tmp.path(), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:5:", px.display()))
            && err.contains("secure-boot.tpm-seal-state")
            && err.contains("secure-boot.enabled = true"),
        "{err}"
    );
    // Both keys on proxmox: valid, and the image says so.
    let ok = profile(&[
        "secure-boot.enabled=true",
        "secure-boot.tpm-seal-state=true",
    ]);
    assert!(ok.secure_boot.enabled && ok.secure_boot.tpm_seal_state);
    let release = labimg_builder::rootfs::release_text(&ok, 7);
    assert_eq!(
        release,
        "PROFILE=proxmox\nSOURCE_DATE_EPOCH=7\nSECURE_BOOT=1\nTPM_SEAL_STATE=1\n"
    );
}
