//! The profile's typed model: one struct per TOML table, documented field by field.
//!
//! The `///` comments here are the reference documentation: they flow into the JSON
//! schema (`profiles/profile.schema.json`) and into `profiles/REFERENCE.md`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::cluster::{
    Cluster, Cni, CniKind, Datastore, Gitops, GitopsEngine, HelmChart, IMAGE_ARCHIVE_SUFFIXES,
    ImageArchive, K3s, K3sComponent, K3sSha256, Node, Role, SecretSource, UnknownNodes,
};
pub use super::size::Size;

/// A node image profile: everything needed to bake one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "labimg profile")]
pub struct Profile {
    /// Image name; it names the output folder `images/<name>/` and the artifacts in it.
    pub name: String,
    /// One line saying what this profile is for (shown by `labimg profile list`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Parent profile this one is layered on, as a path relative to this file
    /// (for example `"base.toml"`). Tables merge key by key; scalars and arrays
    /// replace the parent's. Absent from a resolved profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// The hardware the image boots on.
    pub target: Target,
    /// Where the node's Debian packages come from.
    #[serde(default)]
    pub debian: Debian,
    /// The kernel package and what its initramfs must carry.
    #[serde(default)]
    pub kernel: Kernel,
    /// The K3s release and its configuration.
    pub k3s: K3s,
    /// Cluster-wide identity: name, API endpoint, join token.
    #[serde(default)]
    pub cluster: Cluster,
    /// The CNI installed by K3s's helm controller.
    #[serde(default)]
    pub cni: Cni,
    /// GitOps bootstrap: which engine and which repository it syncs.
    #[serde(default)]
    pub gitops: Gitops,
    /// The nodes this image knows by MAC or Pi serial (an embedded node table).
    /// May be empty when nodes get their identity from the netboot server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
    /// Disk image geometry.
    #[serde(default)]
    pub disk: Disk,
    /// What a node booted over the network keeps, and where.
    #[serde(default, skip_serializing_if = "Netboot::is_unset")]
    pub netboot: Netboot,
    /// How nodes set their clock.
    #[serde(default, skip_serializing_if = "Time::is_unset")]
    pub time: Time,
    /// What the build writes.
    #[serde(default)]
    pub outputs: Outputs,
    /// Raspberry Pi boot settings; only valid with `target.board = "rpi5"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpi: Option<Rpi>,
    /// Where nodes look for A/B upgrades and which key they must be signed with.
    #[serde(default, skip_serializing_if = "Upgrade::is_unset")]
    pub upgrade: Upgrade,
    /// Host daemons the node runs beside k3s (labimg's answer to Talos' system
    /// extensions): for example Longhorn's `iscsid`. Install their Debian packages
    /// with `debian.packages`; each is started before k3s, restarted with back-off
    /// (1 s doubling to 60 s) when it exits, and logs into the node's rotated log
    /// on STATE (`/var/log/labimg/messages`, tagged `<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// SSH access to the nodes, for their operator (none without keys).
    #[serde(default, skip_serializing_if = "Ssh::is_unset")]
    pub ssh: Ssh,
    /// UEFI Secure Boot with signed Unified Kernel Images (`proxmox` only).
    #[serde(default, skip_serializing_if = "SecureBoot::is_unset")]
    pub secure_boot: SecureBoot,
}

