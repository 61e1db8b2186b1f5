//! Scripts drive `labimg`: `--json` prints one JSON document on stdout (logs stay on
//! stderr), the exit status says what kind of failure it was (2 usage, 3 profile,
//! 4 verification, 1 other), and a reader that closed the pipe (`labimg … | head`)
//! ends the command quietly (141) instead of a panic.
//!
//! `build_inspect_and_verification` builds the shipped proxmox profile for real
//! (qcow2 only, the k3s stand-in baked in, Debian packages through the verified cache).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_labimg");

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn labimg(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(workspace())
        .env_remove("RUST_LOG")
        .env_remove("LABIMG_PROFILES")
        .output()
        .unwrap()
}

/// stdout as exactly one JSON document (nothing before or after it).
fn json(out: &Output) -> Value {
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{text}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `labimg <args>` with stdout a pipe whose reading end is already closed, as
/// `labimg … | head` becomes once head has read its lines.
fn closed_stdout(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .current_dir(workspace())
        .env_remove("RUST_LOG")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet_on_closed_pipe(args: &[&str]) {
    let out = closed_stdout(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(141), "labimg {args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("error"),
        "labimg {args:?} on a closed pipe said:\n{err}"
    );
}

#[test]
fn closed_stdout_ends_every_printing_command_quietly() {
    assert_quiet_on_closed_pipe(&["profile", "list"]);
    assert_quiet_on_closed_pipe(&["profile", "list", "--json"]);
    assert_quiet_on_closed_pipe(&["profile", "show", "-p", "pi5", "--resolved"]);
    assert_quiet_on_closed_pipe(&["profile", "validate", "pi5"]);
    assert_quiet_on_closed_pipe(&["completions", "bash"]);
    // clap prints help itself and ignores the closed pipe: no panic either.
    let out = closed_stdout(&["--help"]);
    assert!(out.status.success() && !stderr(&out).contains("panicked"));
}

#[test]
fn profile_commands_print_json() {
    let out = labimg(&["profile", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = json(&out);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"pi5") && names.contains(&"proxmox"),
        "{names:?}"
    );
    let pi5 = list.as_array().unwrap().iter().find(|p| p["name"] == "pi5");
    assert_eq!(pi5.unwrap()["path"], "profiles/pi5.toml");

    // Without --resolved: the file's own keys; with it, every default too.
    let own = json(&labimg(&["profile", "show", "-p", "pi5", "--json"]));
    assert_eq!(own["extends"], "base.toml");
    assert_eq!(own["target"]["console"], "ttyAMA10,115200");
    assert!(own.get("k3s").is_none(), "pi5.toml has no [k3s]: {own}");
    let resolved = json(&labimg(&[
        "profile",
        "show",
        "-p",
        "pi5",
        "--resolved",
        "--json",
        "--set",
        "k3s.version=v1.33.5+k3s1",
    ]));
    assert_eq!(resolved["k3s"]["version"], "v1.33.5+k3s1");
    assert!(resolved.get("extends").is_none(), "{resolved}");

    let out = labimg(&["profile", "validate", "pi5", "proxmox", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["profiles"][1]["path"], "profiles/proxmox.toml");
}

#[test]
fn profile_problems_exit_3_with_every_problem_in_json() {
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("bad.toml");
    let dir = workspace().join("profiles");
    let text = format!(
        "extends = {:?}\nname = \"bad\"\n\nbogus = 1\n",
        dir.join("proxmox.toml")
    );
    std::fs::write(&bad, text).unwrap();
    let bad = bad.to_str().unwrap();
    let out = labimg(&[
        "profile",
        "validate",
        "--profiles-dir",
        dir.to_str().unwrap(),
        "pi5",
        bad,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["profiles"][0]["ok"], true);
    let problem = &v["profiles"][1]["problems"][0];
    assert_eq!(v["profiles"][1]["ok"], false);
    assert_eq!(
        (problem["file"].as_str(), problem["line"].as_u64()),
        (Some(bad), Some(4))
    );
    assert_eq!(problem["key"], "bogus");
    assert!(problem["message"].as_str().unwrap().contains("unknown key"));
    assert!(stderr(&out).contains("1 of 2 profiles have problems"));

    // The same profile stops a build before anything is downloaded.
    let out = labimg(&["build", "-p", bad, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2_and_other_failures_1() {
    assert_eq!(labimg(&["inspect"]).status.code(), Some(2));
    assert_eq!(
        labimg(&["profile", "list", "--bogus"]).status.code(),
        Some(2)
    );
    let out = labimg(&["inspect", "/nonexistent/images/proxmox", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

/// The README's promise for `labimg build --json` and `labimg inspect --json`.
fn check_summary(summary: &Value, out_dir: &Path) {
    for key in [
        "profile",
        "board",
        "arch",
        "out_dir",
        "kernel_version",
        "k3s",
        "source_date_epoch",
        "root_hash",
        "seconds",
        "outputs",
    ] {
        assert!(
            summary.get(key).is_some(),
            "build --json lacks {key}: {summary}"
        );
    }
    assert_eq!(summary["profile"], "proxmox");
    assert_eq!(summary["out_dir"], out_dir.to_str().unwrap());
    assert_eq!(summary["source_date_epoch"], 1_700_000_000);
    // The outputs are SHA256SUMS's lines (which also lists manifest.json).
    let sums = std::fs::read_to_string(out_dir.join("SHA256SUMS")).unwrap();
    let outputs = summary["outputs"].as_array().unwrap();
    assert!(outputs.iter().any(|o| o["path"] == "proxmox.qcow2"));
    for o in outputs {
        let line = format!(
            "{}  {}",
            o["sha256"].as_str().unwrap(),
            o["path"].as_str().unwrap()
        );
        assert!(sums.lines().any(|l| l == line), "{line} not in SHA256SUMS");
    }
    assert_eq!(sums.lines().count(), outputs.len() + 1);
}

#[test]
fn build_inspect_and_verification() {
    let t = tempfile::tempdir().unwrap();
    let out_dir = t.path().join("proxmox");
    let stand_in = workspace().join("qemu-tests/stand-in/k3s");
    let out = Command::new(BIN)
        .args([
            "build",
            "-p",
            "proxmox",
            "--json",
            "--set",
            "outputs.formats=[\"qcow2\"]",
        ])
        .arg("--k3s-binary")
        .arg(&stand_in)
        .arg("--out")
        .arg(&out_dir)
        .current_dir(workspace())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("LABIMG_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    // Progress went to stderr, the summary alone to stdout.
    assert!(stderr(&out).contains("write disk"), "{}", stderr(&out));
    let summary = json(&out);
    check_summary(&summary, &out_dir);

    let dir = out_dir.to_str().unwrap();
    let out = labimg(&["inspect", dir, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["root_hash"], summary["root_hash"]);
    assert_eq!(report["k3s"], summary["k3s"]);
    assert_eq!(report["signature"], Value::Null);
    assert!(
        report["packages"]["root"].as_u64().unwrap() > 10,
        "{report}"
    );
    let files = report["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        summary["outputs"].as_array().unwrap().len() + 1
    );
    assert!(files.iter().all(|f| f["ok"] == true));

    // `labimg inspect images/proxmox | head`.
    assert_quiet_on_closed_pipe(&["inspect", dir]);

    // A signature by another key is a verification failure.
    let keys = t.path().join("keys");
    let other = t.path().join("other");
    for k in [&keys, &other] {
        assert!(labimg(&["keygen", k.to_str().unwrap()]).status.success());
    }
    let out = labimg(&[
        "sign",
        dir,
        "--key",
        keys.join("labimg.key").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good = keys.join("labimg.pub");
    let out = labimg(&[
        "inspect",
        dir,
        "--json",
        "--public-key",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json(&out)["signature"]["key_id"].is_string());
    let wrong = other.join("labimg.pub");
    let out = labimg(&["inspect", dir, "--public-key", wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    // A changed output: exit 4, and the JSON still says which file.
    let changed = out_dir.join("netboot/netboot.json");
    let mut bytes = std::fs::read(&changed).unwrap();
    bytes.push(b'\n');
    std::fs::write(&changed, bytes).unwrap();
    let out = labimg(&["inspect", dir, "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    let bad: Vec<&Value> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["ok"] == false)
        .map(|f| &f["path"])
        .collect();
    assert_eq!(bad, ["netboot/netboot.json"]);
    assert!(stderr(&out).contains("do not match SHA256SUMS: netboot/netboot.json"));
}
