//! Cluster preseed behaviour: role differences in k3s configs, the k3s flag
//! table, address checks, Cilium values, and the vendored (air-gapped) chart
//! checked against its pin with a real `.tgz` and host tools as oracles.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use labimg_builder::nodecfg::{self, NodeDir};
use labimg_builder::preseed::{self, Destination, PreseedError, RenderOptions};
use labimg_builder::profile::{self, HelmChart, Profile};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn load(example: &str, sets: &[&str]) -> Profile {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let path = dir.join("examples").join(format!("{example}.toml"));
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    profile::load(path.to_str().unwrap(), &dir, &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn node<'a>(dirs: &'a [NodeDir], host: &str) -> &'a NodeDir {
    dirs.iter().find(|d| d.hostname == host).unwrap()
}

fn yaml(d: &NodeDir, file: &str) -> Value {
    let (data, _) = d
        .files
        .get(file)
        .unwrap_or_else(|| panic!("{} has no {file}", d.hostname));
    serde_saphyr::from_str(std::str::from_utf8(data).unwrap()).unwrap()
}

fn values_of(cilium: &Value) -> Value {
    serde_saphyr::from_str(cilium["spec"]["valuesContent"].as_str().unwrap()).unwrap()
}

#[test]
fn first_server_joiner_and_agent_configs_differ() {
    let (ha, _) = nodecfg::render_all(&load("ha-cilium-argocd", &[])).unwrap();
    let first = yaml(node(&ha, "cp1"), "k3s/config.yaml");
    let joiner = yaml(node(&ha, "cp2"), "k3s/config.yaml");
    assert_eq!(first["cluster-init"], json!(true));
    assert!(
        first.get("server").is_none(),
        "the first server joins nobody"
    );
    assert!(joiner.get("cluster-init").is_none());
    assert_eq!(joiner["server"], json!("https://192.168.20.11:6443"));
    for c in [&first, &joiner] {
        // Settings every server of a cluster must share.
        assert_eq!(c["flannel-backend"], json!("none"));
        assert_eq!(c["disable-kube-proxy"], json!(true));
        assert_eq!(c["cluster-cidr"], json!("10.42.0.0/16"));
        assert_eq!(c["token-file"], json!("/etc/rancher/k3s/token"));
    }

    let (pve, _) = nodecfg::render_all(&load("proxmox-flux", &[])).unwrap();
    let agent = node(&pve, "pve-w1");
    let a = yaml(agent, "k3s/config.yaml");
    assert_eq!(a["server"], json!("https://192.168.10.11:6443"));
    assert_eq!(a["token-file"], json!("/etc/rancher/k3s/token"));
    for server_key in [
        "cluster-init",
        "cluster-cidr",
        "flannel-backend",
        "disable",
        "write-kubeconfig-mode",
    ] {
        assert!(a.get(server_key).is_none(), "agent config has {server_key}");
    }
    assert!(
        agent.files.keys().all(|f| !f.starts_with("manifests/")),
        "agents apply no manifests"
    );
    let server = node(&pve, "pve-cp1");
    assert!(server.files.contains_key("manifests/cilium.yaml"));
    assert!(server.files.contains_key("manifests/flux.yaml"));
}

#[test]
fn unknown_k3s_key_is_rejected_with_a_hint() {
    let mut p = load("proxmox-flux", &[]);
    p.k3s
        .extra_config
        .insert("cluster-cidrs".into(), "10.50.0.0/16".into());
    let err = nodecfg::render_all(&p).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("node pve-cp1"), "{msg}");
    assert!(
        msg.contains("'cluster-cidrs'") && msg.contains("did you mean 'cluster-cidr'"),
        "{msg}"
    );

    // An agent-only option is not a server option either.
    let mut p = load("proxmox-flux", &[]);
    p.k3s
        .extra_config
        .insert("disable-apiserver-lb".into(), true.into());
    let msg = format!("{:#}", nodecfg::render_all(&p).unwrap_err());
    assert!(
        msg.contains("k3s server does not accept config key 'disable-apiserver-lb'"),
        "{msg}"
    );

    // A server-only option set cluster-wide reaches servers, not agents.
    let mut p = load("proxmox-flux", &[]);
    p.k3s
        .extra_config
        .insert("etcd-snapshot-retention".into(), 7.into());
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    assert_eq!(
        yaml(node(&dirs, "pve-cp1"), "k3s/config.yaml")["etcd-snapshot-retention"],
        json!(7)
    );
    assert!(
        yaml(node(&dirs, "pve-w1"), "k3s/config.yaml")
            .get("etcd-snapshot-retention")
            .is_none()
    );
}