/// `[ssh]`: who may log in to the nodes with SSH. With no key here and none in any
/// `nodes[].ssh-authorized-keys`, the image has no SSH server at all. With keys, the
/// image carries Debian's `dropbear-bin` (chosen over openssh-server: one small
/// binary and its key tool, no PAM, no systemd units, no configuration to keep in
/// `/etc`, and it takes the authorized keys from a folder of our choosing, so root's
/// home stays on the read-only root). Every node that has a key runs it on port 22
/// for `root` (the node's only user), key-only: password logins are off. Host keys
/// (Ed25519 and ECDSA) are made on the node's first boot and kept on STATE; the console
/// prints their fingerprints (`labimg: ssh ready port=22 keys=1
/// ssh-ed25519=SHA256:… ecdsa-sha2-nistp256=SHA256:… host-keys=created`) so the first
/// connection can be checked against what `ssh` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ssh {
    /// Public keys allowed to log in as `root` on every node: OpenSSH public key
    /// lines as in `~/.ssh/id_ed25519.pub`, `<type> <base64> [comment]`, where the
    /// type is `ssh-ed25519`, `ecdsa-sha2-nistp256` (`384`, `521`) or `ssh-rsa`.
    /// A node's own `nodes[].ssh-authorized-keys` are added to these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
}

impl Ssh {
    /// Nothing set: the table is left out of a resolved profile.
    pub fn is_unset(&self) -> bool {
        self == &Ssh::default()
    }
}

/// The Debian package of the SSH server, added to the root packages when any node
/// has an authorized key ([`Profile::ssh_enabled`]).
pub const SSH_PACKAGE: &str = "dropbear-bin";

/// `[secure-boot]`: UEFI Secure Boot for the `proxmox` board (x86_64, OVMF). With
/// `enabled`, each root slot boots one Unified Kernel Image (systemd's EFI stub from
/// Debian's `systemd-boot-efi` with the kernel, the initramfs, the kernel command line
/// including the dm-verity root hash, `.osrel` and `.uname`) at `/EFI/Linux/labimg-<slot>.efi`,
/// and the UKIs and systemd-boot are signed with the `db` key of the folder given to
/// `labimg build --secure-boot-keys DIR` (or `LABIMG_SECURE_BOOT_KEYS`; make one with
/// `labimg secureboot keygen DIR`): the command line can no longer be changed without
/// breaking the signature. The ESP then has no Boot Loader Spec type 1 entries and no
/// loose kernel or initramfs; boot counting, blessing and rollback work as before on the
/// UKIs' names (`labimg-<slot>+<tries>.efi`), and upgrade bundles carry signed UKIs. The
/// image holds the public `db` certificate (`/usr/lib/labimg/secureboot/db.crt`) and
/// Debian's `sbsigntool`, with which the upgrade agent refuses a bundle whose UKI that
/// certificate did not sign. The ESP's `loader/loader.conf` has `secure-boot-enroll
/// if-safe` and `loader/keys/auto/` the key folder's `PK.auth`, `KEK.auth` and `db.auth`
/// when it has them: a VM whose firmware is in setup mode (Proxmox: `pre-enrolled-keys=0`)
/// has labimg's keys enrolled by systemd-boot on its first boot (automatically only in a
/// virtual machine; on bare metal it is a menu entry). Only `proxmox`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecureBoot {
    /// Build signed UKIs and a signed systemd-boot (needs `--secure-boot-keys`).
    pub enabled: bool,
    /// Encrypt STATE (LUKS2) on first boot with a key sealed to the machine's TPM2 under a
    /// policy on the Secure Boot state, so a disk moved to another machine, or booted with
    /// Secure Boot off, does not unlock. Needs `enabled`. Written to the image's
    /// `/usr/lib/labimg/release` as `TPM_SEAL_STATE=1` (with `SECURE_BOOT=1` for `enabled`).
    pub tpm_seal_state: bool,
}

impl SecureBoot {
    /// Nothing set: the table is left out of a resolved profile.
    pub fn is_unset(&self) -> bool {
        self == &SecureBoot::default()
    }
}

/// Debian's Authenticode tools, added to the root packages with
/// `secure-boot.enabled`: the upgrade agent checks a bundle's UKI with `sbverify`.
pub const SECURE_BOOT_PACKAGE: &str = "sbsigntool";

impl Profile {
    /// Whether the image carries an SSH server: some key in `ssh.authorized-keys` or
    /// in a node's `ssh-authorized-keys`.
    pub fn ssh_enabled(&self) -> bool {
        !self.ssh.authorized_keys.is_empty()
            || self.nodes.iter().any(|n| !n.ssh_authorized_keys.is_empty())
    }

