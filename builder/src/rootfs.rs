//! Step 2: assemble the root filesystem tree from the fetched packages, the
//! node OS files (`builder/node/`) and the rendered node table.
//!
//! Maintainer scripts never run (they would need a chroot of the target
//! architecture); the few things they would have done that the node needs are
//! done here, in Rust: busybox applet links, the CA bundle, `modules.dep`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::Digest;

use crate::debian::{FetchedPackage, extract_deb};
use crate::kmod::{KernelModules, ModInfo, NODE_NEEDS, Need};
use crate::manifest::RootModules;
use crate::nodecfg::NodeTable;
use crate::preseed::RenderOptions;
use crate::profile::{ModuleSet, Profile};
use crate::tree::{Entry, Kind, Tree};

/// The node OS sources, compiled into labimg so a build needs no checkout.
pub mod node_files {
    pub const INIT: &str = include_str!("../node/init");
    pub const STAGE2: &str = include_str!("../node/stage2");
    pub const COMMON: &str = include_str!("../node/common.sh");
    pub const UDHCPC_SCRIPT: &str = include_str!("../node/udhcpc.script");
    pub const UPGRADE: &str = include_str!("../node/upgrade");
    pub const SSH: &str = include_str!("../node/ssh.sh");
    pub const LOGSHIP: &str = include_str!("../node/logship.sh");
    pub const STATECRYPT: &str = include_str!("../node/statecrypt.sh");
}

/// The assembled root and what was taken out of it for the boot partition.
#[derive(Debug)]
pub struct Rootfs {
    pub tree: Tree,
    /// The kernel image from the kernel package's `/boot/vmlinuz-*`.
    pub kernel: Vec<u8>,
    pub kernel_version: String,
    /// `kernel.module-set` and what it kept.
    pub modules: RootModules,
}

/// Where the k3s binary comes from.
#[derive(Debug)]
pub enum K3sBinary<'a> {
    /// Baked into the image from this file.
    Baked(&'a Path),
    /// Fetched by the node on first boot and checked against the pin.
    FirstBoot,
}

/// Paths Debian installs that an immutable node never reads.
const PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
];

/// Unpacks packages into `tree`, logging what each contributed.
pub fn unpack(tree: &mut Tree, packages: &[FetchedPackage]) -> Result<()> {
    for p in packages {
        let files = extract_deb(&p.path, tree)
            .with_context(|| format!("unpacking {} {}", p.package.name, p.package.version))?;
        tracing::debug!(
            "unpacked {} {} ({} paths)",
            p.package.name,
            p.package.version,
            files.len()
        );
    }
    Ok(())
}

/// Debian's merged /usr: the top-level directories are symlinks into /usr.
fn merged_usr(tree: &mut Tree, arch: &str) -> Result<()> {
    for d in ["usr/bin", "usr/sbin", "usr/lib", "usr/local/bin"] {
        tree.mkdir_all(d)?;
    }
    tree.insert_symlink("bin", "usr/bin")?;
    tree.insert_symlink("sbin", "usr/sbin")?;
    tree.insert_symlink("lib", "usr/lib")?;
    if arch == "amd64" {
        tree.mkdir_all("usr/lib64")?;
        tree.insert_symlink("lib64", "usr/lib64")?;
    }
    Ok(())
}

/// The applet names compiled into a busybox binary. Busybox keeps them as one
/// NUL-separated, sorted string table starting with `[` and `[[`; reading it
/// from the file works for any architecture without running the binary.
pub fn busybox_applets(binary: &[u8]) -> Vec<String> {
    const START: &[u8] = b"[\0[[\0";
    let Some(pos) = binary.windows(START.len()).position(|w| w == START) else {
        return Vec::new();
    };
    binary[pos..]
        .split(|&b| b == 0)
        .take_while(|s| !s.is_empty())
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()) && !s.contains('/'))
        .map(String::from)
        .collect()
}

fn install_busybox_links(tree: &mut Tree) -> Result<usize> {
    let bin = tree
        .get("usr/bin/busybox")
        .and_then(|e| e.data())
        .context("busybox-static did not install /usr/bin/busybox")?
        .to_vec();
    let applets = busybox_applets(&bin);
    anyhow::ensure!(
        applets.len() > 50,
        "found only {} applets in busybox",
        applets.len()
    );
    let mut n = 0;
    for a in applets {
        // Real tools from Debian packages win over busybox's smaller ones.
        if ["usr/bin", "usr/sbin"]
            .iter()
            .any(|d| tree.contains(format!("{d}/{a}")))
        {
            continue;
        }
        tree.insert_symlink(format!("usr/bin/{a}"), "busybox")?;
        n += 1;
    }
    if !tree.contains("usr/bin/sh") {
        tree.insert_symlink("usr/bin/sh", "busybox")?;
    }
    Ok(n)
}

