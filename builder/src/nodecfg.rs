//! Per-node configuration: the directory a node reads at boot.
//!
//! Each node of a profile gets a directory with `node.env` (identity and
//! network, sourced by the node's busybox init), `k3s/config.yaml` for its
//! role, and for servers the manifests k3s applies at start. The same
//! directory is embedded in disk images (`/usr/lib/labimg/nodes/<host>/`,
//! looked up by MAC or Pi serial through `nodes/index`) and served as a tar by
//! the netboot appliance; `builder/node/README.md` is the node-side contract.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::preseed::{self, Destination, RenderOptions};
use crate::profile::{CniKind, DEFAULT_NODE_DIR, Node, Profile, Role, UnknownNodes};

/// A rendered node directory: relative path → (contents, mode).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeDir {
    pub hostname: String,
    pub files: BTreeMap<String, (Vec<u8>, u32)>,
    /// The paths in `files` that hold secret values (`k3s/token`, `k3s/agent-token`,
    /// Secret manifests).
    pub secrets: BTreeSet<String>,
}

/// Every node's directory, rendered once per build with its secrets, and the
/// lookup index (`<mac-or-serial> <hostname>` per line) the node init searches.
/// Each destination takes what it may hold: [`NodeTable::for_destination`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeTable {
    pub dirs: Vec<NodeDir>,
    pub index: String,
}

impl NodeTable {
    /// Renders every node of the profile, secrets included (they are read now, so
    /// a missing secret stops the build before its long steps).
    pub fn render(profile: &Profile, opts: &RenderOptions) -> Result<NodeTable> {
        let (dirs, index) = render_all_with(profile, opts, Destination::Private)?;
        Ok(NodeTable { dirs, index })
    }

    /// The table as `dest` may hold it: without the secret files where
    /// [`Destination::gets_secrets`] says no.
    pub fn for_destination(&self, dest: Destination, opts: &RenderOptions) -> NodeTable {
        let keep_secrets = dest.gets_secrets(opts);
        let dirs = self
            .dirs
            .iter()
            .map(|d| {
                let mut d = d.clone();
                if !keep_secrets {
                    d.files.retain(|path, _| !d.secrets.contains(path));
                    d.secrets.clear();
                }
                d
            })
            .collect();
        NodeTable {
            dirs,
            index: self.index.clone(),
        }
    }
}

/// `/etc/rancher/k3s/config.yaml` for one node, as a YAML mapping.
pub fn k3s_config(profile: &Profile, node: &Node) -> Result<Value> {
    let k = &profile.k3s;
    let mut c = serde_json::Map::new();
    // An unlisted machine names itself at boot; k3s takes the hostname as node name.
    if !is_default(node) {
        c.insert("node-name".into(), json!(node.hostname));
    }
    if let Some(ip) = node.ip.as_deref().and_then(|ip| ip.split('/').next()) {
        c.insert("node-ip".into(), json!(ip));
    }
    let server = node.role == Role::Server;
    // The first server, and an unlisted machine that is a server (a cluster of its
    // own), start the cluster; with embedded etcd that is `cluster-init`, with SQLite
    // k3s's default. The first server of an HA profile joins instead when another
    // server already answers (JOIN_PEERS, decided on the node: k3s_join_decide).
    if server && (profile.is_first_server(node) || is_default(node)) {
        if profile.embedded_etcd() {
            c.insert("cluster-init".into(), json!(true));
        }
    } else if let Some(url) = profile.server_url() {
        c.insert("server".into(), json!(url));
    }
    if server {
        if profile.cni.kind == CniKind::Cilium {
            // Cilium replaces flannel and k3s's network policy controller.
            c.insert("flannel-backend".into(), json!("none"));
            c.insert("disable-network-policy".into(), json!(true));
            if profile.cni.kube_proxy_replacement {
                c.insert("disable-kube-proxy".into(), json!(true));
            }
        }
        if !k.disable.is_empty() {
            let names: Vec<Value> = k
                .disable
                .iter()
                .map(|d| serde_json::to_value(d).unwrap_or_default())
                .collect();
            c.insert("disable".into(), Value::Array(names));
        }
        c.insert("cluster-cidr".into(), json!(k.cluster_cidr));
        c.insert("service-cidr".into(), json!(k.service_cidr));
        let sans = profile.tls_sans();
        if !sans.is_empty() {
            c.insert("tls-san".into(), json!(sans));
        }
        c.insert("write-kubeconfig-mode".into(), json!("0600"));
    }
    let labels: Vec<String> = k
        .node_labels
        .iter()
        .chain(node.labels.iter())
        .map(|(key, v)| format!("{key}={v}"))
        .collect();
    if !labels.is_empty() {
        c.insert("node-label".into(), json!(labels));
    }
    let taints: Vec<&String> = k.node_taints.iter().chain(node.taints.iter()).collect();
    if !taints.is_empty() {
        c.insert("node-taint".into(), json!(taints));
    }
    if !k.kubelet_args.is_empty() {
        c.insert("kubelet-arg".into(), json!(k.kubelet_args));
    }
    if profile.cluster.token.is_some() {
        // The values themselves stay out of config.yaml: see preseed::secret_files.
        // A server holds the server token and the agent token; an agent only the
        // agent token, in its token-file.
        c.insert("token-file".into(), json!(preseed::TOKEN_PATH));
        if server {
            c.insert("agent-token-file".into(), json!(preseed::AGENT_TOKEN_PATH));
        }
    }
    for (key, v) in &k.extra_config {
        // extra-config is cluster-wide: server-only options are not for agents.
        if !server && preseed::k3s_flags::server_only(key) {
            continue;
        }
        let v = serde_json::to_value(v).with_context(|| format!("k3s.extra-config.{key}"))?;
        c.insert(key.clone(), v);
    }
    Ok(Value::Object(c))
}

