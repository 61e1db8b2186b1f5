//! What several builder tests share: the example profiles and how to load them.

use std::path::PathBuf;

use labimg_builder::profile::{self, Profile};

pub fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// `profiles/examples/*.toml` as (name, path), sorted by name.
pub fn examples() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(profiles_dir().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| (p.file_stem().unwrap().to_str().unwrap().to_owned(), p))
        .collect();
    out.sort();
    out
}

/// Loads the example at `path`. Validation checks everything rendering needs (the
/// join story included), so a loaded example renders.
pub fn load_renderable(_name: &str, path: &std::path::Path) -> Profile {
    profile::load(path.to_str().unwrap(), &profiles_dir(), &[])
        .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", path.display()))
}
