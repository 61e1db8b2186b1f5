//! Loading profiles: inheritance, `--set`, and problems reported all at once with
//! file, line, column and key path.

use std::path::{Path, PathBuf};

use labimg_builder::profile::{self, Arch, Board, GitopsEngine, ProfileErrors};

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

/// Writes `files` into a fresh folder and returns it.
fn write(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn errors(name: &str, dir: &Path, sets: &[&str]) -> ProfileErrors {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    match profile::load(name, dir, &sets) {
        Ok(p) => panic!("expected problems, loaded {p:?}"),
        Err(e) => e,
    }
}

/// Each problem's key path and line, sorted.
fn sorted_problems(e: &ProfileErrors) -> Vec<(String, usize)> {
    let mut got: Vec<(String, usize)> =
        e.0.iter()
            .map(|p| (p.path.clone(), p.location.line))
            .collect();
    got.sort();
    got
}

const MINIMAL: &str = r#"name = "mini"
[target]
arch = "amd64"
board = "proxmox"
[k3s]
version = "v1.36.4+k3s1"
sha256.amd64 = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"
"#;

#[test]
fn a_typo_and_a_wrong_type_are_both_reported_with_their_lines() {
    let dir = write(&[(
        "x.toml",
        r#"name = "x"

[target]
arch = "amd64"
board = "proxmox"

[k3s]
verison = "v1.36.4+k3s1"
sha256.amd64 = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"

[outputs]
netboot = "yes"
"#,
    )]);
    let e = errors("x", dir.path(), &[]);
    let file = dir.path().join("x.toml").display().to_string();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(
            &format!("{file}:8:1: k3s.verison: unknown key; did you mean 'version'?").as_str()
        ),
        "{text}"
    );
    assert!(
        lines.contains(
            &format!("{file}:12:11: outputs.netboot: expected a boolean, found a string").as_str()
        ),
        "{text}"
    );
    // The misspelt key leaves the real one missing: that is reported too, at the table.
    assert!(
        lines.contains(&format!("{file}:7:1: k3s.version: missing required key").as_str()),
        "{text}"
    );
    assert_eq!(e.0.len(), 3, "{text}");
}

#[test]
fn bad_enum_values_list_the_allowed_ones() {
    let dir = write(&[(
        "e.toml",
        &MINIMAL.replace("board = \"proxmox\"", "board = \"rpi4\""),
    )]);
    let e = errors("e", dir.path(), &[]);
    let p = &e.0[0];
    assert_eq!(
        (p.path.as_str(), p.location.line, p.location.column),
        ("target.board", 4, 9)
    );
    assert_eq!(
        p.message,
        "invalid value 'rpi4': expected one of 'proxmox', 'rpi5'"
    );
    assert_eq!(p.hint.as_deref(), Some("did you mean 'rpi5'?"));
}

#[test]
fn a_problem_in_a_parent_names_the_parent_file_and_line() {
    let dir = write(&[
        (
            "base.toml",
            "name = \"base\"\n[k3s]\nversion = \"v1.36.4+k3s1\"\ncluster-cidr = \"10.42.0.0/40\"\nflavour = 1\n",
        ),
        (
            "sub/child.toml",
            "extends = \"../base.toml\"\nname = \"child\"\n[target]\narch = \"amd64\"\nboard = \"proxmox\"\n[k3s.sha256]\namd64 = \"00\"\n",
        ),
    ]);
    let e = errors(
        dir.path().join("sub/child.toml").to_str().unwrap(),
        dir.path(),
        &[],
    );
    let base = dir.path().join("base.toml").display().to_string();
    let child = dir.path().join("sub/child.toml").display().to_string();
    let text = e.to_string();
    // Structural problems stop before the semantic pass; the unknown key is in the parent.
    assert_eq!(text, format!("{base}:5:1: k3s.flavour: unknown key"));
    std::fs::write(
        dir.path().join("base.toml"),
        "name = \"base\"\n[k3s]\nversion = \"v1.36.4+k3s1\"\ncluster-cidr = \"10.42.0.0/40\"\n",
    )
    .unwrap();
    let e = errors(
        dir.path().join("sub/child.toml").to_str().unwrap(),
        dir.path(),
        &[],
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "{base}:4:16: k3s.cluster-cidr: '10.42.0.0/40' is not an address"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{child}:7:9: k3s.sha256.amd64: '00' is not a SHA-256"
        )),
        "{text}"
    );
}

