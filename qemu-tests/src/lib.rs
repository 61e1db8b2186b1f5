//! Helpers for labimg's boot tests: build a profile once per test binary
//! version, boot it in QEMU (TCG only: KVM hangs on these machines), and read
//! the serial console.
//!
//! A failing boot keeps its serial log under `target/qemu-logs/` and prints
//! the path, so CI artifacts show what the console said.

pub mod netns;
pub mod secureboot;
pub mod ssh;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The workspace root (the qemu-tests crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/` (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The k3s stand-in: a shell script that plays k3s for boot tests (the real
/// k3s cannot be downloaded on these machines). It prints what it was given
/// and powers the VM off.
pub fn k3s_stand_in() -> PathBuf {
    workspace_root().join("qemu-tests/stand-in/k3s")
}

/// Builds `profile_text` (a profile written into a private folder under target/,
/// its `extends = "<shipped>.toml"` pointed at the shipped profile) with the k3s
/// stand-in baked in, once per distinct (profile, test binary) pair; see
/// [`build_profile_file_once`]. Nothing is written into `profiles/`, which other
/// tests list while this one runs.
pub fn build_once(name: &str, profile_text: &str) -> Result<PathBuf> {
    build_text_once(name, profile_text, None)
}

/// Writes `profile_text` (its `extends` pointing into the shipped `profiles/`) to a
/// profile file of this process, runs `build` on it, and removes it. Per process:
/// another test process may delete its copy while this one loads.
fn with_profile_file(
    name: &str,
    profile_text: &str,
    build: impl FnOnce(&Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let dir = target_dir().join("qemu-test-profiles");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}-{}.toml", std::process::id()));
    let shipped = workspace_root().join("profiles");
    let text = profile_text.replace(
        "extends = \"",
        &format!("extends = \"{}/", shipped.display()),
    );
    std::fs::write(&path, text)?;
    let out = build(&path);
    let _ = std::fs::remove_file(&path);
    out
}

/// [`build_once`], with `SHA256SUMS` signed by `sign_key` when given.
pub fn build_text_once(name: &str, profile_text: &str, sign_key: Option<&Path>) -> Result<PathBuf> {
    with_profile_file(name, profile_text, |path| {
        build_signed_once(name, path, &[], sign_key)
    })
}

/// Creates `overlay`, a qcow2 copy-on-write layer over `base` (of `base_format`),
/// optionally bigger than the base (`"4G"`): tests boot it and the image under
/// test is never modified.
pub fn qcow2_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
    size: Option<&str>,
) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(base)
        .arg(overlay)
        .args(size);
    run(&mut cmd).map(|_| ())
}

/// A disk image as raw bytes on the host, with its GPT partitions by name
/// (`sfdisk --json` is the oracle): what tests read boot files and root slots from.
#[derive(Debug)]
pub struct RawDisk {
    pub raw: PathBuf,
    /// (name, first sector, sectors)
    pub parts: Vec<(String, u64, u64)>,
}

impl RawDisk {
    /// Converts `image` (qcow2 or raw) to `dir/disk.raw` and reads its table.
    pub fn from_image(image: &Path, dir: &Path) -> Result<RawDisk> {
        let raw = dir.join("disk.raw");
        let _ = std::fs::remove_file(&raw);
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(&raw))?;
        RawDisk::from_raw(raw)
    }

    /// Reads the partition table of a raw image in place.
    pub fn from_raw(raw: PathBuf) -> Result<RawDisk> {
        let table: serde_json::Value =
            serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&raw))?)?;
        let parts = table["partitiontable"]["partitions"]
            .as_array()
            .context("sfdisk --json lists no partitions")?
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["start"].as_u64().unwrap_or_default(),
                    p["size"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        Ok(RawDisk { raw, parts })
    }

    /// First sector and size in sectors of partition `name`.
    pub fn part(&self, name: &str) -> Result<(u64, u64)> {
        self.parts
            .iter()
            .find(|p| p.0 == name)
            .map(|p| (p.1, p.2))
            .with_context(|| format!("no partition {name}: {:?}", self.parts))
    }

    /// Copies partition `name` out to `dst`.
    pub fn extract(&self, name: &str, dst: &Path) -> Result<PathBuf> {
        let (start, size) = self.part(name)?;
        run(Command::new("dd")
            .arg(format!("if={}", self.raw.display()))
            .arg(format!("of={}", dst.display()))
            .args(["bs=512", "status=none"])
            .arg(format!("skip={start}"))
            .arg(format!("count={size}")))?;
        Ok(dst.to_owned())
    }
}

/// `mcopy`s `file` out of the FAT image `fat` into `dir` (a `/` in `file`
/// becomes `_`; an earlier copy is replaced).
pub fn mcopy(fat: &Path, file: &str, dir: &Path) -> Result<PathBuf> {
    let dst = dir.join(file.replace('/', "_"));
    let _ = std::fs::remove_file(&dst);
    run(Command::new("mcopy")
        .arg("-i")
        .arg(fat)
        .arg(format!("::/{file}"))
        .arg(&dst))?;
    Ok(dst)
}

/// Runs a host tool and returns its stdout, with the command in the error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A QEMU machine under construction.
#[derive(Debug)]
pub struct Vm {
    name: String,
    args: Vec<String>,
    binary: String,
    work: tempfile::TempDir,
    /// Run QEMU in a new, empty network namespace (`unshare --net`).
    own_netns: bool,
    /// Helpers that live as long as the VM (an swtpm daemon), dropped after QEMU exits.
    guards: Vec<Box<dyn std::fmt::Debug + Send>>,
}

impl Vm {
    /// An x86_64 UEFI (OVMF, q35) machine, like a Proxmox VM with OVMF.
    pub fn x86_64_uefi(name: &str) -> Result<Vm> {
        let mut vm = Vm::new(name, "qemu-system-x86_64", &["-machine", "q35"])?;
        let vars = vm.work.path().join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .context("copying OVMF vars (is ovmf installed?)")?;
        vm.args.extend([
            "-drive".into(),
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
        Ok(vm)
    }

    /// A machine with the arguments every boot test shares: TCG only (KVM
    /// hangs on these machines), 2 GiB, 2 vCPUs, serial console, no reboot.
    fn new(name: &str, binary: &str, machine: &[&str]) -> Result<Vm> {
        let common = [
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ];
        Ok(Vm {
            name: name.to_owned(),
            args: machine
                .iter()
                .chain(&common)
                .map(|s| s.to_string())
                .collect(),
            binary: binary.to_owned(),
            work: tempfile::tempdir()?,
            own_netns: false,
            guards: Vec::new(),
        })
    }

    /// An aarch64 QEMU `virt` machine (Cortex-A72, TCG) without firmware: boot
    /// it with [`Vm::direct_kernel`]. Stands in for a Raspberry Pi 5, which
    /// QEMU does not emulate.
    pub fn aarch64_virt(name: &str) -> Result<Vm> {
        Vm::new(
            name,
            "qemu-system-aarch64",
            &["-machine", "virt", "-cpu", "cortex-a72"],
        )
    }

    /// Boots `kernel` and `initrd` directly (QEMU's loader in place of the
    /// board's firmware) with the kernel command line `append`.
    pub fn direct_kernel(mut self, kernel: &Path, initrd: &Path, append: &str) -> Vm {
        self.args.extend([
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append.to_owned(),
        ]);
        self
    }

    /// Attaches a disk as VirtIO block (PCI), through a throw-away qcow2
    /// overlay so the image under test is never modified.
    pub fn virtio_disk(mut self, image: &Path, format: &str) -> Result<Vm> {
        let overlay = self.work.path().join("disk-overlay.qcow2");
        qcow2_overlay(image, format, &overlay, None)?;
        self.args.extend([
            "-drive".into(),
            format!("file={},if=none,id=hd0,format=qcow2", overlay.display()),
            "-device".into(),
            "virtio-blk-pci,drive=hd0".into(),
        ]);
        Ok(self)
    }

    /// A scratch folder that lives as long as the VM.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Attaches a disk on VirtIO SCSI (Proxmox's default controller), through a
    /// throw-away 4 GiB qcow2 overlay: the image under test is never modified,
    /// and the disk is bigger than the image, as after `qm resize`.
    pub fn scsi_disk(self, image: &Path, format: &str) -> Result<Vm> {
        let overlay = self.work.path().join("disk-overlay.qcow2");
        qcow2_overlay(image, format, &overlay, Some("4G"))?;
        Ok(self.scsi_existing_overlay(&overlay))
    }

    /// A VirtIO NIC on QEMU's built-in user network: DHCP with a router and a DNS
    /// server, like a home LAN (`restrict=on` would leave both out of the lease).
    /// QEMU runs in a new, empty network namespace, so the guest still reaches
    /// nothing outside QEMU.
    pub fn user_net(mut self, mac: &str) -> Vm {
        self.own_netns = true;
        self.args.extend([
            "-netdev".into(),
            "user,id=n0".into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}"),
        ]);
        self
    }

    /// Tells the k3s stand-in what to do once it has started, through QEMU's fw_cfg
    /// (`opt/labimg/stand-in`): `run` keeps it running like k3s (Ready, one pod),
    /// `reboot` and `poweroff` then run busybox's command on the node. See
    /// `qemu-tests/stand-in/README.md`.
    pub fn stand_in_mode(mut self, mode: &str) -> Vm {
        self.args.extend([
            "-fw_cfg".into(),
            format!("name=opt/labimg/stand-in,string={mode}"),
        ]);
        self
    }

    /// Boots and reads the serial console until QEMU exits, `stop_at` appears,
    /// or `timeout` passes.
    pub fn boot(self, stop_at: Option<&str>, timeout: Duration) -> Result<SerialLog> {
        self.boot_with(stop_at, timeout, &[])
    }

    /// [`Vm::boot`], sending QEMU monitor commands on cue: for each `(needle, n,
    /// command)` of `on_console`, `command` (e.g. `system_powerdown`, the power
    /// button) goes to the monitor once the console has shown `needle` `n` times.
    pub fn boot_with(
        mut self,
        stop_at: Option<&str>,
        timeout: Duration,
        on_console: &[(&str, usize, &str)],
    ) -> Result<SerialLog> {
        let monitor = self.work.path().join("monitor.sock");
        if !on_console.is_empty() {
            let at = self
                .args
                .windows(2)
                .position(|w| w[0] == "-monitor" && w[1] == "none")
                .context("the VM has no -monitor none to replace")?;
            self.args[at + 1] = format!("unix:{},server=on,wait=off", monitor.display());
        }
        let mut fired = vec![false; on_console.len()];
        let log_path = self.work.path().join("serial.log");
        let mut cmd = if self.own_netns {
            let mut c = Command::new("unshare");
            c.args(["--net", "--", &self.binary]);
            c
        } else {
            Command::new(&self.binary)
        };
        cmd.args(&self.args)
            .args(["-serial", &format!("file:{}", log_path.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child: Child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary))?;
        let start = Instant::now();
        let mut exited = None;
        loop {
            if let Some(status) = child.try_wait()? {
                exited = Some(status);
                break;
            }
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if stop_at.is_some_and(|s| text.contains(s)) || start.elapsed() > timeout {
                break;
            }
            for (i, (needle, n, command)) in on_console.iter().enumerate() {
                if !fired[i] && text.matches(needle).count() >= *n {
                    fired[i] = true;
                    monitor_command(&monitor, command)
                        .with_context(|| format!("sending '{command}' to the QEMU monitor"))?;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(SerialLog {
            name: self.name,
            text,
            qemu_stderr: stderr,
            powered_off: exited.is_some_and(|s| s.success()),
            elapsed: start.elapsed(),
        })
    }
}

/// Sends one command to QEMU's human monitor on the unix socket `path`.
fn monitor_command(path: &Path, command: &str) -> Result<()> {
    use std::io::Write;
    let mut sock = std::os::unix::net::UnixStream::connect(path)?;
    sock.write_all(format!("{command}\n").as_bytes())?;
    // Let QEMU read the line before the connection closes.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// The host-contract requirements the k3s stand-in checks on the node
/// (`qemu-tests/stand-in/k3s`, `builder/node/HOST-CONTRACT.md`).
pub const HOST_CONTRACT: &[&str] = &[
    "node-password",
    "machine-id",
    "var-run",
    "cni-dirs",
    "cilium-hostpaths",
    "modprobe-path",
    "module-alias",
    "module-on-demand",
    "limits",
    "flexvolume",
    "resolv-conf",
    "random-pool",
];

impl SerialLog {
    /// Asserts that the stand-in reported every [`HOST_CONTRACT`] requirement as
    /// `ok` (or `skip` for a name in `skips`, which the contract allows on netboot)
    /// and none as `FAIL`. Returns each ok line's details by name (`id=…`), for
    /// comparisons across boots.
    pub fn assert_host_contract(
        &self,
        skips: &[&str],
    ) -> std::collections::BTreeMap<String, String> {
        self.host_contract(skips, None)
    }

    /// [`Self::assert_host_contract`] for a boot on QEMU's `restrict=on` user network
    /// ([`Vm::bundle_net`]), whose DHCP leaves out the name server (libslirp sends
    /// option 6 only when unrestricted): `resolv-conf` must FAIL there, after stage
    /// 2's warning, and every other requirement hold. That is also the check's own
    /// negative case.
    pub fn assert_host_contract_without_dns(&self) -> std::collections::BTreeMap<String, String> {
        self.assert_in_order(&[
            "labimg: WARNING: no name server: the DHCP lease on ",
            "k3s-stand-in: contract FAIL resolv-conf: /etc/resolv.conf names no nameserver",
        ]);
        self.host_contract(&[], Some("resolv-conf"))
    }

    fn host_contract(
        &self,
        skips: &[&str],
        failing: Option<&str>,
    ) -> std::collections::BTreeMap<String, String> {
        let fails: Vec<String> = self
            .lines_with("k3s-stand-in: contract FAIL")
            .into_iter()
            .filter(|l| failing.is_none_or(|name| !l.contains(&format!("contract FAIL {name}:"))))
            .collect();
        assert!(
            fails.is_empty(),
            "host contract broken: {fails:#?}; log: {}",
            self.keep().display()
        );
        let mut details = std::collections::BTreeMap::new();
        for name in HOST_CONTRACT.iter().filter(|n| Some(**n) != failing) {
            let ok = self.lines_with(&format!("k3s-stand-in: contract ok {name}"));
            let skipped = self.lines_with(&format!("k3s-stand-in: contract skip {name}:"));
            match (ok.as_slice(), skipped.len()) {
                ([line], 0) => {
                    let rest = line.split_once(&format!("contract ok {name}")).unwrap().1;
                    details.insert(name.to_string(), rest.trim().to_owned());
                }
                ([], 1) if skips.contains(name) => {}
                _ => panic!(
                    "host contract {name}: expected one ok line, got {ok:?} and skips {skipped:?}; log: {}",
                    self.keep().display()
                ),
            }
        }
        details
    }
}

/// What k3s keys a node on survived from `first`, the boot that made it, to `again`
/// (a reboot, or slot B after an A/B upgrade): both boots' host-contract details
/// ([`SerialLog::assert_host_contract`]) show the same k3s node password (made on
/// `first`, found on `again`) and the same machine-id.
pub fn assert_node_identity_kept(
    first: &std::collections::BTreeMap<String, String>,
    again: &std::collections::BTreeMap<String, String>,
) {
    assert!(first["node-password"].contains("created=yes"), "{first:?}");
    assert!(again["node-password"].contains("created=no"), "{again:?}");
    assert_eq!(
        first["node-password"].replace("created=yes", "created=no"),
        again["node-password"],
        "the k3s node password changed"
    );
    assert_eq!(
        first["machine-id"], again["machine-id"],
        "the machine-id changed"
    );
}

/// What the serial console said.
#[derive(Debug)]
pub struct SerialLog {
    pub name: String,
    pub text: String,
    pub qemu_stderr: String,
    /// QEMU exited by itself with status 0 (the guest powered off).
    pub powered_off: bool,
    pub elapsed: Duration,
}

impl SerialLog {
    /// Keeps the log under `target/qemu-logs/<name>.log` and returns the path.
    pub fn keep(&self) -> PathBuf {
        let dir = target_dir().join("qemu-logs");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.log", self.name));
        let _ = std::fs::write(
            &path,
            format!("{}\n--- qemu stderr ---\n{}", self.text, self.qemu_stderr),
        );
        path
    }

    /// Lines starting with `prefix` (console lines may carry `\r`).
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter_map(|l| l.find(prefix).map(|i| l[i..].to_owned()))
            .collect()
    }

    /// Panics (keeping the log) unless every needle appears, in this order.
    pub fn assert_in_order(&self, needles: &[&str]) {
        let mut from = 0;
        for n in needles {
            match self.text[from..].find(n) {
                Some(i) => from += i + n.len(),
                None => {
                    let path = self.keep();
                    panic!(
                        "{}: console never showed {n:?} (after the earlier milestones); serial log kept at {} ({:.0?} boot)\n--- tail ---\n{}",
                        self.name,
                        path.display(),
                        self.elapsed,
                        tail(&self.text, 40)
                    );
                }
            }
        }
    }

    /// Panics (keeping the log) if `needle` appears.
    pub fn assert_absent(&self, needle: &str) {
        if self.text.contains(needle) {
            let path = self.keep();
            panic!(
                "{}: console showed {needle:?}; serial log kept at {}",
                self.name,
                path.display()
            );
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Builds the profile file at `path` (a shipped profile, for example
/// `profiles/examples/pi5-argocd.toml`) with `sets` applied (`key.path=value`,
/// as `labimg build --set`) and the k3s stand-in baked in, once per distinct
/// (file contents, sets, stand-in, test binary). nextest runs every test in its
/// own process, so the build is shared through a lock file and a folder keyed
/// by those inputs. `name` names the lock and folder.
///
/// Relative `file` secrets resolve against the working directory (the build's
/// default), so tests pass secrets as absolute paths through `sets`.
pub fn build_profile_file_once(name: &str, path: &Path, sets: &[String]) -> Result<PathBuf> {
    build_signed_once(name, path, sets, None)
}

/// The test-only minisign key pair under `qemu-tests/test-key/` (unencrypted,
/// committed: it signs test bundles and nothing else): the secret key file and
/// the public key's base64 line, as a profile's `upgrade.public-key` takes it.
pub fn test_signing_key() -> (PathBuf, String) {
    let dir = workspace_root().join("qemu-tests/test-key");
    let public = std::fs::read_to_string(dir.join("upgrade-test.pub")).expect("test public key");
    let line = public.lines().nth(1).expect("public key line").trim();
    (dir.join("upgrade-test.key"), line.to_owned())
}

/// [`build_profile_file_once`], signing `SHA256SUMS` with `sign_key` (a minisign
/// secret key file) when given.
pub fn build_signed_once(
    name: &str,
    path: &Path,
    sets: &[String],
    sign_key: Option<&Path>,
) -> Result<PathBuf> {
    build_file_once(name, path, sets, sign_key, None)
}

/// [`build_text_once`] for a `[secure-boot] enabled` profile: signed with the
/// key set in `keys` (`labimg build --secure-boot-keys`) and built at
/// `SOURCE_DATE_EPOCH` `epoch` (systemd-boot orders UKIs by it, so an upgrade
/// bundle needs a newer one than the image it upgrades).
pub fn build_secure_boot_once(
    name: &str,
    profile_text: &str,
    sign_key: Option<&Path>,
    keys: &Path,
    epoch: u64,
) -> Result<PathBuf> {
    with_profile_file(name, profile_text, |path| {
        build_file_once(name, path, &[], sign_key, Some((keys, epoch)))
    })
}

fn build_file_once(
    name: &str,
    path: &Path,
    sets: &[String],
    sign_key: Option<&Path>,
    secure_boot: Option<(&Path, u64)>,
) -> Result<PathBuf> {
    let exe = std::fs::read(std::env::current_exe()?)?;
    let stand_in = std::fs::read(k3s_stand_in())?;
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new()
        .chain_update(&exe)
        .chain_update(&text)
        .chain_update(&stand_in);
    if let Some(key) = sign_key {
        hasher.update(b"signed-with:");
        hasher.update(std::fs::read(key)?);
    }
    if let Some((keys, epoch)) = secure_boot {
        hasher.update(b"secure-boot:");
        hasher.update(std::fs::read(keys.join("db.crt"))?);
        hasher.update(epoch.to_le_bytes());
    }
    for set in sets {
        // Length-prefixed so that ["a", "bc"] and ["ab", "c"] differ.
        hasher.update((set.len() as u64).to_le_bytes());
        hasher.update(set);
    }
    let key = hex::encode(&hasher.finalize()[..8]);
    let base = target_dir().join("qemu-tests");
    std::fs::create_dir_all(&base)?;
    let out = base.join(format!("{name}-{key}"));
    let lock = File::create(base.join(format!("{name}.lock")))?;
    lock.lock().context("locking the shared test build")?;
    if out.join("manifest.json").exists() {
        return Ok(out);
    }
    remove_stale_builds(&base, name, &out);
    let profile = labimg_builder::profile::load(
        path.to_str().context("non-UTF-8 path")?,
        &workspace_root().join("profiles"),
        sets,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| format!("loading {}", path.display()))?;
    let opts = labimg_builder::build::BuildOptions {
        out_dir: Some(out.clone()),
        k3s_binary: Some(k3s_stand_in()),
        cache_dir: std::env::var_os("LABIMG_CACHE").map(PathBuf::from),
        source_date_epoch: Some(secure_boot.map_or(1_700_000_000, |s| s.1)),
        embed_secrets: false,
        sign_key: sign_key.map(Path::to_path_buf),
        offline: false,
        node: None,
        secure_boot_keys: secure_boot.map(|s| s.0.to_path_buf()),
    };
    labimg_builder::build::build(&profile, &opts)
        .with_context(|| format!("building {}", path.display()))?;
    Ok(out)
}

/// Removes earlier builds of `name` (other test binaries or profiles): each is
/// 100–400 MB and only the current key is ever used again.
fn remove_stale_builds(base: &Path, name: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let prefix = format!("{name}-");
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // `<name>-<16 hex digits>` only: `pi5-pxe-…` is not a build of `pi5`.
        let is_key = rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit());
        if is_key && path != keep && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

impl Vm {
    /// An x86_64 BIOS machine (SeaBIOS, i440fx): what a Proxmox VM with the
    /// default firmware is.
    pub fn x86_64_bios(name: &str) -> Result<Vm> {
        Vm::new(name, "qemu-system-x86_64", &["-machine", "pc"])
    }

    /// [`Vm::aarch64_virt`] with UEFI firmware (AAVMF, from `qemu-efi-aarch64`) as
    /// pflash, on a private copy of the variable store: an arm64 UEFI server.
    pub fn aarch64_uefi(name: &str) -> Result<Vm> {
        let mut vm = Vm::aarch64_virt(name)?;
        let vars = vm.work.path().join("AAVMF_VARS.fd");
        std::fs::copy("/usr/share/AAVMF/AAVMF_VARS.fd", &vars)
            .context("copying AAVMF vars (is qemu-efi-aarch64 installed?)")?;
        vm.args.extend([
            "-drive".into(),
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
        Ok(vm)
    }

    /// The VM's name (its serial log is kept as `<name>.log`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A VirtIO NIC with MAC `mac` on QEMU's user network where `http://10.0.2.100/`
    /// is the HTTP server on host port `port` (an upgrade bundle): guestfwd to a
    /// chardev carries one connection only, so `cmd:` spawns bash per guest
    /// connection, whose /dev/tcp relays it to the server.
    pub fn bundle_net(self, mac: &str, port: u16) -> Vm {
        let netdev = format!(
            "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; cat <&3 & cat >&3'"
        );
        let device = format!("virtio-net-pci,netdev=n0,mac={mac}");
        self.extra_args(&["-netdev", &netdev, "-device", &device])
    }

    /// Extra QEMU arguments, appended as given.
    pub fn extra_args(mut self, args: &[&str]) -> Vm {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// A VirtIO NIC on tap device `tap` (which must exist where QEMU runs: see
    /// [`Vm::in_netns`]), first in the firmware's boot order. `romfile` picks the
    /// NIC's option ROM: `None` keeps QEMU's iPXE ROM, `Some("")` loads none, so
    /// UEFI firmware uses its own driver and PXE client.
    pub fn tap_net(mut self, tap: &str, mac: &str, romfile: Option<&str>) -> Vm {
        let rom = romfile.map(|r| format!(",romfile={r}")).unwrap_or_default();
        self.args.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1{rom}"),
        ]);
        self
    }

    /// A VirtIO NIC on tap device `tap` that the firmware does not boot from (the
    /// disk does): the node's own DHCP client uses it.
    pub fn tap_nic(mut self, tap: &str, mac: &str) -> Vm {
        self.args.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
        ]);
        self
    }

    /// Attaches an existing qcow2 `overlay` as VirtIO block (like
    /// [`Vm::virtio_disk`]), so a test can boot the same disk again.
    pub fn virtio_existing_overlay(mut self, overlay: &Path) -> Vm {
        self.args.extend([
            "-drive".into(),
            format!("file={},if=none,id=hd0,format=qcow2", overlay.display()),
            "-device".into(),
            "virtio-blk-pci,drive=hd0".into(),
        ]);
        self
    }

    /// Attaches a new, blank VirtIO block disk of `size` (`qemu-img` syntax, e.g.
    /// `2G`): a netbooted node's local disk for its STATE (`/dev/vda`).
    pub fn blank_virtio_disk(mut self, size: &str) -> Result<Vm> {
        let disk = self.work.path().join("blank.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg(size))?;
        self.args.extend([
            "-drive".into(),
            format!("file={},if=none,id=blank0,format=qcow2", disk.display()),
            "-device".into(),
            "virtio-blk-pci,drive=blank0".into(),
        ]);
        Ok(self)
    }

    /// Runs QEMU inside network namespace `ns` (`ip netns exec` execs QEMU, so
    /// stopping the child stops QEMU).
    pub fn in_netns(mut self, ns: &str) -> Vm {
        let qemu = std::mem::replace(&mut self.binary, "ip".into());
        let mut args: Vec<String> = ["netns", "exec", ns, &qemu]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.append(&mut self.args);
        self.args = args;
        self
    }
}

impl Vm {
    /// Attaches an existing qcow2 `overlay` on VirtIO SCSI (like
    /// [`Vm::scsi_disk`]) without creating a fresh one, so that a test can boot
    /// the same disk several times and see what earlier boots wrote to it.
    pub fn scsi_existing_overlay(mut self, overlay: &Path) -> Vm {
        self.args.extend([
            "-device".into(),
            "virtio-scsi-pci,id=scsi0".into(),
            "-drive".into(),
            format!("file={},if=none,id=hd0,format=qcow2", overlay.display()),
            "-device".into(),
            "scsi-hd,drive=hd0,bus=scsi0.0".into(),
        ]);
        self
    }
}

/// Serves the files under `root` over HTTP/1.0 on 127.0.0.1 (GET only), for
/// as long as the test process lives. Returns the port.
pub fn serve_dir_http(root: PathBuf) -> u16 {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the bundle server");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(&conn);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let path = request.split(' ').nth(1).unwrap_or("/");
                let file = (!path.contains(".."))
                    .then(|| root.join(path.trim_start_matches('/')))
                    .and_then(|p| std::fs::File::open(p).ok());
                let mut out = &conn;
                match file {
                    Some(mut f) => {
                        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                        let _ = write!(
                            out,
                            "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = std::io::copy(&mut f, &mut out);
                    }
                    None => {
                        let _ = write!(out, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            });
        }
    });
    port
}

/// Decompresses a build's `<profile>.raw.xz` (from `out`, a build folder) into
/// `dir` and returns the raw image's path (xz writes it sparse).
pub fn raw_image(out: &Path, dir: &Path) -> PathBuf {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let name = manifest["profile"].as_str().unwrap();
    let raw = dir.join(format!("{name}.raw"));
    let status = Command::new("xz")
        .args(["-dc", "-T0"])
        .arg(out.join(format!("{name}.raw.xz")))
        .stdout(Stdio::from(File::create(&raw).unwrap()))
        .status()
        .expect("running xz");
    assert!(status.success(), "xz -dc failed: {status}");
    raw
}

/// What QEMU's loader needs to play the Pi 5 firmware for a raw Pi image: the
/// kernel, initramfs and command line from its `boot-a` partition (extracted into
/// `dir`), the console moved from the Pi's debug UART (`ttyAMA10`) to `virt`'s PL011
/// (`ttyAMA0`). Returns `(kernel, initramfs, command line)`.
pub fn pi5_boot_files(raw: &Path, dir: &Path) -> (PathBuf, PathBuf, String) {
    let boot = RawDisk::from_raw(raw.to_path_buf())
        .unwrap()
        .extract("boot-a", &dir.join("boot-a.img"))
        .unwrap();
    let kernel = mcopy(&boot, "kernel_2712.img", dir).unwrap();
    let initrd = mcopy(&boot, "initramfs.img", dir).unwrap();
    let cmdline = std::fs::read_to_string(mcopy(&boot, "cmdline.txt", dir).unwrap()).unwrap();
    (kernel, initrd, pi5_cmdline_on_virt(&cmdline))
}

/// A Pi 5 `cmdline.txt` as QEMU's `virt` needs it: the console moved from the
/// Pi's debug UART (`ttyAMA10`, which the image must name first) to the PL011
/// (`ttyAMA0`).
pub fn pi5_cmdline_on_virt(cmdline: &str) -> String {
    assert!(
        cmdline.starts_with("console=ttyAMA10,115200 "),
        "cmdline.txt: {cmdline}"
    );
    cmdline
        .trim_end()
        .replacen("console=ttyAMA10,115200", "console=ttyAMA0", 1)
}
