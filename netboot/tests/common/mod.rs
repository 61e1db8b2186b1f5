//! Test fixture: an image directory laid out exactly as the builder writes it, an
//! inventory, and the appliance's shared state over them.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use labimg_netboot::inventory::Inventory;
use labimg_netboot::{Config, Shared, images::Images};

pub const PI_SERIAL: &str = "dc4a8f1b";
pub const CP_MAC: &str = "52:54:00:12:34:56";
pub const PI_MAC: &str = "d8:3a:dd:e8:27:1e";
pub const ROOT_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

pub const INVENTORY: &str = r#"
[default]
action = "ignore"

[[node]]
hostname = "cp1"
mac = "52:54:00:12:34:56"
role = "server"
profile = "proxmox"
ip = "10.9.0.10"
kernel-args = "labimg.debug=1"

[[node]]
hostname = "pi1"
serial = "dc4a8f1b"
mac = "d8:3a:dd:e8:27:1e"
role = "agent"
profile = "pi5"
token = "pi1-fixed-token-0123456789"
once = true
"#;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
    /// Bytes of the Pi kernel (multi-MB, pseudo-random).
    pub pi_kernel: Vec<u8>,
}

/// Deterministic pseudo-random bytes (xorshift), so a byte-compare means something.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn netboot_json(profile: &str, arch: &str, board: &str, cmdline: &str) -> String {
    format!(
        r#"{{"profile":"{profile}","arch":"{arch}","board":"{board}","kernel":"vmlinuz","initrd":"initrd.img","root":"root.squashfs","root_sha256":"{ROOT_SHA}","root_size":4096,"cmdline":"{cmdline}"}}"#
    )
}

fn upgrade_json(profile: &str) -> String {
    format!(
        "{{\n  \"version\": \"{}\",\n  \"root\": {{\n    \"file\": \"netboot/root.squashfs\",\n    \"sha256\": \"{ROOT_SHA}\",\n    \"size\": 4096\n  }},\n  \"profile\": \"{profile}\"\n}}\n",
        &ROOT_SHA[..12]
    )
}

/// Writes `<dir>/SHA256SUMS` as the build does: every output but `nodes/` and
/// `manifest.json` (the fixture's hostile `evil` symlinks are left out: a build
/// never writes them).
pub fn write_sums(dir: &Path) {
    let sums: String = labimg_builder::manifest::hash_outputs(dir)
        .unwrap()
        .iter()
        .filter(|o| !o.path.ends_with("evil"))
        .map(|o| format!("{}  {}\n", o.sha256, o.path))
        .collect::<String>()
        // The build lists manifest.json last (it lists the other outputs).
        + &labimg_builder::artifact::hash_file(&dir.join("manifest.json"))
            .map(|(h, _)| format!("{h}  manifest.json\n"))
            .unwrap_or_default();
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
}

/// Builds the fixture; `http_port` is what URLs advertise.
pub fn fixture(http_port: u16) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let px = images.join("proxmox/netboot");
    write(&px.join("vmlinuz"), &noise(100_000, 1));
    write(&px.join("initrd.img"), &noise(50_000, 2));
    write(&px.join("root.squashfs"), &noise(4096, 3));
    write(
        &px.join("netboot.json"),
        netboot_json("proxmox", "amd64", "proxmox", "console=ttyS0").as_bytes(),
    );
    let pi = images.join("pi5/netboot");
    let pi_kernel = noise(3 * 1024 * 1024 + 777, 4);
    write(&pi.join("vmlinuz"), &pi_kernel);
    write(&pi.join("initrd.img"), &noise(200_000, 5));
    write(&pi.join("root.squashfs"), &noise(4096, 6));
    write(
        &pi.join("netboot.json"),
        netboot_json("pi5", "arm64", "rpi5", "console=ttyAMA10,115200").as_bytes(),
    );
    write(
        &pi.join("rpi/config.txt"),
        b"arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n",
    );
    write(&pi.join("rpi/bcm2712-rpi-5-b.dtb"), &noise(80_000, 7));
    write(&pi.join("rpi/overlays/vc4-kms-v3d.dtbo"), &noise(3000, 8));
    std::os::unix::fs::symlink("/etc/passwd", pi.join("rpi/evil")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", px.join("evil")).unwrap();
    for profile in ["proxmox", "pi5"] {
        let p = images.join(profile);
        write(&p.join(format!("{profile}.raw")), &noise(10_000, 9));
        write(&p.join("upgrade.json"), upgrade_json(profile).as_bytes());
        write(
            &p.join("upgrade.env"),
            format!(
                "LABIMG_BUNDLE_VERSION='{}'\nLABIMG_BUNDLE_PROFILE='{profile}'\n",
                &ROOT_SHA[..12]
            )
            .as_bytes(),
        );
        write(&p.join("manifest.json"), b"{\"profile\":\"secret-ish\"}\n");
        write_sums(&p);
    }
    let node = images.join("proxmox/nodes/cp1");
    write(&node.join("node.env"), b"K3S_TOKEN=secret-cluster-token\n");
    write(&node.join("k3s/config.yaml"), b"cluster-init: true\n");
    write(&images.join("pi5/nodes/pi1/node.env"), b"ROLE=agent\n");
    let inv_path = dir.path().join("inventory.toml");
    std::fs::write(&inv_path, INVENTORY).unwrap();
    let inv = Inventory::load(&inv_path).unwrap();
    let cfg = Config {
        advertise: Ipv4Addr::LOCALHOST,
        http_port,
        images: Images {
            dir: images,
            verifier: None,
        },
        ipxe_dir: copy_ipxe(&dir.path().join("ipxe")),
    };
    let shared = Shared::new(cfg, inv, &dir.path().join("state")).unwrap();
    Fixture {
        dir,
        shared,
        pi_kernel,
    }
}

/// Copies Debian's iPXE binaries (package `ipxe`) into `dest` as the builder does:
/// Debian ships `ipxe.efi` as a symlink to /boot, which the servers rightly refuse.
pub fn copy_ipxe(dest: &Path) -> PathBuf {
    let src = Path::new("/usr/lib/ipxe");
    assert!(
        src.join("undionly.kpxe").exists(),
        "install Debian's ipxe package (apt-get install ipxe)"
    );
    std::fs::create_dir_all(dest).unwrap();
    for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        std::fs::copy(src.join(name), dest.join(name)).unwrap();
    }
    dest.to_path_buf()
}
