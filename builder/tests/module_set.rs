//! `kernel.module-set = "node"` on the real kernel of the shipped pi5 profile
//! (Debian's linux-image-arm64, every arm64 driver): the root tree assembled as
//! `labimg build` does keeps every module the boot, stage 2, cluster software and
//! the profile (`kernel.load`, here a sound module, whose folder the set drops)
//! name, drops sound, GPU, media, staging, IIO and radio drivers, and its
//! `modules.dep`, `modules.alias` and `modules.softdep` name only modules that are
//! there.

use std::collections::BTreeSet;
use std::path::Path;

use labimg_builder::initramfs::make_initramfs;
use labimg_builder::kmod::{NODE_NEEDS, normalize_name};
use labimg_builder::rootfs::{RUNTIME_MODULES, Rootfs};
use labimg_builder::tree::Tree;

#[path = "common/assemble.rs"]
mod assemble;

/// The module names in `tree` under `dir` (`usr/lib/modules/<kver>`).
fn module_names(tree: &Tree, dir: &str) -> BTreeSet<String> {
    tree.iter()
        .filter(|(_, e)| e.data().is_some())
        .filter_map(|(p, _)| {
            let file = p.strip_prefix(dir).ok()?.file_name()?.to_str()?;
            let (stem, _) = file.split_once(".ko")?;
            Some(normalize_name(stem))
        })
        .collect()
}

/// The shipped pi5 profile with `sets`, assembled as `labimg build` does, and every
/// module name of its kernel package.
fn pi5_rootfs(sets: &[&str]) -> (labimg_builder::profile::Profile, Rootfs, BTreeSet<String>) {
    let a = assemble::shipped("pi5", sets);
    let mut package = Tree::new();
    labimg_builder::rootfs::unpack(&mut package, &a.inputs.kernel).unwrap();
    let all = module_names(
        &package,
        &format!("usr/lib/modules/{}", a.rootfs.kernel_version),
    );
    (a.profile, a.rootfs, all)
}

fn text(tree: &Tree, path: &str) -> String {
    let data = tree
        .get(path)
        .and_then(|e| e.data())
        .unwrap_or_else(|| panic!("no {path}"));
    String::from_utf8_lossy(data).into_owned()
}