    /// The keys that may log in to `node`: the cluster's, then the node's own, each
    /// once, trimmed.
    pub fn ssh_authorized_keys(&self, node: &Node) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for k in self
            .ssh
            .authorized_keys
            .iter()
            .chain(&node.ssh_authorized_keys)
        {
            let k = k.trim().to_owned();
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }
}

/// `[[services]]`: one daemon supervised beside k3s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Service {
    /// Name (lowercase letters, digits, `-`), unique: it names the console milestones
    /// (`labimg: service started name=<name>`) and the log file.
    pub name: String,
    /// The program (an absolute path in the image, checked at build time) and its
    /// arguments (no spaces inside one). It must stay in the foreground, for example
    /// `["/usr/sbin/iscsid", "-f"]`.
    pub command: Vec<String>,
}

/// `[upgrade]`: how nodes find and trust A/B upgrade bundles (the design is in
/// `builder/node/README.md`, "Upgrades").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Upgrade {
    /// Where nodes look for a newer image at every boot: the HTTP URL of a
    /// `labimg build` output folder, for example
    /// `http://10.0.0.2:8080/bundles/proxmox` from `labimg serve`, or a static
    /// server publishing that folder's `upgrade.json`, `upgrade.env`, `SHA256SUMS(.minisig)` and
    /// `netboot/` (never `nodes/`). Becomes `labimg.upgrade=` on the kernel command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// minisign public key, the base64 line of a `.pub` file from `labimg keygen`.
    /// Nodes then stage only bundles whose `SHA256SUMS.minisig` verifies with it
    /// (`labimg build --sign-key` or `labimg sign`) and whose `upgrade.env` matches
    /// the signed `SHA256SUMS`; the image carries Debian's `minisign` to check.
    /// Without it a bundle is trusted as served, with a warning on every upgrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

impl Upgrade {
    /// Nothing set: the table is left out of a resolved profile.
    pub fn is_unset(&self) -> bool {
        self == &Upgrade::default()
    }
}

/// CPU architecture of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// x86_64.
    Amd64,
    /// aarch64.
    Arm64,
}

/// The board family: decides partition layout, boot files and kernel arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Board {
    /// Proxmox (or any QEMU/KVM) virtual machine booting with UEFI (OVMF).
    Proxmox,
    /// Raspberry Pi 5.
    Rpi5,
}

/// `[target]`: the hardware the image boots on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Target {
    /// CPU architecture; must match the board (`rpi5` is `arm64`, `proxmox` is `amd64`).
    pub arch: Arch,
    /// Board family.
    pub board: Board,
    /// Serial console for kernel and init output, as in `console=`. Default per board:
    /// `ttyS0` for proxmox, `ttyAMA10,115200` for rpi5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

/// `[debian]`: where the node's packages come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Debian {
    /// Debian mirror URL.
    pub mirror: String,
    /// Suites to read, in order of preference (for example `["trixie", "trixie-backports"]`).
    /// A package comes from the first suite that has it unless pinned with `name/suite`.
    pub suites: Vec<String>,
    /// Extra packages to install, apt style: `name`, `name/suite` or `name=version`.
    pub packages: Vec<String>,
    /// Refuse a suite whose signed `InRelease` is past its `Valid-Until` (apt's
    /// default; it stops a mirror from replaying an old release). `false` is apt's
    /// `Check-Valid-Until=no`, for air-gapped builds (`--offline`) from the copy the
    /// last online run kept and for snapshot mirrors: the signature is still
    /// required, the build warns, and `manifest.json` records the skipped check
    /// (`releases[].valid-until-check`) and why. Shown in a resolved profile only when `false`.
    #[serde(skip_serializing_if = "is_true")]
    #[schemars(extend("default" = true))]
    pub check_valid_until: bool,
}