/// What `update-ca-certificates` would write: every certificate from
/// ca-certificates concatenated into the bundle OpenSSL and curl read.
fn ca_bundle(tree: &mut Tree) -> Result<usize> {
    let certs: Vec<Vec<u8>> = tree
        .iter()
        .filter(|(p, _)| {
            p.starts_with("usr/share/ca-certificates") && p.extension().is_some_and(|e| e == "crt")
        })
        .filter_map(|(_, e)| e.data().map(<[u8]>::to_vec))
        .collect();
    let bundle: Vec<u8> = certs.concat();
    tree.insert_file("etc/ssl/certs/ca-certificates.crt", bundle, 0o644)?;
    Ok(certs.len())
}

fn etc_files(tree: &mut Tree, profile: &Profile) -> Result<()> {
    tree.insert_file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    tree.insert_file("etc/group", "root:x:0:\n", 0o644)?;
    tree.insert_file("etc/shadow", "root:*:1::::::\n", 0o600)?;
    tree.insert_file("etc/hostname", "labimg\n", 0o644)?;
    tree.insert_file("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644)?;
    tree.insert_file(
        "etc/nsswitch.conf",
        "hosts: files dns\npasswd: files\ngroup: files\n",
        0o644,
    )?;
    tree.insert_file(
        "etc/os-release",
        format!(
            "NAME=labimg\nID=labimg\nID_LIKE=debian\nPRETTY_NAME=\"labimg {} (Debian {})\"\nVARIANT_ID={}\n",
            profile.name,
            profile.suites().first().map(String::as_str).unwrap_or("trixie"),
            profile.name
        ),
        0o644,
    )?;
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
        "mnt",
        "etc/rancher/k3s",
    ] {
        tree.mkdir_all(d)?;
    }
    tree.insert("root", Entry::dir(0o700))?;
    tree.insert("tmp", Entry::dir(0o1777))?;
    Ok(())
}

/// Paths of a conventional host that k3s, containerd, kubelet and Cilium write to,
/// as symlinks from the read-only root (or the tmpfs `/etc`) into STATE; stage 2
/// creates their targets every boot. `builder/node/HOST-CONTRACT.md` says who needs
/// each and why.
pub const HOST_LINKS: &[(&str, &str)] = &[
    // k3s's node password (and --with-node-id's id): a new one every boot would get
    // the node rejected by its server after any reboot.
    ("etc/rancher/node", "/var/lib/labimg/rancher-node"),
    // The CNI plugin and config folders containerd reads with flannel off, pointed at
    // the ones k3s uses, where Cilium's chart is told to install (preseed/cilium.rs).
    ("opt/cni/bin", "/var/lib/rancher/k3s/data/cni"),
    ("etc/cni/net.d", "/var/lib/rancher/k3s/agent/etc/cni/net.d"),
    // kubelet's and the controller manager's FlexVolume folder.
    ("usr/libexec/kubernetes", "/var/lib/labimg/kubernetes"),
    // Runtime state belongs on /run, never on STATE (stage 2 enforces it each boot).
    ("var/run", "../run"),
    ("var/lock", "../run/lock"),
];

/// The host layout k3s and Cilium expect: [`HOST_LINKS`], and `/sbin/modprobe` (the
/// kernel's `CONFIG_MODPROBE_PATH`, and what k3s's own unit runs) as busybox's
/// modprobe, which reads the `modules.dep`/`modules.alias` written below.
fn host_layout(tree: &mut Tree) -> Result<()> {
    for (link, target) in HOST_LINKS {
        if let Some(parent) = Path::new(link).parent() {
            tree.mkdir_all(parent)?;
        }
        tree.insert_symlink(*link, *target)?;
    }
    if !tree.contains("usr/sbin/modprobe") {
        anyhow::ensure!(
            tree.contains("usr/bin/modprobe"),
            "busybox has no modprobe applet: the kernel could not load modules on demand"
        );
        tree.insert_symlink("usr/sbin/modprobe", "../bin/modprobe")?;
    }
    Ok(())
}

/// Where stage 2 reads the profile's `[[services]]`: `<name> <program> <args…>` a line.
pub const SERVICES_FILE: &str = "usr/lib/labimg/services";

/// Writes [`SERVICES_FILE`], after checking every program is in the image (so a
/// missing package fails the build, not the node).
fn host_services(tree: &mut Tree, profile: &Profile) -> Result<()> {
    if profile.services.is_empty() {
        return Ok(());
    }
    let mut out =
        String::from("# [[services]] of the profile: name program args (stage 2 runs each)\n");
    for (i, s) in profile.services.iter().enumerate() {
        let prog = s.command.first().map(String::as_str).unwrap_or_default();
        let found = tree
            .get_follow(prog.trim_start_matches('/'))
            .is_some_and(|e| e.data().is_some());
        anyhow::ensure!(
            found,
            "services[{i}] ({}): {prog} is not in the image: add the Debian package that \
             provides it to debian.packages",
            s.name
        );
        out.push_str(&format!("{} {}\n", s.name, s.command.join(" ")));
    }
    tree.insert_file(SERVICES_FILE, out, 0o644)?;
    Ok(())
}

