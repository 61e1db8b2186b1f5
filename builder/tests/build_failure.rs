//! A build that fails leaves nothing half-written: the previous outputs stay
//! as they were and no staging folder is left behind.

use std::path::{Path, PathBuf};

use labimg_builder::build::{BuildOptions, build};
use labimg_builder::profile;

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

#[test]
fn a_failed_build_keeps_the_previous_outputs_and_leaves_no_partial_folder() {
    // A module the kernel does not have fails the build after the inputs were
    // fetched and the root tree assembled: late enough that files exist.
    let p = profile::load(
        "proxmox",
        &profiles_dir(),
        &["kernel.modules=[\"squashfs\", \"no_such_module\"]".to_owned()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("proxmox");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("SHA256SUMS"), "previous build\n").unwrap();

    let opts = BuildOptions {
        out_dir: Some(out.clone()),
        cache_dir: std::env::var_os("LABIMG_CACHE").map(PathBuf::from),
        ..Default::default()
    };
    let err = format!("{:#}", build(&p, &opts).unwrap_err());
    assert!(
        err.contains("make initramfs") && err.contains("no module 'no_such_module'"),
        "the error names the step and the module: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("SHA256SUMS")).unwrap(),
        "previous build\n",
        "the previous outputs are untouched"
    );
    let left: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["proxmox"], "no staging folder is left behind");
}
