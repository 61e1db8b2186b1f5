//! Optional SSH (#17): `[ssh] authorized-keys` and `nodes[].ssh-authorized-keys` are
//! checked as OpenSSH public key lines, rendered into each node's
//! `ssh/authorized_keys`, and bring Debian's dropbear into the image; a profile
//! without keys builds a root tree with no SSH server at all.

use std::path::{Path, PathBuf};

use labimg_builder::nodecfg::{AUTHORIZED_KEYS, NodeTable};
use labimg_builder::preseed::{Destination, RenderOptions};
use labimg_builder::profile::{self, Profile, SSH_PACKAGE};
use labimg_builder::rootfs::{SSH_PROGRAMS, SSH_SCRIPT};

#[path = "common/assemble.rs"]
mod assemble;

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILAJI7t30R9Orbz579vTk66IYL5jAXmZVi3sLBofRaqt op@ws";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPhMRvH7KIwLVpixe6xkJ5tSB8PPbg8Zv2/nkEieFREDRM2a5qdELGaRhe3/d/eMjPIDOEVbUAy7iSW3kFWlRKk= second";

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// Writes `text` as `t.toml` (extending the shipped proxmox profile) and loads it.
fn load(dir: &Path, text: &str) -> Result<Profile, String> {
    let shipped = profiles_dir().join("proxmox.toml");
    let token = dir.join("token");
    std::fs::write(&token, "t0ken-t0ken-t0ken\n").unwrap();
    let text = format!("extends = \"{}\"\n{text}", shipped.display())
        .replace("TOKEN_PATH", token.to_str().unwrap());
    std::fs::write(dir.join("t.toml"), text).unwrap();
    profile::load("t", dir, &[]).map_err(|e| e.to_string())
}

/// Two listed nodes (a server and an agent) for the per-node keys.
const NODES: &str = r#"
[cluster]
token = { file = "TOKEN_PATH" }
unknown-nodes = "refuse"
server-url = "https://cp1.lab:6443"
[[nodes]]
hostname = "cp1"
mac = "52:54:00:00:00:01"
role = "server"
dhcp-reservation = true
[[nodes]]
hostname = "w1"
mac = "52:54:00:00:00:02"
role = "agent"
"#;

#[test]
fn keys_are_checked_as_openssh_public_key_lines_at_their_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // Decodes (a multiple of 4 characters) but lacks the key's last bytes.
    let truncated = &ED25519[..60];
    let swapped = ED25519.replace("ssh-ed25519", "ssh-rsa");
    let text = format!(
        "[ssh]\nauthorized-keys = [\n  \"{ED25519}\",\n  \"ssh-dss AAAAB3NzaC1kc3MAAACBAP\",\n  \"{truncated}\",\n  \"{swapped}\",\n  \"just a comment\",\n]\n{NODES}ssh-authorized-keys = [\"ssh-ed25519 not*base64\"]\n"
    );
    let e = load(dir.path(), &text).unwrap_err();
    // Lines: 1 extends, 2 [ssh], 3 authorized-keys = [, 4 the good key, 5.. the bad ones.
    assert!(
        e.contains("t.toml:5:")
            && e.contains("ssh.authorized-keys[1]: 'ssh-dss' is not a key type"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:6:")
            && e.contains("ssh.authorized-keys[2]: the base64 of this ssh-ed25519 key does not hold a whole ssh-ed25519 key"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:7:")
            && e.contains("ssh.authorized-keys[3]: the base64 of this ssh-rsa key does not hold a whole ssh-rsa key"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:8:") && e.contains("ssh.authorized-keys[4]: 'just' is not a key type"),
        "{e}"
    );
    assert!(!e.contains("ssh.authorized-keys[0]"), "{e}");
    assert!(
        e.contains("nodes[1].ssh-authorized-keys[0]: the ssh-ed25519 key's base64 does not decode"),
        "{e}"
    );
    assert!(e.contains("ssh-ed25519, ecdsa-sha2-nistp256"), "{e}");
}

#[test]
fn each_node_gets_the_cluster_keys_and_its_own_and_no_keys_means_no_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[ssh]\nauthorized-keys = [\"{ED25519}\"]\n{NODES}ssh-authorized-keys = [\"{ECDSA}\", \"  {ED25519} \"]\n"
    );
    let p = load(dir.path(), &text).unwrap();
    assert!(p.ssh_enabled());
    let table = NodeTable::render(&p, &RenderOptions::default()).unwrap();
    let keys = |host: &str| {
        let d = table.dirs.iter().find(|d| d.hostname == host).unwrap();
        let (data, mode) = d.files.get(AUTHORIZED_KEYS).expect("authorized_keys");
        assert_eq!(*mode, 0o644);
        assert!(!d.secrets.contains(AUTHORIZED_KEYS));
        String::from_utf8(data.clone()).unwrap()
    };
    assert_eq!(keys("cp1"), format!("{ED25519}\n"));
    // The node's own keys follow the cluster's, each once.
    assert_eq!(keys("w1"), format!("{ED25519}\n{ECDSA}\n"));
    // Shared outputs keep them (they are public keys).
    let shared = table.for_destination(Destination::Shared, &RenderOptions::default());
    assert!(
        shared
            .dirs
            .iter()
            .all(|d| d.files.contains_key(AUTHORIZED_KEYS))
    );

    // Only one node with a key: the image has SSH, the other node's folder no keys.
    let p = load(
        dir.path(),
        &format!("{NODES}ssh-authorized-keys = [\"{ECDSA}\"]\n"),
    )
    .unwrap();
    assert!(p.ssh_enabled());
    let table = NodeTable::render(&p, &RenderOptions::default()).unwrap();
    let cp1 = table.dirs.iter().find(|d| d.hostname == "cp1").unwrap();
    assert!(!cp1.files.contains_key(AUTHORIZED_KEYS));

    // No keys anywhere: no SSH, no key files, and the resolved profile has no [ssh].
    let p = load(dir.path(), NODES).unwrap();
    assert!(!p.ssh_enabled());
    let table = NodeTable::render(&p, &RenderOptions::default()).unwrap();
    assert!(
        table
            .dirs
            .iter()
            .all(|d| !d.files.contains_key(AUTHORIZED_KEYS))
    );
    let resolved = toml::to_string(&p).unwrap();
    assert!(!resolved.contains("[ssh]"), "{resolved}");
}

/// The shipped proxmox profile's root with `sets`: the root packages' names and the tree.
fn root_tree(sets: &[String]) -> (Vec<String>, labimg_builder::tree::Tree) {
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let a = assemble::shipped("proxmox", &sets);
    (a.root_packages, a.rootfs.tree)
}

#[test]
fn the_image_has_dropbear_only_when_the_profile_has_keys() {
    let (names, tree) = root_tree(&[]);
    assert!(!names.iter().any(|n| n == SSH_PACKAGE), "{names:?}");
    for path in SSH_PROGRAMS.iter().chain([&SSH_SCRIPT]) {
        assert!(!tree.contains(path), "{path} in an image without SSH keys");
    }
    assert!(
        !tree
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("dropbear")),
        "a dropbear file in an image without SSH keys"
    );

    let (names, tree) = root_tree(&[format!("ssh.authorized-keys=[\"{ED25519}\"]")]);
    assert!(names.iter().any(|n| n == SSH_PACKAGE), "{names:?}");
    for path in SSH_PROGRAMS {
        let e = tree.get_follow(path).unwrap_or_else(|| panic!("no {path}"));
        assert!(
            e.data().is_some_and(|d| d.starts_with(b"\x7fELF")),
            "{path}"
        );
    }
    assert!(tree.contains(SSH_SCRIPT));
    // The shipped profile's one node directory is the default node's.
    let keys = tree
        .get(format!("usr/lib/labimg/nodes/default/{AUTHORIZED_KEYS}"))
        .and_then(|e| e.data())
        .expect("the default node's authorized_keys");
    assert_eq!(keys, format!("{ED25519}\n").as_bytes());
}

