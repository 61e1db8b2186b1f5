//! The man pages under builder/man/ are what `labimg man` renders from the clap
//! definitions today (one page per subcommand). After changing a flag or its help:
//!
//! ```text
//! LABIMG_UPDATE_MAN=1 cargo nextest run -p labimg --test man
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_labimg");
const REFRESH: &str = "LABIMG_UPDATE_MAN=1 cargo nextest run -p labimg --test man";

fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("builder/man")
}

/// The `*.1` files of a folder, by name.
fn pages(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// What `labimg man --out` renders now.
fn rendered() -> BTreeMap<String, String> {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--out"])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "labimg man failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pages(t.path())
}

#[test]
fn man_pages_match_the_cli() {
    let now = rendered();
    // One page per subcommand, nested ones too; the hidden `man` has none.
    for name in [
        "labimg.1",
        "labimg-build.1",
        "labimg-serve.1",
        "labimg-profile-list.1",
    ] {
        assert!(now.contains_key(name), "no {name} in {:?}", now.keys());
    }
    assert!(!now.contains_key("labimg-man.1") && !now.contains_key("labimg-help.1"));
    assert!(
        now["labimg.1"].contains("Exit status"),
        "labimg.1 lacks the exit statuses"
    );
    assert!(now["labimg-serve.1"].contains("LABIMG_HTTP_ADDR"));

    let dir = committed_dir();
    if std::env::var_os("LABIMG_UPDATE_MAN").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for stale in pages(&dir).keys().filter(|n| !now.contains_key(*n)) {
            std::fs::remove_file(dir.join(stale)).unwrap();
        }
        for (name, text) in &now {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    let committed = pages(&dir);
    let differ: Vec<_> = now
        .keys()
        .chain(committed.keys())
        .filter(|n| now.get(*n) != committed.get(*n))
        .collect();
    assert!(
        differ.is_empty(),
        "builder/man/ is out of date ({differ:?} differ from the CLI); refresh it with\n  {REFRESH}"
    );
}
