//! The kernel's build configuration, checked against what k3s, containerd, kubelet
//! and Cilium need of it, so that a kernel without them fails the build, naming the
//! option, instead of a cluster that never forms.
//!
//! Debian ships the configuration as `boot/config-<kver>` (trixie's 6.12) or
//! `usr/lib/modules/<kver>/config` (the 7.x backports). The lists come from k3s's
//! `contrib/util/check-config.sh` ("generally necessary" and the network drivers)
//! and Cilium's system requirements; `builder/node/HOST-CONTRACT.md` has the sources.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::tree::Tree;

/// How an option must be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `=y`: it cannot be a module (BPF, cgroups, namespaces).
    BuiltIn,
    /// `=y` or `=m` (a module stage 2 or the kernel loads).
    Present,
}

/// `(option without CONFIG_, how, who needs it)`.
pub const REQUIRED: &[(&str, Need, &str)] = &[
    ("NAMESPACES", Need::BuiltIn, "containerd"),
    ("NET_NS", Need::BuiltIn, "containerd"),
    ("PID_NS", Need::BuiltIn, "containerd"),
    ("IPC_NS", Need::BuiltIn, "containerd"),
    ("UTS_NS", Need::BuiltIn, "containerd"),
    ("CGROUPS", Need::BuiltIn, "kubelet"),
    ("CGROUP_PIDS", Need::BuiltIn, "kubelet"),
    ("CGROUP_CPUACCT", Need::BuiltIn, "kubelet"),
    ("CGROUP_DEVICE", Need::BuiltIn, "containerd"),
    ("CGROUP_FREEZER", Need::BuiltIn, "containerd"),
    ("CGROUP_SCHED", Need::BuiltIn, "kubelet"),
    ("CPUSETS", Need::BuiltIn, "kubelet"),
    ("MEMCG", Need::BuiltIn, "kubelet"),
    ("CGROUP_BPF", Need::BuiltIn, "Cilium"),
    ("SECCOMP", Need::BuiltIn, "containerd"),
    ("KEYS", Need::BuiltIn, "containerd"),
    ("POSIX_MQUEUE", Need::BuiltIn, "containerd"),
    ("BPF", Need::BuiltIn, "Cilium"),
    ("BPF_SYSCALL", Need::BuiltIn, "Cilium"),
    ("BPF_JIT", Need::BuiltIn, "Cilium"),
    ("NET_CLS_ACT", Need::BuiltIn, "Cilium"),
    ("PERF_EVENTS", Need::BuiltIn, "Cilium"),
    ("MODULES", Need::BuiltIn, "labimg (stage 2 loads modules)"),
    ("VETH", Need::Present, "containerd"),
    ("BRIDGE", Need::Present, "k3s"),
    ("BRIDGE_NETFILTER", Need::Present, "kube-proxy"),
    ("OVERLAY_FS", Need::Present, "containerd"),
    ("VXLAN", Need::Present, "Cilium"),
    ("GENEVE", Need::Present, "Cilium"),
    ("NF_NAT", Need::Present, "kube-proxy"),
    ("NF_TABLES", Need::Present, "kube-proxy (iptables-nft)"),
    ("NFT_COMPAT", Need::Present, "kube-proxy (iptables-nft)"),
    ("IP_NF_FILTER", Need::Present, "kube-proxy"),
    ("IP_NF_NAT", Need::Present, "kube-proxy"),
    ("IP_NF_TARGET_MASQUERADE", Need::Present, "kube-proxy"),
    ("IP_NF_TARGET_REJECT", Need::Present, "kube-proxy"),
    ("NETFILTER_XT_MATCH_ADDRTYPE", Need::Present, "kube-proxy"),
    ("NETFILTER_XT_MATCH_CONNTRACK", Need::Present, "kube-proxy"),
    ("NETFILTER_XT_MATCH_COMMENT", Need::Present, "kube-proxy"),
    ("NETFILTER_XT_MATCH_MULTIPORT", Need::Present, "kube-proxy"),
    ("NETFILTER_XT_MATCH_STATISTIC", Need::Present, "kube-proxy"),
    ("NETFILTER_XT_MATCH_IPVS", Need::Present, "k3s check-config"),
    ("NETFILTER_XT_MATCH_MARK", Need::Present, "Cilium"),
    ("NETFILTER_XT_MATCH_SOCKET", Need::Present, "Cilium"),
    ("NETFILTER_XT_TARGET_TPROXY", Need::Present, "Cilium"),
    ("NETFILTER_XT_TARGET_CT", Need::Present, "Cilium"),
    ("NETFILTER_XT_SET", Need::Present, "Cilium"),
    ("IP_SET", Need::Present, "Cilium"),
    ("IP_SET_HASH_IP", Need::Present, "Cilium"),
    ("NET_CLS_BPF", Need::Present, "Cilium"),
    ("NET_SCH_INGRESS", Need::Present, "Cilium"),
    ("CRYPTO_SHA1", Need::Present, "Cilium"),
    ("CRYPTO_USER_API_HASH", Need::Present, "Cilium"),
];

