//! Checks of meaning on a structurally valid profile: consistency between sections,
//! well-formed addresses and identifiers, uniqueness, quorum. Each problem points at the
//! key it is about, in the file that set it.

use std::collections::HashSet;
use std::net::IpAddr;

use super::defaults;
use super::net::{Cidr, Mac, is_hostname, is_ssh_git_url};
use super::problem::Problem;
use super::source::{SValue, Sources};
use super::{CniKind, Datastore, GitopsEngine, Profile, Role, UnknownNodes};

/// Collects problems against key paths, then locates them in the source tree.
struct Report<'a> {
    root: &'a SValue,
    sources: &'a Sources,
    out: &'a mut Vec<Problem>,
}

impl Report<'_> {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        let segments: Vec<&str> = path
            .split(['.', '[', ']'])
            .filter(|s| !s.is_empty())
            .collect();
        self.add_at(&segments, path, message);
    }

    /// [`Report::add`] for a key path whose last key itself holds dots
    /// (`kernel.sysctls."vm.max_map_count"`): `segments` are the real keys.
    fn add_at(&mut self, segments: &[&str], path: &str, message: impl Into<String>) {
        // A default value has no place in any file: point at the nearest key that does.
        let origin = (0..=segments.len())
            .rev()
            .find_map(|n| self.root.lookup(&segments[..n]).map(|(_, v)| v.origin))
            .unwrap_or(self.root.origin);
        self.out.push(self.sources.problem(origin, path, message));
    }
}

/// Runs every semantic check, appending problems.
pub(crate) fn check(p: &Profile, root: &SValue, sources: &Sources, out: &mut Vec<Problem>) {
    let mut r = Report { root, sources, out };
    check_target(p, &mut r);
    check_packages(p, &mut r);
    check_k3s(p, &mut r);
    check_cluster(p, &mut r);
    check_nodes(p, &mut r);
    check_topology(p, &mut r);
    check_disk(p, &mut r);
    check_time(p, &mut r);
    check_upgrade(p, &mut r);
    check_services(p, &mut r);
    check_ssh(p, &mut r);
    check_secure_boot(p, &mut r);
}

/// `[secure-boot]` is for the proxmox board (UEFI), and sealing STATE needs it.
fn check_secure_boot(p: &Profile, r: &mut Report<'_>) {
    let sb = &p.secure_boot;
    if sb.enabled && p.target.board != super::Board::Proxmox {
        r.add(
            "secure-boot.enabled",
            "Secure Boot (signed Unified Kernel Images) is only supported with \
             target.board = \"proxmox\" (x86_64 UEFI); the Raspberry Pi 5 boots without UEFI",
        );
    }
    if sb.tpm_seal_state && !sb.enabled {
        r.add(
            "secure-boot.tpm-seal-state",
            "tpm-seal-state needs secure-boot.enabled = true: the TPM policy is bound to \
             the Secure Boot state and the signed kernel images",
        );
    }
}

/// Every `ssh.authorized-keys` and `nodes[].ssh-authorized-keys` entry is one OpenSSH
/// public key line.
fn check_ssh(p: &Profile, r: &mut Report<'_>) {
    let cluster = p
        .ssh
        .authorized_keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("ssh.authorized-keys[{i}]"), k));
    let nodes = p.nodes.iter().enumerate().flat_map(|(n, node)| {
        node.ssh_authorized_keys
            .iter()
            .enumerate()
            .map(move |(i, k)| (format!("nodes[{n}].ssh-authorized-keys[{i}]"), k))
    });
    for (path, key) in cluster.chain(nodes) {
        if let Err(e) = check_ssh_public_key(key) {
            r.add(&path, e);
        }
    }
}

