//! Every example profile renders to its checked-in node directories in
//! `tests/golden/preseed/<example>/<node>/` (k3s config, node.env, server
//! manifests; the shared rendering, without secrets).
//! `UPDATE_GOLDEN=1 cargo test -p labimg-builder --test preseed_golden`
//! rewrites them.

use std::collections::BTreeMap;
use std::path::Path;

use labimg_builder::nodecfg;
use labimg_builder::preseed::validate_manifest;

mod common;

use common::{examples, load_renderable};

fn files_under(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        let name = format!("{prefix}{}", p.file_name().unwrap().to_str().unwrap());
        if p.is_dir() {
            files_under(&p, &format!("{name}/"), out);
        } else {
            out.insert(name, std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn example_profiles_render_to_their_golden_node_directories() {
    let golden_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/preseed");
    let examples = examples();
    assert!(
        examples.len() >= 3,
        "expected three examples, found {examples:?}"
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (name, path) in &examples {
        let p = load_renderable(name, path);
        let (dirs, _) =
            nodecfg::render_all(&p).unwrap_or_else(|e| panic!("{name} does not render: {e:#}"));
        let mut rendered = BTreeMap::new();
        for d in &dirs {
            for (file, (data, _)) in &d.files {
                if file.starts_with("manifests/") {
                    validate_manifest(file, std::str::from_utf8(data).unwrap())
                        .unwrap_or_else(|e| panic!("{name}/{}: {e}", d.hostname));
                }
                rendered.insert(format!("{}/{file}", d.hostname), data.clone());
            }
        }
        let dir = golden_root.join(name);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            for (file, data) in &rendered {
                let p = dir.join(file);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, data).unwrap();
            }
            continue;
        }
        let mut golden = BTreeMap::new();
        files_under(&dir, "", &mut golden);
        for file in golden.keys().filter(|f| !rendered.contains_key(*f)) {
            failures.push(format!("{name}: {file} is golden but no longer rendered"));
        }
        for (file, data) in &rendered {
            match golden.get(file) {
                None => failures.push(format!("{name}: {file} is rendered but has no golden file")),
                Some(g) if g != data => failures.push(format!(
                    "{name}: {file} differs from {}",
                    dir.join(file).display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 to regenerate)",
        failures.join("\n")
    );
}