/// The node that stands for every machine the node table does not list
/// (`cluster.unknown-nodes`), rendered as `nodes/default/`: DHCP, no labels of its
/// own, a hostname the node derives at boot from `HOSTNAME_PREFIX`.
pub fn default_node(profile: &Profile) -> Option<Node> {
    let role = match profile.unknown_nodes() {
        UnknownNodes::Server => Role::Server,
        UnknownNodes::Agent => Role::Agent,
        UnknownNodes::Refuse => return None,
    };
    Some(Node {
        hostname: DEFAULT_NODE_DIR.to_owned(),
        mac: None,
        serial: None,
        role,
        ip: None,
        gateway: None,
        dns: Vec::new(),
        labels: Default::default(),
        taints: Vec::new(),
        kernel_args: Vec::new(),
        dhcp_reservation: false,
        state_disk: None,
        ssh_authorized_keys: Vec::new(),
    })
}

/// Whether `node` is [`default_node`] (profile nodes never have that hostname).
fn is_default(node: &Node) -> bool {
    node.hostname == DEFAULT_NODE_DIR && node.mac.is_none() && node.serial.is_none()
}

/// `node.env`: shell variables for the node's init (values single-quoted).
pub fn node_env(profile: &Profile, node: &Node) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let (hostname, prefix) = if is_default(node) {
        (String::new(), profile.hostname_prefix().to_owned())
    } else {
        (node.hostname.clone(), String::new())
    };
    let vars = [
        ("HOSTNAME", hostname),
        ("HOSTNAME_PREFIX", prefix),
        ("ROLE", node.role.as_str().to_owned()),
        ("IP", node.ip.clone().unwrap_or_default()),
        ("GATEWAY", node.gateway.clone().unwrap_or_default()),
        ("DNS", node.dns.join(" ")),
        ("K3S_VERSION", profile.k3s.version.clone()),
        (
            "K3S_SHA256",
            profile.k3s_sha256().unwrap_or_default().to_owned(),
        ),
        ("K3S_URL_SOURCE", profile.k3s_url()),
        ("JOIN_PEERS", profile.join_peers(node).join(" ")),
        (
            "STATE_DISK",
            profile.state_disk(node).unwrap_or_default().to_owned(),
        ),
        ("NTP_SERVERS", profile.time.servers.join(" ")),
    ];
    let mut out =
        String::from("# Rendered by labimg from the profile; sourced by /usr/lib/labimg/init.\n");
    for (k, v) in vars {
        // Written only where they are set (the default node's prefix, the first HA
        // server's peers, a netboot state disk, NTP servers): other node.env files stay
        // as they were.
        if matches!(
            k,
            "HOSTNAME_PREFIX" | "JOIN_PEERS" | "STATE_DISK" | "NTP_SERVERS"
        ) && v.is_empty()
        {
            continue;
        }
        out.push_str(&format!("{k}={}\n", q(&v)));
    }
    out
}

