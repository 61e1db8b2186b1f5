//! `kernel.module-set = "node"`: the loadable modules a k3s node keeps in its root
//! image, chosen by where the module lives in the kernel tree, plus, always, the
//! dependency closure of every module something names.
//!
//! The node has no udev: a module loads because stage 1 or stage 2 loads it, because
//! the kernel asks for it (a filesystem, protocol, netfilter or crypto name, through
//! `/sbin/modprobe` and `modules.alias`), or because a pod runs `modprobe` (Longhorn,
//! Cilium). So the kept classes are the on-demand ones (`fs`, `net`, `crypto`, `lib`)
//! and the drivers for storage, networking and the buses a node plugs things into;
//! drivers for sound, video, cameras, sensors and radios can never be used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{KernelModules, ModInfo};

/// Folders under `kernel/` whose modules the node set keeps (a module in a
/// subfolder of one is kept too, unless [`NODE_DROPPED`] names that subfolder).
pub const NODE_KEPT: &[&str] = &[
    // Loaded on demand by name: filesystems, protocols, netfilter, qdiscs, crypto.
    "arch",
    "block",
    "crypto",
    "fs",
    "lib",
    "mm",
    "net",
    "virt",
    // Storage: disks, RAID and device mapper (Longhorn, dm-verity, dm-crypt), NVMe
    // (and NVMe/TCP), SCSI and iSCSI, SD/eMMC, and LIO (`target`, an iSCSI/NVMe-oF
    // target for storage nodes: 0.5 MB).
    "drivers/ata",
    "drivers/block",
    "drivers/cdrom",
    "drivers/md",
    "drivers/mmc",
    "drivers/nvme",
    "drivers/scsi",
    "drivers/target",
    // Network (wireless and WWAN dropped below), PHYs and time stamping.
    "drivers/net",
    "drivers/phy",
    "drivers/ptp",
    "drivers/pps",
    // Buses and what devices on them need.
    "drivers/usb",
    "drivers/pci",
    "drivers/virtio",
    "drivers/vfio",
    "drivers/uio",
    "drivers/i2c",
    "drivers/spi",
    "drivers/gpio",
    "drivers/pinctrl",
    "drivers/mfd",
    "drivers/bus",
    "drivers/base",
    // Platform core: clocks, resets, regulators, interrupts, DMA, IOMMU, power.
    "drivers/clk",
    "drivers/reset",
    "drivers/regulator",
    "drivers/irqchip",
    "drivers/dma",
    "drivers/iommu",
    "drivers/mailbox",
    "drivers/soc",
    "drivers/nvmem",
    "drivers/power",
    "drivers/pmdomain",
    "drivers/cpufreq",
    "drivers/firmware",
    "drivers/acpi",
    "drivers/virt",
    "drivers/crypto",
    // TPM, hardware RNG, serial ports.
    "drivers/char",
    "drivers/tty",
    "drivers/tee",
    // Health: clock, watchdog, temperatures, fans, LEDs, keyboards and buttons.
    "drivers/rtc",
    "drivers/watchdog",
    "drivers/thermal",
    "drivers/hwmon",
    "drivers/pwm",
    "drivers/leds",
    "drivers/input",
    "drivers/hid",
];

/// Subfolders of [`NODE_KEPT`] folders the node set drops: radios a k3s node does
/// not use.
pub const NODE_DROPPED: &[&str] = &[
    "net/bluetooth",
    "net/mac80211",
    "net/wireless",
    "net/nfc",
    "net/ieee802154",
    "net/mac802154",
    "drivers/net/wireless",
    "drivers/net/wwan",
    "drivers/net/ieee802154",
];

/// What cluster software loads on demand (with `modprobe`, or the kernel for it),
/// kept whatever folder it is in. Every name must be in the kernel (or built in).
pub const NODE_NEEDS: &[(&str, &[&str])] = &[
    // Longhorn: the v1 engine's iSCSI frontend (open-iscsi), encrypted volumes,
    // RWX volumes (NFSv4), and the v2 engine's NVMe/TCP, VFIO and UIO.
    (
        "Longhorn",
        &[
            "iscsi_tcp",
            "dm_crypt",
            "dm_snapshot",
            "nfs",
            "nfsv4",
            "nvme_tcp",
            "vfio_pci",
            "uio_pci_generic",
        ],
    ),
    (
        "the NFS client",
        &[
            "nfs",
            "nfsv3",
            "nfsv4",
            "sunrpc",
            "lockd",
            "rpcsec_gss_krb5",
        ],
    ),
    ("WireGuard", &["wireguard"]),
    // Cilium: tunnels, BPF programs on tc and its qdiscs, IPsec, netfilter.
    (
        "Cilium",
        &[
            "vxlan",
            "geneve",
            "ip_tunnel",
            "ipip",
            "ip6_tunnel",
            "cls_bpf",
            "act_bpf",
            "act_mirred",
            "sch_ingress",
            "sch_fq",
            "xt_bpf",
            "xfrm_user",
            "esp4",
            "esp6",
            "nf_conntrack_netlink",
        ],
    ),
    // What the k3s stand-in's host-contract checks load: a netfilter chain by
    // alias (`nft-chain-2-nat`) and a link type on demand (`rtnl-link-dummy`).
    ("the host contract", &["nft_chain_nat", "dummy"]),
];

