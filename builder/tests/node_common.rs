//! The pure functions of the node OS's `common.sh` (`builder/node/`), run under
//! `busybox sh` with only busybox's applets on `PATH`, as on a node: the kernel
//! command line (preset through `LB_CMDLINE` instead of `/proc/cmdline`), the
//! parsing helpers, the node's identity, `node.env` and `poll`. Every helper is also
//! given an input that must come out differently, so one that ignores its input
//! cannot pass.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A scratch folder with `bin/` holding a symlink to busybox per applet.
struct Node {
    dir: tempfile::TempDir,
}

/// What a script printed and whether it exited 0.
struct Ran {
    ok: bool,
    stdout: String,
}

fn busybox() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join("busybox"))
        .find(|p| p.is_file())
        .expect("busybox not found: install Debian's busybox package (bash .ci/install-deps)")
}

impl Node {
    fn new() -> Node {
        let busybox = busybox();
        let out = Command::new("busybox").arg("--list").output().unwrap();
        assert!(out.status.success(), "busybox --list failed");
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // busybox itself too: the child's PATH is only bin/.
        for applet in String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .chain(["busybox"])
        {
            std::os::unix::fs::symlink(&busybox, bin.join(applet)).unwrap();
        }
        Node { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, contents: &[u8]) -> String {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p.display().to_string()
    }

    /// Runs `script` after sourcing common.sh; `cmdline` presets `LB_CMDLINE`
    /// (None: common.sh reads /proc/cmdline).
    fn run(&self, cmdline: Option<&str>, script: &str) -> Ran {
        let common = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/common.sh");
        let mut cmd = Command::new("busybox");
        cmd.env_clear()
            .env("PATH", self.path("bin"))
            .current_dir(self.dir.path())
            .arg("sh")
            .arg("-c")
            .arg(format!(". '{}'\n{script}", common.display()));
        if let Some(c) = cmdline {
            cmd.env("LB_CMDLINE", c);
        }
        let out = cmd.output().unwrap();
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    /// Like [`Node::run`], for a script that must succeed; its output.
    fn out(&self, cmdline: Option<&str>, script: &str) -> String {
        let r = self.run(cmdline, script);
        assert!(r.ok, "script failed: {script}\nstdout: {}", r.stdout);
        r.stdout
    }
}

/// Shell single quotes around `s`.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const CMDLINE: &str = "BOOT_IMAGE=/vmlinuz labimg.root=PARTLABEL=root-a \
    labimg.root.url=http://10.0.2.2/root.squashfs labimg.slot=a labimg.insecure quiet \
    labimg.slot=b console=ttyS0";

fn get(node: &Node, cmdline: Option<&str>, key: &str) -> String {
    node.out(cmdline, &format!("cmdline_get {}", q(key)))
}

#[test]
fn cmdline_get_takes_the_last_value_of_exactly_that_key() {
    let n = Node::new();
    let c = Some(CMDLINE);
    // The value keeps its own '=', and labimg.root.url is another key.
    assert_eq!(get(&n, c, "labimg.root"), "PARTLABEL=root-a");
    assert_eq!(
        get(&n, c, "labimg.root.url"),
        "http://10.0.2.2/root.squashfs"
    );
    assert_eq!(get(&n, c, "labimg.slot"), "b", "the last occurrence wins");
    assert_eq!(get(&n, c, "labimg.insecure"), "1", "a bare key is 1");
    assert_eq!(get(&n, c, "console"), "ttyS0");
    assert_eq!(get(&n, c, "labimg.config"), "", "an absent key is empty");
    assert_eq!(get(&n, c, "labimg"), "", "a prefix of keys is not a key");
    assert_eq!(get(&n, c, "labimg.root.u"), "");
}

/// The first key on this machine's /proc/cmdline and its value (the last
/// occurrence; a bare key is "1"), if the line has any.
fn proc_cmdline_first() -> Option<(String, String)> {
    let proc = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let words: Vec<&str> = proc.split_whitespace().collect();
    let key = words.first()?.split('=').next()?.to_owned();
    let value = words.iter().rev().find_map(|w| match w.split_once('=') {
        Some((k, v)) if k == key => Some(v.to_owned()),
        None if *w == key => Some("1".to_owned()),
        _ => None,
    })?;
    Some((key, value))
}

#[test]
fn cmdline_get_reads_proc_cmdline_unless_preset() {
    let n = Node::new();
    let (key, value) = proc_cmdline_first().expect("/proc/cmdline is empty");
    assert_eq!(get(&n, None, &key), value);
    // A preset line, even an empty one, hides /proc/cmdline.
    assert_eq!(get(&n, Some(""), &key), "");
    assert_eq!(get(&n, Some(&format!("{key}=preset")), &key), "preset");
}

#[test]
fn cmdline_add_appends_to_the_whole_command_line() {
    let n = Node::new();
    let both = "echo \"$(cmdline_get labimg.on-fatal) $(cmdline_get labimg.config)\"";
    let c = Some("labimg.config=http://s/c labimg.on-fatal=poweroff");
    assert_eq!(n.out(c, both), "poweroff http://s/c\n");
    let add = format!("cmdline_add labimg.on-fatal=reboot\n{both}");
    assert_eq!(n.out(c, &add), "reboot http://s/c\n");
    // Read from /proc/cmdline: the line is read before the append, not replaced by
    // it (stage 2 once lost the whole line on trial boots this way).
    let (key, value) = proc_cmdline_first().expect("/proc/cmdline is empty");
    let out = n.out(
        None,
        &format!(
            "cmdline_add labimg.on-fatal=reboot\n\
             echo \"$(cmdline_get labimg.on-fatal) $(cmdline_get {})\"",
            q(&key)
        ),
    );
    assert_eq!(out, format!("reboot {value}\n"));
}

#[test]
fn lower_and_le_number() {
    let n = Node::new();
    assert_eq!(n.out(None, "lower 52:54:00:AB:Cd:eF"), "52:54:00:ab:cd:ef");
    assert_eq!(n.out(None, "lower abc"), "abc");
    let le = |bytes: &str| n.out(None, &format!("le_number {}", q(bytes)));
    assert_eq!(le("00 10"), "4096\n", "little-endian: low byte first");
    assert_eq!(le("10 00"), "16\n");
    assert_eq!(le("22 00 00 00 00 00 00 00"), "34\n");
    assert_eq!(le("01 00 00 00 00 00 00 01"), "72057594037927937\n");
    assert_eq!(le(""), "0\n");
}

#[test]
fn hexbytes_and_sha256_of_read_what_they_are_asked_for() {
    let n = Node::new();
    let mut data = b"\x00\x01EFI PART\xff\x10".to_vec();
    data.extend((0..5000u32).map(|i| (i % 251) as u8));
    let f = n.write("disk.img", &data);
    assert_eq!(
        n.out(None, &format!("hexbytes {f} 2 8")),
        "45 46 49 20 50 41 52 54"
    );
    assert_eq!(n.out(None, &format!("hexbytes {f} 10 2")), "ff 10");
    assert_eq!(n.out(None, &format!("hexbytes {f} 0 3")), "00 01 45");
    let whole = hex::encode(Sha256::digest(&data));
    let head = hex::encode(Sha256::digest(&data[..100]));
    assert_ne!(whole, head);
    assert_eq!(n.out(None, &format!("sha256_of {f}")), format!("{whole}\n"));
    assert_eq!(
        n.out(None, &format!("sha256_of {f} 100")),
        format!("{head}\n")
    );
}

#[test]
fn uevent_get_reads_one_key_from_the_start_of_a_line() {
    let n = Node::new();
    n.write(
        "sys/vda2/uevent",
        b"MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=root-a\n",
    );
    let dir = n.path("sys/vda2").display().to_string();
    let get = |key: &str| n.out(None, &format!("uevent_get {dir} {key}"));
    assert_eq!(get("PARTNAME"), "root-a\n");
    assert_eq!(get("DEVNAME"), "vda2\n");
    assert_eq!(get("PARTN"), "2\n");
    assert_eq!(get("NAME"), "", "DEVNAME= and PARTNAME= are not NAME=");
    let r = n.run(None, &format!("uevent_get {dir}/missing DEVNAME"));
    assert!(!r.ok && r.stdout.is_empty(), "no uevent file: {}", r.stdout);
}

#[test]
fn poll_retries_until_the_command_succeeds_and_passes_its_output() {
    let n = Node::new();
    let t = Instant::now();
    assert_eq!(
        n.out(
            None,
            "tries=0\n\
             third() { tries=$((tries + 1)); [ $tries -ge 3 ] && echo \"found after $tries\"; }\n\
             poll 5 third",
        ),
        "found after 3\n"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(n.out(None, "poll 1 test a = a && echo yes"), "yes\n");

    let t = Instant::now();
    let r = n.run(None, "poll 1 test a = b");
    assert!(!r.ok, "a command that never succeeds fails the poll");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "poll 1 took {took:?}"
    );
    // Ten tries a second, 0.1 s apart.
    let r = n.run(
        None,
        "n=0; twice() { n=$((n + 1)); echo try $n; false; }; poll 1 twice",
    );
    assert!(!r.ok);
    assert_eq!(r.stdout.lines().count(), 10, "{}", r.stdout);
}

#[test]
fn pi_serial_strips_nuls_and_lowercases() {
    let n = Node::new();
    let f = n.write("serial-number", b"10000000ABCDEF12\0");
    assert_eq!(n.out(None, &format!("pi_serial {f}")), "10000000abcdef12");
    let f = n.write("serial-number2", b"\x0010000000\x00beef\x00");
    assert_eq!(n.out(None, &format!("pi_serial {f}")), "10000000beef");
}

#[test]
fn derived_hostname_prefers_the_serial_then_the_mac() {
    let n = Node::new();
    let name = |serial: &str, mac: &str| {
        n.run(
            None,
            &format!("derived_hostname homelab {} {}", q(serial), q(mac)),
        )
    };
    let r = name("10000000abcdef12", "2c:cf:67:12:34:56");
    assert!(r.ok);
    assert_eq!(r.stdout, "homelab-abcdef12\n");
    let r = name("", "2c:cf:67:12:34:56");
    assert!(r.ok);
    assert_eq!(r.stdout, "homelab-123456\n");
    let r = name("", "");
    assert!(!r.ok, "no serial and no MAC: no name");
    assert_eq!(r.stdout, "");
}

#[test]
fn lookup_node_finds_the_first_listed_key_with_a_folder() {
    let n = Node::new();
    n.write(
        "nodes/index",
        b"# <mac-or-serial> <node>\n\
          #52:54:00:12:34:56 cp1\n\
          52:54:00:AA:BB:CC cp1\n\
          10000000abcdef12 pi1\n\
          ABCDEF99 pi8\n\
          52:54:00:00:00:09 gone\n",
    );
    for d in ["cp1", "pi1", "pi8"] {
        std::fs::create_dir_all(n.path("nodes").join(d)).unwrap();
    }
    let nodes = n.path("nodes").display().to_string();
    let look = |keys: &str| n.run(None, &format!("lookup_node {nodes} {keys}"));
    let found = |keys: &str| {
        let r = look(keys);
        assert!(r.ok, "lookup_node {keys} found nothing");
        r.stdout
    };
    assert_eq!(
        found("52:54:00:aa:bb:cc"),
        "cp1\n",
        "index keys compare lowercased"
    );
    assert_eq!(found("'' 10000000abcdef12 abcdef99"), "pi1\n");
    assert_eq!(found("52:54:00:12:34:56 '' abcdef99"), "pi8\n");
    assert_eq!(found("10000000abcdef12 52:54:00:aa:bb:cc"), "pi1\n");
    assert!(
        !look("52:54:00:00:00:09").ok,
        "a listed node without a folder"
    );
    assert!(!look("52:54:00:12:34:56").ok, "an unlisted MAC");
    assert!(!look("'#52:54:00:12:34:56'").ok, "a commented-out line");
    assert!(!n.run(None, "lookup_node /nonexistent 52:54:00:aa:bb:cc").ok);
}

/// `KEY='value'` lines as the builder writes them (nodecfg.rs), unquoted.
fn parse_node_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let v = v.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
            (k.to_owned(), v.replace(r"'\''", "'"))
        })
        .collect()
}