/// Joiners get the server URL (checked for at load time, see
/// `profile_load::topology_problems_are_found_by_validation_at_their_keys`).
#[test]
fn joiners_get_the_server_url() {
    let p = load("pi5-argocd", &[]);
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    assert_eq!(
        yaml(node(&dirs, "pi-w2"), "k3s/config.yaml")["server"],
        json!("https://pi-cp1.lan:6443")
    );
}

#[test]
fn cilium_values_follow_the_profile() {
    let (ha, _) = nodecfg::render_all(&load("ha-cilium-argocd", &[])).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(
        std::str::from_utf8(&node(&ha, "cp3").files["manifests/cilium.yaml"].0).unwrap(),
    )
    .unwrap();
    let chart = docs.iter().find(|d| !d.is_null()).unwrap();
    assert_eq!(chart["spec"]["bootstrap"], json!(true));
    assert_eq!(chart["spec"]["repo"], json!("https://helm.cilium.io/"));
    let v = values_of(chart);
    assert_eq!(v["kubeProxyReplacement"], json!(true));
    assert_eq!(v["k8sServiceHost"], json!("127.0.0.1"));
    assert_eq!(v["k8sServicePort"], json!(6444));
    assert_eq!(v["operator"]["replicas"], json!(2), "min(3 servers, 2)");
    assert_eq!(
        v["hubble"]["relay"]["enabled"],
        json!(true),
        "cni.values merged"
    );
    assert_eq!(v["l2announcements"]["enabled"], json!(true));

    let p = load(
        "proxmox-flux",
        &[
            "cni.values.ipam.mode=cluster-pool",
            "cni.values.operator.replicas=3",
        ],
    );
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    let v = values_of(&yaml(node(&dirs, "pve-cp1"), "manifests/cilium.yaml"));
    assert_eq!(
        v["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"],
        json!(["10.42.0.0/16"])
    );
    assert_eq!(
        v["operator"]["replicas"],
        json!(3),
        "the profile's values win"
    );
    assert!(v.get("kubeProxyReplacement").is_none());
}