#[test]
fn extends_cycles_and_missing_parents_are_errors() {
    let dir = write(&[
        ("a.toml", "extends = \"b.toml\"\nname = \"a\"\n"),
        ("b.toml", "extends = \"a.toml\"\nname = \"b\"\n"),
        ("c.toml", "extends = \"nope.toml\"\nname = \"c\"\n"),
    ]);
    let text = errors("a", dir.path(), &[]).to_string();
    assert!(
        text.contains("b.toml:1:11: extends: extends cycle:"),
        "{text}"
    );
    let text = errors("c", dir.path(), &[]).to_string();
    assert!(
        text.contains("c.toml:1:11: extends: cannot read profile"),
        "{text}"
    );
}

#[test]
fn sets_override_values_as_toml_or_as_strings_and_are_checked_too() {
    let sets = [
        "k3s.version=v1.33.5+k3s1",
        "cni.kube-proxy-replacement=true",
        "disk.size=\"16GiB\"",
        "cluster.vip=10.1.1.1",
    ];
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let p = profile::load("proxmox", &profiles_dir(), &sets).unwrap();
    assert_eq!(p.k3s.version, "v1.33.5+k3s1");
    assert!(p.cni.kube_proxy_replacement);
    assert_eq!(p.disk.size.bytes(), 16 << 30);
    // One decided rule (Profile::server_url): a VIP nothing in the image announces
    // is not a join address; server-url is, else the first server's static ip.
    assert_eq!(p.cluster.vip.as_deref(), Some("10.1.1.1"));
    assert_eq!(p.server_url(), None);
    let text = errors(
        "proxmox",
        &profiles_dir(),
        &["k3s.verison=x", "outputs.netboot=maybe"],
    )
    .to_string();
    assert!(
        text.contains("--set:1:1: k3s.verison: unknown key; did you mean 'version'?"),
        "{text}"
    );
    assert!(
        text.contains("--set:1:17: outputs.netboot: expected a boolean, found a string"),
        "{text}"
    );
}

#[test]
fn semantic_problems_are_all_reported_at_once() {
    let text = format!(
        "{MINIMAL}{}",
        r#"[gitops]
engine = "flux"
app-of-apps = true
[[nodes]]
hostname = "cp_1"
mac = "bc:24:11:00:00:0g"
role = "server"
[[nodes]]
hostname = "cp2"
mac = "BC-24-11-00-00-02"
serial = "1234"
role = "server"
ip = "10.0.0.2"
[[nodes]]
hostname = "w1"
mac = "bc:24:11:00:00:02"
role = "agent"
"#
    );
    let dir = write(&[("s.toml", &text)]);
    let e = errors("s", dir.path(), &[]);
    let got: Vec<(String, usize)> =
        e.0.iter()
            .map(|p| (p.path.clone(), p.location.line))
            .collect();
    let want: Vec<(String, usize)> = [
        ("nodes", 11),      // two servers: no etcd quorum (reported at the first [[nodes]])
        ("gitops.repo", 8), // missing: reported at [gitops]
        ("gitops.app-of-apps", 10),
        ("nodes[0].hostname", 12),
        ("nodes[0].mac", 13),
        ("nodes[0].ip", 11), // a server needs a static ip or a DHCP reservation
        ("nodes[1].serial", 18),
        ("nodes[1].serial", 18), // wrong length, and a serial on a proxmox board
        ("nodes[1].ip", 20),
        ("nodes[2].mac", 23), // same MAC as nodes[1], written differently
        ("cluster.token", 1), // agents need a token; [cluster] is not written at all
        // cp2 and w1 join, and the first server has no static ip (the build would
        // stop there; validation says so first)
        ("cluster.server-url", 1),
    ]
    .iter()
    .map(|(p, l)| (p.to_string(), *l))
    .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "{e}");
}

