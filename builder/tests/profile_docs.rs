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
fn json_schemas_are_up_to_date() {
    assert_golden("resolved-profile.schema.json", &docs::schema_json());
    assert_golden("profile.schema.json", &docs::file_schema_json());
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

/// Every shipped profile file and example, as TOML turned into JSON.
fn profile_files() -> Vec<(PathBuf, serde_json::Value)> {
    let mut out = Vec::new();
    for dir in [profiles_dir(), profiles_dir().join("examples")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") && !name.starts_with('.') {
                let text = std::fs::read_to_string(&p).unwrap();
                let toml: toml::Table = text.parse().unwrap();
                out.push((p, serde_json::to_value(toml).unwrap()));
            }
        }
    }
    assert!(out.len() >= 6, "found {} profile files", out.len());
    out
}

fn problems(validator: &jsonschema::Validator, v: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_shipped_profile_file_satisfies_the_file_schema_and_points_editors_at_it() {
    let validator = jsonschema::validator_for(&docs::file_schema()).unwrap();
    for (path, value) in profile_files() {
        let errors = problems(&validator, &value);
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        // taplo's schema directive, relative to the file.
        let first = std::fs::read_to_string(&path).unwrap();
        let first = first.lines().next().unwrap_or_default();
        let want = if path.parent().unwrap().ends_with("examples") {
            "#:schema ../profile.schema.json"
        } else {
            "#:schema ./profile.schema.json"
        };
        assert_eq!(first, want, "{}", path.display());
    }
    // Still strict: a typo, an unknown table and a wrong type are errors.
    for bad in [
        "[target]\narhc = \"amd64\"\n",
        "[kubernetes]\nversion = \"1\"\n",
        "[outputs]\nnetboot = \"yes\"\n",
    ] {
        let v = serde_json::to_value(bad.parse::<toml::Table>().unwrap()).unwrap();
        assert!(
            !problems(&validator, &v).is_empty(),
            "the file schema accepted {bad:?}"
        );
    }
}

#[test]
fn resolved_shipped_profiles_satisfy_the_resolved_schema_and_files_alone_do_not() {
    let resolved = jsonschema::validator_for(&docs::schema()).unwrap();
    for name in ["pi5", "proxmox"] {
        let p = labimg_builder::profile::load(name, &profiles_dir(), &[]).unwrap();
        let v =
            serde_json::to_value(toml::from_str::<toml::Table>(&p.resolved()).unwrap()).unwrap();
        let errors = problems(&resolved, &v);
        assert!(errors.is_empty(), "{name} resolved: {errors:#?}");
    }
    // pi5.toml alone lacks what base.toml gives it: that is why editors get the file schema.
    let (_, pi5) = profile_files()
        .into_iter()
        .find(|(p, _)| p.ends_with("pi5.toml"))
        .unwrap();
    assert!(!problems(&resolved, &pi5).is_empty());
}
