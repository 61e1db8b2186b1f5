//! The shipped deployment files (`netboot/deploy/`): the systemd unit passes
//! `systemd-analyze verify` and a sandboxing threshold, and the unit, the Containerfile
//! and the podman command in the README agree on read-only images and one writable
//! state folder, with no `--ipxe-dir` needed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// `key=value` lines of a unit file, continuation lines joined.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_value(entries: &[(String, String)], key: &str) -> String {
    let vals: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(vals.len(), 1, "{key}= set {} times in the unit", vals.len());
    vals[0].to_string()
}

/// The value after `--flag` in a command line's words.
fn flag<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == name)
        .and_then(|i| words.get(i + 1).copied())
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running systemd-analyze {args:?}: {e} (install Debian's systemd package)")
        })
}

/// The unit as shipped, with ExecStart pointed at an executable that exists here
/// (verify refuses a missing binary), passes `systemd-analyze verify` without a
/// single warning (an unknown or misspelt key is only a warning there) and keeps
/// `systemd-analyze security` at 2.0 or better.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(&deploy("labimg-serve.service"));
    let exe = std::env::current_exe().unwrap();
    let prefix = "ExecStart=/usr/local/bin/labimg ";
    assert!(
        unit.contains(prefix),
        "ExecStart runs /usr/local/bin/labimg"
    );
    let local = unit.replace(prefix, &format!("ExecStart={} ", exe.display()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labimg-serve.service");
    std::fs::write(&path, local).unwrap();
    let p = path.to_str().unwrap();

    let out = systemd_analyze(&["verify", "--man=no", p]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );

    // --threshold is 10 × the exposure level the report prints.
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=20", p]);
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit above 2.0:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The unit's ExecStart, its read-only paths and its state folder agree: images and
/// inventory read-only, `--state-dir` is the StateDirectory, the download cache is in
/// it, the two capabilities and no others, and no `--ipxe-dir` (the default works).
#[test]
fn systemd_unit_is_consistent_with_serve() {
    let entries = unit_entries(&read(&deploy("labimg-serve.service")));
    let exec = unit_value(&entries, "ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[..2], ["/usr/local/bin/labimg", "serve"]);
    assert_eq!(flag(&words, "--ipxe-dir"), None);
    let images = flag(&words, "--images").expect("--images in ExecStart");
    let inventory = flag(&words, "--inventory").expect("--inventory in ExecStart");
    let state = flag(&words, "--state-dir").expect("--state-dir in ExecStart");
    let ro = unit_value(&entries, "ReadOnlyPaths");
    let ro: Vec<&str> = ro.split_whitespace().collect();
    assert!(ro.contains(&images), "{images} not in ReadOnlyPaths {ro:?}");
    let inv_dir = Path::new(inventory).parent().unwrap().to_str().unwrap();
    assert!(
        ro.contains(&inv_dir),
        "{inv_dir} not in ReadOnlyPaths {ro:?}"
    );
    assert_eq!(unit_value(&entries, "ProtectSystem"), "strict");
    assert_eq!(
        format!("/var/lib/{}", unit_value(&entries, "StateDirectory")),
        state
    );
    let env = unit_value(&entries, "Environment");
    let cache = env
        .strip_prefix("LABIMG_CACHE=")
        .expect("Environment=LABIMG_CACHE=…");
    assert!(
        Path::new(cache).starts_with(state),
        "cache {cache} outside {state}"
    );
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(
            unit_value(&entries, key),
            "CAP_NET_BIND_SERVICE CAP_NET_RAW",
            "{key}"
        );
    }
    assert_eq!(
        state,
        labimg_netboot::ServeOptions::default()
            .state_dir
            .to_str()
            .unwrap(),
        "the unit's state folder is serve's default"
    );
}

/// The Containerfile builds from this workspace (every member copied, the paths it
/// copies exist, no downloaded binaries) on Debian bookworm, and its volume and cache
/// are serve's default state folder.
#[test]
fn containerfile_builds_from_the_workspace() {
    let text = read(&deploy("Containerfile"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let args: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        args.iter().any(|a| a.starts_with("RUST_IMAGE=")
            && a.contains("rust:")
            && a.ends_with("-bookworm"))
            && froms[0].starts_with("${RUST_IMAGE}"),
        "build stage: a Debian bookworm Rust image ({args:?}, {froms:?})"
    );
    assert!(
        froms[1].ends_with("debian:bookworm-slim") || froms[1].ends_with("debian:trixie-slim"),
        "runtime stage: {}",
        froms[1]
    );
    assert!(
        !text.contains("curl ") && !text.contains("wget "),
        "nothing downloaded by hand"
    );
    assert!(text.contains("ca-certificates") && text.contains("iproute2"));

    let mut copied = Vec::new();
    for l in &lines {
        let Some(rest) = l.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(root.join(src).exists(), "COPY {src}: not in the workspace");
            copied.push(src.to_string());
        }
    }
    let manifest: toml::Table = toml::from_str(&read(&root.join("Cargo.toml"))).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    for m in members {
        let m = m.as_str().unwrap();
        assert!(
            copied.iter().any(|c| c == m),
            "workspace member {m} not copied"
        );
    }
    for f in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied.iter().any(|c| c == f), "{f} not copied");
    }
    assert!(text.contains("cargo build --release --locked -p labimg"));

    let state = labimg_netboot::ServeOptions::default().state_dir;
    let state = state.to_str().unwrap();
    assert!(lines.contains(&format!("VOLUME {state}").as_str()));
    assert!(lines.contains(&format!("ENV LABIMG_CACHE={state}/cache").as_str()));
}

/// The README points at both files, and its `podman run` mounts the images and the
/// inventory read-only, the state volume where the Containerfile's VOLUME is, and
/// needs no `--ipxe-dir` or `--state-dir`.
#[test]
fn readme_podman_command_matches_the_containerfile() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    for f in ["deploy/labimg-serve.service", "deploy/Containerfile"] {
        assert!(
            readme.contains(&format!("]({f})")),
            "README does not link {f}"
        );
    }
    let start = readme.find("podman run ").expect("a podman run command");
    let end = start + readme[start..].find("```").unwrap();
    let cmd = readme[start..end].replace("\\\n", " ");
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let mounts: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-v")
        .map(|w| w[1])
        .collect();
    let images = flag(&words, "--images").expect("--images");
    let inventory = flag(&words, "--inventory").expect("--inventory");
    let inv_dir = Path::new(inventory).parent().unwrap().to_str().unwrap();
    for (what, dir) in [("images", images), ("inventory", inv_dir)] {
        assert!(
            mounts.iter().any(|m| m.ends_with(&format!(":{dir}:ro"))),
            "{what} folder {dir} not mounted read-only: {mounts:?}"
        );
    }
    let state = labimg_netboot::ServeOptions::default().state_dir;
    assert!(
        mounts
            .iter()
            .any(|m| m.ends_with(&format!(":{}", state.display()))),
        "no volume at {}: {mounts:?}",
        state.display()
    );
    assert_eq!(flag(&words, "--ipxe-dir"), None);
    assert_eq!(flag(&words, "--state-dir"), None);
    assert!(words.contains(&"serve"), "{cmd}");
    for cap in ["NET_BIND_SERVICE", "NET_RAW"] {
        assert!(words.contains(&cap), "--cap-add {cap}");
    }
}
