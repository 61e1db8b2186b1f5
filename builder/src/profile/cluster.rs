//! The Kubernetes half of the profile model: K3s, cluster identity, CNI, GitOps, nodes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::FreeTable;

/// `[k3s]`: the K3s release and its configuration (`/etc/rancher/k3s/config.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct K3s {
    /// K3s release tag, for example `"v1.36.4+k3s1"`.
    pub version: String,
    /// SHA-256 of the release binary per architecture (64 hex digits); the pin for the
    /// target's architecture is required.
    #[serde(default)]
    pub sha256: K3sSha256,
    /// Download URL template used when the binary is not baked into the image.
    /// Placeholders: `{version}` (URL-encoded tag), `{arch}` and `{binary}` (`k3s` on
    /// amd64, `k3s-arm64` on arm64).
    #[serde(default = "super::defaults::k3s_url")]
    pub url: String,
    /// Packaged components to turn off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<K3sComponent>,
    /// The servers' datastore. `"auto"`: embedded etcd when the profile lists two or
    /// more servers (`cluster-init` on the first, the others join it), else k3s's
    /// default SQLite (kine), which k3s's maintainers advise for a single server on
    /// SD cards and eMMC. Machines that `cluster.unknown-nodes = "server"` makes
    /// servers are single-server clusters of their own, so they get SQLite too.
    /// `"sqlite"` with two or more servers is an error (SQLite does not replicate);
    /// `"etcd"` asks for embedded etcd even on one server, for a cluster you mean to
    /// grow (k3s cannot move a SQLite cluster to etcd later). With etcd the first
    /// server starts the cluster only if, when it has no etcd data yet, none of the
    /// other servers answers (its `node.env` lists them as `JOIN_PEERS`); if one does,
    /// its STATE was lost (reflash, new disk) and it joins that server instead of
    /// starting a second cluster.
    #[serde(default, skip_serializing_if = "Datastore::is_auto")]
    pub datastore: Datastore,
    /// Pod network CIDR.
    #[serde(default = "super::defaults::cluster_cidr")]
    pub cluster_cidr: String,
    /// Service network CIDR.
    #[serde(default = "super::defaults::service_cidr")]
    pub service_cidr: String,
    /// Extra names and addresses for the API server certificate. The join address's
    /// host (`cluster.server-url`, or the first server's ip) and `cluster.vip` are
    /// added to it automatically, and k3s adds each server's own name and node ip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_san: Vec<String>,
    /// Labels for every node, `key = "value"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Taints for every node, `key=value:Effect` or `key:Effect`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_taints: Vec<String>,
    /// Extra kubelet arguments, `name=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubelet_args: Vec<String>,
    /// Container image archives baked into the image for air-gapped nodes: K3s
    /// imports every archive in `/var/lib/rancher/k3s/agent/images/` when it
    /// starts (stage 2 links them there from the read-only root), so pods such as
    /// Cilium's start without a registry. Pair with a vendored `cni.chart`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub airgap_images: Vec<ImageArchive>,
    /// Free-form table merged last into `config.yaml` (K3s option names as keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub extra_config: FreeTable,
}

/// `k3s.datastore`: where the servers keep the cluster state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Datastore {
    /// Embedded etcd with two or more listed servers, else SQLite.
    #[default]
    Auto,
    /// K3s's default SQLite (through kine): one server only.
    Sqlite,
    /// Embedded etcd (`cluster-init: true` on the first server).
    Etcd,
}

impl Datastore {
    /// The default: left out of a resolved profile.
    pub fn is_auto(&self) -> bool {
        *self == Datastore::Auto
    }
}

/// `[k3s.sha256]`: release binary digests per architecture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct K3sSha256 {
    /// SHA-256 of `k3s` (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd64: Option<String>,
    /// SHA-256 of `k3s-arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm64: Option<String>,
}

