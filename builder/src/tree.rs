//! The staging tree: an in-memory filesystem that every image is assembled in.
//!
//! Packages are unpacked into a [`Tree`], node files are added to it, and the
//! filesystem writers (squashfs, cpio, FAT) read from it. Keeping the tree in
//! memory instead of on disk is what lets the builder run without root: owners,
//! device nodes and set-uid bits are just fields here, never `chown` calls.
//! Entries are kept sorted by path, so every writer sees the same order and
//! outputs are reproducible.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file; the bytes are shared so copies of a tree are cheap.
    File(Arc<Vec<u8>>),
    Symlink(PathBuf),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One file, directory, symlink or device node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits, including set-uid/set-gid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

impl Entry {
    pub fn dir(mode: u32) -> Self {
        Self::new(Kind::Dir, mode)
    }

    pub fn file(data: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self::new(Kind::File(Arc::new(data.into())), mode)
    }

    pub fn symlink(target: impl Into<PathBuf>) -> Self {
        Self::new(Kind::Symlink(target.into()), 0o777)
    }

    pub fn new(kind: Kind, mode: u32) -> Self {
        Self {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    /// Bytes of a regular file, `None` for anything else.
    pub fn data(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::File(d) => Some(d),
            _ => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }

    /// The `st_mode` file-type bits for this entry.
    pub fn file_type_bits(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDevice { .. } => 0o020000,
            Kind::BlockDevice { .. } => 0o060000,
            Kind::Fifo => 0o010000,
        }
    }
}

/// A filesystem tree. Paths are relative to the root (`usr/bin/busybox`); the
/// root itself is the empty path and always exists.
#[derive(Clone, Debug)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// Turns `/a/./b/` or `a/b` into `a/b`; refuses `..` so nothing can escape.
pub fn normalize(path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => bail!("path {} contains '..'", path.display()),
        }
    }
    Ok(out)
}

