//! Per-node config tokens and k3s node passwords: generated once, persisted (0600)
//! in the state directory, plus the record of `once` bundles already handed out.

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
}

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
        Ok(Self {
            path,
            state: Mutex::new(state),
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
}