/// The key types the node's SSH server (dropbear) accepts for `root`.
pub(crate) const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// One OpenSSH public key line, `<type> <base64 blob> [comment]`: a known type, and a
/// blob that decodes and names that same type (as `ssh-keygen -l` would check).
pub(crate) fn check_ssh_public_key(line: &str) -> Result<(), String> {
    use base64::Engine as _;
    let line = line.trim();
    let shown: String = line.chars().take(40).collect();
    let hint = "give one OpenSSH public key line, `<type> <base64> [comment]`, as in \
                ~/.ssh/id_ed25519.pub";
    if line.contains(['\n', '\r']) {
        return Err(format!("'{shown}…' holds a line break: {hint}"));
    }
    let mut fields = line.split_whitespace();
    let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
        return Err(format!("'{shown}' is not an SSH public key: {hint}"));
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "'{kind}' is not a key type the node's SSH server takes (one of {}): {hint} \
             (options such as from=\"…\" are not supported)",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|e| format!("the {kind} key's base64 does not decode ({e}): {hint}"))?;
    // The blob is length-prefixed fields (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4):
    // the type again, then two (ssh-rsa: e and n; ECDSA: curve and point) or one
    // (Ed25519: the 32-byte key), and nothing after them.
    let mut fields = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(field) = rest.get(4..4 + n) else {
            break;
        };
        fields.push(field);
        rest = &rest[4 + n..];
    }
    let whole = rest.is_empty()
        && fields.first() == Some(&kind.as_bytes())
        && match kind {
            "ssh-ed25519" => fields.len() == 2 && fields[1].len() == 32,
            _ => fields.len() == 3,
        };
    if !whole {
        return Err(format!(
            "the base64 of this {kind} key does not hold a whole {kind} key: a truncated \
             or mixed-up line? ({hint})"
        ));
    }
    Ok(())
}

fn check_services(p: &Profile, r: &mut Report<'_>) {
    let mut seen = HashSet::new();
    for (i, s) in p.services.iter().enumerate() {
        let at = |k: &str| format!("services[{i}].{k}");
        let word = !s.name.is_empty()
            && s.name.len() <= 32
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.name.starts_with('-');
        if !word {
            r.add(
                &at("name"),
                format!(
                    "'{}' is not a service name (lowercase letters, digits, '-'; at most 32)",
                    s.name
                ),
            );
        } else if !seen.insert(s.name.as_str()) || s.name == "k3s" {
            r.add(&at("name"), format!("duplicate service name '{}'", s.name));
        }
        match s.command.first() {
            None => r.add(&at("command"), "the command is empty"),
            Some(prog) if !prog.starts_with('/') => r.add(
                &at("command"),
                format!("'{prog}' must be an absolute path in the image, like /usr/sbin/iscsid"),
            ),
            _ => {}
        }
        if let Some(arg) = s
            .command
            .iter()
            .find(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            r.add(
                &at("command"),
                format!("argument '{arg}' is empty or holds whitespace: give each word apart"),
            );
        }
    }
}

fn check_upgrade(p: &Profile, r: &mut Report<'_>) {
    if let Some(url) = &p.upgrade.url
        && (!(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace))
    {
        r.add(
            "upgrade.url",
            format!("'{url}' is not an http(s) URL without spaces"),
        );
    }
    if let Some(key) = &p.upgrade.public_key
        && let Err(e) = minisign::PublicKey::from_base64(key.trim())
    {
        r.add(
            "upgrade.public-key",
            format!(
                "not a minisign public key ({e}): give the base64 line of the .pub file, \
                 like \"RWQ...\""
            ),
        );
    }
}

fn check_target(p: &Profile, r: &mut Report<'_>) {
    let want = defaults::arch_for(p.target.board);
    if p.target.arch != want {
        r.add(
            "target.arch",
            format!(
                "arch '{}' does not match board: this board needs '{}'",
                p.target.arch.as_str(),
                want.as_str()
            ),
        );
    }
    if p.rpi.is_some() && p.target.board != super::Board::Rpi5 {
        r.add("rpi", "[rpi] is only valid with target.board = \"rpi5\"");
    }
    if p.outputs.formats.is_empty() && !p.outputs.netboot {
        r.add(
            "outputs.formats",
            "nothing to build: no disk format and netboot = false",
        );
    }
}

