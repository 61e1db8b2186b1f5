//! Targets: what differs between boards — boot packages, boot modules,
//! kernel command line and disk layout. One trait, one implementation per
//! board; nothing else in the builder asks which board it is building for.

use std::path::Path;

use anyhow::Result;

use crate::artifact::{Cmdline, NetbootInfo};
use crate::kmod::Need;
use crate::profile::{Board, Profile};
use crate::rootimg::RootImage;
use crate::tree::Tree;

mod proxmox;
pub mod rpi5;

pub use proxmox::Proxmox;
pub use rpi5::Rpi5;

/// Everything a target needs to lay out its disk.
#[derive(Debug)]
pub struct DiskInputs<'a> {
    pub profile: &'a Profile,
    /// The kernel image (`vmlinuz`).
    pub kernel: &'a [u8],
    /// The compressed initramfs.
    pub initramfs: &'a [u8],
    pub root: &'a RootImage,
    /// The unpacked boot packages (for example systemd-boot's EFI binaries).
    pub boot_tree: &'a Tree,
    /// The root tree (for files the boot partition copies, like dtbs).
    pub root_tree: &'a Tree,
    /// `uname -r` of the kernel (a UKI's `.uname`).
    pub kernel_version: &'a str,
    /// Seconds since the epoch used for every timestamp.
    pub epoch: u64,
    /// With `secure-boot.enabled`: the keys that sign systemd-boot and the UKIs.
    pub secure_boot: Option<&'a SecureBootKeys>,
}

/// A board labimg builds images for.
pub trait Target {
    /// Short name used in logs and the manifest.
    fn name(&self) -> &'static str;
    /// Debian packages unpacked only for the boot partition, not the root.
    fn boot_packages(&self) -> Vec<String>;
    /// Modules the initramfs always carries for this board (the profile's
    /// `kernel.modules` are added to these).
    fn boot_modules(&self) -> Vec<String>;
    /// The kernel command line for root slot `slot` ("a" or "b").
    fn cmdline(&self, profile: &Profile, root: &RootImage, slot: &str) -> Cmdline;
    /// Writes the raw disk image to `dst`.
    fn write_disk(&self, inputs: &DiskInputs, dst: &Path) -> Result<()>;
    /// Board files the netboot server hands out besides kernel, initramfs and
    /// root image (published as `netboot/<board dir>/`), if the board needs any.
    fn netboot_files(&self, _inputs: &DiskInputs) -> Result<Option<(&'static str, Tree)>> {
        Ok(None)
    }
    /// Whether the root image keeps the kernel package's device tree `rel` (a path
    /// under its `dtb/` folder, such as `broadcom/bcm2712-rpi-5-b.dtb`). Default: all.
    fn keeps_dtb(&self, _rel: &Path) -> bool {
        true
    }
}

/// Modules to mount the FAT boot partitions (the ESP, the Pi's boot and
/// autoboot partitions), which the upgrade agent and boot blessing write:
/// Debian's kernel mounts FAT with codepage 437 and ASCII/UTF-8 names.
pub const FAT_MODULES: [&str; 4] = ["vfat", "nls_cp437", "nls_ascii", "nls_utf8"];

/// The target for a profile's `target.board`.
pub fn for_profile(profile: &Profile) -> Result<Box<dyn Target>> {
    match profile.target.board {
        Board::Proxmox => Ok(Box::new(Proxmox)),
        Board::Rpi5 => Ok(Box::new(Rpi5)),
    }
}

/// The modules the initramfs carries, with where each list comes from: the board's
/// boot modules, `kernel.modules`, and with Secure Boot `efivarfs` (a UKI's command
/// line cannot say "trial boot": stage 1 reads systemd-boot's LoaderBootCountPath
/// variable there, to reboot on a FATAL so that a failed upgrade rolls back).
pub fn initramfs_modules(target: &dyn Target, profile: &Profile) -> Vec<Need> {
    let mut out = vec![
        Need::new(
            format!("the {} board's boot modules", target.name()),
            &target.boot_modules(),
        ),
        Need::new("kernel.modules", &profile.kernel.modules),
    ];
    if profile.secure_boot.enabled {
        out.push(Need::new("secure-boot.enabled", &["efivarfs"]));
    }
    out
}

