//! Per-node config tokens and k3s node passwords: generated once, persisted (0600)
//! in the state directory, or derived from a key every replica shares
//! (`--token-key`), plus the record of `once` bundles already handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct State {
    tokens: BTreeMap<String, String>,
    consumed: BTreeSet<String>,
    /// k3s node passwords of netbooted nodes (see [`TokenStore::node_password_for`]).
    #[serde(default)]
    node_passwords: BTreeMap<String, String>,
}

/// Token store backed by `<state-dir>/tokens.json`.
pub struct TokenStore {
    path: PathBuf,
    state: Mutex<State>,
    /// With a shared key, tokens and node passwords are derived, not remembered.
    key: Option<TokenKey>,
}

/// The secret replicas share so that each derives the same per-node tokens and k3s
/// node passwords (`--token-key FILE`).
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

/// Never printed: it is a secret.
impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Fewest key bytes accepted: 32, which as hex text (`openssl rand -hex 16`) is 128
/// bits (the file's bytes are the key, whatever they encode).
pub const MIN_KEY_BYTES: usize = 32;

impl TokenKey {
    /// The key's bytes (surrounding whitespace, such as a final newline, is not part
    /// of it, so `openssl rand -hex 32 > key` and a Kubernetes Secret read the same).
    pub fn new(bytes: &[u8]) -> Result<Self> {
        let key = bytes.trim_ascii();
        anyhow::ensure!(
            key.len() >= MIN_KEY_BYTES,
            "the token key has {} bytes; it needs at least {MIN_KEY_BYTES} (make one with \
             `openssl rand -hex 32 > token.key`)",
            key.len()
        );
        Ok(Self(key.to_vec()))
    }

    /// Reads the key from `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the token key {}", path.display()))?;
        Self::new(&bytes).with_context(|| format!("token key {}", path.display()))
    }

    /// 32 hex characters: HMAC-SHA256 of `<label> NUL <hostname>` under the key, cut to
    /// the length of a random token.
    fn derive(&self, label: &str, hostname: &str) -> String {
        let msg = [label.as_bytes(), b"\0", hostname.as_bytes()].concat();
        hex::encode(&labimg_builder::preseed::hmac_sha256(&self.0, &msg)[..16])
    }
}

/// The labels tokens and node passwords are derived under: distinct, so one never
/// gives the other away.
const TOKEN_LABEL: &str = "labimg node config-token v1";
const PASSWORD_LABEL: &str = "labimg node k3s-password v1";

/// The path only: the state is secrets.
impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// 32 hex characters from the kernel's CSPRNG.
pub fn random_token() -> Result<String> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// Writes `data` to `path` atomically (temp file + rename) with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

