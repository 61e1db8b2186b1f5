//! Dependency resolution over several suites of one architecture: the
//! closure of `Depends` + `Pre-Depends` for a list of requests, choosing the
//! first satisfiable alternative and preferring earlier suites, like apt
//! does with a backports suite that is `NotAutomatic`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::deps::{Alternatives, Relation};
use super::packages::Package;
use super::version::Version;

/// All packages of the configured suites, in preference order.
#[derive(Debug)]
pub struct Index {
    arch: String,
    /// (suite name, mirror URL, packages)
    suites: Vec<(String, String, Vec<Package>)>,
    by_name: HashMap<String, Vec<(usize, usize)>>,
    /// Provided name → (suite, package, provided version).
    providers: HashMap<String, Vec<(usize, usize, Option<Version>)>>,
}

/// One package of the closure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResolvedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub suite: String,
    pub filename: String,
    /// Full download URL (mirror + filename).
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub source: String,
    /// The package whose dependency pulled this one in; `None` if requested.
    pub pulled_by: Option<String>,
    /// The dependency that pulled it (`Depends: libc6 (>= 2.38)`) or `requested`.
    pub reason: String,
}

/// The dependency closure of a set of requests, sorted by package name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Resolution {
    pub arch: String,
    pub packages: Vec<ResolvedPackage>,
}

impl Resolution {
    /// The chosen package of that name, if any.
    pub fn get(&self, name: &str) -> Option<&ResolvedPackage> {
        self.packages.iter().find(|p| p.name == name)
    }

    /// Sum of the `.deb` sizes.
    pub fn download_size(&self) -> u64 {
        self.packages.iter().map(|p| p.size).sum()
    }
}

impl fmt::Display for Resolution {
    /// A table: name, version, arch, suite, sha256, pulled by.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = |get: fn(&ResolvedPackage) -> &str, title: &str| {
            self.packages
                .iter()
                .map(|p| get(p).len())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        };
        let (wn, wv, wa, ws) = (
            w(|p| &p.name, "NAME"),
            w(|p| &p.version, "VERSION"),
            w(|p| &p.arch, "ARCH"),
            w(|p| &p.suite, "SUITE"),
        );
        writeln!(
            f,
            "{:wn$}  {:wv$}  {:wa$}  {:ws$}  {:64}  PULLED BY",
            "NAME", "VERSION", "ARCH", "SUITE", "SHA256"
        )?;
        for p in &self.packages {
            writeln!(
                f,
                "{:wn$}  {:wv$}  {:wa$}  {:ws$}  {:64}  {}",
                p.name,
                p.version,
                p.arch,
                p.suite,
                p.sha256,
                p.pulled_by.as_deref().unwrap_or("(requested)")
            )?;
        }
        write!(
            f,
            "{} packages, {} bytes to download",
            self.packages.len(),
            self.download_size()
        )
    }
}

type Pick = (usize, usize);

impl Index {
    /// An index over `suites` (name, mirror URL, packages), earliest preferred.
    pub fn new(arch: &str, suites: Vec<(String, String, Vec<Package>)>) -> Result<Index> {
        let mut by_name: HashMap<String, Vec<Pick>> = HashMap::new();
        let mut providers: HashMap<String, Vec<(usize, usize, Option<Version>)>> = HashMap::new();
        for (si, (_, _, pkgs)) in suites.iter().enumerate() {
            for (pi, p) in pkgs.iter().enumerate() {
                by_name.entry(p.name.clone()).or_default().push((si, pi));
                for r in p.provides()? {
                    let v = r.constraint.map(|(_, v)| v);
                    providers.entry(r.name).or_default().push((si, pi, v));
                }
            }
        }
        Ok(Index {
            arch: arch.to_owned(),
            suites,
            by_name,
            providers,
        })
    }

    fn pkg(&self, (s, p): Pick) -> &Package {
        &self.suites[s].2[p]
    }

    /// Number of packages over all suites.
    pub fn len(&self) -> usize {
        self.suites.iter().map(|s| s.2.len()).sum()
    }

    /// Whether the index holds no package at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an arch qualifier admits a package of this index's architecture.
    fn arch_ok(&self, r: &Relation, p: &Package) -> bool {
        match r.arch.as_deref() {
            None | Some("any" | "native") => true,
            Some(a) => a == self.arch || p.arch == "all",
        }
    }

