//! Cluster preseed: what a node needs to form or join the cluster on first boot,
//! beyond its `config.yaml` — the checks of that config, the server manifests
//! k3s applies at start (Cilium, GitOps bootstrap) and the secrets.
//!
//! Manifests are rendered with minijinja from the template files in
//! `builder/templates/` and parsed back before they are accepted. Secrets (the
//! k3s token, Git credentials, the SOPS age key) are resolved only when a file
//! holding them is rendered, and only for [`Destination::Private`] (the per-node
//! directory `labimg serve` hands to that node alone) unless the user opted in
//! with [`RenderOptions::embed_secrets`]: netboot artifacts and disk images are
//! readable by anyone who gets hold of them.

pub mod cilium;
pub mod gitops;
pub mod k3s_flags;
pub mod secrets;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::profile::{Node, Profile, Role};

/// Where the node's k3s reads its join token (`k3s/token` of the node directory
/// is installed there by the node init).
pub const TOKEN_PATH: &str = "/etc/rancher/k3s/token";

/// Where a server's k3s reads the agent token (`k3s/agent-token` of the node
/// directory, installed there by the node init).
pub const AGENT_TOKEN_PATH: &str = "/etc/rancher/k3s/agent-token";

/// The label the agent token is derived under (see [`agent_token`]).
const AGENT_TOKEN_LABEL: &[u8] = b"labimg k3s agent-token v1";

/// The agent token of a cluster whose server token is `token`: the hex HMAC-SHA256
/// of the label `labimg k3s agent-token v1` keyed with the server token. Servers get
/// it as k3s's `agent-token`, agents as their only token, so an agent never holds the
/// server token (which would let it join as a server), the user keeps one secret and
/// a build stays reproducible. An agent token does not give the server token back.
pub fn agent_token(token: &str) -> String {
    hex::encode(hmac_sha256(token.as_bytes(), AGENT_TOKEN_LABEL))
}

/// HMAC-SHA256 (RFC 2104) over `sha2` (also what `labimg serve --token-key` derives
/// per-node tokens with).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Build choices that are not part of the profile.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Put secret values into shared outputs (disk images) too (`--embed-secrets`).
    pub embed_secrets: bool,
    /// Directory that relative `file`/`sops-file` secrets and `cni.chart.path` are
    /// resolved against (the working directory by default, as the profile docs say).
    pub base_dir: PathBuf,
    /// A per-node build (`--node`): only this node of `[[nodes]]` is rendered (its
    /// cluster topology still comes from every node of the profile).
    pub only_node: Option<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            embed_secrets: false,
            base_dir: PathBuf::from("."),
            only_node: None,
        }
    }
}

/// Who will be able to read a rendered node directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Disk images and netboot artifacts: secrets only with `embed_secrets`.
    Shared,
    /// `images/<profile>/nodes/<host>/`, served to that node only: secrets always.
    Private,
}

impl Destination {
    /// Whether secret files belong in this destination.
    pub fn gets_secrets(self, opts: &RenderOptions) -> bool {
        self == Destination::Private || opts.embed_secrets
    }
}

/// Problems a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum PreseedError {
    /// A `config.yaml` key k3s does not accept for the node's role.
    #[error(
        "node {node}: k3s {role} does not accept config key '{key}'{why}; did you mean '{hint}'?"
    )]
    UnknownK3sKey {
        node: String,
        role: &'static str,
        key: String,
        why: String,
        hint: &'static str,
    },
    /// Any other problem with a node's k3s config.
    #[error("node {node}: {message}")]
    K3sConfig { node: String, message: String },
    /// The vendored chart is not the pinned one.
    #[error(
        "vendored chart {} has sha256 {actual}, but cni.chart.sha256 pins {expected}: refusing a chart that is not the pinned one",
        path.display()
    )]
    ChartDigest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A rendered manifest is not a well-formed Kubernetes object.
    #[error("rendered manifest {file}: {message}")]
    Manifest { file: String, message: String },
}

/// The embedded templates (`builder/templates/*.j2`).
#[derive(Debug)]
pub struct Templates {
    env: minijinja::Environment<'static>,
}

const TEMPLATES: &[(&str, &str)] = &[
    (
        "cilium.yaml.j2",
        include_str!("../templates/cilium.yaml.j2"),
    ),
    (
        "cilium-l2.yaml.j2",
        include_str!("../templates/cilium-l2.yaml.j2"),
    ),
    ("flux.yaml.j2", include_str!("../templates/flux.yaml.j2")),
    (
        "argocd.yaml.j2",
        include_str!("../templates/argocd.yaml.j2"),
    ),
    (
        "secret.yaml.j2",
        include_str!("../templates/secret.yaml.j2"),
    ),
];

/// `q`: a string as a double-quoted YAML scalar (JSON's quoting is valid YAML),
/// so that no profile value can break out of its place in a manifest.
fn quote(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let s = value
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    serde_json::to_string(&s)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

impl Templates {
    /// Loads the embedded templates.
    pub fn new() -> Result<Templates> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("q", quote);
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .with_context(|| format!("loading template {name}"))?;
        }
        Ok(Templates { env })
    }

    /// Renders one template with a JSON context; the result ends with a newline.
    pub fn render(&self, name: &str, ctx: Value) -> Result<String> {
        let t = self
            .env
            .get_template(name)
            .with_context(|| format!("template {name}"))?;
        let mut out = t
            .render(ctx)
            .with_context(|| format!("rendering template {name}"))?;
        out.push('\n');
        Ok(out)
    }
}