/// Modules that must be kept, and where their names came from (a profile key, or
/// labimg's own list), for the error when the kernel lacks one.
#[derive(Clone, Debug)]
pub struct Need {
    /// `kernel.load`, `kernel.modules`, `the rpi5 board's boot modules`, …
    pub source: String,
    pub names: Vec<String>,
}

impl Need {
    pub fn new(source: impl Into<String>, names: &[impl AsRef<str>]) -> Need {
        Need {
            source: source.into(),
            names: names.iter().map(|n| n.as_ref().to_owned()).collect(),
        }
    }
}

/// Whether a module at `rel` (relative to `/lib/modules/<kver>`) is in a kept class.
pub fn in_node_classes(rel: &Path) -> bool {
    let Ok(under) = rel.strip_prefix("kernel") else {
        return false;
    };
    NODE_KEPT.iter().any(|k| under.starts_with(k))
        && !NODE_DROPPED.iter().any(|d| under.starts_with(d))
}

impl KernelModules {
    /// The node set: every module in a kept class, every module `needs` names, and
    /// everything those depend on (`depends=`) or ask for (`softdep=`), so that
    /// `modules.dep` and `modules.softdep` name only kept modules. A name the
    /// kernel lacks is an error naming its [`Need::source`].
    pub fn select_node(
        &self,
        info: &BTreeMap<String, ModInfo>,
        needs: &[Need],
    ) -> Result<BTreeSet<String>> {
        let mut todo: Vec<String> = self
            .modules
            .iter()
            .filter(|(_, rel)| in_node_classes(rel))
            .map(|(n, _)| n.clone())
            .collect();
        for need in needs {
            let names = self.loadable(&need.names).with_context(|| {
                format!(
                    "{}: kernel.module-set = \"node\" keeps every module it names",
                    need.source
                )
            })?;
            todo.extend(names);
        }
        let mut kept = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !kept.insert(name.clone()) {
                continue;
            }
            let Some(i) = info.get(&name) else {
                bail!("module '{name}' has no .modinfo read");
            };
            for dep in &i.depends {
                if !self.modules.contains_key(dep) && !self.is_builtin(dep) {
                    bail!(
                        "module '{name}' depends on '{dep}', which kernel {} does not have",
                        self.version
                    );
                }
                todo.push(dep.clone());
            }
            // A softdep may name a built-in or absent module (modprobe skips it).
            todo.extend(i.softdep_modules().filter(|m| self.modules.contains_key(m)));
        }
        kept.retain(|n| self.modules.contains_key(n));
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Tree;

    fn module(depends: &str, extra: &str) -> Vec<u8> {
        format!("\x7fELF\0depends={depends}\0{extra}vermagic=7.3\0").into_bytes()
    }

