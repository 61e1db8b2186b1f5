//! Signing a build folder's SHA256SUMS with minisign and verifying it: an intact
//! folder passes; a changed file, an edited SHA256SUMS, another key's signature and a
//! missing signature are each refused with the reason. The folder is small and made
//! here (signing does not care what the files are); its SHA256SUMS is written the
//! way the build writes it.

use std::path::{Path, PathBuf};

use labimg_builder::artifact::sign::{self, KeyProtection, VerifyError};
use labimg_builder::manifest::{K3sInfo, Manifest, ManifestInputs, OutputFile, hash_outputs};

/// A build-shaped folder: disk image, netboot artifacts, a Pi boot file, private
/// node config (not listed), SHA256SUMS and a manifest.
fn build_folder(root: &Path) -> PathBuf {
    let dir = root.join("proxmox");
    for (path, data) in [
        ("proxmox.qcow2", vec![7u8; 70_000]),
        ("netboot/vmlinuz", b"kernel bytes".repeat(1000)),
        ("netboot/root.squashfs", vec![3u8; 4096]),
        ("netboot/rpi/config.txt", b"arm_64bit=1\n".to_vec()),
        ("nodes/cp1/node.env", b"K3S_TOKEN=secret\n".to_vec()),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let sums: String = hash_outputs(&dir)
        .unwrap()
        .iter()
        .map(|o| format!("{}  {}\n", o.sha256, o.path))
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest()).unwrap(),
    )
    .unwrap();
    dir
}

/// A manifest as `labimg inspect` reads it (through the type the build writes).
fn manifest() -> Manifest {
    let none = || labimg_builder::debian::Resolution {
        arch: "amd64".into(),
        packages: Vec::new(),
    };
    Manifest {
        labimg_version: "0.1.0".into(),
        profile: "proxmox".into(),
        board: "proxmox".into(),
        arch: "amd64".into(),
        source_date_epoch: 1_700_000_000,
        epoch_source: "SOURCE_DATE_EPOCH".into(),
        kernel_version: "6.12.0-0-cloud-amd64".into(),
        cmdline: [("a".to_owned(), "console=ttyS0".to_owned())].into(),
        initramfs_modules: Vec::new(),
        root_modules: None,
        root_image: OutputFile {
            path: "netboot/root.squashfs".into(),
            size: 4096,
            sha256: "00".repeat(32),
        },
        root_verity: labimg_builder::verity::Verity {
            root_hash: "11".repeat(32),
            salt: "22".repeat(32),
            uuid: "00000000-0000-4000-8000-000000000000".into(),
            data_blocks: 1,
            hash_offset: 4096,
        },
        k3s: K3sInfo {
            version: "v1.36.4+k3s1".into(),
            pinned_sha256: None,
            source: "first-boot".into(),
            baked_sha256: None,
            matches_pin: None,
        },
        nodes: Vec::new(),
        releases: Vec::new(),
        inputs: ManifestInputs {
            kernel: none(),
            root: none(),
            boot: none(),
        },
        outputs: Vec::new(),
        secure_boot: None,
    }
}

fn keys(root: &Path, name: &str) -> sign::KeyFiles {
    sign::generate_keypair(&root.join(name), KeyProtection::None).unwrap()
}

#[test]
fn intact_signed_folder_verifies() {
    let t = tempfile::tempdir().unwrap();
    let dir = build_folder(t.path());
    let k = keys(t.path(), "keys");
    let sig = sign::sign_dir(&dir, &k.secret).unwrap();
    assert_eq!(sig, dir.join("SHA256SUMS.minisig"));
    let pk = sign::load_public_key(&k.public).unwrap();
    let files = sign::verify_dir(&dir, &pk).unwrap();
    let names: Vec<_> = files.iter().map(|f| f.file.as_str()).collect();
    assert_eq!(
        names,
        [
            "netboot/root.squashfs",
            "netboot/rpi/config.txt",
            "netboot/vmlinuz",
            "proxmox.qcow2"
        ],
        "every public output is covered, the private nodes/ folder is not"
    );
    assert_eq!(files[3].size, 70_000);
    // The secret key is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&k.secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // `labimg inspect --public-key` passes on the intact folder.
    labimg_builder::cli::inspect(&dir, Some(&k.public)).unwrap();
}

