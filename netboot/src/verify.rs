//! `serve --public-key`: a profile's netboot files are served only while its
//! `SHA256SUMS.minisig` is a valid signature by that key and every file under
//! `<profile>/netboot/` is listed in the signed `SHA256SUMS` with its content;
//! the upgrade bundle's `upgrade.json` is checked the same way ([`Verifier::check_file`]).
//!
//! Results are cached by each file's (path, size, mtime, ctime, inode): a request
//! costs a few `stat`s, and a rebuilt or edited profile is checked again on the
//! next request. ctime is part of the key because, unlike mtime, it cannot be set
//! back by whoever edits the file.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use labimg_builder::artifact::hash_file;
use labimg_builder::artifact::sign::{self, FileProblem, PublicKey, VerifyError};

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        })
    }
}

/// The files a profile's verdict depends on, with their stamps: `SHA256SUMS`,
/// its signature, then every regular file under `netboot/` (sorted).
type Snapshot = Vec<(String, Option<Stamp>)>;

struct Verdict {
    snapshot: Snapshot,
    result: Result<usize, String>,
}

#[derive(Default)]
struct State {
    /// Per profile folder: the last verdict and what it was computed from.
    profiles: HashMap<PathBuf, Verdict>,
    /// Per file: its sha256 at a stamp, so only changed files are hashed again.
    hashes: HashMap<PathBuf, (Stamp, String)>,
}

/// Checks profile folders against one public key, caching the verdicts.
pub struct Verifier {
    key: PublicKey,
    key_path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("key_id", &self.key_id())
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Builds the verifier `serve` uses: `None` (with a warning) when no key is given;
/// otherwise loads the key and checks every profile already in `images`, so the
/// first boot does not wait for the hashing and the log says at once what is refused.
pub fn for_images(public_key: Option<&Path>, images: &Path) -> Result<Option<Arc<Verifier>>> {
    let Some(path) = public_key else {
        tracing::warn!("no --public-key: serving image folders without checking their signatures");
        return Ok(None);
    };
    let v = Verifier::load(path)?;
    tracing::info!(
        "serving only profiles signed by key {} ({})",
        v.key_id(),
        path.display()
    );
    v.check_all(images);
    Ok(Some(Arc::new(v)))
}

impl Verifier {
    /// Loads a minisign public key (`.pub` file or bare base64 line).
    pub fn load(key_path: &Path) -> Result<Self> {
        Ok(Self::new(sign::load_public_key(key_path)?, key_path))
    }

    /// A verifier for `key`; `key_path` is only for messages.
    pub fn new(key: PublicKey, key_path: &Path) -> Self {
        Self {
            key,
            key_path: key_path.to_owned(),
            state: Mutex::default(),
        }
    }

    /// The key's id as minisign prints it.
    pub fn key_id(&self) -> String {
        sign::key_id(&self.key)
    }

    /// Checks every `<images>/<profile>/` that has a `netboot/` folder (logging each verdict).
    pub fn check_all(&self, images: &Path) {
        let Ok(entries) = std::fs::read_dir(images) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("netboot").is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let _ = self.check(&d);
        }
    }

    /// Ok when `profile_dir` (`<images>/<profile>`) may be served; the error says
    /// why not. Logs a verdict only when it is computed, not on every request.
    pub fn check(&self, profile_dir: &Path) -> Result<()> {
        let name = profile_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let snapshot = snapshot(profile_dir);
        // Held while hashing: concurrent requests for a changed profile wait for
        // one verdict instead of hashing the root image side by side.
        let mut state = self
            .state
            .lock()
            .map_err(|_| anyhow!("signature cache poisoned"))?;
        let cached = state
            .profiles
            .get(profile_dir)
            .filter(|v| v.snapshot == snapshot)
            .map(|v| v.result.clone());
        let result = match cached {
            Some(r) => r,
            None => {
                let r = self.verify(profile_dir, &snapshot, &mut state.hashes);
                match &r {
                    Ok(n) => tracing::info!(
                        "profile {name}: signature by key {} and {n} netboot files verified",
                        self.key_id()
                    ),
                    Err(e) => tracing::warn!("refusing to serve profile {name}: {e}"),
                }
                state.profiles.insert(
                    profile_dir.to_owned(),
                    Verdict {
                        snapshot,
                        result: r.clone(),
                    },
                );
                r
            }
        };
        result
            .map(|_| ())
            .map_err(|e| anyhow!("profile {name} refused: {e}"))
    }

