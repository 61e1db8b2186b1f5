//! The root of a shipped profile, assembled as `labimg build` does it, for the tests
//! that inspect what an image carries (`#[path = "common/assemble.rs"] mod assemble;`).
// Each test crate that includes this reads only some of the fields.
#![allow(dead_code)]

use labimg_builder::debian::Cache;
use labimg_builder::inputs::{Inputs, fetch_inputs, resolve_inputs};
use labimg_builder::nodecfg::NodeTable;
use labimg_builder::preseed::{Destination, RenderOptions};
use labimg_builder::profile::Profile;
use labimg_builder::rootfs::{K3sBinary, Rootfs, assemble_rootfs};

/// A shipped profile's assembled root, with what it was made from.
#[derive(Debug)]
pub struct Assembled {
    pub profile: Profile,
    /// Names of the root's Debian packages.
    pub root_packages: Vec<String>,
    /// The verified kernel and root packages.
    pub inputs: Inputs,
    pub rootfs: Rootfs,
}

/// Resolves and fetches (verified Debian archive, cached) the inputs of shipped profile
/// `name` with `sets` applied, and assembles its root for every node (k3s fetched on
/// first boot).
pub fn shipped(name: &str, sets: &[&str]) -> Assembled {
    let profiles = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let profile = labimg_builder::profile::load(name, &profiles, &sets)
        .unwrap_or_else(|e| panic!("profile {name} with {sets:?}: {e}"));
    let target = labimg_builder::target::for_profile(&profile).unwrap();
    let (archive, resolved) =
        resolve_inputs(&profile, target.as_ref(), Cache::open_default().unwrap()).unwrap();
    let root_packages = resolved
        .root
        .packages
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let inputs = fetch_inputs(&archive, &resolved).unwrap();
    let render = RenderOptions::default();
    let nodes = NodeTable::render(&profile, &render).unwrap();
    let rootfs = assemble_rootfs(
        &profile,
        &inputs.kernel,
        &inputs.root,
        K3sBinary::FirstBoot,
        &nodes.for_destination(Destination::Shared, &render),
        &render,
        0,
    )
    .unwrap_or_else(|e| panic!("assembling {name} with {sets:?}: {e:#}"));
    Assembled {
        profile,
        root_packages,
        inputs,
        rootfs,
    }
}