fn check_packages(p: &Profile, r: &mut Report<'_>) {
    let d = &p.debian;
    if !(d.mirror.starts_with("http://") || d.mirror.starts_with("https://")) {
        r.add(
            "debian.mirror",
            format!("'{}' is not an http(s) URL", d.mirror),
        );
    }
    if d.suites.is_empty() {
        r.add("debian.suites", "at least one suite is needed");
    }
    for (i, s) in d.suites.iter().enumerate() {
        if !is_word(s, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        }) {
            r.add(
                &format!("debian.suites[{i}]"),
                format!("'{s}' is not a suite name"),
            );
        }
    }
    let mut check_spec = |path: &str, spec: &str| {
        if let Err(e) = check_apt_spec(spec, &d.suites) {
            r.add(path, e);
        }
    };
    for (i, spec) in d.packages.iter().enumerate() {
        check_spec(&format!("debian.packages[{i}]"), spec);
    }
    check_spec("kernel.package", p.kernel_package());
    let module_lists = [("modules", &p.kernel.modules), ("load", &p.kernel.load)];
    for (key, list) in module_lists {
        for (i, m) in list.iter().enumerate() {
            if !is_word(m, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                r.add(
                    &format!("kernel.{key}[{i}]"),
                    format!("'{m}' is not a module name"),
                );
            }
        }
    }
    for (name, value) in &p.kernel.sysctls {
        if let Err(e) = check_sysctl(name, &value.to_string()) {
            let path = format!("kernel.sysctls.\"{name}\"");
            r.add_at(&["kernel", "sysctls", name], &path, e);
        }
    }
}

/// A sysctl name is dotted words (`net.ipv4.ip_forward`, `net.ipv4.conf.eth0.rp_filter`);
/// its value is one line.
fn check_sysctl(name: &str, value: &str) -> Result<(), String> {
    let word_ok = |w: &str| is_word(w, |c| c.is_ascii_alphanumeric() || "_-".contains(c));
    let words: Vec<&str> = name.split('.').collect();
    if words.len() < 2 || !words.iter().all(|w| word_ok(w)) {
        return Err(format!(
            "'{name}' is not a sysctl name (dotted words, like net.ipv4.ip_forward)"
        ));
    }
    if value.is_empty() || value.contains(['\n', '\r']) {
        return Err(format!("the value of {name} must be one non-empty line"));
    }
    Ok(())
}

/// `name`, `name/suite` or `name=version`, Debian package name rules.
fn check_apt_spec(spec: &str, suites: &[String]) -> Result<(), String> {
    let (name, suite) = match spec.split_once('/') {
        Some((n, s)) => (n, Some(s)),
        None => (spec.split_once('=').map_or(spec, |(n, _)| n), None),
    };
    let valid_name = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && is_word(name, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)
        });
    if !valid_name {
        return Err(format!(
            "'{spec}' is not a package: expected name, name/suite or name=version"
        ));
    }
    match suite {
        Some(s) if !suites.iter().any(|x| x == s) => Err(format!(
            "suite '{s}' is not in debian.suites ({})",
            suites.join(", ")
        )),
        _ => Ok(()),
    }
}

