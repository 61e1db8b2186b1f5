//! The Raspberry Pi 5 disk, written by the rpi5 target from the real kernel
//! package of the shipped pi5 profile: partition table read back by `sfdisk`,
//! every FAT partition checked by `fsck.vfat -n`, and the boot files read back
//! with `mcopy` and compared with what the firmware must find (the kernel
//! unpacked by `gzip -d`).

use std::path::{Path, PathBuf};
use std::process::Command;

use labimg_builder::debian::Cache;
use labimg_builder::initramfs::make_initramfs;
use labimg_builder::inputs::resolve_inputs;
use labimg_builder::profile::Profile;
use labimg_builder::rootfs::unpack;
use labimg_builder::rootimg::make_root_image;
use labimg_builder::target::{DiskInputs, Rpi5, Target, rpi5};
use labimg_builder::tree::Tree;
use sha2::{Digest, Sha256};

const EPOCH: u64 = 1_700_000_000;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pi5_profile() -> Profile {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    labimg_builder::profile::load("pi5", &profiles, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// The kernel packages the pipeline resolves for the profile, plus busybox
/// for the initramfs, unpacked into one tree.
fn kernel_tree(profile: &Profile) -> Tree {
    let cache = match std::env::var_os("LABIMG_CACHE") {
        Some(d) => Cache::new(PathBuf::from(d)).unwrap(),
        None => Cache::open_default().unwrap(),
    };
    let (archive, mut resolved) = resolve_inputs(profile, &Rpi5, cache).unwrap();
    resolved
        .root
        .packages
        .retain(|p| p.name == "busybox-static");
    let mut tree = Tree::new();
    unpack(&mut tree, &archive.fetch(&resolved.kernel).unwrap()).unwrap();
    unpack(&mut tree, &archive.fetch(&resolved.root).unwrap()).unwrap();
    tree
}

/// `vmlinuz` from either kernel package layout (`/boot/vmlinuz-<v>` or
/// `/usr/lib/modules/<v>/vmlinuz`).
fn vmlinuz(tree: &Tree) -> Vec<u8> {
    tree.iter()
        .find(|(p, e)| {
            e.data().is_some()
                && (p.starts_with("boot") && p.to_string_lossy().contains("vmlinuz-")
                    || p.starts_with("usr/lib/modules") && p.ends_with("vmlinuz"))
        })
        .and_then(|(_, e)| e.data())
        .expect("the kernel package has a vmlinuz")
        .to_vec()
}

/// What the Pi firmware (and QEMU's `-kernel`) does with a gzip'd kernel; the
/// `gzip` program is the independent reader, and it rejects trailing garbage
/// or a second member's wrong CRC.
fn gunzip(gz: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernel.gz");
    std::fs::write(&path, gz).unwrap();
    run(Command::new("gzip").args(["-d", "-c"]).arg(&path))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

struct Part {
    name: String,
    kind: String,
    start: u64,
    sectors: u64,
}

fn partitions(raw: &Path) -> Vec<Part> {
    let json: serde_json::Value =
        serde_json::from_slice(&run(Command::new("sfdisk").arg("--json").arg(raw))).unwrap();
    assert_eq!(json["partitiontable"]["label"], "gpt");
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            kind: p["type"].as_str().unwrap().to_owned(),
            start: p["start"].as_u64().unwrap(),
            sectors: p["size"].as_u64().unwrap(),
        })
        .collect()
}

fn extract(raw: &Path, p: &Part, dst: &Path) {
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=512", "status=none"])
        .arg(format!("skip={}", p.start))
        .arg(format!("count={}", p.sectors)));
}

fn mcopy(img: &Path, file: &str) -> Vec<u8> {
    run(Command::new("mcopy")
        .arg("-i")
        .arg(img)
        .arg(format!("::/{file}"))
        .arg("-"))
}

fn mdir(img: &Path) -> Vec<String> {
    let out = run(Command::new("mdir").args(["-b", "-i"]).arg(img).arg("::/"));
    let mut names: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim_start_matches("::/").to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    names.sort();
    names
}