#[test]
fn shipped_profiles_have_the_expected_shape() {
    let pi5 = profile::load("pi5", &profiles_dir(), &[]).unwrap();
    assert_eq!(
        (pi5.target.arch, pi5.target.board),
        (Arch::Arm64, Board::Rpi5)
    );
    assert_eq!(pi5.suites(), ["trixie", "trixie-backports"]);
    assert_eq!(pi5.kernel_package(), "linux-image-arm64/trixie-backports");
    assert_eq!(
        pi5.k3s_url(),
        "https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s-arm64"
    );
    assert_eq!(pi5.k3s_sha256().map(str::len), Some(64));
    let ha = profile::load("examples/ha-cilium-argocd.toml", &profiles_dir(), &[]);
    // Paths are relative to the working directory; tests run in builder/.
    let ha = ha
        .or_else(|_| {
            profile::load(
                profiles_dir()
                    .join("examples/ha-cilium-argocd.toml")
                    .to_str()
                    .unwrap(),
                &profiles_dir(),
                &[],
            )
        })
        .unwrap();
    assert_eq!(ha.servers().count(), 3);
    assert_eq!(ha.gitops.engine, GitopsEngine::Argocd);
    // The same join address the renderer writes into cp2's and cp3's config.yaml.
    assert_eq!(
        ha.server_url().as_deref(),
        Some("https://192.168.20.11:6443")
    );
    assert_eq!(
        ha.nodes[0].address().map(|c| (c.addr.to_string(), c.len)),
        Some(("192.168.20.11".into(), 24))
    );
}

#[test]
fn literal_secrets_and_malformed_sizes_are_rejected() {
    let text = format!(
        "{MINIMAL}[cluster]\ntoken = {{ value = \"s3cret\" }}\n[disk]\nsize = \"4 parsecs\"\n"
    );
    let dir = write(&[("t.toml", &text)]);
    let e = errors("t", dir.path(), &[]);
    let text = e.to_string();
    assert!(
        text.contains(":9:11: cluster.token.value: unknown key; expected one of { file = ... }, { env = ... }, { sops-file = ... }"),
        "{text}"
    );
    assert!(
        text.contains(":11:8: disk.size: invalid size '4 parsecs'"),
        "{text}"
    );
    assert_eq!(e.0.len(), 2, "{text}");
}

#[test]
fn kernel_runtime_modules_and_sysctls_are_checked_with_their_lines() {
    let text = format!(
        "{MINIMAL}{}",
        r#"[kernel]
load = ["wireguard", "not a module"]
[kernel.sysctls]
"vm.max_map_count" = 262144
"net.ipv4.tcp_rmem" = "4096 87380 6291456"
"nodots" = 1
"bad.value" = "a\nb"
"#
    );
    let dir = write(&[("k.toml", &text)]);
    let e = errors("k", dir.path(), &[]);
    let got = sorted_problems(&e);
    assert_eq!(
        got,
        vec![
            ("kernel.load[1]".to_owned(), 9),
            ("kernel.sysctls.\"bad.value\"".to_owned(), 14),
            ("kernel.sysctls.\"nodots\"".to_owned(), 13),
        ],
        "{e}"
    );

    // The same keys, valid: numbers and strings both load.
    let ok = format!(
        "{MINIMAL}{}",
        r#"[kernel]
load = ["wireguard"]
sysctls = { "vm.max_map_count" = 262144, "net.ipv4.tcp_rmem" = "4096 87380 6291456" }
"#
    );
    let dir = write(&[("ok.toml", &ok)]);
    let p = profile::load("ok", dir.path(), &[]).unwrap();
    assert_eq!(p.kernel.load, ["wireguard"]);
    let values: Vec<String> = p.kernel.sysctls.values().map(|v| v.to_string()).collect();
    assert_eq!(values, ["4096 87380 6291456", "262144"]);
}