fn check_k3s(p: &Profile, r: &mut Report<'_>) {
    let k = &p.k3s;
    if !is_k3s_version(&k.version) {
        r.add(
            "k3s.version",
            format!(
                "'{}' is not a K3s release tag like 'v1.36.4+k3s1'",
                k.version
            ),
        );
    }
    for (arch, pin) in [("amd64", &k.sha256.amd64), ("arm64", &k.sha256.arm64)] {
        if let Some(pin) = pin.as_deref().filter(|h| !is_sha256(h)) {
            r.add(
                &format!("k3s.sha256.{arch}"),
                format!("'{pin}' is not a SHA-256 (64 hex digits)"),
            );
        }
    }
    if p.k3s_sha256().is_none() {
        let arch = p.target.arch.as_str();
        r.add(
            &format!("k3s.sha256.{arch}"),
            format!("the K3s binary for {arch} must be pinned by SHA-256"),
        );
    }
    if !(k.url.starts_with("https://") || k.url.starts_with("http://")) {
        r.add("k3s.url", format!("'{}' is not an http(s) URL", k.url));
    }
    let servers = p.servers().count();
    if k.datastore == Datastore::Sqlite && servers > 1 {
        r.add(
            "k3s.datastore",
            format!(
                "\"sqlite\" keeps the cluster on one server, but the profile lists {servers} \
                 servers: use \"etcd\" or \"auto\" (embedded etcd), or list one server"
            ),
        );
    }
    for (path, cidr) in [
        ("k3s.cluster-cidr", &k.cluster_cidr),
        ("k3s.service-cidr", &k.service_cidr),
    ] {
        if let Err(e) = Cidr::parse(cidr) {
            r.add(path, e);
        }
    }
    for (i, t) in k.node_taints.iter().enumerate() {
        if let Err(e) = check_taint(t) {
            r.add(&format!("k3s.node-taints[{i}]"), e);
        }
    }
    let mut names = HashSet::new();
    for (i, a) in k.airgap_images.iter().enumerate() {
        let at = |key: &str| format!("k3s.airgap-images[{i}].{key}");
        if !is_sha256(&a.sha256) {
            r.add(
                &at("sha256"),
                format!("'{}' is not a SHA-256 (64 hex digits)", a.sha256),
            );
        }
        let name = a.file_name();
        if !super::IMAGE_ARCHIVE_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
        {
            r.add(
                &at("path"),
                format!(
                    "'{}': K3s imports only {} archives",
                    a.path,
                    super::IMAGE_ARCHIVE_SUFFIXES.join(", ")
                ),
            );
        } else if !names.insert(name) {
            r.add(
                &at("path"),
                format!("another archive is already named {name}"),
            );
        }
    }
}

fn check_cluster(p: &Profile, r: &mut Report<'_>) {
    let c = &p.cluster;
    if let Some(url) = c
        .server_url
        .as_deref()
        .filter(|u| !u.starts_with("https://"))
    {
        r.add(
            "cluster.server-url",
            format!("'{url}' must be an https:// URL"),
        );
    }
    if let Some(vip) = c.vip.as_deref().filter(|v| v.parse::<IpAddr>().is_err()) {
        r.add("cluster.vip", format!("'{vip}' is not an IP address"));
    }
    check_unknown_nodes(p, r);
    let servers = p.servers().count();
    let agents = p.nodes.len() - servers;
    if c.token.is_none() && (agents > 0 || servers > 1) {
        r.add("cluster.token", "a join token source is required when nodes join a cluster (agents or more than one server)");
    }
    let cni = &p.cni;
    if cni.kind == CniKind::None
        && (cni.kube_proxy_replacement || cni.l2_announcements || !cni.lb_ip_pools.is_empty())
    {
        r.add(
            "cni.kind",
            "kube-proxy-replacement, l2-announcements and lb-ip-pools need kind = \"cilium\"",
        );
    }
    if let Some(sha) = cni
        .chart
        .as_ref()
        .map(|c| &c.sha256)
        .filter(|h| !is_sha256(h))
    {
        r.add(
            "cni.chart.sha256",
            format!("'{sha}' is not a SHA-256 (64 hex digits)"),
        );
    }
    for (i, pool) in cni.lb_ip_pools.iter().enumerate() {
        if let Err(e) = Cidr::parse(pool) {
            r.add(&format!("cni.lb-ip-pools[{i}]"), e);
        }
    }
    let g = &p.gitops;
    if g.engine != GitopsEngine::None && g.repo.as_deref().is_none_or(str::is_empty) {
        r.add(
            "gitops.repo",
            "a repository is required when gitops.engine is not \"none\"",
        );
    }
    if g.app_of_apps && g.engine != GitopsEngine::Argocd {
        r.add(
            "gitops.app-of-apps",
            "app-of-apps needs engine = \"argocd\"",
        );
    }
    if let Some(hosts) = &g.known_hosts
        && let Err(e) = check_known_hosts(hosts)
    {
        r.add("gitops.known-hosts", e);
    }
    let ssh = g.repo.as_deref().is_some_and(is_ssh_git_url);
    if g.engine == GitopsEngine::Flux && ssh && g.credentials.is_some() && g.known_hosts.is_none() {
        r.add(
            "gitops.known-hosts",
            "Flux checks the SSH host key of an ssh:// repository: set gitops.known-hosts \
             to what `ssh-keyscan <git host>` prints",
        );
    }
}