/// A parsed kernel configuration: option (without `CONFIG_`) → value.
#[derive(Clone, Debug, Default)]
pub struct KernelConfig(pub BTreeMap<String, String>);

impl KernelConfig {
    /// Parses `CONFIG_X=value` lines (`# CONFIG_X is not set` and comments skipped).
    pub fn parse(text: &str) -> KernelConfig {
        KernelConfig(
            text.lines()
                .filter_map(|l| l.strip_prefix("CONFIG_")?.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect(),
        )
    }

    /// The configuration of kernel `version` in the unpacked tree.
    pub fn find(tree: &Tree, version: &str) -> Result<(PathBuf, KernelConfig)> {
        let candidates = [
            PathBuf::from(format!("boot/config-{version}")),
            PathBuf::from(format!("usr/lib/modules/{version}/config")),
            PathBuf::from(format!("lib/modules/{version}/config")),
        ];
        for path in candidates.iter() {
            if let Some(data) = tree.get_follow(path).and_then(|e| e.data()) {
                return Ok((path.clone(), Self::parse(&String::from_utf8_lossy(data))));
            }
        }
        bail!(
            "the kernel package has no build configuration (looked for {}): cannot check \
             what k3s and Cilium need of it",
            candidates
                .iter()
                .map(|p| format!("/{}", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// Every [`REQUIRED`] option that is missing or only a module where it must be
    /// built in, as `CONFIG_X (who: is …, needs …)`.
    pub fn missing(&self) -> Vec<String> {
        REQUIRED
            .iter()
            .filter_map(|(name, need, who)| {
                let got = self.0.get(*name).map(String::as_str);
                let ok = match need {
                    Need::BuiltIn => got == Some("y"),
                    Need::Present => matches!(got, Some("y" | "m")),
                };
                (!ok).then(|| {
                    format!(
                        "CONFIG_{name} ({who}: is {}, needs {})",
                        got.unwrap_or("not set"),
                        match need {
                            Need::BuiltIn => "y",
                            Need::Present => "y or m",
                        }
                    )
                })
            })
            .collect()
    }

    /// Fails naming every option k3s or Cilium needs that this kernel lacks, and a
    /// modprobe path other than `/sbin/modprobe` (where the image has it).
    pub fn check(&self, origin: &str) -> Result<()> {
        let mut missing = self.missing();
        if let Some(p) = self.0.get("MODPROBE_PATH")
            && p != "/sbin/modprobe"
        {
            missing.push(format!(
                "CONFIG_MODPROBE_PATH (on-demand module loading: is {p}, labimg puts modprobe at /sbin/modprobe)"
            ));
        }
        if missing.is_empty() {
            return Ok(());
        }
        bail!(
            "the kernel ({origin}) lacks what k3s and Cilium need: {}",
            missing.join(", ")
        )
    }
}

/// Reads and checks the configuration of kernel `version` in `tree`.
pub fn check_tree(tree: &Tree, version: &str) -> Result<()> {
    let (path, config) = KernelConfig::find(tree, version)?;
    config
        .check(&format!("/{}", path.display()))
        .context("checking the kernel configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> String {
        REQUIRED
            .iter()
            .map(|(n, need, _)| {
                format!(
                    "CONFIG_{n}={}\n",
                    if *need == Need::BuiltIn { "y" } else { "m" }
                )
            })
            .collect::<String>()
            + "CONFIG_MODPROBE_PATH=\"/sbin/modprobe\"\n"
    }

    #[test]
    fn a_complete_configuration_passes() {
        KernelConfig::parse(&full()).check("test").unwrap();
    }

    #[test]
    fn missing_and_modular_options_are_all_named() {
        let text = full()
            .replace("CONFIG_BPF_SYSCALL=y\n", "CONFIG_BPF_SYSCALL=m\n")
            .replace("CONFIG_VXLAN=m\n", "# CONFIG_VXLAN is not set\n")
            .replace("/sbin/modprobe", "/usr/bin/modprobe");
        let e = KernelConfig::parse(&text)
            .check("test")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CONFIG_BPF_SYSCALL (Cilium: is m, needs y)"),
            "{e}"
        );
        assert!(
            e.contains("CONFIG_VXLAN (Cilium: is not set, needs y or m)"),
            "{e}"
        );
        assert!(e.contains("CONFIG_MODPROBE_PATH"), "{e}");
    }

    #[test]
    fn the_debian_kernels_configurations_are_found() {
        let mut t = Tree::new();
        t.insert_file("usr/lib/modules/7.3.4+deb13-arm64/config", full(), 0o644)
            .unwrap();
        check_tree(&t, "7.3.4+deb13-arm64").unwrap();
        let e = check_tree(&t, "6.12.117+deb13-cloud-amd64").unwrap_err();
        assert!(e.to_string().contains("/boot/config-6.12.117"), "{e}");
    }
}