#[test]
fn modified_file_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let dir = build_folder(t.path());
    let k = keys(t.path(), "keys");
    sign::sign_dir(&dir, &k.secret).unwrap();
    let pk = sign::load_public_key(&k.public).unwrap();
    let mut kernel = std::fs::read(dir.join("netboot/vmlinuz")).unwrap();
    kernel[5] ^= 1;
    std::fs::write(dir.join("netboot/vmlinuz"), kernel).unwrap();
    std::fs::remove_file(dir.join("proxmox.qcow2")).unwrap();
    // The signature itself is still good: only the files are wrong.
    sign::verify_signature(&dir, &pk).unwrap();
    match sign::verify_dir(&dir, &pk) {
        Err(VerifyError::Files(problems)) => {
            let names: Vec<_> = problems.iter().map(|p| p.file.as_str()).collect();
            assert_eq!(names, ["netboot/vmlinuz", "proxmox.qcow2"]);
            assert!(problems[0].problem.contains("signed"), "{problems:?}");
        }
        other => panic!("expected a file mismatch, got {other:?}"),
    }
    let err = format!(
        "{:#}",
        labimg_builder::cli::inspect(&dir, Some(&k.public)).unwrap_err()
    );
    assert!(err.contains("netboot/vmlinuz"), "{err}");
}

#[test]
fn edited_sha256sums_breaks_the_signature() {
    let t = tempfile::tempdir().unwrap();
    let dir = build_folder(t.path());
    let k = keys(t.path(), "keys");
    sign::sign_dir(&dir, &k.secret).unwrap();
    let pk = sign::load_public_key(&k.public).unwrap();
    // The attacker swaps the kernel and updates SHA256SUMS to match it.
    std::fs::write(dir.join("netboot/vmlinuz"), b"evil kernel").unwrap();
    let sums: String = hash_outputs(&dir)
        .unwrap()
        .iter()
        .map(|o| format!("{}  {}\n", o.sha256, o.path))
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    let err = sign::verify_dir(&dir, &pk).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("verification failed"), "{err}");
    assert!(labimg_builder::cli::inspect(&dir, Some(&k.public)).is_err());
    // Without a key, inspect still only checks SHA256SUMS, which now matches: that is
    // exactly why a signature is needed.
    labimg_builder::cli::inspect(&dir, None).unwrap();
}

#[test]
fn signature_by_another_key_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = build_folder(t.path());
    let ours = keys(t.path(), "ours");
    let theirs = keys(t.path(), "theirs");
    sign::sign_dir(&dir, &theirs.secret).unwrap();
    let pk = sign::load_public_key(&ours.public).unwrap();
    let err = sign::verify_dir(&dir, &pk).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("made by key {}", theirs.id)),
        "the error names the key that signed: {err}"
    );
}

#[test]
fn missing_signature_is_refused_when_a_key_is_required() {
    let t = tempfile::tempdir().unwrap();
    let dir = build_folder(t.path());
    let k = keys(t.path(), "keys");
    let pk = sign::load_public_key(&k.public).unwrap();
    let err = sign::verify_dir(&dir, &pk).unwrap_err();
    assert!(matches!(err, VerifyError::MissingSignature(_)), "{err}");
    let err = format!(
        "{:#}",
        labimg_builder::cli::inspect(&dir, Some(&k.public)).unwrap_err()
    );
    assert!(err.contains("SHA256SUMS.minisig is missing"), "{err}");
}

#[test]
fn encrypted_key_needs_its_password() {
    let t = tempfile::tempdir().unwrap();
    let dir = build_folder(t.path());
    let k = sign::generate_keypair(
        &t.path().join("keys"),
        KeyProtection::Password("correct horse".into()),
    )
    .unwrap();
    let err = sign::load_secret_key_with(&k.secret, Some("wrong".into())).unwrap_err();
    assert!(format!("{err:#}").contains("Wrong password"), "{err:#}");
    let sk = sign::load_secret_key_with(&k.secret, Some("correct horse".into())).unwrap();
    sign::sign_sums(&dir, &sk).unwrap();
    let pk = sign::load_public_key(&k.public).unwrap();
    sign::verify_dir(&dir, &pk).unwrap();
    // keygen never overwrites a key.
    let again = sign::generate_keypair(&t.path().join("keys"), KeyProtection::None);
    assert!(format!("{:#}", again.unwrap_err()).contains("not overwriting"));
}