/// `known_hosts` lines: `<hosts> <key type> <base64 key> [comment]`, `#` comments.
fn check_known_hosts(text: &str) -> Result<(), String> {
    let mut keys = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        // An optional @cert-authority / @revoked marker comes first.
        let fields = match fields.first() {
            Some(m) if m.starts_with('@') => &fields[1..],
            _ => &fields[..],
        };
        let typed = fields.get(1).is_some_and(|t| {
            t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-")
        });
        let key_ok = fields.get(2).is_some_and(|k| {
            k.len() > 16
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        });
        if !(typed && key_ok) {
            return Err(format!(
                "line {} is not a known_hosts entry `<host> <key type> <base64 key>`: '{line}'",
                n + 1
            ));
        }
        keys += 1;
    }
    if keys == 0 {
        return Err("no host key in it".into());
    }
    Ok(())
}

/// The longest hostname prefix: `<prefix>-<8 hex digits>` must stay a 63-byte label.
const MAX_HOSTNAME_PREFIX: usize = 63 - 9;

fn check_unknown_nodes(p: &Profile, r: &mut Report<'_>) {
    let c = &p.cluster;
    let policy = p.unknown_nodes();
    match policy {
        UnknownNodes::Server if !p.nodes.is_empty() => r.add(
            "cluster.unknown-nodes",
            "\"server\" makes every unlisted machine a single-node cluster of its own: \
             it is only allowed in a profile without [[nodes]] (use \"agent\" to let \
             unlisted machines join this cluster, or \"refuse\")",
        ),
        UnknownNodes::Agent => {
            if c.token.is_none() {
                r.add(
                    "cluster.unknown-nodes",
                    "\"agent\" needs cluster.token: unlisted machines join with it",
                );
            }
            if p.server_url().is_none() {
                r.add(
                    "cluster.unknown-nodes",
                    "\"agent\" needs a server to join: set cluster.server-url, or give \
                     a server node a static ip",
                );
            }
        }
        _ => {}
    }
    if policy == UnknownNodes::Refuse {
        return;
    }
    let prefix = p.hostname_prefix();
    let key = if c.hostname_prefix.is_some() {
        "cluster.hostname-prefix"
    } else {
        "cluster.name"
    };
    if !is_hostname(prefix)
        || prefix.contains('.')
        || prefix.len() > MAX_HOSTNAME_PREFIX
        || prefix.chars().any(|c| c.is_ascii_uppercase())
    {
        r.add(
            key,
            format!(
                "'{prefix}' cannot prefix the hostnames of unlisted machines: it must be an \
                 lowercase RFC 1123 label (a-z, 0-9, '-') of at most {MAX_HOSTNAME_PREFIX} \
                 characters; set cluster.hostname-prefix"
            ),
        );
    }
    for (i, n) in p.nodes.iter().enumerate() {
        if n.hostname.eq_ignore_ascii_case(DEFAULT_NODE_DIR) {
            r.add(
                &format!("nodes[{i}].hostname"),
                format!(
                    "'{DEFAULT_NODE_DIR}' is reserved for the configuration of unlisted \
                     machines (cluster.unknown-nodes is \"{}\")",
                    match policy {
                        UnknownNodes::Server => "server",
                        _ => "agent",
                    }
                ),
            );
        }
    }
}