/// For `skip_serializing_if` on keys whose default is `true`.
fn is_true(b: &bool) -> bool {
    *b
}

/// `[kernel]`: the kernel package and what its initramfs must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kernel {
    /// Kernel package, apt style (`name` or `name/suite`). Default per board:
    /// `linux-image-cloud-amd64` for proxmox, `linux-image-arm64/trixie-backports` for rpi5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Extra kernel command-line arguments, appended after labimg's own.
    pub cmdline: Vec<String>,
    /// Kernel modules the initramfs must carry and load before root is mounted
    /// (their dependencies are added automatically).
    pub modules: Vec<String>,
    /// Extra kernel modules the node loads before k3s starts (for example
    /// `["iscsi_tcp", "dm_crypt"]` for Longhorn), on top of those k3s and Cilium
    /// always get (overlay, br_netfilter, netfilter, vxlan, BPF classifiers; the
    /// list is in `builder/node/README.md`). Checked against the kernel package at
    /// build time.
    pub load: Vec<String>,
    /// Kernel parameters the node sets before k3s starts, `"name" = value`
    /// (quote names with dots: `"vm.max_map_count" = 262144`). They override
    /// labimg's defaults for Kubernetes (IP forwarding, bridge netfilter, inotify
    /// limits, kubelet's expected panic settings; listed in `builder/node/README.md`).
    pub sysctls: BTreeMap<String, SysctlValue>,
    /// Which of the kernel package's loadable modules go into the root image.
    /// Default `"full"`: every one. `"node"` keeps what a k3s node can use:
    /// modules under `kernel/` in `fs`, `net` (not wireless, Bluetooth, NFC,
    /// 802.15.4), `crypto`, `lib`, `block`, `mm`, `arch`, `virt`, and the storage,
    /// network (not wireless or WWAN), USB, PCI, VirtIO, VFIO/UIO, LIO target,
    /// bus, platform-core (clocks, pins, regulators, power), TPM, RTC, watchdog,
    /// sensor and input drivers (`builder/src/kmod/select.rs` lists the folders).
    /// Sound, GPU/DRM (the node's console is serial), media, staging, IIO,
    /// InfiniBand, Bluetooth and wireless drivers are dropped, except what a kept
    /// module depends on. Always kept, with their dependencies: the board's boot
    /// modules, `kernel.modules`, `kernel.load`, what stage 2 loads for k3s and
    /// Cilium, and what Longhorn (iSCSI, dm-crypt, NFSv4, NVMe/TCP, VFIO/UIO), the
    /// NFS client, WireGuard and Cilium (tunnels, BPF classifiers and actions,
    /// IPsec) load on demand. A name the kernel lacks is a build error naming the
    /// key it came from. `modules.dep`, `modules.alias` and `modules.softdep` list
    /// the kept modules only; `manifest.json` records the set, its module count
    /// and bytes (`root_modules`). On Raspberry Pi 5 it keeps 2670 of 4486 modules
    /// and the root image shrinks by 42 MiB (`builder/src/target/RPI5.md`,
    /// "Module set"). Shown in a resolved profile only when not `"full"`.
    #[serde(skip_serializing_if = "ModuleSet::is_full")]
    pub module_set: ModuleSet,
}

/// `kernel.module-set`: which loadable modules the root image carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleSet {
    /// Every module of the kernel package.
    #[default]
    Full,
    /// What a k3s node can load (see `kernel.module-set`).
    Node,
}

impl ModuleSet {
    /// The default: left out of a resolved profile.
    pub fn is_full(&self) -> bool {
        *self == ModuleSet::Full
    }

    /// The name a profile gives it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ModuleSet::Full => "full",
            ModuleSet::Node => "node",
        }
    }
}

/// A sysctl value: a number or a string (`"4096 87380 6291456"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SysctlValue {
    /// An integer value.
    Int(i64),
    /// Any other value, written as given.
    Text(String),
}