impl Tree {
    pub fn new() -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(PathBuf::new(), Entry::dir(0o755));
        Self { entries }
    }

    /// Looks up an entry without following symlinks in the last component,
    /// but following them in parent directories.
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        let p = self.resolve_parents(path.as_ref()).ok()?;
        self.entries.get(&p)
    }

    /// Looks up an entry, following symlinks all the way.
    pub fn get_follow(&self, path: impl AsRef<Path>) -> Option<&Entry> {
        let p = self.resolve(path.as_ref(), true).ok()?;
        self.entries.get(&p)
    }

    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        self.get(path).is_some()
    }

    /// Inserts (or replaces) an entry. Missing parent directories are created
    /// with mode 0755; parent components that are symlinks inside the tree are
    /// followed, so `lib/modules/x` lands in `usr/lib/modules/x` when `lib` is a
    /// symlink to `usr/lib` (Debian's merged /usr).
    pub fn insert(&mut self, path: impl AsRef<Path>, entry: Entry) -> Result<()> {
        let path = path.as_ref();
        let p = self.resolve_parents(path)?;
        if p.as_os_str().is_empty() {
            if entry.is_dir() {
                self.entries.insert(p, entry);
                return Ok(());
            }
            bail!("cannot replace the root directory with a non-directory");
        }
        self.mkdir_all(p.parent().unwrap_or(Path::new("")))?;
        if let Some(old) = self.entries.get(&p) {
            // A directory keeps its children; only its metadata is replaced.
            if old.is_dir() && !entry.is_dir() {
                let has_children = self
                    .entries
                    .range(p.clone()..)
                    .nth(1)
                    .is_some_and(|(k, _)| k.starts_with(&p));
                if has_children {
                    bail!(
                        "cannot replace non-empty directory /{} with a non-directory",
                        p.display()
                    );
                }
            }
        }
        self.entries.insert(p, entry);
        Ok(())
    }

    pub fn insert_file(
        &mut self,
        path: impl AsRef<Path>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<()> {
        self.insert(path, Entry::file(data, mode))
    }

    pub fn insert_symlink(
        &mut self,
        path: impl AsRef<Path>,
        target: impl Into<PathBuf>,
    ) -> Result<()> {
        self.insert(path, Entry::symlink(target))
    }

    /// Creates a directory and its parents (mode 0755) if missing.
    pub fn mkdir_all(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let p = self.resolve(path.as_ref(), true)?;
        let mut cur = PathBuf::new();
        for c in p.components() {
            cur.push(c);
            match self.entries.get(&cur) {
                Some(e) if e.is_dir() => {}
                Some(_) => bail!("/{} exists and is not a directory", cur.display()),
                None => {
                    self.entries.insert(cur.clone(), Entry::dir(0o755));
                }
            }
        }
        Ok(())
    }

    /// Removes an entry and, for a directory, everything under it.
    pub fn remove(&mut self, path: impl AsRef<Path>) -> Result<Option<Entry>> {
        let p = self.resolve_parents(path.as_ref())?;
        let under: Vec<PathBuf> = self
            .entries
            .range(p.clone()..)
            .skip(1)
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(k, _)| k.clone())
            .collect();
        for k in under {
            self.entries.remove(&k);
        }
        Ok(self.entries.remove(&p))
    }

    /// All entries in sorted (depth-first, by name) order, root first.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_path(), v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Path, &mut Entry)> {
        self.entries.iter_mut().map(|(k, v)| (k.as_path(), v))
    }

    /// Direct children of a directory, sorted by name.
    pub fn children(&self, dir: impl AsRef<Path>) -> impl Iterator<Item = (&Path, &Entry)> {
        let dir = dir.as_ref().to_path_buf();
        let depth = dir.components().count() + 1;
        self.entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(move |(k, _)| k.starts_with(&dir))
            .filter(move |(k, _)| k.components().count() == depth)
            .map(|(k, v)| (k.as_path(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Sum of regular file sizes.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter_map(|e| e.data().map(|d| d.len() as u64))
            .sum()
    }

    /// Sets every entry's modification time (for reproducible outputs).
    pub fn set_all_mtimes(&mut self, mtime: u64) {
        for e in self.entries.values_mut() {
            e.mtime = mtime;
        }
    }

    /// Copies `path` (and, for a directory, everything under it) from `other`
    /// into this tree at the same place.
    pub fn copy_from(&mut self, other: &Tree, path: impl AsRef<Path>) -> Result<()> {
        let p = other.resolve_parents(path.as_ref())?;
        let mut found = false;
        for (k, v) in other.entries.range(p.clone()..) {
            if !k.starts_with(&p) {
                break;
            }
            found = true;
            self.insert(k, v.clone())?;
        }
        if !found {
            bail!("/{} is not in the tree", p.display());
        }
        Ok(())
    }

    /// Writes the tree under `dir` on the host (owners are not applied: that
    /// needs root). Meant for inspection and tests.
    pub fn write_to_dir(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::{PermissionsExt, symlink};
        for (k, e) in self.iter() {
            let dest = dir.join(k);
            match &e.kind {
                Kind::Dir => std::fs::create_dir_all(&dest)?,
                Kind::File(d) => {
                    std::fs::write(&dest, d.as_slice())
                        .with_context(|| format!("writing {}", dest.display()))?;
                    std::fs::set_permissions(
                        &dest,
                        std::fs::Permissions::from_mode(e.mode & 0o777),
                    )?;
                }
                Kind::Symlink(t) => symlink(t, &dest)
                    .with_context(|| format!("creating symlink {}", dest.display()))?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Resolves symlinks in every component but the last.
    fn resolve_parents(&self, path: &Path) -> Result<PathBuf> {
        self.resolve(path, false)
    }

    fn resolve(&self, path: &Path, follow_last: bool) -> Result<PathBuf> {
        let mut pending: Vec<PathBuf> = vec![normalize(path)?];
        let mut out = PathBuf::new();
        let mut hops = 0;
        while let Some(rest) = pending.pop() {
            let comps: Vec<_> = rest.components().collect();
            for (i, c) in comps.iter().enumerate() {
                let Component::Normal(name) = c else { continue };
                let candidate = out.join(name);
                let last = i + 1 == comps.len() && pending.is_empty();
                if let Some(Entry {
                    kind: Kind::Symlink(target),
                    ..
                }) = self.entries.get(&candidate)
                    && (!last || follow_last)
                {
                    hops += 1;
                    if hops > 40 {
                        bail!("too many levels of symbolic links at {}", path.display());
                    }
                    let remaining: PathBuf = comps[i + 1..].iter().collect();
                    if !remaining.as_os_str().is_empty() {
                        pending.push(remaining);
                    }
                    if target.is_absolute() {
                        out = PathBuf::new();
                        pending.push(normalize(target)?);
                    } else {
                        // Relative: resolve against the symlink's directory,
                        // clamping `..` at the root like the kernel does.
                        let mut base = out.clone();
                        for tc in target.components() {
                            match tc {
                                Component::ParentDir => {
                                    base.pop();
                                }
                                Component::Normal(n) => base.push(n),
                                _ => {}
                            }
                        }
                        out = PathBuf::new();
                        pending.push(base);
                    }
                    break;
                }
                out = candidate;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_order_is_depth_first() {
        let mut t = Tree::new();
        t.insert_file("usr/bin/busybox", b"x".to_vec(), 0o755)
            .unwrap();
        t.insert_file("usr.txt", b"y".to_vec(), 0o644).unwrap();
        let paths: Vec<_> = t
            .iter()
            .map(|(p, _)| p.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(paths, ["", "usr", "usr/bin", "usr/bin/busybox", "usr.txt"]);
        let kids: Vec<_> = t
            .children("")
            .map(|(p, _)| p.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, ["usr", "usr.txt"]);
    }

    #[test]
    fn merged_usr_symlinks_are_followed_for_parents() {
        let mut t = Tree::new();
        t.mkdir_all("usr/lib").unwrap();
        t.insert_symlink("lib", "usr/lib").unwrap();
        t.insert_file("lib/modules/x.ko", b"m".to_vec(), 0o644)
            .unwrap();
        assert!(t.get("usr/lib/modules/x.ko").is_some());
        assert!(matches!(t.get("lib").unwrap().kind, Kind::Symlink(_)));
        assert!(t.get_follow("lib").unwrap().is_dir());
        t.insert_symlink("usr/lib/abs", "/usr/lib/modules").unwrap();
        assert!(t.get("lib/abs/x.ko").is_some());
    }

    #[test]
    fn dot_dot_is_refused_and_loops_end() {
        let mut t = Tree::new();
        assert!(t.insert_file("../etc/passwd", b"".to_vec(), 0o644).is_err());
        t.insert_symlink("a", "b").unwrap();
        t.insert_symlink("b", "a").unwrap();
        assert!(t.insert_file("a/x", b"".to_vec(), 0o644).is_err());
    }

    #[test]
    fn remove_takes_the_subtree() {
        let mut t = Tree::new();
        t.insert_file("a/b/c", b"1".to_vec(), 0o644).unwrap();
        t.insert_file("ab", b"2".to_vec(), 0o644).unwrap();
        t.remove("a").unwrap();
        let paths: Vec<_> = t
            .iter()
            .map(|(p, _)| p.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(paths, ["", "ab"]);
    }
}
