//! The node inventory: which machine (by MAC or Pi serial) is which node, and what
//! unknown machines get. Parsed from TOML, validated up front, reloaded on change.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The same MAC and role types, and the same host name rule, as a profile's `[[nodes]]`.
pub use labimg_builder::profile::Role;
pub use labimg_builder::profile::net::Mac;
use labimg_builder::profile::net::is_hostname;

/// What to do with a machine that is not in the inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Do not answer it (DHCP) and tell it to exit (iPXE): the safe default.
    #[default]
    Ignore,
    /// Boot it with the default profile, without a per-node config.
    Boot,
}

/// The `[default]` table: policy for unknown machines.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DefaultPolicy {
    /// `ignore` (default) or `boot`.
    #[serde(default)]
    pub action: Action,
    /// Profile to boot unknown machines with when `action = "boot"`.
    pub profile: Option<String>,
    /// Extra kernel arguments for unknown machines.
    #[serde(default)]
    pub kernel_args: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInventory {
    #[serde(default)]
    default: DefaultPolicy,
    #[serde(default)]
    node: Vec<toml::Spanned<RawNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    hostname: String,
    mac: Option<String>,
    serial: Option<String>,
    role: String,
    profile: String,
    ip: Option<Ipv4Addr>,
    #[serde(default)]
    kernel_args: String,
    token: Option<String>,
    #[serde(default)]
    once: bool,
}

/// One known node.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Host name; also the name of its config directory `<profile>/nodes/<hostname>/`.
    pub hostname: String,
    /// Boot MAC address, if matched by MAC.
    pub mac: Option<Mac>,
    /// Raspberry Pi serial (8 lowercase hex digits), if matched by serial.
    pub serial: Option<String>,
    /// K3s role.
    pub role: Role,
    /// Image profile it boots.
    pub profile: String,
    /// Static IP (a reservation in full DHCP mode).
    pub ip: Option<Ipv4Addr>,
    /// Extra kernel arguments appended last.
    pub kernel_args: String,
    /// Config token given in the inventory (otherwise one is generated and persisted).
    #[serde(skip)]
    pub token: Option<String>,
    /// Serve the config bundle only once, then answer 410 Gone.
    pub once: bool,
}

/// A validated inventory.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Policy for unknown machines.
    pub default: DefaultPolicy,
    /// Known nodes, in file order.
    pub nodes: Vec<Node>,
    by_mac: HashMap<Mac, usize>,
    by_serial: HashMap<String, usize>,
}

/// What the appliance does for a given machine.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A node from the inventory.
    Known(Node),
    /// An unknown machine booted per `[default]` with this profile.
    DefaultBoot {
        /// Profile to boot.
        profile: String,
        /// Extra kernel args from `[default]`.
        kernel_args: String,
    },
    /// Unknown machine, ignored.
    Ignore,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !s.starts_with('.')
}

