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
