//! Kernel modules: find them in the unpacked kernel package, resolve what a
//! boot needs, and write a `modules.dep`.
//!
//! Debian's kernel packages do not ship `modules.dep` (the postinst runs
//! `depmod`), and we run no maintainer scripts. The dependency list is in each
//! module's `.modinfo` section (`depends=a,b`, written by modpost at kernel
//! build time), which is exactly what depmod would find, so we read it there.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::tree::Tree;

mod select;

pub use select::{NODE_DROPPED, NODE_KEPT, NODE_NEEDS, Need, in_node_classes};

/// The modules of one kernel version inside a tree.
#[derive(Debug)]
pub struct KernelModules {
    /// `usr/lib/modules/<kver>` in the tree.
    pub dir: PathBuf,
    pub version: String,
    /// Normalized module name (`dm_verity`) → path relative to `dir`.
    modules: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// What a module's `.modinfo` says about how it is found and loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModInfo {
    /// `depends=`: the modules it needs loaded first.
    pub depends: Vec<String>,
    /// `alias=`, one per alias.
    pub aliases: Vec<String>,
    /// `softdep=`, one per line (`pre: a b post: c`).
    pub softdeps: Vec<String>,
}

impl ModInfo {
    /// The module names a `softdep` line asks for (`pre:`/`post:` dropped), normalized.
    pub fn softdep_modules(&self) -> impl Iterator<Item = String> + '_ {
        self.softdeps
            .iter()
            .flat_map(|l| l.split_whitespace())
            .filter(|t| !t.ends_with(':'))
            .map(normalize_name)
    }
}

/// One module chosen for loading.
#[derive(Clone, Debug)]
pub struct LoadableModule {
    pub name: String,
    /// Path relative to `/lib/modules/<kver>`, without the compression suffix.
    pub path: PathBuf,
    /// Uncompressed module bytes.
    pub data: Vec<u8>,
}

/// `dm-verity` and `dm_verity` are the same module.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

fn strip_compression(path: &Path) -> (PathBuf, Option<&'static str>) {
    let s = path.to_string_lossy();
    for ext in ["xz", "zst", "gz"] {
        if let Some(base) = s.strip_suffix(&format!(".ko.{ext}")) {
            return (PathBuf::from(format!("{base}.ko")), Some(ext));
        }
    }
    (path.to_path_buf(), None)
}

/// Decompresses a module file as stored in the package.
pub fn decompress(path: &Path, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match strip_compression(path).1 {
        Some("xz") => {
            liblzma::read::XzDecoder::new(data).read_to_end(&mut out)?;
        }
        Some("zst") => {
            out = zstd::decode_all(data)?;
        }
        Some("gz") => {
            flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
        }
        _ => out = data.to_vec(),
    }
    Ok(out)
}

/// Every value of `key` in a module's `.modinfo` strings (`alias=` appears once
/// per alias; `softdep=` once per soft dependency line).
pub fn modinfo_values(module: &[u8], key: &str) -> Vec<String> {
    let needle = format!("\0{key}=");
    let needle = needle.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = module[at..].windows(needle.len()).position(|w| w == needle) {
        let start = at + pos + needle.len();
        let end = module[start..]
            .iter()
            .position(|&b| b == 0)
            .map_or(module.len(), |e| start + e);
        out.push(String::from_utf8_lossy(&module[start..end]).into_owned());
        at = end;
    }
    out
}

/// What busybox `modprobe` (and the kernel's on-demand loading through it) reads
/// besides `modules.dep`: depmod's `modules.alias` and `modules.softdep`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModuleIndex {
    /// `modules.dep`.
    pub dep: String,
    /// `modules.alias`: `alias <pattern> <module>` per line, so that a request for
    /// `nft-chain-2-nat` or `rtnl-link-dummy` finds its module.
    pub alias: String,
    /// `modules.softdep`: `softdep <module> pre: … post: …` per line (kmod's format;
    /// busybox ignores it, so labimg preloads what matters).
    pub softdep: String,
}