    /// The best real package for a relation: the first suite (in order, or
    /// only `suite` if given) holding a satisfying version, and within it
    /// the highest version.
    fn best_real(&self, r: &Relation, suite: Option<usize>) -> Option<Pick> {
        let cands = self.by_name.get(&r.name)?;
        let ok = |&&(s, p): &&Pick| {
            suite.is_none_or(|want| want == s)
                && r.accepts(Some(&self.suites[s].2[p].version))
                && self.arch_ok(r, &self.suites[s].2[p])
        };
        let first_suite = cands.iter().filter(ok).map(|c| c.0).min()?;
        cands
            .iter()
            .filter(ok)
            .filter(|c| c.0 == first_suite)
            .max_by(|a, b| self.pkg(**a).version.cmp(&self.pkg(**b).version))
            .copied()
    }

    /// Providers of a virtual name whose provided version satisfies `r`,
    /// by suite order, then priority (required first), then name.
    fn best_provider(&self, r: &Relation) -> Option<Pick> {
        let rank = |p: &Package| match p.priority.as_str() {
            "required" => 0,
            "important" => 1,
            "standard" => 2,
            "optional" => 3,
            _ => 4,
        };
        self.providers
            .get(&r.name)?
            .iter()
            .filter(|(s, p, v)| r.accepts(v.as_ref()) && self.arch_ok(r, &self.suites[*s].2[*p]))
            .min_by(|a, b| {
                let (pa, pb) = (self.pkg((a.0, a.1)), self.pkg((b.0, b.1)));
                (a.0, rank(pa), &pa.name).cmp(&(b.0, rank(pb), &pb.name))
            })
            .map(|&(s, p, _)| (s, p))
    }

    /// Whether an already chosen package satisfies `r` (by name or Provides).
    fn satisfied_by(&self, r: &Relation, chosen: &BTreeMap<String, Chosen>) -> bool {
        if let Some(c) = chosen.get(&r.name)
            && r.accepts(Some(&self.pkg(c.pick).version))
        {
            return true;
        }
        self.providers.get(&r.name).is_some_and(|ps| {
            ps.iter().any(|(s, p, v)| {
                chosen
                    .get(&self.suites[*s].2[*p].name)
                    .is_some_and(|c| c.pick == (*s, *p))
                    && r.accepts(v.as_ref())
            })
        })
    }

    /// Parses a request (`name`, `name/suite`, `name=version`) into a pick.
    fn request(&self, req: &str) -> Result<Pick> {
        let (name, suite, version) = if let Some((n, s)) = req.split_once('/') {
            (n, Some(s), None)
        } else if let Some((n, v)) = req.split_once('=') {
            (n, None, Some(v))
        } else {
            (req, None, None)
        };
        let suite_idx = match suite {
            Some(s) => Some(self.suites.iter().position(|x| x.0 == s).ok_or_else(|| {
                let names: Vec<_> = self.suites.iter().map(|x| x.0.as_str()).collect();
                anyhow::anyhow!(
                    "request {req:?}: suite {s:?} is not configured (have {})",
                    names.join(", ")
                )
            })?),
            None => None,
        };
        if !self.by_name.contains_key(name) {
            let hint = if self.providers.contains_key(name) {
                " (it is a virtual package; request one of its providers)"
            } else {
                ""
            };
            bail!("unknown package {name:?}{hint}");
        }
        let rel = Relation {
            name: name.to_owned(),
            arch: None,
            constraint: version.map(|v| (super::deps::Op::Eq, Version::parse(v))),
        };
        self.best_real(&rel, suite_idx).ok_or_else(|| {
            let have: Vec<String> = self.by_name[name]
                .iter()
                .map(|&(s, p)| format!("{} in {}", self.suites[s].2[p].version, self.suites[s].0))
                .collect();
            anyhow::anyhow!(
                "request {req:?} cannot be satisfied; available: {}",
                have.join(", ")
            )
        })
    }