impl std::fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SysctlValue::Int(n) => write!(f, "{n}"),
            SysctlValue::Text(s) => f.write_str(s),
        }
    }
}

/// `[disk]`: disk image geometry. Sizes are human sizes: `"4GiB"`, `"512MiB"`, `"1G"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    /// Total size of the disk image; STATE grows to fill the real disk on first boot.
    pub size: Size,
    /// Size of each root slot (A and B).
    pub root_slot_size: Size,
    /// Size of the boot partition (ESP on proxmox, FAT boot partition on rpi5).
    pub boot_size: Size,
}

/// `[netboot]`: nodes that boot over the network (`labimg serve`, `outputs.netboot`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Netboot {
    /// The local disk a netbooted node keeps its STATE (`/var`: k3s's data, images,
    /// identity) on, created on first boot and reused like a disk-booted node's: a
    /// whole disk by its kernel name as `/sys/block` lists it (`"sda"`, `"vda"`,
    /// `"nvme0n1"`, `"mmcblk0"`; no `/dev/` and no `/dev/disk/by-*` path: the node has
    /// no udev). A node's own `state-disk` overrides it. Without one a netbooted node's
    /// `/var` is a tmpfs and it forgets everything at reboot, so a netbooted **server**
    /// without a state disk is refused at boot; an agent without one re-registers and
    /// pulls its images again after every boot. Written to the node's `node.env` as `STATE_DISK`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_disk: Option<String>,
}

/// `[time]`: where nodes get the time. Before k3s starts every node sets its clock
/// once from NTP (Debian's chrony, `chronyd -q`, waiting at most 20 s), then keeps it
/// synced with `chronyd`; the clock never starts before the image's build time or the
/// time last saved on STATE (every 10 minutes and at shutdown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Time {
    /// NTP servers (host names or IP addresses), for example `["192.168.1.1"]` or
    /// `["time.cloudflare.com"]`. Empty (the default): the servers the DHCP server
    /// offers (option 42), else `pool.ntp.org`. Written to `node.env` as `NTP_SERVERS`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

impl Time {
    /// Nothing set: the table is left out of a resolved profile.
    pub fn is_unset(&self) -> bool {
        self == &Time::default()
    }
}

impl Netboot {
    /// Nothing set: the table is left out of a resolved profile.
    pub fn is_unset(&self) -> bool {
        self == &Netboot::default()
    }
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ImageFormat {
    /// Raw disk image compressed with xz (for `dd` or the Raspberry Pi Imager).
    #[serde(rename = "raw.xz")]
    RawXz,
    /// QEMU copy-on-write image (for Proxmox `qm importdisk`).
    #[serde(rename = "qcow2")]
    Qcow2,
}

/// `[outputs]`: what the build writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Outputs {
    /// Disk image formats to write.
    pub formats: Vec<ImageFormat>,
    /// Also write netboot artifacts (`netboot/`: kernel, initramfs, root image) and the
    /// A/B upgrade bundle that reuses them (`upgrade.json`, `upgrade.env`). Never written by a build
    /// with `--embed-secrets`: `labimg serve` hands them to anyone on the LAN.
    pub netboot: bool,
    /// Output folder, instead of `images/<name>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// `[rpi]`: Raspberry Pi 5 boot settings (every key defaults to empty / off).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rpi {
    /// Extra lines appended verbatim to `config.txt`.
    pub config_txt: Vec<String>,
    /// Device tree overlays to enable (`dtoverlay=<name>` lines).
    pub dtoverlays: Vec<String>,
    /// Run the PCIe slot at Gen 3 speed (`dtparam=pciex1_gen=3`).
    pub pcie_gen3: bool,
    /// The image is meant to boot from NVMe (sets the boot order hints).
    pub nvme_boot: bool,
    /// Copy the kernel package's `overlays/` to the boot partition.
    pub overlays: bool,
}

/// A free-form table (values merged verbatim into a generated config file).
pub type FreeTable = BTreeMap<String, toml::Value>;