/// A small but real chart archive: `cilium/Chart.yaml` in a gzipped tar.
fn chart_tgz() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let body = b"apiVersion: v2\nname: cilium\nversion: 1.18.3\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "cilium/Chart.yaml", &body[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn vendored_chart_is_embedded_and_a_tampered_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = chart_tgz();
    std::fs::create_dir_all(dir.path().join("charts")).unwrap();
    std::fs::write(dir.path().join("charts/cilium.tgz"), &tgz).unwrap();
    let mut p = load("proxmox-flux", &[]);
    p.cni.chart = Some(HelmChart {
        path: "charts/cilium.tgz".into(),
        sha256: hex::encode(Sha256::digest(&tgz)),
    });
    let opts = RenderOptions {
        base_dir: dir.path().to_owned(),
        ..RenderOptions::default()
    };
    let (dirs, _) = nodecfg::render_all_with(&p, &opts, Destination::Shared).unwrap();
    let chart = yaml(node(&dirs, "pve-cp1"), "manifests/cilium.yaml");
    assert!(chart["spec"].get("repo").is_none() && chart["spec"].get("version").is_none());
    let b64 = chart["spec"]["chartContent"].as_str().unwrap();
    // coreutils' base64 and GNU tar decode what k3s's helm controller will.
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64.as_bytes())
        .unwrap();
    let decoded = child.wait_with_output().unwrap();
    assert!(decoded.status.success());
    assert_eq!(decoded.stdout, tgz);
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(dir.path().join("charts/cilium.tgz"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        "cilium/Chart.yaml"
    );

    let mut tampered = tgz.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(dir.path().join("charts/cilium.tgz"), &tampered).unwrap();
    let err = nodecfg::render_all_with(&p, &opts, Destination::Shared).unwrap_err();
    let digest = err
        .chain()
        .find_map(|e| e.downcast_ref::<PreseedError>())
        .unwrap_or_else(|| panic!("not a preseed error: {err:#}"));
    match digest {
        PreseedError::ChartDigest {
            expected, actual, ..
        } => {
            assert_eq!(expected, &hex::encode(Sha256::digest(&tgz)));
            assert_eq!(actual, &hex::encode(Sha256::digest(&tampered)));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(format!("{err:#}").contains("refusing a chart that is not the pinned one"));
}

#[test]
fn sops_file_secrets_need_sops() {
    // ha-cilium-argocd's token is a sops-file: the shared rendering never reads it…
    let p = load("ha-cilium-argocd", &[]);
    nodecfg::render_all(&p).unwrap();
    // …the private one must, and says what is missing.
    let err =
        nodecfg::render_all_with(&p, &RenderOptions::default(), Destination::Private).unwrap_err();
    let msg = format!("{err:#}");
    let has_sops = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("sops").is_file());
    if has_sops {
        assert!(msg.contains("secrets/k3s-token.sops.yaml"), "{msg}");
    } else {
        assert!(
            msg.contains("sops-file secrets need the `sops` binary on PATH"),
            "{msg}"
        );
    }
    assert!(msg.contains("cluster.token"), "{msg}");
}

#[test]
fn argocd_takes_extra_ssh_host_keys_through_its_chart_values() {
    let hosts =
        "git.lan ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let plain = load("pi5-argocd", &[]);
    let with_hosts = load("pi5-argocd", &[&format!("gitops.known-hosts={hosts}")]);
    let chart_of = |p: &Profile| -> Value {
        let (dirs, _) = nodecfg::render_all(p).unwrap();
        let server = dirs
            .iter()
            .find(|d| d.files.contains_key("manifests/argocd.yaml"))
            .expect("a server with the Argo CD manifest");
        let text = std::str::from_utf8(&server.files["manifests/argocd.yaml"].0).unwrap();
        text.split("\n---\n")
            .filter_map(|doc| serde_saphyr::from_str::<Value>(doc).ok())
            .find(|v| v["kind"] == "HelmChart")
            .expect("the argo-cd HelmChart")
    };
    assert!(chart_of(&plain)["spec"].get("valuesContent").is_none());
    let chart = chart_of(&with_hosts);
    let values = values_of(&chart);
    assert_eq!(
        values["configs"]["ssh"]["extraHosts"],
        json!(format!("{hosts}\n"))
    );
}

/// The shipped profiles have no `[[nodes]]`: their images carry a `default` node
/// directory that makes any machine a single-node server named from its MAC or serial.
#[test]
fn shipped_profiles_render_a_default_single_node_server() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    for name in ["proxmox", "pi5"] {
        let p = profile::load(name, &dir, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.nodes.is_empty(), "{name} ships without [[nodes]]");
        let (dirs, index) = nodecfg::render_all(&p).unwrap();
        assert_eq!(index, "", "{name}: no MAC or serial in the index");
        assert_eq!(dirs.len(), 1, "{name}: one node directory");
        let d = node(&dirs, "default");
        let env = std::str::from_utf8(&d.files["node.env"].0).unwrap();
        assert!(env.contains("HOSTNAME=''\n"), "{env}");
        assert!(env.contains("HOSTNAME_PREFIX='homelab'\n"), "{env}");
        assert!(env.contains("ROLE='server'\n"), "{env}");
        assert!(env.contains("IP=''\n"), "DHCP: {env}");
        let c = yaml(d, "k3s/config.yaml");
        assert!(c.get("node-name").is_none(), "k3s takes the hostname: {c}");
        assert!(c.get("server").is_none(), "joins nobody: {c}");
        assert!(
            c.get("token-file").is_none(),
            "k3s makes its own token: {c}"
        );
        assert_eq!(c["flannel-backend"], json!("none"));
        assert!(d.files.contains_key("manifests/cilium.yaml"));
    }
}