/// Checks a node's rendered `config.yaml` mapping against k3s's flags for its role.
pub fn check_k3s_config(node: &Node, config: &Value) -> Result<()> {
    k3s_flags::check_config(&node.hostname, node.role, config)?;
    Ok(())
}

/// The manifests every server applies at start, without secret values:
/// `manifests/<name>.yaml` → YAML. Empty for agents.
pub fn server_manifests(
    profile: &Profile,
    node: &Node,
    opts: &RenderOptions,
) -> Result<BTreeMap<String, String>> {
    if node.role != Role::Server {
        return Ok(BTreeMap::new());
    }
    let t = Templates::new()?;
    let mut all = cilium::manifests(profile, opts, &t)?;
    all.extend(gitops::manifests(profile, &t)?);
    collect(all)
}

/// The files of a node directory that hold secret values (mode 0600): when the
/// cluster has a token, `k3s/token` (a server's holds the server token, an agent's
/// the [`agent_token`]) and for servers `k3s/agent-token`; for servers the Secrets
/// the GitOps manifests reference. Resolves the secrets now.
pub fn secret_files(
    profile: &Profile,
    node: &Node,
    opts: &RenderOptions,
) -> Result<BTreeMap<String, (Vec<u8>, u32)>> {
    let mut out = BTreeMap::new();
    if let Some(src) = &profile.cluster.token {
        let token = secrets::resolve_line(src, opts, "cluster.token")?;
        let agent = agent_token(&token);
        let line = |t: &str| (format!("{t}\n").into_bytes(), 0o600);
        if node.role == Role::Server {
            out.insert("k3s/token".to_owned(), line(&token));
            out.insert("k3s/agent-token".to_owned(), line(&agent));
        } else {
            out.insert("k3s/token".to_owned(), line(&agent));
        }
    }
    if node.role == Role::Server {
        let t = Templates::new()?;
        for (path, yaml) in collect(gitops::secret_manifests(profile, opts, &t)?)? {
            out.insert(path, (yaml.into_bytes(), 0o600));
        }
    }
    Ok(out)
}

/// Validates each `(stem, yaml)` and keys it by its node-directory path.
fn collect(manifests: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (stem, yaml) in manifests {
        let path = format!("manifests/{stem}.yaml");
        validate_manifest(&path, &yaml)?;
        out.insert(path, yaml);
    }
    Ok(out)
}

/// RFC 1123 subdomain (what Kubernetes requires of most object names).
pub fn is_rfc1123_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// RFC 1123 label (namespaces).
pub fn is_rfc1123_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_rfc1123_subdomain(s)
}

/// Parses a rendered (multi-document) manifest back and checks every object has
/// `apiVersion`, `kind` and an RFC 1123 `metadata.name` (and namespace).
pub fn validate_manifest(file: &str, yaml: &str) -> Result<(), PreseedError> {
    let err = |message: String| PreseedError::Manifest {
        file: file.to_owned(),
        message,
    };
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| err(format!("not valid YAML: {e}")))?;
    let docs: Vec<&Value> = docs.iter().filter(|d| !d.is_null()).collect();
    if docs.is_empty() {
        return Err(err("holds no object".into()));
    }
    for (i, doc) in docs.iter().enumerate() {
        let at = |m: &str| err(format!("document {}: {m}", i + 1));
        for key in ["apiVersion", "kind"] {
            if doc[key].as_str().is_none_or(str::is_empty) {
                return Err(at(&format!("has no {key}")));
            }
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .ok_or_else(|| at("has no metadata.name"))?;
        if !is_rfc1123_subdomain(name) {
            return Err(at(&format!(
                "metadata.name '{name}' is not an RFC 1123 name"
            )));
        }
        if let Some(ns) = doc["metadata"].get("namespace")
            && !ns.as_str().is_some_and(is_rfc1123_label)
        {
            return Err(at(&format!(
                "metadata.namespace {ns} is not an RFC 1123 label"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_validation() {
        let ok = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: argocd\n";
        assert!(validate_manifest("a.yaml", ok).is_ok());
        let bad_name = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Bad_Name\n";
        assert!(
            validate_manifest("a.yaml", bad_name)
                .unwrap_err()
                .to_string()
                .contains("RFC 1123")
        );
        let no_kind = "apiVersion: v1\nmetadata:\n  name: x\n";
        assert!(
            validate_manifest("a.yaml", no_kind)
                .unwrap_err()
                .to_string()
                .contains("kind")
        );
        assert!(validate_manifest("a.yaml", "# nothing\n").is_err());
        assert!(validate_manifest("a.yaml", "a: [\n").is_err());
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test cases 2 (short key) and 6 (a key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let a = agent_token("K10secret");
        assert_eq!(a.len(), 64);
        assert_eq!(a, agent_token("K10secret"), "deterministic");
        assert_ne!(a, agent_token("K10secreT"));
    }

    #[test]
    fn quoting_keeps_values_in_place() {
        let t = Templates::new().unwrap();
        let yaml = gitops::render_secret(
            &t,
            "x",
            "flux-system",
            serde_json::json!({}),
            serde_json::json!({"password": "a\"b\n: c # d"}),
            "test",
        )
        .unwrap();
        let v: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["stringData"]["password"], "a\"b\n: c # d");
    }
}