/// The node directory unlisted machines use (`nodes/default/` in the image).
pub const DEFAULT_NODE_DIR: &str = "default";

fn check_nodes(p: &Profile, r: &mut Report<'_>) {
    let mut seen: HashSet<(&str, String)> = HashSet::new();
    let mut unique = |r: &mut Report<'_>, what: &'static str, path: String, value: String| {
        if !seen.insert((what, value.clone())) {
            r.add(&path, format!("duplicate {what} '{value}'"));
        }
    };
    for (i, n) in p.nodes.iter().enumerate() {
        let at = |k: &str| format!("nodes[{i}].{k}");
        if !is_hostname(&n.hostname) {
            r.add(
                &at("hostname"),
                format!("'{}' is not an RFC 1123 hostname", n.hostname),
            );
        }
        unique(
            r,
            "hostname",
            at("hostname"),
            n.hostname.to_ascii_lowercase(),
        );
        if n.mac.is_none() && n.serial.is_none() {
            r.add(
                &at("hostname"),
                "a node needs a mac or a serial to be recognised",
            );
        }
        if let Some(mac) = &n.mac {
            match mac.parse::<Mac>() {
                Ok(m) => unique(r, "mac", at("mac"), m.to_string()),
                Err(_) => r.add(
                    &at("mac"),
                    format!("'{mac}' is not a MAC address like aa:bb:cc:dd:ee:ff"),
                ),
            }
        }
        if let Some(serial) = &n.serial {
            if p.target.board != super::Board::Rpi5 {
                r.add(
                    &at("serial"),
                    "a Pi serial is only meaningful with target.board = \"rpi5\"",
                );
            }
            if !((serial.len() == 8 || serial.len() == 16)
                && serial.chars().all(|c| c.is_ascii_hexdigit()))
            {
                r.add(
                    &at("serial"),
                    format!("'{serial}' is not a Pi serial (8 or 16 hex digits)"),
                );
            } else {
                // The firmware asks for the last 8 digits, so those must be unique too.
                let short = serial[serial.len() - 8..].to_ascii_lowercase();
                unique(r, "serial", at("serial"), short);
            }
        }
        if let Some(ip) = &n.ip {
            match Cidr::parse(ip) {
                Ok(Cidr { addr, .. }) => {
                    unique(r, "ip", at("ip"), addr.to_string());
                    // No DHCP, so no name servers unless given: k3s would quietly fall
                    // back to 8.8.8.8 for its pods, and the node resolve nothing.
                    if n.dns.is_empty() {
                        r.add(
                            &at("ip"),
                            "a node with a static ip needs dns (its name servers, for \
                             example dns = [\"192.168.1.1\"]): without DHCP it has none",
                        );
                    }
                }
                Err(e) => r.add(&at("ip"), e),
            }
        } else if n.gateway.is_some() || !n.dns.is_empty() {
            r.add(&at("ip"), "gateway and dns need a static ip");
        }
        if let Some(gw) = n
            .gateway
            .as_deref()
            .filter(|g| g.parse::<IpAddr>().is_err())
        {
            r.add(&at("gateway"), format!("'{gw}' is not an IP address"));
        }
        for (j, d) in n.dns.iter().enumerate() {
            if d.parse::<IpAddr>().is_err() {
                r.add(
                    &format!("nodes[{i}].dns[{j}]"),
                    format!("'{d}' is not an IP address"),
                );
            }
        }
        for (j, t) in n.taints.iter().enumerate() {
            if let Err(e) = check_taint(t) {
                r.add(&format!("nodes[{i}].taints[{j}]"), e);
            }
        }
        if n.ip.is_some() && n.dhcp_reservation {
            r.add(
                &at("dhcp-reservation"),
                "a node with a static ip takes no address by DHCP: drop dhcp-reservation \
                 or ip",
            );
        } else if n.ip.is_none() && !n.dhcp_reservation && n.role == Role::Server {
            r.add(
                &at("ip"),
                format!(
                    "server {} needs an address that does not change (agents and the other \
                     servers reach it by it): give it a static ip, or set \
                     dhcp-reservation = true if your DHCP server always hands its MAC the \
                     same address",
                    n.hostname
                ),
            );
        }
        if let Some(disk) = &n.state_disk
            && let Err(e) = check_disk_name(disk)
        {
            r.add(&at("state-disk"), e);
        }
    }
    if p.nodes.is_empty() {
        return;
    }
    let servers = p.nodes.iter().filter(|n| n.role == Role::Server).count();
    if servers == 0 {
        r.add(
            "nodes",
            "no node has role = \"server\": a cluster needs at least one",
        );
    } else if servers > 1 && servers % 2 == 0 {
        r.add(
            "nodes",
            format!("{servers} servers: use an odd number so etcd keeps quorum"),
        );
    }
}