/// Where the image keeps `node/ssh.sh`; stage 2 starts SSH only when it is there.
pub const SSH_SCRIPT: &str = "usr/lib/labimg/ssh.sh";

/// The SSH server's programs, from [`crate::profile::SSH_PACKAGE`].
pub const SSH_PROGRAMS: &[&str] = &["usr/sbin/dropbear", "usr/bin/dropbearkey"];

/// With authorized keys in the profile: installs [`SSH_SCRIPT`], after checking the
/// SSH package put its programs in the image. Without: nothing (no SSH server).
fn ssh_server(tree: &mut Tree, profile: &Profile) -> Result<()> {
    if !profile.ssh_enabled() {
        return Ok(());
    }
    for p in SSH_PROGRAMS {
        anyhow::ensure!(
            tree.get_follow(p).is_some_and(|e| e.data().is_some()),
            "the profile has SSH keys but /{p} is not in the image (Debian package {})",
            crate::profile::SSH_PACKAGE
        );
    }
    tree.insert_file(SSH_SCRIPT, node_files::SSH, 0o644)?;
    Ok(())
}

/// Where the image keeps `node/statecrypt.sh`; stage 2 encrypts STATE and seals its key
/// to the TPM only when it is there (`[secure-boot] tpm-seal-state`).
pub const STATECRYPT_SCRIPT: &str = "usr/lib/labimg/statecrypt.sh";

/// Debian packages for [`STATECRYPT_SCRIPT`]: `cryptsetup` (cryptsetup-bin, without the
/// initramfs and crypttab scripts of `cryptsetup`) and tpm2-tools, whose loader
/// (libtss2-tctildr0t64) depends on the /dev/tpmrm0 TCTI it dlopens
/// (libtss2-tcti-device0t64). tpm2-tools pulls udev through tpm-udev, and udev asks for
/// `systemd | systemd-standalone-sysusers`: naming the small one keeps all of systemd,
/// and util-linux's `mount` (which would take the place of busybox's in stage 2), out.
pub const STATECRYPT_PACKAGES: &[&str] = &[
    "cryptsetup-bin",
    "tpm2-tools",
    "systemd-standalone-sysusers",
];

/// What statecrypt.sh runs, checked in the image at build time. The TCTI library is
/// loaded with dlopen, which no dependency check sees.
pub const STATECRYPT_FILES: &[&str] = &[
    "usr/sbin/cryptsetup",
    "usr/bin/tpm2_getrandom",
    "usr/bin/tpm2_createprimary",
    "usr/bin/tpm2_startauthsession",
    "usr/bin/tpm2_policypcr",
    "usr/bin/tpm2_create",
    "usr/bin/tpm2_load",
    "usr/bin/tpm2_unseal",
    "usr/bin/tpm2_flushcontext",
    "usr/bin/tpm2_pcrread",
];

/// Modules statecrypt.sh needs before STATE is opened: dm-crypt and the XTS mode of
/// LUKS2's default cipher (aes-xts-plain64; AES itself is built into Debian's kernels),
/// AF_ALG's skcipher (cryptsetup decrypts its keyslots through it), efivarfs (the
/// SecureBoot variable) and the TPM drivers (built in on linux-image-cloud-amd64;
/// built-ins are left out of the list).
pub const STATECRYPT_MODULES: &[&str] = &[
    "dm_crypt",
    "xts",
    "algif_skcipher",
    "efivarfs",
    "tpm_tis",
    "tpm_crb",
];

/// With `[secure-boot] tpm-seal-state`: installs [`STATECRYPT_SCRIPT`], after checking
/// [`STATECRYPT_FILES`] and the device TCTI are in the image. Without: nothing.
fn state_crypt(tree: &mut Tree, profile: &Profile) -> Result<()> {
    if !profile.secure_boot.tpm_seal_state {
        return Ok(());
    }
    for p in STATECRYPT_FILES {
        anyhow::ensure!(
            tree.get_follow(p).is_some_and(|e| e.data().is_some()),
            "secure-boot.tpm-seal-state: /{p} is not in the image (Debian packages {})",
            STATECRYPT_PACKAGES.join(", ")
        );
    }
    let tcti = tree.iter().any(|(p, e)| {
        e.data().is_some()
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libtss2-tcti-device.so"))
    });
    anyhow::ensure!(
        tcti,
        "secure-boot.tpm-seal-state: libtss2-tcti-device.so (Debian libtss2-tcti-device0t64), \
         which tpm2-tools loads to reach /dev/tpmrm0, is not in the image"
    );
    tree.insert_file(STATECRYPT_SCRIPT, node_files::STATECRYPT, 0o644)?;
    Ok(())
}