/// The `depends=` list from a module's `.modinfo` strings.
pub fn modinfo_depends(module: &[u8]) -> Vec<String> {
    // .modinfo is a run of NUL-terminated `key=value` strings; scanning the
    // whole file for the key is what `strings | grep` would do and is robust
    // against section layout. The key only ever appears once.
    const KEY: &[u8] = b"\0depends=";
    let Some(pos) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module[pos + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(normalize_name)
        .collect()
}

impl KernelModules {
    /// Finds the single kernel under `usr/lib/modules/` (or `lib/modules/`).
    pub fn find(tree: &Tree) -> Result<Self> {
        let base = ["usr/lib/modules", "lib/modules"]
            .into_iter()
            .find(|b| tree.get_follow(b).is_some_and(|e| e.is_dir()))
            .context("the root tree has no usr/lib/modules: is a kernel package installed?")?;
        let versions: Vec<String> = tree
            .children(base)
            .filter(|(_, e)| e.is_dir())
            .map(|(p, _)| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let [version] = versions.as_slice() else {
            bail!("expected exactly one kernel in /{base}, found {versions:?}");
        };
        Self::load(tree, Path::new(base).join(version), version)
    }

    fn load(tree: &Tree, dir: PathBuf, version: &str) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for (path, entry) in tree.iter() {
            let Ok(rel) = path.strip_prefix(&dir) else {
                continue;
            };
            if entry.data().is_none() {
                continue;
            }
            let (plain, _) = strip_compression(rel);
            if plain.extension().is_some_and(|e| e == "ko") {
                let name = normalize_name(&plain.file_stem().unwrap_or_default().to_string_lossy());
                modules.insert(name, rel.to_path_buf());
            }
        }
        let builtin = tree
            .get(dir.join("modules.builtin"))
            .and_then(|e| e.data())
            .map(|d| {
                String::from_utf8_lossy(d)
                    .lines()
                    .filter_map(|l| Path::new(l).file_stem())
                    .map(|s| normalize_name(&s.to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            dir,
            version: version.to_owned(),
            modules,
            builtin,
        })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    fn read(&self, tree: &Tree, name: &str) -> Result<LoadableModule> {
        let rel = &self.modules[name];
        let data = tree
            .get(self.dir.join(rel))
            .and_then(|e| e.data())
            .with_context(|| format!("module file {} vanished", rel.display()))?;
        let data =
            decompress(rel, data).with_context(|| format!("decompressing {}", rel.display()))?;
        Ok(LoadableModule {
            name: name.to_owned(),
            path: strip_compression(rel).0,
            data,
        })
    }

    /// The modules needed to load `wanted`, dependencies first; built-in
    /// modules are skipped. An unknown name is an error naming the closest.
    pub fn closure(&self, tree: &Tree, wanted: &[String]) -> Result<Vec<LoadableModule>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in self.loadable(wanted)? {
            self.visit(tree, &name, &mut seen, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    /// The normalized names in `wanted` that are loadable modules (built-in
    /// ones dropped), without reading any module. An unknown name is an error
    /// naming the closest.
    pub fn loadable(&self, wanted: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for w in wanted {
            let name = normalize_name(w);
            if self.is_builtin(&name) {
                continue;
            }
            if !self.modules.contains_key(&name) {
                let hint = self
                    .modules
                    .keys()
                    .map(|k| (strsim::jaro_winkler(k, &name), k))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .filter(|(s, _)| *s > 0.85)
                    .map(|(_, k)| format!("; did you mean '{k}'?"))
                    .unwrap_or_default();
                bail!("kernel {} has no module '{w}'{hint}", self.version);
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn visit(
        &self,
        tree: &Tree,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<LoadableModule>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if seen.contains(name) || self.is_builtin(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let Some(_) = self.modules.get(name) else {
            bail!(
                "module '{}' needs '{name}', which kernel {} does not have",
                stack.join(" -> "),
                self.version
            );
        };
        let module = self.read(tree, name)?;
        stack.push(name.to_owned());
        for dep in modinfo_depends(&module.data) {
            self.visit(tree, &dep, seen, order, stack)?;
        }
        stack.pop();
        seen.insert(name.to_owned());
        order.push(module);
        Ok(())
    }

    /// Renders `modules.dep` (depmod's text format) for every module, so that
    /// busybox `modprobe` works on the node.
    pub fn modules_dep(&self, tree: &Tree) -> Result<String> {
        Ok(self.index(tree)?.dep)
    }

    /// Renders `modules.dep`, `modules.alias` and `modules.softdep` in one pass over
    /// every module (each is decompressed once).
    pub fn index(&self, tree: &Tree) -> Result<ModuleIndex> {
        Ok(self.render_index(&self.modinfo(tree)?))
    }

    /// The `.modinfo` of every module, read in parallel (each is decompressed once).
    pub fn modinfo(&self, tree: &Tree) -> Result<BTreeMap<String, ModInfo>> {
        let names: Vec<&String> = self.modules.keys().collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = names.len().div_ceil(threads).max(1);
        let parts: Vec<Result<Vec<(String, ModInfo)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|n| {
                                let rel = &self.modules[*n];
                                let raw = tree
                                    .get(self.dir.join(rel))
                                    .and_then(|e| e.data())
                                    .unwrap_or_default();
                                let data = decompress(rel, raw)
                                    .with_context(|| format!("decompressing {}", rel.display()))?;
                                let info = ModInfo {
                                    depends: modinfo_depends(&data),
                                    aliases: modinfo_values(&data, "alias"),
                                    softdeps: modinfo_values(&data, "softdep"),
                                };
                                Ok(((*n).clone(), info))
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("modinfo worker panicked"))
                .collect()
        });
        let mut out = BTreeMap::new();
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// `modules.dep`, `modules.alias` and `modules.softdep` of the modules this
    /// set holds (after [`KernelModules::retain`], only the kept ones), from their
    /// `.modinfo` as [`KernelModules::modinfo`] read it.
    pub fn render_index(&self, info: &BTreeMap<String, ModInfo>) -> ModuleIndex {
        let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let (mut alias, mut softdep) = (String::new(), String::new());
        for (name, i) in info.iter().filter(|(n, _)| self.modules.contains_key(*n)) {
            direct.insert(name.clone(), i.depends.clone());
            for a in &i.aliases {
                alias.push_str(&format!("alias {a} {name}\n"));
            }
            for d in &i.softdeps {
                softdep.push_str(&format!("softdep {name} {d}\n"));
            }
        }
        let mut out = String::new();
        for (name, rel) in &self.modules {
            // depmod lists the transitive closure so that loading it from the
            // end backwards works: every module comes before its dependencies.
            let mut load_order = Vec::new();
            post_order(
                name,
                &direct,
                &self.modules,
                &mut load_order,
                &mut BTreeSet::new(),
            );
            load_order.pop(); // the module itself comes last in load order
            let all = load_order.into_iter().rev();
            out.push_str(&format!("{}:", rel.display()));
            for d in all {
                out.push_str(&format!(" {}", self.modules[&d].display()));
            }
            out.push('\n');
        }
        ModuleIndex {
            dep: out,
            alias,
            softdep,
        }
    }

    /// Module name → its file, relative to [`KernelModules::dir`].
    pub fn paths(&self) -> &BTreeMap<String, PathBuf> {
        &self.modules
    }

    /// The bytes of the module files as stored in `tree` (compressed, as shipped).
    pub fn stored_bytes(&self, tree: &Tree) -> u64 {
        self.modules
            .values()
            .filter_map(|rel| tree.get(self.dir.join(rel)).and_then(|e| e.data()))
            .map(|d| d.len() as u64)
            .sum()
    }

    /// Stores `wanted` and the modules they depend on uncompressed in `tree` (`x.ko`
    /// in place of `x.ko.xz`), so that `modprobe` on the node reads them as they are
    /// instead of unpacking xz in user space at every boot; the root image's own
    /// compression still applies. Returns how many files changed.
    /// [`KernelModules::render_index`] names the new paths.
    pub fn store_plain(&mut self, tree: &mut Tree, wanted: &[String]) -> Result<usize> {
        let mut changed = 0;
        for m in self.closure(tree, wanted)? {
            let old = self.modules[&m.name].clone();
            if old == m.path {
                continue;
            }
            tree.remove(self.dir.join(&old))
                .with_context(|| format!("removing {}", old.display()))?;
            tree.insert_file(self.dir.join(&m.path), m.data, 0o644)?;
            self.modules.insert(m.name, m.path);
            changed += 1;
        }
        Ok(changed)
    }

    /// Removes from `tree` (and from this set) every module not in `keep`.
    pub fn retain(&mut self, tree: &mut Tree, keep: &BTreeSet<String>) -> Result<()> {
        let dropped: Vec<String> = self
            .modules
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in dropped {
            let rel = self.modules.remove(&name).expect("listed above");
            tree.remove(self.dir.join(&rel))
                .with_context(|| format!("removing {}", rel.display()))?;
        }
        // Folders left empty, deepest first (a child sorts after its parent).
        let base = self.dir.join("kernel");
        let dirs: Vec<PathBuf> = tree
            .iter()
            .filter(|(p, e)| e.is_dir() && p.starts_with(&base))
            .map(|(p, _)| p.to_path_buf())
            .collect();
        for d in dirs.into_iter().rev() {
            if tree.children(&d).next().is_none() {
                tree.remove(&d)?;
            }
        }
        // depmod's list of modules in build order, where the package ships one.
        let order = self.dir.join("modules.order");
        if let Some(text) = tree.get(&order).and_then(|e| e.data()) {
            let kept: String = String::from_utf8_lossy(text)
                .lines()
                .filter(|l| {
                    let stem = Path::new(l).file_stem().unwrap_or_default();
                    self.modules
                        .contains_key(&normalize_name(&stem.to_string_lossy()))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            tree.insert_file(&order, kept, 0o644)?;
        }
        Ok(())
    }
}

/// Depth-first post-order over the dependency map: dependencies before dependents.
fn post_order(
    name: &str,
    direct: &BTreeMap<String, Vec<String>>,
    known: &BTreeMap<String, PathBuf>,
    out: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) {
    if !known.contains_key(name) || !seen.insert(name.to_owned()) {
        return;
    }
    for d in direct.get(name).into_iter().flatten() {
        post_order(d, direct, known, out, seen);
    }
    out.push(name.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, depends: &str) -> Vec<u8> {
        format!("\x7fELF....\0name={name}\0depends={depends}\0vermagic=6.12\0").into_bytes()
    }

    fn tree() -> Tree {
        let mut t = Tree::new();
        let d = "usr/lib/modules/6.12.0-test";
        let xz = |data: Vec<u8>| {
            let mut out = Vec::new();
            liblzma::read::XzEncoder::new(data.as_slice(), 6)
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        t.insert_file(
            format!("{d}/kernel/a/dm-verity.ko.xz"),
            xz(module("dm_verity", "dm_mod,dm_bufio")),
            0o644,
        )
        .unwrap();
        t.insert_file(
            format!("{d}/kernel/a/dm-mod.ko.xz"),
            xz(module("dm_mod", "")),
            0o644,
        )
        .unwrap();
        t.insert_file(
            format!("{d}/kernel/a/dm-bufio.ko"),
            module("dm_bufio", "dm_mod"),
            0o644,
        )
        .unwrap();
        t.insert_file(
            format!("{d}/kernel/fs/squashfs.ko.xz"),
            xz(module("squashfs", "")),
            0o644,
        )
        .unwrap();
        t.insert_file(
            format!("{d}/modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
            0o644,
        )
        .unwrap();
        t
    }

    #[test]
    fn closure_orders_dependencies_first_and_skips_builtins() {
        let t = tree();
        let k = KernelModules::find(&t).unwrap();
        assert_eq!(k.version, "6.12.0-test");
        let c = k
            .closure(&t, &["ext4".into(), "dm-verity".into(), "squashfs".into()])
            .unwrap();
        let names: Vec<_> = c.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["dm_mod", "dm_bufio", "dm_verity", "squashfs"]);
        assert_eq!(c[2].path, Path::new("kernel/a/dm-verity.ko"));
        assert!(c[2].data.starts_with(b"\x7fELF"), "module is decompressed");
    }

    #[test]
    fn unknown_module_names_the_closest() {
        let t = tree();
        let k = KernelModules::find(&t).unwrap();
        let err = k
            .closure(&t, &["squashfss".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean 'squashfs'"), "{err}");
    }

    #[test]
    fn modinfo_aliases_and_softdeps_are_all_read() {
        let m = b"\x7fELF\0alias=nft-chain-2-nat\0depends=nf_tables\0alias=nft-chain-10-nat\0softdep=pre: nf_nat\0";
        assert_eq!(
            modinfo_values(m, "alias"),
            ["nft-chain-2-nat", "nft-chain-10-nat"]
        );
        assert_eq!(modinfo_values(m, "softdep"), ["pre: nf_nat"]);
        assert!(modinfo_values(m, "firmware").is_empty());
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies() {
        let t = tree();
        let k = KernelModules::find(&t).unwrap();
        let dep = k.modules_dep(&t).unwrap();
        assert!(
            dep.contains("kernel/a/dm-verity.ko.xz: kernel/a/dm-bufio.ko kernel/a/dm-mod.ko.xz\n"),
            "{dep}"
        );
        assert!(dep.contains("kernel/fs/squashfs.ko.xz:\n"), "{dep}");
    }

    #[test]
    fn store_plain_unpacks_the_wanted_closure_and_the_index_names_it() {
        let mut t = tree();
        let mut k = KernelModules::find(&t).unwrap();
        let info = k.modinfo(&t).unwrap();
        // dm_verity and its two dependencies; dm_bufio is stored plain already.
        assert_eq!(k.store_plain(&mut t, &["dm-verity".into()]).unwrap(), 2);
        let d = Path::new("usr/lib/modules/6.12.0-test/kernel");
        let plain = t.get(d.join("a/dm-verity.ko")).and_then(|e| e.data());
        assert_eq!(plain, Some(&module("dm_verity", "dm_mod,dm_bufio")[..]));
        assert!(t.get(d.join("a/dm-verity.ko.xz")).is_none());
        assert!(t.get(d.join("a/dm-mod.ko")).is_some());
        // Not wanted: left as the package ships it.
        assert!(t.get(d.join("fs/squashfs.ko.xz")).is_some());
        let dep = k.render_index(&info).dep;
        assert!(
            dep.contains("kernel/a/dm-verity.ko: kernel/a/dm-bufio.ko kernel/a/dm-mod.ko\n"),
            "{dep}"
        );
        assert!(dep.contains("kernel/fs/squashfs.ko.xz:\n"), "{dep}");
        // A second call finds nothing left to unpack.
        assert_eq!(k.store_plain(&mut t, &["dm-verity".into()]).unwrap(), 0);
    }
}
