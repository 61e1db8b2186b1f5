//! Profiles: the TOML files that describe a node image.
//!
//! A profile is read with its `extends` chain and `--set` overrides into a tree that
//! remembers where every key was written ([`source`]), checked against the JSON schema
//! derived from the types ([`check`]) and then for meaning ([`semantic`]); every problem
//! is reported at once ([`ProfileErrors`]). Only then is it deserialized into a [`Profile`].
//!
//! ```no_run
//! use std::path::Path;
//! let p = labimg_builder::profile::load("pi5", Path::new("profiles"), &["k3s.version=v1.36.4+k3s1".into()])?;
//! println!("{}: {}", p.name, p.kernel_package());
//! # Ok::<(), labimg_builder::profile::ProfileErrors>(())
//! ```

mod check;
mod cluster;
pub mod defaults;
pub mod docs;
pub mod net;
mod problem;
mod semantic;
mod size;
mod source;
mod types;

use std::path::{Path, PathBuf};

pub use problem::{Location, Problem, ProfileErrors};
pub use semantic::DEFAULT_NODE_DIR;
pub use size::{Size, SizeError};
pub use types::*;

use source::Sources;

/// Loads a profile by name (`profiles_dir/<name>.toml`) or by path (anything with a
/// `/` or ending in `.toml`), applies `sets` (`key.path=value`), and validates it.
pub fn load(
    name_or_path: &str,
    profiles_dir: &Path,
    sets: &[String],
) -> Result<Profile, ProfileErrors> {
    let path = profile_path(name_or_path, profiles_dir);
    let mut sources = Sources::default();
    let mut problems = Vec::new();
    let Some(mut root) = source::load_file(&path, &mut sources, &mut problems) else {
        return Err(ProfileErrors::sorted(problems));
    };
    for set in sets {
        source::apply_set(&mut root, set, &mut sources, &mut problems);
    }
    check::check(&root, &sources, &mut problems);
    if !problems.is_empty() {
        return Err(ProfileErrors::sorted(problems));
    }
    let mut profile: Profile = match root.to_toml().try_into() {
        Ok(p) => p,
        Err(e) => {
            // The schema walk should have caught everything serde rejects; if it did not,
            // still say something useful rather than nothing.
            let message = format!("invalid profile: {}", e.message());
            return Err(ProfileErrors(vec![sources.problem(
                root.origin,
                "",
                message,
            )]));
        }
    };
    profile.extends = None;
    profile.apply_board_defaults();
    semantic::check(&profile, &root, &sources, &mut problems);
    if problems.is_empty() {
        Ok(profile)
    } else {
        Err(ProfileErrors::sorted(problems))
    }
}

/// Where a profile name or path points.
pub fn profile_path(name_or_path: &str, profiles_dir: &Path) -> PathBuf {
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        PathBuf::from(name_or_path)
    } else {
        profiles_dir.join(format!("{name_or_path}.toml"))
    }
}

/// The profiles shipped in `profiles_dir` (not its subfolders), as `(name, description)`,
/// sorted by name. Files that fail to parse are listed with an empty description.
pub fn list(profiles_dir: &Path) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(profiles_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = dir
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| {
            let name = p.file_stem()?.to_str()?.to_owned();
            let description = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| t.get("description")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            Some((name, description))
        })
        .collect();
    out.sort();
    out
}

impl Profile {
    /// Fills in what depends on the board (console, kernel package) when not set, so
    /// that a resolved profile shows the values the build will really use.
    pub fn apply_board_defaults(&mut self) {
        let board = self.target.board;
        self.target
            .console
            .get_or_insert_with(|| defaults::console(board).into());
        self.kernel
            .package
            .get_or_insert_with(|| defaults::kernel_package(board).into());
    }

    /// The fully merged profile as TOML (for `labimg profile show --resolved`).
    pub fn resolved(&self) -> String {
        let mut p = self.clone();
        p.extends = None;
        p.apply_board_defaults();
        // A profile is plain data (strings, numbers, tables): serializing cannot fail.
        toml::to_string_pretty(&p).unwrap_or_else(|e| format!("# cannot serialize profile: {e}\n"))
    }

    /// Debian suites in order of preference.
    pub fn suites(&self) -> &[String] {
        &self.debian.suites
    }

    /// The kernel package, apt style (`name` or `name/suite`).
    pub fn kernel_package(&self) -> &str {
        self.kernel
            .package
            .as_deref()
            .unwrap_or(defaults::kernel_package(self.target.board))
    }

    /// The serial console (`console=` value).
    pub fn console(&self) -> &str {
        self.target
            .console
            .as_deref()
            .unwrap_or(defaults::console(self.target.board))
    }

    /// The pinned SHA-256 of the K3s binary for the target's architecture.
    pub fn k3s_sha256(&self) -> Option<&str> {
        match self.target.arch {
            Arch::Amd64 => self.k3s.sha256.amd64.as_deref(),
            Arch::Arm64 => self.k3s.sha256.arm64.as_deref(),
        }
    }