fn node_os(tree: &mut Tree, nodes: &NodeTable) -> Result<usize> {
    use node_files::*;
    tree.insert_file("usr/lib/labimg/init", STAGE2, 0o755)?;
    tree.insert_file("usr/lib/labimg/common.sh", COMMON, 0o644)?;
    tree.insert_file("usr/lib/labimg/udhcpc.script", UDHCPC_SCRIPT, 0o755)?;
    tree.insert_file("usr/lib/labimg/upgrade", UPGRADE, 0o755)?;
    tree.insert_file("usr/lib/labimg/logship.sh", LOGSHIP, 0o644)?;
    tree.insert_symlink("usr/sbin/labimg-upgrade", "../lib/labimg/upgrade")?;
    tree.insert_symlink("usr/sbin/init", "../lib/labimg/init")?;
    tree.insert_file("usr/lib/labimg/nodes/index", nodes.index.clone(), 0o644)?;
    for d in &nodes.dirs {
        for (path, (data, mode)) in &d.files {
            tree.insert_file(
                format!("usr/lib/labimg/nodes/{}/{path}", d.hostname),
                data.clone(),
                *mode,
            )?;
        }
    }
    Ok(nodes.dirs.len())
}

/// Modules every node loads before k3s starts: what k3s's containerd and
/// kubelet need (overlayfs, bridge netfilter, conntrack and NAT) and what
/// Cilium's datapath uses (BPF classifiers, tunnels, the iptables matches of its
/// proxy and masquerading rules). Keep in step with `builder/node/README.md`.
pub const RUNTIME_MODULES: &[&str] = &[
    "overlay",
    "br_netfilter",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "ip6table_raw",
    "xt_conntrack",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_socket",
    "xt_TPROXY",
    "xt_CT",
    "xt_set",
    // kube-proxy's iptables rules (its iptables-restore is all or nothing).
    "xt_addrtype",
    "xt_multiport",
    "xt_statistic",
    "xt_physdev",
    "xt_nat",
    "ipt_REJECT",
    "ip6t_REJECT",
    "ip_set",
    "vxlan",
    "geneve",
    "veth",
    "cls_bpf",
    "sch_ingress",
];

/// Modules for the power button, loaded where the kernel has them: `evdev` gives
/// busybox `acpid` its `/dev/input/event*`, `button` is the ACPI power button (x86,
/// Proxmox's Shutdown), `gpio_keys` the device-tree one (Pi 5, QEMU `virt`). Missing
/// ones are left out (a kernel may build them in, or lack a board's driver).
pub const POWER_BUTTON_MODULES: &[&str] = &["evdev", "button", "gpio_keys"];

