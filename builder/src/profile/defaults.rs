//! Every default value of the profile model, in one place.
//!
//! Board-dependent defaults (console, kernel package) are filled in by
//! [`Profile::apply_board_defaults`](super::Profile::apply_board_defaults) after loading.

use std::collections::BTreeMap;

use super::types::{Arch, Board, Cluster, Cni, CniKind, Debian, Disk, Gitops, GitopsEngine};
use super::types::{ImageFormat, Kernel, ModuleSet, Outputs, Size};

/// Default Debian mirror.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// Default K3s download URL template (see `k3s.url`).
pub fn k3s_url() -> String {
    "https://github.com/k3s-io/k3s/releases/download/{version}/{binary}".into()
}

/// K3s's own default pod CIDR.
pub fn cluster_cidr() -> String {
    "10.42.0.0/16".into()
}

/// K3s's own default service CIDR.
pub fn service_cidr() -> String {
    "10.43.0.0/16".into()
}

/// Serial console per board.
pub fn console(board: Board) -> &'static str {
    match board {
        Board::Proxmox => "ttyS0",
        Board::Rpi5 => "ttyAMA10,115200",
    }
}

/// Kernel package per board: the Pi 5 needs the backports kernel for RP1 Ethernet.
pub fn kernel_package(board: Board) -> &'static str {
    match board {
        Board::Proxmox => "linux-image-cloud-amd64",
        Board::Rpi5 => "linux-image-arm64/trixie-backports",
    }
}

/// The architecture a board requires.
pub fn arch_for(board: Board) -> Arch {
    match board {
        Board::Proxmox => Arch::Amd64,
        Board::Rpi5 => Arch::Arm64,
    }
}

impl Default for Debian {
    fn default() -> Self {
        Debian {
            mirror: DEBIAN_MIRROR.into(),
            suites: vec!["trixie".into()],
            packages: Vec::new(),
            check_valid_until: true,
        }
    }
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            package: None,
            cmdline: Vec::new(),
            modules: ["squashfs", "loop", "ext4", "dm-verity"]
                .map(String::from)
                .to_vec(),
            load: Vec::new(),
            sysctls: BTreeMap::new(),
            module_set: ModuleSet::Full,
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            name: "labimg".into(),
            server_url: None,
            token: None,
            vip: None,
            unknown_nodes: None,
            hostname_prefix: None,
        }
    }
}

impl Default for Cni {
    fn default() -> Self {
        Cni {
            kind: CniKind::Cilium,
            version: "1.18.3".into(),
            chart: None,
            kube_proxy_replacement: false,
            l2_announcements: false,
            lb_ip_pools: Vec::new(),
            values: Default::default(),
        }
    }
}

impl Default for Gitops {
    fn default() -> Self {
        Gitops {
            engine: GitopsEngine::None,
            repo: None,
            branch: "main".into(),
            path: "clusters/default".into(),
            credentials: None,
            sops_age_key: None,
            known_hosts: None,
            app_of_apps: false,
        }
    }
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            size: Size::gib(4),
            root_slot_size: Size::mib(1024),
            boot_size: Size::mib(512),
        }
    }
}

impl Default for Outputs {
    fn default() -> Self {
        Outputs {
            formats: vec![ImageFormat::RawXz],
            netboot: true,
            dir: None,
        }
    }
}