/// `ssh.sh`'s host key handling under `busybox sh`, with a stand-in `dropbearkey`
/// that prints what the real one prints: keys made once and then kept, the
/// fingerprint taken from `dropbearkey -y`, an unreadable key set aside and replaced;
/// a node without keys runs no server.
#[test]
fn node_host_keys_are_made_once_kept_and_replaced_when_unreadable() {
    let node = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let stub = bin.join("dropbearkey");
    std::fs::write(
        &stub,
        r#"#!/bin/sh
# dropbearkey -t TYPE -f FILE | -y -f FILE, as dropbear 2025 prints them.
case "$1" in
-t) echo "key-$2 $(date +%s%N)" >"$4" && echo pub >"$4.pub" && echo "Generating $2 key" ;;
-y) grep -q '^key-' "$3" || { echo "Error: bad key" >&2; exit 1; }
    t=$(cut -d' ' -f1 "$3"); t=${t#key-}
    case $t in ed25519) n=ssh-ed25519 ;; *) n=ecdsa-sha2-nistp256 ;; esac
    printf 'Public key portion is:\n%s AAAAC3Nz root@node\nFingerprint: SHA256:fp-%s\n' "$n" "$t" ;;
*) exit 2 ;;
esac
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = r#"
labimg_say() { printf '%s\n' "$*" >&2; }
SSH_STATE=$T/state
mkdir -p "$SSH_STATE"
echo "first: $(ssh_host_key ed25519)"
k1=$(cat "$SSH_STATE/dropbear_ed25519_host_key")
echo "again: $(ssh_host_key ed25519)"
[ "$k1" = "$(cat "$SSH_STATE/dropbear_ed25519_host_key")" ] && echo "same key"
echo "garbage" >"$SSH_STATE/dropbear_ecdsa_host_key"
echo "bad: $(ssh_host_key ecdsa)"
ls "$SSH_STATE"
LB_NODE_DIR=$T/node
ssh_start
"#;
    let out = std::process::Command::new("busybox")
        .args(["sh", "-c"])
        .arg(format!(
            ". {}/common.sh && . {}/ssh.sh && {script}",
            node.display(),
            node.display()
        ))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("T", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    let want = "first: ssh-ed25519 SHA256:fp-ed25519 created\n\
                again: ssh-ed25519 SHA256:fp-ed25519 kept\n\
                same key\n";
    assert!(stdout.starts_with(want), "{stdout}");
    assert!(
        stderr.contains("labimg: WARNING: ssh host key ")
            && stderr.contains("dropbear_ecdsa_host_key unreadable, set aside as"),
        "{stderr}"
    );
    assert!(
        stdout.contains("bad: ecdsa-sha2-nistp256 SHA256:fp-ecdsa created\n"),
        "{stdout}"
    );
    // The set-aside key, the new one; no leftovers of the writes.
    assert!(
        stdout.contains(
            "dropbear_ecdsa_host_key\ndropbear_ecdsa_host_key.bad\ndropbear_ed25519_host_key\n"
        ),
        "{stdout}"
    );
    assert!(
        stderr.ends_with("labimg: ssh off reason=no-authorized-keys\n"),
        "{stderr}"
    );
}