    /// The closure of `requests`.
    pub fn resolve(&self, requests: &[String]) -> Result<Resolution> {
        let mut chosen: BTreeMap<String, Chosen> = BTreeMap::new();
        let mut queue: VecDeque<String> = VecDeque::new();
        for req in requests {
            let pick = self.request(req)?;
            let name = self.pkg(pick).name.clone();
            if let Some(prev) = chosen.get(&name)
                && prev.pick != pick
            {
                bail!("package {name} requested twice with different versions");
            }
            chosen.insert(
                name.clone(),
                Chosen {
                    pick,
                    parent: None,
                    reason: "requested".into(),
                },
            );
            queue.push_back(name);
        }
        while let Some(name) = queue.pop_front() {
            let pick = chosen[&name].pick;
            for (field, alts) in self.pkg(pick).dependencies()? {
                if alts.iter().any(|r| self.satisfied_by(r, &chosen)) {
                    continue;
                }
                let found = alts
                    .iter()
                    .find_map(|r| self.best_real(r, None).or_else(|| self.best_provider(r)));
                let Some(dep) = found else {
                    bail!(
                        "unsatisfiable dependency {field}: {} of {}",
                        alts_text(&alts),
                        self.chain(&name, &chosen)
                    );
                };
                let dep_name = self.pkg(dep).name.clone();
                if let Some(other) = chosen.get(&dep_name) {
                    bail!(
                        "conflict: {} needs {field}: {}, but {} {} was already chosen for {}",
                        self.chain(&name, &chosen),
                        alts_text(&alts),
                        dep_name,
                        self.pkg(other.pick).version,
                        self.chain(&dep_name, &chosen)
                    );
                }
                chosen.insert(
                    dep_name.clone(),
                    Chosen {
                        pick: dep,
                        parent: Some(name.clone()),
                        reason: format!("{field}: {}", alts_text(&alts)),
                    },
                );
                queue.push_back(dep_name);
            }
        }
        self.check_conflicts(&chosen)?;
        let packages = chosen
            .into_iter()
            .map(|(name, c)| {
                let p = self.pkg(c.pick);
                let (suite, mirror, _) = &self.suites[c.pick.0];
                ResolvedPackage {
                    name,
                    version: p.version.to_string(),
                    arch: p.arch.clone(),
                    suite: suite.clone(),
                    filename: p.filename.clone(),
                    url: format!("{}/{}", mirror.trim_end_matches('/'), p.filename),
                    size: p.size,
                    sha256: p.sha256.clone(),
                    source: p.source.clone(),
                    pulled_by: c.parent,
                    reason: c.reason,
                }
            })
            .collect();
        Ok(Resolution {
            arch: self.arch.clone(),
            packages,
        })
    }

    /// Refuses a closure in which one package `Conflicts` with or `Breaks`
    /// another (by name and version, or through a virtual name the other
    /// provides), as dpkg would refuse to install the pair. Every clash is listed.
    fn check_conflicts(&self, chosen: &BTreeMap<String, Chosen>) -> Result<()> {
        let mut clashes = Vec::new();
        for (name, c) in chosen {
            let p = self.pkg(c.pick);
            for (field, rel) in p.conflicts()? {
                // `foo:i386` names a foreign architecture's package: never in this set.
                if rel
                    .arch
                    .as_deref()
                    .is_some_and(|a| !matches!(a, "any" | "native") && a != self.arch)
                {
                    continue;
                }
                for (other_name, other) in chosen {
                    if other_name == name {
                        continue;
                    }
                    let o = self.pkg(other.pick);
                    let by_name = o.name == rel.name && rel.accepts(Some(&o.version));
                    // A package never conflicts with itself through a name it provides.
                    let by_provide = || {
                        o.provides().is_ok_and(|provided| {
                            provided.iter().any(|pr| {
                                pr.name == rel.name
                                    && rel.accepts(pr.constraint.as_ref().map(|(_, v)| v))
                            })
                        })
                    };
                    if by_name || by_provide() {
                        clashes.push(format!(
                            "{name} {} ({}) has {field}: {rel}, but {other_name} {} ({}) is in it too",
                            p.version,
                            self.chain(name, chosen),
                            o.version,
                            self.chain(other_name, chosen),
                        ));
                    }
                }
            }
        }
        if !clashes.is_empty() {
            bail!(
                "the package set cannot be installed together:\n  {}",
                clashes.join("\n  ")
            );
        }
        Ok(())
    }