/// Address ranges that must not collide, and a join story every node can follow.
/// Unparseable values were reported by the checks above and are skipped here.
fn check_topology(p: &Profile, r: &mut Report<'_>) {
    let k = &p.k3s;
    let (Ok(pods), Ok(services)) = (Cidr::parse(&k.cluster_cidr), Cidr::parse(&k.service_cidr))
    else {
        return;
    };
    if pods.overlaps(&services) {
        r.add(
            "k3s.service-cidr",
            format!(
                "k3s.cluster-cidr {} overlaps k3s.service-cidr {}: pods and services need \
                 separate ranges",
                k.cluster_cidr, k.service_cidr
            ),
        );
    }
    let ranges = [("k3s.cluster-cidr", pods), ("k3s.service-cidr", services)];
    for (i, node) in p.nodes.iter().enumerate() {
        let Some(Ok(ip)) = node.ip.as_deref().map(Cidr::parse) else {
            continue;
        };
        for (what, range) in &ranges {
            if range.contains(ip.addr) {
                r.add(
                    &format!("nodes[{i}].ip"),
                    format!(
                        "node {}: ip {} lies inside {what} {range}: the node network must be \
                         outside the cluster's ranges",
                        node.hostname, ip.addr
                    ),
                );
            }
        }
    }
    if let Some(Ok(vip)) = p.cluster.vip.as_deref().map(str::parse::<IpAddr>) {
        for (what, range) in &ranges {
            if range.contains(vip) {
                r.add(
                    "cluster.vip",
                    format!("cluster.vip {vip} lies inside {what}"),
                );
            }
        }
    }
    if p.cni.kind == CniKind::Cilium {
        for (i, pool) in p.cni.lb_ip_pools.iter().enumerate() {
            let Ok(c) = Cidr::parse(pool) else { continue };
            for (what, range) in &ranges {
                if c.overlaps(range) {
                    r.add(
                        &format!("cni.lb-ip-pools[{i}]"),
                        format!("cni.lb-ip-pools {pool} overlaps {what}"),
                    );
                }
            }
        }
        if p.cni.l2_announcements && !p.cni.kube_proxy_replacement {
            r.add(
                "cni.l2-announcements",
                "cni.l2-announcements needs cni.kube-proxy-replacement = true (Cilium answers \
                 ARP from its kube-proxy replacement)",
            );
        }
    }
    // Every node other than the first server must know where to join. (No server at
    // all is reported by check_nodes.)
    let first = p.servers().next();
    let joiners: Vec<&str> = p
        .nodes
        .iter()
        .filter(|n| Some(&n.hostname) != first.map(|f| &f.hostname))
        .map(|n| n.hostname.as_str())
        .collect();
    if first.is_some() && !joiners.is_empty() && p.server_url().is_none() {
        r.add(
            "cluster.server-url",
            format!(
                "nodes {} join the cluster but no server URL is known: set \
                 cluster.server-url or give the first server a static ip",
                joiners.join(", ")
            ),
        );
    }
}