    /// Ok when `<profile_dir>/<file>` is listed in the signed `SHA256SUMS` with its
    /// content. Not cached: the file is hashed on every call, so only for small files
    /// outside `netboot/` (`upgrade.json`, `upgrade.env`).
    pub fn check_file(&self, profile_dir: &Path, file: &str) -> Result<()> {
        let sums = sign::verify_signature(profile_dir, &self.key)?;
        let result = match sums.get(file) {
            Some(want) => sign::check_file(profile_dir, file, want).map(|_| ()),
            None => Err(FileProblem {
                file: file.to_owned(),
                problem: "not listed in the signed SHA256SUMS".into(),
            }),
        };
        result.map_err(|p| {
            let e = VerifyError::Files(vec![p]);
            tracing::warn!("refusing to serve {}: {e}", profile_dir.display());
            e.into()
        })
    }

    fn verify(
        &self,
        dir: &Path,
        snapshot: &Snapshot,
        hashes: &mut HashMap<PathBuf, (Stamp, String)>,
    ) -> Result<usize, String> {
        let sums = sign::verify_signature(dir, &self.key).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        let mut on_disk = BTreeSet::new();
        for (file, stamp) in snapshot.iter().skip(2) {
            on_disk.insert(file.as_str());
            let problem = |p: String| FileProblem {
                file: file.clone(),
                problem: p,
            };
            let Some(want) = sums.get(file) else {
                problems.push(problem("not listed in the signed SHA256SUMS".into()));
                continue;
            };
            let path = dir.join(file);
            let got = match (stamp, hashes.get(&path)) {
                (Some(s), Some((cs, sha))) if s == cs => sha.clone(),
                _ => match hash_file(&path) {
                    Ok((sha, _)) => {
                        if let Some(s) = stamp {
                            hashes.insert(path, (*s, sha.clone()));
                        }
                        sha
                    }
                    Err(e) => {
                        problems.push(problem(format!("{e:#}")));
                        continue;
                    }
                },
            };
            if &got != want {
                problems.push(problem(format!("sha256 {got}, signed {want}")));
            }
        }
        for file in sums.keys().filter(|f| f.starts_with("netboot/")) {
            if !on_disk.contains(file.as_str()) {
                problems.push(FileProblem {
                    file: file.clone(),
                    problem: "missing".into(),
                });
            }
        }
        if problems.is_empty() {
            Ok(on_disk.len())
        } else {
            Err(VerifyError::Files(problems).to_string())
        }
    }
}

fn snapshot(dir: &Path) -> Snapshot {
    let mut snap: Snapshot = [sign::SUMS_FILE, sign::SIGNATURE_FILE]
        .iter()
        .map(|f| (f.to_string(), Stamp::of(&dir.join(f))))
        .collect();
    let mut files = Vec::new();
    walk(dir, Path::new("netboot"), &mut files);
    files.sort();
    snap.extend(files.into_iter().map(|f| {
        let stamp = Stamp::of(&dir.join(&f));
        (f, stamp)
    }));
    snap
}

/// Regular files under `base/rel`, relative to `base`. Symlinks are skipped: the
/// servers refuse those leading out of `netboot/`, and one leading to a file inside
/// serves that file, which is itself checked.
fn walk(base: &Path, rel: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(base.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let r = rel.join(e.file_name());
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(base, &r, out),
            Ok(t) if t.is_file() => out.push(r.to_string_lossy().into_owned()),
            _ => {}
        }
    }
}