    /// A kernel with one module per class that matters, and dependencies that
    /// cross from kept classes into dropped ones.
    fn tree() -> Tree {
        let mut t = Tree::new();
        let d = "usr/lib/modules/7.3.0-test";
        let mut add = |path: &str, depends: &str, extra: &str| {
            t.insert_file(format!("{d}/{path}"), module(depends, extra), 0o644)
                .unwrap();
        };
        add("kernel/fs/nfs/nfs.ko", "sunrpc", "alias=fs-nfs\0");
        add("kernel/net/sunrpc/sunrpc.ko", "", "");
        add(
            "kernel/net/netfilter/nft_chain_nat.ko",
            "",
            "alias=nft-chain-2-nat\0",
        );
        add(
            "kernel/drivers/net/dummy.ko",
            "",
            "alias=rtnl-link-dummy\0softdep=pre: crc32c_generic\0",
        );
        // A kept network driver whose dependency lives in a dropped folder.
        add("kernel/drivers/net/usb/cdc_ncm.ko", "media_helper", "");
        add("kernel/drivers/media/media_helper.ko", "", "");
        // A kept driver asking for a dropped-folder module by softdep.
        add(
            "kernel/drivers/hid/hid_sensor.ko",
            "",
            "softdep=pre: iio_helper\0",
        );
        add("kernel/drivers/iio/iio_helper.ko", "", "");
        add("kernel/crypto/crc32c_generic.ko", "", "");
        add("kernel/sound/core/snd.ko", "", "alias=char-major-116-*\0");
        add("kernel/drivers/gpu/drm/vc4/vc4.ko", "snd", "");
        add("kernel/drivers/staging/thing.ko", "", "");
        add("kernel/net/wireless/cfg80211.ko", "", "");
        add(
            "kernel/drivers/net/wireless/brcm/brcmfmac.ko",
            "cfg80211",
            "",
        );
        // Named by the profile although its class is dropped.
        add("kernel/drivers/media/rc/lirc_dev.ko", "media_helper", "");
        add("kernel/drivers/misc/rp1/rp1_pci.ko", "", "");
        t.insert_file(
            format!("{d}/modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
            0o644,
        )
        .unwrap();
        t
    }

    fn select(needs: &[Need]) -> Result<(KernelModules, Tree, BTreeSet<String>)> {
        let t = tree();
        let k = KernelModules::find(&t)?;
        let info = k.modinfo(&t)?;
        let kept = k.select_node(&info, needs)?;
        Ok((k, t, kept))
    }

    #[test]
    fn classes_decide_by_path_and_radios_are_dropped() {
        assert!(in_node_classes(Path::new("kernel/fs/nfs/nfs.ko.xz")));
        assert!(in_node_classes(Path::new("kernel/drivers/net/dummy.ko")));
        assert!(!in_node_classes(Path::new(
            "kernel/drivers/net/wireless/brcm/brcmfmac.ko"
        )));
        assert!(!in_node_classes(Path::new(
            "kernel/net/wireless/cfg80211.ko"
        )));
        assert!(!in_node_classes(Path::new("kernel/sound/core/snd.ko")));
        assert!(!in_node_classes(Path::new("kernel/drivers/gpu/drm/vc4.ko")));
        // A prefix of a folder name is not that folder.
        assert!(!in_node_classes(Path::new("kernel/drivers/netx/a.ko")));
        assert!(!in_node_classes(Path::new("extra/fs/a.ko")));
    }

    #[test]
    fn node_set_is_closed_under_depends_and_softdeps_and_keeps_named_needs() {
        let needs = [
            Need::new("kernel.load", &["lirc-dev", "ext4"]),
            Need::new("the rpi5 board's boot modules", &["rp1_pci"]),
        ];
        let (k, _, kept) = select(&needs).unwrap();
        let want: BTreeSet<String> = [
            "nfs",
            "sunrpc",
            "nft_chain_nat",
            "dummy",
            "crc32c_generic",
            "cdc_ncm",
            "media_helper",
            "hid_sensor",
            "iio_helper",
            "lirc_dev",
            "rp1_pci",
        ]
        .map(String::from)
        .into();
        assert_eq!(kept, want);
        // Closed: every kept module's dependencies are kept.
        let t = tree();
        let info = k.modinfo(&t).unwrap();
        for name in &kept {
            for dep in &info[name].depends {
                assert!(kept.contains(dep), "{name} needs {dep}, which was dropped");
            }
        }
    }

    #[test]
    fn retained_index_names_only_kept_modules() {
        let (mut k, mut t, kept) = select(&[]).unwrap();
        let info = k.modinfo(&t).unwrap();
        let before = k.len();
        k.retain(&mut t, &kept).unwrap();
        assert_eq!(k.len(), kept.len());
        assert!(k.len() < before);
        let d = "usr/lib/modules/7.3.0-test/kernel";
        assert!(!t.contains(format!("{d}/sound/core/snd.ko")));
        assert!(!t.contains(format!("{d}/sound")), "empty folders go too");
        assert!(t.contains(format!("{d}/drivers/media/media_helper.ko")));
        let index = k.render_index(&info);
        for line in index.dep.lines() {
            for path in line.replace(':', "").split_whitespace() {
                assert!(
                    t.contains(format!("usr/lib/modules/7.3.0-test/{path}")),
                    "modules.dep names {path}, which is not in the image"
                );
            }
        }
        assert!(
            index.dep.contains(
                "kernel/drivers/net/usb/cdc_ncm.ko: kernel/drivers/media/media_helper.ko\n"
            )
        );
        assert!(
            index
                .alias
                .contains("alias nft-chain-2-nat nft_chain_nat\n")
        );
        assert!(index.alias.contains("alias rtnl-link-dummy dummy\n"));
        assert!(!index.alias.contains("snd"), "{}", index.alias);
        assert_eq!(
            index.softdep,
            "softdep dummy pre: crc32c_generic\nsoftdep hid_sensor pre: iio_helper\n"
        );
    }

    #[test]
    fn a_name_the_kernel_lacks_is_an_error_naming_its_source() {
        let err = select(&[Need::new("kernel.load", &["wireguard", "nft_chain_nat"])]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("kernel.load: "), "{msg}");
        assert!(msg.contains("has no module 'wireguard'"), "{msg}");
        let err = select(&[Need::new("kernel.modules", &["sunrcp"])]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("kernel.modules: "), "{msg}");
        assert!(msg.contains("did you mean 'sunrpc'"), "{msg}");
    }

    #[test]
    fn a_dependency_the_kernel_lacks_is_an_error() {
        let mut t = tree();
        t.insert_file(
            "usr/lib/modules/7.3.0-test/kernel/fs/broken.ko",
            module("gone", ""),
            0o644,
        )
        .unwrap();
        let k = KernelModules::find(&t).unwrap();
        let info = k.modinfo(&t).unwrap();
        let msg = format!("{:#}", k.select_node(&info, &[]).unwrap_err());
        assert!(msg.contains("'broken' depends on 'gone'"), "{msg}");
    }
}