/// A K3s packaged component that can be disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum K3sComponent {
    /// The Traefik ingress controller.
    Traefik,
    /// The ServiceLB (klipper) load balancer.
    Servicelb,
    /// The local-path storage provisioner.
    LocalStorage,
    /// The metrics server.
    MetricsServer,
}

/// Where a secret comes from at build time. Secrets are never written in a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum SecretSource {
    /// Read from a file (relative to the working directory).
    File(PathBuf),
    /// Read from an environment variable.
    Env(String),
    /// Decrypt a SOPS-encrypted file.
    SopsFile(PathBuf),
}

/// `[cluster]`: cluster-wide identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cluster {
    /// Cluster name (used in kubeconfig and GitOps manifests).
    pub name: String,
    /// API server URL the agents and extra servers join; defaults to
    /// `https://<first server's static ip>:6443`. Its host is added to the servers'
    /// certificate (`tls-san`) automatically.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// Join token source: `{ file = "..." }`, `{ env = "VAR" }` or `{ sops-file = "..." }`.
    /// Required when the cluster has agents or more than one server. Servers get it
    /// (k3s `token-file`) and an agent token derived from it (`agent-token-file`: the
    /// hex HMAC-SHA256 of the text `labimg k3s agent-token v1` keyed with the token, so
    /// builds stay reproducible); agents get only the agent token, which lets them join
    /// as agents but not as servers. Both are secret files of `nodes/<host>/k3s/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretSource>,
    /// Virtual IP of the API server, for a VIP that something you deploy announces
    /// (kube-vip, a router's load balancer); labimg checks it lies outside the
    /// cluster's ranges but does not announce it, so it is not a default join address:
    /// once it answers, set `server-url = "https://<vip>:6443"`. It is added to the
    /// servers' `tls-san`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// What the image does on a machine its `[[nodes]]` table does not list (by MAC
    /// or Pi serial). Default: `"server"` in a profile without `[[nodes]]`, so the
    /// shipped profiles boot into a cluster on any machine; `"refuse"` in a profile
    /// with nodes. Such a machine takes its address by DHCP and names itself
    /// `<hostname-prefix>-<id>` (see `hostname-prefix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_nodes: Option<UnknownNodes>,
    /// Hostname prefix of a machine the node table does not name: it calls itself
    /// `<prefix>-<last 8 hex digits of its Pi serial>` on a Raspberry Pi, else
    /// `<prefix>-<last 6 hex digits of its MAC>` (for example `homelab-a1b2c3`).
    /// Default: the cluster `name`. An RFC 1123 label of at most 54 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_prefix: Option<String>,
}

/// `cluster.unknown-nodes`: what a machine that no `[[nodes]]` entry lists does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownNodes {
    /// Start a single-node K3s server of its own (k3s makes its own token; SQLite
    /// unless `k3s.datastore = "etcd"`). Only in a profile without `[[nodes]]`: every
    /// such machine is a separate cluster that nothing joins, so its DHCP address needs
    /// no reservation.
    Server,
    /// Join the profile's server as an agent (needs `cluster.token` and a server
    /// URL: `cluster.server-url` or a server node with a static `ip`).
    Agent,
    /// Stop the boot with `FATAL: unknown node mac=… serial=…`.
    Refuse,
}

/// The CNI to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CniKind {
    /// Cilium, installed by K3s's helm controller (flannel, network policy and kube-proxy off).
    Cilium,
    /// No CNI: bring your own (K3s's flannel stays off).
    None,
}

/// A vendored Helm chart for air-gapped installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HelmChart {
    /// Path to the chart archive (`.tgz`), relative to the working directory.
    pub path: String,
    /// SHA-256 of the archive (64 hex digits).
    pub sha256: String,
}

