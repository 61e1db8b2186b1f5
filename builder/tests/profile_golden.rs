//! Every shipped profile resolves to its checked-in form in `tests/golden/profiles/`.
//! `UPDATE_GOLDEN=1 cargo test -p labimg-builder --test profile_golden` rewrites them.

use std::path::{Path, PathBuf};

use labimg_builder::profile;

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// The shipped profiles: top-level ones that are complete (not `base`) and every example.
fn shipped() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in [profiles_dir(), profiles_dir().join("examples")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if path.extension().is_some_and(|e| e == "toml") && name != "base" {
                out.push((name, path));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn shipped_profiles_match_their_golden_resolved_form() {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/profiles");
    let shipped = shipped();
    assert!(
        shipped.len() >= 5,
        "expected pi5, proxmox and three examples, found {shipped:?}"
    );
    let mut failures = Vec::new();
    for (name, path) in &shipped {
        let p = profile::load(path.to_str().unwrap(), &profiles_dir(), &[])
            .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", path.display()));
        let resolved = p.resolved();
        let golden = golden_dir.join(format!("{name}.toml"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &resolved).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(g) if g == resolved => {}
            Ok(_) => failures.push(format!(
                "{name}: resolved form differs from {}",
                golden.display()
            )),
            Err(e) => failures.push(format!("{name}: reading {}: {e}", golden.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 to regenerate)",
        failures.join("\n")
    );
}

#[test]
fn a_resolved_profile_loads_back_to_the_same_profile() {
    let dir = tempfile::tempdir().unwrap();
    for (name, path) in shipped() {
        let p = profile::load(path.to_str().unwrap(), &profiles_dir(), &[]).unwrap();
        let copy = dir.path().join(format!("{name}.toml"));
        std::fs::write(&copy, p.resolved()).unwrap();
        let again = profile::load(copy.to_str().unwrap(), dir.path(), &[])
            .unwrap_or_else(|e| panic!("resolved {name} does not load:\n{e}"));
        assert_eq!(again, p, "{name}");
    }
}

#[test]
fn list_names_the_top_level_profiles_with_their_descriptions() {
    let listed = profile::list(&profiles_dir());
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["base", "pi5", "proxmox"]);
    let pi5 = &listed[1].1;
    assert!(pi5.contains("Raspberry Pi 5"), "{pi5}");
}