/// Where a node directory holds the SSH keys that may log in to it (`ssh.authorized-keys`
/// and the node's own), one a line; absent when there are none.
pub const AUTHORIZED_KEYS: &str = "ssh/authorized_keys";

/// Renders one node's directory for shared outputs, without secrets.
pub fn render(profile: &Profile, node: &Node) -> Result<NodeDir> {
    render_with(
        profile,
        node,
        &RenderOptions::default(),
        Destination::Shared,
    )
}

/// Renders one node's directory for `dest`: secret files (`k3s/token`, `k3s/agent-token`, Secret
/// manifests) only where [`Destination::gets_secrets`] says so.
pub fn render_with(
    profile: &Profile,
    node: &Node,
    opts: &RenderOptions,
    dest: Destination,
) -> Result<NodeDir> {
    let mut files = BTreeMap::new();
    files.insert(
        "node.env".to_owned(),
        (node_env(profile, node).into_bytes(), 0o644),
    );
    let config = k3s_config(profile, node)?;
    preseed::check_k3s_config(node, &config)?;
    let yaml = serde_saphyr::to_string(&config).context("rendering k3s config.yaml")?;
    let header = format!(
        "# k3s {} config for {} (rendered by labimg)\n",
        node.role.as_str(),
        node.hostname
    );
    files.insert(
        "k3s/config.yaml".to_owned(),
        ([header.into_bytes(), yaml.into_bytes()].concat(), 0o600),
    );
    for (path, yaml) in preseed::server_manifests(profile, node, opts)? {
        files.insert(path, (yaml.into_bytes(), 0o644));
    }
    // Public keys, not secrets: the node's SSH server reads them (node/ssh.sh).
    let keys = profile.ssh_authorized_keys(node);
    if !keys.is_empty() {
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        files.insert(AUTHORIZED_KEYS.to_owned(), (text.into_bytes(), 0o644));
    }
    let mut secrets = BTreeSet::new();
    if dest.gets_secrets(opts) {
        let secret = preseed::secret_files(profile, node, opts)?;
        secrets.extend(secret.keys().cloned());
        files.extend(secret);
    }
    Ok(NodeDir {
        hostname: node.hostname.clone(),
        files,
        secrets,
    })
}

/// Renders every node of the profile, and the lookup index
/// (`<mac-or-serial> <hostname>` per line) the node init searches.
pub fn render_all(profile: &Profile) -> Result<(Vec<NodeDir>, String)> {
    render_all_with(profile, &RenderOptions::default(), Destination::Shared)
}

/// [`render_all`] for `dest` with explicit options (`--embed-secrets`, base dir).
pub fn render_all_with(
    profile: &Profile,
    opts: &RenderOptions,
    dest: Destination,
) -> Result<(Vec<NodeDir>, String)> {
    if let Some(only) = &opts.only_node
        && !profile.nodes.iter().any(|n| &n.hostname == only)
    {
        let names: Vec<&str> = profile.nodes.iter().map(|n| n.hostname.as_str()).collect();
        anyhow::bail!(
            "--node {only}: the profile has no such node (its nodes: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    let mut dirs = Vec::new();
    let mut index = String::new();
    let selected = profile.nodes.iter().filter(|n| {
        opts.only_node
            .as_ref()
            .is_none_or(|only| &n.hostname == only)
    });
    // A per-node image is for that node alone: no configuration for strangers.
    let default = default_node(profile).filter(|_| opts.only_node.is_none());
    for node in selected.chain(default.as_ref()) {
        dirs.push(
            render_with(profile, node, opts, dest)
                .with_context(|| format!("rendering node {}", node.hostname))?,
        );
        // The node looks itself up by its MAC as the kernel shows it (lowercase,
        // colons), whichever way the profile wrote it.
        let mac = node.mac().map(|m| m.to_string());
        let serial = node.serial.as_deref().map(str::to_ascii_lowercase);
        for key in mac.iter().chain(serial.iter()) {
            index.push_str(&format!("{key} {}\n", node.hostname));
        }
    }
    Ok((dirs, index))
}
