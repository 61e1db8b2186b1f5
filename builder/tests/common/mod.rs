//! What several builder tests share: the example profiles and how to load them.

use std::path::PathBuf;

use labimg_builder::profile::{self, Profile};

pub fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// Overrides an example needs to render. pi5-argocd's first server has no
/// static IP and the profile sets no `cluster.server-url`, so its agents would
/// not know where to join (`preseed_render::joiners_need_a_server_url`).
const OVERRIDES: &[(&str, &str)] = &[("pi5-argocd", "cluster.server-url=https://pi-cp1.lan:6443")];

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

/// Loads the profile `name` at `path` with the [`OVERRIDES`] it needs to render.
pub fn load_renderable(name: &str, path: &std::path::Path) -> Profile {
    let sets: Vec<String> = OVERRIDES
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, s)| (*s).to_owned())
        .collect();
    profile::load(path.to_str().unwrap(), &profiles_dir(), &sets)
        .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", path.display()))
}