/// Kernel arguments every target shares: where root is and how to check it.
/// The dm-verity parameters are the trust anchor stage 1 uses; the file's
/// sha256 and size stay for stage 1s without dm-verity and for the record.
pub fn common_cmdline(profile: &Profile, root: &RootImage, slot: &str) -> Cmdline {
    let v = &root.verity;
    let mut args = Cmdline::new();
    args.set("console", profile.console());
    args.set("labimg.root", format!("PARTLABEL=root-{slot}"));
    args.set("labimg.root.sha256", &root.sha256);
    args.set("labimg.root.size", root.size);
    args.set("labimg.verity.roothash", &v.root_hash);
    args.set("labimg.verity.salt", &v.salt);
    args.set("labimg.verity.data-blocks", v.data_blocks);
    args.set("labimg.verity.hash-offset", v.hash_offset);
    args.push("panic=10");
    if let Some(url) = &profile.upgrade.url {
        args.set("labimg.upgrade", url);
    }
    for a in &profile.kernel.cmdline {
        args.push(a.clone());
    }
    args
}

/// `netboot/netboot.json` for a build: the artifacts' names, the root image's hash
/// and size, and slot A's command line in its netboot form.
pub fn netboot_info(profile: &Profile, root: &RootImage, slot_a: &Cmdline) -> NetbootInfo {
    NetbootInfo {
        arch: profile.target.arch.as_str().to_owned(),
        board: format!("{:?}", profile.target.board).to_lowercase(),
        // Netboot nodes fetch the root over HTTP instead of a disk slot.
        cmdline: slot_a.netboot().to_string(),
        initrd: "initrd.img".into(),
        kernel: "vmlinuz".into(),
        profile: profile.name.clone(),
        root: "root.squashfs".into(),
        root_sha256: root.sha256.clone(),
        root_size: root.size,
    }
}

/// The Secure Boot material of a build (`--secure-boot-keys DIR`): the db signer,
/// and the public files copied into the outputs. The private keys stay in `DIR`.
#[derive(Debug)]
pub struct SecureBootKeys {
    /// The db key and certificate (`DIR/db.key`, `DIR/db.crt`).
    pub db: crate::secureboot::Signer,
    /// `PK.auth`, `KEK.auth` and `db.auth` from `DIR` (all three, db.auth enrolling
    /// db.crt, or none), in that order: what systemd-boot enrols in a firmware in
    /// setup mode.
    pub auth: Vec<(&'static str, Vec<u8>)>,
    /// The db certificate's subject and SHA-256 fingerprint (of its DER form).
    pub db_subject: String,
    pub db_sha256: String,
}

/// Whether an authenticated variable (`.auth`: EFI_TIME, then a WIN_CERTIFICATE whose
/// first u32 is its length, then the signature list) carries `cert_der` in its list.
fn auth_enrols(auth: &[u8], cert_der: &[u8]) -> bool {
    let Some(len) = auth.get(16..20) else {
        return false;
    };
    let list_at = 16 + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    auth.get(list_at..)
        .is_some_and(|list| list.windows(cert_der.len()).any(|w| w == cert_der))
}

/// Where the image holds the db certificate (PEM), for the upgrade agent's
/// `sbverify --cert`.
pub const DB_CERT_PATH: &str = "usr/lib/labimg/secureboot/db.crt";

impl SecureBootKeys {
    /// Loads the key folder of a profile with `secure-boot.enabled`.
    pub fn load(dir: &Path) -> Result<SecureBootKeys> {
        use anyhow::Context;
        let db = crate::secureboot::load_db(dir)?;
        let (db_subject, db_sha256) =
            crate::secureboot::describe_cert(&db.cert_der).context("reading the db certificate")?;
        let mut auth = Vec::new();
        for name in ["PK.auth", "KEK.auth", "db.auth"] {
            let p = dir.join(name);
            if p.exists() {
                let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                auth.push((name, data));
            }
        }
        // A VM in setup mode enrols these by itself: a stale or foreign db.auth would
        // lock it out of its own systemd-boot, with no way back but a new EFI disk.
        match auth.as_slice() {
            [] => {}
            [_, _, (_, db_auth)] => anyhow::ensure!(
                auth_enrols(db_auth, &db.cert_der),
                "{}: db.auth does not enrol db.crt (another key set's, or db.crt was \
                 replaced): a VM enrolling it would refuse its own systemd-boot; make the \
                 enrolment files again (`labimg secureboot keygen` makes all of them) or \
                 remove PK.auth, KEK.auth and db.auth to enrol by hand",
                dir.display()
            ),
            _ => anyhow::bail!(
                "{}: has only {} of PK.auth, KEK.auth and db.auth: systemd-boot enrols all \
                 three or none; add the missing ones or remove them all",
                dir.display(),
                auth.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        }
        Ok(SecureBootKeys {
            db,
            auth,
            db_subject,
            db_sha256,
        })
    }

    /// The db certificate as PEM text.
    pub fn db_cert_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.db.cert_der);
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s
    }
}