    /// The K3s release binary's file name for the target (`k3s` or `k3s-arm64`).
    pub fn k3s_binary_name(&self) -> &'static str {
        match self.target.arch {
            Arch::Amd64 => "k3s",
            Arch::Arm64 => "k3s-arm64",
        }
    }

    /// The K3s download URL for the target, from the `k3s.url` template.
    pub fn k3s_url(&self) -> String {
        self.k3s
            .url
            .replace("{version}", &self.k3s.version.replace('+', "%2B"))
            .replace("{arch}", self.target.arch.as_str())
            .replace("{binary}", self.k3s_binary_name())
    }

    /// The URL every joining node (agents, servers after the first) is given: the
    /// profile's `cluster.server-url`, else `https://<first server's static ip>:6443`.
    ///
    /// `cluster.vip` is deliberately not a default: nothing in the image announces it,
    /// so a join address on it would answer nobody. A VIP that something else answers
    /// (kube-vip, a router) is given as `cluster.server-url = "https://<vip>:6443"`.
    pub fn server_url(&self) -> Option<String> {
        if let Some(url) = &self.cluster.server_url {
            return Some(url.clone());
        }
        match self.servers().next()?.address()?.addr {
            std::net::IpAddr::V4(ip) => Some(format!("https://{ip}:6443")),
            std::net::IpAddr::V6(ip) => Some(format!("https://[{ip}]:6443")),
        }
    }

    /// What the servers' certificate must name (`tls-san`): the profile's
    /// `k3s.tls-san`, then the host of the join address ([`Profile::server_url`]),
    /// `cluster.vip` and every listed server's static ip, each once. k3s adds each
    /// server's own hostname and node IP itself, but not a DNS name or VIP that
    /// joiners use, and with `tls-san-security` (its default) it will not add them
    /// later: agents joining `https://pi-cp1.lan:6443` would fail x509 verification.
    /// The servers' addresses make every server's certificate valid for any of them
    /// (a load balancer or DNS name in front of the servers may send a client to any).
    pub fn tls_sans(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let join_host = self.server_url().as_deref().and_then(url_host);
        let server_ips = self
            .servers()
            .filter_map(|n| n.address())
            .map(|c| c.addr.to_string());
        let extra = join_host
            .into_iter()
            .chain(self.cluster.vip.clone())
            .chain(server_ips);
        for name in self.k3s.tls_san.iter().cloned().chain(extra) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// The first server in the node list: it bootstraps the cluster (`cluster-init`);
    /// every other node joins it.
    pub fn is_first_server(&self, node: &Node) -> bool {
        self.servers().next().map(|n| &n.hostname) == Some(&node.hostname)
    }

    /// What a machine the node table does not list does (`cluster.unknown-nodes`,
    /// defaulting by whether the profile has `[[nodes]]`).
    pub fn unknown_nodes(&self) -> UnknownNodes {
        self.cluster
            .unknown_nodes
            .unwrap_or(if self.nodes.is_empty() {
                UnknownNodes::Server
            } else {
                UnknownNodes::Refuse
            })
    }

    /// The hostname prefix of machines the node table does not name.
    pub fn hostname_prefix(&self) -> &str {
        self.cluster
            .hostname_prefix
            .as_deref()
            .unwrap_or(&self.cluster.name)
    }

    /// The nodes with the server role.
    pub fn servers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Server)
    }

    /// Whether the servers run embedded etcd (`k3s.datastore`): asked for, or
    /// `"auto"` with two or more listed servers. Otherwise k3s's default SQLite.
    pub fn embedded_etcd(&self) -> bool {
        match self.k3s.datastore {
            Datastore::Etcd => true,
            Datastore::Sqlite => false,
            Datastore::Auto => self.servers().count() >= 2,
        }
    }

    /// The API addresses of the servers other than `node`, as `https://<host>:6443`
    /// (the static ip without its prefix, else the hostname): the peers the first
    /// server of an embedded-etcd cluster asks before it initialises a new cluster
    /// (`JOIN_PEERS` in its `node.env`). Empty for every other node.
    pub fn join_peers(&self, node: &Node) -> Vec<String> {
        if node.role != Role::Server || !self.is_first_server(node) || !self.embedded_etcd() {
            return Vec::new();
        }
        self.servers()
            .filter(|n| n.hostname != node.hostname)
            .map(|n| match n.address().map(|c| c.addr) {
                Some(std::net::IpAddr::V4(ip)) => format!("https://{ip}:6443"),
                Some(std::net::IpAddr::V6(ip)) => format!("https://[{ip}]:6443"),
                None => format!("https://{}:6443", n.hostname),
            })
            .collect()
    }

    /// What is allowed but probably not meant, said once before a build.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.nodes.is_empty()
            && self.unknown_nodes() == UnknownNodes::Server
            && self.k3s.datastore == Datastore::Etcd
        {
            out.push(
                "k3s.datastore = \"etcd\" with cluster.unknown-nodes = \"server\": every \
                 machine starts an etcd cluster of its own on an address it gets by DHCP, \
                 and etcd keeps its member address; give each machine a DHCP reservation"
                    .to_owned(),
            );
        }
        out
    }

    /// The netboot state disk of `node` (its own `state-disk`, else
    /// `netboot.state-disk`).
    pub fn state_disk<'a>(&'a self, node: &'a Node) -> Option<&'a str> {
        node.state_disk
            .as_deref()
            .or(self.netboot.state_disk.as_deref())
    }
}

/// The host of an `https://host[:port][/path]` URL (an IPv6 address without its
/// brackets).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

impl Arch {
    /// The Debian architecture name (`amd64`, `arm64`).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl Node {
    /// The static address and prefix length, if `ip` is set and well-formed.
    pub fn address(&self) -> Option<net::Cidr> {
        net::Cidr::parse(self.ip.as_deref()?).ok()
    }

    /// The MAC address, if set and well-formed.
    pub fn mac(&self) -> Option<net::Mac> {
        self.mac.as_deref()?.parse().ok()
    }
}

impl Role {
    /// The name k3s and the node OS use (`server`, `agent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "server" => Ok(Role::Server),
            "agent" => Ok(Role::Agent),
            _ => Err(format!("role must be \"server\" or \"agent\", not {s:?}")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