#[test]
fn unlisted_machines_are_refused_in_a_profile_with_nodes_unless_it_opts_in() {
    let p = load("proxmox-flux", &[]);
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    assert!(
        dirs.iter().all(|d| d.hostname != "default"),
        "refused by default"
    );

    let p = load(
        "proxmox-flux",
        &[
            "cluster.unknown-nodes=agent",
            "cluster.hostname-prefix=worker",
        ],
    );
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    let d = node(&dirs, "default");
    let env = std::str::from_utf8(&d.files["node.env"].0).unwrap();
    assert!(env.contains("ROLE='agent'\n"), "{env}");
    assert!(env.contains("HOSTNAME_PREFIX='worker'\n"), "{env}");
    let c = yaml(d, "k3s/config.yaml");
    assert_eq!(c["server"], json!("https://192.168.10.11:6443"));
    assert_eq!(c["token-file"], json!("/etc/rancher/k3s/token"));
    assert!(
        !d.files.contains_key("manifests/cilium.yaml"),
        "agents apply no manifests"
    );

    // A per-node image is for its node alone.
    let opts = RenderOptions {
        only_node: Some("pve-w1".into()),
        ..Default::default()
    };
    let (dirs, _) = nodecfg::render_all_with(&p, &opts, Destination::Shared).unwrap();
    assert_eq!(dirs.len(), 1);
    assert_eq!(dirs[0].hostname, "pve-w1");
}

/// Every name a joiner may use is in the servers' certificate: the join URL's host and
/// the VIP are added to `k3s.tls-san`, once each; agents get no tls-san.
#[test]
fn servers_certificates_name_every_join_address() {
    let (pi, _) = nodecfg::render_all(&load("pi5-argocd", &[])).unwrap();
    assert_eq!(
        yaml(node(&pi, "pi-cp1"), "k3s/config.yaml")["tls-san"],
        json!(["pi-cp1.lan"])
    );
    assert!(
        yaml(node(&pi, "pi-w1"), "k3s/config.yaml")
            .get("tls-san")
            .is_none()
    );
    let (ha, _) = nodecfg::render_all(&load("ha-cilium-argocd", &[])).unwrap();
    for host in ["cp1", "cp2", "cp3"] {
        // The profile's names, the VIP (already listed), the join URL's host
        // (cp1's ip) and every server's address: cp1 joins cp2 or cp3 by theirs.
        assert_eq!(
            yaml(node(&ha, host), "k3s/config.yaml")["tls-san"],
            json!([
                "k8s.lab.example",
                "192.168.20.10",
                "192.168.20.11",
                "192.168.20.12",
                "192.168.20.13"
            ]),
            "{host}"
        );
    }
    let (flux, _) = nodecfg::render_all(&load("proxmox-flux", &[])).unwrap();
    assert_eq!(
        yaml(node(&flux, "pve-cp1"), "k3s/config.yaml")["tls-san"],
        json!(["192.168.10.11"]),
        "the join URL's host, which is also the server's address"
    );
    for host in ["pve-w1", "pve-w2"] {
        assert!(
            yaml(node(&flux, host), "k3s/config.yaml")
                .get("tls-san")
                .is_none()
        );
    }
    // An unlisted machine that is a server of its own: k3s names its own address.
    let (longhorn, _) = nodecfg::render_all(&load("proxmox-longhorn", &[])).unwrap();
    assert!(
        yaml(node(&longhorn, "default"), "k3s/config.yaml")
            .get("tls-san")
            .is_none()
    );
    let p = load(
        "proxmox-flux",
        &[
            "cluster.server-url=https://[fd00::10]:6443/",
            "cluster.vip=fd00::20",
        ],
    );
    assert_eq!(p.tls_sans(), ["fd00::10", "fd00::20", "192.168.10.11"]);
}