    /// `requested-pkg -> dep -> name` for error messages.
    fn chain(&self, name: &str, chosen: &BTreeMap<String, Chosen>) -> String {
        let mut parts = vec![name.to_owned()];
        let mut cur = name;
        while let Some(parent) = chosen.get(cur).and_then(|c| c.parent.as_deref()) {
            if parts.len() > 64 {
                break;
            }
            parts.push(parent.to_owned());
            cur = parent;
        }
        parts.reverse();
        parts.join(" -> ")
    }
}

struct Chosen {
    pick: Pick,
    parent: Option<String>,
    reason: String,
}

fn alts_text(alts: &Alternatives) -> String {
    alts.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, depends: &str, provides: &str) -> Package {
        Package {
            name: name.into(),
            version: Version::parse(version),
            arch: "arm64".into(),
            depends: depends.into(),
            pre_depends: String::new(),
            provides: provides.into(),
            conflicts: String::new(),
            breaks: String::new(),
            filename: format!("pool/{name}_{version}.deb"),
            size: 1,
            sha256: "0".repeat(64),
            source: name.into(),
            multi_arch: None,
            essential: false,
            priority: "optional".into(),
        }
    }

    fn index() -> Index {
        let stable = vec![
            pkg("kernel", "6.12", "kmod, initramfs-tool", ""),
            pkg("kmod", "34", "libc6 (>= 2.38)", ""),
            pkg("libc6", "2.41", "", ""),
            pkg(
                "tool",
                "1.0",
                "libfoo (>= 2) | libfoo-compat, python3:any",
                "",
            ),
            pkg("libfoo", "1.5", "", ""),
            pkg("libfoo-compat", "1", "", ""),
            pkg("python3", "3.13", "", ""),
            pkg("initramfs-tools", "0.148", "", "initramfs-tool"),
            pkg("dracut", "106", "", "initramfs-tool"),
            pkg("broken", "1", "kmod, missing-lib (>= 3)", ""),
            pkg("needs-new", "1", "libc6 (>= 2.50)", ""),
            pkg("wants-virt", "1", "virt (>= 2)", ""),
            pkg("virt-old", "1", "", "virt (= 1)"),
        ];
        let backports = vec![
            pkg("kernel", "7.1", "kmod (>= 34), initramfs-tool", ""),
            pkg("libc6", "2.99", "", ""),
            pkg("virt-new", "1", "", "virt (= 2)"),
        ];
        Index::new(
            "arm64",
            vec![
                ("trixie".into(), "http://m".into(), stable),
                ("trixie-backports".into(), "http://m".into(), backports),
            ],
        )
        .unwrap()
    }

    fn resolve(reqs: &[&str]) -> Result<Resolution> {
        index().resolve(&reqs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn earlier_suite_wins_unless_pinned() {
        let r = resolve(&["kernel"]).unwrap();
        assert_eq!(r.get("kernel").unwrap().version, "6.12");
        assert_eq!(r.get("libc6").unwrap().suite, "trixie");
        let r = resolve(&["kernel/trixie-backports"]).unwrap();
        let k = r.get("kernel").unwrap();
        assert_eq!(
            (k.version.as_str(), k.suite.as_str()),
            ("7.1", "trixie-backports")
        );
        assert_eq!(k.url, "http://m/pool/kernel_7.1.deb");
        // Dependencies still prefer the earlier suite.
        assert_eq!(r.get("kmod").unwrap().suite, "trixie");
        assert_eq!(r.get("kmod").unwrap().pulled_by.as_deref(), Some("kernel"));
        assert_eq!(r.get("libc6").unwrap().pulled_by.as_deref(), Some("kmod"));
        let r = resolve(&["kernel=7.1"]).unwrap();
        assert_eq!(r.get("kernel").unwrap().suite, "trixie-backports");
    }

    #[test]
    fn a_later_suite_is_used_when_only_it_satisfies() {
        let r = resolve(&["needs-new"]).unwrap();
        let libc = r.get("libc6").unwrap();
        assert_eq!(
            (libc.version.as_str(), libc.suite.as_str()),
            ("2.99", "trixie-backports")
        );
    }

    #[test]
    fn alternatives_virtuals_and_qualifiers() {
        let r = resolve(&["tool"]).unwrap();
        // libfoo 1.5 fails (>= 2), so the second alternative is taken.
        assert!(r.get("libfoo").is_none());
        assert!(
            r.get("libfoo-compat")
                .unwrap()
                .reason
                .contains("libfoo (>= 2) | libfoo-compat")
        );
        assert!(
            r.get("python3").is_some(),
            ":any resolves to the native package"
        );
        // A virtual name goes to the first provider (by suite, priority, name).
        let r = resolve(&["kernel"]).unwrap();
        assert!(r.get("dracut").is_some() ^ r.get("initramfs-tools").is_some());
        // An already chosen provider satisfies the virtual name.
        let r = resolve(&["initramfs-tools", "kernel"]).unwrap();
        assert!(r.get("dracut").is_none());
        // Versioned provides: only virt-new provides virt (= 2).
        let r = resolve(&["wants-virt"]).unwrap();
        assert!(r.get("virt-new").is_some() && r.get("virt-old").is_none());
    }

    #[test]
    fn errors_name_the_package_and_the_chain() {
        let e = resolve(&["nope"]).unwrap_err().to_string();
        assert!(e.contains("unknown package \"nope\""), "{e}");
        let e = resolve(&["virt"]).unwrap_err().to_string();
        assert!(e.contains("virtual package"), "{e}");
        let e = resolve(&["broken"]).unwrap_err().to_string();
        assert!(
            e.contains("missing-lib (>= 3)") && e.contains("broken"),
            "{e}"
        );
        let e = resolve(&["kernel=9"]).unwrap_err().to_string();
        assert!(
            e.contains("6.12 in trixie") && e.contains("7.1 in trixie-backports"),
            "{e}"
        );
    }

    #[test]
    fn conflicting_and_breaking_pairs_are_refused_with_their_chains() {
        let with = |mut p: Package, conflicts: &str, breaks: &str| {
            p.conflicts = conflicts.into();
            p.breaks = breaks.into();
            p
        };
        let idx = Index::new(
            "arm64",
            vec![(
                "trixie".into(),
                "http://m".into(),
                vec![
                    with(
                        pkg("busybox-static", "1.37", "", ""),
                        "busybox, app:i386",
                        "",
                    ),
                    pkg("busybox", "1.37", "", ""),
                    pkg("app", "1", "busybox", ""),
                    with(pkg("newlib", "2", "", ""), "", "oldtool (<< 2)"),
                    pkg("oldtool", "1.5", "", ""),
                    pkg("mta-a", "1", "", "mail-transport-agent"),
                    with(
                        pkg("mta-b", "1", "", "mail-transport-agent"),
                        "mail-transport-agent",
                        "",
                    ),
                ],
            )],
        )
        .unwrap();
        let resolve =
            |reqs: &[&str]| idx.resolve(&reqs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // Alone, each side is fine; a package may conflict with a name it provides.
        resolve(&["busybox-static"]).unwrap();
        resolve(&["app"]).unwrap();
        resolve(&["mta-b"]).unwrap();
        resolve(&["newlib"]).unwrap();

        let e = resolve(&["busybox-static", "app"]).unwrap_err().to_string();
        assert!(
            e.contains("busybox-static 1.37 (busybox-static) has Conflicts: busybox")
                && e.contains("busybox 1.37 (app -> busybox)"),
            "{e}"
        );
        let e = resolve(&["newlib", "oldtool"]).unwrap_err().to_string();
        assert!(e.contains("has Breaks: oldtool (<< 2)"), "{e}");
        // Through a virtual name another chosen package provides.
        let e = resolve(&["mta-a", "mta-b"]).unwrap_err().to_string();
        assert!(
            e.contains("mta-b 1 (mta-b) has Conflicts: mail-transport-agent, but mta-a"),
            "{e}"
        );
    }

    #[test]
    fn table_lists_every_package() {
        let r = resolve(&["kernel"]).unwrap();
        let t = r.to_string();
        assert!(t.starts_with("NAME"));
        assert_eq!(t.lines().count(), r.packages.len() + 2);
        assert!(t.contains("(requested)"));
    }
}