#[test]
fn pi5_disk_has_autoboot_and_per_slot_boot_partitions_the_firmware_can_read() {
    let profile = pi5_profile();
    let tree = kernel_tree(&profile);
    let kernel = vmlinuz(&tree);
    let mut modules = Rpi5.boot_modules();
    modules.extend(profile.kernel.modules.iter().cloned());
    // Every boot module must exist in the real kernel (or be built in).
    let initramfs = make_initramfs(&tree, &modules, EPOCH).expect("boot modules resolve");
    for m in ["sdhci_brcmstb", "rp1_pci", "macb", "nvme", "virtio_blk"] {
        assert!(
            initramfs.modules.iter().any(|n| n == m),
            "{m} not in the initramfs"
        );
    }

    let work = tempfile::tempdir().unwrap();
    let mut small = Tree::new();
    small
        .insert_file("etc/os-release", "ID=labimg-test\n", 0o644)
        .unwrap();
    let root = make_root_image(&small, &work.path().join("root.squashfs"), EPOCH).unwrap();
    let inputs = DiskInputs {
        profile: &profile,
        kernel: &kernel,
        initramfs: &initramfs.data,
        root: &root,
        boot_tree: &Tree::new(),
        root_tree: &tree,
        kernel_version: "",
        epoch: EPOCH,
        secure_boot: None,
    };
    let raw = work.path().join("pi5.raw");
    Rpi5.write_disk(&inputs, &raw).unwrap();
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 4 << 30);

    let parts = partitions(&raw);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["autoboot", "boot-a", "boot-b", "root-a", "root-b"]);
    let basic_data = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
    let root_arm64 = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
    let kinds: Vec<&str> = parts.iter().map(|p| p.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [basic_data, basic_data, basic_data, root_arm64, root_arm64]
    );
    assert_eq!(parts[1].sectors * 512, 256 << 20);
    assert_eq!(parts[3].sectors * 512, 1 << 30);

    let img = |i: usize| work.path().join(format!("{}.img", parts[i].name));
    for (i, part) in parts.iter().enumerate().take(3) {
        extract(&raw, part, &img(i));
        run(Command::new("fsck.vfat").arg("-n").arg(img(i)));
    }

    // Partition 1: only autoboot.txt, sending the bootloader to 2 or (tryboot) 3.
    assert_eq!(mdir(&img(0)), ["autoboot.txt"]);
    assert_eq!(
        String::from_utf8(mcopy(&img(0), "autoboot.txt")).unwrap(),
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    );

    // Partition 2: slot A's boot files.
    let boot = img(1);
    assert_eq!(
        String::from_utf8(mcopy(&boot, "config.txt")).unwrap(),
        "# labimg pi5: generated by labimg; do not edit\n[all]\narm_64bit=1\n\
         kernel=kernel_2712.img\ninitramfs initramfs.img followkernel\nenable_uart=1\nos_check=0\n"
    );
    let cmdline = String::from_utf8(mcopy(&boot, "cmdline.txt")).unwrap();
    let root_bytes = std::fs::read(&root.path).unwrap();
    assert_eq!(
        cmdline,
        format!(
            "console=ttyAMA10,115200 labimg.root=PARTLABEL=root-a labimg.root.sha256={} \
             labimg.root.size={} labimg.verity.roothash={} labimg.verity.salt={} \
             labimg.verity.data-blocks={} labimg.verity.hash-offset={} panic=10 labimg.slot=a \
             cgroup_enable=memory cgroup_memory=1\n",
            sha256_hex(&root_bytes),
            root_bytes.len(),
            root.verity.root_hash,
            root.verity.salt,
            root.verity.data_blocks,
            root.verity.hash_offset
        )
    );
    assert_eq!(cmdline.lines().count(), 1, "cmdline.txt must be one line");
    // The kernel is the package's arm64 Image, gzip'd (the firmware detects the
    // magic): no file name and mtime 0 in the header, so a rebuild has the same bytes.
    let kernel_gz = mcopy(&boot, "kernel_2712.img");
    assert_eq!(
        kernel_gz[..10],
        [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3],
        "kernel_2712.img: not a gzip with a reproducible header"
    );
    assert!(
        kernel[0x38..0x3c] == *b"ARM\x64",
        "the package's vmlinuz is no arm64 Image"
    );
    assert!(
        gunzip(&kernel_gz) == kernel,
        "kernel_2712.img does not unpack to the package's Image"
    );
    assert!(
        kernel_gz.len() < kernel.len() / 2,
        "kernel_2712.img is {} bytes, the Image {}",
        kernel_gz.len(),
        kernel.len()
    );
    assert!(
        mcopy(&boot, "initramfs.img") == initramfs.data,
        "initramfs differs"
    );
    let dtb_in_package = tree
        .iter()
        .find(|(p, e)| e.data().is_some() && p.ends_with("broadcom/bcm2712-rpi-5-b.dtb"))
        .and_then(|(_, e)| e.data())
        .expect("the kernel package ships broadcom/bcm2712-rpi-5-b.dtb");
    assert!(
        mcopy(&boot, "bcm2712-rpi-5-b.dtb") == dtb_in_package,
        "dtb differs"
    );
    let listing = mdir(&boot);
    assert!(
        listing.iter().all(|n| !n.starts_with("overlays")),
        "{listing:?}"
    );

    // Partition 3: formatted, empty until the first upgrade writes slot B.
    assert!(mdir(&img(2)).is_empty());

    // root-a holds the root image byte for byte.
    let mut f = std::fs::File::open(&raw).unwrap();
    let mut slot = vec![0u8; root_bytes.len()];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(parts[3].start * 512)).unwrap();
    std::io::Read::read_exact(&mut f, &mut slot).unwrap();
    assert!(slot == root_bytes, "root-a does not hold the root image");

    // The netboot tree is slot A's boot partition.
    let files = rpi5::boot_files(&inputs).unwrap();
    let mut tree_names: Vec<String> = files
        .iter()
        .filter(|(_, e)| e.data().is_some())
        .map(|(p, _)| p.to_string_lossy().into_owned())
        .collect();
    tree_names.sort();
    assert_eq!(tree_names, listing);
    assert_eq!(
        files.get("cmdline.txt").and_then(|e| e.data()),
        Some(cmdline.as_bytes())
    );

    // Debian's kernel ships no Raspberry Pi overlays: asking for them is an error.
    let mut with_overlays = profile.clone();
    with_overlays
        .rpi
        .get_or_insert_with(Default::default)
        .overlays = true;
    let err = rpi5::boot_files(&DiskInputs {
        profile: &with_overlays,
        ..inputs
    })
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("ships no Raspberry Pi overlays"),
        "{err:#}"
    );
}
