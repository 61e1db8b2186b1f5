//! Secure Boot x86_64 machines: Debian's `OVMF_CODE_4M.secboot.fd` (SMM, secure
//! pflash) with a per-test variable store holding a key set enrolled by
//! `virt-fw-vars` (Debian's python3-virt-firmware), and an emulated TPM 2.0
//! (`swtpm`) whose state folder outlives each boot.
//!
//! ```text
//! let keys = KeySet::from_dir(&keygen_dir);            // PK.crt, KEK.crt, db.crt
//! let vars = keys.vars(dir, SecureBoot::Enforcing)?;   // a private OVMF_VARS copy
//! let tpm = TpmState::new()?;                          // kept across boots
//! let log = Vm::x86_64_secure_boot("name", &vars)?.tpm(&tpm)?.scsi_disk(..)?.boot(..)?;
//! ```
//!
//! What Debian's OVMF (2022.11) prints on the serial console when it refuses an
//! image is in [`FIRMWARE_REFUSED`]; what systemd-boot prints when the firmware
//! refuses an image it asked it to load, in [`SYSTEMD_BOOT_REFUSED`].
//!
//! Under TCG with SMM a firmware-only boot reaches systemd-boot in about 16 s
//! (three boot options, two refused, measured 2026-11-29 on an idle 2-core host;
//! 38 s for one refusal while builds shared the cores), and `virt-fw-vars` takes
//! about 2 s per store: refusal tests share one boot ([`Vm::fat_disk`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Daemon;
use crate::{Vm, run};

/// Debian's OVMF build with Secure Boot support (needs SMM and a secure pflash).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Debian's empty variable store: no keys, the firmware is in setup mode and
/// boots anything.
pub const OVMF_VARS_EMPTY: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The owner GUID the test enrolment gives labimg's certificates.
pub const OWNER_GUID: &str = "6c61626d-6967-4000-8000-000000000001";

/// Debian's OVMF (2022.11, secboot build), on the serial console, when Secure
/// Boot refuses a boot option's image (`EFI/BOOT/BOOTX64.EFI`): the line is
/// `BdsDxe: failed to load Boot0002 "UEFI Non-Block Boot Device" from
/// PciRoot(0x0)/Pci(0x3,0x0): Access Denied` (the firmware then tries the next
/// boot option: the NIC's iPXE, a disk without one). [`FIRMWARE_FAILED_TO_LOAD`]
/// starts it, this ends it.
pub const FIRMWARE_REFUSED: &str = ": Access Denied";
/// The start of BdsDxe's line for a boot option it could not load (refused or
/// missing: a missing file ends in `: Not Found`).
pub const FIRMWARE_FAILED_TO_LOAD: &str = "BdsDxe: failed to load Boot";
/// systemd-boot 257, when the firmware refuses the image of the entry it starts
/// (a kernel or UKI not signed by db): `../src/boot/boot.c:2576@image_start: Error
/// loading \labimg\a\vmlinuz: Access denied` ([`SYSTEMD_BOOT_LOAD_ERROR`] starts
/// the message, this ends it: the firmware's status text, lower-case d). On
/// Debian's OVMF the firmware then stops with an `X64 Exception Type - 0D(#GP`
/// dump: nothing else boots after a refused entry.
pub const SYSTEMD_BOOT_REFUSED: &str = ": Access denied";
/// The start of systemd-boot's message for an entry whose image did not load.
pub const SYSTEMD_BOOT_LOAD_ERROR: &str = "Error loading ";

/// A Secure Boot key set as PEM certificates (what `virt-fw-vars` enrolls).
#[derive(Debug, Clone)]
pub struct KeySet {
    pub pk: PathBuf,
    pub kek: PathBuf,
    pub db: PathBuf,
}

/// How the variable store [`KeySet::vars`] makes boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureBoot {
    /// PK, KEK and db enrolled, Secure Boot on: only images signed by db boot.
    Enforcing,
    /// The same keys enrolled, `SecureBootEnable` false: the firmware boots
    /// anything and reports `SecureBoot` = 0 (Secure Boot turned off in setup).
    Disabled,
}

impl KeySet {
    /// The certificates of a `labimg secureboot keygen DIR` folder.
    pub fn from_dir(dir: &Path) -> KeySet {
        KeySet {
            pk: dir.join("PK.crt"),
            kek: dir.join("KEK.crt"),
            db: dir.join("db.crt"),
        }
    }

    /// Debian's snakeoil certificate (from package ovmf) as PK, KEK and db: for
    /// harness tests that need keys without labimg's.
    pub fn snakeoil() -> KeySet {
        let pem = PathBuf::from("/usr/share/ovmf/PkKek-1-snakeoil.pem");
        KeySet {
            pk: pem.clone(),
            kek: pem.clone(),
            db: pem,
        }
    }