#[test]
fn upgrade_url_and_public_key_are_checked() {
    let bad = format!(
        "{MINIMAL}{}",
        r#"[upgrade]
url = "ftp://10.0.0.2/images/x"
public-key = "not-a-key"
"#
    );
    let dir = write(&[("u.toml", &bad)]);
    let e = errors("u", dir.path(), &[]);
    let got = sorted_problems(&e);
    assert_eq!(
        got,
        vec![
            ("upgrade.public-key".to_owned(), 10),
            ("upgrade.url".to_owned(), 9),
        ],
        "{e}"
    );

    let good = format!(
        "{MINIMAL}{}",
        r#"[upgrade]
url = "http://10.0.0.2:8080/bundles/proxmox"
public-key = "RWSLFipdk3h87vgZFAfLVhLCDEXDoa5X+uN/RstJXGJtD/6a/zdVSGZj"
"#
    );
    let dir = write(&[("g.toml", &good)]);
    let p = profile::load("g", dir.path(), &[]).unwrap();
    assert_eq!(
        p.upgrade.url.as_deref(),
        Some("http://10.0.0.2:8080/bundles/proxmox")
    );
    // A profile without [upgrade] resolves without the table.
    let plain = write(&[("m.toml", MINIMAL)]);
    let m = profile::load("m", plain.path(), &[]).unwrap();
    assert!(!m.resolved().contains("[upgrade]"), "{}", m.resolved());
}

#[test]
fn airgap_image_archives_need_a_pin_a_known_suffix_and_a_unique_name() {
    let text = format!(
        "{MINIMAL}{}",
        r#"[[k3s.airgap-images]]
path = "vendor/cilium.tar.zst"
sha256 = "abc"
[[k3s.airgap-images]]
path = "vendor/images.zip"
sha256 = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"
[[k3s.airgap-images]]
path = "other/cilium.tar.zst"
sha256 = "835873f37245fc615f547a2fe2af9402a347875f13fa64a1f136de644955ea3f"
"#
    );
    let dir = write(&[("a.toml", &text)]);
    let e = errors("a", dir.path(), &[]);
    let got = sorted_problems(&e);
    assert_eq!(
        got,
        vec![
            ("k3s.airgap-images[0].sha256".to_owned(), 10),
            ("k3s.airgap-images[1].path".to_owned(), 12),
            ("k3s.airgap-images[2].path".to_owned(), 15),
        ],
        "{e}"
    );
}

#[test]
fn flux_over_ssh_needs_known_hosts_and_they_must_parse() {
    let flux = |extra: &str| {
        format!(
            "{MINIMAL}[gitops]\nengine = \"flux\"\nrepo = \"git@git.lan:lab/fleet.git\"\n\
             credentials = {{ file = \"deploy-key\" }}\n{extra}"
        )
    };
    let dir = write(&[
        ("missing.toml", &flux("")),
        ("bad.toml", &flux("known-hosts = \"git.lan ssh-ed25519\"\n")),
        (
            "ok.toml",
            &flux(
                "known-hosts = \"\"\"\n# git.lan\ngit.lan ssh-ed25519 \
                 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\"\"\"\n",
            ),
        ),
    ]);
    for (name, want) in [
        ("missing", "ssh-keyscan"),
        ("bad", "line 1 is not a known_hosts entry"),
    ] {
        let e = errors(name, dir.path(), &[]);
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "gitops.known-hosts", "{e}");
        assert!(e.to_string().contains(want), "{e}");
    }
    profile::load("ok", dir.path(), &[]).unwrap();
}