fn env_of(d: &NodeDir) -> &str {
    std::str::from_utf8(&d.files["node.env"].0).unwrap()
}

/// `k3s.datastore`: embedded etcd (`cluster-init`) only with two or more servers
/// unless asked; the first server of such a profile learns its peers (`JOIN_PEERS`)
/// so that it joins them instead of starting a second cluster.
#[test]
fn cluster_init_only_where_embedded_etcd_belongs() {
    // One listed server: k3s's default SQLite, nothing to join.
    for example in ["proxmox-flux", "pi5-argocd"] {
        let p = load(example, &[]);
        assert!(!p.embedded_etcd(), "{example}");
        let (dirs, _) = nodecfg::render_all(&p).unwrap();
        let first = node(&dirs, &p.servers().next().unwrap().hostname);
        let c = yaml(first, "k3s/config.yaml");
        assert!(c.get("cluster-init").is_none(), "{example}: {c}");
        assert!(c.get("server").is_none(), "{example}: {c}");
        for d in &dirs {
            assert!(
                !env_of(d).contains("JOIN_PEERS"),
                "{example}/{}",
                d.hostname
            );
        }
    }
    // Unlisted machines that are servers of their own (the shipped profiles).
    let (longhorn, _) = nodecfg::render_all(&load("proxmox-longhorn", &[])).unwrap();
    let c = yaml(node(&longhorn, "default"), "k3s/config.yaml");
    assert!(
        c.get("cluster-init").is_none() && c.get("server").is_none(),
        "{c}"
    );

    // Asked for: etcd on one server (a cluster meant to grow), and on unlisted servers.
    let p = load("proxmox-flux", &["k3s.datastore=etcd"]);
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    assert_eq!(
        yaml(node(&dirs, "pve-cp1"), "k3s/config.yaml")["cluster-init"],
        json!(true)
    );
    assert!(
        !env_of(node(&dirs, "pve-cp1")).contains("JOIN_PEERS"),
        "no peers to ask"
    );
    assert!(
        yaml(node(&dirs, "pve-w1"), "k3s/config.yaml")
            .get("cluster-init")
            .is_none()
    );
    let p = load("proxmox-longhorn", &["k3s.datastore=etcd"]);
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    assert_eq!(
        yaml(node(&dirs, "default"), "k3s/config.yaml")["cluster-init"],
        json!(true)
    );
    assert_eq!(p.warnings().len(), 1, "{:?}", p.warnings());
    assert!(p.warnings()[0].contains("DHCP reservation"));
    assert!(load("proxmox-longhorn", &[]).warnings().is_empty());

    // Three servers: etcd; the first initialises unless a peer answers.
    let p = load("ha-cilium-argocd", &[]);
    assert!(p.embedded_etcd());
    let (ha, _) = nodecfg::render_all(&p).unwrap();
    assert_eq!(
        yaml(node(&ha, "cp1"), "k3s/config.yaml")["cluster-init"],
        json!(true)
    );
    assert!(
        env_of(node(&ha, "cp1"))
            .contains("JOIN_PEERS='https://192.168.20.12:6443 https://192.168.20.13:6443'\n"),
        "{}",
        env_of(node(&ha, "cp1"))
    );
    for host in ["cp2", "cp3"] {
        let c = yaml(node(&ha, host), "k3s/config.yaml");
        assert!(c.get("cluster-init").is_none(), "{host}");
        assert_eq!(c["server"], json!("https://192.168.20.11:6443"), "{host}");
        assert!(!env_of(node(&ha, host)).contains("JOIN_PEERS"), "{host}");
    }
    // A peer without a static ip (a DHCP reservation) is asked by its hostname.
    let p = load(
        "ha-cilium-argocd",
        &[
            "nodes.2={ hostname = \"cp3\", mac = \"bc:24:11:20:00:03\", role = \"server\", \
             dhcp-reservation = true }",
        ],
    );
    let (ha, _) = nodecfg::render_all(&p).unwrap();
    assert!(
        env_of(node(&ha, "cp1"))
            .contains("JOIN_PEERS='https://192.168.20.12:6443 https://cp3:6443'\n"),
        "{}",
        env_of(node(&ha, "cp1"))
    );
}