#[test]
fn the_node_set_keeps_what_is_named_drops_the_rest_and_indexes_only_what_it_kept() {
    let (profile, rootfs, all) =
        pi5_rootfs(&["kernel.module-set=node", "kernel.load=[\"snd-aloop\"]"]);
    let tree = &rootfs.tree;
    let dir = format!("usr/lib/modules/{}", rootfs.kernel_version);
    let kept = module_names(tree, &dir);
    let record = &rootfs.modules;
    assert_eq!(record.set, "node");
    assert_eq!(record.count, kept.len());
    assert_eq!(record.count + record.dropped, all.len());
    assert!(
        record.dropped > 1000 && record.count > 1000,
        "a node set should keep most of net/ and fs/ and drop most drivers: {record:?}"
    );
    assert!(kept.is_subset(&all));

    // Dropped classes keep only what a kept module depends on (and the profile's
    // snd-aloop with its own dependencies); emptied folders go.
    let dep = text(tree, &format!("{dir}/modules.dep"));
    let needed: BTreeSet<&str> = dep
        .lines()
        .flat_map(|l| l.split_once(':').unwrap().1.split_whitespace())
        .collect();
    for gone in [
        "kernel/sound",
        "kernel/drivers/gpu",
        "kernel/drivers/media",
        "kernel/drivers/staging",
        "kernel/drivers/iio",
        "kernel/drivers/infiniband",
        "kernel/drivers/bluetooth",
        "kernel/drivers/net/wireless",
        "kernel/net/wireless",
        "kernel/net/mac80211",
    ] {
        let left: Vec<String> = tree
            .iter()
            .filter(|(p, e)| e.data().is_some() && p.starts_with(format!("{dir}/{gone}")))
            .map(|(p, _)| p.strip_prefix(&dir).unwrap().display().to_string())
            .filter(|p| !needed.contains(p.as_str()) && !p.ends_with("/snd-aloop.ko"))
            .collect();
        assert!(
            left.is_empty(),
            "{gone}: kept though nothing needs it: {left:#?}"
        );
    }
    for gone in [
        "kernel/sound/soc",
        "kernel/drivers/staging",
        "kernel/drivers/net/wireless",
    ] {
        assert!(
            !tree.contains(format!("{dir}/{gone}")),
            "{gone} is still in the image"
        );
    }

    // Named needs are kept: cluster software's, stage 2's, the profile's, the boot's.
    let builtin = text(tree, &format!("{dir}/modules.builtin"));
    let is_builtin = |m: &str| {
        builtin
            .lines()
            .any(|l| normalize_name(l.rsplit('/').next().unwrap()) == format!("{m}.ko"))
    };
    let named = NODE_NEEDS
        .iter()
        .flat_map(|(_, names)| names.iter())
        .chain(RUNTIME_MODULES)
        .map(|m| normalize_name(m))
        .chain(["snd_aloop".to_owned(), "snd_pcm".to_owned()]);
    for m in named {
        assert!(kept.contains(&m) || is_builtin(&m), "{m} was dropped");
    }
    for list in [
        "usr/lib/labimg/modules-load",
        "usr/lib/labimg/modules-load.early",
    ] {
        for m in text(tree, list).lines() {
            assert!(kept.contains(m), "{list} names {m}, which was dropped");
        }
    }
    let target = labimg_builder::target::for_profile(&profile).unwrap();
    let wanted: Vec<String> = labimg_builder::target::initramfs_modules(target.as_ref(), &profile)
        .into_iter()
        .flat_map(|n| n.names)
        .collect();
    let initramfs = make_initramfs(tree, &wanted, 0).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        initramfs.modules.iter().any(|m| m == "macb"),
        "{:?}",
        initramfs.modules
    );

    // The index names only kept modules: no dangling entries.
    for line in dep.lines() {
        for path in line.replace(':', " ").split_whitespace() {
            assert!(
                tree.contains(format!("{dir}/{path}")),
                "modules.dep names {path}, which is not in the image"
            );
        }
    }
    let alias = text(tree, &format!("{dir}/modules.alias"));
    for line in alias.lines() {
        let module = line.rsplit(' ').next().unwrap();
        assert!(kept.contains(module), "modules.alias: {line}");
    }
    for want in [
        "alias nft-chain-2-nat nft_chain_nat",
        "alias rtnl-link-dummy dummy",
    ] {
        assert!(
            alias.lines().any(|l| l == want),
            "{want} missing from modules.alias"
        );
    }
    for dropped in [" snd_soc_", " brcmfmac\n", " vc4\n"] {
        assert!(!alias.contains(dropped), "modules.alias names{dropped}");
    }
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/sound/drivers/snd-aloop.ko: ")),
        "the profile's snd-aloop is not in modules.dep (stored plain) with its dependencies"
    );
    // What stage 2 loads at every boot is stored uncompressed, with its dependencies;
    // what loads on demand stays as the package ships it.
    let loaded: BTreeSet<String> = text(tree, "usr/lib/labimg/modules-load")
        .lines()
        .map(str::to_owned)
        .collect();
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        let stem = Path::new(module).file_name().unwrap().to_string_lossy();
        let name = normalize_name(stem.split_once(".ko").unwrap().0);
        if loaded.contains(&name) {
            for path in std::iter::once(module).chain(deps.split_whitespace()) {
                assert!(path.ends_with(".ko"), "{path} (for {name}) is compressed");
            }
        }
    }
    assert!(
        dep.lines().any(|l| l.ends_with("/dummy.ko.xz:")),
        "dummy (loaded on demand) should stay compressed"
    );
    for line in text(tree, &format!("{dir}/modules.softdep")).lines() {
        let mut words = line.split_whitespace().skip(1);
        let module = words.next().unwrap();
        assert!(kept.contains(module), "modules.softdep: {line}");
        for w in words.filter(|w| !w.ends_with(':')) {
            let w = normalize_name(w);
            assert!(
                kept.contains(&w) || !all.contains(&w),
                "modules.softdep: {line}: {w} was dropped"
            );
        }
    }
}