#[test]
fn unknown_nodes_policies_are_checked_against_the_profile() {
    let dir = write(&[
        ("mini.toml", MINIMAL),
        (
            "withnodes.toml",
            r#"extends = "mini.toml"
name = "withnodes"
[cluster]
name = "Home Lab"
unknown-nodes = "server"
[[nodes]]
hostname = "default"
mac = "52:54:00:00:00:01"
role = "server"
dhcp-reservation = true
"#,
        ),
    ]);
    let e = errors("withnodes", dir.path(), &[]);
    let got = sorted_problems(&e);
    assert_eq!(
        got,
        vec![
            ("cluster.name".to_owned(), 4),
            ("cluster.unknown-nodes".to_owned(), 5),
            ("nodes[0].hostname".to_owned(), 7),
        ],
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("withnodes.toml"), "{text}");
    assert!(
        text.contains("only allowed in a profile without [[nodes]]"),
        "{text}"
    );
    assert!(text.contains("set cluster.hostname-prefix"), "{text}");
    assert!(text.contains("reserved"), "{text}");

    // agent needs a token and a server to join.
    let e = errors("mini", dir.path(), &["cluster.unknown-nodes=agent"]);
    let text = e.to_string();
    assert!(text.contains("needs cluster.token"), "{text}");
    assert!(text.contains("needs a server to join"), "{text}");

    // Without [[nodes]] the default is a single-node server.
    let p = profile::load("mini", dir.path(), &[]).unwrap();
    assert_eq!(p.unknown_nodes(), profile::UnknownNodes::Server);
    assert_eq!(p.hostname_prefix(), "labimg");
}

#[test]
fn a_static_node_without_name_servers_is_an_error() {
    let text = format!(
        "{MINIMAL}{}",
        r#"[[nodes]]
hostname = "cp1"
mac = "bc:24:11:00:00:01"
role = "server"
ip = "10.0.0.2/24"
gateway = "10.0.0.1"
"#
    );
    let dir = write(&[("s.toml", &text)]);
    let e = errors("s", dir.path(), &[]);
    assert_eq!(
        sorted_problems(&e),
        vec![("nodes[0].ip".to_owned(), 12)],
        "{e}"
    );
    assert!(e.to_string().contains("needs dns"), "{e}");
    let fixed = format!("{text}dns = [\"10.0.0.1\"]\n");
    let dir = write(&[("s.toml", &fixed)]);
    profile::load("s", dir.path(), &[]).unwrap();
}

/// Address ranges and the join story are checked when the profile loads (what
/// `labimg profile validate` runs, so it catches what the build would), each problem
/// at its key, all at once.
#[test]
fn topology_problems_are_found_by_validation_at_their_keys() {
    let examples = profiles_dir().join("examples");
    let flux = examples.join("proxmox-flux.toml");
    let flux = flux.to_str().unwrap();
    let e = errors(flux, &profiles_dir(), &["k3s.service-cidr=10.42.128.0/17"]);
    let text = e.to_string();
    assert!(
        text.contains("overlaps k3s.service-cidr 10.42.128.0/17"),
        "{text}"
    );
    assert!(e.0.iter().any(|p| p.path == "k3s.service-cidr"), "{text}");

    let e = errors(flux, &profiles_dir(), &["k3s.cluster-cidr=192.168.0.0/16"]);
    let text = e.to_string();
    assert!(
        text.contains("node pve-cp1: ip 192.168.10.11 lies inside k3s.cluster-cidr"),
        "{text}"
    );
    // Every node with an address in the range, not only the first.
    let inside: Vec<&str> =
        e.0.iter()
            .filter(|p| p.message.contains("lies inside k3s.cluster-cidr"))
            .map(|p| p.path.as_str())
            .collect();
    assert!(
        inside.len() >= 2 && inside[0].starts_with("nodes["),
        "{text}"
    );

    let e = errors(
        flux,
        &profiles_dir(),
        &[
            "cni.kind=\"cilium\"",
            "cni.lb-ip-pools=[\"10.43.0.0/24\"]",
            "cni.l2-announcements=true",
        ],
    );
    let paths: Vec<&str> = e.0.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"cni.lb-ip-pools[0]") && paths.contains(&"cni.l2-announcements"),
        "{e}"
    );

    // pi5-argocd's control plane takes DHCP: without its server-url, its agents
    // would have nowhere to join.
    let text = std::fs::read_to_string(examples.join("pi5-argocd.toml"))
        .unwrap()
        .replace("server-url = \"https://pi-cp1.lan:6443\"\n", "")
        .replace(
            "../pi5.toml",
            profiles_dir().join("pi5.toml").to_str().unwrap(),
        );
    let dir = write(&[("pi.toml", &text)]);
    let path = dir.path().join("pi.toml");
    let e = errors(path.to_str().unwrap(), dir.path(), &[]);
    let p =
        e.0.iter()
            .find(|p| p.path == "cluster.server-url")
            .unwrap_or_else(|| panic!("{e}"));
    assert!(
        p.message
            .contains("nodes pi-w1, pi-w2 join the cluster but no server URL is known"),
        "{e}"
    );
    assert!(p.location.file.ends_with("pi.toml"), "{e}");
}