/// A container image archive for K3s's air-gap import, pinned by SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageArchive {
    /// Path to the archive, relative to the working directory: a `.tar` (as
    /// `docker save` or `ctr images export` write it), optionally compressed
    /// (`.tar.zst`, `.tar.gz`, `.tar.xz`, `.tar.bz2`, `.tar.lz4`), like a K3s
    /// release's `k3s-airgap-images-<arch>.tar.zst`. File names must be unique.
    pub path: String,
    /// SHA-256 of the archive (64 hex digits); the build fails on a mismatch.
    pub sha256: String,
}

/// The archive suffixes K3s imports from its agent images folder.
pub const IMAGE_ARCHIVE_SUFFIXES: &[&str] = &[
    ".tar", ".tar.zst", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.lz4",
];

impl ImageArchive {
    /// The file name the archive gets on the node.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// `[cni]`: the CNI installed by K3s's helm controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cni {
    /// Which CNI.
    pub kind: CniKind,
    /// Chart version.
    pub version: String,
    /// Vendored chart instead of the upstream Helm repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<HelmChart>,
    /// Let Cilium replace kube-proxy (K3s runs without it).
    pub kube_proxy_replacement: bool,
    /// Announce LoadBalancer IPs with ARP (Cilium L2 announcements).
    pub l2_announcements: bool,
    /// CIDRs LoadBalancer services get their IPs from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lb_ip_pools: Vec<String>,
    /// Free-form Helm values merged over labimg's defaults.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub values: FreeTable,
}

/// The GitOps engine bootstrapped on the first server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GitopsEngine {
    /// Flux v2.
    Flux,
    /// Argo CD.
    Argocd,
    /// No GitOps bootstrap.
    None,
}

/// `[gitops]`: GitOps bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Gitops {
    /// Which engine; anything but `none` needs `repo`.
    pub engine: GitopsEngine,
    /// Git repository URL the engine syncs from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch to follow.
    pub branch: String,
    /// Folder inside the repository holding this cluster's manifests.
    pub path: String,
    /// Git credentials (a token) for a private repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretSource>,
    /// SOPS age key the engine decrypts secrets with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sops_age_key: Option<SecretSource>,
    /// SSH host keys of the Git server in `known_hosts` format (what
    /// `ssh-keyscan <host>` prints), for an `ssh://` or `git@host:path` repository.
    /// Flux needs them with SSH credentials (they go into its Git secret as
    /// `known_hosts`); Argo CD knows GitHub, GitLab, Bitbucket and Azure DevOps and
    /// takes other hosts from here (chart value `configs.ssh.extraHosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    /// Argo CD only: the root Application is an app of apps over `path`.
    pub app_of_apps: bool,
}

/// A node's K3s role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Control plane; needs a static `ip` or `dhcp-reservation = true`.
    Server,
    /// Worker.
    Agent,
}

/// `[[nodes]]`: one machine, recognised by MAC or Raspberry Pi serial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    /// Hostname (RFC 1123 label or name), unique in the profile.
    pub hostname: String,
    /// MAC address of the boot interface, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Raspberry Pi serial number, 8 or 16 hex digits. A node needs a MAC or a serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// K3s role.
    pub role: Role,
    /// Static address with prefix length (`192.168.1.10/24`); DHCP when absent.
    /// A server needs one, or `dhcp-reservation = true`: agents and the other servers
    /// (etcd peers) find it by its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The node takes its address by DHCP, and the DHCP server always hands this MAC
    /// (or Pi) the same address (a reservation, or a name in its DNS that the join
    /// address uses). Lets a server go without a static `ip`; labimg cannot check it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp_reservation: bool,
    /// Default gateway for a static address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers for a static address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Node labels, `key = "value"`, added to `k3s.node-labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node taints, `key=value:Effect`, added to `k3s.node-taints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<String>,
    /// Extra kernel arguments for this node only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// This node's netboot state disk, instead of `netboot.state-disk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_disk: Option<String>,
    /// Public keys allowed to log in to this node only, added to
    /// `ssh.authorized-keys` (same format). Any key here puts the SSH server in the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}