/// Kernel parameters every node gets before k3s starts; the profile's
/// `kernel.sysctls` override them. Forwarding and bridge netfilter are what
/// pod networking needs; the panic and overcommit values are the ones kubelet
/// checks with `protect-kernel-defaults`; the inotify limits keep many pods
/// from running out of watches. Keep in step with `builder/node/README.md`.
pub const DEFAULT_SYSCTLS: &[(&str, &str)] = &[
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.inotify.max_user_watches", "524288"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    // Cilium's sysctlfix would write these for its interfaces into /etc/sysctl.d,
    // a tmpfs here that nothing applies: labimg sets them and turns sysctlfix off.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];

/// Drops the kernel package's device trees the board does not boot with
/// ([`crate::target::Target::keeps_dtb`]) from `usr/lib/modules/<v>/dtb/`, and the
/// folders left empty. Debian's arm64 kernel ships every arm64 board's; a Pi 5 keeps
/// its own `broadcom/bcm2712*.dtb`, which the boot partition copies.
fn device_trees(tree: &mut Tree, profile: &Profile, kernel_version: &str) -> Result<()> {
    let dir = PathBuf::from(format!("usr/lib/modules/{kernel_version}/dtb"));
    if !tree.get(&dir).is_some_and(|e| e.is_dir()) {
        return Ok(());
    }
    let target = crate::target::for_profile(profile)?;
    let mut drop: Vec<PathBuf> = Vec::new();
    let mut kept_dirs: std::collections::BTreeSet<PathBuf> = Default::default();
    let (mut dropped, mut bytes) = (0usize, 0u64);
    for (path, e) in tree.iter() {
        let Ok(rel) = path.strip_prefix(&dir) else {
            continue;
        };
        if rel.as_os_str().is_empty() || e.is_dir() {
            continue;
        }
        if target.keeps_dtb(rel) {
            kept_dirs.extend(path.ancestors().skip(1).map(Path::to_path_buf));
        } else {
            dropped += 1;
            bytes += e.data().map_or(0, |d| d.len() as u64);
            drop.push(path.to_path_buf());
        }
    }
    let empty_dirs: Vec<PathBuf> = tree
        .iter()
        .filter(|(p, e)| e.is_dir() && p.starts_with(&dir) && !kept_dirs.contains(*p))
        .map(|(p, _)| p.to_path_buf())
        .collect();
    for p in drop.iter().chain(&empty_dirs) {
        tree.remove(p)?;
    }
    if dropped > 0 {
        tracing::info!(
            "device trees: dropped {dropped} files ({:.1} MB) the {} board does not boot with",
            bytes as f64 / 1e6,
            target.name()
        );
    }
    Ok(())
}

/// `kernel.module-set`: with `"node"`, drops from `tree` every module outside the node
/// set ([`KernelModules::select_node`]), keeping what the initramfs, stage 2 and the
/// profile name and what cluster software loads ([`NODE_NEEDS`]); with `"full"`, keeps
/// all. Returns what `manifest.json` records.
fn module_set(
    tree: &mut Tree,
    profile: &Profile,
    modules: &mut KernelModules,
    info: &std::collections::BTreeMap<String, ModInfo>,
) -> Result<RootModules> {
    let total = modules.len();
    let set = profile.kernel.module_set;
    if set == ModuleSet::Node {
        let target = crate::target::for_profile(profile)?;
        let mut needs = crate::target::initramfs_modules(target.as_ref(), profile);
        needs.push(Need::new(
            "labimg's k3s and Cilium modules (rootfs::RUNTIME_MODULES)",
            RUNTIME_MODULES,
        ));
        // Where the kernel has them, as stage 2 loads them.
        let buttons: Vec<&str> = POWER_BUTTON_MODULES
            .iter()
            .copied()
            .filter(|m| modules.paths().contains_key(*m))
            .collect();
        needs.push(Need::new("the power button", &buttons));
        if profile.secure_boot.tpm_seal_state {
            needs.push(Need::new("secure-boot.tpm-seal-state", STATECRYPT_MODULES));
        }
        needs.push(Need::new("kernel.load", &profile.kernel.load));
        for (what, names) in NODE_NEEDS {
            needs.push(Need::new(
                format!("what {what} loads (kmod::NODE_NEEDS)"),
                names,
            ));
        }
        let keep = modules.select_node(info, &needs)?;
        modules.retain(tree, &keep)?;
    }
    Ok(RootModules {
        set: set.as_str().to_owned(),
        count: modules.len(),
        bytes: modules.stored_bytes(tree),
        dropped: total - modules.len(),
    })
}

/// Writes what stage 2 applies before k3s starts: `usr/lib/labimg/modules-load`
/// (one module a line, built-ins left out), the part of it stage 2 loads first
/// (`modules-load.early`), and `usr/lib/labimg/sysctl.conf`.
/// Every module name is checked against the kernel package here, so a typo in
/// `kernel.load` fails the build instead of a node's boot. Returns the list.
fn kernel_runtime(
    tree: &mut Tree,
    profile: &Profile,
    modules: &KernelModules,
) -> Result<Vec<String>> {
    let defaults: Vec<String> = RUNTIME_MODULES.iter().map(|m| m.to_string()).collect();
    let mut load = modules
        .loadable(&defaults)
        .context("the kernel lacks a module k3s or Cilium needs")?;
    // What stage 2 needs before it goes on (acpid's input devices, STATE's dm-crypt):
    // loaded at once, the rest of the list in the background until k3s's config.
    let mut early: Vec<String> = Vec::new();
    for m in POWER_BUTTON_MODULES {
        early.extend(modules.loadable(&[m.to_string()]).unwrap_or_default());
    }
    if profile.secure_boot.tpm_seal_state {
        let wanted: Vec<String> = STATECRYPT_MODULES.iter().map(|m| m.to_string()).collect();
        early.extend(
            modules
                .loadable(&wanted)
                .context("the kernel lacks a module secure-boot.tpm-seal-state needs")?,
        );
    }
    for name in &early {
        if !load.contains(name) {
            load.push(name.clone());
        }
    }
    for name in modules
        .loadable(&profile.kernel.load)
        .context("kernel.load")?
    {
        if !load.contains(&name) {
            load.push(name);
        }
    }
    let mut list = load.join("\n");
    list.push('\n');
    tree.insert_file("usr/lib/labimg/modules-load", list, 0o644)?;
    let mut list = early.join("\n");
    list.push('\n');
    tree.insert_file("usr/lib/labimg/modules-load.early", list, 0o644)?;

    let mut sysctls: std::collections::BTreeMap<String, String> = DEFAULT_SYSCTLS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &profile.kernel.sysctls {
        sysctls.insert(k.clone(), v.to_string());
    }
    let conf: String = sysctls
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    tree.insert_file("usr/lib/labimg/sysctl.conf", conf, 0o644)?;
    Ok(load)
}

/// Where the image keeps `k3s.airgap-images`; stage 2 links them into
/// `/var/lib/rancher/k3s/agent/images/`, where K3s imports them.
pub const AIRGAP_DIR: &str = "usr/lib/labimg/airgap-images";

/// Copies every `k3s.airgap-images` archive into [`AIRGAP_DIR`], checking its pin.
fn airgap_images(tree: &mut Tree, profile: &Profile, render: &RenderOptions) -> Result<()> {
    for (i, a) in profile.k3s.airgap_images.iter().enumerate() {
        let path = render.base_dir.join(&a.path);
        let data = std::fs::read(&path)
            .with_context(|| format!("k3s.airgap-images[{i}]: reading {}", path.display()))?;
        let actual = hex::encode(sha2::Sha256::digest(&data));
        anyhow::ensure!(
            actual.eq_ignore_ascii_case(a.sha256.trim()),
            "k3s.airgap-images[{i}]: {} has sha256 {actual}, the profile pins {}: \
             a different or tampered archive",
            path.display(),
            a.sha256
        );
        tree.insert_file(format!("{AIRGAP_DIR}/{}", a.file_name()), data, 0o644)?;
    }
    Ok(())
}

/// The image's profile name and build time, for the upgrade agent.
pub const RELEASE_FILE: &str = "usr/lib/labimg/release";

/// `/usr/lib/labimg/release`: `PROFILE=` and `SOURCE_DATE_EPOCH=`, and with
/// `[secure-boot]` `SECURE_BOOT=1` and `TPM_SEAL_STATE=1` (only when set, so images
/// without Secure Boot stay as they were).
pub fn release_text(profile: &Profile, epoch: u64) -> String {
    let mut s = format!("PROFILE={}\nSOURCE_DATE_EPOCH={epoch}\n", profile.name);
    if profile.secure_boot.enabled {
        s.push_str("SECURE_BOOT=1\n");
    }
    if profile.secure_boot.tpm_seal_state {
        s.push_str("TPM_SEAL_STATE=1\n");
    }
    s
}

/// Where the image keeps `upgrade.public-key` for the upgrade agent.
pub const UPGRADE_KEY: &str = "usr/lib/labimg/upgrade.pub";

/// Builds the root tree: packages, node OS, node table, k3s. `nodes` is the node
/// table as a shared image may hold it ([`NodeTable::for_destination`]).
pub fn assemble_rootfs(
    profile: &Profile,
    kernel: &[FetchedPackage],
    packages: &[FetchedPackage],
    k3s: K3sBinary,
    nodes: &NodeTable,
    render: &RenderOptions,
    epoch: u64,
) -> Result<Rootfs> {
    let mut tree = Tree::new();
    merged_usr(&mut tree, profile.target.arch.as_str())?;
    unpack(&mut tree, packages)?;
    unpack(&mut tree, kernel)?;
    let (kernel_version, kernel_image) = take_kernel(&mut tree)?;
    crate::kconfig::check_tree(&tree, &kernel_version)?;
    for p in PRUNE {
        tree.remove(p)?;
    }
    device_trees(&mut tree, profile, &kernel_version)?;
    let applets = install_busybox_links(&mut tree)?;
    let certs = ca_bundle(&mut tree)?;
    etc_files(&mut tree, profile)?;
    host_layout(&mut tree)?;
    let nodes = node_os(&mut tree, nodes)?;
    let mut modules = KernelModules::find(&tree)?;
    let info = modules
        .modinfo(&tree)
        .context("reading the modules' .modinfo")?;
    let mut module_record = module_set(&mut tree, profile, &mut modules, &info)?;
    let load = kernel_runtime(&mut tree, profile, &modules)?;
    // Loaded at every boot: stored plain, busybox modprobe no longer unpacks xz each time.
    modules.store_plain(&mut tree, &load)?;
    module_record.bytes = modules.stored_bytes(&tree);
    let index = modules.render_index(&info);
    tree.insert_file(modules.dir.join("modules.dep"), index.dep, 0o644)?;
    tree.insert_file(modules.dir.join("modules.alias"), index.alias, 0o644)?;
    tree.insert_file(modules.dir.join("modules.softdep"), index.softdep, 0o644)?;
    // What the upgrade agent compares a bundle's profile and build time with.
    tree.insert_file(RELEASE_FILE, release_text(profile, epoch), 0o644)?;
    airgap_images(&mut tree, profile, render)?;
    host_services(&mut tree, profile)?;
    ssh_server(&mut tree, profile)?;
    state_crypt(&mut tree, profile)?;
    if let Some(key) = &profile.upgrade.public_key {
        // minisign's .pub format; the upgrade agent verifies bundles with it.
        let text = format!("untrusted comment: labimg upgrade key\n{}\n", key.trim());
        tree.insert_file(UPGRADE_KEY, text, 0o644)?;
    }
    if let K3sBinary::Baked(path) = k3s {
        let data = std::fs::read(path)
            .with_context(|| format!("reading the k3s binary {}", path.display()))?;
        tree.insert_file("usr/local/bin/k3s", data, 0o755)?;
    }
    for (_, e) in tree.iter_mut() {
        e.uid = 0;
        e.gid = 0;
    }
    tree.set_all_mtimes(epoch);
    tracing::info!(
        "root tree: {} paths, {} MiB, kernel {kernel_version} ({} modules, {} MiB, module-set {}), {applets} busybox applets, {certs} CA certificates, {nodes} nodes",
        tree.len(),
        tree.file_bytes() >> 20,
        module_record.count,
        module_record.bytes >> 20,
        module_record.set
    );
    Ok(Rootfs {
        tree,
        kernel: kernel_image,
        kernel_version,
        modules: module_record,
    })
}

/// Takes the kernel image out of the tree (it goes to the boot partition and
/// netboot artifacts): `/boot/vmlinuz-<version>` up to Debian's 6.x kernels,
/// `/usr/lib/modules/<version>/vmlinuz` in the 7.x packaging. Drops `/boot`.
fn take_kernel(tree: &mut Tree) -> Result<(String, Vec<u8>)> {
    let file = |e: &Entry| match &e.kind {
        Kind::File(d) => Some(d.to_vec()),
        _ => None,
    };
    let mut found: Vec<(String, Vec<u8>)> = tree
        .children("boot")
        .filter_map(|(p, e)| {
            let version = p.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
            Some((version.to_owned(), file(e)?))
        })
        .collect();
    if found.is_empty() {
        let versions: Vec<String> = tree
            .children("usr/lib/modules")
            .filter_map(|(p, _)| Some(p.file_name()?.to_str()?.to_owned()))
            .collect();
        for v in versions {
            let path = format!("usr/lib/modules/{v}/vmlinuz");
            if let Some(data) = tree.get(&path).and_then(file) {
                tree.remove(&path)?;
                found.push((v, data));
            }
        }
    }
    let [(version, image)] = found.as_slice() else {
        anyhow::bail!(
            "expected one /boot/vmlinuz-* from the kernel package, found {}",
            found.len()
        );
    };
    let out = (version.clone(), image.clone());
    // The build configuration stays, where newer Debian kernels keep it (kconfig.rs
    // checks it; tools on the node find it beside the modules).
    let config = format!("boot/config-{version}");
    let kept = format!("usr/lib/modules/{version}/config");
    if let Some(data) = tree.get(&config).and_then(file)
        && !tree.contains(&kept)
    {
        tree.insert_file(&kept, data, 0o644)?;
    }
    tree.remove("boot")?;
    tree.mkdir_all("boot")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_table_is_read_from_the_binary() {
        let bin = b"\x7fELF junk\0more[\0[[\0acpid\0ash\0cat\0zcat\0\0trailing";
        assert_eq!(
            busybox_applets(bin),
            ["[", "[[", "acpid", "ash", "cat", "zcat"]
        );
        assert!(busybox_applets(b"no table here").is_empty());
    }

    /// The smallest buildable profile (name `s`), for the tests below to extend.
    const MINIMAL: &str = r#"name = "s"
[target]
arch = "amd64"
board = "proxmox"
[k3s]
version = "v1.36.4+k3s1"
sha256.amd64 = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"
"#;

    fn services_profile(dir: &Path, services: &str) -> Result<Profile, String> {
        let text = format!("{MINIMAL}{services}");
        std::fs::write(dir.join("s.toml"), text).unwrap();
        crate::profile::load("s", dir, &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn services_are_checked_in_the_profile_and_against_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let e = services_profile(
            dir.path(),
            "[[services]]\nname = \"Bad Name\"\ncommand = [\"iscsid\", \"-f x\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("services[0].name"), "{e}");
        assert!(e.contains("must be an absolute path"), "{e}");
        assert!(e.contains("holds whitespace"), "{e}");

        let p = services_profile(
            dir.path(),
            "[[services]]\nname = \"iscsid\"\ncommand = [\"/usr/sbin/iscsid\", \"-f\"]\n",
        )
        .unwrap();
        let mut tree = Tree::new();
        let e = host_services(&mut tree, &p).unwrap_err().to_string();
        assert!(e.contains("/usr/sbin/iscsid is not in the image"), "{e}");
        tree.insert_file("usr/sbin/iscsid", b"\x7fELF".to_vec(), 0o755)
            .unwrap();
        host_services(&mut tree, &p).unwrap();
        let written = tree.get(SERVICES_FILE).and_then(|e| e.data()).unwrap();
        assert!(
            String::from_utf8_lossy(written).ends_with("iscsid /usr/sbin/iscsid -f\n"),
            "{}",
            String::from_utf8_lossy(written)
        );
    }

    #[test]
    fn statecrypt_is_installed_only_with_tpm_seal_state_and_its_tools() {
        let dir = tempfile::tempdir().unwrap();
        let plain = services_profile(dir.path(), "").unwrap();
        let mut tree = Tree::new();
        state_crypt(&mut tree, &plain).unwrap();
        assert!(!tree.contains(STATECRYPT_SCRIPT));

        let sealed = services_profile(
            dir.path(),
            "[secure-boot]\nenabled = true\ntpm-seal-state = true\n",
        )
        .unwrap();
        let e = state_crypt(&mut tree, &sealed).unwrap_err().to_string();
        assert!(
            e.contains("/usr/sbin/cryptsetup is not in the image"),
            "{e}"
        );
        for p in STATECRYPT_FILES {
            tree.insert_file(p, b"\x7fELF".to_vec(), 0o755).unwrap();
        }
        let e = state_crypt(&mut tree, &sealed).unwrap_err().to_string();
        assert!(e.contains("libtss2-tcti-device.so"), "{e}");
        tree.insert_file(
            "usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0.0.0",
            b"\x7fELF".to_vec(),
            0o644,
        )
        .unwrap();
        state_crypt(&mut tree, &sealed).unwrap();
        let script = tree.get(STATECRYPT_SCRIPT).and_then(|e| e.data()).unwrap();
        assert_eq!(script, node_files::STATECRYPT.as_bytes());
    }

    #[test]
    fn a_pi_root_keeps_only_its_own_device_trees() {
        let dir = tempfile::tempdir().unwrap();
        let v = "7.3.4+deb13-arm64";
        let dtb = format!("usr/lib/modules/{v}/dtb");
        let files = [
            "broadcom/bcm2712-rpi-5-b.dtb",
            "broadcom/bcm2712-d-rpi-5-b.dtb",
            "broadcom/bcm2711-rpi-4-b.dtb",
            "overlays/a.dtbo",
            "rockchip/rk3588-rock-5b.dtb",
            "rockchip/overlay/x.dtbo",
        ];
        let tree_with_dtbs = || {
            let mut tree = Tree::new();
            for f in files {
                tree.insert_file(format!("{dtb}/{f}"), vec![7u8; 100], 0o644)
                    .unwrap();
            }
            tree
        };
        let kept = |tree: &Tree| -> Vec<String> {
            files
                .iter()
                .filter(|f| tree.contains(format!("{dtb}/{f}")))
                .map(|f| f.to_string())
                .collect()
        };

        let text = MINIMAL
            .replace(
                "arch = \"amd64\"\nboard = \"proxmox\"",
                "arch = \"arm64\"\nboard = \"rpi5\"",
            )
            .replace("sha256.amd64", "sha256.arm64")
            + "[debian]\nsuites = [\"trixie\", \"trixie-backports\"]\n";
        std::fs::write(dir.path().join("s.toml"), text).unwrap();
        let pi = crate::profile::load("s", dir.path(), &[]).unwrap();
        let mut tree = tree_with_dtbs();
        device_trees(&mut tree, &pi, v).unwrap();
        assert_eq!(
            kept(&tree),
            [
                "broadcom/bcm2712-rpi-5-b.dtb",
                "broadcom/bcm2712-d-rpi-5-b.dtb",
                "overlays/a.dtbo"
            ]
        );
        // Folders left empty go too; the kept ones stay.
        assert!(!tree.contains(format!("{dtb}/rockchip")));
        assert!(tree.contains(format!("{dtb}/broadcom")));

        // Another board (no keeps_dtb of its own) keeps every one.
        std::fs::write(dir.path().join("s.toml"), MINIMAL).unwrap();
        let pve = crate::profile::load("s", dir.path(), &[]).unwrap();
        let mut tree = tree_with_dtbs();
        device_trees(&mut tree, &pve, v).unwrap();
        assert_eq!(kept(&tree).len(), files.len());
    }

    /// A profile with one air-gap archive at `path` pinned to `sha256`.
    fn airgap_profile(dir: &Path, sha256: &str) -> Profile {
        let text = format!(
            "{MINIMAL}[[k3s.airgap-images]]\npath = \"images/cilium.tar.zst\"\nsha256 = \"{sha256}\"\n"
        );
        std::fs::write(dir.join("s.toml"), text).unwrap();
        crate::profile::load("s", dir, &[]).unwrap()
    }

    #[test]
    fn airgap_archives_are_copied_only_when_they_match_their_pin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        let data = b"archive bytes".to_vec();
        std::fs::write(dir.path().join("images/cilium.tar.zst"), &data).unwrap();
        let render = RenderOptions {
            base_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let good = hex::encode(sha2::Sha256::digest(&data));

        let mut tree = Tree::new();
        airgap_images(&mut tree, &airgap_profile(dir.path(), &good), &render).unwrap();
        let copied = tree.get(format!("{AIRGAP_DIR}/cilium.tar.zst")).unwrap();
        assert_eq!(copied.data().unwrap(), &data[..]);

        let mut tree = Tree::new();
        let wrong = "0".repeat(64);
        let err = airgap_images(&mut tree, &airgap_profile(dir.path(), &wrong), &render)
            .unwrap_err()
            .to_string();
        assert!(err.contains("k3s.airgap-images[0]"), "{err}");
        assert!(err.contains(&good) && err.contains(&wrong), "{err}");
        assert!(!tree.contains(format!("{AIRGAP_DIR}/cilium.tar.zst")));
    }
}
