//! A per-node build with `--embed-secrets` (`--node pve-e2`): that node's
//! secrets, and no other node, are inside the disk image's root slot, and
//! nothing is written that `labimg serve` would hand to the LAN (no
//! `netboot/`, no upgrade bundle).
//!
//! Uses the real Debian mirror through the verified download cache, and
//! `qemu-img`, `sfdisk` and `unsquashfs` as oracles.

use std::path::{Path, PathBuf};
use std::process::Command;

use labimg_builder::build::{BuildOptions, build};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_per_node_image_carries_that_nodes_secrets_and_no_netboot_artifact_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let token = "K10embedded-secrets-test-token";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    let profile_path = dir.path().join("embed.toml");
    std::fs::write(
        &profile_path,
        format!(
            r#"extends = "{}"
name = "embed"

[cluster]
token = {{ file = "{}" }}

[[nodes]]
hostname = "pve-e1"
mac = "bc:24:11:00:00:e1"
role = "server"
ip = "192.168.10.11/24"
gateway = "192.168.10.1"
dns = ["192.168.10.1"]

[[nodes]]
hostname = "pve-e2"
mac = "bc:24:11:00:00:e2"
role = "agent"

[upgrade]
url = "http://10.0.0.2:8080/bundles/embed"

[outputs]
formats = ["qcow2"]
"#,
            workspace().join("profiles/proxmox.toml").display(),
            dir.path().join("token").display()
        ),
    )
    .unwrap();
    let profile = labimg_builder::profile::load(
        profile_path.to_str().unwrap(),
        &workspace().join("profiles"),
        &[],
    )
    .unwrap();
    let out = dir.path().join("out");
    build(
        &profile,
        &BuildOptions {
            out_dir: Some(out.clone()),
            k3s_binary: Some(workspace().join("qemu-tests/stand-in/k3s")),
            cache_dir: std::env::var_os("LABIMG_CACHE").map(PathBuf::from),
            source_date_epoch: Some(1_700_000_000),
            embed_secrets: true,
            node: Some("pve-e2".into()),
            ..Default::default()
        },
    )
    .unwrap();

    // Private: the folder and the image, like the token they carry.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("embed.qcow2")), 0o600);

    // Nothing for the LAN: only the disk image and the build's records.
    assert!(!out.join("netboot").exists(), "netboot/ was written");
    assert!(
        !out.join("upgrade.json").exists(),
        "an upgrade bundle was written"
    );
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    let listed: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, f)| f))
        .collect();
    assert_eq!(
        listed,
        ["embed.qcow2", "embed.spdx.json", "manifest.json"],
        "{sums}"
    );

    // It does not pull the shared bundle, whose root has no secrets.
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(manifest.contains("labimg.root="), "{manifest}");
    assert!(!manifest.contains("labimg.upgrade="), "{manifest}");

    // The token is in the root slot of the disk: read it back with host tools.
    let raw = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(out.join("embed.qcow2"))
        .arg(&raw));
    let table: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(&raw))).unwrap();
    let part = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root-a")
        .expect("a root-a partition");
    let start = part["start"].as_u64().unwrap() * 512;
    let size = part["size"].as_u64().unwrap() * 512;
    let disk = std::fs::read(&raw).unwrap();
    let slot = dir.path().join("root-a.img");
    std::fs::write(&slot, &disk[start as usize..(start + size) as usize]).unwrap();
    let got = run(Command::new("unsquashfs")
        .arg("-cat")
        .arg(&slot)
        .arg("usr/lib/labimg/nodes/pve-e2/k3s/token"));
    // pve-e2 is an agent: it carries the agent token derived from the server token,
    // never the server token itself.
    assert_eq!(got.trim(), labimg_builder::preseed::agent_token(token));
    // pve-e2 only: the agent joins the server the whole profile describes.
    let index = run(Command::new("unsquashfs")
        .arg("-cat")
        .arg(&slot)
        .arg("usr/lib/labimg/nodes/index"));
    assert_eq!(index, "bc:24:11:00:00:e2 pve-e2\n");
    let listing = run(Command::new("unsquashfs")
        .args(["-l", "-d", ""])
        .arg(&slot)
        .arg("usr/lib/labimg/nodes"));
    assert!(!listing.contains("pve-e1"), "{listing}");
    let config = run(Command::new("unsquashfs")
        .arg("-cat")
        .arg(&slot)
        .arg("usr/lib/labimg/nodes/pve-e2/k3s/config.yaml"));
    assert!(
        config.contains("server: https://192.168.10.11:6443"),
        "{config}"
    );
    // The serve-side node folders follow the same selection.
    let served: Vec<_> = std::fs::read_dir(out.join("nodes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(served, ["pve-e2"]);

    // A name that is not in [[nodes]] fails before any work, naming the choices.
    let err = build(
        &profile,
        &BuildOptions {
            out_dir: Some(dir.path().join("never")),
            node: Some("pve-e9".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("--node pve-e9") && text.contains("pve-e1, pve-e2"),
        "{text}"
    );
    assert!(!dir.path().join("never").exists());
    // Secrets without a node would make one image for every machine: refused.
    let err = build(
        &profile,
        &BuildOptions {
            out_dir: Some(dir.path().join("never")),
            embed_secrets: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("--embed-secrets needs --node"),
        "{err:#}"
    );
}
