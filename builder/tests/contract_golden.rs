//! The artifact contract of every shipped profile and example, as golden files:
//! each target's kernel command lines (slots a and b, and the netboot form),
//! `netboot.json`, `upgrade.json` and `upgrade.env` (what the node's upgrade agent
//! reads), for a fixed root image. A change to any of
//! them shows up here as a diff a reviewer reads, not only as a boot test failure.
//! `UPDATE_GOLDEN=1 cargo nextest run -p labimg-builder --test contract_golden`
//! rewrites them.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use labimg_builder::profile::{self, Profile};
use labimg_builder::rootimg::RootImage;
use labimg_builder::target;
use labimg_builder::verity::Verity;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/contract")
}

/// A root image as the build would describe it, with fixed hashes.
fn root(dir: &std::path::Path) -> RootImage {
    RootImage {
        path: dir.join("netboot/root.squashfs"),
        size: 123_456_789,
        sha256: "5e".repeat(32),
        verity: Verity {
            root_hash: "a1".repeat(32),
            salt: "5a".repeat(32),
            uuid: "00000000-0000-4000-8000-000000000001".into(),
            data_blocks: 30_000,
            hash_offset: 122_880_000,
        },
    }
}

fn contract(p: &Profile) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("netboot")).unwrap();
    std::fs::write(dir.path().join("netboot/vmlinuz"), b"kernel").unwrap();
    std::fs::write(dir.path().join("netboot/initrd.img"), b"initrd").unwrap();
    let root = root(dir.path());
    let t = target::for_profile(p).unwrap();
    let a = t.cmdline(p, &root, "a");
    let b = t.cmdline(p, &root, "b");
    let lines = BTreeMap::from([
        ("a".to_owned(), a.to_string()),
        ("b".to_owned(), b.to_string()),
    ]);
    // A fixed epoch: the build's comes from SOURCE_DATE_EPOCH or the inputs (plan.rs).
    labimg_builder::upgrade::write_upgrade_json(
        dir.path(),
        &p.name,
        &p.k3s.version,
        1_700_000_000,
        &root,
        &lines,
    )
    .unwrap();
    let upgrade = std::fs::read_to_string(dir.path().join("upgrade.json")).unwrap();
    let upgrade_env = std::fs::read_to_string(dir.path().join("upgrade.env")).unwrap();
    format!(
        "# cmdline slot a\n{a}\n# cmdline slot b\n{b}\n# cmdline netboot\n{}\n\
         # netboot/netboot.json\n{}# upgrade.json\n{upgrade}# upgrade.env\n{upgrade_env}",
        a.netboot(),
        target::netboot_info(p, &root, &a).to_json(),
    )
}

#[test]
fn command_lines_netboot_json_upgrade_json_and_upgrade_env_match_their_golden_files() {
    let dir = common::profiles_dir();
    let mut profiles: Vec<(String, Profile)> = ["pi5", "proxmox"]
        .iter()
        .map(|n| (n.to_string(), profile::load(n, &dir, &[]).unwrap()))
        .collect();
    for (name, path) in common::examples() {
        let p = common::load_renderable(&name, &path);
        profiles.push((name, p));
    }
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (name, p) in &profiles {
        let got = contract(p);
        let file = golden_dir().join(format!("{name}.txt"));
        if update {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            stale.push(format!("{name}:\n--- want\n{want}\n+++ got\n{got}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 to regenerate)",
        stale.join("\n")
    );
}