    /// Writes `dir/<name>`, a copy of Debian's empty variable store with these keys
    /// enrolled by `virt-fw-vars` and Secure Boot as `mode` says; returns its path.
    pub fn vars_named(&self, dir: &Path, name: &str, mode: SecureBoot) -> Result<PathBuf> {
        let out = dir.join(name);
        let _ = std::fs::remove_file(&out);
        let mut cmd = Command::new("virt-fw-vars");
        cmd.arg("--input")
            .arg(OVMF_VARS_EMPTY)
            .arg("--output")
            .arg(&out)
            .args(["--set-pk", OWNER_GUID])
            .arg(&self.pk)
            .args(["--add-kek", OWNER_GUID])
            .arg(&self.kek)
            .args(["--add-db", OWNER_GUID])
            .arg(&self.db);
        match mode {
            SecureBoot::Enforcing => cmd.arg("--secure-boot"),
            SecureBoot::Disabled => cmd.args(["--set-false", "SecureBootEnable"]),
        };
        run(&mut cmd).context("enrolling keys with virt-fw-vars (python3-virt-firmware)")?;
        Ok(out)
    }

    /// [`KeySet::vars_named`] as `dir/OVMF_VARS.<mode>.fd`.
    pub fn vars(&self, dir: &Path, mode: SecureBoot) -> Result<PathBuf> {
        let name = match mode {
            SecureBoot::Enforcing => "OVMF_VARS.enforcing.fd",
            SecureBoot::Disabled => "OVMF_VARS.disabled.fd",
        };
        self.vars_named(dir, name, mode)
    }
}

/// `dir/OVMF_VARS.setup.fd`: a copy of Debian's empty store (no PK: setup mode,
/// `SecureBoot` = 0, `SetupMode` = 1).
pub fn setup_mode_vars(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("OVMF_VARS.setup.fd");
    std::fs::copy(OVMF_VARS_EMPTY, &out).context("copying OVMF vars (is ovmf installed?)")?;
    Ok(out)
}

/// An emulated TPM's state folder: it outlives the boots that use it (each boot
/// starts its own swtpm on it), so what the node sealed in one boot unseals in the
/// next; [`TpmState::new`] again is a fresh TPM (another machine's).
#[derive(Debug)]
pub struct TpmState {
    dir: tempfile::TempDir,
}

impl TpmState {
    /// A new, empty TPM (swtpm manufactures it on first use).
    pub fn new() -> Result<TpmState> {
        Ok(TpmState {
            dir: tempfile::tempdir()?,
        })
    }

    /// The state folder (`swtpm --tpmstate dir=`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An `swtpm socket --tpm2` daemon on a [`TpmState`], for one QEMU boot; killed on
/// drop. [`Vm::tpm`] starts one and keeps it as long as the VM.
#[derive(Debug)]
pub struct Swtpm {
    daemon: Daemon,
    ctrl: PathBuf,
}

impl Swtpm {
    /// Starts swtpm on `state` and waits for its control socket.
    pub fn start(state: &TpmState) -> Result<Swtpm> {
        let dir = tempfile::tempdir()?;
        let ctrl = dir.path().join("swtpm.sock");
        let mut cmd = Command::new("swtpm");
        cmd.args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.path().display()))
            .args(["--ctrl"])
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .args(["--log", "level=1"]);
        let mut daemon = Daemon::spawn(cmd, "swtpm", "swtpm (Debian package swtpm)", dir)?;
        let start = Instant::now();
        while !ctrl.exists() {
            if !daemon.running() || start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "swtpm did not open {}: {}",
                    ctrl.display(),
                    daemon.log().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Swtpm { daemon, ctrl })
    }

    /// Its control socket (QEMU's `-chardev socket,path=`).
    pub fn ctrl_socket(&self) -> &Path {
        &self.ctrl
    }

    /// What swtpm wrote to stderr.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