/// The keys a build signs with: `--secure-boot-keys` for a profile with
/// `secure-boot.enabled` (an error without it), nothing otherwise (a warning when
/// keys were given to a profile that does not use them).
pub fn secure_boot_keys(profile: &Profile, dir: Option<&Path>) -> Result<Option<SecureBootKeys>> {
    match (profile.secure_boot.enabled, dir) {
        (true, Some(d)) => SecureBootKeys::load(d).map(Some),
        (true, None) => anyhow::bail!(
            "profile {} has secure-boot.enabled = true but no Secure Boot keys were given: \
             make a key folder with `labimg secureboot keygen DIR` (or use one with db.crt \
             and db.key) and build with --secure-boot-keys DIR (or LABIMG_SECURE_BOOT_KEYS=DIR)",
            profile.name
        ),
        (false, Some(d)) => {
            tracing::warn!(
                "--secure-boot-keys {}: profile {} does not set secure-boot.enabled, the keys \
                 are not used",
                d.display(),
                profile.name
            );
            Ok(None)
        }
        (false, None) => Ok(None),
    }
}

/// The signed Unified Kernel Image of root slot `slot`: systemd's EFI stub from the
/// boot packages with the kernel, the initramfs, the slot's full command line (with
/// the dm-verity root hash), `.osrel` (version [`crate::uki::image_version`]) and
/// `.uname`, signed with the db key.
pub fn signed_uki(
    target: &dyn Target,
    inputs: &DiskInputs,
    keys: &SecureBootKeys,
    slot: &str,
) -> Result<Vec<u8>> {
    use anyhow::Context;
    let p = inputs.profile;
    let stub = inputs
        .boot_tree
        .get(crate::uki::STUB)
        .and_then(|e| e.data())
        .with_context(|| format!("systemd-boot-efi did not provide /{}", crate::uki::STUB))?;
    let version = crate::uki::image_version(inputs.epoch, &inputs.root.sha256);
    let osrel = crate::uki::osrel(&p.name, slot, &version);
    let cmdline = target.cmdline(p, inputs.root, slot).to_string();
    let uki = crate::uki::build(
        stub,
        &crate::uki::UkiParts {
            osrel: &osrel,
            cmdline: &cmdline,
            uname: inputs.kernel_version,
            initrd: inputs.initramfs,
            linux: inputs.kernel,
        },
    )?;
    crate::secureboot::sign_pe(&uki, &keys.db)
        .with_context(|| format!("signing the UKI of slot {slot} with the db key"))
}

#[cfg(test)]
mod tests {
    use super::SecureBootKeys;

    /// The enrolment files go onto the ESP only as a set that enrols db.crt.
    #[test]
    fn enrolment_files_must_be_all_three_and_enrol_the_signing_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let (mine, other) = (tmp.path().join("mine"), tmp.path().join("other"));
        crate::secureboot::keygen(&mine, "mine", 1_700_000_000).unwrap();
        crate::secureboot::keygen(&other, "other", 1_700_000_000).unwrap();
        assert_eq!(SecureBootKeys::load(&mine).unwrap().auth.len(), 3);

        std::fs::copy(other.join("db.auth"), mine.join("db.auth")).unwrap();
        let e = SecureBootKeys::load(&mine).unwrap_err().to_string();
        assert!(e.contains("db.auth does not enrol db.crt"), "{e}");

        std::fs::remove_file(mine.join("KEK.auth")).unwrap();
        let e = SecureBootKeys::load(&mine).unwrap_err().to_string();
        assert!(e.contains("only PK.auth, db.auth"), "{e}");

        for f in ["PK.auth", "db.auth"] {
            std::fs::remove_file(mine.join(f)).unwrap();
        }
        assert!(SecureBootKeys::load(&mine).unwrap().auth.is_empty());
    }
}