/// A whole disk by the kernel's name for it (`/sys/block/<name>`): the node has no
/// udev, so no `/dev/disk/by-*` links.
fn check_disk_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && is_word(name, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a disk's kernel name: give it as /sys/block lists it, like \
             \"sda\", \"vda\" or \"nvme0n1\" (no /dev/: the node has no udev for \
             /dev/disk/by-* names)"
        ))
    }
}

fn check_time(p: &Profile, r: &mut Report<'_>) {
    for s in &p.time.servers {
        if s.parse::<IpAddr>().is_err() && !is_hostname(s) {
            r.add(
                "time.servers",
                format!("'{s}' is neither a host name nor an IP address"),
            );
        }
    }
}

fn check_disk(p: &Profile, r: &mut Report<'_>) {
    if let Some(disk) = &p.netboot.state_disk
        && let Err(e) = check_disk_name(disk)
    {
        r.add("netboot.state-disk", e);
    }
    let d = &p.disk;
    let needed = d
        .boot_size
        .bytes()
        .saturating_add(d.root_slot_size.bytes().saturating_mul(2));
    if needed >= d.size.bytes() {
        r.add(
            "disk.size",
            format!(
                "{} leaves no room: boot ({}) and two root slots ({} each) need more",
                d.size, d.boot_size, d.root_slot_size
            ),
        );
    }
}

fn is_word(s: &str, ok: impl Fn(char) -> bool) -> bool {
    !s.is_empty() && s.chars().all(ok)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// `v<major>.<minor>.<patch>+k3s<n>`.
fn is_k3s_version(v: &str) -> bool {
    let Some((semver, build)) = v.strip_prefix('v').and_then(|r| r.split_once("+k3s")) else {
        return false;
    };
    let parts: Vec<&str> = semver.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| is_word(p, |c| c.is_ascii_digit()))
        && is_word(build, |c| c.is_ascii_digit())
}

/// `key=value:Effect` or `key:Effect` with a Kubernetes taint effect.
fn check_taint(t: &str) -> Result<(), String> {
    const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
    match t.rsplit_once(':') {
        Some((kv, effect))
            if EFFECTS.contains(&effect) && !kv.split('=').next().unwrap_or("").is_empty() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "'{t}' is not a taint: expected key=value:Effect with Effect one of {}",
            EFFECTS.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(
            is_k3s_version("v1.36.4+k3s1")
                && !is_k3s_version("1.36.4")
                && !is_k3s_version("v1.36+k3s1")
        );
        assert!(
            check_disk_name("nvme0n1").is_ok()
                && check_disk_name("sda").is_ok()
                && check_disk_name("/dev/sda").is_err()
                && check_disk_name("disk/by-path/pci-0").is_err()
                && check_disk_name("").is_err()
        );
        assert!(
            check_taint("dedicated=gpu:NoSchedule").is_ok()
                && check_taint("gpu:Sometimes").is_err()
        );
        let suites = ["trixie".to_owned(), "trixie-backports".to_owned()];
        assert!(check_apt_spec("linux-image-arm64/trixie-backports", &suites).is_ok());
        assert!(check_apt_spec("busybox-static=1:1.37.0-6", &suites).is_ok());
        assert!(
            check_apt_spec("foo/sid", &suites).is_err()
                && check_apt_spec("Bad_Name", &suites).is_err()
        );
    }
}