/// Servers need an address that does not change; SQLite holds one server only; a
/// netboot state disk is a kernel disk name.
#[test]
fn servers_datastore_and_state_disk_are_checked_at_their_keys() {
    let nodes = r#"[cluster]
token = { env = "T" }
[[nodes]]
hostname = "cp1"
mac = "52:54:00:00:00:01"
role = "server"
[[nodes]]
hostname = "cp2"
mac = "52:54:00:00:00:02"
role = "server"
ip = "10.0.0.2/24"
dns = ["10.0.0.1"]
dhcp-reservation = true
state-disk = "/dev/sda"
[[nodes]]
hostname = "cp3"
mac = "52:54:00:00:00:03"
role = "server"
dhcp-reservation = true
[[nodes]]
hostname = "w1"
mac = "52:54:00:00:00:04"
role = "agent"
[netboot]
state-disk = "disk/by-path/pci-0000:00:05.0"
"#;
    let text = format!("{MINIMAL}datastore = \"sqlite\"\n{nodes}");
    let dir = write(&[("n.toml", &text)]);
    let e = errors("n", dir.path(), &[]);
    assert_eq!(
        sorted_problems(&e),
        vec![
            ("cluster.server-url".to_owned(), 9), // cp1 has no ip to join by
            ("k3s.datastore".to_owned(), 8),
            ("netboot.state-disk".to_owned(), 33),
            ("nodes[0].ip".to_owned(), 11), // a server with neither ip nor reservation
            ("nodes[1].dhcp-reservation".to_owned(), 21),
            ("nodes[1].state-disk".to_owned(), 22),
        ],
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("\"sqlite\" keeps the cluster on one server"),
        "{text}"
    );
    assert!(
        text.contains("server cp1 needs an address that does not change"),
        "{text}"
    );
    assert!(text.contains("no /dev/"), "{text}");

    // With a reservation and a join address, the rest is fine (agents need none).
    let fixed = format!(
        "{MINIMAL}{}",
        nodes
            .replace(
                "role = \"server\"\n[[nodes]]\nhostname = \"cp2\"",
                "role = \"server\"\ndhcp-reservation = true\n[[nodes]]\nhostname = \"cp2\""
            )
            .replace(
                "dhcp-reservation = true\nstate-disk = \"/dev/sda\"",
                "state-disk = \"nvme0n1\""
            )
            .replace("disk/by-path/pci-0000:00:05.0", "sda")
            .replace(
                "token = ",
                "server-url = \"https://cp1.lan:6443\"\ntoken = "
            )
    );
    let dir = write(&[("ok.toml", &fixed)]);
    let p = profile::load("ok", dir.path(), &[]).unwrap_or_else(|e| panic!("{e}\n{fixed}"));
    assert!(p.embedded_etcd());
    assert_eq!(p.state_disk(&p.nodes[1]), Some("nvme0n1"));
    assert_eq!(p.state_disk(&p.nodes[3]), Some("sda"));
}

/// An NTP server must be a host name or an IP address; the error names the key.
#[test]
fn time_servers_are_host_names_or_addresses() {
    let text =
        format!("{MINIMAL}\n[time]\nservers = [\"10.0.0.1\", \"ntp.example\", \"not a host\"]\n");
    let dir = write(&[("t.toml", &text)]);
    let e = errors("t", dir.path(), &[]);
    let problems = sorted_problems(&e);
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(problems[0].0, "time.servers", "{e}");
    assert!(e.to_string().contains("'not a host'"), "{e}");
}