impl Inventory {
    /// Parses and validates an inventory; every problem is reported at once with
    /// the file name and line.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let raw: RawInventory = toml::from_str(text)
            .with_context(|| format!("parsing inventory {}", file.display()))?;
        let mut problems = Vec::new();
        let mut inv = Inventory {
            default: raw.default,
            ..Default::default()
        };
        if inv.default.action == Action::Boot && inv.default.profile.is_none() {
            problems.push("[default]: action = \"boot\" needs a profile".to_string());
        }
        let mut hostnames = HashMap::new();
        for spanned in raw.node {
            let line = line_of(text, spanned.span().start);
            let r = spanned.into_inner();
            let at = format!("{}:{line}: node {:?}", file.display(), r.hostname);
            // It names the node's config folder in a profile's build, whose
            // [[nodes]] hostnames are RFC 1123 names too.
            if !is_hostname(&r.hostname) {
                problems.push(format!(
                    "{at}: hostname is not an RFC 1123 name (letters, digits, inner '-', \
                     dot-separated labels of 1-63)"
                ));
            }
            if !is_safe_name(&r.profile) {
                problems.push(format!("{at}: invalid profile name {:?}", r.profile));
            }
            let role = r.role.parse::<Role>().unwrap_or_else(|e| {
                problems.push(format!("{at}: {e}"));
                Role::Agent
            });
            let mac = match r.mac.as_deref().map(str::parse::<Mac>) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    problems.push(format!("{at}: {e}"));
                    None
                }
                None => None,
            };
            let serial = r.serial.map(|s| s.to_ascii_lowercase());
            if let Some(s) = &serial
                && (s.len() != 8 || !s.chars().all(|c| c.is_ascii_hexdigit()))
            {
                problems.push(format!("{at}: serial must be 8 hex digits, not {s:?}"));
            }
            if r.mac.is_none() && serial.is_none() {
                problems.push(format!("{at}: needs a mac or a serial"));
            }
            if let Some(t) = &r.token
                && (t.len() < 16 || !t.chars().all(|c| c.is_ascii_graphic()))
            {
                problems.push(format!(
                    "{at}: token must be at least 16 printable characters"
                ));
            }
            let idx = inv.nodes.len();
            if let Some(prev) = hostnames.insert(r.hostname.clone(), line) {
                problems.push(format!("{at}: hostname already used on line {prev}"));
            }
            if let Some(m) = mac
                && inv.by_mac.insert(m, idx).is_some()
            {
                problems.push(format!("{at}: MAC {m} listed twice"));
            }
            if let Some(s) = &serial
                && inv.by_serial.insert(s.clone(), idx).is_some()
            {
                problems.push(format!("{at}: serial {s} listed twice"));
            }
            inv.nodes.push(Node {
                hostname: r.hostname,
                mac,
                serial,
                role,
                profile: r.profile,
                ip: r.ip,
                kernel_args: r.kernel_args,
                token: r.token,
                once: r.once,
            });
        }
        let mut ips = HashMap::new();
        for n in &inv.nodes {
            if let Some(ip) = n.ip
                && let Some(other) = ips.insert(ip, n.hostname.clone())
            {
                problems.push(format!(
                    "{}: IP {ip} given to both {other} and {}",
                    file.display(),
                    n.hostname
                ));
            }
        }
        if !problems.is_empty() {
            bail!(
                "invalid inventory {}:\n  {}",
                file.display(),
                problems.join("\n  ")
            );
        }
        Ok(inv)
    }

    /// Reads and parses an inventory file.
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading inventory {}", file.display()))?;
        Self::parse(&text, file)
    }

    /// The node with this boot MAC.
    pub fn by_mac(&self, mac: &Mac) -> Option<&Node> {
        self.by_mac.get(mac).map(|i| &self.nodes[*i])
    }

    /// The node with this Pi serial (8 hex digits, any case).
    pub fn by_serial(&self, serial: &str) -> Option<&Node> {
        self.by_serial
            .get(&serial.to_ascii_lowercase())
            .map(|i| &self.nodes[*i])
    }

    /// The node with this host name.
    pub fn by_hostname(&self, hostname: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.hostname == hostname)
    }

    /// What to do with a machine, from its MAC and (for a Pi) its serial.
    pub fn decide(&self, mac: Option<&Mac>, serial: Option<&str>) -> Decision {
        let node = mac
            .and_then(|m| self.by_mac(m))
            .or_else(|| serial.and_then(|s| self.by_serial(s)));
        match (node, self.default.action, &self.default.profile) {
            (Some(n), _, _) => Decision::Known(n.clone()),
            (None, Action::Boot, Some(p)) => Decision::DefaultBoot {
                profile: p.clone(),
                kernel_args: self.default.kernel_args.clone(),
            },
            _ => Decision::Ignore,
        }
    }
}

/// Polls the inventory file's mtime every `period` and swaps in a valid new version;
/// an invalid one is logged and the previous inventory is kept.
pub async fn watch(
    file: PathBuf,
    current: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Inventory>>>,
    period: std::time::Duration,
) {
    let mtime = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut last = mtime(&file);
    loop {
        tokio::time::sleep(period).await;
        let now = mtime(&file);
        if now == last {
            continue;
        }
        last = now;
        match Inventory::load(&file) {
            Ok(inv) => {
                tracing::info!(
                    nodes = inv.nodes.len(),
                    "inventory reloaded from {}",
                    file.display()
                );
                if let Ok(mut g) = current.write() {
                    *g = std::sync::Arc::new(inv);
                }
            }
            Err(e) => tracing::error!("keeping the previous inventory: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[default]
action = "boot"
profile = "proxmox"

[[node]]
hostname = "cp1"
mac = "52:54:00:12:34:56"
role = "server"
profile = "proxmox"
ip = "10.0.0.10"

[[node]]
hostname = "pi1"
serial = "DC4A8F1B"
role = "agent"
profile = "pi5"
once = true
"#;

    #[test]
    fn parses_and_looks_up() {
        let inv = Inventory::parse(GOOD, Path::new("inv.toml")).unwrap();
        let mac: Mac = "52-54-00-12-34-56".parse().unwrap();
        assert_eq!(inv.by_mac(&mac).unwrap().hostname, "cp1");
        assert_eq!(inv.by_serial("dc4a8f1b").unwrap().hostname, "pi1");
        let other: Mac = "aabbccddeeff".parse().unwrap();
        assert!(
            matches!(inv.decide(Some(&other), None), Decision::DefaultBoot { ref profile, .. } if profile == "proxmox")
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let bad = GOOD
            .replace("role = \"agent\"", "role = \"worker\"")
            .replace("52:54:00:12:34:56", "52:54:00");
        let err = format!(
            "{:#}",
            Inventory::parse(&bad, Path::new("inv.toml")).unwrap_err()
        );
        assert!(
            err.contains("inv.toml:6: node \"cp1\": invalid MAC"),
            "{err}"
        );
        assert!(
            err.contains("inv.toml:13: node \"pi1\": role must be"),
            "{err}"
        );
        let unknown = format!("{GOOD}\n[[node]]\nhostname = \"x\"\ncolour = \"red\"\n");
        let err = format!(
            "{:#}",
            Inventory::parse(&unknown, Path::new("inv.toml")).unwrap_err()
        );
        assert!(
            err.contains("unknown field `colour`") && err.contains("line 22"),
            "{err}"
        );
    }
}