const NODE_ENV_KEYS: [&str; 10] = [
    "HOSTNAME",
    "HOSTNAME_PREFIX",
    "ROLE",
    "IP",
    "GATEWAY",
    "DNS",
    "K3S_SHA256",
    "K3S_URL_SOURCE",
    "JOIN_PEERS",
    "STATE_DISK",
];

/// node_env_load FILE, then each LB_ value on a line, then which node.env names
/// are still set.
fn load(n: &Node, file: &str, before: &str) -> Vec<String> {
    let script = format!(
        "{before}\nnode_env_load {}\n{}\nfor v in HOSTNAME ROLE IP DNS K3S_VERSION JOIN_PEERS STATE_DISK; do eval \"[ -z \\\"\\${{$v+set}}\\\" ] || echo still-set $v\"; done",
        q(file),
        NODE_ENV_KEYS
            .iter()
            .map(|k| format!("echo \"LB_{k}=$LB_{k}\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    n.out(None, &script).lines().map(str::to_owned).collect()
}

#[test]
fn node_env_load_reads_what_the_builder_writes() {
    let n = Node::new();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/preseed");
    // A listed node with a static address (the first of three servers: it has
    // JOIN_PEERS), and an unlisted machine's default.
    for rel in [
        "ha-cilium-argocd/cp1/node.env",
        "proxmox-longhorn/default/node.env",
    ] {
        let file = golden.join(rel);
        let text = std::fs::read_to_string(&file).unwrap();
        let env = parse_node_env(&text);
        let want: Vec<String> = NODE_ENV_KEYS
            .iter()
            .map(|k| {
                let v = env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
                format!("LB_{k}={}", v.unwrap_or(""))
            })
            .collect();
        assert!(
            want.iter()
                .any(|l| l.starts_with("LB_ROLE=") && l.len() > 8),
            "{rel} has no ROLE"
        );
        assert_eq!(load(&n, &file.display().to_string(), ""), want, "{rel}");
    }
}

#[test]
fn node_env_load_leaves_nothing_stale() {
    let n = Node::new();
    let f = n.write(
        "node.env",
        b"HOSTNAME='it'\\''s'\nROLE='agent'\nDNS='1.1.1.1 9.9.9.9'\nK3S_VERSION='v1'\n",
    );
    let got = load(
        &n,
        &f,
        "IP=10.0.0.9/24 LB_IP=10.0.0.9/24 GATEWAY=10.0.0.1 LB_K3S_SHA256=stale \
         LB_JOIN_PEERS=https://old:6443 STATE_DISK=sdz",
    );
    assert_eq!(
        got,
        [
            "LB_HOSTNAME=it's",
            "LB_HOSTNAME_PREFIX=",
            "LB_ROLE=agent",
            "LB_IP=",
            "LB_GATEWAY=",
            "LB_DNS=1.1.1.1 9.9.9.9",
            "LB_K3S_SHA256=",
            "LB_K3S_URL_SOURCE=",
            "LB_JOIN_PEERS=",
            "LB_STATE_DISK=",
        ],
        "keys the file lacks are empty, whatever was set before"
    );
}

/// kv_get FILE KEY's exit status and output.
fn kv(n: &Node, file: &str, key: &str) -> (i32, String) {
    let r = n.out(
        None,
        &format!("kv_get {} {}; echo \"status=$?\"", q(file), q(key)),
    );
    let (out, status) = r.rsplit_once("status=").unwrap();
    (status.trim().parse().unwrap(), out.to_owned())
}

#[test]
fn kv_get_reads_every_key_of_the_upgrade_env_the_builder_writes() {
    use std::collections::BTreeMap;
    let n = Node::new();
    let out = n.path("out");
    std::fs::create_dir_all(out.join("netboot/rpi/overlays")).unwrap();
    std::fs::write(out.join("netboot/vmlinuz"), b"kernel").unwrap();
    std::fs::write(out.join("netboot/initrd.img"), b"initrd").unwrap();
    std::fs::write(out.join("netboot/rpi/config.txt"), b"[all]\n").unwrap();
    std::fs::write(out.join("netboot/rpi/overlays/a.dtbo"), b"").unwrap();
    let root = labimg_builder::rootimg::RootImage {
        path: out.join("netboot/root.squashfs"),
        size: 4096,
        sha256: "ab".repeat(32),
        verity: labimg_builder::verity::Verity {
            root_hash: "00".repeat(32),
            salt: String::new(),
            uuid: String::new(),
            data_blocks: 1,
            hash_offset: 4096,
        },
    };
    let cmdline = BTreeMap::from([
        (
            "a".to_owned(),
            "console=ttyS0 labimg.slot=a x=$(reboot) *".to_owned(),
        ),
        ("b".to_owned(), "console=ttyS0 labimg.slot=b".to_owned()),
    ]);
    let b =
        labimg_builder::upgrade::write_upgrade_json(&out, "p", "v1.36.4+k3s1", 7, &root, &cmdline)
            .unwrap();
    let env = out.join("upgrade.env").display().to_string();
    let rpi: Vec<String> = b
        .rpi_boot
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|(p, h)| [p.clone(), h.clone()])
        .collect();
    for (key, want) in [
        ("VERSION", b.version.clone()),
        ("PROFILE", "p".into()),
        ("SOURCE_DATE_EPOCH", "7".into()),
        ("K3S_VERSION", "v1.36.4+k3s1".into()),
        ("ROOT_FILE", b.root.file.clone()),
        ("ROOT_SHA256", b.root.sha256.clone()),
        ("ROOT_SIZE", "4096".into()),
        ("KERNEL_FILE", "netboot/vmlinuz".into()),
        ("KERNEL_SHA256", b.kernel.sha256.clone()),
        ("KERNEL_SIZE", "6".into()),
        ("INITRD_FILE", "netboot/initrd.img".into()),
        ("INITRD_SHA256", b.initrd.sha256.clone()),
        ("INITRD_SIZE", "6".into()),
        ("CMDLINE_A", cmdline["a"].clone()),
        ("CMDLINE_B", cmdline["b"].clone()),
        ("RPI_FILES", rpi.join(" ")),
    ] {
        assert_eq!(
            kv(&n, &env, &format!("LABIMG_BUNDLE_{key}")),
            (0, format!("{want}\n")),
            "{key}"
        );
    }
    assert_eq!(kv(&n, &env, "LABIMG_BUNDLE_CMDLINE_C"), (1, String::new()));
    assert!(!n.path("reboot").exists());
}

#[test]
fn kv_get_refuses_a_file_with_any_line_that_is_not_key_quoted_value() {
    let n = Node::new();
    let good = "# comment\n\nA='1'\nB_2=''\n_C='x y=z $(touch ran) `touch ran` *'\n";
    let f = n.write("good.env", good.as_bytes());
    assert_eq!(kv(&n, &f, "A"), (0, "1\n".into()));
    assert_eq!(kv(&n, &f, "B_2"), (0, "\n".into()));
    assert_eq!(
        kv(&n, &f, "_C"),
        (0, "x y=z $(touch ran) `touch ran` *\n".into())
    );
    assert_eq!(kv(&n, &f, "D"), (1, String::new()), "absent");
    // No newline after the last line is fine.
    let f = n.write("last.env", b"A='1'\nB='2'");
    assert_eq!(kv(&n, &f, "B"), (0, "2\n".into()));
    for bad in [
        "a='lowercase key'",
        "1A='starts with a digit'",
        "A-B='dash'",
        " A='leading space'",
        "A=unquoted",
        "A=unquoted;touch ran",
        "A=\"double quoted\"",
        "A='no closing quote",
        "A='quote ' inside'",
        "A='back\\slash'",
        "A='1' ",
        "A='1'\r",
        "A",
        "=''",
        "export A='1'",
        "B='2'",
    ] {
        // The bad line is not the key asked for: the whole file is refused anyway.
        let f = n.write("bad.env", format!("B='2'\n{bad}\nZ='z'\n").as_bytes());
        let (status, out) = kv(&n, &f, "Z");
        assert_eq!(
            (status, out.as_str()),
            (2, ""),
            "{bad:?} (B twice if B='2')"
        );
    }
    assert!(!n.path("ran").exists());
}

#[test]
fn sums_get_finds_the_line_of_exactly_that_file() {
    let n = Node::new();
    let f = n.write(
        "SHA256SUMS",
        b"aa  netboot/upgrade.env\nBB  upgrade.env.old\nCC *upgrade.env\ndd  upgrade.json\n",
    );
    assert_eq!(
        n.out(None, &format!("sums_get {} upgrade.env", q(&f))),
        "cc"
    );
    assert_eq!(
        n.out(None, &format!("sums_get {} upgrade.json", q(&f))),
        "dd"
    );
    assert!(!n.run(None, &format!("sums_get {} manifest.json", q(&f))).ok);
}

/// A server's rendered `config.yaml` as the first server of an etcd cluster gets it.
const FIRST_SERVER_CONFIG: &str = "# k3s server config for cp1 (rendered by labimg)\n\
node-name: cp1\nnode-ip: 192.168.20.11\ncluster-init: true\nflannel-backend: none\n\
token-file: /etc/rancher/k3s/token\n";

/// Runs k3s_join_decide on a fresh copy of `config` with `probe` (a shell function
/// named `probe`, defined first) and `peers`: what it printed, its status, the
/// files beside the config and the peers the probe was asked, then the config after.
fn join_decide(config: &str, etcd: bool, probe: &str, peers: &str) -> (String, String) {
    let n = Node::new();
    let cfg = n.write("etc/config.yaml", config.as_bytes());
    let etcd_dir = n.path("var/db/etcd").display().to_string();
    if etcd {
        std::fs::create_dir_all(&etcd_dir).unwrap();
    }
    let out = n.out(
        None,
        &format!(
            "{probe}\nk3s_join_decide {} {} probe {peers} >out; s=$?; cat out; \
             echo \"status=$s\"; ls etc; echo log:; cat probed 2>/dev/null; true",
            q(&cfg),
            q(&etcd_dir)
        ),
    );
    (out, std::fs::read_to_string(&cfg).unwrap())
}

#[test]
fn k3s_join_decide_joins_the_first_peer_that_answers() {
    // The stub probe records what it was asked and answers for .13 only.
    let probe = "probe() { echo \"$1\" >>probed; [ \"$1\" = https://192.168.20.13:6443 ]; }";
    let peers = "https://192.168.20.12:6443 https://192.168.20.13:6443 https://cp4:6443";
    let (out, after) = join_decide(FIRST_SERVER_CONFIG, false, probe, peers);
    assert_eq!(
        out,
        "join https://192.168.20.13:6443\nstatus=0\nconfig.yaml\nlog:\n\
         https://192.168.20.12:6443\nhttps://192.168.20.13:6443\n",
        "asks in order, stops at the first answer, leaves no temporary file"
    );
    assert_eq!(
        after,
        FIRST_SERVER_CONFIG.replace("cluster-init: true\n", "")
            + "server: \"https://192.168.20.13:6443\"\n"
    );
}

#[test]
fn k3s_join_decide_initialises_when_no_peer_answers() {
    let probe = "probe() { echo \"$1\" >>probed; return 1; }";
    let (out, after) = join_decide(
        FIRST_SERVER_CONFIG,
        false,
        probe,
        "https://192.168.20.12:6443 https://192.168.20.13:6443",
    );
    assert_eq!(
        out,
        "init\nstatus=0\nconfig.yaml\nlog:\nhttps://192.168.20.12:6443\nhttps://192.168.20.13:6443\n"
    );
    assert_eq!(after, FIRST_SERVER_CONFIG, "unchanged");
    // No peers at all: the same, nobody asked.
    let (out, after) = join_decide(FIRST_SERVER_CONFIG, false, probe, "");
    assert_eq!(out, "init\nstatus=0\nconfig.yaml\nlog:\n");
    assert_eq!(after, FIRST_SERVER_CONFIG);
}

#[test]
fn k3s_join_decide_keeps_a_node_that_has_etcd_data_or_no_cluster_init() {
    // Every peer would answer: it must not matter.
    let probe = "probe() { echo \"$1\" >>probed; return 0; }";
    let peer = "https://192.168.20.12:6443";
    let (out, after) = join_decide(FIRST_SERVER_CONFIG, true, probe, peer);
    assert_eq!(
        out, "existing\nstatus=0\nconfig.yaml\nlog:\n",
        "nobody asked"
    );
    assert_eq!(after, FIRST_SERVER_CONFIG);
    // A config that does not initialise (a joiner, or `cluster-init: false`).
    for config in [
        "node-name: cp2\nserver: https://192.168.20.11:6443\n",
        "node-name: cp1\ncluster-init: false\n",
    ] {
        let (out, after) = join_decide(config, false, probe, peer);
        assert_eq!(out, "none\nstatus=0\nconfig.yaml\nlog:\n", "{config}");
        assert_eq!(after, config);
    }
}

/// A one-request HTTP server on 127.0.0.1 that answers `status`; its thread returns
/// the request line it saw.
fn http_once(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let body = "-----BEGIN CERTIFICATE-----\n";
        let _ = write!(
            stream,
            "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        line.trim().to_owned()
    });
    (url, handle)
}

/// The real probe asks for `/cacerts` (over plain HTTP here: the node's https
/// differs only in TLS, which busybox-static 1.37 does with --no-check-certificate).
#[test]
fn k3s_peer_answers_fetches_cacerts() {
    let n = Node::new();
    let (url, server) = http_once("200 OK");
    let r = n.run(None, &format!("k3s_peer_answers {}", q(&url)));
    assert!(r.ok, "a peer serving /cacerts answers: {}", r.stdout);
    assert_eq!(server.join().unwrap(), "GET /cacerts HTTP/1.1");

    let (url, server) = http_once("404 Not Found");
    assert!(!n.run(None, &format!("k3s_peer_answers {}", q(&url))).ok);
    server.join().unwrap();

    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    assert!(!n.run(None, &format!("k3s_peer_answers {}", q(&url))).ok);
}