impl Vm {
    /// An x86_64 UEFI machine with Secure Boot firmware: q35 with SMM, the
    /// secure pflash, [`OVMF_CODE_SECBOOT`] read-only and `vars` (made by
    /// [`KeySet::vars`] or [`setup_mode_vars`]) as its variable store, used in
    /// place: a second boot on the same file sees what the first wrote.
    pub fn x86_64_secure_boot(name: &str, vars: &Path) -> Result<Vm> {
        if !Path::new(OVMF_CODE_SECBOOT).exists() {
            bail!("{OVMF_CODE_SECBOOT} is missing (Debian package ovmf)");
        }
        let mut vm = Vm::new(name, "qemu-system-x86_64", &["-machine", "q35,smm=on"])?;
        vm.args.extend([
            "-global".into(),
            "driver=cfi.pflash01,property=secure,value=on".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_SECBOOT}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
        Ok(vm)
    }

    /// A TPM 2.0 (TIS) backed by a new swtpm on `state`, stopped with the VM.
    pub fn tpm(mut self, state: &TpmState) -> Result<Vm> {
        let swtpm = Swtpm::start(state)?;
        self.args.extend([
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", swtpm.ctrl_socket().display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]);
        self.guards.push(Box::new(swtpm));
        Ok(self)
    }

    /// Attaches a plain FAT image (`fat`, e.g. a copy of an ESP with one file
    /// changed) as a VirtIO disk read through a snapshot, for firmware-only
    /// refusal boots. The n-th such disk (from 0) is boot option n+1 in the
    /// firmware's order and sits at PCI slot 0x10+n, so BdsDxe's line for it names
    /// `Pci(0x1n,0x0)` ([`fat_disk_path`]): one boot can show the firmware
    /// refusing several images, one per disk, in turn.
    pub fn fat_disk(mut self, fat: &Path) -> Vm {
        let n = self
            .args
            .iter()
            .filter(|a| a.starts_with("file=") && a.contains(",id=fat"))
            .count();
        self.args.extend([
            "-drive".into(),
            format!(
                "file={},if=none,id=fat{n},format=raw,snapshot=on",
                fat.display()
            ),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive=fat{n},bootindex={},addr={:#x}",
                n + 1,
                0x10 + n
            ),
        ]);
        self
    }
}

/// The device path BdsDxe names for the n-th [`Vm::fat_disk`] (from 0).
pub fn fat_disk_path(n: usize) -> String {
    format!("PciRoot(0x0)/Pci({:#X},0x0)", 0x10 + n).replace("0X", "0x")
}

/// A Secure Boot key set made by the builder's `labimg secureboot keygen` code into
/// `target/qemu-tests/secure-boot-keys-<name>/`, once (later calls and other test
/// processes reuse it; builds keyed by its db certificate rebuild when it changes).
pub fn test_keys(name: &str) -> Result<PathBuf> {
    let base = crate::target_dir().join("qemu-tests");
    std::fs::create_dir_all(&base)?;
    let lock = std::fs::File::create(base.join(format!("secure-boot-keys-{name}.lock")))?;
    lock.lock().context("locking the test key set")?;
    let dir = base.join(format!("secure-boot-keys-{name}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    labimg_builder::secureboot::keygen(&dir, &format!("labimg test {name}"), 1_700_000_000)
        .with_context(|| format!("labimg secureboot keygen {}", dir.display()))?;
    std::fs::write(&done, b"")?;
    Ok(dir)
}

/// (offset of the certificate table entry in the optional header's data
/// directories, the table's file offset, its size) of a PE32+ image.
fn security_dir(pe: &[u8]) -> Result<(usize, usize, usize)> {
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            pe.get(o..o + 2).context("PE too short")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            pe.get(o..o + 4).context("PE too short")?.try_into()?,
        ))
    };
    if pe.get(..2) != Some(b"MZ") {
        bail!("not a PE image (no MZ)");
    }
    let nt = u32_at(0x3c)? as usize;
    if pe.get(nt..nt + 4) != Some(b"PE\0\0") {
        bail!("not a PE image (no PE signature)");
    }
    let opt = nt + 24;
    if u16_at(opt)? != 0x20b {
        bail!("not a PE32+ image");
    }
    // PE32+: 112 bytes of fields, then the data directories; entry 4 is the
    // certificate table (a file offset, not an RVA).
    let entry = opt + 112 + 4 * 8;
    Ok((entry, u32_at(entry)? as usize, u32_at(entry + 4)? as usize))
}

/// `pe` without its Authenticode signature: the certificate table entry zeroed
/// and the table cut off the end of the file (an unsigned image).
pub fn strip_signature(pe: &[u8]) -> Result<Vec<u8>> {
    let (entry, offset, size) = security_dir(pe)?;
    let mut out = pe.to_vec();
    if size != 0 {
        if offset + size != pe.len() {
            bail!("the certificate table is not at the end of the file");
        }
        out.truncate(offset);
    }
    out[entry..entry + 8].fill(0);
    Ok(out)
}

/// Whether `pe` carries a certificate table (an Authenticode signature).
pub fn is_signed(pe: &[u8]) -> Result<bool> {
    Ok(security_dir(pe)?.2 != 0)
}

/// `uki` with the first hex digit of its `labimg.verity.roothash=` (in `.cmdline`)
/// changed in place: same length and layout, so only the signature can tell.
pub fn tamper_root_hash(uki: &[u8]) -> Result<Vec<u8>> {
    let needle = b"labimg.verity.roothash=";
    let at = uki
        .windows(needle.len())
        .position(|w| w == needle)
        .context("the UKI's command line has no labimg.verity.roothash=")?
        + needle.len();
    let mut out = uki.to_vec();
    out[at] = if out[at] == b'0' { b'1' } else { b'0' };
    Ok(out)
}