/// Agents never receive the server token: servers get `token-file` and
/// `agent-token-file`, agents only `token-file` (whose file holds the agent token,
/// see preseed_secrets.rs).
#[test]
fn agents_get_the_agent_token_servers_both() {
    for example in ["ha-cilium-argocd", "proxmox-flux", "pi5-argocd"] {
        let p = load(example, &[]);
        let (dirs, _) = nodecfg::render_all(&p).unwrap();
        for n in &p.nodes {
            let c = yaml(node(&dirs, &n.hostname), "k3s/config.yaml");
            assert_eq!(
                c["token-file"],
                json!("/etc/rancher/k3s/token"),
                "{example}/{}",
                n.hostname
            );
            match n.role {
                profile::Role::Server => assert_eq!(
                    c["agent-token-file"],
                    json!("/etc/rancher/k3s/agent-token"),
                    "{example}/{}",
                    n.hostname
                ),
                profile::Role::Agent => assert!(
                    c.get("agent-token-file").is_none(),
                    "{example}/{}",
                    n.hostname
                ),
            }
        }
    }
    // Without a cluster token k3s makes its own: no token files at all.
    let (dirs, _) = nodecfg::render_all(&load("proxmox-longhorn", &[])).unwrap();
    let c = yaml(node(&dirs, "default"), "k3s/config.yaml");
    assert!(
        c.get("token-file").is_none() && c.get("agent-token-file").is_none(),
        "{c}"
    );
    assert_eq!(
        preseed::agent_token("K10example"),
        preseed::agent_token("K10example"),
        "reproducible"
    );
    assert_ne!(preseed::agent_token("K10example"), "K10example");
}

/// `netboot.state-disk` and a node's own `state-disk` reach `node.env` as
/// `STATE_DISK`; without them the key is absent.
#[test]
fn the_netboot_state_disk_reaches_node_env() {
    let (dirs, _) = nodecfg::render_all(&load("proxmox-flux", &[])).unwrap();
    assert!(dirs.iter().all(|d| !env_of(d).contains("STATE_DISK")));
    let p = load(
        "proxmox-flux",
        &["netboot.state-disk=sda", "nodes.1.state-disk=nvme0n1"],
    );
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    assert!(env_of(node(&dirs, "pve-cp1")).contains("STATE_DISK='sda'\n"));
    assert!(env_of(node(&dirs, "pve-w1")).contains("STATE_DISK='nvme0n1'\n"));
    assert!(env_of(node(&dirs, "pve-w2")).contains("STATE_DISK='sda'\n"));
    let (dirs, _) =
        nodecfg::render_all(&load("proxmox-longhorn", &["netboot.state-disk=vda"])).unwrap();
    assert!(env_of(node(&dirs, "default")).contains("STATE_DISK='vda'\n"));
}

/// `time.servers` reaches every node's `node.env` as `NTP_SERVERS`; without it the key
/// is absent (the node then asks DHCP, then the public pool).
#[test]
fn time_servers_reach_node_env() {
    let (dirs, _) = nodecfg::render_all(&load("proxmox-flux", &[])).unwrap();
    assert!(dirs.iter().all(|d| !env_of(d).contains("NTP_SERVERS")));
    let p = load(
        "proxmox-flux",
        &[r#"time.servers=["192.168.1.1", "time.cloudflare.com"]"#],
    );
    let (dirs, _) = nodecfg::render_all(&p).unwrap();
    for d in &dirs {
        assert!(
            env_of(d).contains("NTP_SERVERS='192.168.1.1 time.cloudflare.com'\n"),
            "{}",
            env_of(d)
        );
    }
}
