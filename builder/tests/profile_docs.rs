//! The checked-in JSON schema and Markdown reference must match what the code generates.
//! `UPDATE_GOLDEN=1 cargo test -p labimg-builder --test profile_docs` rewrites them.

use std::path::PathBuf;

use labimg_builder::profile::docs;

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

fn assert_golden(name: &str, generated: &str) {
    let path = profiles_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        checked_in == generated,
        "{} is out of date with the profile types; run `UPDATE_GOLDEN=1 cargo test -p labimg-builder --test profile_docs`",
        path.display()
    );
}

#[test]
fn json_schema_is_up_to_date() {
    assert_golden("profile.schema.json", &docs::schema_json());
}

#[test]
fn markdown_reference_is_up_to_date() {
    assert_golden("REFERENCE.md", &docs::reference_markdown());
}

#[test]
fn every_key_of_the_schema_is_documented_in_the_reference() {
    // A key without a `///` comment shows up as "(undocumented)".
    let md = docs::reference_markdown();
    assert!(
        !md.contains("(undocumented)"),
        "undocumented keys in the reference:\n{md}"
    );
    for key in [
        "k3s.sha256.arm64",
        "nodes[].serial",
        "rpi.pcie-gen3",
        "cluster.token",
        "disk.root-slot-size",
    ] {
        assert!(
            md.contains(&format!("### `{key}`")),
            "{key} missing from the reference"
        );
    }
}