impl TokenStore {
    /// Opens (or starts) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::open_with_key(state_dir, None)
    }

    /// [`TokenStore::open`]; with `key`, tokens and node passwords are derived from
    /// it instead of made at random, so replicas sharing the key agree. `once`
    /// records stay in this replica's state.
    pub fn open_with_key(state_dir: &Path, key: Option<TokenKey>) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join("tokens.json");
        let state = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if key.is_some() && !state.node_passwords.is_empty() {
            let hosts: Vec<&str> = state.node_passwords.keys().map(String::as_str).collect();
            tracing::warn!(
                "--token-key derives k3s node passwords, which replace those kept in {} for \
                 {}: k3s refuses these nodes until their <hostname>.node-password.k3s \
                 Secrets in kube-system are deleted",
                path.display(),
                hosts.join(", ")
            );
        }
        Ok(Self {
            path,
            state: Mutex::new(state),
            key,
        })
    }

    fn save(&self, st: &State) -> Result<()> {
        write_private(&self.path, &serde_json::to_vec_pretty(st)?)
    }

    /// The node's token: the inventory's if given, else a generated, persisted one.
    pub fn token_for(&self, hostname: &str, given: Option<&str>) -> Result<String> {
        if let Some(t) = given {
            return Ok(t.to_string());
        }
        if let Some(k) = &self.key {
            return Ok(k.derive(TOKEN_LABEL, hostname));
        }
        self.remembered(hostname, |st| &mut st.tokens)
    }

    /// `hostname`'s entry of the map `pick` chooses, made (random) and saved on
    /// first use.
    fn remembered(
        &self,
        hostname: &str,
        pick: fn(&mut State) -> &mut BTreeMap<String, String>,
    ) -> Result<String> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("token store poisoned"))?;
        if let Some(v) = pick(&mut st).get(hostname) {
            return Ok(v.clone());
        }
        let v = random_token()?;
        pick(&mut st).insert(hostname.to_string(), v.clone());
        self.save(&st)?;
        Ok(v)
    }

    /// The k3s node password of `hostname`, made once and kept here. A netbooted
    /// node has no STATE to keep `/etc/rancher/node/password` across reboots, and its
    /// server refuses a node whose password changed; the config bundle carries this
    /// one (`k3s/node-password`), so every boot presents the same password.
    pub fn node_password_for(&self, hostname: &str) -> Result<String> {
        if let Some(k) = &self.key {
            return Ok(k.derive(PASSWORD_LABEL, hostname));
        }
        self.remembered(hostname, |st| &mut st.node_passwords)
    }

    /// Marks a `once` bundle as served; returns false when it already was.
    pub fn consume(&self, hostname: &str) -> Result<bool> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("token store poisoned"))?;
        if !st.consumed.insert(hostname.to_string()) {
            return Ok(false);
        }
        self.save(&st)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_persist_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenStore::open(dir.path())
            .unwrap()
            .token_for("n1", None)
            .unwrap();
        assert_eq!(a.len(), 32);
        let store = TokenStore::open(dir.path()).unwrap();
        assert_eq!(store.token_for("n1", None).unwrap(), a);
        assert_ne!(store.token_for("n2", None).unwrap(), a);
        let mode = std::fs::metadata(dir.path().join("tokens.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let pw = store.node_password_for("n1").unwrap();
        assert_eq!(pw.len(), 32);
        assert_ne!(pw, a, "the password is not the config token");
        assert_ne!(store.node_password_for("n2").unwrap(), pw);
        assert_eq!(
            TokenStore::open(dir.path())
                .unwrap()
                .node_password_for("n1")
                .unwrap(),
            pw,
            "kept across restarts"
        );
        assert!(store.consume("n1").unwrap());
        assert!(!TokenStore::open(dir.path()).unwrap().consume("n1").unwrap());
    }

    #[test]
    fn a_shared_key_gives_every_replica_the_same_secrets() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef\n").unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ra = TokenStore::open_with_key(a.path(), Some(key.clone())).unwrap();
        let rb = TokenStore::open_with_key(b.path(), Some(key)).unwrap();
        let t = ra.token_for("n1", None).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(rb.token_for("n1", None).unwrap(), t);
        assert_ne!(rb.token_for("n2", None).unwrap(), t);
        let pw = ra.node_password_for("n1").unwrap();
        assert_eq!(rb.node_password_for("n1").unwrap(), pw);
        assert_ne!(pw, t, "the password is not the config token");
        assert_eq!(ra.token_for("n1", Some("given")).unwrap(), "given");
        // Derived, nothing written; another key derives other secrets.
        assert!(!a.path().join("tokens.json").exists());
        let other = TokenKey::new(b"another key, at least 32 bytes long").unwrap();
        let rc = TokenStore::open_with_key(a.path(), Some(other)).unwrap();
        assert_ne!(rc.token_for("n1", None).unwrap(), t);
        // Without a key: random, so two replicas disagree (the reason for the key).
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_ne!(
            TokenStore::open(x.path())
                .unwrap()
                .token_for("n1", None)
                .unwrap(),
            TokenStore::open(y.path())
                .unwrap()
                .token_for("n1", None)
                .unwrap()
        );
    }

    #[test]
    fn a_short_or_empty_key_is_refused() {
        let e = TokenKey::new(b"  short\n").unwrap_err().to_string();
        assert!(e.contains("5 bytes") && e.contains("at least 32"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "\n").unwrap();
        let e = format!("{:#}", TokenKey::load(&p).unwrap_err());
        assert!(
            e.contains(p.to_str().unwrap()) && e.contains("0 bytes"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            TokenKey::load(&dir.path().join("none")).unwrap_err()
        );
        assert!(e.contains("reading the token key"), "{e}");
    }
}
