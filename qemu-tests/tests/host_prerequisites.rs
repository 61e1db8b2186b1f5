//! The host programs and files the tests use are the ones `.ci/install-deps`
//! installs (listed in `.ci/host-tools`), so that a fresh machine passes `.ci/run`
//! and a package installed by hand cannot hide a missing install step again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use labimg_qemu_tests::workspace_root;

/// `(program-or-path, package)` from `.ci/host-tools`.
fn host_tools() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace_root().join(".ci/host-tools"))
        .expect("reading .ci/host-tools");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            let what = f.next().unwrap_or_default().to_owned();
            let pkg = f
                .next()
                .unwrap_or_else(|| panic!(".ci/host-tools: no package for {what}"));
            (what, pkg.to_owned())
        })
        .collect()
}

fn on_path(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(program).is_file())
}

#[test]
fn every_listed_host_tool_is_installed() {
    let missing: Vec<String> = host_tools()
        .into_iter()
        .filter(|(what, _)| {
            if what.starts_with('/') {
                !Path::new(what).exists()
            } else {
                !on_path(what)
            }
        })
        .map(|(what, pkg)| format!("{what} (Debian package {pkg})"))
        .collect();
    assert!(
        missing.is_empty(),
        "missing on this machine: {}; run `bash .ci/install-deps`",
        missing.join(", ")
    );
}

/// Rust and shell files under `dir`, skipping build outputs and hidden folders.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name == "images" {
            continue;
        }
        if p.is_dir() {
            sources(&p, out);
        } else if name.ends_with(".rs") || name.ends_with(".sh") {
            out.push(p);
        }
    }
}

/// Program names in `text` written as `<open>"name"` (`Command::new("xz")`, …).
fn quoted_after<'a>(text: &'a str, open: &str, out: &mut BTreeSet<&'a str>) {
    for (i, _) in text.match_indices(open) {
        let rest = &text[i + open.len()..];
        if let Some(end) = rest.find('"') {
            out.insert(&rest[..end]);
        }
    }
}

#[test]
fn every_program_the_tests_call_is_listed_in_host_tools() {
    let listed: BTreeSet<String> = host_tools().into_iter().map(|(w, _)| w).collect();
    let root = workspace_root();
    let mut files = Vec::new();
    for dir in ["builder", "netboot", "qemu-tests", "src", "tests"] {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut unlisted = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut called = BTreeSet::new();
        for open in [
            "Command::new(\"",
            "require(\"",
            ".command(\"",
            ".daemon(\"",
            "\"netns\", \"exec\", ns, \"timeout\", \"30\", \"",
        ] {
            quoted_after(&text, open, &mut called);
        }
        // Benchmarks check their tools with `for t in a b c; do` (shell, so not Rust's
        // `for t in [..] {`).
        for line in text.lines() {
            if let Some(list) = line.trim().strip_prefix("for t in ")
                && !line.trim_end().ends_with('{')
                && let Some(list) = list.split(';').next()
            {
                called.extend(list.split_whitespace());
            }
        }
        for program in called {
            // tool.rs's own test of a missing tool, and this file's patterns.
            if program == "definitely-not-a-tool-labimg" || program.is_empty() {
                continue;
            }
            if !listed.contains(program) {
                unlisted.insert(format!(
                    "{program} ({})",
                    f.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "called by tests or benchmarks but not in .ci/host-tools (so a fresh machine \
         would not have them): {unlisted:?}"
    );
}
