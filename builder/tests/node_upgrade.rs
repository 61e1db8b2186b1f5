//! The upgrade agent's decisions (`builder/node/upgrade`), run under `busybox sh`
//! with only busybox's applets (and the test's stubs) on `PATH`, as on a node: the
//! k3s version comparison, the agent's skew check against its server (a stub
//! `wget` and a stub `k3s` play the server), and bless's wait for the node to be
//! Ready within the trial deadline (a stub `k3s kubectl`). The script is sourced with
//! `LABIMG_UPGRADE_SOURCED=1`, which defines its functions and runs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A scratch folder with `bin/` holding a symlink to busybox per applet, and
/// `stub/` (first on `PATH`) for programs a test replaces.
struct Node {
    dir: tempfile::TempDir,
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Node {
    fn new() -> Node {
        let path = std::env::var("PATH").unwrap_or_default();
        let busybox = path
            .split(':')
            .map(|d| Path::new(d).join("busybox"))
            .find(|p| p.is_file())
            .expect("busybox not found: install Debian's busybox package (bash .ci/install-deps)");
        let out = Command::new(&busybox).arg("--list").output().unwrap();
        assert!(out.status.success(), "busybox --list failed");
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "stub"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        for applet in String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .chain(["busybox"])
        {
            std::os::unix::fs::symlink(&busybox, dir.path().join("bin").join(applet)).unwrap();
        }
        Node { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, contents: &str) -> String {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p.display().to_string()
    }

    /// An executable busybox sh script at `rel`.
    fn script(&self, rel: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = self.write(rel, &format!("#!{}\n{body}", self.path("bin/sh").display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Runs `script` with common.sh and the agent's functions loaded; console
    /// lines go to stderr, the agent's paths into the scratch folder.
    fn run(&self, env: &[(&str, &str)], script: &str) -> Ran {
        let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
        let prelude = format!(
            ". '{common}'\n\
             LABIMG_UPGRADE_SOURCED=1 . '{upgrade}'\n\
             labimg_say() {{ printf '%s\\n' \"$*\" >&2; }}\n\
             WORK=$PWD/work ESP=$PWD/esp AUTOBOOT=$PWD/autoboot BOOTFAT=$PWD/bootfat\n\
             TRIAL_FILE=$PWD/trial TRIAL_UNTIL=$PWD/trial-until\n\
             KUBELET_KUBECONFIG=$PWD/kubelet.kubeconfig K3S_CONFIG=$PWD/etc-config.yaml\n",
            common = node.join("common.sh").display(),
            upgrade = node.join("upgrade").display(),
        );
        let mut cmd = Command::new(self.path("bin/busybox"));
        cmd.env_clear()
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.path("stub").display(),
                    self.path("bin").display()
                ),
            )
            .env("LB_CMDLINE", "labimg.slot=b labimg.trial=1")
            .current_dir(self.dir.path())
            .args(["sh", "-c", &format!("{prelude}{script}")]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

#[test]
fn k3s_versions_compare_by_major_minor_patch_then_k3s_revision() {
    let n = Node::new();
    for (a, b, want) in [
        ("v1.36.4+k3s1", "v1.36.4+k3s1", "0"),
        ("v1.36.4+k3s1", "v1.36.4+k3s2", "-1"),
        ("v1.36.4+k3s2", "v1.36.4+k3s1", "1"),
        ("v1.36.10+k3s1", "v1.36.9+k3s1", "1"),
        ("v1.36.0+k3s1", "v1.35.12+k3s3", "1"),
        ("v1.35.12+k3s3", "v1.36.0+k3s1", "-1"),
        ("v2.0.0+k3s1", "v1.99.99+k3s9", "1"),
        ("1.36.4+k3s1", "v1.36.4+k3s1", "0"),
        ("v1.36.4-rc1+k3s1", "v1.36.4+k3s1", "0"),
        ("v1.36.4", "v1.36.4+k3s1", "-1"),
    ] {
        let r = n.run(&[], &format!("k3s_version_cmp '{a}' '{b}'"));
        assert!(r.ok, "{a} {b}: {}", r.stderr);
        assert_eq!(r.stdout.trim(), want, "k3s_version_cmp {a} {b}");
    }
    for (a, b) in [
        ("latest", "v1.36.4+k3s1"),
        ("v1.36+k3s1", "v1.36.4+k3s1"),
        ("v1.36.4+k3s1", ""),
    ] {
        let r = n.run(
            &[],
            &format!("k3s_version_cmp '{a}' '{b}'; echo \"status=$?\""),
        );
        assert_eq!(r.stdout.trim(), "status=2", "{a:?} {b:?}");
    }
}

#[test]
fn the_server_url_comes_from_the_configs_server_line() {
    let n = Node::new();
    for (yaml, want) in [
        (
            "token-file: /etc/rancher/k3s/token\nserver: https://pi-cp1.lan:6443\nnode-label: []\n",
            "https://pi-cp1.lan:6443",
        ),
        (
            "server: \"https://10.0.0.1:6443\"  \n",
            "https://10.0.0.1:6443",
        ),
        ("server: 'https://a:6443'\n", "https://a:6443"),
        ("cluster-init: true\n# server: https://x\n", ""),
    ] {
        let conf = n.write("config.yaml", yaml);
        let r = n.run(&[], &format!("k3s_server_url '{conf}'"));
        assert_eq!(r.stdout.trim(), want, "{yaml:?}");
    }
}

/// An agent node with `upgrade.env` carrying `bundle_k3s`, a config naming
/// its server, and a stub `wget` answering `/version` with `server_k3s`
/// (or failing, as an unreachable or 401-answering server does, when None).
fn agent(bundle_k3s: &str, server_k3s: Option<&str>) -> Node {
    let n = Node::new();
    n.write(
        "upgrade.env",
        &format!("LABIMG_BUNDLE_VERSION='abc'\nLABIMG_BUNDLE_K3S_VERSION='{bundle_k3s}'\n"),
    );
    n.write(
        "nodedir/k3s/config.yaml",
        "server: https://pi-cp1.lan:6443\ntoken-file: /etc/rancher/k3s/token\n",
    );
    let answer = match server_k3s {
        // kubectl get --raw /version's layout (several lines).
        Some(v) => format!(
            "printf '{{\\n  \"major\": \"1\",\\n  \"gitVersion\": \"{v}\",\\n  \"platform\": \"linux/arm64\"\\n}}\\n'"
        ),
        None => "echo 'wget: server returned error: HTTP/1.1 401 Unauthorized' >&2; exit 1".into(),
    };
    n.script(
        "stub/wget",
        &format!("echo \"$*\" >>\"$PWD/wget.calls\"\n{answer}\n"),
    );
    n
}

fn check_skew(n: &Node, role: &str) -> Ran {
    let dir = n.path("nodedir").display().to_string();
    n.run(
        &[("LB_ROLE", role), ("LB_NODE_DIR", &dir)],
        "LB_META=$PWD/upgrade.env\ncheck_skew\necho passed",
    )
}

#[test]
fn an_agent_refuses_a_bundle_whose_k3s_is_newer_than_its_servers() {
    // Same or older than the server: staged.
    for server in ["v1.36.4+k3s1", "v1.37.0+k3s1"] {
        let n = agent("v1.36.4+k3s1", Some(server));
        let r = check_skew(&n, "agent");
        assert!(
            r.ok && r.stdout.contains("passed"),
            "{server}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!(
                "labimg: upgrade skew-check ok k3s=v1.36.4+k3s1 server-k3s={server} server=https://pi-cp1.lan:6443"
            )),
            "{}",
            r.stderr
        );
        // Asked at the API's /version, over TLS without a CA (busybox wget).
        let calls = std::fs::read_to_string(n.path("wget.calls")).unwrap();
        assert_eq!(
            calls.trim(),
            "-q --no-check-certificate -T 15 -O - https://pi-cp1.lan:6443/version"
        );
    }
    // Newer than the server: refused, naming both versions.
    let n = agent("v1.37.1+k3s1", Some("v1.36.4+k3s1"));
    let r = check_skew(&n, "agent");
    assert!(!r.ok && !r.stdout.contains("passed"), "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "labimg: upgrade refused: the bundle's k3s v1.37.1+k3s1 is newer than the server's (v1.36.4+k3s1 at https://pi-cp1.lan:6443): upgrade the servers first"
        ),
        "{}",
        r.stderr
    );
    // A server is not checked against anything (servers go first).
    let n = agent("v1.37.1+k3s1", Some("v1.36.4+k3s1"));
    let r = check_skew(&n, "server");
    assert!(r.ok && r.stdout.contains("passed"), "{}", r.stderr);
    assert!(!n.path("wget.calls").exists());
    // Without a role (stage 2 did not pass it): said, not silently skipped.
    let r = check_skew(&n, "");
    assert!(r.ok && r.stdout.contains("passed"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("labimg: WARNING: upgrade: LB_ROLE is not set"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_agent_that_cannot_ask_its_server_refuses() {
    let n = agent("v1.36.4+k3s1", None);
    let r = check_skew(&n, "agent");
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "labimg: upgrade refused: cannot read the k3s version of the server https://pi-cp1.lan:6443 (GET /version)"
        ),
        "{}",
        r.stderr
    );
    // No config naming a server, or a bundle without its k3s version: refused too.
    std::fs::remove_dir_all(n.path("nodedir")).unwrap();
    let r = check_skew(&n, "agent");
    assert!(
        !r.ok
            && r.stderr
                .contains("has no k3s config.yaml naming its server"),
        "{}",
        r.stderr
    );
    let n = agent("", Some("v1.36.4+k3s1"));
    let r = check_skew(&n, "agent");
    assert!(
        !r.ok
            && r.stderr
                .contains("upgrade.env has no LABIMG_BUNDLE_K3S_VERSION"),
        "{}",
        r.stderr
    );
}

#[test]
fn with_kubelet_credentials_the_agent_asks_through_k3s_kubectl_first() {
    let n = agent("v1.36.4+k3s1", None);
    n.write("kubelet.kubeconfig", "apiVersion: v1\n");
    let k3s = n.script(
        "k3s",
        "echo \"$*\" >>\"$PWD/k3s.calls\"\n\
         printf '{\"gitVersion\": \"v1.36.5+k3s1\"}\\n'\n",
    );
    let dir = n.path("nodedir").display().to_string();
    let r = n.run(
        &[
            ("LB_ROLE", "agent"),
            ("LB_NODE_DIR", &dir),
            ("LB_K3S", &k3s),
        ],
        "LB_META=$PWD/upgrade.env\ncheck_skew",
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("server-k3s=v1.36.5+k3s1"), "{}", r.stderr);
    let calls = std::fs::read_to_string(n.path("k3s.calls")).unwrap();
    assert_eq!(
        calls.trim(),
        format!(
            "kubectl --kubeconfig {} --server https://pi-cp1.lan:6443 get --raw /version",
            n.path("kubelet.kubeconfig").display()
        )
    );
    assert!(!n.path("wget.calls").exists(), "wget asked as well");
}

/// A stub `k3s` that answers the Ready question with `False` for the first
/// `false_calls` calls, then `True`, logging each call.
fn ready_after(n: &Node, false_calls: u32) -> String {
    n.write("kubelet.kubeconfig", "apiVersion: v1\n");
    n.script(
        "k3s",
        &format!(
            "echo \"$*\" >>\"$PWD/k3s.calls\"\n\
             c=$(wc -l <\"$PWD/k3s.calls\")\n\
             if [ \"$c\" -gt {false_calls} ]; then echo True; else echo False; fi\n"
        ),
    )
}

#[test]
fn bless_waits_for_the_node_to_be_ready_within_the_trial_deadline() {
    let n = Node::new();
    let k3s = ready_after(&n, 2);
    let r = n.run(
        &[("LB_K3S", &k3s), ("LB_HOSTNAME", "pve-up-1")],
        "READY_POLL=1\necho 600 >\"$TRIAL_FILE\"\n\
         echo $(($(uptime_s) + 60)) >\"$TRIAL_UNTIL\"\n\
         wait_ready && echo \"ready after $LB_READY_S\"",
    );
    assert!(r.ok && r.stdout.contains("ready after"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("labimg: boot trial waiting node=pve-up-1 for=Ready within="),
        "{}",
        r.stderr
    );
    let calls = std::fs::read_to_string(n.path("k3s.calls")).unwrap();
    let want = format!(
        "kubectl --kubeconfig {} get node pve-up-1 -o jsonpath={{.status.conditions[?(@.type==\"Ready\")].status}}",
        n.path("kubelet.kubeconfig").display()
    );
    assert_eq!(calls.lines().collect::<Vec<_>>(), [&want, &want, &want]);
}

#[test]
fn bless_gives_up_before_the_deadline_when_the_node_never_is_ready() {
    let n = Node::new();
    let k3s = ready_after(&n, 1000);
    let started = Instant::now();
    // 13 s left: one poll, then the next would end within BLESS_MARGIN (10 s) of it.
    let r = n.run(
        &[("LB_K3S", &k3s), ("LB_HOSTNAME", "pve-up-1")],
        "READY_POLL=1\necho 600 >\"$TRIAL_FILE\"\n\
         echo $(($(uptime_s) + 13)) >\"$TRIAL_UNTIL\"\n\
         bless; echo \"status=$?\"; [ -f \"$TRIAL_FILE\" ] && echo still-trial",
    );
    assert!(
        r.stdout.contains("status=1") && r.stdout.contains("still-trial"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "labimg: WARNING: node pve-up-1 did not report Ready within the trial deadline: slot b is not blessed"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("blessed slot"), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Not a trial boot: nothing to wait for, nothing asked.
    let r = n.run(
        &[("LB_K3S", &k3s)],
        "rm -f \"$TRIAL_FILE\"; bless && echo ok",
    );
    assert!(r.ok && r.stdout.contains("ok"), "{}", r.stderr);
}

#[test]
fn lineage_refuses_another_profile_and_an_older_epoch_but_not_an_equal_one() {
    let n = Node::new();
    // The running image: built from an archive whose newest InRelease Date was this.
    n.write("release", "PROFILE=pi5\nSOURCE_DATE_EPOCH=1764100000\n");
    let lineage = |profile: &str, epoch: &str, env: &[(&str, &str)]| {
        n.write(
            "upgrade.env",
            &format!(
                "LABIMG_BUNDLE_PROFILE='{profile}'\nLABIMG_BUNDLE_SOURCE_DATE_EPOCH='{epoch}'\n"
            ),
        );
        n.run(
            env,
            "RELEASE=$PWD/release LB_META=$PWD/upgrade.env\ncheck_lineage\necho passed",
        )
    };
    for epoch in ["1764100000", "1764200000"] {
        let r = lineage("pi5", epoch, &[]);
        assert!(r.ok && r.stdout.contains("passed"), "{epoch}: {}", r.stderr);
    }
    let r = lineage("pi5", "1764099999", &[]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains(
            "labimg: upgrade refused: the bundle was built at SOURCE_DATE_EPOCH 1764099999, before the running image (1764100000)"
        ),
        "{}",
        r.stderr
    );
    let r = lineage("pi5", "1764099999", &[("LABIMG_ALLOW_DOWNGRADE", "1")]);
    assert!(r.ok, "{}", r.stderr);
    let r = lineage("proxmox", "1764200000", &[]);
    assert!(
        !r.ok && r.stderr.contains("the bundle is for profile 'proxmox'"),
        "{}",
        r.stderr
    );
    let r = lineage("pi5", "", &[]);
    assert!(
        !r.ok && r.stderr.contains("has no LABIMG_BUNDLE_SOURCE_DATE_EPOCH"),
        "{}",
        r.stderr
    );
}

/// A Secure Boot image's agent: `usr/lib/labimg/secureboot/db.crt` from a key set
/// made by `labimg secureboot keygen` (the builder's own code), and Debian's real
/// `sbverify` (sbsigntool) on the stub PATH. Returns the node and its db signer.
fn secure_boot_node() -> (Node, labimg_builder::secureboot::Signer) {
    let n = Node::new();
    let keys = n.path("keys");
    labimg_builder::secureboot::keygen(&keys, "node-upgrade test", 1_700_000_000).unwrap();
    std::fs::create_dir_all(n.path("sb")).unwrap();
    std::fs::copy(keys.join("db.crt"), n.path("sb/db.crt")).unwrap();
    let sbverify = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("sbverify"))
        .find(|p| p.is_file())
        .expect("sbverify not found: install Debian's sbsigntool (bash .ci/install-deps)");
    std::os::unix::fs::symlink(sbverify, n.path("stub/sbverify")).unwrap();
    let db = labimg_builder::secureboot::load_db(&keys).unwrap();
    (n, db)
}

/// Runs `script` as a Secure Boot image's agent (SB_CERT is the node's db.crt).
fn sb_run(n: &Node, env: &[(&str, &str)], script: &str) -> Ran {
    n.run(env, &format!("SB_CERT=$PWD/sb/db.crt\n{script}"))
}

/// An EFI application to sign: Debian's efitools HelloWorld.efi (unsigned PE32+).
fn efi_app() -> Vec<u8> {
    std::fs::read("/usr/lib/efitools/x86_64-linux-gnu/HelloWorld.efi")
        .expect("HelloWorld.efi from Debian's efitools (bash .ci/install-deps)")
}

#[test]
fn a_uki_not_signed_by_the_images_db_key_is_refused_before_anything_is_written() {
    let (n, db) = secure_boot_node();
    let other_keys = n.path("other-keys");
    labimg_builder::secureboot::keygen(&other_keys, "someone else", 1_700_000_000).unwrap();
    let other = labimg_builder::secureboot::load_db(&other_keys).unwrap();
    let app = efi_app();
    std::fs::write(n.path("unsigned.efi"), &app).unwrap();
    std::fs::write(
        n.path("signed.efi"),
        labimg_builder::secureboot::sign_pe(&app, &db).unwrap(),
    )
    .unwrap();
    std::fs::write(
        n.path("other.efi"),
        labimg_builder::secureboot::sign_pe(&app, &other).unwrap(),
    )
    .unwrap();
    let check = |file: &str| {
        sb_run(
            &n,
            &[],
            &format!(
                "mkdir -p \"$WORK\"\ncheck_uki \"$PWD/{file}\" netboot/uki/{file}\necho passed"
            ),
        )
    };
    let r = check("signed.efi");
    assert!(r.ok && r.stdout.contains("passed"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("labimg: upgrade uki verified file=netboot/uki/signed.efi"),
        "{}",
        r.stderr
    );
    for file in ["unsigned.efi", "other.efi"] {
        let r = check(file);
        assert!(
            !r.ok && !r.stdout.contains("passed"),
            "{file}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&format!(
                "labimg: upgrade refused: UKI netboot/uki/{file} is not signed by this image's Secure Boot db key ("
            )) && r.stderr.contains("nothing was written"),
            "{file}: {}",
            r.stderr
        );
        // sbverify's own reason is in the message.
        let reason = r.stderr.split("db key (").nth(1).unwrap_or_default();
        assert!(
            reason.len() > 3 && !reason.starts_with(')'),
            "{file}: {}",
            r.stderr
        );
    }
    // stage_uki: an unsigned UKI stops before the ESP or the root slot is touched
    // (no ESP mount, no write: the bundle's root file does not even exist).
    std::fs::create_dir_all(n.path("bundle/netboot/uki")).unwrap();
    std::fs::write(n.path("bundle/netboot/uki/labimg-b.efi"), &app).unwrap();
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&app))
    };
    n.write(
        "bundle/upgrade.env",
        &format!(
            "LABIMG_BUNDLE_UKI_B_FILE='netboot/uki/labimg-b.efi'\nLABIMG_BUNDLE_UKI_B_SHA256='{sum}'\n"
        ),
    );
    let r = sb_run(
        &n,
        &[],
        "mkdir -p \"$WORK\" esp/EFI/Linux\n\
         touch esp/EFI/Linux/labimg-b.efi\n\
         part_mount() { echo \"MOUNTED $*\"; }\n\
         write_root() { echo WROTE; }\n\
         LB_BUNDLE=$PWD/bundle LB_META=$PWD/bundle/upgrade.env LB_NEW_SLOT=b\n\
         stage_uki 0",
    );
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        !r.stdout.contains("MOUNTED") && !r.stdout.contains("WROTE"),
        "{}",
        r.stdout
    );
    assert!(n.path("esp/EFI/Linux/labimg-b.efi").exists());
    assert!(
        r.stderr.contains(
            "labimg: upgrade refused: UKI netboot/uki/labimg-b.efi is not signed by this image's Secure Boot db key"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn uki_names_parse_into_slot_tries_left_and_tries_done() {
    let n = Node::new();
    for (name, want) in [
        ("labimg-a.efi", Some("a  ")),
        ("labimg-b+3.efi", Some("b 3 ")),
        ("/esp/EFI/Linux/labimg-b+2-1.efi", Some("b 2 1")),
        ("labimg-b+0-3.efi", Some("b 0 3")),
        ("labimg-c+3.efi", None),
        ("labimg-a+.efi", None),
        ("labimg-a+1-.efi", None),
        ("labimg-a.conf", None),
        ("xlabimg-a.efi", None),
    ] {
        let r = n.run(&[], &format!("uki_name '{name}'"));
        match want {
            Some(w) => assert!(
                r.ok && r.stdout == format!("{w}\n"),
                "{name}: {:?}",
                r.stdout
            ),
            None => assert!(!r.ok && r.stdout.is_empty(), "{name}: {:?}", r.stdout),
        }
    }
}

/// An efivarfs file: 4 attribute bytes (NV+BS+RT), then `value`.
fn efivar(n: &Node, name: &str, value: &[u8]) {
    let mut data = vec![7, 0, 0, 0];
    data.extend_from_slice(value);
    let p = n.path(&format!("efivars/{name}"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

#[test]
fn secure_boot_trials_are_known_from_systemd_boots_boot_count_path_and_blessed_by_rename() {
    const LOADER: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
    const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let (n, _db) = secure_boot_node();
    std::fs::create_dir_all(n.path("efivars")).unwrap();
    let env = [("LB_EFIVARS", "efivars"), ("LB_CMDLINE", "labimg.slot=b")];
    // Secure Boot state from the firmware's variables.
    let state = |n: &Node| sb_run(n, &env, "secure_boot_state").stdout;
    efivar(&n, &format!("SecureBoot-{GLOBAL}"), &[1]);
    efivar(&n, &format!("SetupMode-{GLOBAL}"), &[0]);
    assert_eq!(state(&n), "on\n");
    efivar(&n, &format!("SecureBoot-{GLOBAL}"), &[0]);
    assert_eq!(state(&n), "off\n");
    efivar(&n, &format!("SetupMode-{GLOBAL}"), &[1]);
    assert_eq!(state(&n), "setup\n");

    // No LoaderBootCountPath: a blessed (uncounted) UKI, no trial.
    let trial = |n: &Node| sb_run(n, &env, "trial_check && echo TRIAL");
    let r = trial(&n);
    assert!(!r.ok && !r.stdout.contains("TRIAL"), "{}", r.stderr);
    // The other slot's counted UKI is not this boot's trial.
    let count_path = format!("LoaderBootCountPath-{LOADER}");
    efivar(&n, &count_path, &utf16z("\\EFI\\Linux\\labimg-a+2-1.efi"));
    assert!(!trial(&n).ok);
    // Without the db certificate (not a Secure Boot image) the variable is ignored.
    efivar(&n, &count_path, &utf16z("\\EFI\\Linux\\labimg-b+2-1.efi"));
    let r = n.run(&env, "trial_check && echo TRIAL");
    assert!(!r.ok, "{}", r.stderr);
    // This slot's counted UKI: a trial, with the default deadline.
    let r = trial(&n);
    assert!(r.ok && r.stdout.contains("TRIAL"), "{}", r.stderr);
    assert!(
        r.stderr.contains("labimg: boot trial slot=b deadline=600s"),
        "{}",
        r.stderr
    );
    // A FATAL on such a boot reboots (labimg.on-fatal=reboot cannot be on the
    // sealed command line); an explicit labimg.on-fatal still wins.
    let r = n.run(&env, "on_fatal");
    assert_eq!(r.stdout, "reboot", "{}", r.stderr);
    let r = n.run(
        &[
            env[0],
            ("LB_CMDLINE", "labimg.slot=b labimg.on-fatal=poweroff"),
        ],
        "on_fatal",
    );
    assert_eq!(r.stdout, "poweroff", "{}", r.stderr);

    // bless: labimg-b+2-1.efi becomes labimg-b.efi; slot a's UKI stays as it is.
    for f in ["labimg-a.efi", "labimg-b+2-1.efi"] {
        n.write(&format!("esp/EFI/Linux/{f}"), f);
    }
    let k3s = ready_after(&n, 0);
    let r = sb_run(
        &n,
        &[
            ("LB_K3S", &k3s),
            ("LB_HOSTNAME", "pve-up-1"),
            env[0],
            env[1],
        ],
        "part_mount() { :; }\npart_umount() { :; }\nREADY_POLL=1\n\
         echo 600 >\"$TRIAL_FILE\"\necho $(($(uptime_s) + 60)) >\"$TRIAL_UNTIL\"\n\
         bless && echo BLESSED",
    );
    assert!(r.ok && r.stdout.contains("BLESSED"), "{}", r.stderr);
    assert!(
        r.stderr.contains("labimg: boot blessed slot=b"),
        "{}",
        r.stderr
    );
    let mut names: Vec<String> = std::fs::read_dir(n.path("esp/EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["labimg-a.efi", "labimg-b.efi"]);
    assert_eq!(
        std::fs::read_to_string(n.path("esp/EFI/Linux/labimg-b.efi")).unwrap(),
        "labimg-b+2-1.efi"
    );
}

#[test]
fn under_secure_boot_an_older_bundle_or_one_of_the_same_epoch_with_another_root_is_refused() {
    let (n, _db) = secure_boot_node();
    n.write("release", "PROFILE=proxmox\nSOURCE_DATE_EPOCH=1764100000\n");
    let lineage = |epoch: &str, version: &str, env: &[(&str, &str)]| {
        n.write(
            "upgrade.env",
            &format!(
                "LABIMG_BUNDLE_PROFILE='proxmox'\nLABIMG_BUNDLE_SOURCE_DATE_EPOCH='{epoch}'\nLABIMG_BUNDLE_VERSION='{version}'\n"
            ),
        );
        let mut env = env.to_vec();
        env.push(("LB_ROOT_SHA256", "0123456789abcdef"));
        sb_run(
            &n,
            &env,
            "RELEASE=$PWD/release LB_META=$PWD/upgrade.env\ncheck_lineage\necho passed",
        )
    };
    let r = lineage("1764100000", "0123456789ab", &[]);
    assert!(r.ok, "{}", r.stderr);
    let r = lineage("1764200000", "fedcba987654", &[]);
    assert!(r.ok, "{}", r.stderr);
    // An older build never boots (its UKI sorts after the running one): refused even
    // with the by-hand override that lets a plain image go back.
    let r = lineage(
        "1764099999",
        "fedcba987654",
        &[("LABIMG_ALLOW_DOWNGRADE", "1")],
    );
    assert!(
        !r.ok && r.stderr.contains("under Secure Boot systemd-boot orders slots by their UKIs' epoch and would never boot it"),
        "{}",
        r.stderr
    );
    let r = lineage("1764100000", "fedcba987654", &[]);
    assert!(
        !r.ok
            && r.stderr.contains(
                "labimg: upgrade refused: the bundle was built at the same SOURCE_DATE_EPOCH as the running image (1764100000) but has another root"
            ),
        "{}",
        r.stderr
    );
}
